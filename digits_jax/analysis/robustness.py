"""Which configuration holds up better: the comparison's statistics on every robustness axis.

For the configurations of a :class:`digits_jax.analysis.comparison.Comparison` whose runs all
have a finished robustness evaluation (:mod:`digits_jax.robustness.store`):

* per configuration and metric (clean accuracy, mean corruption accuracy, each corruption,
  FGSM and PGD accuracy at each eps, ECE before and after temperature scaling, NLL, Brier,
  parameters, FLOPs, throughput, latency): the mean over seeds and its 95% interval
  (Student t over seeds; none with one seed), and the worst corruption (lowest mean);
* per pair and axis: the verdict per trained network, the stratified McNemar test over the
  seed pairs on the shared corrupted or attacked images (the same test as the clean
  comparison's, :func:`digits_jax.analysis.stats.stratified_mcnemar`), Holm-corrected within
  the axis. The axes: mean corruption accuracy (every image under every corruption, pooled),
  each corruption (Holm over pairs and corruptions together), FGSM and PGD at each eps.
* the learning curve: configurations that differ only in ``train_subset``, accuracy against
  the number of training images.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from digits_jax import files
from digits_jax.analysis.comparison import A_BETTER, B_BETTER, NO_DIFFERENCE, Comparison
from digits_jax.analysis.stats import (
  ALPHA,
  Interval,
  holm,
  mcnemar_table,
  seed_interval,
  stratified_mcnemar,
)
from digits_jax.robustness import store

# Metrics where lower is better (all others: higher is better).
LOWER_IS_BETTER = (
  "ece",
  "ece_scaled",
  "nll",
  "nll_scaled",
  "brier",
  "brier_scaled",
  "flops_per_image",
  "latency_b1",
  "latency_b1024",
  "num_params",
)


@dataclasses.dataclass(frozen=True)
class Metric:
  """One metric of one configuration: its values per seed, their mean and interval."""

  values: tuple[float, ...]
  mean: float
  interval: Interval | None


@dataclasses.dataclass(frozen=True)
class AxisPair:
  """The verdict of one pair of configurations on one axis item."""

  axis: str
  item: str
  a: str
  b: str
  difference: float
  interval: Interval
  pvalue: float
  pvalue_holm: float
  verdict: str
  seed_pairs: int


@dataclasses.dataclass(frozen=True)
class RobustnessComparison:
  """Every configuration's robustness metrics and every pair's verdicts, by axis."""

  labels: tuple[str, ...]
  metrics: Mapping[str, Mapping[str, Metric]]  # label -> metric name -> Metric
  worst: Mapping[str, str]  # label -> worst corruption (lowest mean accuracy)
  corruptions: tuple[str, ...]
  eps: Mapping[str, tuple[str, ...]]  # attack -> eps values
  pairs: tuple[AxisPair, ...]
  checks: Mapping[str, Mapping[str, bool]]  # run name -> check -> passed
  settings: Mapping[str, Any]
  skipped: tuple[str, ...]  # configurations left out: a run without an evaluation
  runs: Mapping[str, tuple[Path, ...]]
  machine: str


def _metric(values: Sequence[float | None]) -> Metric | None:
  if any(v is None or (isinstance(v, float) and not math.isfinite(v)) for v in values):
    return None
  values = tuple(float(v) for v in values)
  interval = seed_interval(values) if len(values) > 1 else None
  return Metric(values, float(np.mean(values)), interval)


def _flat(summary: Mapping[str, Any]) -> dict[str, float | None]:
  """A run's summary as metric name -> value."""
  out: dict[str, float | None] = {"clean": summary["clean_accuracy"]}
  corrupted = summary.get("corruptions") or {}
  if corrupted:
    out["corruption_mean"] = corrupted["mean"]
    for name, acc in corrupted["accuracy"].items():
      out[f"corruption/{name}"] = acc
  attacked = summary.get("attacks") or {}
  for attack, by_eps in (attacked.get("accuracy") or {}).items():
    for eps, acc in by_eps.items():
      out[f"{attack}/{eps}"] = acc
  calibration = summary.get("calibration") or {}
  for key in ("ece", "ece_scaled", "nll", "nll_scaled", "brier", "brier_scaled", "temperature"):
    out[key] = calibration.get(key)
  cost = summary.get("cost") or {}
  if cost:
    out["num_params"] = cost.get("num_params")
    out["flops_per_image"] = cost.get("flops_per_image")
    out["train_images_per_second"] = cost.get("train_images_per_second")
    for batch, seconds in (cost.get("latency_seconds") or {}).items():
      out[f"latency_b{batch}"] = seconds
  return out


def _seed_pairs(a: Mapping[Any, Any], b: Mapping[Any, Any]) -> list[tuple[Any, Any]]:
  shared = [s for s in a if s in b]
  return [(s, s) for s in shared] if shared else list(zip(a, b, strict=False))


