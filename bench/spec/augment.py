"""Data augmentation, framework-free: the per-step random parameters, and a NumPy reference of each transform.

Every backend applies the transforms natively inside its own training step (docs/architecture.md,
"Augmentation"), but the randomness is drawn here, once, in NumPy from the seed -- like the batch
order -- so every backend transforms the same image the same way in the same step, and a test can
hold each backend's output against the reference below.

Conventions every backend follows (recorded in each record as ``augment_*``):

- images are float32 NHWC in [0, 1]; pixel (i, j) has its centre at row i, column j, and the image
  centre is ((H - 1) / 2, (W - 1) / 2);
- transforms run in ``AUGMENTATIONS`` order: hflip, vflip, crop, rotate, zoom, brightness, noise;
- rotate and zoom resample by inverse mapping about the image centre with bilinear interpolation,
  and any tap outside the image reads 0 (constant fill);
- crop pads ``crop`` zero pixels on each side and takes the H x W window at the drawn offset;
- brightness adds one delta per image, noise adds the drawn Gaussian array, each then clipped to [0, 1].

Parameters for one epoch are drawn before its clock starts; each transform has its own random
stream, so adding ``noise`` to a sweep does not change the angles ``rotate`` draws.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from bench.errors import SpecError
from bench.spec.train import AUGMENTATIONS, Augment

INTERPOLATION = "bilinear"
FILL = "constant 0"
ORDER = ("hflip, vflip, crop (zero pad, window), rotate, zoom (each one inverse-mapped resampling about the "
         "image centre), brightness, noise (each clipped to [0, 1])")
STREAM = 0xA6
"""Tag of the augmentation random streams, apart from the batch order's (bench.spec.data.epoch_batches)."""

Params = dict[str, np.ndarray]
"""One step's parameters: transform name -> array whose first axis is the image in the batch."""


def check_image_input(augment: Augment, input_shape: tuple[int, ...]) -> None:
    """Augmentation needs images (H, W, C); anything else is a SpecError naming the shape."""
    if augment.active and len(input_shape) != 3:
        raise SpecError(f"augmentation {augment.label!r} needs image inputs (H, W, C); this input has shape {tuple(input_shape)}")


def _flip(rng, a: Augment, shape, image) -> np.ndarray:
    return rng.random(shape) < 0.5


def _uniform(low: Callable[[Augment], float], high: Callable[[Augment], float]):
    return lambda rng, a, shape, image: rng.uniform(low(a), high(a), shape).astype(np.float32)


DRAWS: dict[str, Callable[[np.random.Generator, Augment, tuple[int, int], tuple[int, ...]], np.ndarray]] = {
    # (generator, spec, (steps, batch), image shape) -> the transform's parameters for every image of every step
    "hflip": _flip,
    "vflip": _flip,
    "crop": lambda rng, a, shape, image: rng.integers(0, 2 * a.crop, shape + (2,), endpoint=True).astype(np.int32),
    "rotate": lambda rng, a, shape, image: np.deg2rad(rng.uniform(-a.rotate, a.rotate, shape)).astype(np.float32),
    "zoom": _uniform(lambda a: 1.0 - a.zoom, lambda a: 1.0 + a.zoom),
    "brightness": _uniform(lambda a: -a.brightness, lambda a: a.brightness),
    "noise": lambda rng, a, shape, image: (a.noise * rng.standard_normal(shape + tuple(image), dtype=np.float32)).astype(np.float32),
}
"""What each transform draws: flips a bool per image, crop the window's (row, column) offset in the padded
image, rotate an angle in radians, zoom a scale factor, brightness a delta, noise an array per image."""


class EpochAugment(Sequence):
    """The parameters of every step of one epoch; item ``i`` is step i's ``Params`` (views, no copies)."""

    def __init__(self, arrays: Params, steps: int) -> None:
        self.arrays, self.steps = arrays, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> Params:
        if not -self.steps <= step < self.steps:
            raise IndexError(step)
        return {name: array[step] for name, array in self.arrays.items()}


