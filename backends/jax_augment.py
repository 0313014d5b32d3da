"""The augmentation transforms on JAX NHWC arrays, traced into the JAX adapter's jitted step.

``bench/spec/augment.py`` is the NumPy reference each one matches (tests/test_augment.py); the JAX
adapter's ``TRANSLATIONS["augment"]`` table points here. Rotate and zoom resample about the image
centre with ``map_coordinates`` (order 1, constant 0 outside the image).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.ndimage import map_coordinates

from bench.spec.train import Augment


def flip(axis: int):
    return lambda x, flip, a: jnp.where(flip[:, None, None, None], jnp.flip(x, axis), x)


def crop(x: jax.Array, offsets: jax.Array, a: Augment) -> jax.Array:
    """Zero-pad, then per image the H x W window at its (row, column) offset (vmapped dynamic_slice)."""
    _, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (a.crop, a.crop), (a.crop, a.crop), (0, 0)))
    return jax.vmap(lambda image, at: lax.dynamic_slice(image, (at[0], at[1], 0), (h, w, c)))(padded, offsets)


def _resample(x: jax.Array, linear: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]) -> jax.Array:
    """Each image sampled at ``centre + linear(row offsets, column offsets)``: map_coordinates, order 1
    (bilinear), mode 'constant' (taps outside read 0), vmapped over images and channels."""
    _, h, w, _ = x.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    rows, cols = jnp.broadcast_arrays(*linear(jnp.arange(h, dtype=jnp.float32)[:, None] - cy,
                                              jnp.arange(w, dtype=jnp.float32)[None, :] - cx))  # (B, H, W) offsets

    def image(img: jax.Array, r: jax.Array, c: jax.Array) -> jax.Array:
        channel = lambda plane: map_coordinates(plane, [r + cy, c + cx], order=1, mode="constant", cval=0.0)  # noqa: E731
        return jax.vmap(channel, in_axes=2, out_axes=2)(img)

    return jax.vmap(image)(x, rows, cols)


def rotate(x: jax.Array, angle: jax.Array, a: Augment) -> jax.Array:
    c, s = jnp.cos(angle)[:, None, None], jnp.sin(angle)[:, None, None]
    return _resample(x, lambda r, q: (c * r + s * q, c * q - s * r))


def zoom(x: jax.Array, scale: jax.Array, a: Augment) -> jax.Array:
    inverse = 1.0 / scale[:, None, None]
    return _resample(x, lambda r, q: (inverse * r, inverse * q))
