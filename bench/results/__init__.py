"""The results floor, what a run leaves behind: the record schema with its upgrades, the phases a
record times, the results store and run folder, and the statistics every reader of results shares
(docs/architecture.md, "Floors")."""
