"""The analysis files of one run: reports, plots and TensorBoard scalars.

:func:`write_run_report` turns the test logits of a run's best checkpoint into the files a
researcher opens, next to ``config.json``, ``metrics.jsonl`` and ``results.json``::

    classification_report.txt   per-class precision, recall, F1, support; macro and
    classification_report.json  weighted averages (scikit-learn's numbers, text and keys)
    confusion_matrix.csv        counts, rows true class, columns predicted class
    calibration.json            reliability bins and the expected calibration error (ECE)
    plots/training_curves.png   loss and accuracy per epoch, training and validation
    plots/confusion_matrix.png  counts, and normalised by true class
    plots/misclassified.png     the most confident mistakes first
    plots/predictions.png       a fixed random sample, green correct, red wrong
    plots/reliability.png       reliability diagram with the ECE
    tensorboard/                scalars per epoch: train/, validation/, test/

:func:`digits_jax.runs.train_and_evaluate` calls it at the end of every run;
:func:`digits_jax.runs.rebuild` (``python -m experiments.evaluate``) writes the same files
again from the saved checkpoint without training.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from digits_jax import files
from digits_jax.analysis import metrics, plots
from digits_jax.training import history as run_history
from digits_jax.training import summaries

log = logging.getLogger(__name__)

# Names shown in the reports and plots; a dataset not listed uses the class numbers.
CLASS_NAMES: dict[str, tuple[str, ...]] = {
  "mnist": tuple(str(i) for i in range(10)),
  "fashion_mnist": (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
  ),
  # Kuzushiji-MNIST's hiragana, romanised: the plots' default font has no kana.
  "kmnist": ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
}

PLOTS_DIR = "plots"
TENSORBOARD_DIR = summaries.LOG_DIR
PLOT_FILES = {
  "training_curves": "training_curves.png",
  "confusion_matrices": "confusion_matrix.png",
  "misclassified_grid": "misclassified.png",
  "predictions_grid": "predictions.png",
  "reliability_diagram": "reliability.png",
}


def class_names(dataset: str | None, num_classes: int) -> list[str]:
  """The class names of ``dataset``, or ``"0"``, ``"1"``, ... when unknown."""
  names = CLASS_NAMES.get(dataset or "")
  if names is None or len(names) != num_classes:
    return [str(i) for i in range(num_classes)]
  return list(names)


def run_title(saved_config: Mapping[str, Any] | None) -> str:
  """``model / optimizer / seed N (dataset)`` from a config.json's ``config`` entry."""
  if not saved_config:
    return ""
  return (
    f"{saved_config.get('model')} / {saved_config.get('optimizer')} / seed "
    f"{saved_config.get('seed')} ({saved_config.get('dataset')})"
  )


def _confusion_csv(cm: np.ndarray, names: Sequence[str]) -> str:
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(["true \\ predicted", *names])
  for name, row in zip(names, cm, strict=True):
    writer.writerow([name, *(int(v) for v in row)])
  return out.getvalue()


