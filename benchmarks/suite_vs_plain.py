"""What does the suite cost? ``bench run`` next to a plain hand-written loop of each framework.

The suite's figure is ``train_samples_per_s`` exactly as a real ``python -m bench run`` subprocess
records it (its worker process, its harness, its windows): mlp, Adam, ReLU, batch 128, on the
bundled MNIST sample. The plain loops (``plain_loops.py``: a torch loop; for tf a hand-written
``tf.function`` step and, separately, ``model.fit``; for jax ``jax.jit`` + Optax) train the same
model from the same canonical weights on the same data and batch order, each in its own process
pinned and thread-capped like a worker (``bench.run.executors.process``), and are measured the same
way: one warm-up step (``model.fit``: one warm-up epoch), then windows of whole epochs of at least
``--min-window`` seconds (``bench.measure.throughput``), the median of the windows.

Rounds alternate suite and plain for every backend, and the order flips every round (suite first,
then plain first), so slow drift of the machine hits both sides alike; figures are medians over
rounds with their range, and the ratio suite/plain per round. Other load disturbs both sides: check
``uptime`` first, and read the noisy counts printed with the figures.

    python benchmarks/suite_vs_plain.py --rounds 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from backends import device  # noqa: E402
from bench.measure.load import LoadMonitor, usable_cores  # noqa: E402
from bench.measure.throughput import Windows  # noqa: E402
from bench.run.executors.process import isolate, worker_cpu_set  # noqa: E402
from bench.spec.cell import WindowPlan  # noqa: E402
from bench.spec.data import epoch_batches, load_dataset  # noqa: E402
from bench.spec.model import SEED_MODELS  # noqa: E402
from bench.spec.train import TrainSpec  # noqa: E402
from bench.spec.weights import canonical_weights  # noqa: E402

PLAINS = {"torch": ["torch"], "tf": ["tf", "tf-fit"], "jax": ["jax"]}
"""Per backend, the plain loops it is compared with."""


def _setting(args: argparse.Namespace) -> tuple[TrainSpec, WindowPlan]:
    return (TrainSpec(optimizer="adam", activation="relu", batch_size=args.batch_size),
            WindowPlan(args.min_window, args.max_windows, args.window_budget))


def plain(name: str, args: argparse.Namespace) -> dict:
    """One plain loop's windows, in this process (run as a child: one framework per process)."""
    import plain_loops

    cpus = worker_cpu_set(args.threads)
    isolate(args.threads, cpus, device.environment("cpu"))
    _threads(name, args.threads)
    data = load_dataset("mnist-sample", val_split=0.1)
    train, plan = _setting(args)
    weights = canonical_weights(SEED_MODELS["mlp"].resolve("relu"), data.input_shape, data.num_classes, train.seed)
    n = len(data.x_train)
    monitor, windows = LoadMonitor(list(cpus)), Windows(plan)
    if name == "tf-fit":
        state = {"start": monitor.snapshot()}

        def on_epoch(seconds: float, samples: int) -> bool:
            windows.add(seconds, samples, monitor.since(state["start"]))
            state["start"] = monitor.snapshot()
            return windows.wants_more()

        order = epoch_batches(n, train.batch_size, train.seed, 0).reshape(-1)
        plain_loops.keras_fit_epochs(data.x_train, data.y_train, train, weights, order, on_epoch)
        return windows.record()
    step, sync = plain_loops.TRAINERS[name](data.x_train, data.y_train, train, weights)
    sync([step(epoch_batches(n, train.batch_size, train.seed, 0)[0])])  # warm-up: compile, as the suite does
    index = 0
    while windows.wants_more():
        batches = epoch_batches(n, train.batch_size, train.seed, index)
        start = monitor.snapshot()
        began = time.perf_counter()  # the epoch's clock, as bench.measure.training.run_steps keeps it
        sync([step(rows) for rows in batches])
        seconds = time.perf_counter() - began
        windows.add(seconds, batches.size, monitor.since(start))
        index += 1
    return windows.record()


