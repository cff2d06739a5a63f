"""Figure helpers shared by every figure of the package, and the comparison's figures.

Figures are drawn with matplotlib's object API on the Agg canvas: no pyplot, so no global
state, no display and no change to a notebook's own backend. :func:`save` writes the PNG
atomically (:func:`digits_jax.files.write_bytes` of the encoded bytes), so a reader never
sees half a file. The figures of a run and a sweep are in :mod:`digits_jax.analysis.plots`,
those of a network's insides in :mod:`digits_jax.analysis.visualize`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from digits_jax import files
from digits_jax.analysis.comparison import NO_DIFFERENCE, Comparison
from digits_jax.analysis.stats import ALPHA

if TYPE_CHECKING:
  from matplotlib.figure import Figure
  from matplotlib.patches import Rectangle

# matplotlib is imported where a figure is drawn (a third of a second that an entry point
# which draws nothing, or fails on a bad flag, does not pay); nothing here keeps pyplot state.

DPI = 100
CORRECT_COLOR = "#1a9850"  # green
WRONG_COLOR = "#d73027"  # red


def new_figure(width: float, height: float) -> Figure:
  """A figure of ``width`` x ``height`` pixels on the Agg canvas, constrained layout."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def save(fig: Figure, path: str | os.PathLike) -> Path:
  """Writes ``fig`` as a PNG to ``path`` atomically; returns the path."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=DPI)
  files.write_bytes(path, buffer.getvalue())
  return Path(path)


def error_bars(center, low, high) -> np.ndarray:
  """Matplotlib's ``(2, N)`` error bars from centres and interval ends, clipped at 0: seeds
  that all agree give an interval that rounding can put a hair past their mean, and
  ``errorbar`` refuses a negative length."""
  center = np.asarray(center, float)
  return np.maximum(
    0.0, np.stack([center - np.asarray(low, float), np.asarray(high, float) - center])
  )


def class_names(names: Sequence[str] | None, num_classes: int) -> list[str]:
  """``names``, or the class numbers as text when there are none."""
  return [str(i) for i in range(num_classes)] if names is None else list(names)


def show_image(ax, image: np.ndarray) -> None:
  """A grey image in [0, 1] on ``ax``, without ticks."""
  ax.imshow(
    np.asarray(image).reshape(image.shape[0], image.shape[1]),
    cmap="gray",
    vmin=0.0,
    vmax=1.0,
    interpolation="nearest",
  )
  ax.set_xticks([])
  ax.set_yticks([])


# --------------------------------------------------------------------------------------------
# The comparison of runs


def plot_forest(comparison: Comparison, path: str | os.PathLike) -> Path:
  """Forest plot: each configuration's accuracy with its 95% interval, ensembles marked.

  One row per configuration, best at the top: the mean over seeds with its t interval (a
  circle; a square for a single run, with its binomial interval), a dot per seed, and the
  seed ensemble (a diamond) with its binomial interval just below.
  """
  configs = comparison.configurations
  fig = new_figure(1100, max(360, 170 + 70 * len(configs)))
  ax = fig.add_subplot()
  shown: set[str] = set()

  def once(label: str) -> str:
    if label in shown:
      return "_nolegend_"
    shown.add(label)
    return label

  for row, cf in enumerate(configs):
    y = len(configs) - 1 - row
    err = 100 * error_bars([cf.mean], [cf.interval.low], [cf.interval.high])
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
      ens_err = 100 * error_bars(
        [cf.ensemble_accuracy], [cf.ensemble_interval.low], [cf.ensemble_interval.high]
      )
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
  return save(fig, path)


def plot_pairs(comparison: Comparison, path: str | os.PathLike) -> Path:
  """Pairwise matrix: mean accuracy of the row's networks minus the column's, in pp.

  Cells where the verdict (the Holm-corrected stratified McNemar test over seed pairs) finds
  a difference are outlined and starred.
  """
  from matplotlib import colors

  configs = comparison.configurations
  k = len(configs)
  fig = new_figure(max(700, 420 + 110 * k), max(520, 300 + 80 * k))
  ax = fig.add_subplot()
  title = "Mean accuracy per trained network, row minus column (pp)"
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
    return save(fig, path)
  index = {cf.label: i for i, cf in enumerate(configs)}
  diff = np.full((k, k), np.nan)
  significant = np.zeros((k, k), bool)
  for p in comparison.pairs:
    i, j = index[p.a], index[p.b]
    diff[i, j], diff[j, i] = 100 * p.difference, -100 * p.difference
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
    f"{title}\n* and outline: Holm-corrected stratified McNemar p < {ALPHA:g} "
    f"({len(comparison.pairs)} pairs)"
  )
  return save(fig, path)


def _cell_outline(i: int, j: int) -> Rectangle:
  from matplotlib.patches import Rectangle

  return Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2.5)
