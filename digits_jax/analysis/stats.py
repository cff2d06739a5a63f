"""The statistics of comparisons, as pure functions (scipy and statsmodels do the arithmetic).

Intervals are 95%. :func:`seed_interval` is the one Student t interval of a mean over
seeds; :func:`stratified_mcnemar` is the test of a verdict per trained network (see
docs/compare.md).

scipy.stats and statsmodels are imported inside the functions that use them: together they
take about a second to import, which every entry point would otherwise pay at start
(training imports this module through the reports, and computes no statistics).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

CONFIDENCE = 0.95
ALPHA = 0.05


@dataclasses.dataclass(frozen=True)
class Interval:
  """A 95% confidence interval and how it was computed."""

  low: float
  high: float
  method: str


def binomial_interval(successes: int, trials: int) -> Interval:
  """Exact (Clopper-Pearson) 95% interval of a proportion: accuracy over test images."""
  from scipy import stats

  ci = stats.binomtest(int(successes), int(trials)).proportion_ci(CONFIDENCE, method="exact")
  return Interval(float(ci.low), float(ci.high), f"binomial over {trials:,} test images")


def seed_interval(values: Sequence[float]) -> Interval:
  """Student t 95% interval of the mean of ``values`` (two or more), e.g. accuracies.

  Identical values give the zero-width interval at their mean.
  """
  from scipy import stats

  values = np.asarray(values, np.float64)
  method = f"t over {len(values)} seeds"
  if len(values) < 2:
    raise ValueError("a t interval needs two values at least")
  if np.all(values == values[0]):
    return Interval(float(values[0]), float(values[0]), method)
  ci = stats.ttest_1samp(values, 0.0).confidence_interval(CONFIDENCE)
  return Interval(float(ci.low), float(ci.high), method)


def difference_interval(
  a: Mapping[Any, int], b: Mapping[Any, int], num_test: int
) -> Interval | None:
  """95% interval of mean accuracy A minus mean accuracy B over seeds.

  Args:
    a, b: seed to number of correct test images, per configuration.
    num_test: test images (to turn counts into accuracies).

  Returns:
    Paired t on the per-seed differences when both have the same two or more seeds, Welch's
    t when they have different seeds and two or more each, else ``None`` (not applicable).
    Counts keep the arithmetic exact, so equal differences give a zero-width interval.
  """
  from scipy import stats

  if set(a) == set(b) and len(a) >= 2:
    seeds = sorted(a)
    xa = np.array([a[s] for s in seeds], np.float64)
    xb = np.array([b[s] for s in seeds], np.float64)
    method = f"paired t over {len(seeds)} seeds"
    d = xa - xb
    if np.all(d == d[0]):
      return Interval(d[0] / num_test, d[0] / num_test, method)
    ci = stats.ttest_rel(xa, xb).confidence_interval(CONFIDENCE)
  elif set(a) != set(b) and len(a) >= 2 and len(b) >= 2:
    xa = np.array(list(a.values()), np.float64)
    xb = np.array(list(b.values()), np.float64)
    method = f"Welch t over {len(a)} and {len(b)} seeds"
    if np.all(xa == xa[0]) and np.all(xb == xb[0]):
      d = xa[0] - xb[0]
      return Interval(d / num_test, d / num_test, method)
    ci = stats.ttest_ind(xa, xb, equal_var=False).confidence_interval(CONFIDENCE)
  else:
    return None
  return Interval(float(ci.low) / num_test, float(ci.high) / num_test, method)


def mcnemar_table(correct_a: np.ndarray, correct_b: np.ndarray) -> np.ndarray:
  """The 2x2 table of paired outcomes: rows A right/wrong, columns B right/wrong."""
  a = np.asarray(correct_a, bool)
  b = np.asarray(correct_b, bool)
  return np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]])


def mcnemar_pvalue(table: np.ndarray) -> float:
  """Two-sided exact McNemar p-value of a 2x2 table (statsmodels, binomial on discordants)."""
  from statsmodels.stats.contingency_tables import mcnemar

  return float(mcnemar(np.asarray(table), exact=True).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
  """Holm-adjusted p-values (statsmodels ``multipletests``), in the given order."""
  from statsmodels.stats.multitest import multipletests

  if not len(pvalues):
    return []
  return [float(p) for p in multipletests(list(pvalues), alpha=ALPHA, method="holm")[1]]


def discordant_interval(table: np.ndarray) -> Interval:
  """95% interval of accuracy A minus accuracy B on paired outcomes.

  Exact conditional on the ``m`` test images where A and B disagree: the Clopper-Pearson
  interval of the share of them that A gets right, mapped to ``m (2 share - 1) / N``. It is
  the interval dual to the exact McNemar test (0 lies outside it where p < 0.05).
  """
  from scipy import stats

  table = np.asarray(table)
  n = int(table.sum())
  a_only, b_only = int(table[0, 1]), int(table[1, 0])
  m = a_only + b_only
  method = "exact, conditional on the images where they disagree"
  if m == 0:
    return Interval(0.0, 0.0, method)
  ci = stats.binomtest(a_only, m).proportion_ci(CONFIDENCE, method="exact")
  return Interval(m * (2 * ci.low - 1) / n, m * (2 * ci.high - 1) / n, method)


@dataclasses.dataclass(frozen=True)
class StratifiedTest:
  """Stratified McNemar test of A against B over seed pairs, widened for seed dispersion.

  Attributes:
    a_only: images only A's network gets right, summed over the seed pairs.
    b_only: images only B's network gets right, summed over the seed pairs.
    dispersion: the variance factor applied (the seed pairs' dispersion estimate, never
      below 1; 1 with a single seed pair, where it cannot be estimated).
    pvalue: two-sided exact binomial p-value on the effective counts.
    difference: mean accuracy of A's networks minus B's over the seed pairs.
    interval: 95% interval of that difference, dual to the test.
  """

  a_only: int
  b_only: int
  dispersion: float
  pvalue: float
  difference: float
  interval: Interval


def dispersion(tables: Sequence[np.ndarray]) -> float:
  """Seed-to-seed dispersion of paired differences, relative to McNemar's variance, >= 1.

  For seed pair ``k`` with ``b_k`` images only A gets right and ``c_k`` only B, McNemar's
  conditional variance of ``d_k = b_k - c_k`` is ``n_k = b_k + c_k``. Pearson's estimate of
  the extra factor is ``X = sum((d_k - r n_k)^2 / n_k) / (K - 1)`` with the pooled rate
  ``r = sum(d) / sum(n)``. With three seeds it rests on two degrees of freedom, so the test
  uses its 75% upper confidence bound ``X (K - 1) / chi2_{K-1}(0.25)`` (the simulation of
  docs/compare.md shows the plain estimate lets "better" through too often), floored at 1:
  the test is never more confident than McNemar's. 1 with one seed pair (no estimate).
  """
  from scipy import stats

  counts = [(int(t[0][1]), int(t[1][0])) for t in tables]
  counts = [(b, c) for b, c in counts if b + c > 0]
  if len(counts) < 2:
    return 1.0
  d = np.array([b - c for b, c in counts], np.float64)
  n = np.array([b + c for b, c in counts], np.float64)
  rate = d.sum() / n.sum()
  df = len(counts) - 1
  pearson = float(np.sum((d - rate * n) ** 2 / n) / df)
  return max(1.0, pearson * df / float(stats.chi2.ppf(0.25, df)))


def stratified_mcnemar(tables: Sequence[np.ndarray], num_test: int) -> StratifiedTest:
  """Does recipe A give better networks than recipe B? One test over every seed pair.

  Each seed pair's McNemar table (:func:`mcnemar_table`) is a stratum. Given the discordant
  images, the pooled count of images only A gets right is binomial with ``sum(n_k)`` trials
  and probability 1/2 under "no difference" (the exact stratified McNemar test; its
  chi-square form is the Cochran-Mantel-Haenszel statistic with every seed pair and test
  image a stratum). Networks of one recipe differ from seed to seed by more than the test
  images' sampling says; :func:`dispersion` estimates that factor from the seed pairs, and
  the test uses the effective counts ``sum(b)/phi`` of ``sum(n)/phi`` (quasi-binomial).

  Args:
    tables: one 2x2 table per seed pair, ``[[both right, A only], [B only, both wrong]]``.
    num_test: test images per table.

  Returns:
    The test, with the mean difference per trained network and its interval.
  """
  from scipy import stats

  if not len(tables):
    raise ValueError("no seed pairs to test")
  a_only = sum(int(t[0][1]) for t in tables)
  b_only = sum(int(t[1][0]) for t in tables)
  m = a_only + b_only
  phi = dispersion(tables)
  scale = m / (len(tables) * num_test)  # discordant images per network pair, as a fraction
  method = f"stratified McNemar over {len(tables)} seed pairs, dispersion {phi:.2f}"
  if m == 0:
    return StratifiedTest(a_only, b_only, phi, 1.0, 0.0, Interval(0.0, 0.0, method))
  n_eff = max(1, int(round(m / phi)))
  k_eff = min(n_eff, int(round(a_only / phi)))
  test = stats.binomtest(k_eff, n_eff)
  ci = test.proportion_ci(CONFIDENCE, method="exact")
  return StratifiedTest(
    a_only=a_only,
    b_only=b_only,
    dispersion=phi,
    pvalue=float(test.pvalue),
    difference=(a_only - b_only) / (len(tables) * num_test),
    interval=Interval(scale * (2 * ci.low - 1), scale * (2 * ci.high - 1), method),
  )
