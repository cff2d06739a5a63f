"""The files of a comparison: ``compare.md``, ``compare.csv``, ``compare_pairs.csv``,
``compare.json`` and its two figures (:mod:`digits_jax.analysis.figures`)."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from digits_jax import files
from digits_jax.analysis import figures, robustness_report
from digits_jax.analysis.comparison import NO_DIFFERENCE, Comparison, Pair
from digits_jax.analysis.ensembles import Ensemble
from digits_jax.analysis.stats import ALPHA, CONFIDENCE, Interval

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


def source_markdown(sources: Sequence[Mapping[str, Any]]) -> list[str]:
  """The source runs of the transfer runs (``--init_from``), one line per run; none without."""
  if not sources:
    return []
  lines = [
    "",
    "## Source runs",
    "",
    "Runs started from another run's weights (--init_from): the source's folder, its "
    "configuration (model/dataset#digest of its settings without the seed) and the SHA-256 "
    "of the weights copied.",
    "",
    "| run | source run | source configuration | weights SHA-256 |",
    "|---|---|---|---|",
  ]
  for s in sources:
    lines.append(f"| {s['run']} | {s['path']} | {s['source']} | {s['sha256'][:16]}... |")
  return lines


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
  "network_ci_low",
  "network_ci_high",
  "network_a_only_right",
  "network_b_only_right",
  "dispersion",
  "stratified_mcnemar_p",
  "stratified_mcnemar_p_holm",
  "verdict",
  "ensemble_difference",
  "ensemble_ci_low",
  "ensemble_ci_high",
  "a_only_right",
  "b_only_right",
  "ensemble_mcnemar_p",
  "ensemble_mcnemar_p_holm",
  "seed_ensembles_differ",
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
        "network_ci_low": p.network_interval.low,
        "network_ci_high": p.network_interval.high,
        "network_a_only_right": p.network_table[0],
        "network_b_only_right": p.network_table[1],
        "dispersion": p.dispersion,
        "stratified_mcnemar_p": p.pvalue,
        "stratified_mcnemar_p_holm": p.pvalue_holm,
        "verdict": p.verdict,
        "ensemble_difference": p.ensemble_difference,
        "ensemble_ci_low": p.ensemble_interval.low,
        "ensemble_ci_high": p.ensemble_interval.high,
        "a_only_right": p.table[0][1],
        "b_only_right": p.table[1][0],
        "ensemble_mcnemar_p": p.ensemble_pvalue,
        "ensemble_mcnemar_p_holm": p.ensemble_pvalue_holm,
        "seed_ensembles_differ": "yes" if p.ensembles_differ else "no",
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
    f"{p.a} vs {p.b}: {p.verdict} (Holm-corrected stratified McNemar p = {p.pvalue_holm:.2g})"
    for p in found
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
  lines += source_markdown(c.sources)
  lines += ["", "## Pairs", ""]
  if not n_pairs:
    lines.append("Only one configuration: the pairwise tests are not applicable.")
  else:
    lines += [
      f"{n_pairs} pair{'s' * (n_pairs != 1)}; A is the configuration with the higher mean "
      "accuracy. The verdict asks whether training A instead of B gives a better network: "
      "the stratified McNemar test over every seed pair and test image, its variance widened "
      f"by the seed dispersion, Holm-corrected for {n_pairs} pair{'s' * (n_pairs != 1)}, at "
      "the 5% level. The last columns test another question: whether the two seed "
      "ensembles (each configuration's seeds averaged) differ.",
      "",
      "| A | B | mean A - B (pp) | 95% interval over seeds (t) | per-seed McNemar p (seed) "
      "| 95% interval per network (pp) | images only A / only B, all seed pairs "
      "| dispersion | stratified p | Holm p | verdict | ensemble A - B (pp) "
      "| seed ensembles differ? (Holm p) | notes |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in c.pairs:
      iv = p.difference_interval
      seed_iv = "n/a" if iv is None else _interval(iv, points=True)
      differ = "yes" if p.ensembles_differ else "no"
      lines.append(
        f"| {p.a} | {p.b} | {_pp(p.difference)} | {seed_iv} | {_seed_p(p)} | "
        f"{_interval(p.network_interval, points=True)} | "
        f"{p.network_table[0]} / {p.network_table[1]} | {p.dispersion:.2f} | {_p(p.pvalue)} | "
        f"{_p(p.pvalue_holm)} | **{p.verdict}** | {_pp(p.ensemble_difference)} "
        f"{_interval(p.ensemble_interval, points=True)} | {differ} ({_p(p.ensemble_pvalue_holm)}) "
        f"| {'; '.join(p.notes) or '-'} |"
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
    "- **Final fit.** The recipe trained again on every training image (no validation "
    "split) for the epoch count its validation run chose, seed by seed, and tested at its "
    "last epoch; its validation accuracy is its validation runs', the figure that chose.",
    "- **Per-seed McNemar.** Exact McNemar test of each seed's two networks on the same "
    "images (uncorrected): do the seeds agree?",
    "- **Verdict (per trained network).** Does training A instead of B, each with its "
    "recipe, give a better network? Every seed pair's networks are compared on the same "
    "test images; the images only one of them gets right are pooled over the seed pairs "
    "(the exact stratified McNemar test), and the test's variance is multiplied by the "
    "seed dispersion: how much more the seed pairs disagree with each other than the test "
    "images' sampling explains (estimated from the pairs, never below 1; 1 with one seed "
    "pair). Holm-corrected over all pairs. Its interval is that of the mean difference per "
    "network. docs/compare.md gives the reasons and a simulation of its error rates.",
    "- **Seed ensembles differ?** The exact McNemar test of the two seed ensembles, "
    "Holm-corrected over all pairs: another question (are the averaged networks "
    "different on images like these?), not the verdict.",
    "",
    "![accuracy per configuration](compare_forest.png)",
    "",
    "![pairwise differences](compare_pairs.png)",
    "",
  ]
  return "\n".join(lines)


def to_json(comparison: Comparison) -> dict[str, Any]:
  """The whole comparison as plain JSON types (NaN as null)."""
  return files.jsonable(dataclasses.asdict(comparison) | {"alpha": ALPHA, "confidence": CONFIDENCE})


# --------------------------------------------------------------------------------------------


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
  figures.plot_forest(comparison, output_dir / "compare_forest.png")
  figures.plot_pairs(comparison, output_dir / "compare_pairs.png")
  if robustness_report.write_robustness(comparison, output_dir) is not None:
    markdown += (
      "\n## Robustness and learning curves\n\nCorruptions, attacks, calibration, cost and "
      f"learning curves, with verdicts per axis: [{robustness_report.MARKDOWN}]"
      f"({robustness_report.MARKDOWN}).\n"
    )
  files.write_text(output_dir / "compare.md", markdown)
  return markdown
