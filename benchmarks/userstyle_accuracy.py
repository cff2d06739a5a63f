"""Accuracy of trained runs on user-style digit images, with and without preprocessing.

For each run given with ``--workdir`` (and their ensemble, the mean probability), reads the
user-style set (:mod:`benchmarks.userstyle`; generated into ``--images`` when that folder
has no ``labels.csv``) with

* no preprocessing (grayscale, the whole image resized to 28x28);
* the steps of :mod:`digits_jax.app.preprocess` added one at a time, in their order;
* every step but one (what each step adds to the full recipe);
* the full recipe plus stroke thickening;

and MNIST's validation split (the runs' own, chosen with seed 0) as it is and after the
full recipe: preprocessing must not hurt digits that are already MNIST's. The test split is
not read. Prints a Markdown table and writes it to ``--output_dir``/userstyle_accuracy.md when
given.

Run from the repository root::

    python benchmarks/userstyle_accuracy.py --workdir=RUN [--workdir=RUN2 ...] \\
        --images=/tmp/userstyle --output_dir=results/userstyle_accuracy-DATE
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import userstyle  # noqa: E402
from digits_jax import data, files  # noqa: E402
from digits_jax.app import predict  # noqa: E402
from digits_jax.app.preprocess import EmptyImageError, Steps, preprocess  # noqa: E402


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or "an unknown CPU"


def variants() -> list[tuple[str, Steps]]:
  """(row name, steps): none, cumulative, leave-one-out, and stroke thickening."""
  none = Steps.none()
  cumulative = [
    ("none (grayscale, resize to 28x28)", none),
    ("+ polarity", dataclasses.replace(none, polarity="auto")),
    ("+ flatten", dataclasses.replace(none, polarity="auto", flatten=True)),
    ("+ clean", dataclasses.replace(none, polarity="auto", flatten=True, clean=True)),
    (
      "+ despeckle",
      dataclasses.replace(none, polarity="auto", flatten=True, clean=True, despeckle=True),
    ),
    (
      "+ crop",
      dataclasses.replace(
        none, polarity="auto", flatten=True, clean=True, despeckle=True, crop=True
      ),
    ),
    ("+ fit 20x20, centre the box", Steps(center="box")),
    ("+ centre by mass (full recipe)", Steps()),
  ]
  leave_one_out = [
    (f"full without {name}", Steps().without(name))
    for name in ("polarity", "flatten", "clean", "despeckle", "crop", "fit")
  ]
  leave_one_out.append(("full, centred by box not mass", Steps(center="box")))
  return cumulative + leave_one_out + [("full + stroke_width=2.5", Steps(stroke_width=2.5))]


def accuracies(runs, inputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """Accuracy of each run and of the ensemble; images that failed count as wrong."""
  probs = predict.ensemble_probabilities(runs, inputs)
  return {name: float(np.mean(p.argmax(1) == labels)) for name, p in probs.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", action="append", required=True)
  parser.add_argument("--images", default="userstyle")
  parser.add_argument("--count", type=int, default=userstyle.DEFAULT_COUNT)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--manual_dir", default=None)
  parser.add_argument("--output_dir", default=None)
  args = parser.parse_args()

  folder = Path(args.images)
  if not (folder / userstyle.LABELS_FILE).is_file():
    print(f"generating {args.count} user-style images into {folder}", flush=True)
    userstyle.generate(folder, args.count, seed=args.seed)
  runs = predict.load_predictors(args.workdir)
  names = [r.name for r in runs] + ([predict.ENSEMBLE] if len(runs) > 1 else [])
  images, _ = predict.find_images([folder])
  labels = np.array(predict.find_labels(images, predict.read_labels(folder / "labels.csv")))
  loaded = [predict.load_image(i.path) for i in images]

  rows = []
  for title, steps in variants():
    start = time.perf_counter()
    inputs, failed = [], 0
    for image in loaded:
      try:
        inputs.append(preprocess(image, steps))
      except EmptyImageError:
        inputs.append(np.zeros((28, 28), np.float32))  # counted, and wrong unless by luck
        failed += 1
    acc = accuracies(runs, np.stack(inputs)[..., None], labels)
    rows.append((title, acc, failed))
    print(
      f"{title:40s} "
      + "  ".join(f"{n} {100 * a:.2f}%" for n, a in acc.items())
      + (f"  ({failed} without ink)" if failed else "")
      + f"  [{time.perf_counter() - start:.0f} s]",
      flush=True,
    )

  config = runs[0].config
  mnist = data.load_datasets(
    "mnist", manual_dir=args.manual_dir, validation_size=config.validation_size, backend="idx"
  )
  val = mnist.validation
  raw = accuracies(runs, val.images, val.labels)
  processed = np.stack([preprocess(im[..., 0]) for im in val.images])[..., None]
  recipe = accuracies(runs, processed, val.labels)
  print(
    f"{'MNIST validation, as is':40s} " + "  ".join(f"{n} {100 * a:.2f}%" for n, a in raw.items())
  )
  print(
    f"{'MNIST validation, full recipe':40s} "
    + "  ".join(f"{n} {100 * a:.2f}%" for n, a in recipe.items())
  )

  lines = [
    f"User-style digits: {len(images)} images of `python -m benchmarks.userstyle_images "
    f"--count={args.count} --seed={args.seed}`; MNIST validation: {len(val.labels)} images.",
    f"Measured {datetime.date.today().isoformat()} on {cpu_model()} ({os.cpu_count()} "
    f"cores, {platform.machine()}), jax {jax.__version__}, command: "
    "`python benchmarks/userstyle_accuracy.py " + " ".join(sys.argv[1:]) + "`.",
    "",
    "| preprocessing | " + " | ".join(names) + " | images without ink |",
    "|---|" + "---|" * (len(names) + 1),
  ]
  for title, acc, failed in rows:
    lines.append(
      f"| {title} | " + " | ".join(f"{100 * acc[n]:.2f}%" for n in names) + f" | {failed} |"
    )
  lines.append(
    "| MNIST validation, as is | " + " | ".join(f"{100 * raw[n]:.2f}%" for n in names) + " | - |"
  )
  lines.append(
    "| MNIST validation, full recipe | "
    + " | ".join(f"{100 * recipe[n]:.2f}%" for n in names)
    + " | - |"
  )
  text = "\n".join(lines) + "\n"
  print("\n" + text)
  if args.output_dir:
    files.write_text(os.path.join(args.output_dir, "userstyle_accuracy.md"), text)


if __name__ == "__main__":
  main()
