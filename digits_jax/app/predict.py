"""Reading a user's own digit images with trained runs: files in, predictions out.

* :func:`find_images` -- image files from paths as a user types them: files, folders
  (recursively) and globs.
* :func:`load_image` -- one file opened with Pillow, refusing what is not an image, a
  truncated file and a decompression bomb with a message that names the file.
* :func:`load_predictor` -- a trained run's work directory as a function from ``(N, 28, 28, 1)``
  images to class probabilities; refuses a directory without a checkpoint and a model of
  another data set.
* :func:`predict_files` -- every image preprocessed (:mod:`digits_jax.app.preprocess`) and
  predicted by each run and by their ensemble (the mean of their probabilities); an image
  that fails is reported and the others are still predicted.
* :func:`write_csv`, :func:`contact_sheets`, :func:`accuracy_report` -- the outputs of
  ``python -m experiments.predict``.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from digits_jax import files, rundir, runs
from digits_jax.analysis import metrics, report
from digits_jax.app import preprocess
from digits_jax.config import Config
from digits_jax.data import NUM_CLASSES
from digits_jax.runs import Predictor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Larger images are refused as decompression bombs: Pillow's own limit (about 89 MP).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
DIGITS_DATASET = "mnist"
ENSEMBLE = "ensemble"
LABELS_FILE = "labels.csv"
TOP_K = 3


class ImageError(ValueError):
  """A file that cannot be read as an image; the message names the file."""


class WrongDatasetError(rundir.RunDirError):
  """A run trained on another data set than handwritten digits."""


@dataclasses.dataclass(frozen=True)
class ImageFile:
  """An image file and its name as the user refers to it (in the output and labels)."""

  path: Path
  name: str


def _has_glob(text: str) -> bool:
  return any(c in text for c in "*?[")


def _is_image_name(path: Path) -> bool:
  return path.suffix.lower() in IMAGE_SUFFIXES


def find_images(paths: Sequence[str | os.PathLike]) -> tuple[list[ImageFile], list[str]]:
  """The image files that ``paths`` name, in order, each once.

  A file is taken whatever its suffix (reading it says whether it is an image); a folder
  gives its image files (:data:`IMAGE_SUFFIXES`, any case) at any depth, named relative to
  it; a glob (``*``, ``?``, ``[...]``, ``**``) gives the image files it matches, named as
  matched.

  Args:
    paths: what the user typed.

  Returns:
    ``(images, problems)``: the files found, and one message per path that names nothing
    (missing, an empty folder, a glob that matches no image).
  """
  found: list[ImageFile] = []
  problems: list[str] = []
  seen: set[Path] = set()

  def add(path: Path, name: str) -> None:
    key = path.resolve()
    if key not in seen:
      seen.add(key)
      found.append(ImageFile(path, name))

  for arg in paths:
    text = os.fspath(arg)
    path = Path(text)
    if path.is_dir():
      images = sorted(p for p in path.rglob("*") if p.is_file() and _is_image_name(p))
      if not images:
        problems.append(f"{text}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
      for p in images:
        add(p, p.relative_to(path).as_posix())
    elif path.is_file():
      add(path, text)
    elif _has_glob(text):
      matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
      images = [m for m in matches if m.is_file() and _is_image_name(m)]
      if not images:
        problems.append(f"{text}: the pattern matches no image file")
      for m in images:
        add(m, m.as_posix())
    else:
      problems.append(f"{text}: no such file or folder")
  return found, problems


def load_image(
  path: str | os.PathLike | BinaryIO, max_pixels: int = MAX_PIXELS, *, name: str | None = None
) -> Image.Image:
  """Opens an image file and decodes it (the first frame of an animation or a TIFF stack).

  Args:
    path: the file, or a binary file object (e.g. ``io.BytesIO`` of uploaded bytes).
    max_pixels: larger images are refused before they are decoded.
    name: how messages name the image (default: ``path``).

  Returns:
    The decoded Pillow image.

  Raises:
    ImageError: not an image, a truncated or corrupt file, or more than ``max_pixels``
      pixels (a decompression bomb); the message names the file and what to do.
  """
  source = path if hasattr(path, "read") else Path(path)
  path = name or (source if isinstance(source, Path) else "the image")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      image = Image.open(source)
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise ImageError(
      f"{path}: refused as a possible decompression bomb ({e}); shrink the "
      "image below that size first"
    ) from e
  except UnidentifiedImageError as e:
    raise ImageError(
      f"{path}: not an image (Pillow cannot identify it; expected PNG, JPEG, "
      "BMP, GIF, TIFF or WebP)"
    ) from e
  except OSError as e:
    raise ImageError(f"{path}: cannot be read ({e})") from e
  width, height = image.size
  if width * height > max_pixels:
    image.close()
    raise ImageError(
      f"{path}: {width}x{height} pixels is more than the limit of "
      f"{max_pixels:,} (a decompression bomb, or a huge scan); shrink the "
      "image first"
    )
  if width == 0 or height == 0:
    raise ImageError(f"{path}: the image has no pixels ({width}x{height})")
  try:
    image.seek(0)
    image.load()
  except (OSError, SyntaxError, ValueError, EOFError) as e:
    raise ImageError(
      f"{path}: the {image.format or 'image'} file is truncated or corrupt ({e}); save it again"
    ) from e
  return image


def check_run(workdir: str | os.PathLike) -> Config:
  """The config of a run that :func:`load_predictor` can load; cheap (reads ``config.json``).

  Raises:
    digits_jax.rundir.RunDirError: no readable ``config.json``.
    WrongDatasetError: the model was trained on another data set than MNIST's digits.
    digits_jax.training.checkpoints.CheckpointError: no checkpoint.
  """
  return _check(workdir)[0]


def _check(workdir: str | os.PathLike) -> tuple[Config, dict[str, Any]]:
  """:func:`check_run`, with the whole ``config.json``: what :func:`digits_jax.runs.load_predictor`
  takes as read (``recorded``), so that each run's file is read once."""
  workdir = Path(workdir)
  config, saved = rundir.read_config(workdir)
  if config.dataset != DIGITS_DATASET:
    names = ", ".join(report.class_names(config.dataset, NUM_CLASSES))
    raise WrongDatasetError(
      f"{workdir} holds a model of {config.dataset} ({names}), not of handwritten digits; "
      f"pass the work directory of a run trained with --dataset={DIGITS_DATASET}"
    )
  runs.require_checkpoint(workdir)
  return config, saved


