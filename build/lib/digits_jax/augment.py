"""On-device data augmentation: random small rotations, shifts and zooms.

Applied inside the jitted train step, so augmented images never exist on the
host. Each image gets its own rotation angle, sub-pixel shift and (when ``max_zoom`` > 0)
scale factor; pixels are resampled bilinearly and what comes in from outside the frame is
background (0). The strengths are recipe settings (``--rotation``, ``--shift``, ``--zoom``);
the defaults, 10 degrees, 2 pixels and no zoom, are what every run used before they were
settings, and with ``max_zoom`` = 0 the random draws are the same as then.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy import ndimage

MAX_DEGREES = 10.0
MAX_SHIFT = 2.0  # pixels


def _warp(
  image: jax.Array, angle: jax.Array, shift: jax.Array, scale: jax.Array | float = 1.0
) -> jax.Array:
  """Scales one HxWxC image by ``scale`` and rotates it by ``angle`` (radians) about its
  centre, then shifts it by ``shift`` (rows, columns) pixels."""
  h, w = image.shape[:2]
  rows, cols = jnp.meshgrid(
    jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
  )
  cy, cx = (h - 1) / 2, (w - 1) / 2
  # Inverse map: for each output pixel, where it comes from in the input.
  y, x = (rows - cy - shift[0]) / scale, (cols - cx - shift[1]) / scale
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  src_y = cos * y - sin * x + cy
  src_x = sin * y + cos * x + cx
  channels = [
    ndimage.map_coordinates(image[..., c], [src_y, src_x], order=1, mode="constant")
    for c in range(image.shape[-1])
  ]
  return jnp.stack(channels, axis=-1)


def random_rotate_shift(
  rng: jax.Array,
  images: jax.Array,
  max_degrees: float = MAX_DEGREES,
  max_shift: float = MAX_SHIFT,
  max_zoom: float = 0.0,
  *,
  batch_axis: str | None = None,
) -> jax.Array:
  """Augments a batch of NHWC images with per-image rotations, shifts and zooms.

  Args:
    rng: PRNG key.
    images: (B, H, W, C) float images, background 0.
    max_degrees: angles are uniform in [-max_degrees, max_degrees].
    max_shift: shifts are uniform in [-max_shift, max_shift] pixels on each axis.
    max_zoom: scale factors are uniform in [1 - max_zoom, 1 + max_zoom] (0: none, and no
      key is drawn for them).
    batch_axis: inside ``jax.shard_map``, the mesh axis the batch is split over:
      ``images`` is then this device's equal part of the batch, and its images get the
      angles and shifts they get when the whole batch is augmented at once.

  Returns:
    The augmented batch, same shape and dtype.
  """
  b = images.shape[0]
  parts = 1 if batch_axis is None else jax.lax.axis_size(batch_axis)
  angle_rng, shift_rng = jax.random.split(rng)
  angles = jax.random.uniform(angle_rng, (b * parts,), minval=-max_degrees, maxval=max_degrees)
  shifts = jax.random.uniform(shift_rng, (b * parts, 2), minval=-max_shift, maxval=max_shift)
  scales = jnp.ones((b * parts,), jnp.float32)
  if max_zoom:
    zoom_rng = jax.random.fold_in(rng, 2)
    scales = jax.random.uniform(zoom_rng, (b * parts,), minval=1 - max_zoom, maxval=1 + max_zoom)
  if batch_axis is not None:
    start = jax.lax.axis_index(batch_axis) * b
    angles = jax.lax.dynamic_slice_in_dim(angles, start, b)
    shifts = jax.lax.dynamic_slice_in_dim(shifts, start, b)
    scales = jax.lax.dynamic_slice_in_dim(scales, start, b)
  angles = jnp.deg2rad(angles)
  return jax.vmap(_warp)(images, angles, shifts, scales).astype(images.dtype)
