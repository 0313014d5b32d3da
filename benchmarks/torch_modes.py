"""Is torch's CPU throughput bimodal, and what decides the mode? Fresh processes, alternating configurations.

A whole run's torch figures were seen about 40 % lower than another's on the same 2-core machine,
with no other load (issue 24, item 12). A slow mode that lasts a whole run is a property of the
process, so each measurement here is a fresh worker-like process: pinned to the worker CPU set,
thread-capped like a worker (``bench.run.executors.process.isolate``), then the configuration's own
environment, then torch. It trains the torch MLP (Adam, ReLU, batch 64, the bundled sample) and
takes windows of whole epochs of at least ``--min-window`` seconds (``bench.measure.throughput``),
each with the foreign CPU beside it (``bench.measure.load``), as the suite does.

Configurations (``CONFIGS``): libgomp's default wait policy (threads spin after a parallel region,
then sleep), ``OMP_WAIT_POLICY=PASSIVE`` (sleep at once: what the suite's workers now set), a short spin (``GOMP_SPINCOUNT=10000``), threads bound one per core
(``OMP_PROC_BIND=true``, ``OMP_PLACES=cores``), one intra-op thread, and the default with the
suite's RSS sampler thread running during the windows. Rounds alternate the configurations in a
rotating order so drift of the machine hits all alike.

    python benchmarks/torch_modes.py --rounds 6 > modes.json   # then read the summary on stderr
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS: dict[str, dict] = {
    "default": {"env": {}},
    "passive": {"env": {"OMP_WAIT_POLICY": "PASSIVE"}},
    "short-spin": {"env": {"GOMP_SPINCOUNT": "10000"}},
    "bound": {"env": {"OMP_PROC_BIND": "true", "OMP_PLACES": "cores"}},
    "one-thread": {"env": {}, "threads": 1},
    "sampler": {"env": {}, "sampler": True},
}
"""Each configuration's environment on top of libgomp's defaults (the worker's own OMP_WAIT_POLICY is
removed first, so ``default`` is what torch does out of the box and ``passive`` what the suite sets)."""


def measure(name: str, args: argparse.Namespace) -> dict:
    """One configuration in this (fresh) process: the windows' samples/s and foreign CPU."""
    from backends import device
    from bench.run.executors.process import isolate, worker_cpu_set

    config = CONFIGS[name]
    cpus = worker_cpu_set(args.threads)
    threads = config.get("threads", len(cpus))
    isolate(threads, cpus, device.environment("cpu"))
    os.environ.pop("OMP_WAIT_POLICY", None)
    os.environ.update(config["env"])
    from contextlib import nullcontext

    import backends
    from bench.measure import training
    from bench.measure.load import LoadMonitor
    from bench.measure.memory import PeakRssSampler
    from bench.measure.throughput import Windows
    from bench.spec.cell import WindowPlan
    from bench.spec.data import load_dataset
    from bench.spec.model import SEED_MODELS
    from bench.spec.train import TrainSpec

    backend = backends.load("torch")
    backend.setup(threads, "cpu")
    data = load_dataset("mnist-sample", val_split=0.1)
    train = TrainSpec(optimizer="adam", activation="relu", batch_size=64)
    training.prepare(backend, SEED_MODELS["mlp"], train, data.x_train, data.y_train, data.num_classes)
    training.epoch(backend, len(data.x_train), train, 0)  # warm-up: allocations, the optimizer's state
    windows = Windows(WindowPlan(args.min_window, args.windows, float("inf")), least=args.windows)
    monitor = LoadMonitor(list(cpus))
    index = 1
    with PeakRssSampler() if config.get("sampler") else nullcontext():
        while windows.wants_more():
            epoch = training.epoch(backend, len(data.x_train), train, index, monitor)
            windows.add(epoch.seconds, epoch.samples, epoch.load)
            index += 1
    return {"config": name, "pid": os.getpid(), "rates": windows.rates,
            "foreign": [w.load.foreign_cpu_cores for w in windows.kept + windows.replaced if w.load],
            "remeasured": len(windows.replaced)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--min-window", type=float, default=0.25)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args)))
        return
    names = args.configs.split(",")
    results: dict[str, list[dict]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            argv = [sys.executable, __file__, "--child", name, "--min-window", str(args.min_window),
                    "--windows", str(args.windows)] + (["--threads", str(args.threads)] if args.threads else [])
            done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=600)
            result = json.loads(done.stdout.strip().splitlines()[-1]) | {"round": round_}
            results[name].append(result)
            print(json.dumps(result), flush=True)
            median = statistics.median(result["rates"])
            print(f"round {round_} {name:10s} median {median:9.0f}/s  windows "
                  f"{' '.join(f'{r:.0f}' for r in result['rates'])}  foreign max {max(result['foreign']):.2f}",
                  file=sys.stderr, flush=True)
    for name, runs in results.items():
        medians = sorted(statistics.median(r["rates"]) for r in runs)
        print(f"{name:10s} per-process medians: {' '.join(f'{m:.0f}' for m in medians)}  "
              f"(max/min {medians[-1] / medians[0]:.2f})", file=sys.stderr)


if __name__ == "__main__":
    main()