def load_predictor(workdir: str | os.PathLike) -> Predictor:
  """Restores a run of a digits model: its best-by-validation checkpoint, ready to predict.

  Args:
    workdir: a run's work directory (``config.json`` and ``checkpoints/best``).

  Returns:
    The run (:class:`digits_jax.runs.Predictor`), named after its directory.

  Raises:
    digits_jax.rundir.RunDirError: no readable ``config.json``.
    WrongDatasetError: the model was trained on another data set than MNIST's digits.
    digits_jax.training.checkpoints.CheckpointError: no checkpoint, or one that does not fit.
  """
  return runs.load_predictor(workdir, NUM_CLASSES, recorded=_check(workdir))


def load_predictors(workdirs: Sequence[str | os.PathLike]) -> list[Predictor]:
  """:func:`load_predictor` of each (all checked first); runs whose directories share a name get
  their full path."""
  recorded = [_check(w) for w in workdirs]
  loaded = [
    runs.load_predictor(w, NUM_CLASSES, recorded=r) for w, r in zip(workdirs, recorded, strict=True)
  ]
  names = [r.name for r in loaded]
  return [
    dataclasses.replace(r, name=str(r.workdir)) if names.count(r.name) > 1 else r for r in loaded
  ]


def ensemble_probabilities(runs: Sequence[Predictor], images: np.ndarray) -> dict[str, np.ndarray]:
  """Each run's probabilities for ``images``, and with several runs their mean.

  Args:
    runs: loaded runs.
    images: ``(N, 28, 28, 1)`` float32 in ``[0, 1]``.

  Returns:
    Run name -> ``(N, 10)`` probabilities, plus :data:`ENSEMBLE` (the mean over the
    runs) when there are several runs.
  """
  out = {run.name: run.probabilities(images) for run in runs}
  if len(runs) > 1:
    out[ENSEMBLE] = np.mean([out[run.name] for run in runs], axis=0)
  return out


