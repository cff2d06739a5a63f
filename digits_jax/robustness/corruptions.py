"""The 15 corruptions of MNIST-C (Mu & Gilmer 2019), with numpy and scipy only.

MNIST-C applies each corruption at its default severity to the 10,000 MNIST test digits. The
functions here follow the maths of its reference code (``corruptions.py`` of
github.com/google-research/mnist-c) with the same parameters, batched over the images:

* ``shot_noise`` (severity 5): Poisson noise, ``poisson(3 x) / 3``.
* ``impulse_noise`` (severity 4): salt and pepper: each pixel is hit with probability 0.17,
  a hit pixel is white or black with probability 1/2 (scikit-image's ``random_noise``).
* ``glass_blur`` (severity 1): Gaussian blur (sigma 0.7, scikit-image's truncation at 4 sigma
  and ``nearest`` border), truncation to bytes, two passes of local pixel swaps (every pixel
  from (27, 27) down to (2, 2), with probability 1/2, swaps with its neighbour at offset
  (dy, dx) in {-1, 0}^2), then the same blur again. The reference passes
  ``multichannel=True`` for a 2-D image, which makes scikit-image treat the columns as
  colour channels: both blurs run along the rows (vertically) only, and so do these.
* ``motion_blur`` (severity 1): ImageMagick's ``MotionBlurImage`` (radius 10, sigma 3, angle
  uniform in [-45, 45] degrees), re-implemented from its source: a one-sided kernel of
  ``2 * ceil(radius) + 1`` = 21 taps with Gaussian weights ``exp(-d^2 / (2 sigma^2))``
  (normalised) at distances d = 0..20 along the angle, each tap rounded to a whole pixel
  offset, edge pixels repeated beyond the border, the result rounded to bytes. An
  approximation only in that ImageMagick rounds twice (to 16-bit, then to 8-bit).
* ``shear`` (severity 2), ``rotate`` (severity 2), ``scale`` (severity 3), ``translate``
  (severity 3): scikit-image's ``warp`` with an ``AffineTransform`` as the inverse map
  (bilinear, zero outside): shear 0.4 or rotation 0.4 radians with a random sign, scale
  ``1 / 0.7`` on the sampling grid (the digit shrinks to 70 %), all three about the centre
  (13.5, 13.5); translation by 3 pixels along each axis, each with a random sign.
* ``brightness`` (severity 5): the reference adds 0.5 to the V channel of HSV; for a grey
  pixel V is the grey value, so this is ``min(x + 0.5, 1)`` (computed through the same
  grey-to-RGB-to-grey arithmetic, so that ties round as in the reference).
* ``stripe``: columns 0-6 and 21-27 inverted.
* ``fog`` (severity 5): a 256 x 256 diamond-square plasma fractal (``wibbledecay`` 1.4),
  normalised to [0, 1] over the whole map, its top-left 28 x 28 crop times 3 added, the sum
  rescaled by ``max / (max + 3)``, ``max`` the image's brightest pixel. The map is computed
  in float32 from offsets of 16 random bits each (the reference: float64, 53 bits), far
  below the 1/255 steps of the result.
* ``spatter`` (severity 4): the reference's mud spatter: Gaussian noise (mean 0.65, sd 0.3)
  blurred (sigma 1), thresholded at 0.65, the mask blurred (sigma 1.5) and kept where at
  least 0.8; masked pixels move towards grey 63/255. This branch has no OpenCV step, so it is
  exact.
* ``dotted_line``: a line from (row r0, column 0) to (r1, 27), r0 and r1 uniform in 0..26,
  with the reference's logarithmic fall-off over 2.3 pixels, every other pair of columns
  removed.
* ``zigzag``: the reference's zigzag (segments of length 2 and height 2) from column 2 to 25,
  starting at a row uniform in 0..26 and tilted by ``arctan(delta / 23)``, delta uniform in
  -5..4. Slopes use true division (the reference under Python 3).
* ``canny_edges``: scikit-image's ``canny`` with its defaults: Gaussian smoothing (sigma 1)
  normalised by the smoothed all-ones mask, Sobel gradients, non-maximum suppression by
  interpolating the magnitude along the gradient's direction, hysteresis with thresholds 0.1
  and 0.2 over 8-connected components. Binary.

The corrupted images are rounded to bytes (the published arrays are uint8; the reference's
notebook rounds the same way), then returned as float32 multiples of 1/255. The inputs are
quantised to bytes first, as the reference reads 8-bit digits. Image i of a call with
``offset`` draws its randomness from ``np.random.default_rng((seed, k, offset + i))``, k the
corruption's index in :data:`NAMES`, so a result does not depend on how the images are split
into batches.

:func:`load_published` and :func:`check_published` read the published arrays
(``<dir>/<name>/test_images.npy`` and ``test_labels.npy``); :func:`contact_sheet` draws one
digit of each class under every corruption. The image operations the corruptions are built
from (affine warps, lines, blurs, the plasma fractal, Canny edges) are in
:mod:`digits_jax.robustness.image_ops`.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import ndimage

from digits_jax import files
from digits_jax.robustness import image_ops

NAMES: tuple[str, ...] = (
  "shot_noise",
  "impulse_noise",
  "glass_blur",
  "motion_blur",
  "shear",
  "scale",
  "rotate",
  "brightness",
  "translate",
  "stripe",
  "fog",
  "spatter",
  "dotted_line",
  "zigzag",
  "canny_edges",
)

SIZE = image_ops.SIZE
IMAGES_FILE = "test_images.npy"
LABELS_FILE = "test_labels.npy"
_CHUNK = 1000  # images corrupted at a time (memory only; the results do not depend on it)
_FOG_CHUNK = 16  # plasma fractals built at a time (small enough to stay in cache)

_PUBLISHED_LAYOUT = (
  "expected <dir>/<corruption>/test_images.npy, uint8 of shape (N, 28, 28, 1), and "
  "<dir>/<corruption>/test_labels.npy, integers of shape (N,), for each corruption: the layout "
  "of mnist_c.zip (Mu & Gilmer 2019, https://zenodo.org/record/3239543; unzip it and pass its "
  "mnist_c folder), also what tensorflow-datasets' mnist_corrupted downloads"
)


class CorruptionError(ValueError):
  """An unknown corruption name, bad images, or a missing or malformed published array; the
  message says which and how to fix it."""


def check_names(names: str | Iterable[str]) -> tuple[str, ...]:
  """Validates corruption names.

  Args:
    names: names from :data:`NAMES` (one name may be given as a string); ``"all"`` stands for
      all of them.

  Returns:
    The names in the order given, ``"all"`` expanded, repeats dropped.

  Raises:
    CorruptionError: a name is unknown; the message lists the valid names.
  """
  if isinstance(names, str):
    names = [names]
  out: list[str] = []
  for name in names:
    expanded = NAMES if name == "all" else (name,)
    for n in expanded:
      if n not in NAMES:
        raise CorruptionError(
          f"unknown corruption {n!r}; valid corruptions are: {', '.join(NAMES)} (or all)"
        )
      if n not in out:
        out.append(n)
  return tuple(out)


# --------------------------------------------------------------------------------------------
# Shared helpers


def _generators(seed: int, name: str, indices: np.ndarray) -> list[np.random.Generator]:
  """One generator per image: ``default_rng((seed, index of name, image index))``."""
  key = NAMES.index(name)
  return [np.random.default_rng((seed, key, int(i))) for i in indices]


def _signs(rngs: Sequence[np.random.Generator], size: int | None = None) -> np.ndarray:
  """A random -1 or +1 per generator (``np.random.choice([-1, 1])``)."""
  return np.array([r.integers(0, 2, size=size) * 2 - 1 for r in rngs])


def _warped(p: np.ndarray, matrices: np.ndarray) -> np.ndarray:
  """The reference's ``clip(warp(x / 255, inverse_map=aff), 0, 1) * 255`` as float32."""
  x = image_ops.warp(p / 255.0, matrices)
  return (np.clip(x, 0, 1) * 255).astype(np.float32)


