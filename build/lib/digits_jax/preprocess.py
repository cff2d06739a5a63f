"""A user's digit image made to look like an MNIST digit, the way MNIST itself was made.

LeCun, Cortes and Burges built MNIST from NIST's binary scans: each digit was
size-normalised to fit a 20x20 box keeping its aspect ratio (anti-aliasing gave it grey
levels), then placed in a 28x28 field so that its centre of mass lies at the centre. A
network trained on MNIST expects exactly that: light ink on a black background, no paper,
the digit about 20 pixels tall, centred by mass. A photo or a scan of a digit on paper
differs in every respect, so :func:`preprocess` goes through these steps (each a field of
:class:`Steps`, each switchable):

1. **grayscale** (always): EXIF orientation applied, transparency composited on white,
   palette and colour images converted to luminance in ``[0, 1]``; images larger than
   :data:`WORK_SIZE` are first reduced (anti-aliased): the result has 784 pixels anyway.
2. **polarity** (``auto``, ``invert``, ``keep``): MNIST has light ink on a dark
   background. ``auto`` takes the paper to be what the border of the image mostly shows,
   and inverts when it is lighter than the midpoint between the darkest and lightest ink.
3. **flatten**: subtracts the paper's slowly varying brightness (uneven lighting, shadows,
   tint), estimated as a low percentile over windows a third of the image wide.
4. **clean**: paper texture and sensor or JPEG noise sit below a noise floor (the paper's
   median plus a multiple of its spread, Otsu's threshold separating paper from ink); the
   range from that floor to the ink's median level is stretched to ``[0, 1]``, so strokes
   keep anti-aliased edges and a saturated core, as in MNIST.
5. **despeckle**: drops connected blobs (8-connected) whose ink is below
   ``speck_fraction`` of the largest blob's: dust, dots, grain that survived the floor.
6. **crop**: to the bounding box of the ink.
7. **stroke_width** (off unless set): thickens strokes thinner than this many output
   pixels (a fine pen on a large page shrinks to a faint hairline); not part of MNIST's
   recipe, an option for inputs that need it.
8. **fit**: resizes the crop to fit a :data:`BOX` x :data:`BOX` box keeping the aspect
   ratio (Lanczos, anti-aliased). Without it the (cropped) image is padded to a square and
   resized to the whole 28x28 field.
9. **center** (``mass`` or ``box``): places the box in the 28x28 field with its centre of
   mass on pixel (14, 14), rounded to whole pixels (MNIST's own centres of mass are at
   14.0 +- 0.3 in both axes), moved only as far as keeps all the ink in the field; ``box``
   centres the bounding box instead.

An image with no ink (an empty page, a blank canvas) raises :class:`EmptyImageError`.
Pillow does the resizing and colour work, ``scipy.ndimage`` the filters, labelling and
centre of mass. :func:`digits_jax.predict.predict_files` and the drawing page
(``python -m experiments.serve``) call :func:`preprocess`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage

FIELD = 28  # MNIST's image size.
BOX = 20  # The box MNIST's digits were size-normalised to.
CENTER = (14.0, 14.0)  # Where MNIST's centres of mass lie (row, column), in pixel indices.
WORK_SIZE = 448  # Larger images are reduced to this many pixels on their long side first.
POLARITIES = ("auto", "invert", "keep")
CENTERS = ("mass", "box")
STEP_NAMES = ("flatten", "clean", "despeckle", "crop", "fit")


class EmptyImageError(ValueError):
  """An image with nothing on it that stands out from the paper: no digit to read."""


@dataclasses.dataclass(frozen=True)
class Steps:
  """Which preprocessing steps run, and their settings (see the module docstring).

  ``Steps()`` is the full MNIST recipe; :meth:`none` only converts to grayscale and resizes
  the whole image to 28x28 (the baseline without preprocessing).
  """

  polarity: str = "auto"
  flatten: bool = True
  clean: bool = True
  despeckle: bool = True
  crop: bool = True
  stroke_width: float | None = None
  fit: bool = True
  center: str = "mass"
  # Ink must stand this far above the paper (in [0, 1] grey levels) to count as a digit.
  min_contrast: float = 0.1
  # Blobs with less ink than this fraction of the largest blob's are dropped by despeckle.
  speck_fraction: float = 0.05

  def __post_init__(self):
    if self.polarity not in POLARITIES:
      raise ValueError(f"polarity must be one of {', '.join(POLARITIES)}, got {self.polarity!r}")
    if self.center not in CENTERS:
      raise ValueError(f"center must be one of {', '.join(CENTERS)}, got {self.center!r}")
    if self.stroke_width is not None and not 0 < self.stroke_width < BOX:
      raise ValueError(
        f"stroke_width must be in (0, {BOX}) output pixels, got {self.stroke_width!r}"
      )

  @classmethod
  def none(cls) -> Steps:
    """Grayscale, the whole image padded to a square and resized to 28x28: no recipe."""
    return cls(
      polarity="keep",
      flatten=False,
      clean=False,
      despeckle=False,
      crop=False,
      fit=False,
      center="box",
    )

  def without(self, *names: str) -> Steps:
    """These steps switched off (names from :data:`STEP_NAMES`, or ``polarity``).

    Raises:
      ValueError: an unknown step name.
    """
    changes: dict[str, Any] = {}
    for name in names:
      if name == "polarity":
        changes["polarity"] = "keep"
      elif name in STEP_NAMES:
        changes[name] = False
      else:
        raise ValueError(
          f"unknown preprocessing step {name!r}; the steps that can be "
          f"switched off are: polarity, {', '.join(STEP_NAMES)}"
        )
    return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Preprocessed:
  """What :func:`preprocess_steps` made of an image."""

  image: np.ndarray  # (28, 28) float32 in [0, 1]: light ink on black, the network's input.
  inverted: bool  # Whether the polarity step inverted the image.


def grayscale(image: Image.Image, work_size: int | None = WORK_SIZE) -> np.ndarray:
  """An image of any Pillow mode as luminance in ``[0, 1]``, transparency on white.

  Args:
    image: a Pillow image (RGB, RGBA, L, LA, P with or without transparency, 1, I;16, I,
      F, CMYK, ...). Its EXIF orientation, when present, is applied.
    work_size: reduce (anti-aliased) so that the long side has at most this many pixels;
      ``None`` keeps the size.

  Returns:
    A ``(height, width)`` float64 array, 0 black, 1 white.
  """
  image = ImageOps.exif_transpose(image)
  if image.mode == "P":
    image = image.convert("RGBA" if "transparency" in image.info else "RGB")
  elif image.mode in ("L", "RGB") and "transparency" in image.info:
    image = image.convert("RGBA")  # a colour key marks transparent pixels
  if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
    values = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
    image = Image.fromarray((np.clip(values, 0, None) / top).astype(np.float32))
  elif "A" in image.mode or image.mode == "RGBa":
    rgba = image.convert("RGBA")
    paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    image = Image.alpha_composite(paper, rgba).convert("L")
  elif image.mode != "L":
    image = image.convert("L")
  if work_size and max(image.size) > work_size:
    scale = work_size / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
  values = np.asarray(image, dtype=np.float64)
  if image.mode == "L":
    values = values / 255.0
  return np.clip(values, 0.0, 1.0)


def paper_is_light(gray: np.ndarray) -> bool:
  """Whether the paper (what the border mostly shows) is lighter than the ink.

  Args:
    gray: ``(height, width)`` luminance in ``[0, 1]``.

  Returns:
    True for dark ink on light paper (to be inverted for MNIST), False for light on dark.
  """
  h, w = gray.shape
  k = max(1, min(h, w) // 20)
  border = np.concatenate(
    [gray[:k].ravel(), gray[-k:].ravel(), gray[:, :k].ravel(), gray[:, -k:].ravel()]
  )
  lo, hi = np.percentile(gray, [1, 99])
  return bool(np.median(border) > (lo + hi) / 2)


def _resize(values: np.ndarray, height: int, width: int) -> np.ndarray:
  """A float array resized with Pillow's anti-aliased Lanczos filter."""
  image = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))
  return np.asarray(image.resize((width, height), Image.Resampling.LANCZOS), dtype=np.float64)


