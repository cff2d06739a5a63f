"""Calibration of a classifier's probabilities, and temperature scaling (Guo et al., 2017).

* :func:`nll`, :func:`brier`, :func:`ece` -- mean negative log-likelihood, Brier score and
  expected calibration error of class probabilities.
* :func:`reliability` -- the accuracy and mean confidence per equal-width confidence bin.
* :func:`fit_temperature` -- the temperature ``T`` that minimises the NLL of
  ``softmax(logits / T)``; fit it on a validation split, apply it to the test split.
* :func:`summary` -- the three scores before and after scaling, with both reliability tables.
* :func:`reliability_diagram` -- one panel per network, before and after scaling.

The confidence of a prediction is its top-class probability and the prediction is that
class. The bins are those of :func:`digits_jax.analysis.metrics.reliability_bins` (equal width,
closed on the right, the first also on the left), so :func:`ece` equals its
``expected_calibration_error``. NumPy and SciPy only (matplotlib for the diagram).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize, special

NUM_BINS = 15  # Guo et al. (2017)
LOG_T_BOUNDS = (-3.0, 3.0)  # temperatures from e^-3 (about 0.05) to e^3 (about 20)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
  """Class probabilities of ``(N, K)`` logits divided by ``temperature``, in float64."""
  if not temperature > 0:
    raise ValueError(f"temperature must be positive, got {temperature!r}")
  z = np.asarray(logits, np.float64) / temperature
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def _checked(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  p = np.asarray(probabilities, np.float64)
  y = np.asarray(labels).astype(np.int64).ravel()
  if p.ndim != 2 or p.shape[0] != y.size:
    raise ValueError(f"probabilities of shape {p.shape} for {y.size} labels: give (N, K) and (N,)")
  if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
    raise ValueError(f"labels must be in [0, {p.shape[1]}), got [{y.min()}, {y.max()}]")
  return p, y


def nll(probabilities: np.ndarray, labels: np.ndarray) -> float:
  """Mean negative log-likelihood of the true classes (probabilities clipped at 1e-12)."""
  p, y = _checked(probabilities, labels)
  if not y.size:
    return 0.0
  return float(-np.mean(np.log(np.clip(p[np.arange(y.size), y], 1e-12, None))))


def brier(probabilities: np.ndarray, labels: np.ndarray) -> float:
  """Brier score: the mean over examples of ``sum_k (p_k - onehot_k)^2``, in ``[0, 2]``."""
  p, y = _checked(probabilities, labels)
  if not y.size:
    return 0.0
  onehot = np.zeros_like(p)
  onehot[np.arange(y.size), y] = 1.0
  return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def _bins(probabilities: np.ndarray, labels: np.ndarray, bins: int) -> dict[str, np.ndarray]:
  """Equal-width bins of the top-class confidence: edges, count, accuracy, confidence."""
  if int(bins) < 1:
    raise ValueError(f"bins must be >= 1, got {bins!r}")
  p, y = _checked(probabilities, labels)
  confidence = p.max(axis=1) if y.size else np.zeros(0)
  correct = (p.argmax(axis=1) == y) if y.size else np.zeros(0, bool)
  edges = np.linspace(0.0, 1.0, int(bins) + 1)
  ids = np.searchsorted(edges[1:-1], confidence)  # closed on the right
  count = np.bincount(ids, minlength=int(bins))
  safe = np.maximum(count, 1)
  return {
    "edges": edges,
    "count": count,
    "accuracy": np.where(count > 0, np.bincount(ids, correct, int(bins)) / safe, 0.0),
    "confidence": np.where(count > 0, np.bincount(ids, confidence, int(bins)) / safe, 0.0),
  }


def _ece_of(count, accuracy, confidence) -> float:
  count = np.asarray(count, np.float64)
  total = count.sum()
  if total == 0:
    return 0.0
  gaps = np.abs(np.asarray(accuracy, np.float64) - np.asarray(confidence, np.float64))
  return float(np.sum(count / total * gaps))


def ece(probabilities: np.ndarray, labels: np.ndarray, bins: int = NUM_BINS) -> float:
  """Expected calibration error: ``sum_b (n_b / N) |accuracy_b - confidence_b|``.

  Over ``bins`` equal-width bins of the top-class probability; 0 when every bin's accuracy
  equals its mean confidence.
  """
  b = _bins(probabilities, labels, bins)
  return _ece_of(b["count"], b["accuracy"], b["confidence"])


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = NUM_BINS) -> dict:
  """The reliability table: per confidence bin its bounds, size, accuracy and mean confidence.

  Returns:
    ``{"lower", "upper", "count", "accuracy", "confidence"}``, each a list with one entry
    per bin (floats, counts as ints; accuracy and confidence 0 in an empty bin).
  """
  b = _bins(probabilities, labels, bins)
  return {
    "lower": [float(v) for v in b["edges"][:-1]],
    "upper": [float(v) for v in b["edges"][1:]],
    "count": [int(v) for v in b["count"]],
    "accuracy": [float(v) for v in b["accuracy"]],
    "confidence": [float(v) for v in b["confidence"]],
  }


def _nll_of_logits(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
  z = logits / temperature
  return float(np.mean(special.logsumexp(z, axis=1) - z[np.arange(labels.size), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
  """The temperature ``T > 0`` minimising the mean NLL of ``softmax(logits / T)``.

  A bounded scalar search over ``log T`` in :data:`LOG_T_BOUNDS`. Callers fit it on the
  validation split and apply it to the test split; it divides every logit by the same
  number, so it leaves the predictions (and the accuracy) unchanged.

  Args:
    logits: ``(N, K)`` logits.
    labels: ``(N,)`` true classes.

  Returns:
    The fitted temperature (above 1 for an over-confident model).

  Raises:
    ValueError: no examples, or mismatched shapes.
  """
  z, y = _checked(logits, labels)
  if not y.size:
    raise ValueError("no examples to fit a temperature on")
  result = optimize.minimize_scalar(
    lambda log_t: _nll_of_logits(z, y, float(np.exp(log_t))),
    bounds=LOG_T_BOUNDS,
    method="bounded",
    options={"xatol": 1e-5},
  )
  return float(np.exp(result.x))


def summary(
  test_logits: np.ndarray, test_labels: np.ndarray, temperature: float, bins: int = NUM_BINS
) -> dict[str, Any]:
  """ECE, NLL and Brier score of the test logits before and after temperature scaling.

  Args:
    test_logits: ``(N, K)`` logits of the test split.
    test_labels: ``(N,)`` true classes.
    temperature: the temperature fitted on the validation split (:func:`fit_temperature`).
    bins: confidence bins of the ECE and the reliability tables.

  Returns:
    A JSON-ready dictionary: ``ece``, ``nll``, ``brier`` at temperature 1, the same with
    ``_scaled`` at ``temperature``, ``temperature``, and the reliability tables ``bins`` and
    ``bins_scaled`` (:func:`reliability`).
  """
  plain = softmax(test_logits)
  scaled = softmax(test_logits, temperature)
  return {
    "ece": ece(plain, test_labels, bins),
    "nll": nll(plain, test_labels),
    "brier": brier(plain, test_labels),
    "ece_scaled": ece(scaled, test_labels, bins),
    "nll_scaled": nll(scaled, test_labels),
    "brier_scaled": brier(scaled, test_labels),
    "temperature": float(temperature),
    "bins": reliability(plain, test_labels, bins),
    "bins_scaled": reliability(scaled, test_labels, bins),
  }


def _curves(data: Any) -> list[tuple[str, dict, float]]:
  """(label, reliability table, ECE) of each curve of a diagram panel's data."""
  if isinstance(data, dict) and "bins" in data:  # a summary
    curves = [("before scaling", data["bins"], data.get("ece"))]
    if "bins_scaled" in data:
      curves.append(("after scaling", data["bins_scaled"], data.get("ece_scaled")))
  elif isinstance(data, dict):  # one table
    curves = [("", data, None)]
  else:  # tables before and after scaling
    curves = list(zip(("before scaling", "after scaling"), data, (None, None)))
  return [
    (label, t, _ece_of(t["count"], t["accuracy"], t["confidence"]) if e is None else float(e))
    for label, t, e in curves
  ]


