"""A set of user-style digit images: what people photograph, scan or draw, not MNIST.

Each image is one digit rendered with a handwriting-like font from Debian's font packages
(:data:`FONTS`) and then given what real photos and scans of a digit on paper have:
a canvas of any size and aspect, the digit anywhere on it at any size, stroke thickness,
rotation and shear, tinted and textured paper, uneven lighting, coloured or faint ink,
blur, sensor noise, JPEG compression, and the file formats and modes people send (JPEG,
PNG in RGB, grayscale or with a transparent background, palette GIF, BMP, WebP, TIFF);
one image in ten is light ink on a dark board. It serves to measure how well a network
trained on MNIST reads such images, with and without :mod:`digits_jax.preprocess`.

The set is deterministic: image ``i`` depends only on the seed, ``i`` and the font files
(its digit is ``i % 10``, its font ``FONTS[(i // 10) % len(FONTS)]``), so the same command
makes the same files. ``python -m experiments.userstyle --output_dir=DIR`` writes it, with a
``labels.csv`` (file, label); the file names also start with their digit.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from scipy import ndimage

from digits_jax import files

# (Debian package, font file): handwriting-like fonts with all ten digits.
FONTS: tuple[tuple[str, str], ...] = (
  ("fonts-bwht", "/usr/share/fonts/opentype/bwht/BecauseWeBuild-Regular.otf"),
  ("fonts-bwht", "/usr/share/fonts/opentype/bwht/BecauseWeConnect-Regular.otf"),
  ("fonts-bwht", "/usr/share/fonts/opentype/bwht/BecauseWeCreate-Regular.otf"),
  ("fonts-bwht", "/usr/share/fonts/opentype/bwht/BecauseWeLearn-Regular.otf"),
  ("fonts-bwht", "/usr/share/fonts/opentype/bwht/BecauseWeMentor-Regular.otf"),
  ("fonts-bwht", "/usr/share/fonts/opentype/bwht/BecauseWeOrganize-Regular.otf"),
  ("fonts-comic-neue", "/usr/share/fonts/opentype/comic-neue/ComicNeue-Regular.otf"),
  ("fonts-comic-neue", "/usr/share/fonts/opentype/comic-neue/ComicNeue-Bold.otf"),
  ("fonts-comic-neue", "/usr/share/fonts/opentype/comic-neue/ComicNeue-Italic.otf"),
  ("fonts-comic-neue", "/usr/share/fonts/opentype/comic-neue/ComicNeue-Light.otf"),
  ("fonts-dancingscript", "/usr/share/fonts/opentype/dancingscript/DancingScript-Regular.otf"),
  ("fonts-dancingscript", "/usr/share/fonts/opentype/dancingscript/DancingScript-Bold.otf"),
  ("fonts-kaushanscript", "/usr/share/fonts/opentype/kaushanscript/KaushanScript-Regular.otf"),
  ("fonts-breip", "/usr/share/fonts/truetype/breip/Breip.ttf"),
  ("fonts-dkg-handwriting", "/usr/share/fonts/truetype/fifthhorseman/dkg.ttf"),
  ("fonts-dkg-handwriting", "/usr/share/fonts/truetype/fifthhorseman/dkgBd.ttf"),
  ("fonts-dkg-handwriting", "/usr/share/fonts/truetype/fifthhorseman/dkgIt.ttf"),
  ("fonts-dkg-handwriting", "/usr/share/fonts/truetype/fifthhorseman/dkgBI.ttf"),
  ("fonts-humor-sans", "/usr/share/fonts/truetype/humor-sans/Humor-Sans.ttf"),
  ("fonts-rufscript", "/usr/share/fonts/truetype/rufscript/Rufscript010.ttf"),
  ("fonts-sjfonts", "/usr/share/fonts/truetype/sjfonts/Delphine.ttf"),
  ("fonts-sjfonts", "/usr/share/fonts/truetype/sjfonts/SteveHand.ttf"),
)
DEFAULT_COUNT = 500
LABELS_FILE = "labels.csv"


class FontsMissingError(FileNotFoundError):
  """A font file of :data:`FONTS` is not installed."""


def font_files(fonts: Sequence[str | os.PathLike] | None = None) -> list[Path]:
  """The font files to render with: ``fonts``, or every file of :data:`FONTS`.

  Raises:
    FontsMissingError: a font file is missing; names the Debian packages to install.
  """
  if fonts:
    paths = [Path(f) for f in fonts]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
      raise FontsMissingError(f"font files not found: {', '.join(missing)}")
    return paths
  missing = [(pkg, path) for pkg, path in FONTS if not Path(path).is_file()]
  if missing:
    packages = sorted({pkg for pkg, _ in missing})
    raise FontsMissingError(
      f"{len(missing)} of the {len(FONTS)} handwriting fonts are not installed (first: "
      f"{missing[0][1]}); install them with: apt-get install -y --no-install-recommends "
      f"{' '.join(packages)}"
    )
  return [Path(path) for _, path in FONTS]


def _glyph(digit: int, font_path: Path, rng: np.random.Generator) -> Image.Image:
  """The digit as an ``L`` mask (255 ink), thickened, rotated and sheared, cropped."""
  size = 160
  font = ImageFont.truetype(str(font_path), size)
  canvas = Image.new("L", (size * 2, size * 2), 0)
  draw = ImageDraw.Draw(canvas)
  # Thicker or thinner pens: Pillow strokes the outline of the glyph.
  stroke = int(rng.choice([0, 0, 0, 1, 2, 3, 5]))
  draw.text(
    (size, size), str(digit), font=font, fill=255, anchor="mm", stroke_width=stroke, stroke_fill=255
  )
  shear = rng.uniform(-0.25, 0.25)
  canvas = canvas.transform(
    canvas.size,
    Image.Transform.AFFINE,
    (1, shear, -shear * size, 0, 1, 0),
    Image.Resampling.BICUBIC,
  )
  canvas = canvas.rotate(rng.uniform(-15, 15), Image.Resampling.BICUBIC, expand=True)
  box = canvas.getbbox()
  return canvas.crop(box) if box else canvas


def _paper(width: int, height: int, rng: np.random.Generator, dark: bool) -> np.ndarray:
  """``(height, width, 3)`` paper in [0, 255]: a tint, grain, and uneven lighting."""
  if dark:  # a blackboard or a dark screen
    tint = rng.uniform([10, 20, 10], [60, 80, 60])
  else:
    tint = rng.uniform([215, 205, 190], [255, 255, 255])
  grain = rng.normal(0, rng.uniform(1, 8), (height, width))
  grain = ndimage.gaussian_filter(grain, rng.uniform(0.5, 2.0))
  yy, xx = np.mgrid[0:height, 0:width]
  angle = rng.uniform(0, 2 * np.pi)
  ramp = np.cos(angle) * xx / width + np.sin(angle) * yy / height
  ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-9)
  light = 1.0 - rng.uniform(0.0, 0.4) * ramp  # up to 40% darker on one side
  paper = tint[None, None, :] * light[..., None] + grain[..., None]
  return np.clip(paper, 0, 255)


def render(index: int, fonts: Sequence[Path], seed: int = 0) -> tuple[int, Image.Image, str]:
  """Image ``index`` of the set: ``(digit, image, file suffix)``.

  Args:
    index: which image; its digit is ``index % 10`` and its font
      ``fonts[(index // 10) % len(fonts)]``.
    fonts: the font files (:func:`font_files`).
    seed: the set's seed; with ``index`` it fixes every random choice.

  Returns:
    The digit, the Pillow image in the mode it will be saved in, and the suffix of its
    format (``.jpg``, ``.png``, ``.gif``, ``.bmp``, ``.webp``, ``.tif``).
  """
  rng = np.random.default_rng([seed, index])
  digit = index % 10
  glyph = _glyph(digit, fonts[(index // 10) % len(fonts)], rng)
  width = int(rng.integers(56, 400))
  height = int(width * rng.uniform(0.7, 1.5))
  # The digit's height as a fraction of the canvas; never wider than the canvas.
  fraction = rng.uniform(0.3, 0.85)
  scale = min(fraction * height / glyph.height, 0.9 * width / glyph.width)
  gw, gh = max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))
  glyph = glyph.resize((gw, gh), Image.Resampling.LANCZOS)
  left = int(rng.integers(0, width - gw + 1))
  top = int(rng.integers(0, height - gh + 1))
  mask = np.zeros((height, width), np.float64)
  mask[top : top + gh, left : left + gw] = np.asarray(glyph, np.float64) / 255.0

  dark = rng.random() < 0.1
  kind = rng.random()
  if dark:
    ink = rng.uniform([200, 200, 190], [255, 255, 255])
  elif kind < 0.4:
    ink = rng.uniform(0, 50, 3)  # black or nearly
  elif kind < 0.7:
    ink = np.array([rng.uniform(0, 40), rng.uniform(20, 70), rng.uniform(100, 200)])  # blue
  elif kind < 0.85:
    ink = np.full(3, rng.uniform(60, 130))  # pencil
  else:
    ink = np.array([rng.uniform(120, 200), rng.uniform(0, 40), rng.uniform(0, 40)])  # red
  opacity = rng.uniform(0.7, 1.0)

  format_draw = rng.random()
  if format_draw < 0.08 and not dark:  # ink on a transparent background
    rgba = np.zeros((height, width, 4))
    rgba[..., :3] = ink
    rgba[..., 3] = 255 * mask * opacity
    return digit, Image.fromarray(rgba.round().astype(np.uint8), "RGBA"), ".png"

  paper = _paper(width, height, rng, dark)
  alpha = (mask * opacity)[..., None]
  pixels = paper * (1 - alpha) + ink[None, None, :] * alpha
  image = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), "RGB")
  blur = rng.uniform(0, 1.2) * max(width, height) / 200
  if blur > 0.3:
    image = image.filter(ImageFilter.GaussianBlur(blur))
  noise = rng.uniform(0, 6)
  pixels = np.asarray(image, np.float64) + rng.normal(0, noise, (height, width, 1))
  image = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), "RGB")
  if format_draw < 0.6:
    return digit, image, ".jpg"
  if format_draw < 0.75:
    return digit, image, ".png"
  if format_draw < 0.83:
    return digit, image.convert("L"), ".png"
  if format_draw < 0.89:
    return digit, image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), ".gif"
  if format_draw < 0.93:
    return digit, image, ".bmp"
  if format_draw < 0.97:
    return digit, image, ".webp"
  return digit, image, ".tif"


def encode(image: Image.Image, suffix: str, rng: np.random.Generator) -> bytes:
  """The file bytes of ``image`` in the format of ``suffix`` (JPEG at a random quality)."""
  out = io.BytesIO()
  if suffix == ".jpg":
    image.save(out, "JPEG", quality=int(rng.integers(25, 95)))
  elif suffix == ".webp":
    image.save(out, "WEBP", quality=int(rng.integers(40, 95)))
  else:
    image.save(out, {".png": "PNG", ".gif": "GIF", ".bmp": "BMP", ".tif": "TIFF"}[suffix])
  return out.getvalue()


def generate(
  output_dir: str | os.PathLike,
  count: int = DEFAULT_COUNT,
  *,
  seed: int = 0,
  fonts: Sequence[str | os.PathLike] | None = None,
) -> list[tuple[str, int]]:
  """Writes ``count`` user-style digit images and their ``labels.csv`` into ``output_dir``.

  Args:
    output_dir: created if needed; files are named ``<digit>_<index>.<ext>``.
    count: how many images (a multiple of 10 keeps the digits balanced).
    seed: the set's seed.
    fonts: font files to use instead of :data:`FONTS`.

  Returns:
    ``(file name, digit)`` per image, as written to ``labels.csv``.

  Raises:
    FontsMissingError: a font is not installed.
  """
  paths = font_files(fonts)
  out = Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  rows = []
  for index in range(count):
    digit, image, suffix = render(index, paths, seed)
    name = f"{digit}_{index:04d}{suffix}"
    files.write_bytes(out / name, encode(image, suffix, np.random.default_rng([seed, index, 1])))
    rows.append((name, digit))
  text = io.StringIO()
  writer = csv.writer(text, lineterminator="\n")
  writer.writerow(["file", "label"])
  writer.writerows(rows)
  files.write_text(out / LABELS_FILE, text.getvalue())
  return rows