def flatten(ink: np.ndarray) -> np.ndarray:
  """Subtracts the slowly varying paper level from light-ink-on-dark ``ink``.

  The paper level is the 10th percentile over windows a third of the short side wide
  (on a copy reduced to about 32 pixels on its short side), smoothed and brought back to
  full size: uneven lighting, shadows and tint go, strokes (narrower than the window,
  covering well under 90% of it) stay.
  """
  h, w = ink.shape
  scale = min(1.0, 32 / min(h, w))
  small = _resize(ink, max(1, round(h * scale)), max(1, round(w * scale))) if scale < 1 else ink
  size = max(3, round(min(small.shape) / 3))
  paper = ndimage.percentile_filter(small, 10, size=size, mode="reflect")
  paper = ndimage.uniform_filter(paper, size=size, mode="reflect")
  if paper.shape != ink.shape:
    paper = _resize(paper, h, w)
  return np.clip(ink - paper, 0.0, None)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
  """Otsu's threshold: the grey level that best separates two classes of ``values``."""
  hist, edges = np.histogram(values, bins=bins)
  centers = (edges[:-1] + edges[1:]) / 2
  weight0 = np.cumsum(hist)
  weight1 = weight0[-1] - weight0
  mean0 = np.cumsum(hist * centers) / np.maximum(weight0, 1)
  mean1 = (np.sum(hist * centers) - np.cumsum(hist * centers)) / np.maximum(weight1, 1)
  between = weight0 * weight1 * (mean0 - mean1) ** 2
  return float(centers[int(np.argmax(between))])