@dataclasses.dataclass
class Prediction:
  """One image's outcome: its input and probabilities, or why it failed."""

  file: ImageFile
  label: int | None = None
  original: Image.Image | None = None  # the image as given (a thumbnail), for the sheet
  image: np.ndarray | None = None  # (28, 28) float32: what the networks saw
  probabilities: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  error: str | None = None

  def top(self, model: str, k: int = TOP_K) -> list[tuple[int, float]]:
    """The ``k`` most probable digits of ``model`` and their probabilities."""
    p = self.probabilities[model]
    order = np.argsort(-p, kind="stable")[:k]
    return [(int(d), float(p[d])) for d in order]


def read_labels(path: str | os.PathLike) -> dict[str, int]:
  """A ``labels.csv`` with the columns ``file`` and ``label`` (a digit): file -> label.

  Raises:
    ValueError: no such columns, or a label that is not a digit; names the file and line.
  """
  path = Path(path)
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    fields = [name.strip().lower() for name in reader.fieldnames or []]
    if "file" not in fields or "label" not in fields:
      raise ValueError(
        f"{path}: expected a header with the columns file,label, found "
        f"{','.join(reader.fieldnames or [])!r}"
      )
    reader.fieldnames = fields
    out = {}
    for row in reader:
      label = (row["label"] or "").strip()
      if label not in [str(d) for d in range(NUM_CLASSES)]:
        raise ValueError(f"{path} line {reader.line_num}: label {label!r} is not a digit 0-9")
      out[row["file"].strip()] = int(label)
  return out


def label_from_name(name: str) -> int | None:
  """The digit a file name starts with (``7_photo.jpg`` -> 7), or None."""
  first = Path(name).name[:1]
  return int(first) if first.isdigit() else None


def find_labels(images: Sequence[ImageFile], labels: Mapping[str, int]) -> list[int | None]:
  """Each image's label: looked up by its name, its path, or its file name."""
  by_base: dict[str, int | None] = {}
  for key, value in labels.items():
    base = Path(key).name
    by_base[base] = value if base not in by_base else None  # ambiguous
  out = []
  for image in images:
    for key in (image.name, image.path.as_posix(), image.path.name):
      if key in labels:
        out.append(labels[key])
        break
    else:
      out.append(by_base.get(image.path.name))
  return out


def _thumbnail(image: Image.Image, size: int = 128) -> Image.Image:
  """An RGB copy at most ``size`` pixels wide, transparency composited on white."""
  thumb = ImageOps.exif_transpose(image)
  if thumb.mode in ("I;16", "I;16L", "I;16B", "I", "F"):
    thumb = Image.fromarray(np.uint8(255 * preprocess.grayscale(thumb, None)))
  thumb = thumb.convert("RGBA")
  thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
  paper = Image.new("RGBA", thumb.size, (255, 255, 255, 255))
  return Image.alpha_composite(paper, thumb).convert("RGB")


def predict_files(
  runs: Sequence[Predictor],
  images: Sequence[ImageFile],
  steps: preprocess.Steps | None = None,
  *,
  labels: Sequence[int | None] | None = None,
  max_pixels: int = MAX_PIXELS,
) -> list[Prediction]:
  """Loads, preprocesses and predicts every image with every run and their ensemble.

  Args:
    runs: loaded runs (:func:`load_predictors`).
    images: the files (:func:`find_images`).
    steps: the preprocessing (:class:`digits_jax.app.preprocess.Steps`; default: all steps).
    labels: each image's true digit, or None where unknown.
    max_pixels: larger images are refused (:func:`load_image`).

  Returns:
    One :class:`Prediction` per image, in order; an image that could not be read or has
    no ink has ``error`` set and no probabilities.
  """
  labels = list(labels) if labels is not None else [None] * len(images)
  out = []
  for image_file, label in zip(images, labels, strict=True):
    result = Prediction(file=image_file, label=label)
    try:
      image = load_image(image_file.path, max_pixels)
      result.original = _thumbnail(image)
      result.image = preprocess.preprocess(image, steps or preprocess.Steps())
    except ImageError as e:
      result.error = str(e)
    except (preprocess.EmptyImageError, ValueError, OSError) as e:
      result.error = f"{image_file.path}: {e}"
    out.append(result)
  ok = [r for r in out if r.error is None]
  if ok and runs:
    batch = np.stack([r.image for r in ok])[..., None]
    for name, probs in ensemble_probabilities(runs, batch).items():
      for r, p in zip(ok, probs, strict=True):
        r.probabilities[name] = p
  return out


