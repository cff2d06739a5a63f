"""Which configuration of finished runs is better, with evidence.

:func:`compare_runs` groups runs into configurations (every field of the resolved config
except ``seed`` and implementation fields; runs that differ only in those are seeds of one
configuration) and computes, with :mod:`digits_jax.analysis.stats`:

* per configuration: seeds, mean and standard deviation of test accuracy and a 95% interval
  (Student t over seeds; with one run, the exact binomial interval over the test images);
  the seed ensemble (mean of the seeds' probabilities) with its binomial interval.
* per pair A, B: the difference of mean accuracies with a t interval over seeds, the exact
  McNemar test of each seed pair, and the verdict: the stratified McNemar test over the seed
  pairs (every trained network and every test image), with its variance widened by the
  seed-to-seed dispersion of the pairs, Holm-corrected over all pairs. It answers "does
  training A instead of B give a better network?". The exact McNemar test of the two seed
  ensembles ("do the seed ensembles differ?") stays as its own column, Holm-corrected too.
* the ensemble of the best configurations by validation accuracy
  (:mod:`digits_jax.analysis.ensembles`).

docs/compare.md explains the choice, with a simulation on real run outputs.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from digits_jax.analysis.ensembles import (
  Ensemble,
  accuracy_spread,
  ensemble_correct,
  ensemble_of_best,
  seed_sort_key,
)
from digits_jax.analysis.stats import (
  ALPHA,
  Interval,
  binomial_interval,
  difference_interval,
  discordant_interval,
  holm,
  mcnemar_pvalue,
  mcnemar_table,
  stratified_mcnemar,
)
from digits_jax.config import (
  ADVERSARIAL_FIELDS,
  SHORT_NAMES,
  Config,
  ConfigError,
  own_settings,
  varied_settings,
)
from digits_jax.rundir import (
  EVALUATE_COMMAND,
  FINAL_FIT,
  OUTPUTS_FILE,
  Run,
  RunDirError,
  read_run,
)

log = logging.getLogger(__name__)

A_BETTER, B_BETTER = "A better, per trained network", "B better, per trained network"
NO_DIFFERENCE = "no significant difference"
# The ensemble of configurations averages the best this many, by validation accuracy.
DEFAULT_ENSEMBLE_TOP = 3


class ComparisonError(RunDirError):
  """Runs that cannot be compared; the message names the runs and the fix."""


# --------------------------------------------------------------------------------------------
# The comparison


@dataclasses.dataclass(frozen=True)
class Configuration:
  """The seeds of one configuration and their statistics.

  Attributes:
    label: model, optimizer and the config fields that vary among the compared ones.
    config: the fields that define the configuration.
    runs: the run directories, in seed order.
    seeds: their seeds.
    accuracies: their test accuracies.
    mean: mean test accuracy over seeds.
    std: sample standard deviation over seeds (NaN with one seed).
    interval: t over seeds (two or more) or binomial over test images (one run).
    ensemble_accuracy: accuracy of the mean of the seeds' probabilities.
    ensemble_interval: binomial over test images.
    num_params: from results.json, when there.
    val_accuracy: mean validation accuracy over seeds (results.json; a final fit's validation
      runs'), when there: what an ensemble of configurations is chosen by (never the test).
    seconds_per_epoch: mean training seconds per epoch over seeds, when there.
    train_seconds: mean training seconds of one run over seeds, when there.
  """

  label: str
  config: Mapping[str, Any]
  runs: tuple[Path, ...]
  seeds: tuple[Any, ...]
  accuracies: tuple[float, ...]
  mean: float
  std: float
  interval: Interval
  ensemble_accuracy: float
  ensemble_interval: Interval
  num_params: int | None
  val_accuracy: float | None = None
  seconds_per_epoch: float | None = None
  train_seconds: float | None = None


@dataclasses.dataclass(frozen=True)
class Pair:
  """Configuration A against configuration B (A listed first, by mean accuracy).

  Attributes:
    a, b: the configurations' labels.
    difference: mean accuracy of A minus that of B (over seeds).
    difference_interval: 95% over seeds (paired or Welch t); ``None`` when not applicable.
    seed_pairs: the (seed of A, seed of B) run pairs: the shared seeds, or, with none
      shared, the seeds in sorted order.
    seed_pvalues: exact McNemar p-value of each seed pair, uncorrected.
    network_interval: 95% interval of the mean difference per trained network, dual to the
      stratified test.
    network_table: images only A / only B gets right, summed over the seed pairs.
    dispersion: the seed dispersion factor of the stratified test (>= 1).
    pvalue: p-value of the stratified McNemar test over the seed pairs (the verdict's).
    pvalue_holm: ``pvalue`` Holm-corrected over all pairs.
    verdict: ``"A better, per trained network"``, ``"B better, ..."`` or
      ``"no significant difference"``.
    ensemble_difference: seed-ensemble accuracy of A minus that of B.
    ensemble_interval: 95%, exact conditional on the discordant test images.
    table: McNemar table of the ensembles ``[[both right, A only], [B only, both wrong]]``.
    ensemble_pvalue: exact McNemar p-value of the ensembles.
    ensemble_pvalue_holm: ``ensemble_pvalue`` Holm-corrected over all pairs.
    ensembles_differ: the seed ensembles differ at the 5% level after Holm.
    notes: caveats, e.g. where the ensembles and single networks disagree.
  """

  a: str
  b: str
  difference: float
  difference_interval: Interval | None
  seed_pairs: tuple[tuple[Any, Any], ...]
  seed_pvalues: tuple[float, ...]
  network_interval: Interval
  network_table: tuple[int, int]
  dispersion: float
  pvalue: float
  pvalue_holm: float
  verdict: str
  ensemble_difference: float
  ensemble_interval: Interval
  table: tuple[tuple[int, int], tuple[int, int]]
  ensemble_pvalue: float
  ensemble_pvalue_holm: float
  ensembles_differ: bool
  notes: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Everything :func:`digits_jax.analysis.compare_report.write_comparison` writes.

  Attributes:
    configurations: sorted by mean test accuracy, best first.
    pairs: every pair of configurations, in that order.
    runs: the run directories compared.
    dataset: the runs' dataset.
    num_test: test images.
    test_images_sha256: digest of the shared test images.
    warnings: runs whose stored outputs disagree with their results.json (the comparison
      uses the stored outputs).
    ensemble: the ensemble of the best configurations by validation accuracy, or ``None``
      (fewer than two configurations, or no validation accuracies).
    sources: for each transfer run, its folder (``run``) and its source run's folder,
      configuration and weights' SHA-256 (``path``, ``source``, ``sha256``).
  """

  configurations: tuple[Configuration, ...]
  pairs: tuple[Pair, ...]
  runs: tuple[Path, ...]
  dataset: str
  num_test: int
  test_images_sha256: str
  warnings: tuple[str, ...] = ()
  ensemble: Ensemble | None = None
  sources: tuple[dict[str, Any], ...] = ()


def _listing(runs: Iterable[Run]) -> str:
  return ", ".join(str(r.path) for r in runs)


def _check_comparable(runs: Sequence[Run]) -> None:
  """One dataset, one test set in one order, each configuration and seed once."""
  by_dataset: dict[Any, list[Run]] = {}
  for run in runs:
    by_dataset.setdefault(run.config.get("dataset"), []).append(run)
  if len(by_dataset) > 1:
    groups = "; ".join(f"{d}: {_listing(rs)}" for d, rs in by_dataset.items())
    raise ComparisonError(
      f"the runs use different datasets ({groups}); compare runs of one dataset at a time"
    )
  by_test: dict[Any, list[Run]] = {}
  for run in runs:
    by_test.setdefault(run.outputs.test_set, []).append(run)
  if len(by_test) > 1:
    groups = list(by_test.values())
    first = groups[0][0].outputs
    same_labels = all(
      g[0].outputs.num_examples == first.num_examples
      and np.array_equal(np.sort(g[0].outputs.labels), np.sort(first.labels))
      for g in groups
    )
    kind = (
      "the same labels in a different order" if same_labels else "different test images or labels"
    )
    listing = "; ".join(
      f"{_listing(g)} (images {g[0].outputs.images_sha256[:12]} "
      f"{g[0].outputs.images_dtype}{list(g[0].outputs.images_shape)}, labels "
      f"{g[0].outputs.labels_sha256[:12]})"
      for g in groups
    )
    raise ComparisonError(
      f"the runs were not tested on the same test set in the same order ({kind}): "
      f"{listing}. Compare runs of one test set, or rebuild the outputs of older runs with "
      f"`{EVALUATE_COMMAND.format('RUN')}`"
    )
  seen: dict[tuple, Run] = {}
  for run in runs:
    key = (run.key, json.dumps(run.seed))
    if key in seen:
      raise ComparisonError(
        f"{seen[key].path} and {run.path} are the same configuration with the same seed "
        f"({run.seed}); keep one of them out of the comparison (pass fewer or narrower "
        "--workdir folders)"
      )
    seen[key] = run


def _disagreements(runs: Sequence[Run]) -> list[str]:
  """Runs whose stored test outputs give another accuracy than their results.json.

  Outputs written again on another device or library version may differ by an image or two;
  outputs of another run (a directory trained again) differ more. Either way the comparison
  uses the stored outputs and says so.
  """
  found = []
  for run in runs:
    saved = run.results.get("test_accuracy")
    if saved is not None and abs(run.outputs.accuracy - saved) > 0.5 / run.outputs.num_examples:
      found.append(
        f"{run.path}: {OUTPUTS_FILE} gives test accuracy {100 * run.outputs.accuracy:.2f}%, "
        f"results.json {100 * saved:.2f}%; if the run was trained again, write its outputs "
        f"again with `{EVALUATE_COMMAND.format(run.path)}`"
      )
  for line in found:
    log.warning("%s", line)
  return found


def _format_value(value: Any) -> str:
  if isinstance(value, bool):
    return "on" if value else "off"
  if isinstance(value, float):
    return f"{value:g}"
  return str(value) or "none"  # an empty setting (no --init_from) reads as none


def _own(d: dict[str, Any]) -> dict[str, Any]:
  """:func:`own_settings` of a config dict, or every field where this version cannot read it."""
  try:
    return own_settings(Config.from_dict(d))
  except (ConfigError, TypeError, ValueError):
    return d


def _labels(keys: Sequence[tuple[tuple[str, str], ...]]) -> list[str]:
  """Model and optimizer, plus the fields whose values differ among the configurations
  (an attack's settings only where the configuration sets them: a standard run shows none,
  a one-step attack no step count)."""
  finals = [any(k == FINAL_FIT for k, _ in key) for key in keys]
  dicts = [{k: json.loads(v) for k, v in key if k != FINAL_FIT} for key in keys]
  try:  # settings varied away from the models' recipes (a grid), not the recipes themselves
    varying = varied_settings([Config.from_dict(d) for d in dicts])
  except (ConfigError, TypeError, ValueError):  # a model this version does not register
    names = sorted(set().union(*dicts))
    varying = [
      n
      for n in names
      if n not in ("model", "optimizer")
      and len({json.dumps(d.get(n), sort_keys=True) for d in dicts}) > 1
    ]
  labels = []
  for d in dicts:
    parts = [str(d.get("model", "?")), str(d.get("optimizer", "?"))]
    own = _own(d)
    shown = [n for n in varying if n not in ADVERSARIAL_FIELDS or n in own]
    parts += [f"{SHORT_NAMES.get(n, n)}={_format_value(d.get(n, '-'))}" for n in shown]
    labels.append(" ".join(parts))
  if len(set(labels)) < len(labels):  # values that print alike: show them in full
    labels = [
      " ".join(
        [str(d.get("model")), str(d.get("optimizer"))]
        + [f"{SHORT_NAMES.get(n, n)}={d.get(n, '-')!r}" for n in varying]
      )
      for d in dicts
    ]
  suffixes = [" final fit" if final else "" for final in finals]
  return [label + suffix for label, suffix in zip(labels, suffixes, strict=True)]


def _mean_of(values: Sequence[Any]) -> float | None:
  """The mean of numbers over runs, or ``None`` where a run lacks its number."""
  if any(not isinstance(v, (int, float)) for v in values):
    return None
  return float(np.mean(values))


def compare(
  runs: Sequence[Run], ensemble_top: int = DEFAULT_ENSEMBLE_TOP, one_per_model: bool = False
) -> Comparison:
  """The statistics of the module docstring for already loaded runs.

  Args:
    runs: finished runs of one dataset and test set (each configuration and seed once).
    ensemble_top: how many configurations, the best by mean validation accuracy, the
      ensemble of configurations averages (0: none).
    one_per_model: the ensemble takes only each model's best configuration (by
      validation), so that its members are different networks.

  Returns:
    The comparison; with one configuration it has no pairs, with one seed no seed intervals.

  Raises:
    ComparisonError: no runs, different datasets or test sets, or the same configuration
      and seed twice.
  """
  runs = list(runs)
  if not runs:
    raise ComparisonError("no runs to compare")
  _check_comparable(runs)
  num_test = runs[0].outputs.num_examples
  groups: dict[tuple, list[Run]] = {}
  for run in runs:
    groups.setdefault(run.key, []).append(run)
  keys = list(groups)
  labels = dict(zip(keys, _labels(keys), strict=True))

  configurations, correct, counts, by_label = [], {}, {}, {}
  for key, members in groups.items():
    members = sorted(members, key=lambda r: seed_sort_key(r.seed))
    label = labels[key]
    n_correct = [int(r.outputs.correct.sum()) for r in members]
    accuracies = [c / num_test for c in n_correct]
    interval, std = accuracy_spread(n_correct, num_test)
    ensemble = ensemble_correct(members)
    params = members[0].results.get("num_params")
    configurations.append(
      Configuration(
        label=label,
        config={k: json.loads(v) for k, v in key},
        runs=tuple(r.path for r in members),
        seeds=tuple(r.seed for r in members),
        accuracies=tuple(accuracies),
        mean=float(np.mean(n_correct)) / num_test,
        std=std,
        interval=interval,
        ensemble_accuracy=float(ensemble.mean()),
        ensemble_interval=binomial_interval(int(ensemble.sum()), num_test),
        num_params=None if params is None else int(params),
        val_accuracy=_mean_of([r.val_accuracy for r in members]),
        seconds_per_epoch=_mean_of([r.results.get("seconds_per_epoch") for r in members]),
        train_seconds=_mean_of([r.results.get("train_seconds") for r in members]),
      )
    )
    by_label[label] = members
    correct[label] = ({r.seed: r.outputs.correct for r in members}, ensemble)
    counts[label] = dict(zip((r.seed for r in members), n_correct, strict=True))
  configurations.sort(key=lambda c: (-c.mean, -c.ensemble_accuracy, c.label))

  raw = []
  for ca, cb in itertools.combinations(configurations, 2):
    (seeds_a, ens_a), (seeds_b, ens_b) = correct[ca.label], correct[cb.label]
    shared = sorted(set(seeds_a) & set(seeds_b), key=seed_sort_key)
    seed_pairs = [(s, s) for s in shared] if shared else list(zip(ca.seeds, cb.seeds, strict=False))
    tables = [mcnemar_table(seeds_a[sa], seeds_b[sb]) for sa, sb in seed_pairs]
    seed_p = [mcnemar_pvalue(t) for t in tables]
    table = mcnemar_table(ens_a, ens_b)
    test = stratified_mcnemar(tables, num_test)
    raw.append((ca, cb, seed_pairs, seed_p, test, table, mcnemar_pvalue(table)))
  adjusted = holm([r[4].pvalue for r in raw])
  adjusted_ensemble = holm([r[-1] for r in raw])

  pairs = []
  for (ca, cb, seed_pairs, seed_p, test, table, ens_p), p_holm, ens_p_holm in zip(
    raw, adjusted, adjusted_ensemble, strict=True
  ):
    ens_diff = ca.ensemble_accuracy - cb.ensemble_accuracy
    verdict = NO_DIFFERENCE
    if p_holm < ALPHA and test.difference != 0:
      verdict = A_BETTER if test.difference > 0 else B_BETTER
    ensembles_differ = ens_p_holm < ALPHA
    seed_ci = difference_interval(counts[ca.label], counts[cb.label], num_test)
    notes = []
    if len(seed_pairs) == 1:
      notes.append(
        "one seed pair: compares two trained networks, not their recipes (no seed dispersion)"
      )
    if verdict != NO_DIFFERENCE and not ensembles_differ:
      notes.append("the seed ensembles do not differ significantly")
    elif verdict == NO_DIFFERENCE and ensembles_differ:
      notes.append("the seed ensembles differ, single networks not significantly")
    pairs.append(
      Pair(
        a=ca.label,
        b=cb.label,
        difference=ca.mean - cb.mean,
        difference_interval=seed_ci,
        seed_pairs=tuple(seed_pairs),
        seed_pvalues=tuple(seed_p),
        network_interval=test.interval,
        network_table=(test.a_only, test.b_only),
        dispersion=test.dispersion,
        pvalue=test.pvalue,
        pvalue_holm=p_holm,
        verdict=verdict,
        ensemble_difference=ens_diff,
        ensemble_interval=discordant_interval(table),
        table=tuple(tuple(int(v) for v in row) for row in table),
        ensemble_pvalue=ens_p,
        ensemble_pvalue_holm=ens_p_holm,
        ensembles_differ=ensembles_differ,
        notes=tuple(notes),
      )
    )
  return Comparison(
    configurations=tuple(configurations),
    pairs=tuple(pairs),
    runs=tuple(r.path for r in runs),
    dataset=str(runs[0].config.get("dataset")),
    num_test=num_test,
    test_images_sha256=runs[0].outputs.images_sha256,
    warnings=tuple(_disagreements(runs)),
    ensemble=ensemble_of_best(configurations, by_label, correct, ensemble_top, one_per_model),
    sources=tuple(
      {
        "run": str(r.path),
        "path": str(r.source_run.get("path")),
        "source": r.source,
        "sha256": str(r.source_run.get("sha256")),
      }
      for r in runs
      if r.source_run is not None
    ),
  )


def compare_runs(
  run_dirs: Iterable[str | os.PathLike],
  ensemble_top: int = DEFAULT_ENSEMBLE_TOP,
  one_per_model: bool = False,
) -> Comparison:
  """Loads finished run directories (see :func:`digits_jax.rundir.find_runs`) and compares them.

  Raises:
    ComparisonError: runs without stored test outputs (all named, with the command that
      writes them), or any problem :func:`compare` refuses.
  """
  run_dirs = [Path(d) for d in run_dirs]
  missing = [d for d in run_dirs if not (d / OUTPUTS_FILE).is_file()]
  if missing:
    commands = "; ".join(f"`{EVALUATE_COMMAND.format(d)}`" for d in missing)
    raise ComparisonError(
      f"{len(missing)} of {len(run_dirs)} runs have no {OUTPUTS_FILE} (stored test outputs): "
      f"{', '.join(map(str, missing))}. Write them from each run's checkpoint with: {commands}"
    )
  return compare(
    [read_run(d) for d in run_dirs], ensemble_top=ensemble_top, one_per_model=one_per_model
  )


# --------------------------------------------------------------------------------------------