def write_run_report(
  workdir: str | os.PathLike,
  logits: Any,
  labels: Any,
  images: Any,
  history: Sequence[Mapping[str, Any]],
  *,
  best_epoch: int | None = None,
  test_metrics: Mapping[str, float] | None = None,
  plots: bool = True,
) -> dict[str, Any]:
  """Writes every report, plot and TensorBoard scalar of a run into ``workdir``.

  Args:
    workdir: the run's work directory; its ``config.json``, when there, names the dataset
      (for class names) and titles the plots.
    logits: ``(N, K)`` test logits of the run's best checkpoint.
    labels: ``(N,)`` true test classes.
    images: ``(N, 28, 28, 1)`` test images in ``[0, 1]`` (for the image grids).
    history: the rows of ``metrics.jsonl``, one per epoch.
    best_epoch: the epoch of the tested checkpoint; default: the best by validation.
    test_metrics: ``loss`` and ``accuracy`` on the test set, logged to TensorBoard at
      ``best_epoch`` (:func:`digits_jax.training.step.metrics_from_logits` of the same
      logits).
    plots: draw the figures (``plots/``); without them, the text reports and TensorBoard
      scalars only.

  Returns:
    A summary: ``accuracy``, ``macro_f1``, ``ece``, ``num_test`` and ``files`` (the paths
    written, relative to ``workdir``).
  """
  workdir = Path(workdir)
  logits = np.asarray(logits)
  labels = np.asarray(labels)
  images = np.asarray(images)
  if logits.ndim != 2 or len(logits) != len(labels) or len(images) != len(labels):
    raise ValueError(
      f"logits {logits.shape}, labels {labels.shape} and images {images.shape} "
      "must have one row per test example"
    )
  num_classes = logits.shape[1]
  saved_config = None
  if (workdir / "config.json").is_file():
    saved_config = files.read_json(workdir / "config.json").get("config")
  names = class_names((saved_config or {}).get("dataset"), num_classes)
  title = run_title(saved_config)
  if best_epoch is None:
    best_epoch = run_history.best_epoch(history)

  probs = metrics.softmax(logits)
  predicted = metrics.predictions(logits)
  correct = predicted == labels
  cm = metrics.confusion_matrix(labels, predicted, num_classes)
  report = metrics.classification_report(cm, names)
  confidences = probs[np.arange(len(labels)), predicted]
  calibration = metrics.calibration_summary(confidences, correct)

  written = [
    "classification_report.txt",
    "classification_report.json",
    "confusion_matrix.csv",
    "calibration.json",
  ]
  files.write_text(workdir / written[0], metrics.format_report(report))
  files.write_json(workdir / written[1], report)
  files.write_text(workdir / written[2], _confusion_csv(cm, names))
  files.write_json(workdir / written[3], calibration)

  if plots:
    written += _write_plots(
      workdir,
      history,
      cm,
      images,
      labels,
      probs,
      confidences,
      correct,
      calibration,
      best_epoch=best_epoch,
      names=names,
      title=title,
    )
  if write_tensorboard(
    workdir / TENSORBOARD_DIR, history, best_epoch=best_epoch, test_metrics=test_metrics
  ):
    written.append(f"{TENSORBOARD_DIR}/")
  return {
    "accuracy": report["accuracy"],
    "macro_f1": report["macro avg"]["f1-score"],
    "ece": calibration["ece"],
    "num_test": len(labels),
    "files": written,
  }


def _write_plots(
  workdir,
  history,
  cm,
  images,
  labels,
  probs,
  confidences,
  correct,
  calibration,
  *,
  best_epoch,
  names,
  title,
) -> list[str]:
  """The figures of :func:`write_run_report`; returns their paths relative to ``workdir``."""
  plot_dir = workdir / PLOTS_DIR
  plots.training_curves(
    history, plot_dir / PLOT_FILES["training_curves"], best_epoch=best_epoch, title=title
  )
  plots.confusion_matrices(
    cm,
    plot_dir / PLOT_FILES["confusion_matrices"],
    class_names=names,
    title=f"Confusion matrix: {title}" if title else "",
  )
  plots.misclassified_grid(
    images,
    labels,
    probs,
    plot_dir / PLOT_FILES["misclassified_grid"],
    class_names=names,
    title=title,
  )
  plots.predictions_grid(
    images, labels, probs, plot_dir / PLOT_FILES["predictions_grid"], class_names=names, title=title
  )
  plots.reliability_diagram(
    metrics.reliability_bins(confidences, correct, calibration["num_bins"]),
    calibration["ece"],
    plot_dir / PLOT_FILES["reliability_diagram"],
    title=title,
  )
  return [f"{PLOTS_DIR}/{name}" for name in PLOT_FILES.values()]


def write_tensorboard(
  logdir: str | os.PathLike,
  history: Sequence[Mapping[str, Any]],
  *,
  best_epoch: int | None = None,
  test_metrics: Mapping[str, float] | None = None,
) -> bool:
  """Writes a run's scalars (:mod:`digits_jax.training.summaries`) anew under ``logdir``.

  The run loop adds each epoch as it ends; at the end of a run ``logdir`` is replaced
  whole by this complete copy (with the test point), so epochs trained again after a
  resume, or a second ``evaluate``, leave no duplicate curves.

  Returns:
    ``False`` (with a warning) when tensorboardX is not installed, else ``True``.
  """
  logdir = Path(logdir)
  logdir.parent.mkdir(parents=True, exist_ok=True)
  for stale in logdir.parent.glob(f".{logdir.name}.*"):  # left by a writer that was killed
    shutil.rmtree(stale, ignore_errors=True)
  tmp = Path(tempfile.mkdtemp(dir=logdir.parent, prefix=f".{logdir.name}."))
  try:
    scalars = summaries.Scalars(tmp)
    if not scalars.enabled:
      return False
    for row in history:
      scalars.add_epoch(row)
    if test_metrics is not None and best_epoch is not None:
      scalars.add_test(test_metrics, best_epoch)
    scalars.close()
    if logdir.exists():
      old = Path(tempfile.mkdtemp(dir=logdir.parent, prefix=f".{logdir.name}.old."))
      logdir.rename(old / logdir.name)
      tmp.rename(logdir)
      shutil.rmtree(old, ignore_errors=True)
    else:
      tmp.rename(logdir)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
  return True
