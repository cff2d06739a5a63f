"""The statistics of comparisons against scipy and statsmodels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.contingency_tables import StratifiedTable, mcnemar

from digits_jax.analysis import stats


def _pair(rng, n, p_a, p_b):
  return rng.random(n) < p_a, rng.random(n) < p_b


def test_one_seed_pair_is_the_exact_mcnemar_test():
  rng = np.random.default_rng(0)
  a, b = _pair(rng, 2000, 0.97, 0.95)
  table = stats.mcnemar_table(a, b)
  test = stats.stratified_mcnemar([table], 2000)
  assert test.dispersion == 1.0
  assert test.pvalue == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-9)
  assert test.difference == pytest.approx(a.mean() - b.mean())


def test_pooled_statistic_is_cochran_mantel_haenszel_over_seed_pairs_and_images():
  """With no dispersion, the pooled McNemar chi-square is CMH with every image a stratum."""
  rng = np.random.default_rng(1)
  tables, strata = [], []
  for _ in range(3):
    a, b = _pair(rng, 300, 0.9, 0.85)
    tables.append(stats.mcnemar_table(a, b))
    for x, y in zip(a, b, strict=True):  # rows: network A, B; columns: right, wrong
      strata.append(np.array([[x, not x], [y, not y]], float))
  b_sum = sum(t[0][1] for t in tables)
  c_sum = sum(t[1][0] for t in tables)
  cmh = StratifiedTable(np.dstack(strata)).test_null_odds(correction=False).statistic
  assert (b_sum - c_sum) ** 2 / (b_sum + c_sum) == pytest.approx(cmh, rel=1e-9)


def test_dispersion_is_one_for_agreeing_pairs_and_grows_with_disagreement():
  same = [np.array([[900, 30], [20, 50]])] * 3
  assert stats.dispersion(same) == 1.0
  spread = [np.array([[900, 60], [5, 35]]), np.array([[900, 5], [60, 35]]), same[0]]
  d = np.array([55.0, -55.0, 10.0])
  n = np.array([65.0, 65.0, 50.0])
  pearson = np.sum((d - d.sum() / n.sum() * n) ** 2 / n) / 2
  assert stats.dispersion(spread) == pytest.approx(pearson * 2 / scipy_stats.chi2.ppf(0.25, 2))
  test = stats.stratified_mcnemar(spread, 1000)
  plain = scipy_stats.binomtest(65, 180).pvalue
  assert test.pvalue > plain  # the seed disagreement widens the test


def test_interval_is_dual_to_the_test():
  for a_only, b_only in ((40, 20), (30, 29), (60, 10)):
    table = np.array([[9000, a_only], [b_only, 100]])
    test = stats.stratified_mcnemar([table, table], 9000 + a_only + b_only + 100)
    excluded = not (test.interval.low <= 0 <= test.interval.high)
    assert excluded == (test.pvalue < 0.05)


def test_seed_interval_is_student_t():
  values = [0.990, 0.991, 0.993]
  iv = stats.seed_interval(values)
  low, high = scipy_stats.t.interval(0.95, 2, loc=np.mean(values), scale=scipy_stats.sem(values))
  assert (iv.low, iv.high) == pytest.approx((low, high))
  with pytest.raises(ValueError):
    stats.stratified_mcnemar([], 10)
