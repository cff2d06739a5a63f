"""On-device data augmentation: random small rotations, shifts, zooms and elastic distortion.

Applied inside the jitted train step (:func:`random_warp`), so augmented images never
exist on the host. Each image gets its own rotation angle, sub-pixel shift and (when
``max_zoom`` > 0) scale factor; pixels are resampled bilinearly and what comes in from
outside the frame is background (0). The strengths are recipe settings (``--rotation``,
``--shift``, ``--zoom``); the defaults, 10 degrees, 2 pixels and no zoom, are what every run
used before they were settings, and with ``max_zoom`` = 0 the random draws are the same as
then.

Elastic distortion (Simard, Steinkraus and Platt 2003, ``--elastic_alpha``,
``--elastic_sigma``): every image gets its own displacement field, uniform noise in [-1, 1]
per pixel and axis, smoothed by a Gaussian of standard deviation ``sigma`` pixels and scaled
by ``alpha`` pixels. It is composed with the rotation, shift and zoom into one bilinear
resampling. The Gaussian's weights are non-negative and sum to at most 1, so no pixel moves
more than ``alpha`` pixels along either axis (:func:`elastic_field`); typically far less:
away from the border the noise's variance (1/3) times the squared weights along each axis
(about ``1 / (2 * sqrt(pi) * sigma)`` each) gives a standard deviation of about
``alpha / (6 * sigma)`` pixels. With ``alpha`` = 0 nothing is drawn and the other draws are
unchanged.

:func:`shifted_copies` gives the fixed copies that test-time augmentation averages over.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy import ndimage

MAX_DEGREES = 10.0
MAX_SHIFT = 2.0  # pixels


def _gaussian_matrix(n: int, sigma: float) -> jax.Array:
  """(n, n) matrix that smooths a length-n signal by a normalised Gaussian (truncated at
  3 sigma, at least radius 1), zero beyond its ends: row i holds the weights of output i."""
  radius = max(1, int(math.ceil(3 * sigma)))
  x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  k = jnp.exp(-0.5 * (x / sigma) ** 2)
  k = k / k.sum()
  offset = jnp.arange(n)[None, :] - jnp.arange(n)[:, None]  # j - i
  return jnp.where(jnp.abs(offset) <= radius, k[jnp.clip(offset + radius, 0, 2 * radius)], 0.0)


def elastic_field(rng: jax.Array, shape: tuple[int, int], alpha: float, sigma: float) -> jax.Array:
  """One random displacement field (2, H, W) in pixels, (rows, columns).

  Uniform noise in [-1, 1], smoothed along each axis by a Gaussian of standard deviation
  ``sigma`` (zero beyond the image), times ``alpha``: every displacement is at most
  ``alpha`` pixels along each axis. The smoothing is two small matrix products.
  """
  h, w = shape
  noise = jax.random.uniform(rng, (2, h, w), minval=-1.0, maxval=1.0)
  g_rows, g_cols = _gaussian_matrix(h, sigma), _gaussian_matrix(w, sigma)
  return alpha * jnp.einsum("ij,cjk,lk->cil", g_rows, noise, g_cols)


def _warp(
  image: jax.Array,
  angle: jax.Array,
  shift: jax.Array,
  scale: jax.Array | float = 1.0,
  displacement: jax.Array | None = None,
) -> jax.Array:
  """Scales one HxWxC image by ``scale`` and rotates it by ``angle`` (radians) about its
  centre, then shifts it by ``shift`` (rows, columns) pixels; ``displacement`` (2, H, W),
  if given, moves each output pixel's sampling point by that many pixels first (elastic
  distortion)."""
  h, w = image.shape[:2]
  rows, cols = jnp.meshgrid(
    jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
  )
  if displacement is not None:
    rows, cols = rows + displacement[0], cols + displacement[1]
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


def random_warp(
  rng: jax.Array,
  images: jax.Array,
  max_degrees: float = MAX_DEGREES,
  max_shift: float = MAX_SHIFT,
  max_zoom: float = 0.0,
  elastic_alpha: float = 0.0,
  elastic_sigma: float = 4.0,
  *,
  batch_axis: str | None = None,
) -> jax.Array:
  """Warps each image of an NHWC batch by its own random rotation, shift, zoom and elastic
  distortion, in one bilinear resampling (zoom only when ``max_zoom`` > 0, elastic
  distortion only when ``elastic_alpha`` > 0).

  Args:
    rng: PRNG key.
    images: (B, H, W, C) float images, background 0.
    max_degrees: angles are uniform in [-max_degrees, max_degrees].
    max_shift: shifts are uniform in [-max_shift, max_shift] pixels on each axis.
    max_zoom: scale factors are uniform in [1 - max_zoom, 1 + max_zoom] (0: none, and no
      key is drawn for them).
    elastic_alpha: scale of the elastic displacement fields, pixels (0: none, and no key
      is drawn for them); see :func:`elastic_field`.
    elastic_sigma: standard deviation of their Gaussian smoothing, pixels.
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
  if not elastic_alpha:
    return jax.vmap(_warp)(images, angles, shifts, scales).astype(images.dtype)
  keys = jax.random.split(jax.random.fold_in(rng, 3), b * parts)
  if batch_axis is not None:
    keys = jax.lax.dynamic_slice_in_dim(keys, start, b)
  fields = jax.vmap(lambda k: elastic_field(k, images.shape[1:3], elastic_alpha, elastic_sigma))(
    keys
  )
  return jax.vmap(_warp)(images, angles, shifts, scales, fields).astype(images.dtype)


# Test-time augmentation: the image itself and its one-pixel shifts (rows, columns).
TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


def shift_pixels(images: jax.Array, dy: int, dx: int) -> jax.Array:
  """NHWC images moved by whole pixels (down ``dy``, right ``dx``), background 0 coming in."""
  h, w = images.shape[1:3]
  padded = jnp.pad(images, ((0, 0), (abs(dy),) * 2, (abs(dx),) * 2, (0, 0)))
  top, left = abs(dy) - dy, abs(dx) - dx
  return padded[:, top : top + h, left : left + w]


def shifted_copies(images: jax.Array, shifts=TTA_SHIFTS) -> list[jax.Array]:
  """The copies of a batch that test-time augmentation averages over."""
  return [shift_pixels(images, dy, dx) for dy, dx in shifts]
