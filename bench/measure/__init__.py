"""The measuring floor, one cell on one backend: the training loop, the harness's protocol,
throughput windows, other load on the cores, verdicts and memory (docs/architecture.md, "Measuring")."""