def _threads(name: str, threads: int) -> None:
    """The thread settings a suite worker applies (backends' ``setup``), before the first op."""
    if name == "torch":
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
    elif name.startswith("tf"):
        os.environ["KERAS_BACKEND"] = "tensorflow"
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.set_visible_devices([], "GPU")


def suite(backend: str, args: argparse.Namespace, folder: Path) -> dict:
    """One real ``bench run`` of the cell; its record's throughput fields."""
    out = folder / f"{backend}-{len(list(folder.iterdir()))}"
    command = [sys.executable, "-m", "bench", "run", "--backend", backend, "--models", "mlp", "--optimizers", "adam",
               "--activations", "relu", "--batch-size", str(args.batch_size), "--epochs", "2",
               "--threads", str(args.threads), "--min-window", str(args.min_window),
               "--window-budget", str(args.window_budget), "--out", str(out), "--no-report"]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    if records[-1]["status"] != "ok":
        raise RuntimeError(f"bench run {backend}: {records[-1]['status']}: {records[-1].get('error') or records[-1].get('reason')}")
    return records[-1]


def _child(name: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--plain", name, "--batch-size", str(args.batch_size),
               "--threads", str(args.threads), "--min-window", str(args.min_window),
               "--window-budget", str(args.window_budget), "--max-windows", str(args.max_windows)]
    done = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="an even number runs each order equally often")
    parser.add_argument("--backends", default="torch,tf,jax")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=len(usable_cores()))
    parser.add_argument("--min-window", type=float, default=0.5)
    parser.add_argument("--window-budget", type=float, default=3.0)
    parser.add_argument("--max-windows", type=int, default=5)
    parser.add_argument("--plain", help=argparse.SUPPRESS)  # child mode: one plain loop, JSON on stdout
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args()
    if args.plain:
        print(json.dumps(plain(args.plain, args)))
        return
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    rates: dict[str, list[float]] = {name: [] for b in backends for name in ["suite " + b, *PLAINS[b]]}
    noisy: dict[str, int] = dict.fromkeys(rates, 0)
    with tempfile.TemporaryDirectory() as tmp:
        for round_no in range(args.rounds):
            for backend in backends:
                sides = [("suite " + backend, lambda b=backend: suite(b, args, Path(tmp)))] + [
                    (p, lambda p=p: _child(p, args)) for p in PLAINS[backend]]
                for name, measure in sides if round_no % 2 == 0 else sides[::-1]:
                    fields = measure()
                    rates[name].append(fields["train_samples_per_s"])
                    noisy[name] += bool(fields["noisy"])
                    print(f"round {round_no + 1} {name:<12} {fields['train_samples_per_s']:>10,.0f} samples/s "
                          f"({fields['throughput_windows']} windows of >= {fields['throughput_window_seconds']:.2f} s"
                          f"{', noisy' if fields['noisy'] else ''})", flush=True)
    result = {"settings": vars(args) | {"json": None}, "samples_per_s": {k: _summary(v) | {"rounds": v, "noisy": noisy[k]}
                                                                         for k, v in rates.items()}, "ratios": {}}
    print(f"\nmlp, adam, relu, batch {args.batch_size}, {args.threads} threads, {args.rounds} rounds "
          f"(median [min - max] samples/s; suite/plain per round)")
    for backend in backends:
        mine = rates["suite " + backend]
        for name in PLAINS[backend]:
            ratios = [s / p for s, p in zip(mine, rates[name])]
            result["ratios"][f"{backend} suite / {name}"] = _summary(ratios)
            s, p, r = _summary(mine), _summary(rates[name]), _summary(ratios)
            print(f"  {backend:<5} suite {s['median']:>9,.0f} [{s['min']:,.0f} - {s['max']:,.0f}]  "
                  f"{name:<7} {p['median']:>9,.0f} [{p['min']:,.0f} - {p['max']:,.0f}]  "
                  f"ratio {r['median']:.3f} [{r['min']:.3f} - {r['max']:.3f}]"
                  f"{'  (noisy: suite ' + str(noisy['suite ' + backend]) + ', plain ' + str(noisy[name]) + ')' if noisy['suite ' + backend] or noisy[name] else ''}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
