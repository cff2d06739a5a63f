"""Seed ensembles and the ensemble of the best configurations of a comparison.

:func:`ensemble_correct` says which test images the mean of several runs' probabilities
classifies correctly; :func:`ensemble_of_best` averages the configurations with the best
validation accuracy, one ensemble per shared seed, and tests the average of all their runs
against the best member's seed ensemble (:class:`Ensemble`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from digits_jax.analysis.stats import (
  Interval,
  binomial_interval,
  discordant_interval,
  mcnemar_pvalue,
  mcnemar_table,
  seed_interval,
)
from digits_jax.rundir import Run


@dataclasses.dataclass(frozen=True)
class Ensemble:
  """Several configurations averaged: the ``top`` best by validation accuracy.

  Attributes:
    members: the configurations' labels, best validation accuracy first.
    seeds: the seeds every member has; at each, the members' networks of that seed are
      averaged (one ensemble per seed).
    accuracies: test accuracy of each seed's ensemble.
    mean: their mean.
    std: their sample standard deviation (NaN with one seed).
    interval: t over those seeds (two or more) or binomial over test images (one).
    all_accuracy: accuracy of the mean of every member run's probabilities (all seeds).
    all_interval: binomial over test images.
    runs: how many runs the all-seed ensemble averages.
    train_seconds: training seconds of one seed's ensemble (the members' mean run times
      added), when every member has them.
    versus: the best member (by validation accuracy), whose seed ensemble is tested against
      the all-seed ensemble.
    difference: ``all_accuracy`` minus the accuracy of ``versus``'s seed ensemble.
    table: McNemar table ``[[both right, ensemble only], [best member only, both wrong]]``.
    pvalue: exact McNemar p-value of that table (one test, not corrected).
    difference_interval: exact, conditional on the images where they disagree.
    one_per_model: the members were chosen as the best configuration of each model.
  """

  members: tuple[str, ...]
  seeds: tuple[Any, ...]
  accuracies: tuple[float, ...]
  mean: float
  std: float
  interval: Interval | None
  all_accuracy: float
  all_interval: Interval
  runs: int
  train_seconds: float | None
  versus: str
  difference: float
  table: tuple[tuple[int, int], tuple[int, int]]
  pvalue: float
  difference_interval: Interval
  one_per_model: bool = False


def seed_sort_key(seed: Any) -> tuple[int, Any]:
  return (0, seed) if isinstance(seed, (int, float)) else (1, str(seed))


def ensemble_correct(runs: Sequence[Run]) -> np.ndarray:
  """Which test images the mean of the runs' probabilities classifies correctly."""
  if len(runs) == 1:
    return runs[0].outputs.correct
  mean = np.mean([r.outputs.probabilities.astype(np.float32) for r in runs], axis=0)
  return mean.argmax(axis=1) == runs[0].outputs.labels


def accuracy_spread(n_correct: Sequence[int], num_test: int) -> tuple[Interval, float]:
  """95% interval and std of accuracy from seeds' correct counts (one seed or more).

  Two or more seeds: the t interval over seeds, clipped to [0, 1] (an accuracy lies there),
  and the sample standard deviation. One run: the binomial interval over the test images,
  and NaN.
  """
  if len(n_correct) >= 2:
    t = seed_interval(n_correct)
    interval = Interval(max(t.low / num_test, 0.0), min(t.high / num_test, 1.0), t.method)
    return interval, float(np.std(n_correct, ddof=1)) / num_test
  return binomial_interval(n_correct[0], num_test), math.nan


def ensemble_of_best(
  configurations: Sequence[Any],
  runs: Mapping[str, Sequence[Run]],
  correct: Mapping[str, tuple[Mapping[Any, np.ndarray], np.ndarray]],
  top: int,
  one_per_model: bool = False,
) -> Ensemble | None:
  """The ensemble of the ``top`` configurations with the best mean validation accuracy.

  The members are chosen on the validation split only. Each seed that every member has
  gives one ensemble (the members' networks of that seed averaged), so the ensemble has a
  mean and spread over seeds like a configuration; the mean of every member run is tested
  (exact McNemar, one test) against the best member's seed ensemble.

  Args:
    configurations: the compared configurations
      (:class:`digits_jax.analysis.comparison.Configuration`).
    runs: each configuration's runs, by label.
    correct: each configuration's per-seed and seed-ensemble correctness, by label.
    top: how many configurations to average (fewer when fewer have a validation accuracy).
    one_per_model: skip every configuration of a model whose better configuration (by
      validation) is already a member.

  Returns:
    The ensemble, or ``None`` with fewer than two configurations to average.
  """
  ranked = sorted(
    (c for c in configurations if c.val_accuracy is not None),
    key=lambda c: (-c.val_accuracy, c.label),
  )
  if one_per_model:
    best_of_model = {}
    for c in ranked:
      best_of_model.setdefault(c.config.get("model"), c)
    ranked = list(best_of_model.values())
  ranked = ranked[:top]
  if len(ranked) < 2:
    return None
  members = [runs[c.label] for c in ranked]
  labels = members[0][0].outputs.labels
  num_test = len(labels)
  shared = sorted(set.intersection(*({r.seed for r in m} for m in members)), key=seed_sort_key)
  n_correct = []
  for seed in shared:
    at_seed = [next(r for r in m if r.seed == seed) for m in members]
    n_correct.append(int(ensemble_correct(at_seed).sum()))
  interval, std = accuracy_spread(n_correct, num_test) if n_correct else (None, math.nan)
  everything = ensemble_correct([r for m in members for r in m])
  best = ranked[0]
  table = mcnemar_table(everything, correct[best.label][1])
  seconds = [c.train_seconds for c in ranked]
  return Ensemble(
    members=tuple(c.label for c in ranked),
    seeds=tuple(shared),
    accuracies=tuple(n / num_test for n in n_correct),
    mean=float(np.mean(n_correct)) / num_test if n_correct else math.nan,
    std=std,
    interval=interval,
    all_accuracy=float(everything.mean()),
    all_interval=binomial_interval(int(everything.sum()), num_test),
    runs=sum(len(m) for m in members),
    train_seconds=None if None in seconds else float(sum(seconds)),
    versus=best.label,
    difference=float(everything.mean()) - best.ensemble_accuracy,
    table=tuple(tuple(int(v) for v in row) for row in table),
    pvalue=mcnemar_pvalue(table),
    difference_interval=discordant_interval(table),
    one_per_model=one_per_model,
  )
