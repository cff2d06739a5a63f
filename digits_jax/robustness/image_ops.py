"""The image operations MNIST-C's corruptions are built from, with numpy and scipy only.

MNIST-C's reference code (``corruptions.py`` of github.com/google-research/mnist-c) builds its
corruptions from scikit-image (``AffineTransform`` and ``warp``, ``gaussian``, ``canny``),
ImageMagick (``MotionBlurImage``, through Wand) and helpers of its own (``line_from_points``,
the zigzag's corners, the glass blur's pixel swaps, the fog's diamond-square
``plasma_fractal``). This module re-implements those operations, batched over (N, 28, 28)
images, so that the project needs neither scikit-image nor ImageMagick, and so that
:mod:`digits_jax.robustness.corruptions` holds only the corruptions themselves: their
parameters, their random draws and the public API. Nothing here draws random numbers (the
callers pass the draws in) or imports :mod:`~digits_jax.robustness.corruptions`.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import ndimage

SIZE = 28
CENTRE = 13.5  # the reference's centre of rotation, shear and scale: (13.5, 13.5)


def skimage_affine(
  scale: tuple[float, float] = (1.0, 1.0),
  rotation: float = 0.0,
  shear: float = 0.0,
  translation: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
  """The 3 x 3 matrix of scikit-image's ``AffineTransform`` (as of 2019), acting on (x, y) =
  (column, row) points."""
  sx, sy = scale
  return np.array(
    [
      [sx * math.cos(rotation), -sy * math.sin(rotation + shear), translation[0]],
      [sx * math.sin(rotation), sy * math.cos(rotation + shear), translation[1]],
      [0.0, 0.0, 1.0],
    ]
  )


def centred_affine(**kwargs) -> np.ndarray:
  """:func:`skimage_affine` with the translation that keeps (13.5, 13.5) fixed, as the
  reference's shear, scale and rotate build it."""
  m = skimage_affine(**kwargs)
  (a1, a2), (b1, b2) = m[0, :2], m[1, :2]
  return skimage_affine(**kwargs, translation=(CENTRE * (1 - a1 - a2), CENTRE * (1 - b1 - b2)))


def warp(images: np.ndarray, matrices: np.ndarray) -> np.ndarray:
  """scikit-image's ``warp(image, inverse_map=matrix)`` for a batch, order 1, zero outside.

  Args:
    images: (N, H, W) floats.
    matrices: (N, 3, 3) or (3, 3) inverse maps in scikit-image's convention: output pixel
      (row r, column c) takes the input's value at column ``m[0] @ (c, r, 1)``, row
      ``m[1] @ (c, r, 1)``, interpolated bilinearly from the four pixels around it, pixels
      outside the image counting as 0.

  Returns:
    (N, H, W) float64.
  """
  images = np.asarray(images, dtype=np.float64)
  n, h, w = images.shape
  m = np.broadcast_to(np.asarray(matrices, dtype=np.float64), (n, 3, 3))
  rows, cols = np.meshgrid(
    np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij"
  )
  coef = m[:, :2, :, None, None]  # (n, 2, 3, 1, 1)
  src_c = coef[:, 0, 0] * cols + coef[:, 0, 1] * rows + coef[:, 0, 2]
  src_r = coef[:, 1, 0] * cols + coef[:, 1, 1] * rows + coef[:, 1, 2]
  r0, c0 = np.floor(src_r), np.floor(src_c)
  dr, dc = src_r - r0, src_c - c0
  # One row and column of zeros around each image: an index clipped to -1 or h (w) reads 0,
  # as every pixel outside the image does.
  padded = np.pad(images, ((0, 0), (1, 1), (1, 1))).reshape(-1)
  pw = w + 2
  base = (np.arange(n) * (h + 2) * pw)[:, None, None]
  ri0 = np.clip(r0, -1, h).astype(np.int64) + 1
  ri1 = np.clip(r0 + 1, -1, h).astype(np.int64) + 1
  ci0 = np.clip(c0, -1, w).astype(np.int64) + 1
  ci1 = np.clip(c0 + 1, -1, w).astype(np.int64) + 1
  top = (1 - dc) * padded[base + ri0 * pw + ci0] + dc * padded[base + ri0 * pw + ci1]
  bottom = (1 - dc) * padded[base + ri1 * pw + ci0] + dc * padded[base + ri1 * pw + ci1]
  return (1 - dr) * top + dr * bottom