# --------------------------------------------------------------------------------------------
# The corruptions. Each takes uint8 digits (N, 28, 28) and one generator per image, and
# returns the reference's output before it is stored as bytes: float32 in [0, 255].


def _shot_noise(p, rngs):
  c = 3
  lam = p / 255.0 * c
  counts = np.stack([r.poisson(lam_i) for r, lam_i in zip(rngs, lam)])
  return (np.clip(counts / float(c), 0, 1) * 255).astype(np.float32)


def _impulse_noise(p, rngs):
  amount, salt_vs_pepper = 0.17, 0.5
  u = np.stack([r.random((2,) + p.shape[1:]) for r in rngs])
  flipped = u[:, 0] < amount
  salted = u[:, 1] < salt_vs_pepper
  x = p / 255.0
  x[flipped & salted] = 1.0
  x[flipped & ~salted] = 0.0
  return (np.clip(x, 0, 1) * 255).astype(np.float32)


def _glass_blur(p, rngs):
  sigma, max_delta, iterations = 0.7, 1, 2
  x = (image_ops.vertical_gaussian(p / 255.0, sigma) * 255).astype(np.uint8)
  steps = len(image_ops.glass_positions(max_delta, iterations))
  swap = np.empty((len(p), steps), dtype=bool)
  delta = np.empty((len(p), steps, 2), dtype=np.int64)
  for i, r in enumerate(rngs):
    swap[i] = r.integers(0, 2, size=steps) == 0
    delta[i] = r.integers(-max_delta, max_delta, size=(steps, 2))
  x = image_ops.glass_shuffle(x, swap, delta, max_delta, iterations) / 255.0
  return (np.clip(image_ops.vertical_gaussian(x, sigma), 0, 1) * 255).astype(np.float32)


