"""Statistical comparison of finished runs: which configuration is better, with evidence.

Every finished run keeps its test-set outputs next to ``results.json`` as
``test_outputs.npz`` (:func:`save_test_outputs`): the class probabilities in float16, the
predicted classes, the labels, and SHA-256 digests of the test images and labels, so that two
runs can be checked to have been tested on the same images in the same order.

:func:`compare_runs` groups runs into configurations (every field of the resolved config
except ``seed``, ``fast_ops``, ``eval_batch_size`` and ``epoch_loop``; runs that differ only
in those are seeds of one configuration) and computes, with scipy and statsmodels:

* per configuration: the number of seeds, mean and standard deviation of test accuracy and a
  95% interval. With two or more seeds it is the Student t interval over seeds (clipped to
  [0, 1]): where the mean accuracy of the recipe over training seeds lies, on this test set.
  With one run it is the exact binomial (Clopper-Pearson) interval over the test images:
  where that one network's accuracy on images like these lies.
* the seed ensemble of each configuration (the mean of its seeds' probabilities) and its
  accuracy, with the Clopper-Pearson interval over the test images.
* for every pair of configurations A and B: the difference of mean accuracies (A - B) with a
  95% interval over seeds (paired t on the per-seed differences when both have the same seeds,
  Welch's t otherwise; not applicable with a single seed), the exact McNemar test of each seed
  pair on the shared test images, the exact McNemar test of the two seed ensembles with its
  p-value Holm-corrected for the number of pairs, the ensembles' accuracy difference with an
  exact interval conditional on the images where they disagree (Clopper-Pearson on the
  discordant images, the interval dual to the exact McNemar test), and a verdict.

The verdict ("A better", "B better", "no significant difference") rests on the
Holm-corrected exact McNemar test of the seed ensembles at the 5% level. The test is paired on
the same test images and exact however few images the two disagree on; it uses every seed
(averaging their probabilities removes part of the seed-to-seed noise) and is defined with one
seed as well. The seed t interval needs two seeds at least and, with the 2 to 5 seeds of a
sweep, has 1 to 4 degrees of freedom, which makes it wide and its p-values unstable; it is
shown beside the verdict, with the per-seed McNemar p-values, as the check on whether single
networks agree with the ensembles. What McNemar treats as random is the sample of test images,
not training: a verdict says that these trained networks, averaged over their seeds, differ on
images like the test set. Notes flag the pairs where the interval over seeds disagrees with the
verdict (ensembles can differ less, or more, than single networks), and pairs with one seed
each, whose verdict compares two networks rather than two recipes.

:func:`write_comparison` writes ``compare.md``, ``compare.csv`` (one row per configuration),
``compare_pairs.csv`` (one row per pair), ``compare.json`` (everything, per run included) and
the plots ``compare_forest.png`` and ``compare_pairs.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import logging
import math
import os
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from digits_jax import files
from digits_jax.config import SHORT_NAMES, Config, ConfigError, identity_of, varied_settings

log = logging.getLogger(__name__)

OUTPUTS_FILE = "test_outputs.npz"
OUTPUTS_FORMAT = 1
CONFIDENCE = 0.95
ALPHA = 0.05
A_BETTER, B_BETTER, NO_DIFFERENCE = "A better", "B better", "no significant difference"
EVALUATE_COMMAND = "python -m experiments.evaluate --workdir={}"
DPI = 100
# The ensemble of configurations averages the best this many, by validation accuracy.
DEFAULT_ENSEMBLE_TOP = 3


class ComparisonError(Exception):
  """Runs that cannot be compared; the message names the runs and the fix."""


# --------------------------------------------------------------------------------------------
# Per-run test outputs


@dataclasses.dataclass(frozen=True)
class TestOutputs:
  """A run's predictions on the test set, as ``test_outputs.npz`` stores them.

  Attributes:
    probabilities: ``(N, K)`` float16 class probabilities.
    predictions: ``(N,)`` predicted classes (argmax of the full-precision probabilities, so
      the run's accuracy is exact even where float16 rounding ties two classes).
    labels: ``(N,)`` true classes.
    images_sha256: SHA-256 of the test images' bytes, in the stored order.
    images_dtype: the images' dtype when digested (``"float32"``, ``"uint8"``).
    images_shape: the images' shape when digested.
    labels_sha256: SHA-256 of the labels as little-endian int64, in the stored order.
  """

  __test__ = False  # not a pytest test class despite its name

  probabilities: np.ndarray
  predictions: np.ndarray
  labels: np.ndarray
  images_sha256: str
  images_dtype: str
  images_shape: tuple[int, ...]
  labels_sha256: str

  @property
  def num_examples(self) -> int:
    return int(self.labels.shape[0])

  @property
  def num_classes(self) -> int:
    return int(self.probabilities.shape[1])

  @property
  def correct(self) -> np.ndarray:
    """``(N,)`` bool: which test images the run classified correctly."""
    return self.predictions == self.labels

  @property
  def accuracy(self) -> float:
    return float(np.mean(self.correct))

  @property
  def test_set(self) -> tuple[str, str, tuple[int, ...], str]:
    """What identifies the test set and its order: digests, dtype and shape."""
    return self.images_sha256, self.images_dtype, self.images_shape, self.labels_sha256


def _labels_sha256(labels: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()


def make_test_outputs(probabilities: Any, labels: Any, images: Any) -> TestOutputs:
  """The :class:`TestOutputs` of a run's test predictions, checked.

  Args:
    probabilities: ``(N, K)`` class probabilities (softmax of the logits, not the logits);
      kept as float16, with their argmax kept exactly as the predictions.
    labels: ``(N,)`` integer true classes in ``[0, K)``.
    images: ``(N, ...)`` the test images, uint8 or float32 as the run used them; only their
      SHA-256 digest (of the bytes as given, in the given order), dtype and shape are kept.

  Raises:
    ValueError: shapes that disagree, probabilities that are not probabilities, or labels
      out of range.
  """
  probabilities = np.asarray(probabilities)
  labels = np.asarray(labels)
  images = np.asarray(images)
  if probabilities.ndim != 2 or labels.ndim != 1 or images.ndim < 1:
    raise ValueError(
      f"expected probabilities (N, K), labels (N,) and images (N, ...); got "
      f"shapes {probabilities.shape}, {labels.shape} and {images.shape}"
    )
  n, k = probabilities.shape
  if labels.shape[0] != n or images.shape[0] != n:
    raise ValueError(
      f"{n} rows of probabilities, {labels.shape[0]} labels and "
      f"{images.shape[0]} images: they must be the same test examples"
    )
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
  if n and (labels.min() < 0 or labels.max() >= k):
    raise ValueError(f"labels must lie in [0, {k}), got {labels.min()} to {labels.max()}")
  p = probabilities.astype(np.float64)
  if not np.all(np.isfinite(p)) or (
    n and (p.min() < 0 or p.max() > 1 or np.abs(p.sum(axis=1) - 1).max() > 1e-3)
  ):
    raise ValueError(
      "probabilities must be finite, in [0, 1] and sum to 1 per row: pass the "
      "softmax of the logits, not the logits"
    )
  return TestOutputs(
    probabilities=probabilities.astype(np.float16),
    predictions=probabilities.argmax(axis=1).astype(np.int32),
    labels=labels.astype(np.int32),
    images_sha256=hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest(),
    images_dtype=images.dtype.name,
    images_shape=tuple(int(s) for s in images.shape),
    labels_sha256=_labels_sha256(labels),
  )


def save_test_outputs(
  run_dir: str | os.PathLike, probabilities: Any, labels: Any, images: Any
) -> Path:
  """Writes ``run_dir/test_outputs.npz`` atomically: what the comparison of runs reads.

  Args:
    run_dir: the run's work directory.
    probabilities: ``(N, K)`` class probabilities (softmax of the logits, not the logits);
      stored as float16, with their argmax stored exactly as the predictions.
    labels: ``(N,)`` integer true classes in ``[0, K)``.
    images: ``(N, ...)`` the test images, uint8 or float32 as the run used them; only their
      SHA-256 digest (of the bytes as given, in the given order), dtype and shape are stored.

  Returns:
    The path written.

  Raises:
    ValueError: see :func:`make_test_outputs`.
  """
  outputs = make_test_outputs(probabilities, labels, images)
  buffer = io.BytesIO()
  np.savez_compressed(
    buffer,
    format=np.int64(OUTPUTS_FORMAT),
    probabilities=outputs.probabilities,
    predictions=outputs.predictions,
    labels=outputs.labels,
    images_sha256=np.str_(outputs.images_sha256),
    images_dtype=np.str_(outputs.images_dtype),
    images_shape=np.asarray(outputs.images_shape, np.int64),
    labels_sha256=np.str_(outputs.labels_sha256),
  )
  path = Path(run_dir) / OUTPUTS_FILE
  files.write_bytes(path, buffer.getvalue())
  return path


def load_test_outputs(run_dir: str | os.PathLike) -> TestOutputs:
  """Reads ``run_dir/test_outputs.npz`` (no pickles) and checks it is whole.

  Raises:
    ComparisonError: the file is missing, unreadable, or inconsistent; the message gives
      the command that writes it again.
  """
  run_dir = Path(run_dir)
  path = run_dir / OUTPUTS_FILE
  fix = f"write it again with `{EVALUATE_COMMAND.format(run_dir)}`"
  if not path.is_file():
    raise ComparisonError(f"{run_dir} has no {OUTPUTS_FILE} (stored test outputs); {fix}")
  try:
    with np.load(path, allow_pickle=False) as npz:
      fields = {name: npz[name] for name in npz.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
    raise ComparisonError(f"{path} cannot be read ({e}); {fix}") from e
  missing = sorted(
    {
      "format",
      "probabilities",
      "predictions",
      "labels",
      "images_sha256",
      "images_dtype",
      "images_shape",
      "labels_sha256",
    }
    - set(fields)
  )
  if missing:
    raise ComparisonError(f"{path} lacks {', '.join(missing)}; {fix}")
  if int(fields["format"]) != OUTPUTS_FORMAT:
    raise ComparisonError(
      f"{path} has format {int(fields['format'])}, this version reads "
      f"format {OUTPUTS_FORMAT}; {fix}"
    )
  outputs = TestOutputs(
    probabilities=fields["probabilities"],
    predictions=fields["predictions"],
    labels=fields["labels"],
    images_sha256=str(fields["images_sha256"]),
    images_dtype=str(fields["images_dtype"]),
    images_shape=tuple(int(s) for s in fields["images_shape"]),
    labels_sha256=str(fields["labels_sha256"]),
  )
  n = outputs.labels.shape[0] if outputs.labels.ndim == 1 else -1
  if (
    outputs.probabilities.ndim != 2
    or outputs.probabilities.shape[0] != n
    or outputs.predictions.shape != (n,)
    or outputs.images_shape[:1] != (n,)
    or _labels_sha256(outputs.labels) != outputs.labels_sha256
  ):
    raise ComparisonError(f"{path} is inconsistent (its shapes or label digest disagree); {fix}")
  return outputs


# --------------------------------------------------------------------------------------------
# Runs


@dataclasses.dataclass(frozen=True)
class Run:
  """One finished run: its directory, resolved config, results and test outputs."""

  path: Path
  config: Mapping[str, Any]
  results: Mapping[str, Any]
  outputs: TestOutputs

  @property
  def seed(self) -> Any:
    return self.config.get("seed", self.results.get("seed"))

  @property
  def key(self) -> tuple[tuple[str, str], ...]:
    """The fields that define the run's configuration: its identity without the seed.

    (:meth:`digits_jax.config.Config.identity`: implementation fields are left out, and a
    config.json of an earlier version reads as it would be written now.)
    """
    identity = identity_of(self.config)
    return tuple(
      sorted((k, json.dumps(v, sort_keys=True)) for k, v in identity.items() if k != "seed")
    )


def find_runs(paths: Iterable[str | os.PathLike]) -> list[Path]:
  """The finished run directories (with config.json and results.json) under ``paths``.

  Each path may be a run directory or any folder above run directories (a sweep, a folder
  of sweeps); folders are searched recursively, not below a run directory. Directories with
  a config.json but no results.json (runs still training or interrupted) are skipped with a
  warning.

  Args:
    paths: folders to search.

  Returns:
    The run directories, each once (however it was reached), sorted; as found under the
    given paths, so relative paths stay relative in what the comparison writes.

  Raises:
    ComparisonError: a path is not a folder, or no finished run was found.
  """
  paths = [Path(p) for p in paths]
  found: dict[Path, Path] = {}  # resolved path -> the path as found
  for root in paths:
    if not root.is_dir():
      raise ComparisonError(
        f"{root} is not a folder; pass a run directory or a folder of runs (a sweep's --workdir)"
      )
    for directory, subdirs, names in os.walk(root):
      directory = Path(directory)
      if "config.json" in names and "results.json" in names:
        found.setdefault(directory.resolve(), directory)
        subdirs.clear()
      elif "config.json" in names:
        log.warning("%s: no results.json (the run has not finished); left out", directory)
        subdirs.clear()
      else:
        subdirs.sort()
  if not found:
    raise ComparisonError(
      f"no finished runs under {', '.join(map(str, paths))}: a run directory holds "
      "config.json and results.json, as experiments.train and experiments.sweep write them"
    )
  return sorted(found.values())


def read_run(run_dir: str | os.PathLike) -> Run:
  """Reads a finished run's config.json, results.json and test_outputs.npz.

  Raises:
    ComparisonError: a file is missing or unreadable.
  """
  run_dir = Path(run_dir)
  try:
    saved = files.read_json(run_dir / "config.json")
    results = files.read_json(run_dir / "results.json")
  except (OSError, ValueError) as e:
    raise ComparisonError(f"{run_dir} is not a finished run directory ({e})") from e
  if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
    raise ComparisonError(f"{run_dir / 'config.json'} has no 'config' entry: not a run's config")
  try:
    identity_of(saved["config"])
  except (ConfigError, TypeError) as e:
    raise ComparisonError(
      f"{run_dir / 'config.json'} holds no config this version can read ({e})"
    ) from e
  return Run(run_dir, saved["config"], results, load_test_outputs(run_dir))


# --------------------------------------------------------------------------------------------
# Statistics (scipy and statsmodels do the arithmetic)


@dataclasses.dataclass(frozen=True)
class Interval:
  """A 95% confidence interval and how it was computed."""

  low: float
  high: float
  method: str


def binomial_interval(successes: int, trials: int) -> Interval:
  """Exact (Clopper-Pearson) 95% interval of a proportion: accuracy over test images."""
  ci = stats.binomtest(int(successes), int(trials)).proportion_ci(CONFIDENCE, method="exact")
  return Interval(float(ci.low), float(ci.high), f"binomial over {trials:,} test images")


def seed_interval(values: Sequence[float]) -> Interval:
  """Student t 95% interval of the mean of ``values`` (two or more), e.g. accuracies.

  Identical values give the zero-width interval at their mean.
  """
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
  return float(mcnemar(np.asarray(table), exact=True).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
  """Holm-adjusted p-values (statsmodels ``multipletests``), in the given order."""
  if not len(pvalues):
    return []
  return [float(p) for p in multipletests(list(pvalues), alpha=ALPHA, method="holm")[1]]


def discordant_interval(table: np.ndarray) -> Interval:
  """95% interval of accuracy A minus accuracy B on paired outcomes.

  Exact conditional on the ``m`` test images where A and B disagree: the Clopper-Pearson
  interval of the share of them that A gets right, mapped to ``m (2 share - 1) / N``. It is
  the interval dual to the exact McNemar test (0 lies outside it where p < 0.05).
  """
  table = np.asarray(table)
  n = int(table.sum())
  a_only, b_only = int(table[0, 1]), int(table[1, 0])
  m = a_only + b_only
  method = "exact, conditional on the images where they disagree"
  if m == 0:
    return Interval(0.0, 0.0, method)
  ci = stats.binomtest(a_only, m).proportion_ci(CONFIDENCE, method="exact")
  return Interval(m * (2 * ci.low - 1) / n, m * (2 * ci.high - 1) / n, method)


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
    val_accuracy: mean validation accuracy over seeds (results.json), when there: what an
      ensemble of configurations is chosen by (never the test accuracy).
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


@dataclasses.dataclass(frozen=True)
class Pair:
  """Configuration A against configuration B (A listed first, by mean accuracy).

  Attributes:
    a, b: the configurations' labels.
    difference: mean accuracy of A minus that of B (over seeds).
    difference_interval: 95% over seeds (paired or Welch t); ``None`` when not applicable.
    seed_pairs: the (seed of A, seed of B) run pairs tested with McNemar: the shared seeds,
      or, with none shared, the seeds in sorted order.
    seed_pvalues: exact McNemar p-value of each seed pair, uncorrected.
    ensemble_difference: ensemble accuracy of A minus that of B.
    ensemble_interval: 95%, exact conditional on the discordant test images.
    table: McNemar table of the ensembles ``[[both right, A only], [B only, both wrong]]``.
    pvalue: exact McNemar p-value of the ensembles.
    pvalue_holm: ``pvalue`` Holm-corrected over all pairs.
    verdict: ``"A better"``, ``"B better"`` or ``"no significant difference"``.
    notes: caveats, e.g. where the seed interval disagrees with the verdict.
  """

  a: str
  b: str
  difference: float
  difference_interval: Interval | None
  seed_pairs: tuple[tuple[Any, Any], ...]
  seed_pvalues: tuple[float, ...]
  ensemble_difference: float
  ensemble_interval: Interval
  table: tuple[tuple[int, int], tuple[int, int]]
  pvalue: float
  pvalue_holm: float
  verdict: str
  notes: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Everything :func:`write_comparison` writes.

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
  """

  configurations: tuple[Configuration, ...]
  pairs: tuple[Pair, ...]
  runs: tuple[Path, ...]
  dataset: str
  num_test: int
  test_images_sha256: str
  warnings: tuple[str, ...] = ()
  ensemble: Ensemble | None = None


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
  return str(value)


def _labels(keys: Sequence[tuple[tuple[str, str], ...]]) -> list[str]:
  """Model and optimizer, plus the fields whose values differ among the configurations."""
  dicts = [{k: json.loads(v) for k, v in key} for key in keys]
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
    parts += [f"{SHORT_NAMES.get(n, n)}={_format_value(d.get(n, '-'))}" for n in varying]
    labels.append(" ".join(parts))
  if len(set(labels)) < len(labels):  # values that print alike: show them in full
    labels = [
      " ".join(
        [str(d.get("model")), str(d.get("optimizer"))]
        + [f"{SHORT_NAMES.get(n, n)}={d.get(n, '-')!r}" for n in varying]
      )
      for d in dicts
    ]
  return labels


def _seed_sort_key(seed: Any) -> tuple[int, Any]:
  return (0, seed) if isinstance(seed, (int, float)) else (1, str(seed))


def _ensemble_correct(runs: Sequence[Run]) -> np.ndarray:
  """Which test images the mean of the runs' probabilities classifies correctly."""
  if len(runs) == 1:
    return runs[0].outputs.correct
  mean = np.mean([r.outputs.probabilities.astype(np.float32) for r in runs], axis=0)
  return mean.argmax(axis=1) == runs[0].outputs.labels


def _spread(n_correct: Sequence[int], num_test: int) -> tuple[Interval, float]:
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


def _mean_of(members: Sequence[Run], field: str) -> float | None:
  """The mean of a results.json number over runs, or ``None`` where a run lacks it."""
  values = [r.results.get(field) for r in members]
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
    members = sorted(members, key=lambda r: _seed_sort_key(r.seed))
    label = labels[key]
    n_correct = [int(r.outputs.correct.sum()) for r in members]
    accuracies = [c / num_test for c in n_correct]
    interval, std = _spread(n_correct, num_test)
    ensemble = _ensemble_correct(members)
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
        val_accuracy=_mean_of(members, "val_accuracy"),
        seconds_per_epoch=_mean_of(members, "seconds_per_epoch"),
        train_seconds=_mean_of(members, "train_seconds"),
      )
    )
    by_label[label] = members
    correct[label] = ({r.seed: r.outputs.correct for r in members}, ensemble)
    counts[label] = dict(zip((r.seed for r in members), n_correct, strict=True))
  configurations.sort(key=lambda c: (-c.mean, -c.ensemble_accuracy, c.label))

  raw = []
  for ca, cb in itertools.combinations(configurations, 2):
    (seeds_a, ens_a), (seeds_b, ens_b) = correct[ca.label], correct[cb.label]
    shared = sorted(set(seeds_a) & set(seeds_b), key=_seed_sort_key)
    seed_pairs = [(s, s) for s in shared] if shared else list(zip(ca.seeds, cb.seeds, strict=False))
    seed_p = [mcnemar_pvalue(mcnemar_table(seeds_a[sa], seeds_b[sb])) for sa, sb in seed_pairs]
    table = mcnemar_table(ens_a, ens_b)
    raw.append((ca, cb, seed_pairs, seed_p, table, mcnemar_pvalue(table)))
  adjusted = holm([r[-1] for r in raw])

  pairs = []
  for (ca, cb, seed_pairs, seed_p, table, p), p_holm in zip(raw, adjusted, strict=True):
    ens_diff = ca.ensemble_accuracy - cb.ensemble_accuracy
    verdict = NO_DIFFERENCE
    if p_holm < ALPHA:
      verdict = A_BETTER if ens_diff > 0 else B_BETTER
    seed_ci = difference_interval(counts[ca.label], counts[cb.label], num_test)
    notes = []
    if len(ca.seeds) == 1 and len(cb.seeds) == 1:
      notes.append("one seed each: compares two trained networks, not their recipes")
    elif seed_ci is None:
      notes.append("one seed on one side: no interval over seeds")
    if seed_ci is not None:
      includes_zero = seed_ci.low <= 0 <= seed_ci.high
      if verdict == NO_DIFFERENCE and not includes_zero:
        notes.append(
          "the interval over seeds excludes 0: single networks differ more than their ensembles"
        )
      elif verdict != NO_DIFFERENCE and includes_zero:
        notes.append("the interval over seeds includes 0")
      elif verdict != NO_DIFFERENCE and (seed_ci.low > 0) != (verdict == A_BETTER):
        notes.append("the interval over seeds points the other way")
    pairs.append(
      Pair(
        a=ca.label,
        b=cb.label,
        difference=ca.mean - cb.mean,
        difference_interval=seed_ci,
        seed_pairs=tuple(seed_pairs),
        seed_pvalues=tuple(seed_p),
        ensemble_difference=ens_diff,
        ensemble_interval=discordant_interval(table),
        table=tuple(tuple(int(v) for v in row) for row in table),
        pvalue=p,
        pvalue_holm=p_holm,
        verdict=verdict,
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
  )


def ensemble_of_best(
  configurations: Sequence[Configuration],
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
    configurations: the compared configurations.
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
  shared = sorted(set.intersection(*({r.seed for r in m} for m in members)), key=_seed_sort_key)
  n_correct = []
  for seed in shared:
    at_seed = [next(r for r in m if r.seed == seed) for m in members]
    n_correct.append(int(_ensemble_correct(at_seed).sum()))
  interval, std = _spread(n_correct, num_test) if n_correct else (None, math.nan)
  everything = _ensemble_correct([r for m in members for r in m])
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


def compare_runs(
  run_dirs: Iterable[str | os.PathLike],
  ensemble_top: int = DEFAULT_ENSEMBLE_TOP,
  one_per_model: bool = False,
) -> Comparison:
  """Loads finished run directories (see :func:`find_runs`) and compares them.

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
# Tables


def _pct(x: float | None) -> str:
  return "-" if x is None or math.isnan(x) else f"{100 * x:.2f}%"


def _pp(x: float) -> str:
  return f"{100 * x:+.2f}"


def _interval(iv: Interval | None, points: bool = False) -> str:
  if iv is None:
    return "n/a"
  fmt = _pp if points else (lambda v: f"{100 * v:.2f}")
  return f"[{fmt(iv.low)}, {fmt(iv.high)}]"


def _seconds(x: float | None) -> str:
  return "-" if x is None else f"{x:,.0f}" if x >= 10 else f"{x:.1f}"


def ensemble_markdown(ensemble: Ensemble | None) -> list[str]:
  """The section of ``compare.md`` on the ensemble of the best configurations (or nothing)."""
  e = ensemble
  if e is None:
    return []
  table = e.table
  per_seed = (
    ", ".join(f"{_pct(a)} ({s})" for s, a in zip(e.seeds, e.accuracies, strict=True))
    or "no seed shared by every member"
  )
  interval = "n/a" if e.interval is None else f"{_interval(e.interval)} ({e.interval.method})"
  cost = "-" if e.train_seconds is None else f"{e.train_seconds:,.0f} s of training per seed"
  chosen = (
    f"the best configuration of each of the {len(e.members)} best models"
    if e.one_per_model
    else f"the {len(e.members)} best configurations"
  )
  return [
    "",
    f"## Ensemble of {chosen} by validation accuracy",
    "",
    f"Members (chosen on the validation split, never the test set): {', '.join(e.members)}.",
    "",
    "| ensemble | seeds | mean test accuracy | std | 95% interval | all runs averaged "
    "| 95% interval (binomial) | cost |",
    "|---|---|---|---|---|---|---|---|",
    f"| one network of each member per seed | {per_seed} | {_pct(e.mean)} | {_pct(e.std)} | "
    f"{interval} | {_pct(e.all_accuracy)} ({e.runs} runs) | {_interval(e.all_interval)} | "
    f"{cost} |",
    "",
    f"All {e.runs} runs averaged against the seed ensemble of {e.versus} (the best member "
    f"by validation): {table[0][1]} test images only the ensemble gets right, {table[1][0]} "
    f"only {e.versus}; difference {_pp(e.difference)} pp "
    f"{_interval(e.difference_interval, points=True)}, exact McNemar p = {_p(e.pvalue)} "
    "(one test, not part of the Holm correction below).",
  ]


def _p(p: float) -> str:
  if p == 0:  # below the smallest float
    return "<1e-300"
  return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _seed_p(pair: Pair) -> str:
  if not pair.seed_pvalues:
    return "n/a"
  return ", ".join(
    f"{_p(p)} ({sa})" if sa == sb else f"{_p(p)} ({sa}/{sb})"
    for (sa, sb), p in zip(pair.seed_pairs, pair.seed_pvalues, strict=True)
  )


CONFIG_COLUMNS = (
  "configuration",
  "seeds",
  "n",
  "mean_accuracy",
  "std",
  "ci_low",
  "ci_high",
  "ci_method",
  "ensemble_accuracy",
  "ensemble_ci_low",
  "ensemble_ci_high",
  "params",
  "val_accuracy",
  "seconds_per_epoch",
  "train_seconds",
  "runs",
)
PAIR_COLUMNS = (
  "a",
  "b",
  "difference",
  "difference_ci_low",
  "difference_ci_high",
  "difference_ci_method",
  "seed_pairs",
  "seed_mcnemar_p",
  "ensemble_difference",
  "ensemble_ci_low",
  "ensemble_ci_high",
  "a_only_right",
  "b_only_right",
  "mcnemar_p",
  "mcnemar_p_holm",
  "verdict",
  "notes",
)


def configuration_rows(comparison: Comparison) -> list[dict[str, Any]]:
  """One dict per configuration with the columns of ``compare.csv`` (accuracies as fractions)."""
  return [
    {
      "configuration": c.label,
      "seeds": " ".join(map(str, c.seeds)),
      "n": len(c.seeds),
      "mean_accuracy": c.mean,
      "std": c.std,
      "ci_low": c.interval.low,
      "ci_high": c.interval.high,
      "ci_method": c.interval.method,
      "ensemble_accuracy": c.ensemble_accuracy,
      "ensemble_ci_low": c.ensemble_interval.low,
      "ensemble_ci_high": c.ensemble_interval.high,
      "params": c.num_params,
      "val_accuracy": c.val_accuracy,
      "seconds_per_epoch": c.seconds_per_epoch,
      "train_seconds": c.train_seconds,
      "runs": " ".join(map(str, c.runs)),
    }
    for c in comparison.configurations
  ]


def pair_rows(comparison: Comparison) -> list[dict[str, Any]]:
  """One dict per pair with the columns of ``compare_pairs.csv``."""
  rows = []
  for p in comparison.pairs:
    iv = p.difference_interval
    rows.append(
      {
        "a": p.a,
        "b": p.b,
        "difference": p.difference,
        "difference_ci_low": None if iv is None else iv.low,
        "difference_ci_high": None if iv is None else iv.high,
        "difference_ci_method": "not applicable" if iv is None else iv.method,
        "seed_pairs": " ".join(f"{sa}/{sb}" for sa, sb in p.seed_pairs),
        "seed_mcnemar_p": " ".join(repr(v) for v in p.seed_pvalues),
        "ensemble_difference": p.ensemble_difference,
        "ensemble_ci_low": p.ensemble_interval.low,
        "ensemble_ci_high": p.ensemble_interval.high,
        "a_only_right": p.table[0][1],
        "b_only_right": p.table[1][0],
        "mcnemar_p": p.pvalue,
        "mcnemar_p_holm": p.pvalue_holm,
        "verdict": p.verdict,
        "notes": "; ".join(p.notes),
      }
    )
  return rows


def headline(comparison: Comparison) -> str:
  """The verdicts that found a difference, one line per pair (or a line saying there are none)."""
  found = [p for p in comparison.pairs if p.verdict != NO_DIFFERENCE]
  if not found:
    return "no pair of configurations differs significantly (compare.md has the tests)"
  return "\n".join(
    f"{p.a} vs {p.b}: {p.verdict} (Holm-corrected McNemar p = {p.pvalue_holm:.2g})" for p in found
  )


def _csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  return out.getvalue()


def to_markdown(comparison: Comparison) -> str:
  """``compare.md``: the two tables, how to read them, and the plots."""
  c = comparison
  n_configs, n_pairs = len(c.configurations), len(c.pairs)
  lines = [
    f"# Comparison of {n_configs} configuration{'s' * (n_configs != 1)} "
    f"({len(c.runs)} run{'s' * (len(c.runs) != 1)})",
    "",
    f"Dataset {c.dataset}; every run was tested on the same {c.num_test:,} test images in "
    f"the same order (images SHA-256 {c.test_images_sha256[:16]}...). Intervals are 95%; "
    "accuracies in percent, differences in percentage points (pp).",
    "",
    *(f"**Warning:** {w}.\n" for w in c.warnings),
    "## Configurations",
    "",
    "| configuration | seeds | mean test accuracy | std | 95% interval | interval over "
    "| seed ensemble | 95% interval (binomial) | params | validation accuracy "
    "| s/epoch | s/run |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for cf in c.configurations:
    ensemble = "single run" if len(cf.seeds) == 1 else _pct(cf.ensemble_accuracy)
    ens_iv = "(as left)" if len(cf.seeds) == 1 else _interval(cf.ensemble_interval)
    params = "-" if cf.num_params is None else f"{cf.num_params:,}"
    lines.append(
      f"| {cf.label} | {len(cf.seeds)} ({', '.join(map(str, cf.seeds))}) | "
      f"{_pct(cf.mean)} | {_pct(cf.std)} | {_interval(cf.interval)} | "
      f"{cf.interval.method} | {ensemble} | {ens_iv} | {params} | {_pct(cf.val_accuracy)} | "
      f"{_seconds(cf.seconds_per_epoch)} | {_seconds(cf.train_seconds)} |"
    )
  lines += ensemble_markdown(c.ensemble)
  lines += ["", "## Pairs", ""]
  if not n_pairs:
    lines.append("Only one configuration: the pairwise tests are not applicable.")
  else:
    lines += [
      f"{n_pairs} pair{'s' * (n_pairs != 1)}; A is the configuration with the higher mean "
      f"accuracy. The verdict rests on the exact McNemar test of the two seed ensembles, "
      f"Holm-corrected for {n_pairs} pair{'s' * (n_pairs != 1)}, at the 5% level.",
      "",
      "| A | B | mean A - B (pp) | 95% interval over seeds | per-seed McNemar p (seed) "
      "| ensemble A - B (pp) | 95% interval (test images) | images only A / only B gets "
      "right | McNemar p | Holm p | verdict | notes |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in c.pairs:
      iv = p.difference_interval
      seed_iv = "n/a" if iv is None else f"{_interval(iv, points=True)} ({iv.method})"
      lines.append(
        f"| {p.a} | {p.b} | {_pp(p.difference)} | {seed_iv} | {_seed_p(p)} | "
        f"{_pp(p.ensemble_difference)} | {_interval(p.ensemble_interval, points=True)} | "
        f"{p.table[0][1]} / {p.table[1][0]} | {_p(p.pvalue)} | {_p(p.pvalue_holm)} | "
        f"**{p.verdict}** | {'; '.join(p.notes) or '-'} |"
      )
  lines += [
    "",
    "## How to read this",
    "",
    "- **Interval of a configuration.** With two or more seeds: Student t over the seeds' "
    "accuracies (clipped to 0-100%), where the configuration's mean accuracy over training "
    "seeds lies, on this test set. With one run: the exact binomial (Clopper-Pearson) "
    "interval over the test images, where that network's accuracy on images like these "
    "lies; it says nothing of other seeds.",
    "- **Seed ensemble.** The mean of the seeds' class probabilities, classified by its "
    "largest; its interval is binomial over the test images.",
    "- **Mean A - B.** Single networks: interval over seeds, paired t on the per-seed "
    "differences when both configurations have the same seeds, Welch's t otherwise; n/a "
    "with one seed on a side.",
    "- **Ensemble of configurations.** The configurations with the best mean validation "
    "accuracy, averaged: per seed (their networks of that seed), with the t interval over "
    "seeds, and all their runs together, with the binomial interval over the test images.",
    "- **Per-seed McNemar.** Exact McNemar test of each seed's two networks on the same "
    "images (uncorrected): do the seeds agree?",
    "- **Verdict.** Exact McNemar test of the two seed ensembles, Holm-corrected over all "
    "pairs: paired on the same images, exact however few images the ensembles disagree on, "
    "using every seed, and defined with one seed (where the t interval is not). Its interval "
    "is exact, conditional on the images where the ensembles disagree. It treats the test "
    "images as the random sample, not the training seeds, and compares ensembles, not "
    "single networks; the notes flag pairs where the interval over seeds disagrees with "
    "the verdict, and pairs with one seed each, whose verdict compares two trained "
    "networks rather than their recipes.",
    "",
    "![accuracy per configuration](compare_forest.png)",
    "",
    "![pairwise differences](compare_pairs.png)",
    "",
  ]
  return "\n".join(lines)


def _jsonable(obj: Any) -> Any:
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  if isinstance(obj, Path):
    return str(obj)
  if isinstance(obj, Mapping):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  return obj


def to_json(comparison: Comparison) -> dict[str, Any]:
  """The whole comparison as plain JSON types (NaN as null)."""
  return _jsonable(dataclasses.asdict(comparison) | {"alpha": ALPHA, "confidence": CONFIDENCE})


# --------------------------------------------------------------------------------------------
# Plots


def _figure(width: int, height: int) -> Figure:
  fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def _save(fig: Figure, path: Path) -> Path:
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=DPI)
  files.write_bytes(path, buffer.getvalue())
  return path


def plot_forest(comparison: Comparison, path: str | os.PathLike) -> Path:
  """Forest plot: each configuration's accuracy with its 95% interval, ensembles marked.

  One row per configuration, best at the top: the mean over seeds with its t interval (a
  circle; a square for a single run, with its binomial interval), a dot per seed, and the
  seed ensemble (a diamond) with its binomial interval just below.
  """
  configs = comparison.configurations
  fig = _figure(1100, max(360, 170 + 70 * len(configs)))
  ax = fig.add_subplot()
  shown: set[str] = set()

  def once(label: str) -> str:
    if label in shown:
      return "_nolegend_"
    shown.add(label)
    return label

  for row, cf in enumerate(configs):
    y = len(configs) - 1 - row
    err = [[100 * (cf.mean - cf.interval.low)], [100 * (cf.interval.high - cf.mean)]]
    if len(cf.seeds) >= 2:
      ax.errorbar(
        100 * cf.mean,
        y + 0.12,
        xerr=err,
        fmt="o",
        color="tab:blue",
        capsize=4,
        markersize=7,
        label=once("mean over seeds, 95% t interval"),
      )
      ax.scatter(
        100 * np.asarray(cf.accuracies),
        np.full(len(cf.seeds), y + 0.12),
        s=14,
        color="black",
        alpha=0.6,
        zorder=3,
        label=once("single seeds"),
      )
      ens_err = [
        [100 * (cf.ensemble_accuracy - cf.ensemble_interval.low)],
        [100 * (cf.ensemble_interval.high - cf.ensemble_accuracy)],
      ]
      ax.errorbar(
        100 * cf.ensemble_accuracy,
        y - 0.18,
        xerr=ens_err,
        fmt="D",
        color="tab:orange",
        capsize=4,
        markersize=7,
        label=once("seed ensemble, 95% binomial interval"),
      )
    else:
      ax.errorbar(
        100 * cf.mean,
        y,
        xerr=err,
        fmt="s",
        color="tab:green",
        capsize=4,
        markersize=7,
        label=once("single run, 95% binomial interval"),
      )
  ax.set_yticks(
    range(len(configs)),
    [f"{cf.label}\n({len(cf.seeds)} seed{'s' * (len(cf.seeds) != 1)})" for cf in reversed(configs)],
  )
  ax.set_ylim(-0.7, len(configs) - 0.3)
  ax.set_xlabel("test accuracy (%)")
  ax.grid(alpha=0.3, axis="x")
  ax.legend(loc="lower right", fontsize=9)
  ax.set_title(
    f"Test accuracy per configuration ({comparison.dataset}, {comparison.num_test:,} test images)"
  )
  return _save(fig, Path(path))


def plot_pairs(comparison: Comparison, path: str | os.PathLike) -> Path:
  """Pairwise matrix: seed-ensemble accuracy of the row minus the column, in pp.

  Cells where the Holm-corrected exact McNemar test is significant are outlined and starred.
  """
  configs = comparison.configurations
  k = len(configs)
  fig = _figure(max(700, 420 + 110 * k), max(520, 300 + 80 * k))
  ax = fig.add_subplot()
  title = "Seed-ensemble accuracy, row minus column (pp)"
  if not comparison.pairs:
    ax.axis("off")
    ax.text(
      0.5,
      0.5,
      f"One configuration ({configs[0].label}):\nno pairs to compare",
      ha="center",
      va="center",
      fontsize=16,
      transform=ax.transAxes,
    )
    ax.set_title(title)
    return _save(fig, Path(path))
  index = {cf.label: i for i, cf in enumerate(configs)}
  diff = np.full((k, k), np.nan)
  significant = np.zeros((k, k), bool)
  for p in comparison.pairs:
    i, j = index[p.a], index[p.b]
    diff[i, j], diff[j, i] = 100 * p.ensemble_difference, -100 * p.ensemble_difference
    significant[i, j] = significant[j, i] = p.verdict != NO_DIFFERENCE
  bound = max(float(np.nanmax(np.abs(diff))), 0.01)
  norm = colors.TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound)
  image = ax.imshow(np.ma.masked_invalid(diff), cmap="RdBu", norm=norm)
  fig.colorbar(image, ax=ax, label="row minus column (percentage points)", shrink=0.9)
  for i in range(k):
    for j in range(k):
      if i == j:
        ax.text(j, i, "-", ha="center", va="center", color="gray")
        continue
      text = f"{diff[i, j]:+.2f}" + ("*" if significant[i, j] else "")
      ax.text(
        j,
        i,
        text,
        ha="center",
        va="center",
        fontsize=10,
        fontweight="bold" if significant[i, j] else "normal",
        color="white" if abs(norm(diff[i, j]) - 0.5) > 0.35 else "black",
      )
      if significant[i, j]:
        ax.add_patch(_cell_outline(i, j))
  names = [cf.label for cf in configs]
  ax.set_xticks(range(k), names, rotation=30, ha="right")
  ax.set_yticks(range(k), names)
  ax.set_xlabel("column configuration")
  ax.set_ylabel("row configuration")
  ax.set_title(
    f"{title}\n* and outline: Holm-corrected exact McNemar p < {ALPHA:g} "
    f"({len(comparison.pairs)} pairs)"
  )
  return _save(fig, Path(path))


def _cell_outline(i: int, j: int):
  from matplotlib.patches import Rectangle

  return Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2.5)


def write_comparison(comparison: Comparison, output_dir: str | os.PathLike) -> str:
  """Writes the comparison's files into ``output_dir`` (each atomically).

  Files: ``compare.md``, ``compare.csv`` (configurations), ``compare_pairs.csv`` (pairs),
  ``compare.json`` (everything, per run included), ``compare_forest.png`` and
  ``compare_pairs.png``.

  Returns:
    The Markdown of ``compare.md``.
  """
  output_dir = Path(output_dir)
  markdown = to_markdown(comparison)
  files.write_text(output_dir / "compare.csv", _csv(configuration_rows(comparison), CONFIG_COLUMNS))
  files.write_text(output_dir / "compare_pairs.csv", _csv(pair_rows(comparison), PAIR_COLUMNS))
  files.write_json(output_dir / "compare.json", to_json(comparison))
  plot_forest(comparison, output_dir / "compare_forest.png")
  plot_pairs(comparison, output_dir / "compare_pairs.png")
  files.write_text(output_dir / "compare.md", markdown)
  return markdown
