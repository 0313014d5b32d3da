"""The cost of data augmentation: augmented vs plain training of the same backend, model and configuration.

A run with ``--augment`` always trains the plain cells too (bench.run.grid.augment_axis), so each
augmented cell has a plain twin in the same run, differing only in augmentation. Per backend, model
and augmentation the cost is the ratio of training throughputs (augmented / plain: 0.8 means the
transforms cost 20% of the plain throughput) and the effect is the change in test accuracy, each
taken per configuration and then summarised with a bootstrap interval over repeats, like the headline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.results.stats import Estimate, grouped_comparison, grouped_median_interval
from reports.metrics import TEST_ACCURACY, TRAIN_THROUGHPUT
from reports.records import config_axes_but, config_keys, counted

TWIN_AXES = config_axes_but("augment")
"""What an augmented cell and its plain twin share."""


@dataclass
class AugmentationRow:
    """One backend x model x augmentation against its plain twins."""

    model: str
    variant: str
    backend: str
    augment: str
    configs: int
    plain_speed: Estimate
    augmented_speed: Estimate
    cost: Estimate
    plain_accuracy: Estimate
    augmented_accuracy: Estimate
    accuracy_change: Estimate


def _groups(frame: pd.DataFrame, keys: pd.Series, shared: list[str], field: str) -> list[pd.Series]:
    values = counted(frame, field)  # an unconverged accuracy is no result here either
    return [values[keys == key] for key in shared]


def augmentation_rows(frame: pd.DataFrame) -> list[AugmentationRow]:
    """Every augmented (model, backend variant, augmentation) with a finished plain twin, in run order."""
    ok = frame[frame["status"] == "ok"]
    plain, augmented = ok[ok["augment"] == "none"], ok[ok["augment"] != "none"]
    rows = []
    for (model, variant, label), group in augmented.groupby(["model", "variant", "augment"], sort=False):
        twins = plain[(plain["model"] == model) & (plain["variant"] == variant)]
        keys, twin_keys = config_keys(group, TWIN_AXES), config_keys(twins, TWIN_AXES)
        shared = sorted(set(keys) & set(twin_keys))
        if not shared:
            continue
        speed = [_groups(d, k, shared, TRAIN_THROUGHPUT.field) for d, k in ((group, keys), (twins, twin_keys))]
        accuracy = [_groups(d, k, shared, TEST_ACCURACY.field) for d, k in ((group, keys), (twins, twin_keys))]
        rows.append(AugmentationRow(
            model=str(model), variant=str(variant), backend=str(group["backend"].iloc[0]), augment=str(label),
            configs=len(shared),
            plain_speed=grouped_median_interval(speed[1]), augmented_speed=grouped_median_interval(speed[0]),
            cost=grouped_comparison(speed[0], speed[1], np.divide, paired=True),
            plain_accuracy=grouped_median_interval(accuracy[1]), augmented_accuracy=grouped_median_interval(accuracy[0]),
            accuracy_change=grouped_comparison(accuracy[0], accuracy[1], np.subtract, paired=True),
        ))
    return rows


def augmentation_table(rows: list[AugmentationRow]) -> pd.DataFrame:
    """augmentation.csv: one row per backend x model x augmentation, each estimate as value, low, high."""
    estimates = ("plain_speed", "augmented_speed", "cost", "plain_accuracy", "augmented_accuracy", "accuracy_change")
    names = {"plain_speed": "plain_train_samples_per_s", "augmented_speed": "augmented_train_samples_per_s",
             "cost": "throughput_ratio", "plain_accuracy": "plain_test_accuracy",
             "augmented_accuracy": "augmented_test_accuracy", "accuracy_change": "test_accuracy_change"}
    out = []
    for row in rows:
        record = {"model": row.model, "variant": row.variant, "backend": row.backend, "augment": row.augment,
                  "configs": row.configs}
        for field in estimates:
            est: Estimate = getattr(row, field)
            record |= {names[field]: est.value, f"{names[field]}_low": est.low, f"{names[field]}_high": est.high}
        out.append(record)
    columns = ["model", "variant", "backend", "augment", "configs"] + [
        f"{names[f]}{suffix}" for f in estimates for suffix in ("", "_low", "_high")]
    return pd.DataFrame(out, columns=columns)