def line_from_points(c0, r0, c1, r1) -> np.ndarray:
  """The reference's ``line_from_points`` for a batch of lines: (N, 28, 28) in [0, 1].

  Each line runs from (column c0, row r0) to (c1, r1); a pixel at vertical distance d from it
  gets ``log(1 - d / 2.3) + 1`` clipped to [0, 1]; columns before ``floor(c0)`` and from
  ``ceil(c1)`` on are cleared (with Python's slice rules for negative bounds, as the
  reference's ``corruption[:, :l] = 0``); a line with ``c1 == c0`` is empty.
  """
  c0, r0, c1, r1 = (np.asarray(v, dtype=np.float64) for v in (c0, r0, c1, r1))
  c0, r0, c1, r1 = np.broadcast_arrays(*(np.atleast_1d(v) for v in (c0, r0, c1, r1)))
  same = c1 == c0
  slope = (r1 - r0) / np.where(same, 1.0, c1 - c0)
  cols = np.arange(SIZE, dtype=np.float64)
  f = slope[:, None] * (cols - c0[:, None]) + r0[:, None]  # (N, 28): the line's row per column
  dist = np.clip(np.abs(cols[None, :, None] - f[:, None, :]), 0, 2.3 - 1e-10)
  line = np.clip(np.log(1 - dist / 2.3) + 1, 0, 1)
  lo, hi = np.floor(c0).astype(np.int64), np.ceil(c1).astype(np.int64)
  lo = np.where(lo >= 0, lo, np.maximum(SIZE + lo, 0))
  hi = np.where(hi >= 0, hi, np.maximum(SIZE + hi, 0))
  keep = (cols[None, :] >= lo[:, None]) & (cols[None, :] < hi[:, None]) & ~same[:, None]
  return np.clip(line * keep[:, None, :], 0, 1)


def vertical_gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
  """scikit-image's ``gaussian(x, sigma, multichannel=True)`` of a 2-D image, per image:
  the columns count as channels, so only the rows are blurred."""
  return ndimage.gaussian_filter1d(x, sigma, axis=1, mode="nearest", truncate=4.0)


def glass_positions(max_delta: int = 1, iterations: int = 2) -> list[tuple[int, int]]:
  """The pixels the reference's glass blur visits, in order: (row, column) from (27, 27) down
  to (max_delta + 1, max_delta + 1), row by row, ``iterations`` times."""
  return [
    (h, w)
    for _ in range(iterations)
    for h in range(SIZE - max_delta, max_delta, -1)
    for w in range(SIZE - max_delta, max_delta, -1)
  ]


def glass_shuffle(
  images: np.ndarray, swap: np.ndarray, delta: np.ndarray, max_delta: int = 1, iterations: int = 2
) -> np.ndarray:
  """The reference's local pixel swaps, for a batch.

  Args:
    images: (N, 28, 28) pixels (left unchanged).
    swap: (N, steps) bool, one per visit of :func:`glass_positions`: whether the pixel swaps.
    delta: (N, steps, 2) ints (dx, dy): pixel (h, w) swaps with (h + dy, w + dx).
    max_delta: the reference's ``c[1]``.
    iterations: the reference's ``c[2]``.

  Returns:
    The swapped images: the visits happen one after another, as in the reference's loops.
  """
  positions = glass_positions(max_delta, iterations)
  n = len(images)
  pos = np.array([h * SIZE + w for h, w in positions])
  delta = np.asarray(delta) * np.asarray(swap)[:, :, None]  # no swap: a swap with itself
  partner = pos[None, :] + delta[:, :, 1] * SIZE + delta[:, :, 0]  # flat index, per image
  flat = np.array(images).reshape(n, -1)
  rows = np.arange(n)
  for t in range(len(positions)):
    a, b = pos[t], partner[:, t]
    here = flat[:, a].copy()
    flat[:, a] = flat[rows, b]
    flat[rows, b] = here
  return flat.reshape(np.shape(images))


