"""Reads your own digit images with trained runs.

    python -m experiments.predict --workdir=RUN [--workdir=RUN2 ...] PATH [PATH ...]

PATH is an image file (PNG, JPEG, BMP, GIF, TIFF, WebP; any size and mode), a folder
(searched recursively) or a glob. Each image is preprocessed the way MNIST was made
(:mod:`digits_jax.app.preprocess`; ``--skip``, ``--polarity``, ``--center`` and
``--stroke_width`` change the steps, as in ``experiments.serve``) and
predicted by every run and, with several, by their ensemble (mean probability). One line
per image on stdout; ``--output_dir`` (default ``./predictions``) gets ``predictions.csv``
and ``contact_sheet.png`` (more pages as ``contact_sheet_2.png``, ...).

Labels, when known, come from ``--labels=labels.csv`` (columns file,label; a
``labels.csv`` at the top of a folder given as PATH is read by itself) or from the first
character of each file name (``--labels_from_name``); then the accuracy and confusion
matrix of each model are printed too.

An image that cannot be read (not an image, truncated, a decompression bomb, an empty page)
is reported on stderr with its file name and the others are still predicted; the exit
status is then 1. A work directory that is unusable (no checkpoint, a model of another data
set) stops the command before anything is written.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags

from digits_jax.app import predict
from digits_jax.runs import RunDirError
from digits_jax.training import checkpoints
from experiments import logs, preprocessing_flags
from experiments.preprocessing_flags import steps_from_flags

flags.DEFINE_multi_string(
  "workdir", None, "A trained run's work directory; repeat the flag for an ensemble."
)
flags.DEFINE_string(
  "output_dir", "predictions", "Where predictions.csv and the contact sheet go (created)."
)
flags.DEFINE_string(
  "labels",
  None,
  "A CSV with the columns file,label giving each image's "
  "true digit; file as printed, or the file's name.",
)
flags.DEFINE_bool(
  "labels_from_name",
  False,
  "Take each image's true digit from the first character of its file name (7_photo.jpg is a 7).",
)
flags.DEFINE_integer(
  "max_pixels", predict.MAX_PIXELS, "Refuse larger images (decompression bombs)."
)
flags.adopt_module_key_flags(preprocessing_flags)  # --help lists them too
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def _labels(images: list[predict.ImageFile], paths: list[str]) -> list[int | None] | None:
  if FLAGS.labels_from_name:
    return [predict.label_from_name(i.name) for i in images]
  table: dict[str, int] = {}
  if FLAGS.labels:
    table = predict.read_labels(FLAGS.labels)
  else:
    for path in map(Path, paths):
      if path.is_dir() and (path / predict.LABELS_FILE).is_file():
        print(f"labels from {path / predict.LABELS_FILE}")
        table.update(predict.read_labels(path / predict.LABELS_FILE))
  return predict.find_labels(images, table) if table else None


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError("give at least one image file, folder or glob after the flags")
  logs.setup(fmt="%(message)s")
  try:
    steps = steps_from_flags()
  except ValueError as e:
    sys.exit(f"error: {e}")
  images, problems = predict.find_images(paths)
  for problem in problems:
    print(f"error: {problem}", file=sys.stderr)
  if not images:
    sys.exit("error: no images to predict")
  try:
    labels = _labels(images, paths)
    runs = predict.load_predictors(FLAGS.workdir)
  except (OSError, ValueError, RunDirError, checkpoints.CheckpointError) as e:
    sys.exit(f"error: {e}")

  results = predict.predict_files(runs, images, steps, labels=labels, max_pixels=FLAGS.max_pixels)
  main_model = predict.main_model(results)
  width = min(max(len(r.file.name) for r in results), 60)
  for r in results:
    if r.error is not None:
      print(f"error: {r.error}", file=sys.stderr)
      continue
    digit, prob = r.top(main_model, 1)[0]
    top = ", ".join(f"{d} {p:.3f}" for d, p in r.top(main_model))
    line = f"{r.file.name:<{width}}  {digit}  {prob:.3f}  top 3: {top}"
    if len(runs) > 1:
      line += "  | " + "  ".join(f"{run.name}: {r.top(run.name, 1)[0][0]}" for run in runs)
    if r.label is not None:
      line += "  ok" if digit == r.label else f"  WRONG (true {r.label})"
    print(line)

  out = Path(FLAGS.output_dir)
  predict.write_csv(out / "predictions.csv", results)
  sheets = predict.write_contact_sheets(out, results)
  print(f"wrote {out / 'predictions.csv'} and {', '.join(str(s) for s in sheets)}")

  for model, summary in predict.accuracy_report(results).items():
    print(
      f"\n{model}: accuracy {100 * summary['accuracy']:.2f}% ({summary['correct']} of "
      f"{summary['count']} labelled images)"
    )
    print(predict.format_confusion(summary["confusion"]))
  failed = len(problems) + sum(r.error is not None for r in results)
  if failed:
    sys.exit(
      f"error: {failed} of the {len(results) + len(problems)} inputs failed (see above); "
      "the others were predicted"
    )


if __name__ == "__main__":
  app.run(main)