def _motion_blur(p, rngs):
  angles = np.array([r.uniform(-45, 45) for r in rngs])
  return image_ops.motion_blur_images(p, angles, radius=10.0, sigma=3.0)


def _shear(p, rngs):
  c = 0.4 * _signs(rngs)
  return _warped(p, np.stack([image_ops.centred_affine(shear=float(s)) for s in c]))


def _rotate(p, rngs):
  c = 0.4 * _signs(rngs)
  return _warped(p, np.stack([image_ops.centred_affine(rotation=float(s)) for s in c]))


def _scale(p, rngs):
  return _warped(p, image_ops.centred_affine(scale=(1 / 0.7, 1 / 0.7)))


def _translate(p, rngs):
  bits = 3 * _signs(rngs, size=2)  # (N, 2): dx, dy
  m = np.zeros((len(p), 3, 3))
  m[:, 0, 0] = m[:, 1, 1] = m[:, 2, 2] = 1.0
  m[:, 0, 2], m[:, 1, 2] = bits[:, 0], bits[:, 1]
  return _warped(p, m)


@functools.cache
def _brightness_table() -> np.ndarray:
  """The reference's brightness (severity 5) of each byte value: grey to RGB, +0.5 on HSV's
  value (hue and saturation are 0, so RGB stays grey), back to grey with the luminance
  weights, which sum to 1."""
  v = np.clip(np.arange(256) / 255.0 + 0.5, 0, 1)
  rgb = np.stack([v, v, v], axis=-1)
  grey = rgb @ np.array([0.2125, 0.7154, 0.0721])
  return (np.clip(grey, 0, 1) * 255).astype(np.float32)


def _brightness(p, rngs):
  return _brightness_table()[p]


def _stripe(p, rngs):
  x = p.astype(np.float32)
  x[:, :, :7] = 255.0 - x[:, :, :7]
  x[:, :, 21:] = 255.0 - x[:, :, 21:]
  return x


def _plasma_uniforms(r: np.random.Generator, count: int) -> np.ndarray:
  """``count`` float32 numbers uniform in (-1, 1): 16 random bits each, centred in their
  bins."""
  k = np.frombuffer(r.bytes(2 * count), dtype="<u2").astype(np.float32)
  k += np.float32(0.5)
  k *= np.float32(2.0**-15)
  k -= np.float32(1.0)
  return k


def _fog(p, rngs):
  strength, decay, mapsize = 3.0, 1.4, 256
  count = mapsize * mapsize - 1
  out = np.empty(p.shape, dtype=np.float32)
  for start in range(0, len(p), _FOG_CHUNK):
    stop = min(start + _FOG_CHUNK, len(p))
    uniforms = np.stack([_plasma_uniforms(r, count) for r in rngs[start:stop]])
    plasma = image_ops.plasma_fractal(uniforms, mapsize, decay, crop=SIZE).astype(np.float64)
    x = p[start:stop] / 255.0
    max_val = x.max(axis=(1, 2), keepdims=True)
    x = x + strength * plasma
    out[start:stop] = np.clip(x * max_val / (max_val + strength), 0, 1) * 255
  return out