def motion_kernel(radius: float, sigma: float) -> np.ndarray:
  """ImageMagick's motion-blur weights: ``2 * ceil(radius) + 1`` taps, ``exp(-d^2 / (2
  sigma^2))`` at distance d = 0, 1, ..., normalised to sum 1."""
  width = int(2 * math.ceil(radius) + 1)
  d = np.arange(width, dtype=np.float64)
  k = np.exp(-(d * d) / (2.0 * sigma * sigma)) / (math.sqrt(2 * math.pi) * sigma)
  return k / k.sum()


def motion_offsets(width: int, angles_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """ImageMagick's whole-pixel tap offsets along each angle: (columns, rows), each
  (N, width); tap d sits at ``ceil(d cos(angle) - 0.5)`` columns right and ``ceil(d
  sin(angle) - 0.5)`` rows down."""
  rad = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))[:, None]
  px, py = width * np.sin(rad), width * np.cos(rad)
  hyp = np.hypot(px, py)
  d = np.arange(width, dtype=np.float64)[None, :]
  dx = np.ceil(d * py / hyp - 0.5).astype(np.int64)
  dy = np.ceil(d * px / hyp - 0.5).astype(np.int64)
  return dx, dy


def motion_blur_images(p: np.ndarray, angles_deg: np.ndarray, radius=10.0, sigma=3.0):
  """ImageMagick's ``MotionBlurImage`` of 8-bit digits, one angle each (degrees): output
  pixel (r, c) is the weighted sum of the input at (r + dy_d, c + dx_d) over the taps d of
  :func:`motion_kernel` and :func:`motion_offsets`, edge pixels repeated outside the image,
  rounded to bytes. Float32 (N, H, W)."""
  p = np.asarray(p)
  n, h, w = p.shape
  kernel = motion_kernel(radius, sigma)
  width = len(kernel)
  dx, dy = motion_offsets(width, angles_deg)
  pad = width - 1
  # Images with the same taps are blurred together, from views of the edge-padded batch.
  patterns, group = np.unique(np.concatenate([dx, dy], axis=1), axis=0, return_inverse=True)
  group = group.reshape(-1)
  order = np.argsort(group, kind="stable")
  bounds = np.searchsorted(group[order], np.arange(len(patterns) + 1))
  padded = np.pad(p[order].astype(np.float64), ((0, 0), (pad, pad), (pad, pad)), mode="edge")
  out = np.empty((n, h, w))
  for g, pattern in enumerate(patterns):
    block = padded[bounds[g] : bounds[g + 1]]
    acc = np.zeros((len(block), h, w))
    for t in range(width):
      r0, c0 = pad + pattern[width + t], pad + pattern[t]
      acc += kernel[t] * block[:, r0 : r0 + h, c0 : c0 + w]
    out[order[bounds[g] : bounds[g + 1]]] = acc
  return np.clip(np.round(out), 0, 255).astype(np.float32)


