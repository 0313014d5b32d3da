"""The saved-models floor: the neutral format (safetensors + JSON) and ``bench predict``
(docs/architecture.md, "Saved models")."""