def ink_levels(ink: np.ndarray) -> tuple[float, float, float]:
  """``(paper, spread, ink)``: the paper's median and robust spread, the ink's median.

  Otsu's threshold splits the pixels into paper (below) and ink (above); the spread is the
  paper's median absolute deviation scaled to a standard deviation.
  """
  t = otsu_threshold(ink)
  paper = ink[ink <= t]
  strokes = ink[ink > t]
  if paper.size == 0 or strokes.size == 0:
    level = float(np.median(ink))
    return level, 0.0, level
  paper_level = float(np.median(paper))
  spread = 1.4826 * float(np.median(np.abs(paper - paper_level)))
  return paper_level, spread, float(np.median(strokes))


def clean(ink: np.ndarray, paper: float, spread: float, level: float) -> np.ndarray:
  """Sets everything below the noise floor to 0 and stretches floor..ink level to 0..1.

  The floor is the paper level plus 4 spreads, and at least 15% of the way to the ink.
  """
  floor = max(paper + 4 * spread, paper + 0.15 * (level - paper))
  floor = min(floor, paper + 0.6 * (level - paper))
  return np.clip((ink - floor) / (level - floor), 0.0, 1.0)


def despeckle(ink: np.ndarray, fraction: float) -> np.ndarray:
  """Zeroes 8-connected blobs with less than ``fraction`` of the largest blob's ink."""
  labels, n = ndimage.label(ink > 0, structure=np.ones((3, 3), bool))
  if n <= 1:
    return ink
  mass = ndimage.sum_labels(ink, labels, index=np.arange(1, n + 1))
  keep = np.concatenate([[False], mass >= fraction * mass.max()])
  return np.where(keep[labels], ink, 0.0)


def crop(ink: np.ndarray) -> np.ndarray:
  """The bounding box of the pixels above 0."""
  rows = np.flatnonzero(ink.any(axis=1))
  cols = np.flatnonzero(ink.any(axis=0))
  return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def stroke_width(ink: np.ndarray) -> float:
  """Mean stroke width in pixels: twice the ink area over its perimeter (pixels > 0.5)."""
  mask = ink > 0.5
  perimeter = np.count_nonzero(mask & ~ndimage.binary_erosion(mask))
  return 2.0 * np.count_nonzero(mask) / max(perimeter, 1)


def thicken(ink: np.ndarray, width: float, scale: float) -> np.ndarray:
  """Grey-dilates strokes so that they are about ``width`` pixels wide after ``scale``."""
  missing = width / scale - stroke_width(ink)
  radius = int(round(missing / 2))
  if radius < 1:
    return ink
  y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
  disk = x * x + y * y <= radius * radius
  padded = np.pad(ink, radius)
  return ndimage.grey_dilation(padded, footprint=disk)


