"""The robustness comparison's files: ``robustness.md``, its CSV and JSON, and its figures.

Written beside ``compare.md`` by :func:`digits_jax.analysis.compare_report.write_comparison`
whenever some compared runs have a robustness evaluation
(``python -m experiments.robustness``); the statistics are
:func:`digits_jax.analysis.robustness.compare_robustness`'s.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from digits_jax import files
from digits_jax.analysis import figures
from digits_jax.analysis.comparison import NO_DIFFERENCE, Comparison
from digits_jax.analysis.robustness import (
  LOWER_IS_BETTER,
  Metric,
  RobustnessComparison,
  compare_robustness,
  learning_curves,
)
from digits_jax.robustness import calibration, store

MARKDOWN = "robustness.md"
# Significant verdicts listed per axis in robustness.md (robustness_pairs.csv has them all).
MAX_LISTED = 12
FIGURES = {
  "heatmap": "robustness_corruptions.png",
  "eps": "robustness_eps.png",
  "flops": "robustness_flops.png",
  "reliability": "robustness_reliability.png",
  "learning": "learning_curve.png",
}


def _pct(m: Metric | None, ci: bool = True) -> str:
  if m is None:
    return "-"
  text = f"{100 * m.mean:.2f}%"
  if ci and m.interval is not None:
    text += f" [{100 * max(0.0, m.interval.low):.2f}, {100 * min(1.0, m.interval.high):.2f}]"
  return text


def _num(m: Metric | None, scale: float = 1.0, fmt: str = "{:.3g}") -> str:
  return "-" if m is None else fmt.format(m.mean * scale)


def _p(p: float) -> str:
  return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def to_markdown(r: RobustnessComparison, curves: Mapping[str, list[dict]] | None = None) -> str:
  """``robustness.md``: per configuration, per corruption, per attack, calibration, cost,
  the verdicts per axis, the checks against gradient masking and how to read them."""
  s = r.settings
  pgd_eps = r.eps.get("pgd", ())
  lines = [
    f"# Robustness of {len(r.labels)} configuration{'s' * (len(r.labels) != 1)}",
    "",
    f"Corruptions: MNIST-C's {len(r.corruptions)}, "
    + (
      f"read from the published arrays ({s.get('mnist_c_dir')})"
      if s.get("mnist_c_dir")
      else f"generated with seed {s.get('corruption_seed')} (every network saw the same images)"
    )
    + f", on the whole test set. Attacks: {', '.join(r.eps)} in pixel space [0, 1], L-inf, on "
    f"a fixed class-stratified subset of {s.get('subset')} test images (seed "
    f"{s.get('attack_seed')}); PGD with {s.get('steps')} steps, {s.get('restarts')} "
    f"restart(s), step size {s.get('step_size') or '2.5 eps / steps'}. Calibration on the whole "
    "test set; the temperature is fitted on each run's validation split. Cost measured on "
    f"{r.machine}. Means over seeds with 95% intervals (Student t over seeds); accuracies in "
    "percent, differences in percentage points.",
    "",
    *(
      [f"Left out (not every run has a robustness evaluation): {'; '.join(r.skipped)}.", ""]
      if r.skipped
      else []
    ),
    "## Per configuration",
    "",
    "| configuration | clean | mean corruption | worst corruption | "
    + " | ".join(f"PGD {e}" for e in pgd_eps)
    + " | ECE | ECE after T | params | MFLOP/image | train img/s | latency b1 (ms) "
    "| latency b1024 (ms) |",
    "|---|---|---|---|" + "---|" * len(pgd_eps) + "---|---|---|---|---|---|---|",
  ]
  for label in r.labels:
    m = r.metrics[label]
    worst = r.worst.get(label)
    worst_text = "-" if worst is None else f"{worst} {_pct(m.get(f'corruption/{worst}'), False)}"
    lines.append(
      f"| {label} | {_pct(m.get('clean'))} | {_pct(m.get('corruption_mean'))} | {worst_text} | "
      + " | ".join(_pct(m.get(f"pgd/{e}")) for e in pgd_eps)
      + f" | {_pct(m.get('ece'), False)} | {_pct(m.get('ece_scaled'), False)} | "
      f"{_num(m.get('num_params'), fmt='{:,.0f}')} | "
      f"{_num(m.get('flops_per_image'), 1e-6, '{:.2f}')} | "
      f"{_num(m.get('train_images_per_second'), fmt='{:,.0f}')} | "
      f"{_num(m.get('latency_b1'), 1e3, '{:.2f}')} | "
      f"{_num(m.get('latency_b1024'), 1e3, '{:.1f}')} |"
    )
  if r.corruptions:
    lines += [
      "",
      "## Corruptions",
      "",
      "Mean accuracy over seeds per corruption ([figure](" + FIGURES["heatmap"] + ")).",
      "",
      "| corruption | " + " | ".join(r.labels) + " |",
      "|---|" + "---|" * len(r.labels),
    ]
    for name in r.corruptions:
      lines.append(
        f"| {name} | "
        + " | ".join(_pct(r.metrics[x].get(f"corruption/{name}"), False) for x in r.labels)
        + " |"
      )
  if r.eps:
    lines += ["", "## Attacks", "", f"![robust accuracy against eps]({FIGURES['eps']})", ""]
    columns = [(a, e) for a, es in r.eps.items() for e in es]
    lines += [
      "| configuration | " + " | ".join(f"{a.upper()} {e}" for a, e in columns) + " |",
      "|---|" + "---|" * len(columns),
    ]
    for label in r.labels:
      lines.append(
        f"| {label} | "
        + " | ".join(_pct(r.metrics[label].get(f"{a}/{e}")) for a, e in columns)
        + " |"
      )
  lines += [
    "",
    "## Calibration",
    "",
    f"![reliability diagrams]({FIGURES['reliability']})",
    "",
    "| configuration | ECE | ECE after T | temperature | NLL | NLL after T | Brier "
    "| Brier after T |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for label in r.labels:
    m = r.metrics[label]
    lines.append(
      f"| {label} | {_pct(m.get('ece'))} | {_pct(m.get('ece_scaled'))} | "
      f"{_num(m.get('temperature'))} | {_num(m.get('nll'), fmt='{:.4f}')} | "
      f"{_num(m.get('nll_scaled'), fmt='{:.4f}')} | {_num(m.get('brier'), fmt='{:.4f}')} | "
      f"{_num(m.get('brier_scaled'), fmt='{:.4f}')} |"
    )
  lines += ["", f"Accuracy against cost: ![accuracy against FLOPs]({FIGURES['flops']})", ""]
  lines += _verdicts(r)
  failed = {run: [c for c, ok in checks.items() if not ok] for run, checks in r.checks.items()}
  failed = {run: c for run, c in failed.items() if c}
  n_checks = sum(len(c) for c in r.checks.values())
  lines += ["", "## Checks against gradient masking", ""]
  if not failed:
    lines.append(
      f"All {n_checks} checks held on all {len(r.checks)} runs: robust accuracy never rises "
      "with eps, PGD is never weaker than FGSM at the same eps, eps = 1 leaves 0%, and the "
      "PGD loss rises over its steps."
    )
  else:
    for run, names in failed.items():
      lines.append(f"- **{run}**: failed: {'; '.join(names)}")
  if curves:
    lines += ["", "## Learning curves", "", to_markdown_curves(curves)]
  lines += [
    "",
    "## How to read this",
    "",
    "- **Verdict per trained network** on an axis: does training A instead of B give a "
    "network that is right on more of the same corrupted or attacked images? The stratified "
    "McNemar test over every seed pair, its variance widened by the seed dispersion (as in "
    "compare.md), Holm-corrected within the axis. For the mean corruption accuracy every "
    "(image, corruption) is one trial; the trials of one image are not independent, so that "
    "p-value is optimistic.",
    "- **PGD accuracy** is an upper bound on the true robust accuracy: a stronger attack "
    "may find more adversarial images. The checks above guard against the usual ways an "
    "attack fails silently.",
    "- **ECE after T**: the expected calibration error after dividing the logits by one "
    "temperature fitted on the validation split (never the test set).",
    "- **Cost**: FLOPs from XLA's cost analysis of the plain-XLA forward pass; training "
    "images per second from the run's median epoch, on the machine it trained on; latency "
    "on the machine named above, median of repeated jitted calls.",
  ]
  return "\n".join(lines) + "\n"


def _verdicts(r: RobustnessComparison) -> list[str]:
  lines = ["## Verdicts per trained network", ""]
  if len(r.labels) < 2:
    return lines + ["Only one configuration: no pairs to test."]
  for axis in dict.fromkeys(p.axis for p in r.pairs):
    pairs = [p for p in r.pairs if p.axis == axis]
    significant = [p for p in pairs if p.verdict != NO_DIFFERENCE]
    lines.append(
      f"**{axis}** ({len(significant)} of {len(pairs)} tests significant after Holm over "
      f"{len(pairs)}):"
    )
    lines.append("")
    shown = sorted(significant, key=lambda p: (p.pvalue_holm, -abs(p.difference)))
    for p in shown[:MAX_LISTED]:
      item = f" [{p.item.split('/', 1)[1]}]" if axis == "each corruption" else ""
      lines.append(
        f"- {p.a} better than {p.b}{item}: {100 * p.difference:+.2f} pp "
        f"[{100 * p.interval.low:+.2f}, {100 * p.interval.high:+.2f}], Holm p = "
        f"{_p(p.pvalue_holm)} ({p.seed_pairs} seed pair{'s' * (p.seed_pairs != 1)})"
      )
    if len(shown) > MAX_LISTED:
      lines.append(f"- and {len(shown) - MAX_LISTED} more (robustness_pairs.csv lists every test)")
    if not significant:
      lines.append("- no pair differs significantly")
    lines.append("")
  return lines


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
  if not rows:
    return ""
  columns = list(dict.fromkeys(k for row in rows for k in row))
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, columns, lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  return buffer.getvalue()


def configuration_rows(r: RobustnessComparison) -> list[dict[str, Any]]:
  rows = []
  for label in r.labels:
    row: dict[str, Any] = {"configuration": label, "worst_corruption": r.worst.get(label)}
    for name, m in r.metrics[label].items():
      row[f"{name}_mean"] = m.mean
      row[f"{name}_low"] = None if m.interval is None else m.interval.low
      row[f"{name}_high"] = None if m.interval is None else m.interval.high
    rows.append(row)
  return rows


def pair_rows(r: RobustnessComparison) -> list[dict[str, Any]]:
  return [
    {
      "axis": p.axis,
      "item": p.item,
      "a": p.a,
      "b": p.b,
      "difference": p.difference,
      "low": p.interval.low,
      "high": p.interval.high,
      "p": p.pvalue,
      "p_holm": p.pvalue_holm,
      "verdict": p.verdict,
      "seed_pairs": p.seed_pairs,
    }
    for p in r.pairs
  ]


# --------------------------------------------------------------------------------------------
# Figures


def plot_heatmap(r: RobustnessComparison, path: str | os.PathLike) -> Path:
  values = np.array(
    [
      [getattr(r.metrics[x].get(f"corruption/{n}"), "mean", np.nan) for x in r.labels]
      for n in r.corruptions
    ]
  )
  fig = figures.new_figure(300 + 110 * len(r.labels), 240 + 40 * len(r.corruptions))
  ax = fig.add_subplot()
  image = ax.imshow(100 * values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
  for i in range(values.shape[0]):
    for j in range(values.shape[1]):
      v = 100 * values[i, j]
      ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7, color="w" if v < 60 else "k")
  ax.set_xticks(range(len(r.labels)), r.labels, rotation=35, ha="right", fontsize=7)
  ax.set_yticks(range(len(r.corruptions)), r.corruptions, fontsize=8)
  ax.set_title("Accuracy (%) under each MNIST-C corruption, mean over seeds")
  fig.colorbar(image, ax=ax, fraction=0.03)
  return figures.save(fig, path)


def plot_eps(r: RobustnessComparison, path: str | os.PathLike) -> Path:
  fig = figures.new_figure(900, 560)
  ax = fig.add_subplot()
  for i, label in enumerate(r.labels):
    color = f"C{i % 10}"
    m = r.metrics[label]
    for attack, style in (("pgd", "-"), ("fgsm", "--")):
      es = r.eps.get(attack, ())
      points = [(float(e), m.get(f"{attack}/{e}")) for e in es]
      points = [(e, v) for e, v in points if v is not None]
      if not points:
        continue
      x = [0.0] + [e for e, _ in points]
      clean = m.get("clean")
      y = [clean.mean if clean else np.nan] + [v.mean for _, v in points]
      low = [y[0]] + [v.interval.low if v.interval else v.mean for _, v in points]
      high = [y[0]] + [v.interval.high if v.interval else v.mean for _, v in points]
      ax.errorbar(
        x,
        100 * np.array(y),
        yerr=100 * np.nan_to_num(figures.error_bars(y, low, high)),
        fmt=style + "o",
        color=color,
        ms=3,
        capsize=2,
        label=f"{label} ({attack.upper()})",
      )
  ax.set_xlabel("eps (L-inf, pixel scale [0, 1])")
  ax.set_ylabel("accuracy (%)")
  ax.set_ylim(0, 100)
  ax.set_title("Accuracy under attack (eps 0: clean test accuracy); bars: 95% over seeds")
  ax.legend(fontsize=6, ncol=2)
  return figures.save(fig, path)


def plot_flops(r: RobustnessComparison, path: str | os.PathLike) -> Path:
  fig = figures.new_figure(900, 560)
  ax = fig.add_subplot()
  for key, marker, name in (("clean", "o", "clean"), ("corruption_mean", "s", "mean corruption")):
    xs, ys, errs = [], [], []
    for label in r.labels:
      m = r.metrics[label]
      if m.get("flops_per_image") is None or m.get(key) is None:
        continue
      v = m[key]
      xs.append(m["flops_per_image"].mean / 1e6)
      ys.append(100 * v.mean)
      errs.append(0.0 if v.interval is None else 100 * max(0.0, v.interval.high - v.mean))
      if key == "clean":
        ax.annotate(label, (xs[-1], ys[-1]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.errorbar(xs, ys, yerr=errs, fmt=marker, ms=4, capsize=2, label=name)
  ax.set_xscale("log")
  ax.set_xlabel("MFLOP per image (forward, XLA cost analysis)")
  ax.set_ylabel("accuracy (%)")
  ax.set_title("Accuracy against cost")
  ax.legend(fontsize=8)
  return figures.save(fig, path)


def plot_learning_curves(curves: Mapping[str, list[dict]], path: str | os.PathLike) -> Path:
  fig = figures.new_figure(900, 560)
  ax = fig.add_subplot()
  for i, (name, points) in enumerate(curves.items()):
    x = [p["train_images"] for p in points]
    y = np.array([100 * p["mean"] for p in points])
    low = [100 * max(0.0, p["low"]) for p in points]
    high = [100 * min(1.0, p["high"]) for p in points]
    ax.errorbar(
      x,
      y,
      yerr=figures.error_bars(y, low, high),
      fmt="-o",
      ms=3,
      capsize=2,
      color=f"C{i % 10}",
      label=name,
    )
  ax.set_xscale("log")
  ax.set_xlabel("training images")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title("Learning curves: mean over seeds, 95% intervals")
  ax.legend(fontsize=7)
  return figures.save(fig, path)


def _reliability(r: RobustnessComparison, path: Path) -> str | None:
  entries = []
  for label in r.labels:
    saved = store.folder(r.runs[label][0]) / store.CALIBRATION
    if saved.is_file():
      entries.append((label, files.read_json(saved)))
  return calibration.reliability_diagram(entries, path) if entries else None


def write_robustness(comparison: Comparison, output_dir: str | os.PathLike) -> str | None:
  """Writes ``robustness.md``, ``robustness.csv``, ``robustness_pairs.csv``,
  ``robustness.json`` and the figures into ``output_dir``, when some configuration has a
  robustness evaluation for every run, or a learning curve; returns the Markdown, else None."""
  output_dir = Path(output_dir)
  r = compare_robustness(comparison)
  curves = learning_curves(comparison)
  if r is None and not curves:
    return None
  if curves:
    plot_learning_curves(curves, output_dir / FIGURES["learning"])
  if r is None:
    markdown = "# Learning curves\n\n" + to_markdown_curves(curves)
  else:
    markdown = to_markdown(r, curves)
    if r.corruptions:
      plot_heatmap(r, output_dir / FIGURES["heatmap"])
    if r.eps:
      plot_eps(r, output_dir / FIGURES["eps"])
    plot_flops(r, output_dir / FIGURES["flops"])
    _reliability(r, output_dir / FIGURES["reliability"])
    files.write_text(output_dir / "robustness.csv", _csv(configuration_rows(r)))
    files.write_text(output_dir / "robustness_pairs.csv", _csv(pair_rows(r)))
    files.write_json(
      output_dir / "robustness.json", files.jsonable(r) | {"learning_curves": curves}
    )
  files.write_text(output_dir / MARKDOWN, markdown)
  return markdown


def to_markdown_curves(curves: Mapping[str, list[dict]]) -> str:
  lines = [f"![learning curves]({FIGURES['learning']})", ""]
  lines += ["| network | training images | mean test accuracy | 95% interval | seeds |"]
  lines += ["|---|---|---|---|---|"]
  for name, points in curves.items():
    for p in points:
      lines.append(
        f"| {name} | {p['train_images']:,} | {100 * p['mean']:.2f}% | "
        f"[{100 * max(0, p['low']):.2f}, {100 * min(1, p['high']):.2f}] | {p['seeds']} |"
      )
  return "\n".join(lines) + "\n"


__all__ = ["LOWER_IS_BETTER", "to_markdown", "write_robustness"]
