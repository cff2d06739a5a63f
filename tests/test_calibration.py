"""Calibration scores, temperature scaling and the reliability diagram."""

from __future__ import annotations

import json

import numpy as np
import pytest

from digits_jax.analysis import metrics
from digits_jax.robustness import calibration

K = 10


def _sample_labels(rng, probabilities):
  """One class per row drawn from that row's probabilities."""
  cumulative = probabilities.cumsum(axis=1)
  draws = rng.uniform(size=(len(probabilities), 1)) * cumulative[:, -1:]
  return np.minimum((draws > cumulative).sum(axis=1), probabilities.shape[1] - 1)


def test_softmax_is_stable_and_scaled_by_the_temperature():
  p = calibration.softmax(np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]]))
  assert p.dtype == np.float64 and np.all(np.isfinite(p))
  np.testing.assert_allclose(p.sum(axis=1), 1.0)
  np.testing.assert_allclose(p[0], [1.0, 0.0, 0.0])
  np.testing.assert_allclose(
    calibration.softmax(np.array([[2.0, 4.0]]), temperature=2.0),
    [[1 / (1 + np.e), np.e / (1 + np.e)]],
  )
  with pytest.raises(ValueError, match="temperature must be positive"):
    calibration.softmax(p, temperature=0.0)


def test_nll_and_brier_of_a_small_case_by_hand():
  p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
  y = np.array([0, 1])
  assert calibration.nll(p, y) == pytest.approx(-(np.log(0.7) + np.log(0.1)) / 2)
  # (0.3^2 + 0.2^2 + 0.1^2 + 0.1^2 + 0.9^2 + 0.8^2) / 2
  assert calibration.brier(p, y) == pytest.approx(0.8)
  assert calibration.brier(np.eye(3), [0, 1, 2]) == 0.0
  assert calibration.brier(np.eye(3), [1, 2, 0]) == pytest.approx(2.0)
  # A zero probability of the true class is clipped at 1e-12, not infinite.
  assert calibration.nll(np.array([[1.0, 0.0]]), [1]) == pytest.approx(-np.log(1e-12))
  with pytest.raises(ValueError, match="labels must be in"):
    calibration.nll(p, [0, 3])


def test_ece_of_perfectly_calibrated_probabilities_is_about_zero():
  rng = np.random.default_rng(0)
  n = 100_000
  top = rng.uniform(0.1, 1.0, n)  # top-class probability, the rest shared equally
  p = np.repeat(((1 - top) / (K - 1))[:, None], K, axis=1)
  predicted = rng.integers(0, K, n)
  p[np.arange(n), predicted] = top
  y = _sample_labels(rng, p)
  assert calibration.ece(p, y) < 0.01
  # The same probabilities with labels that are always right: under-confident by 45 points.
  assert calibration.ece(p, predicted) == pytest.approx(1 - top.mean(), abs=1e-9)


@pytest.mark.parametrize("bins", [10, 15])
def test_ece_and_reliability_equal_the_run_metrics(bins):
  rng = np.random.default_rng(1)
  logits = rng.normal(scale=3.0, size=(5000, K))
  y = rng.integers(0, K, 5000)
  p = calibration.softmax(logits)
  reference = metrics.reliability_bins(p.max(axis=1), p.argmax(axis=1) == y, bins)
  assert calibration.ece(p, y, bins) == pytest.approx(
    metrics.expected_calibration_error(reference), rel=1e-12, abs=1e-15
  )
  table = calibration.reliability(p, y, bins)
  json.dumps(table)
  assert set(table) == {"lower", "upper", "count", "accuracy", "confidence"}
  assert all(len(v) == bins for v in table.values())
  np.testing.assert_array_equal(table["count"], reference["count"])
  np.testing.assert_allclose(table["accuracy"], reference["accuracy"], rtol=1e-12)
  np.testing.assert_allclose(table["confidence"], reference["confidence"], rtol=1e-12)
  np.testing.assert_allclose(table["lower"] + table["upper"][-1:], reference["edges"])


def test_fit_temperature_recovers_a_known_temperature():
  rng = np.random.default_rng(2)
  true_logits = rng.normal(scale=2.0, size=(20_000, K))
  y = _sample_labels(rng, calibration.softmax(true_logits))
  temperature = calibration.fit_temperature(true_logits * 3.0, y)
  assert temperature == pytest.approx(3.0, rel=0.1)
  # Scaling lowers the NLL of the over-confident logits it was fitted on.
  over_confident = calibration.nll(calibration.softmax(true_logits * 3.0), y)
  scaled = calibration.nll(calibration.softmax(true_logits * 3.0, temperature), y)
  assert scaled < over_confident - 0.1


def test_summary_before_and_after_scaling_and_the_diagram(tmp_path):
  rng = np.random.default_rng(3)
  true_logits = rng.normal(scale=2.0, size=(4000, K))
  y = _sample_labels(rng, calibration.softmax(true_logits))
  validation, test = slice(0, 2000), slice(2000, None)
  temperature = calibration.fit_temperature(true_logits[validation] * 3.0, y[validation])
  result = calibration.summary(true_logits[test] * 3.0, y[test], temperature)
  json.dumps(result)
  assert result["temperature"] == temperature
  assert result["nll_scaled"] < result["nll"]
  assert result["ece_scaled"] < result["ece"]
  assert result["brier_scaled"] < result["brier"]
  assert sum(result["bins"]["count"]) == sum(result["bins_scaled"]["count"]) == 2000
  path = calibration.reliability_diagram(
    [
      ("over-confident", result),
      ("one table", result["bins"]),
      ("a pair", (result["bins"], result["bins_scaled"])),
    ],
    tmp_path / "figures" / "reliability.png",
  )
  assert path == str(tmp_path / "figures" / "reliability.png")
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert [p.name for p in (tmp_path / "figures").iterdir()] == ["reliability.png"]