def reliability_diagram(entries: Sequence[tuple[str, Any]], path: str | os.PathLike) -> str:
  """Draws reliability diagrams, one panel per network, and writes them as a PNG.

  Each panel shows the accuracy of every confidence bin as a bar against the diagonal of
  perfect calibration: before temperature scaling (filled) and after it (outlined), with
  the ECEs in the panel's title. Empty bins have no bar.

  Args:
    entries: ``(name, data)`` per network; ``data`` is a :func:`summary` dictionary (both
      tables), one :func:`reliability` table, or a pair of tables (before, after scaling).
    path: the PNG to write (atomically; its folder is created).

  Returns:
    ``path`` as a string.

  Raises:
    ValueError: no entries.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  if not entries:
    raise ValueError("no entries to draw: give at least one (name, reliability) pair")
  columns = min(len(entries), 4)
  rows = -(-len(entries) // columns)
  fig = Figure(figsize=(3.2 * columns, 3.4 * rows), dpi=100, layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(rows, columns, squeeze=False).ravel()
  styles = (
    {"color": "#4575b4", "alpha": 0.75, "edgecolor": "#313695"},
    {"fill": False, "edgecolor": "#d73027", "linewidth": 1.4},
  )
  for ax, (name, data) in zip(axes, entries):
    curves = _curves(data)
    for (label, table, _), style in zip(curves, styles):
      lower, upper = np.asarray(table["lower"]), np.asarray(table["upper"])
      count = np.asarray(table["count"])
      accuracy = np.where(count > 0, np.asarray(table["accuracy"], np.float64), np.nan)
      ax.bar(lower, accuracy, width=upper - lower, align="edge", label=label or None, **style)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
    errors = ", ".join(
      f"{label.split()[0]} {error:.2%}" if label else f"{error:.2%}" for label, _, error in curves
    )
    ax.set_title(f"{name}\nECE {errors}", fontsize=9)
    if len(curves) > 1:
      ax.legend(loc="best", fontsize=7)
  for ax in axes[len(entries) :]:
    ax.set_visible(False)
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100)
  target = Path(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".tmp", delete=False) as f:
    f.write(buffer.getvalue())
  os.replace(f.name, target)
  return str(target)
