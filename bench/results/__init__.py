"""Floor 3, what a run leaves behind: the record schema with its upgrades, the results store and
run folder, and the statistics every reader of results shares (docs/architecture.md, "Layers")."""
