"""What a cell's training losses and accuracy curve say about the cell: diverged, converged or not.

One rule for every backend (docs/architecture.md, "Measuring"): every epoch's losses go through
``check_losses``, so a loss that explodes is ``diverged`` the same way on every framework, and the
accuracy curve goes through ``convergence``, so a cell trained too briefly is marked rather than
presented as a result. The harness applies them; the thresholds live here, beside the rules that
read them, so a reader of a ``diverged`` reason or a ``convergence_note`` finds both in one place.
"""

from __future__ import annotations

import math

import numpy as np

EXPLOSION_FACTOR = 1e3
"""A training loss above this multiple of the first step's loss has exploded."""
LOSS_BOUND = 1e6
"""A training loss above this has exploded, whatever it started at."""

CONVERGENCE_FLOOR = 0.5
"""A final accuracy below this fraction of the way from chance to perfect is not a trained model."""
RISING_GAIN = 0.05
"""Validation accuracy that rose more than this (5 pp) in the last epoch was still rising fast."""
RISING_LOSS_DROP = 0.2
"""Without a validation split: a mean training loss that fell more than 20% in the last epoch."""


class Diverged(Exception):
    """The training loss became NaN or infinite, or exploded (``check_losses``)."""


def check_losses(losses: np.ndarray, first: float | None, epoch: int) -> None:
    """Raise Diverged when a step's loss is not finite, exceeds ``LOSS_BOUND``, or exceeds
    ``EXPLOSION_FACTOR`` times ``first`` (the first step's loss); one rule for every backend."""
    usable = first is not None and math.isfinite(first) and first > 0
    limit = min(LOSS_BOUND, EXPLOSION_FACTOR * first) if usable else LOSS_BOUND
    bad = np.flatnonzero(~np.isfinite(losses) | (losses > limit))
    if not bad.size:
        return
    value = losses[bad[0]]
    why = (f"training loss became {value}" if not np.isfinite(value) else
           f"training loss exploded to {value:.3g} (limit {limit:.3g}: {EXPLOSION_FACTOR:g} x the first step's "
           f"{first:.3g}, at most {LOSS_BOUND:g})")
    raise Diverged(f"{why} at epoch {epoch + 1}, step {bad[0] + 1}")


def convergence(val_accuracy: list[float], train_loss: list[float], test_accuracy: float,
                num_classes: int) -> tuple[bool, str]:
    """Whether the training budget was long enough for the accuracy to be a result, and why.

    Not converged when (1) the final accuracy (validation, else test) is below ``CONVERGENCE_FLOOR``
    of the way from chance to perfect, (2) validation accuracy rose more than ``RISING_GAIN`` in the
    last epoch (without a validation split: the mean training loss fell more than
    ``RISING_LOSS_DROP``), or (3) there is a single epoch, which cannot show accuracy stopped rising.
    """
    chance = 1.0 / num_classes
    floor = chance + CONVERGENCE_FLOOR * (1.0 - chance)
    final = val_accuracy[-1] if val_accuracy else test_accuracy
    if final < floor:
        return False, (f"accuracy {final:.3f} is below {floor:.2f} (halfway from chance to perfect): "
                       "training too short, or this configuration does not learn")
    if len(train_loss) < 2:
        return False, "a single epoch cannot show that accuracy stopped rising"
    if val_accuracy:
        gain = val_accuracy[-1] - val_accuracy[-2]
        if gain > RISING_GAIN:
            return False, (f"validation accuracy still rising fast: +{100 * gain:.1f} pp in the last epoch "
                           f"(limit {100 * RISING_GAIN:g} pp)")
        return True, f"validation accuracy changed {100 * gain:+.1f} pp in the last epoch"
    drop = 1.0 - train_loss[-1] / train_loss[-2] if train_loss[-2] > 0 else 0.0
    if drop > RISING_LOSS_DROP:
        return False, f"training loss still falling fast: -{100 * drop:.0f}% in the last epoch"
    return True, f"training loss changed {-100 * drop:+.0f}% in the last epoch"
