"""Metrics: exact agreement with direct counts and with scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import calibration as sk_calibration
from sklearn import metrics as sk_metrics

from digits_jax.analysis import metrics

K = 10


def _predictions(seed: int, n: int = 2000, missing: tuple[int, ...] = ()):
  """Random labels and noisy predictions; classes in ``missing`` are never predicted."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, K, n)
  predicted = np.where(rng.random(n) < 0.8, labels, rng.integers(0, K, n))
  for c in missing:
    predicted[predicted == c] = (c + 1) % K
  return labels, predicted


def test_confusion_matrix_matches_a_direct_count_and_sklearn():
  labels, predicted = _predictions(0)
  cm = metrics.confusion_matrix(labels, predicted, K)
  assert cm.shape == (K, K) and cm.dtype == np.int64
  assert cm.sum() == len(labels)
  direct = np.zeros((K, K), np.int64)
  for t, p in zip(labels, predicted, strict=True):
    direct[t, p] += 1
  np.testing.assert_array_equal(cm, direct)
  np.testing.assert_array_equal(cm, sk_metrics.confusion_matrix(labels, predicted, labels=range(K)))
  assert np.trace(cm) == np.sum(labels == predicted)


def test_confusion_matrix_rejects_bad_input():
  with pytest.raises(ValueError, match="3 labels but 2 predictions"):
    metrics.confusion_matrix(np.array([0, 1, 2]), np.array([0, 1]), K)
  with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
    metrics.confusion_matrix(np.array([0, 10]), np.array([0, 1]), K)


def test_normalized_rows_sum_to_one():
  labels, predicted = _predictions(1)
  normalized = metrics.normalize_rows(metrics.confusion_matrix(labels, predicted, K))
  np.testing.assert_allclose(normalized.sum(axis=1), 1.0)
  empty = metrics.normalize_rows(np.zeros((3, 3), np.int64))  # no true examples: zeros
  np.testing.assert_array_equal(empty, 0.0)


@pytest.mark.parametrize("seed, missing", [(0, ()), (1, (3,)), (2, (0, 7))])
def test_classification_report_equals_sklearn(seed, missing):
  """Same keys, same float64 values to the last bit, same text; classes never predicted
  (zero precision denominators) included."""
  labels, predicted = _predictions(seed, missing=missing)
  ours = metrics.classification_report(metrics.confusion_matrix(labels, predicted, K))
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # zero_division=0.0 must not warn
    theirs = sk_metrics.classification_report(
      labels, predicted, labels=range(K), output_dict=True, zero_division=0.0
    )
  assert ours == theirs
  assert list(ours) == list(theirs)
  for digits in (2, 4):
    text = sk_metrics.classification_report(
      labels, predicted, labels=range(K), digits=digits, zero_division=0.0
    )
    assert metrics.format_report(ours, digits=digits) == text


def test_classification_report_with_class_names_and_an_absent_class():
  labels = np.array([0, 0, 1, 1, 1, 2])
  predicted = np.array([0, 1, 1, 1, 2, 2])
  names = ["cat", "dog", "bird", "fish"]  # "fish" neither occurs nor is predicted
  ours = metrics.classification_report(metrics.confusion_matrix(labels, predicted, 4), names)
  theirs = sk_metrics.classification_report(
    labels, predicted, labels=range(4), target_names=names, output_dict=True, zero_division=0.0
  )
  assert ours == theirs
  assert ours["fish"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0}
  assert metrics.format_report(ours) == sk_metrics.classification_report(
    labels, predicted, labels=range(4), target_names=names, digits=4, zero_division=0.0
  )


def test_softmax_is_stable_and_normalised():
  logits = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]], np.float32)
  probs = metrics.softmax(logits)
  assert probs.dtype == np.float64 and np.all(np.isfinite(probs))
  np.testing.assert_allclose(probs.sum(axis=1), 1.0)
  np.testing.assert_array_equal(probs.argmax(axis=1), metrics.predictions(logits))


def _calibration_data(seed: int, n: int = 3000):
  rng = np.random.default_rng(seed)
  confidences = rng.uniform(0.1, 1.0, n)
  # Bin edges exactly, and 1.0 itself: the closed ends of the bins.
  confidences[:16] = np.linspace(0.0, 1.0, 16)
  correct = rng.random(n) < confidences**0.5  # underconfident on purpose
  return confidences, correct


@pytest.mark.parametrize("num_bins", [10, 15])
def test_reliability_bins_match_sklearn_calibration_curve(num_bins):
  confidences, correct = _calibration_data(num_bins)
  bins = metrics.reliability_bins(confidences, correct, num_bins)
  prob_true, prob_pred = sk_calibration.calibration_curve(
    correct, confidences, n_bins=num_bins, strategy="uniform"
  )
  filled = bins["count"] > 0
  np.testing.assert_array_equal(bins["accuracy"][filled], prob_true)
  np.testing.assert_array_equal(bins["confidence"][filled], prob_pred)
  assert bins["count"].sum() == len(confidences)
  np.testing.assert_array_equal(bins["edges"], np.linspace(0, 1, num_bins + 1))


def test_expected_calibration_error_is_the_mean_gap_of_each_examples_bin():
  confidences, correct = _calibration_data(3)
  bins = metrics.reliability_bins(confidences, correct, 15)
  # Directly: each example's bin by the same rule (right-closed intervals), then the mean.
  which = np.clip(np.ceil(confidences * 15).astype(int) - 1, 0, 14)
  gaps = [
    abs(correct[which == b].mean() - confidences[which == b].mean()) if np.any(which == b) else 0.0
    for b in range(15)
  ]
  direct = np.mean([gaps[b] for b in which])
  assert metrics.expected_calibration_error(bins) == pytest.approx(direct, rel=1e-12)
  assert 0.0 < direct < 1.0


def test_a_perfectly_calibrated_model_has_zero_ece():
  # In each bin the share of correct predictions equals the (constant) confidence.
  confidences = np.repeat([0.25, 0.5, 0.75, 1.0], 4)
  correct = np.array([1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1], bool)
  summary = metrics.calibration_summary(confidences, correct, num_bins=4)
  assert summary["ece"] == pytest.approx(0.0, abs=1e-15)
  assert [b["count"] for b in summary["bins"]] == [4, 4, 4, 4]
  assert summary["accuracy"] == pytest.approx(correct.mean())


def test_reliability_bins_reject_bad_input():
  with pytest.raises(ValueError, match=r"in \[0, 1\]"):
    metrics.reliability_bins(np.array([0.5, 1.5]), np.array([True, False]))
  with pytest.raises(ValueError, match="2 confidences but 1"):
    metrics.reliability_bins(np.array([0.5, 0.5]), np.array([True]))
