"""Floor 5, saved models: the neutral format (safetensors + JSON) and ``bench predict``
(docs/architecture.md, "Saved models")."""