def _spatter(p, rngs):
  loc, scale, sigma, threshold, mask_sigma = 0.65, 0.3, 1.0, 0.65, 1.5
  x = p.astype(np.float32) / 255.0
  liquid = np.stack([r.normal(loc, scale, size=p.shape[1:]) for r in rngs])
  liquid = ndimage.gaussian_filter(liquid, (0, sigma, sigma), mode="nearest", truncate=4.0)
  liquid[liquid < threshold] = 0
  m = (liquid > threshold).astype(np.float32)
  m = ndimage.gaussian_filter(m, (0, mask_sigma, mask_sigma), mode="nearest", truncate=4.0)
  m[m < 0.8] = 0
  colour = np.float32(63 / 255.0) * m  # mud
  x *= 1 - m
  return (np.clip(x + colour, 0, 1) * 255).astype(np.float32)


def _dotted_line(p, rngs):
  ends = np.array([r.integers(0, 27, size=2) for r in rngs]).reshape(-1, 2)
  line = image_ops.line_from_points(0, ends[:, 0], 27, ends[:, 1])
  cols = np.arange(SIZE)
  line[:, :, (cols // 2) % 2 == 0] = 0  # columns 0-1, 4-5, ..., 24-25 removed
  return (np.clip(p / 255.0 + line, 0, 1) * 255).astype(np.float32)


def _zigzag(p, rngs):
  # Per image: the starting row, then the rise (the reference's r0 and r1 - r0).
  draws = np.array([(r.integers(0, 27), r.integers(-5, 5)) for r in rngs]).reshape(-1, 2)
  x = p / 255.0
  for delta in np.unique(draws[:, 1]):
    which = np.flatnonzero(draws[:, 1] == delta)
    start = draws[which, 0].astype(np.float64)
    cs, rs = image_ops.zigzag_path(int(delta))
    lines = np.zeros((len(which), SIZE, SIZE))
    for i in range(1, len(cs)):
      lines += image_ops.line_from_points(cs[i - 1], rs[i - 1] + start, cs[i], rs[i] + start)
    # Adding the non-negative segments one by one with a clip after each is the same as
    # adding them all and clipping once.
    x[which] = np.clip(x[which] + lines, 0, 1)
  return (x * 255).astype(np.float32)


def _canny_edges(p, rngs):
  return image_ops.canny(p / 255.0).astype(np.float32) * 255


# name -> (corruption, whether it draws random numbers)
_CORRUPTIONS: dict[str, tuple[Callable[..., np.ndarray], bool]] = {
  "shot_noise": (_shot_noise, True),
  "impulse_noise": (_impulse_noise, True),
  "glass_blur": (_glass_blur, True),
  "motion_blur": (_motion_blur, True),
  "shear": (_shear, True),
  "scale": (_scale, False),
  "rotate": (_rotate, True),
  "brightness": (_brightness, False),
  "translate": (_translate, True),
  "stripe": (_stripe, False),
  "fog": (_fog, True),
  "spatter": (_spatter, True),
  "dotted_line": (_dotted_line, True),
  "zigzag": (_zigzag, True),
  "canny_edges": (_canny_edges, False),
}
assert tuple(_CORRUPTIONS) == NAMES


def is_random(name: str) -> bool:
  """Whether the corruption draws random numbers (``scale``, ``brightness``, ``stripe`` and
  ``canny_edges`` do not: they ignore the seed)."""
  return _CORRUPTIONS[check_names([name])[0]][1]


def _as_bytes(images: np.ndarray) -> np.ndarray:
  """Float images (N, 28, 28[, 1]) in [0, 1] -> uint8 (N, 28, 28), rounded."""
  x = np.asarray(images)
  if x.ndim == 4 and x.shape[-1] == 1:
    x = x[..., 0]
  if x.ndim != 3 or x.shape[1:] != (SIZE, SIZE):
    raise CorruptionError(
      f"images must have shape (N, {SIZE}, {SIZE}) or (N, {SIZE}, {SIZE}, 1), got "
      f"{np.shape(images)}"
    )
  x = x.astype(np.float64, copy=False)
  if x.size and not np.isfinite(x).all():
    raise CorruptionError("images hold NaN or infinite values")
  return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def _to_float(corrupted: np.ndarray) -> np.ndarray:
  """The reference's output in [0, 255] -> bytes (rounded) -> float32 multiples of 1/255."""
  q = np.clip(np.round(corrupted), 0, 255).astype(np.float32)
  return q / np.float32(255.0)


def _corrupt_bytes(name: str, p: np.ndarray, seed: int, indices: np.ndarray) -> np.ndarray:
  """Corrupts uint8 digits (N, 28, 28) whose randomness is that of images ``indices``;
  float32 (N, 28, 28)."""
  fn, random = _CORRUPTIONS[name]
  out = np.empty(p.shape, dtype=np.float32)
  for start in range(0, len(p), _CHUNK):
    stop = min(start + _CHUNK, len(p))
    rngs = _generators(seed, name, indices[start:stop]) if random else []
    out[start:stop] = _to_float(fn(p[start:stop], rngs))
  return out


def corrupt(name: str, images: np.ndarray, seed: int = 0, *, offset: int = 0) -> np.ndarray:
  """Applies one MNIST-C corruption to a batch of digits.

  Args:
    name: one of :data:`NAMES`.
    images: float (N, 28, 28, 1) or (N, 28, 28) in [0, 1] (rounded to multiples of 1/255
      first, values outside clipped).
    seed: a non-negative integer; image i draws its randomness from
      ``np.random.default_rng((seed, NAMES.index(name), offset + i))``.
    offset: the index of ``images[0]`` in the whole set: ``corrupt(name, x[a:b], seed,
      offset=a)`` equals ``corrupt(name, x, seed)[a:b]``.

  Returns:
    float32 of the shape of ``images``, in [0, 1], multiples of 1/255.

  Raises:
    CorruptionError: an unknown name (the message lists the valid ones), images of another
      shape, non-finite values, or a negative seed or offset.
  """
  (name,) = check_names([name])
  if int(seed) < 0 or int(offset) < 0:
    raise CorruptionError(f"seed and offset must be non-negative, got {seed} and {offset}")
  p = _as_bytes(images)
  indices = np.arange(len(p), dtype=np.int64) + int(offset)
  out = _corrupt_bytes(name, p, int(seed), indices)
  return out.reshape(np.shape(images))


# --------------------------------------------------------------------------------------------
# The published arrays


def _published_paths(mnist_c_dir, name: str) -> tuple[Path, Path]:
  folder = Path(mnist_c_dir) / name
  return folder / IMAGES_FILE, folder / LABELS_FILE


def _load_array(path: Path, mmap: bool) -> np.ndarray:
  if not path.is_file():
    raise CorruptionError(f"MNIST-C file {path} is missing: {_PUBLISHED_LAYOUT}")
  try:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise CorruptionError(
      f"MNIST-C file {path} is not a readable .npy array ({e}): {_PUBLISHED_LAYOUT}"
    ) from None


def _read_published(mnist_c_dir, name: str, mmap: bool) -> tuple[np.ndarray, np.ndarray]:
  """The published images and labels of one corruption, checked; the images memory-mapped
  when ``mmap``."""
  (name,) = check_names([name])
  images_path, labels_path = _published_paths(mnist_c_dir, name)
  images = _load_array(images_path, mmap)
  labels = _load_array(labels_path, mmap=False)
  if (
    images.dtype != np.uint8
    or images.ndim not in (3, 4)
    or images.shape[1:3] != (SIZE, SIZE)
    or (images.ndim == 4 and images.shape[3] != 1)
  ):
    raise CorruptionError(
      f"MNIST-C file {images_path} holds {images.dtype} of shape {images.shape}, not uint8 of "
      f"shape (N, {SIZE}, {SIZE}, 1): {_PUBLISHED_LAYOUT}"
    )
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise CorruptionError(
      f"MNIST-C file {labels_path} holds {labels.dtype} of shape {labels.shape}, not integers "
      f"of shape (N,): {_PUBLISHED_LAYOUT}"
    )
  if len(labels) != len(images):
    raise CorruptionError(
      f"MNIST-C files {images_path} and {labels_path} disagree: {len(images)} images but "
      f"{len(labels)} labels: {_PUBLISHED_LAYOUT}"
    )
  if len(labels) and (labels.min() < 0 or labels.max() > 9):
    raise CorruptionError(
      f"MNIST-C file {labels_path} holds labels outside 0-9 ({labels.min()} to "
      f"{labels.max()}): {_PUBLISHED_LAYOUT}"
    )
  return images, labels


def load_published(mnist_c_dir: str | os.PathLike, name: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads one corruption's published MNIST-C test arrays.

  Args:
    mnist_c_dir: the folder of mnist_c.zip (Mu & Gilmer 2019) or of tensorflow-datasets'
      ``mnist_corrupted`` download, with ``<name>/test_images.npy`` (N, 28, 28, 1) uint8 and
      ``<name>/test_labels.npy`` (N,) in it.
    name: one of :data:`NAMES`.

  Returns:
    float32 images (N, 28, 28, 1) in [0, 1] (the bytes divided by 255) and int32 labels (N,).

  Raises:
    CorruptionError: an unknown name, or a missing or malformed file; the message names the
      file, the layout expected and where MNIST-C's arrays come from.
  """
  images, labels = _read_published(mnist_c_dir, name, mmap=False)
  out = images.reshape(len(images), SIZE, SIZE, 1).astype(np.float32)
  np.divide(out, np.float32(255.0), out=out)
  return out, labels.astype(np.int32)


def check_published(mnist_c_dir: str | os.PathLike, names: str | Iterable[str]) -> None:
  """Checks that every corruption of ``names`` has its published arrays, readable and of the
  right shapes and types, before any work starts (the images are only memory-mapped).

  Raises:
    CorruptionError: an unknown name, or the first missing or malformed file.
  """
  folder = Path(mnist_c_dir)
  if not folder.is_dir():
    raise CorruptionError(f"MNIST-C folder {folder} does not exist: {_PUBLISHED_LAYOUT}")
  for name in check_names(names):
    _read_published(folder, name, mmap=True)


# --------------------------------------------------------------------------------------------
# Contact sheet


def contact_sheet(
  images: np.ndarray,
  labels: np.ndarray,
  path: str | os.PathLike,
  seed: int = 0,
  names: str | Iterable[str] = NAMES,
) -> str:
  """Draws one digit of each class under every corruption, as a PNG.

  The digit of class k is the first of class k in ``images``, corrupted exactly as
  :func:`corrupt` corrupts it within the whole of ``images`` (same seed, same index). Rows:
  the clean digits, then each corruption, named on the left; columns: classes 0-9 (a class
  missing from ``labels`` leaves its column empty).

  Args:
    images: float (N, 28, 28, 1) or (N, 28, 28) in [0, 1].
    labels: (N,) integer classes.
    path: the PNG to write (its folder is created; the file is replaced atomically).
    seed: the corruptions' seed.
    names: the corruptions (``"all"`` for all of them).

  Returns:
    ``path`` as a string.

  Raises:
    CorruptionError: an unknown name, or images and labels that do not match.
  """
  names = check_names(names)
  p = _as_bytes(images)
  labels = np.asarray(labels).reshape(-1)
  if len(labels) != len(p):
    raise CorruptionError(f"{len(p)} images but {len(labels)} labels")
  classes = list(range(10))
  first = {k: int(np.flatnonzero(labels == k)[0]) for k in classes if np.any(labels == k)}
  if not first:
    raise CorruptionError("no image of any class 0-9 to show")
  shown = np.array([first[k] for k in classes if k in first], dtype=np.int64)
  rows = [("clean", _to_float(p[shown].astype(np.float32)))]
  for name in names:
    rows.append((name, _corrupt_bytes(name, p[shown], int(seed), shown)))

  cell = 0.75
  fig = Figure(figsize=(1.4 + cell * len(classes), 0.4 + cell * len(rows)), dpi=100)
  FigureCanvasAgg(fig)
  axes = fig.subplots(len(rows), len(classes), squeeze=False)
  fig.subplots_adjust(
    left=1.4 / (1.4 + cell * len(classes)),
    right=0.99,
    bottom=0.01,
    top=1 - 0.35 / (0.4 + cell * len(rows)),
    wspace=0.06,
    hspace=0.06,
  )
  for i, (name, corrupted) in enumerate(rows):
    j_shown = 0
    for k in classes:
      ax = axes[i, k]
      ax.set_xticks([])
      ax.set_yticks([])
      if k in first:
        ax.imshow(corrupted[j_shown], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        j_shown += 1
      else:
        for spine in ax.spines.values():
          spine.set_visible(False)
      if i == 0:
        ax.set_title(str(k), fontsize=10)
    axes[i, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100)
  files.write_bytes(path, buffer.getvalue())
  return str(path)
