"""The running floor, a sweep from flags to run folder: the grid, the run flags, the fingerprint, the lock, the environment, the
fairness text, the executors that carry cells to worker processes, the driver of ``bench run`` and
the listing of ``bench list`` (docs/architecture.md, "Run lifecycle")."""
