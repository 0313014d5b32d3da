"""Floor 6, running a sweep: the grid, the run flags, the fingerprint, the lock, the environment and
the executors that carry cells to worker processes (docs/architecture.md, "Run lifecycle")."""