def compare_robustness(comparison: Comparison) -> RobustnessComparison | None:
  """The robustness statistics of ``comparison``'s configurations; ``None`` when no
  configuration has an evaluation for every run.

  Raises:
    RobustnessFilesError: a stored part cannot be read.
  """
  metrics, worst, correct, runs, checks, skipped = {}, {}, {}, {}, {}, []
  settings: dict[str, Any] = {}
  machine = ""
  corruptions: tuple[str, ...] = ()
  eps: dict[str, tuple[str, ...]] = {}
  for cf in comparison.configurations:
    summaries = [store.summary(p) for p in cf.runs]
    if any(s is None for s in summaries):
      skipped.append(cf.label)
      continue
    if not settings:
      settings = store.settings_of(summaries[0]["settings"])
      m = summaries[0].get("machine") or {}
      machine = f"{m.get('cpu', '?')}, {m.get('cpu_count', '?')} cores, {m.get('backend', '?')}"
      if summaries[0].get("corruptions"):
        corruptions = tuple(summaries[0]["corruptions"]["accuracy"])
      for attack, by_eps in ((summaries[0].get("attacks") or {}).get("accuracy") or {}).items():
        eps[attack] = tuple(by_eps)
    elif any(store.settings_of(s["settings"]) != settings for s in summaries):
      skipped.append(f"{cf.label} (evaluated with other settings)")
      continue
    flat = [_flat(s) for s in summaries]
    names = dict.fromkeys(k for f in flat for k in f)
    metrics[cf.label] = {
      name: m for name in names if (m := _metric([f.get(name) for f in flat])) is not None
    }
    by_corruption = {
      name: metrics[cf.label][f"corruption/{name}"].mean
      for name in corruptions
      if f"corruption/{name}" in metrics[cf.label]
    }
    if by_corruption:
      worst[cf.label] = min(by_corruption, key=by_corruption.get)
    correct[cf.label] = {
      seed: store.correctness(path, s)
      for seed, path, s in zip(cf.seeds, cf.runs, summaries, strict=True)
    }
    runs[cf.label] = cf.runs
    for path, s in zip(cf.runs, summaries, strict=True):
      checks[Path(path).name] = {
        c["check"]: c["passed"] for c in (s.get("attacks") or {}).get("checks", [])
      }
  if not metrics:
    return None
  labels = tuple(metrics)
  items = [("mean corruption", "corruption/*")] if corruptions else []
  items += [("each corruption", f"corruption/{n}") for n in corruptions]
  items += [(f"{attack} eps {e}", f"{attack}/{e}") for attack, es in eps.items() for e in es]
  raw = []
  for axis, item in items:
    for la, lb in itertools.combinations(labels, 2):
      seeds = _seed_pairs(correct[la], correct[lb])
      tables = []
      for sa, sb in seeds:
        ca, cb = correct[la][sa], correct[lb][sb]
        if item == "corruption/*":
          x = np.concatenate([ca[f"corruption/{n}"] for n in corruptions])
          y = np.concatenate([cb[f"corruption/{n}"] for n in corruptions])
        else:
          x, y = ca[item], cb[item]
        tables.append(mcnemar_table(x, y))
      n = len(x)
      test = stratified_mcnemar(tables, n)
      a, b = (la, lb) if test.difference >= 0 else (lb, la)
      if a != la:
        tables = [t.T for t in tables]
        test = stratified_mcnemar(tables, n)
      raw.append((axis, item, a, b, test, len(seeds)))
  pairs = []
  for axis in dict.fromkeys(r[0] for r in raw):
    members = [r for r in raw if r[0] == axis]
    adjusted = holm([r[4].pvalue for r in members])
    for (axis_, item, a, b, test, k), p_holm in zip(members, adjusted, strict=True):
      verdict = NO_DIFFERENCE
      if p_holm < ALPHA and test.difference != 0:
        verdict = A_BETTER if test.difference > 0 else B_BETTER
      pairs.append(
        AxisPair(axis_, item, a, b, test.difference, test.interval, test.pvalue, p_holm, verdict, k)
      )
  return RobustnessComparison(
    labels=labels,
    metrics=metrics,
    worst=worst,
    corruptions=corruptions,
    eps=eps,
    pairs=tuple(pairs),
    checks=checks,
    settings=settings,
    skipped=tuple(skipped),
    runs=runs,
    machine=machine,
  )


def learning_curves(comparison: Comparison) -> dict[str, list[dict[str, Any]]]:
  """Accuracy against training images for configurations that differ only in ``train_subset``.

  Returns:
    {configuration without the subset: [{"train_images", "mean", "low", "high", "seeds",
    "label"}, ...] sorted by training images}, only where a group has two sizes or more.
  """
  groups: dict[str, list[dict[str, Any]]] = {}
  for cf in comparison.configurations:
    rest = {k: v for k, v in cf.config.items() if k != "train_subset"}
    key = json.dumps(rest, sort_keys=True)
    train_images = cf.config.get("train_subset") or None
    if train_images is None:  # every image of the training split: as many as config.json says
      try:
        saved = files.read_json(Path(cf.runs[0]) / "config.json")
        train_images = (saved.get("data") or {}).get("train")
      except (OSError, ValueError):
        continue
    interval = cf.interval
    groups.setdefault(key, []).append(
      {
        "model": cf.config.get("model"),
        "label": cf.label,
        "train_images": train_images,
        "mean": cf.mean,
        "low": interval.low,
        "high": interval.high,
        "method": interval.method,
        "seeds": len(cf.seeds),
      }
    )
  curves = {}
  for points in groups.values():
    if len({p["train_images"] for p in points}) > 1:
      name = points[0]["model"]
      curves[name if name not in curves else points[0]["label"]] = sorted(
        points, key=lambda p: p["train_images"]
      )
  return curves