def main_model(predictions: Sequence[Prediction]) -> str | None:
  """The model whose answer is the prediction: the ensemble, or the single run."""
  for p in predictions:
    if p.probabilities:
      return ENSEMBLE if ENSEMBLE in p.probabilities else next(iter(p.probabilities))
  return None


def _format_p(p: float) -> str:
  return f"{p:.4f}"


def write_csv(path: str | os.PathLike, predictions: Sequence[Prediction]) -> None:
  """``predictions.csv``: file, prediction, probability, the top 3, then per model.

  Columns: ``file, prediction, probability, top1, top1_probability, ..., top3_probability``
  (of the ensemble when there are several runs), ``label`` and ``correct`` when any image
  has a label, ``<run>_prediction`` and ``<run>_probability`` per run when there are
  several, and ``error`` (empty unless the image failed).
  """
  main = main_model(predictions)
  runs = [m for m in (predictions_models(predictions)) if m != ENSEMBLE]
  has_labels = any(p.label is not None for p in predictions)
  header = ["file", "prediction", "probability"]
  for k in range(1, TOP_K + 1):
    header += [f"top{k}", f"top{k}_probability"]
  if has_labels:
    header += ["label", "correct"]
  if len(runs) > 1:
    for run in runs:
      header += [f"{run}_prediction", f"{run}_probability"]
  header.append("error")
  text = io.StringIO()
  writer = csv.writer(text, lineterminator="\n")
  writer.writerow(header)
  for p in predictions:
    row: list[object] = [p.file.name]
    if p.error is None and main is not None:
      top = p.top(main)
      row += [top[0][0], _format_p(top[0][1])]
      for digit, prob in top:
        row += [digit, _format_p(prob)]
    else:
      row += [""] * (2 + 2 * TOP_K)
    if has_labels:
      correct = "" if p.error or p.label is None else int(row[1] == p.label)
      row += ["" if p.label is None else p.label, correct]
    if len(runs) > 1:
      for run in runs:
        row += (
          [p.top(run, 1)[0][0], _format_p(p.top(run, 1)[0][1])] if p.error is None else ["", ""]
        )
    row.append(p.error or "")
    writer.writerow(row)
  files.write_text(path, text.getvalue())


def predictions_models(predictions: Sequence[Prediction]) -> list[str]:
  """The model names of the predictions, runs first, the ensemble last."""
  for p in predictions:
    if p.probabilities:
      return list(p.probabilities)
  return []


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
  try:
    return ImageFont.load_default(size)
  except (OSError, TypeError, ImportError):
    return ImageFont.load_default()


SHEET_COLUMNS = 10
SHEET_ROWS = 10
CELL = 96  # pixels of each of the two pictures in a cell