def draw_epoch(augment: Augment, image_shape: tuple[int, ...], steps: int, batch_size: int, seed: int, epoch: int) -> EpochAugment:
    """The parameters of ``steps`` steps of ``batch_size`` images, from (seed, epoch) alone.

    Noise is drawn as whole arrays (one image-sized array per sample of the epoch: as large as the
    training data itself), so every backend adds the same numbers.
    """
    check_image_input(augment, image_shape)
    arrays = {
        name: DRAWS[name](np.random.default_rng([seed, epoch, STREAM, AUGMENTATIONS.index(name)]), augment,
                          (steps, batch_size), tuple(image_shape))
        for name in augment.names
    }
    return EpochAugment(arrays, steps)


def param_shapes(augment: Augment, image_shape: tuple[int, ...]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Per transform, the shape after the batch axis and the dtype of its parameters (a compiled step's signature)."""
    one = draw_epoch(augment, image_shape, 1, 1, 0, 0)[0]
    return {name: (p.shape[1:], p.dtype) for name, p in one.items()}


# -- the NumPy reference of each transform -----------------------------------------------------------
def rotation_inverse(angle: np.ndarray) -> np.ndarray:
    """Per image, the 2x2 map from an output pixel's (row, column) offset from the centre to the input's.

    Rows grow downwards, so content turning counter-clockwise on screen by ``angle`` samples the
    input at row' = cos*row + sin*col, col' = -sin*row + cos*col.
    """
    c, s = np.cos(angle.astype(np.float64)), np.sin(angle.astype(np.float64))
    return np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], -2)


def zoom_inverse(scale: np.ndarray) -> np.ndarray:
    """Per image, the inverse map of magnifying by ``scale`` about the centre: offsets divided by it."""
    return np.eye(2)[None] / scale.astype(np.float64)[:, None, None]


def resample(x: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Bilinear inverse mapping about the image centre; taps outside the image read 0 (float64 inside)."""
    n, h, w, _ = x.shape
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    grid = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1) - centre  # (H, W, 2) offsets
    source = np.einsum("bij,hwj->bhwi", inverse, grid) + centre  # (B, H, W, 2) input (row, column)
    low = np.floor(source)
    frac = source - low
    low = low.astype(np.int64)
    batch = np.arange(n)[:, None, None]
    out = np.zeros(x.shape, np.float64)
    for dr in (0, 1):
        for dc in (0, 1):
            rows, cols = low[..., 0] + dr, low[..., 1] + dc
            inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
            tap = x[batch, rows.clip(0, h - 1), cols.clip(0, w - 1)] * inside[..., None]
            weight = (frac[..., 0] if dr else 1 - frac[..., 0]) * (frac[..., 1] if dc else 1 - frac[..., 1])
            out += weight[..., None] * tap
    return out.astype(np.float32)


def _crop(x: np.ndarray, offsets: np.ndarray, pad: int) -> np.ndarray:
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    rows = offsets[:, 0, None] + np.arange(h)
    cols = offsets[:, 1, None] + np.arange(w)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _flipped(axis: int) -> Callable[[np.ndarray, np.ndarray, Augment], np.ndarray]:
    return lambda x, p, a: np.where(p[:, None, None, None], np.flip(x, axis), x)


REFERENCE: dict[str, Callable[[np.ndarray, np.ndarray, Augment], np.ndarray]] = {
    # (float32 NHWC images, this transform's parameters, spec) -> float32 images
    "hflip": _flipped(2),
    "vflip": _flipped(1),
    "crop": lambda x, p, a: _crop(x, p, a.crop),
    "rotate": lambda x, p, a: resample(x, rotation_inverse(p)),
    "zoom": lambda x, p, a: resample(x, zoom_inverse(p)),
    "brightness": lambda x, p, a: np.clip(x + p[:, None, None, None], np.float32(0), np.float32(1)),
    "noise": lambda x, p, a: np.clip(x + p, np.float32(0), np.float32(1)),
}


def apply(augment: Augment, x: np.ndarray, params: Params) -> np.ndarray:
    """The reference result of one step's augmentation of images ``x`` (float32 NHWC)."""
    x = np.asarray(x, np.float32)
    for name in augment.names:
        x = REFERENCE[name](x, params[name], augment)
    return x


def record_fields(augment: Augment) -> dict[str, str | None]:
    """What a result record says about augmentation: the spec's label and the suite's fixed choices."""
    on = augment.active
    return {"augment": augment.label, "augment_interpolation": INTERPOLATION if on else None,
            "augment_fill": FILL if on else None, "augment_order": ORDER if on else None}