def fit_box(ink: np.ndarray, box: int = BOX) -> np.ndarray:
  """Resizes ``ink`` (anti-aliased) to fit a ``box`` x ``box`` square, keeping its aspect."""
  h, w = ink.shape
  scale = box / max(h, w)
  out = _resize(ink, max(1, min(box, round(h * scale))), max(1, min(box, round(w * scale))))
  return np.clip(out, 0.0, 1.0)


def place(patch: np.ndarray, center: str = "mass") -> np.ndarray:
  """Puts ``patch`` into a 28x28 field, centred by mass on :data:`CENTER` or by its box.

  The shift is rounded to whole pixels and limited so that the whole patch stays inside.
  """
  h, w = patch.shape
  if center == "mass" and patch.sum() > 0:
    com_r, com_c = ndimage.center_of_mass(patch)
    top, left = round(CENTER[0] - com_r), round(CENTER[1] - com_c)
  else:
    top, left = (FIELD - h) // 2, (FIELD - w) // 2
  top = min(max(top, 0), FIELD - h)
  left = min(max(left, 0), FIELD - w)
  field = np.zeros((FIELD, FIELD))
  field[top : top + h, left : left + w] = patch
  return field


def _square(ink: np.ndarray) -> np.ndarray:
  h, w = ink.shape
  n = max(h, w)
  top, left = (n - h) // 2, (n - w) // 2
  return np.pad(ink, ((top, n - h - top), (left, n - w - left)))


def preprocess_steps(image: Image.Image | np.ndarray, steps: Steps = Steps()) -> Preprocessed:
  """:func:`preprocess`, also saying whether the image was inverted.

  Args:
    image: a Pillow image, or a ``(height, width)`` array of luminance in ``[0, 1]`` or
      ``[0, 255]`` (uint8).
    steps: which steps run.

  Returns:
    A :class:`Preprocessed`.

  Raises:
    EmptyImageError: no ink stands out from the paper by ``steps.min_contrast``.
  """
  if isinstance(image, Image.Image):
    gray = grayscale(image)
  else:
    values = np.asarray(image)
    if values.ndim == 3 and values.shape[-1] == 1:
      values = values[..., 0]
    if values.ndim != 2:
      raise ValueError(f"expected a (height, width) array, got shape {values.shape}")
    gray = grayscale(
      Image.fromarray(
        values.astype(np.uint8) if values.dtype == np.uint8 else values.astype(np.float32)
      )
    )
  inverted = steps.polarity == "invert" or (steps.polarity == "auto" and paper_is_light(gray))
  ink = 1.0 - gray if inverted else gray
  if steps.flatten:
    ink = flatten(ink)
  paper, spread, level = ink_levels(ink)
  if level - paper < steps.min_contrast:
    raise EmptyImageError(
      f"no ink found: nothing stands out from the paper by more than {steps.min_contrast:g} "
      f"of the grey range (ink {level - paper:.3f} above the paper); the image is empty or "
      "too faint"
    )
  if steps.clean:
    ink = clean(ink, paper, spread, level)
  if steps.despeckle:
    ink = despeckle(ink, steps.speck_fraction)
  if steps.crop:
    ink = crop(ink)
  if steps.stroke_width is not None:
    scale = (BOX if steps.fit else FIELD) / max(ink.shape)
    ink = thicken(ink, steps.stroke_width, scale)
    if steps.crop:
      ink = crop(ink)
  if steps.fit:
    out = place(fit_box(ink), steps.center)
  else:
    out = _resize(_square(ink), FIELD, FIELD)
  out = np.clip(out, 0.0, 1.0).astype(np.float32)
  return Preprocessed(image=out, inverted=inverted)


def preprocess(image: Image.Image | np.ndarray, steps: Steps = Steps()) -> np.ndarray:
  """A user's digit image as a network trained on MNIST expects it (see the module doc).

  Args:
    image: a Pillow image of any mode and size, or a ``(height, width)`` luminance array.
    steps: which steps run (default: all of MNIST's recipe).

  Returns:
    ``(28, 28)`` float32 in ``[0, 1]``: light ink on black, centred by mass.

  Raises:
    EmptyImageError: no ink stands out from the paper (an empty page).
  """
  return preprocess_steps(image, steps).image