def plasma_fractal(
  uniforms: np.ndarray, mapsize: int = 256, wibbledecay: float = 3.0, crop: int | None = None
) -> np.ndarray:
  """The reference's diamond-square height maps, one per row of ``uniforms``.

  Each level halves the grid's step: a square's centre becomes the mean of its four corners,
  then each diamond's centre the mean of its four neighbours (the map wraps around), plus
  ``wibble**2`` times a uniform offset; ``wibble`` starts at 100 and is divided by
  ``wibbledecay`` after each level. The map is then scaled to [0, 1] over all its points.

  Args:
    uniforms: (N, mapsize**2 - 1) numbers uniform in [-1, 1): the offsets, consumed in the
      reference's order (per level: the squares, then the two grids of diamonds).
    mapsize: the side, a power of two.
    wibbledecay: how fast the offsets shrink from one level to the next.
    crop: return only the top-left ``crop`` x ``crop`` corner of each map (still scaled by
      the whole map's minimum and maximum); all of it by default.

  Returns:
    (N, crop, crop) float32 in [0, 1].
  """
  if mapsize < 2 or mapsize & (mapsize - 1):
    raise ValueError(f"mapsize must be a power of two, got {mapsize}")
  crop = mapsize if crop is None else crop
  u = np.asarray(uniforms, dtype=np.float32)
  if u.ndim != 2 or u.shape[1] != mapsize * mapsize - 1:
    raise ValueError(f"uniforms must have shape (N, {mapsize * mapsize - 1}), got {u.shape}")
  n = len(u)
  grid = np.zeros((n, 1, 1), dtype=np.float32)  # the points of the current level
  wibble, used, k = 100.0, 0, 1

  def add_offsets(values: np.ndarray) -> np.ndarray:
    nonlocal used
    size = k * k
    values *= np.float32(0.25)
    values += np.float32(wibble * wibble) * u[:, used : used + size].reshape(n, k, k)
    used += size
    return values

  while True:
    # The grid with its first row and column repeated after its last: the map wraps around.
    wrapped = np.empty((n, k + 1, k + 1), dtype=np.float32)
    wrapped[:, :k, :k] = grid
    wrapped[:, k, :k] = grid[:, 0]
    wrapped[:, :, k] = wrapped[:, :, 0]
    # Square centres ((i + 1/2) step, (j + 1/2) step): the four corners.
    centres = wrapped[:, :k, :k] + wrapped[:, 1:, :k]
    centres += wrapped[:, :k, 1:] + wrapped[:, 1:, 1:]
    add_offsets(centres)
    # Diamond centres (i step, (j + 1/2) step): the centres above and below, the corners
    # left and right; then ((i + 1/2) step, j step): centres left and right, corners above
    # and below.
    across = centres + np.roll(centres, 1, axis=1)
    across += wrapped[:, :k, :k] + wrapped[:, :k, 1:]
    add_offsets(across)
    down = centres + np.roll(centres, 1, axis=2)
    down += wrapped[:, :k, :k] + wrapped[:, 1:, :k]
    add_offsets(down)
    parts = (grid, across, down, centres)  # at (even, even), (even, odd), (odd, even), (odd, odd)
    wibble /= wibbledecay
    if 2 * k == mapsize:
      break
    grid = np.empty((n, 2 * k, 2 * k), dtype=np.float32)
    for part, (dr, dc) in zip(parts, ((0, 0), (0, 1), (1, 0), (1, 1))):
      grid[:, dr::2, dc::2] = part
    k *= 2
  low = np.minimum.reduce([part.min(axis=(1, 2)) for part in parts])[:, None, None]
  high = np.maximum.reduce([part.max(axis=(1, 2)) for part in parts])[:, None, None]
  half = min(k, (crop + 1) // 2)
  out = np.empty((n, 2 * half, 2 * half), dtype=np.float32)
  for part, (dr, dc) in zip(parts, ((0, 0), (0, 1), (1, 0), (1, 1))):
    out[:, dr::2, dc::2] = part[:, :half, :half]
  out = out[:, :crop, :crop] - low
  out /= high - low
  return out


@functools.cache
def zigzag_path(delta: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """The reference's zigzag corners for a rise of ``delta`` rows over columns 2-25: (columns,
  rows relative to the starting row)."""
  a = b = 2.0
  c0, c1 = 2, 25
  theta = math.atan(delta / (c1 - c0))
  d = (c1 - c0) / math.cos(theta)
  points = [(0.0, 0.0)]
  r_i = 0.0
  for i in range(int((d - a) // (2 * a)) + 1):
    r_i = (-1) ** i * b
    points.append(((2 * i + 1) * a, r_i))
  max_c = (2 * a) * (d // (2 * a))
  if d != max_c:
    points.append((d, r_i / (2 * (d - max_c))))
  ends = np.array(points).T
  rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
  cs, rs = rot @ ends
  return tuple(cs + c0), tuple(rs)


def canny(images: np.ndarray, sigma: float = 1.0, low: float = 0.1, high: float = 0.2):
  """scikit-image's ``feature.canny`` of each float image in [0, 1] (its defaults): a bool
  edge map (N, H, W).

  Smoothing: Gaussian (zero outside, truncated at 4 sigma) divided by the same Gaussian of an
  all-ones image; gradients: Sobel (reflected border); a pixel is a local maximum when its
  magnitude is at least the magnitudes interpolated on both sides along its gradient
  direction (in four sectors, the later sectors winning ties, as in scikit-image); the
  outermost pixels and zero gradients are never edges; hysteresis keeps the 8-connected
  components of the maxima at least ``low`` that hold one at least ``high``.
  """
  x = np.asarray(images, dtype=np.float64)
  s = (0, sigma, sigma)
  bleed = ndimage.gaussian_filter(np.ones((1,) + x.shape[1:]), s, mode="constant", truncate=4.0)
  smoothed = ndimage.gaussian_filter(x, s, mode="constant", truncate=4.0)
  smoothed = smoothed / (bleed + np.finfo(float).eps)

  def sobel(a, axis):
    other = 2 if axis == 1 else 1
    d = ndimage.correlate1d(a, [-1, 0, 1], axis=axis, mode="reflect")
    return ndimage.correlate1d(d, [1, 2, 1], axis=other, mode="reflect")

  isobel, jsobel = sobel(smoothed, 1), sobel(smoothed, 2)
  abs_i, abs_j = np.abs(isobel), np.abs(jsobel)
  magnitude = np.hypot(isobel, jsobel)
  eroded = np.zeros(x.shape, dtype=bool)
  eroded[:, 1:-1, 1:-1] = True
  eroded &= magnitude > 0

  with np.errstate(divide="ignore", invalid="ignore"):
    w_j_over_i = abs_j / abs_i
    w_i_over_j = abs_i / abs_j
  rows, cols = x.shape[1:]
  padded = np.pad(magnitude, ((0, 0), (1, 1), (1, 1)))

  def at(dr, dc):  # the magnitude at (i + dr, j + dc), 0 outside
    return padded[:, 1 + dr : 1 + dr + rows, 1 + dc : 1 + dc + cols]

  # (sector test, weight, (c1, c2) offsets on the plus side, (c1, c2) on the minus side)
  sectors = (
    (
      ((isobel >= 0) & (jsobel >= 0) | (isobel <= 0) & (jsobel <= 0)) & (abs_i >= abs_j),
      w_j_over_i,
      ((1, 0), (1, 1)),
      ((-1, 0), (-1, -1)),
    ),
    (
      ((isobel >= 0) & (jsobel >= 0) | (isobel <= 0) & (jsobel <= 0)) & (abs_i <= abs_j),
      w_i_over_j,
      ((0, 1), (1, 1)),
      ((0, -1), (-1, -1)),
    ),
    (
      ((isobel <= 0) & (jsobel >= 0) | (isobel >= 0) & (jsobel <= 0)) & (abs_i <= abs_j),
      w_i_over_j,
      ((0, 1), (-1, 1)),
      ((0, -1), (1, -1)),
    ),
    (
      ((isobel <= 0) & (jsobel >= 0) | (isobel >= 0) & (jsobel <= 0)) & (abs_i >= abs_j),
      w_j_over_i,
      ((-1, 0), (-1, 1)),
      ((1, 0), (1, -1)),
    ),
  )
  local_maxima = np.zeros(x.shape, dtype=bool)
  for test, w, (p1, p2), (m1, m2) in sectors:
    pts = eroded & test
    with np.errstate(invalid="ignore"):
      c_plus = at(*p2) * w + at(*p1) * (1 - w) <= magnitude
      c_minus = at(*m2) * w + at(*m1) * (1 - w) <= magnitude
    local_maxima = np.where(pts, c_plus & c_minus, local_maxima)

  high_mask = local_maxima & (magnitude >= high)
  low_mask = local_maxima & (magnitude >= low)
  structure = np.zeros((3, 3, 3), dtype=bool)
  structure[1] = True  # 8-connected within each image, never across images
  labels, count = ndimage.label(low_mask, structure)
  if count == 0:
    return low_mask
  good = np.bincount(labels.reshape(-1), weights=high_mask.reshape(-1), minlength=count + 1) > 0
  good[0] = False
  return good[labels]
