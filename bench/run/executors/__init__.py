"""Executors: how cells reach isolated worker processes (docs/architecture.md, "Executors")."""