def contact_sheets(predictions: Sequence[Prediction]) -> list[Image.Image]:
  """Pages of 100 cells: the image as given, what the network saw, the prediction.

  Each cell shows the file's name, the image as given (transparency on white) and the
  28x28 input (enlarged, white ink on black), and the predicted digit with its probability
  (of the ensemble when there are several runs). With a label the text is green when
  right and red with the true digit when wrong; a failed image says ``error``.
  """
  main = main_model(predictions)
  title, text = _font(11), _font(15)
  width, height = 2 * CELL + 12, CELL + 44
  pages = []
  per_page = SHEET_COLUMNS * SHEET_ROWS
  for start in range(0, max(len(predictions), 1), per_page):
    chunk = predictions[start : start + per_page]
    rows = max(1, math.ceil(len(chunk) / SHEET_COLUMNS))
    cols = min(SHEET_COLUMNS, max(len(chunk), 1))
    sheet = Image.new("RGB", (cols * width, rows * height), (235, 235, 235))
    draw = ImageDraw.Draw(sheet)
    for i, p in enumerate(chunk):
      x, y = (i % SHEET_COLUMNS) * width, (i // SHEET_COLUMNS) * height
      name = p.file.name if len(p.file.name) <= 30 else "..." + p.file.name[-27:]
      draw.text((x + 4, y + 2), name, fill=(60, 60, 60), font=title)
      if p.original is not None:
        thumb = p.original.copy()
        thumb.thumbnail((CELL, CELL), Image.Resampling.LANCZOS)
        sheet.paste(thumb, (x + 4 + (CELL - thumb.width) // 2, y + 18 + (CELL - thumb.height) // 2))
      if p.image is not None:
        seen = Image.fromarray(np.uint8(np.round(255 * p.image))).resize(
          (CELL, CELL), Image.Resampling.NEAREST
        )
        sheet.paste(seen, (x + 8 + CELL, y + 18))
      if p.error is not None or main is None:
        caption, colour = "error", (200, 0, 0)
      else:
        digit, prob = p.top(main, 1)[0]
        caption, colour = f"{digit}  {100 * prob:.1f}%", (0, 0, 0)
        if p.label is not None:
          if digit == p.label:
            colour = (0, 130, 0)
          else:
            caption, colour = f"{caption}  (true {p.label})", (200, 0, 0)
      draw.text((x + 4, y + 20 + CELL), caption, fill=colour, font=text)
      if p.label is not None and p.error is None and colour == (200, 0, 0):
        draw.rectangle([x + 1, y + 1, x + width - 2, y + height - 2], outline=colour, width=2)
    pages.append(sheet)
  return pages


def write_contact_sheets(
  output_dir: str | os.PathLike, predictions: Sequence[Prediction]
) -> list[Path]:
  """Writes :func:`contact_sheets` as ``contact_sheet.png`` (``contact_sheet_2.png``, ...)."""
  out = []
  for i, page in enumerate(contact_sheets(predictions), start=1):
    path = Path(output_dir) / ("contact_sheet.png" if i == 1 else f"contact_sheet_{i}.png")
    buffer = io.BytesIO()
    page.save(buffer, "PNG", optimize=True)
    files.write_bytes(path, buffer.getvalue())
    out.append(path)
  return out


def accuracy_report(predictions: Sequence[Prediction]) -> dict[str, dict]:
  """Per model: accuracy and confusion matrix over the labelled images that were predicted.

  Returns:
    Model name -> ``{"accuracy", "correct", "count", "confusion"}``, the confusion matrix
    as a ``(10, 10)`` array (rows true digit, columns predicted); empty without labels.
  """
  scored = [p for p in predictions if p.label is not None and p.error is None]
  out = {}
  if not scored:
    return out
  labels = np.array([p.label for p in scored])
  for model in predictions_models(scored):
    predicted = np.array([int(np.argmax(p.probabilities[model])) for p in scored])
    correct = int(np.sum(predicted == labels))
    out[model] = {
      "accuracy": correct / len(scored),
      "correct": correct,
      "count": len(scored),
      "confusion": metrics.confusion_matrix(labels, predicted, NUM_CLASSES),
    }
  return out


def format_confusion(cm: np.ndarray) -> str:
  """A confusion matrix as text: rows true digit, columns predicted digit."""
  lines = ["true\\pred " + " ".join(f"{d:>4}" for d in range(cm.shape[1]))]
  for d, row in enumerate(cm):
    lines.append(f"{d:>9} " + " ".join(f"{int(v):>4}" for v in row))
  return "\n".join(lines)


def predict_bytes(
  runs: Sequence[Predictor],
  data: bytes,
  steps: preprocess.Steps | None = None,
  *,
  max_pixels: int = MAX_PIXELS,
  name: str = "the image",
) -> dict[str, Any]:
  """Preprocesses and predicts one encoded image (what the drawing page sends).

  Args:
    runs: loaded runs.
    data: the bytes of a PNG, JPEG, ... file.
    steps: the preprocessing (default: all steps).
    max_pixels: larger images are refused.
    name: how error messages name the image.

  Returns:
    ``input``: the 28x28 input as nested lists in ``[0, 1]``; ``inverted``; ``models``:
    run name (and :data:`ENSEMBLE` with several runs) -> 10 probabilities; ``prediction``
    and ``probability`` of the ensemble, or of the single run.

  Raises:
    ImageError: not an image, truncated, or too large.
    digits_jax.app.preprocess.EmptyImageError: no ink.
  """
  image = load_image(io.BytesIO(data), max_pixels, name=name)
  result = preprocess.preprocess_steps(image, steps or preprocess.Steps())
  probs = ensemble_probabilities(runs, result.image[None, :, :, None])
  main = ENSEMBLE if ENSEMBLE in probs else runs[0].name
  best = int(np.argmax(probs[main][0]))
  return {
    "input": np.round(result.image, 4).tolist(),
    "inverted": result.inverted,
    "models": {name: [float(p) for p in v[0]] for name, v in probs.items()},
    "prediction": best,
    "probability": float(probs[main][0][best]),
  }
