"""What does the suite cost on PyTorch? Its recorded throughput next to a plain hand-written loop.

The suite's figure is ``train_samples_per_s`` exactly as ``bench run`` records it (``run_cell``:
the harness loop over ``TorchBackend.train_step``, one sync per epoch). The plain loop is what a
careful PyTorch user writes: ``nn.Sequential`` Flatten -> Linear 128 -> ReLU -> Linear 10,
``torch.optim.Adam`` with the same hyperparameters, the data as tensors in memory, the same batch
indices, ``F.cross_entropy``. Both start from the same canonical weights.

Rounds alternate (suite, plain, suite, plain, ...) so machine noise hits both; each round's plain
loop runs one untimed warm-up epoch, as the suite warms up before its clock. Run on a quiet machine:

    python benchmarks/torch_vs_plain.py --rounds 5 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from backends.torch_backend import TorchBackend
from bench.data import epoch_batches, load_dataset
from bench.harness import Cell, run_cell
from bench.spec import SEED_MODELS, TrainSpec
from bench.weights import canonical_weights


def plain_loop(data, train: TrainSpec, weights: list[np.ndarray], epochs: int) -> float:
    """Steady-state samples/s of the hand-written loop (after one warm-up epoch)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    with torch.no_grad():
        model[1].weight.copy_(torch.from_numpy(weights[0].T.copy()))
        model[1].bias.copy_(torch.from_numpy(weights[1]))
        model[3].weight.copy_(torch.from_numpy(weights[2].T.copy()))
        model[3].bias.copy_(torch.from_numpy(weights[3]))
    optimizer = torch.optim.Adam(model.parameters(), lr=train.lr, betas=(train.beta1, train.beta2), eps=train.epsilon)
    x = torch.from_numpy(data.x_train)
    y = torch.from_numpy(data.y_train)
    model.train()
    seconds = 0.0
    samples = 0
    for epoch in range(epochs + 1):
        batches = epoch_batches(len(x), train.batch_size, train.seed, epoch)
        start = time.perf_counter()
        losses = []
        for rows in batches:
            index = torch.from_numpy(rows)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[index]), y[index])
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        torch.stack(losses).numpy()  # same end-of-epoch read-back as the suite
        if epoch > 0:
            seconds += time.perf_counter() - start
            samples += batches.size
    return samples / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per round and variant")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    data = load_dataset("mnist-sample")
    train = TrainSpec(optimizer="adam", activation="relu", batch_size=args.batch_size, epochs=args.epochs)
    model = SEED_MODELS["mlp"]
    backend = TorchBackend()
    backend.setup(args.threads)
    weights = canonical_weights(model.resolve("relu"), data.input_shape, data.num_classes, train.seed)
    suite, plain = [], []
    for _ in range(args.rounds):
        record = run_cell(backend, Cell("torch", model, train, data.name), data)
        suite.append(record.train_samples_per_s)
        plain.append(plain_loop(data, train, weights, args.epochs))
    ratios = [s / p for s, p in zip(suite, plain)]
    print(json.dumps({
        "torch": torch.__version__, "threads": torch.get_num_threads(), "batch_size": args.batch_size,
        "n_train": len(data.x_train), "rounds": args.rounds, "epochs_per_round": args.epochs,
        "suite_samples_per_s_median": statistics.median(suite), "plain_samples_per_s_median": statistics.median(plain),
        "suite_over_plain_median": statistics.median(ratios), "suite_over_plain_range": [min(ratios), max(ratios)],
        "suite_samples_per_s": suite, "plain_samples_per_s": plain,
    }, indent=2))


if __name__ == "__main__":
    main()
