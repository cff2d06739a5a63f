"""Classification metrics of a model's test predictions: pure NumPy functions.

* :func:`confusion_matrix` -- counts of (true class, predicted class) pairs.
* :func:`classification_report` / :func:`format_report` -- per-class precision, recall,
  F1 and support with macro and weighted averages, the same numbers (to the last bit), the
  same dictionary and the same text as scikit-learn's ``classification_report`` with
  ``labels=range(num_classes)`` and ``zero_division=0.0``; the tests check this.
* :func:`reliability_bins` / :func:`expected_calibration_error` -- calibration of the
  top-class probability, binned as scikit-learn's ``calibration_curve`` with
  ``strategy="uniform"`` bins it.

Predictions are the argmax of the logits (as in
:func:`digits_jax.training.step.metrics_from_logits`), so every number here describes the same
predictions as the run's test accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# Equal-width confidence bins of the reliability diagram (Guo et al., 2017, use 15).
NUM_CALIBRATION_BINS = 15

_HEADERS = ("precision", "recall", "f1-score", "support")


def softmax(logits: np.ndarray) -> np.ndarray:
  """Class probabilities of ``(N, K)`` logits, in float64 (numerically stable)."""
  z = np.asarray(logits, np.float64)
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def predictions(logits: np.ndarray) -> np.ndarray:
  """The predicted class of each example: argmax of its logits (first one on ties)."""
  return np.asarray(logits).argmax(axis=-1)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
  """Counts of each (true class, predicted class) pair.

  Args:
    labels: ``(N,)`` true classes in ``[0, num_classes)``.
    predicted: ``(N,)`` predicted classes in ``[0, num_classes)``.
    num_classes: number of classes ``K``.

  Returns:
    ``(K, K)`` ``int64`` array; row ``i``, column ``j`` counts the examples of class ``i``
    predicted as ``j``. It sums to ``N``; its diagonal holds the correct predictions.

  Raises:
    ValueError: the arrays differ in length or hold a class outside ``[0, K)``.
  """
  labels = np.asarray(labels).astype(np.int64).ravel()
  predicted = np.asarray(predicted).astype(np.int64).ravel()
  if labels.shape != predicted.shape:
    raise ValueError(f"{labels.size} labels but {predicted.size} predictions")
  for name, a in (("labels", labels), ("predictions", predicted)):
    if a.size and (a.min() < 0 or a.max() >= num_classes):
      raise ValueError(f"{name} must be in [0, {num_classes}), got [{a.min()}, {a.max()}]")
  counts = np.bincount(labels * num_classes + predicted, minlength=num_classes * num_classes)
  return counts.reshape(num_classes, num_classes)


def normalize_rows(cm: np.ndarray) -> np.ndarray:
  """The confusion matrix normalised by true class: each row sums to 1 (0 for empty rows)."""
  cm = np.asarray(cm, np.float64)
  totals = cm.sum(axis=1, keepdims=True)
  return np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  """``numerator / denominator`` in float64, 0 where the denominator is 0 (sklearn's way)."""
  denominator = np.asarray(denominator, np.float64).copy()
  zero = denominator == 0
  denominator[zero] = 1
  result = np.asarray(numerator, np.float64) / denominator
  result[zero] = 0.0
  return result


def class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
  """Per-class precision, recall, F1 and support of a confusion matrix.

  Computed as scikit-learn computes them, so the float64 results are identical: precision
  ``tp / predicted``, recall ``tp / true``, F1 ``2 tp / (true + predicted)``; 0 where a
  denominator is 0.
  """
  cm = np.asarray(cm, np.int64)
  tp = np.diag(cm)
  pred_sum = cm.sum(axis=0)
  true_sum = cm.sum(axis=1)
  f1 = _divide(
    2.0 * tp.astype(np.float64), 1.0 * true_sum.astype(np.float64) + pred_sum.astype(np.float64)
  )
  return {
    "precision": _divide(tp, pred_sum),
    "recall": _divide(tp, true_sum),
    "f1-score": f1,
    "support": true_sum,
  }


def classification_report(
  cm: np.ndarray, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
  """Per-class and averaged precision, recall, F1 and support from a confusion matrix.

  Args:
    cm: ``(K, K)`` confusion matrix, rows true classes (see :func:`confusion_matrix`).
    class_names: ``K`` names used as keys; default ``"0"``, ``"1"``, ...

  Returns:
    scikit-learn's ``classification_report(..., output_dict=True)`` dictionary: one entry
    per class name with ``precision``, ``recall``, ``f1-score`` and ``support``, then
    ``accuracy`` (a float), ``macro avg`` (unweighted mean over classes) and
    ``weighted avg`` (mean weighted by support). Supports are ints (sklearn gives floats
    of the same value).
  """
  cm = np.asarray(cm, np.int64)
  num_classes = cm.shape[0]
  names = [str(i) for i in range(num_classes)] if class_names is None else list(class_names)
  if len(names) != num_classes:
    raise ValueError(f"{len(names)} class names for {num_classes} classes")
  scores = class_scores(cm)
  report: dict[str, Any] = {}
  for i, name in enumerate(names):
    report[name] = {h: float(scores[h][i]) for h in _HEADERS[:3]}
    report[name]["support"] = int(scores["support"][i])
  total = int(cm.sum())
  report["accuracy"] = float(np.trace(cm) / total) if total else 0.0
  support = scores["support"]
  for average, weights in (("macro avg", None), ("weighted avg", support)):
    row: dict[str, Any] = {}
    for h in _HEADERS[:3]:
      if weights is None:
        row[h] = float(np.mean(scores[h]))
      elif weights.sum() == 0:  # sklearn falls back to 0 when every weight is 0
        row[h] = 0.0
      else:
        row[h] = float(np.average(scores[h], weights=weights))
    row["support"] = total
    report[average] = row
  return report


def format_report(report: dict[str, Any], digits: int = 4) -> str:
  """A :func:`classification_report` dictionary as scikit-learn's text table.

  The text is character for character what ``sklearn.metrics.classification_report``
  prints for the same predictions with the same ``digits``.
  """
  names = [k for k in report if k not in ("accuracy", "macro avg", "weighted avg")]
  width = max(max(len(n) for n in names), len("weighted avg"), digits)
  head_fmt = "{:>{width}s} " + " {:>9}" * len(_HEADERS)
  text = head_fmt.format("", *_HEADERS, width=width) + "\n\n"
  row_fmt = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
  for name in names:
    r = report[name]
    text += row_fmt.format(
      name, r["precision"], r["recall"], r["f1-score"], r["support"], width=width, digits=digits
    )
  text += "\n"
  total = report["macro avg"]["support"]
  acc_fmt = "{:>{width}s} " + " {:>9.{digits}}" * 2 + " {:>9.{digits}f}" + " {:>9}\n"
  text += acc_fmt.format("accuracy", "", "", report["accuracy"], total, width=width, digits=digits)
  for average in ("macro avg", "weighted avg"):
    r = report[average]
    text += row_fmt.format(
      average, r["precision"], r["recall"], r["f1-score"], r["support"], width=width, digits=digits
    )
  return text


def reliability_bins(
  confidences: np.ndarray, correct: np.ndarray, num_bins: int = NUM_CALIBRATION_BINS
) -> dict[str, np.ndarray]:
  """Bins predictions by confidence for a reliability diagram.

  Bins are ``num_bins`` equal-width intervals of ``[0, 1]``, each closed on the right
  (the first also on the left), exactly as ``sklearn.calibration.calibration_curve(correct,
  confidences, n_bins=num_bins, strategy="uniform")`` bins them; its two results are
  ``accuracy[count > 0]`` and ``confidence[count > 0]`` here.

  Args:
    confidences: ``(N,)`` probability of each predicted class, in ``[0, 1]``.
    correct: ``(N,)`` whether each prediction was right.
    num_bins: number of bins.

  Returns:
    ``edges`` (``num_bins + 1``), and per bin ``count``, mean ``confidence`` and
    ``accuracy`` (both 0 in an empty bin).
  """
  confidences = np.asarray(confidences, np.float64).ravel()
  correct = np.asarray(correct).astype(bool).ravel()
  if confidences.shape != correct.shape:
    raise ValueError(f"{confidences.size} confidences but {correct.size} correctness flags")
  if confidences.size and (confidences.min() < 0 or confidences.max() > 1):
    raise ValueError("confidences must be in [0, 1]")
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  ids = np.searchsorted(edges[1:-1], confidences)
  count = np.bincount(ids, minlength=num_bins)
  return {
    "edges": edges,
    "count": count,
    "confidence": _divide(np.bincount(ids, weights=confidences, minlength=num_bins), count),
    "accuracy": _divide(np.bincount(ids, weights=correct, minlength=num_bins), count),
  }


def expected_calibration_error(bins: dict[str, np.ndarray]) -> float:
  """Expected calibration error of :func:`reliability_bins`' bins.

  The mean over examples of ``|accuracy - confidence|`` of each example's bin:
  ``sum_b (n_b / N) |acc_b - conf_b|``. 0 for a perfectly calibrated model.
  """
  count = np.asarray(bins["count"], np.float64)
  total = count.sum()
  if total == 0:
    return 0.0
  gaps = np.abs(bins["accuracy"] - bins["confidence"])
  return float(np.sum(count / total * gaps))


def calibration_summary(
  confidences: np.ndarray, correct: np.ndarray, num_bins: int = NUM_CALIBRATION_BINS
) -> dict[str, Any]:
  """Reliability bins and ECE as a JSON-ready dictionary (``calibration.json``)."""
  bins = reliability_bins(confidences, correct, num_bins)
  return {
    "num_bins": num_bins,
    "ece": expected_calibration_error(bins),
    "mean_confidence": float(np.mean(confidences)) if len(confidences) else 0.0,
    "accuracy": float(np.mean(correct)) if len(correct) else 0.0,
    "bins": [
      {
        "lower": float(bins["edges"][i]),
        "upper": float(bins["edges"][i + 1]),
        "count": int(bins["count"][i]),
        "confidence": float(bins["confidence"][i]),
        "accuracy": float(bins["accuracy"][i]),
      }
      for i in range(num_bins)
    ],
  }
