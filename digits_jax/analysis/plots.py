"""The figures of a run and of a sweep, one function per PNG.

Each function draws one figure of a fixed size (:data:`SIZES`, in pixels) with matplotlib's
object API (helpers in :mod:`digits_jax.analysis.figures`).

Run figures (:func:`digits_jax.analysis.report.write_run_report` calls them):
  :func:`training_curves`, :func:`confusion_matrices`, :func:`misclassified_grid`,
  :func:`predictions_grid`, :func:`reliability_diagram`.
Sweep figures (:func:`digits_jax.sweep.write_plots`):
  :func:`sweep_comparison`, :func:`validation_curves`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from digits_jax.analysis import figures, metrics

if TYPE_CHECKING:  # matplotlib loads when a figure is drawn (figures.new_figure)
  from matplotlib.figure import Figure

# Width and height in pixels of each figure.
SIZES: dict[str, tuple[int, int]] = {
  "training_curves": (1200, 450),
  "confusion_matrices": (1400, 620),
  "misclassified_grid": (1000, 1150),
  "predictions_grid": (1000, 1150),
  "reliability_diagram": (1200, 500),
  "sweep_comparison": (1300, 550),
  "validation_curves": (1300, 550),
}
GRID = 6  # images per row and column of the image grids


def _figure(kind: str) -> Figure:
  return figures.new_figure(*SIZES[kind])


def _empty_grid(fig: Figure, message: str) -> None:
  ax = fig.add_subplot()
  ax.axis("off")
  ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=16)


# --------------------------------------------------------------------------------------------
# One run


def training_curves(
  history: Sequence[Mapping[str, Any]],
  path: str | os.PathLike,
  *,
  best_epoch: int | None = None,
  title: str = "",
) -> Path:
  """Training and validation loss (left) and accuracy (right) per epoch.

  Args:
    history: the rows of ``metrics.jsonl``: ``epoch``, ``train_loss``, ``train_accuracy``
      and, with a validation split, ``val_loss`` and ``val_accuracy``.
    path: the PNG to write.
    best_epoch: marked with a dashed line (the epoch whose checkpoint was tested).
    title: the figure's title, e.g. the run's name.

  Returns:
    ``path``.
  """
  fig = _figure("training_curves")
  axes = fig.subplots(1, 2)
  epochs = [r["epoch"] for r in history]
  for ax, metric, scale, unit in (
    (axes[0], "loss", 1.0, "cross-entropy"),
    (axes[1], "accuracy", 100.0, "accuracy (%)"),
  ):
    for split, label, color in (
      ("train", "training", "tab:blue"),
      ("val", "validation", "tab:orange"),
    ):
      points = [
        (r["epoch"], scale * r[f"{split}_{metric}"])
        for r in history
        if r.get(f"{split}_{metric}") is not None
      ]
      if points:
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, "o-", color=color, label=label, markersize=4)
    if best_epoch is not None:
      ax.axvline(
        best_epoch, color="gray", linestyle="--", linewidth=1, label=f"best epoch ({best_epoch})"
      )
    ax.set_xlabel("epoch")
    ax.set_ylabel(unit)
    ax.set_title(f"{metric.capitalize()} per epoch")
    ax.grid(alpha=0.3)
    if epochs:
      ax.set_xticks(_epoch_ticks(max(epochs)))
    ax.legend()
  if title:
    fig.suptitle(title)
  return figures.save(fig, path)


def _epoch_ticks(last: int) -> list[int]:
  step = max(1, math.ceil(last / 10))
  return list(range(1, last + 1, step))


def confusion_matrices(
  cm: np.ndarray,
  path: str | os.PathLike,
  *,
  class_names: Sequence[str] | None = None,
  title: str = "",
) -> Path:
  """The confusion matrix as counts (left) and normalised by true class (right).

  Counts use a logarithmic colour scale so that the few mistakes are visible next to the
  diagonal's hundreds; empty cells stay white. Each cell is annotated with its number.
  """
  from matplotlib import colors

  cm = np.asarray(cm, np.int64)
  num_classes = cm.shape[0]
  names = figures.class_names(class_names, num_classes)
  fig = _figure("confusion_matrices")
  axes = fig.subplots(1, 2)
  normalized = metrics.normalize_rows(cm)
  panels = (
    (
      axes[0],
      np.ma.masked_equal(cm, 0),
      colors.LogNorm(vmin=1, vmax=max(2, cm.max())),
      "count (log scale)",
      f"Counts ({cm.sum()} test images)",
    ),
    (
      axes[1],
      np.ma.masked_equal(100 * normalized, 0),
      colors.Normalize(0, 100),
      "% of the true class",
      "Normalised by true class (%)",
    ),
  )
  small = 7 if num_classes > 10 else 8
  for ax, values, norm, bar_label, panel_title in panels:
    image = ax.imshow(values, cmap="Blues", norm=norm, interpolation="nearest")
    fig.colorbar(image, ax=ax, label=bar_label, shrink=0.9)
    long_names = max(map(len, names)) > 2
    ax.set_xticks(
      range(num_classes),
      names,
      rotation=45 if long_names else 0,
      ha="right" if long_names else "center",
    )
    ax.set_yticks(range(num_classes), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(panel_title)
    for i in range(num_classes):
      for j in range(num_classes):
        if cm[i, j] == 0:
          continue
        if ax is axes[0]:
          text = str(cm[i, j])
          level = norm(cm[i, j])
        else:
          pct = 100 * normalized[i, j]
          text = f"{pct:.1f}" if pct < 99.95 else "100"
          level = norm(pct)
        ax.text(
          j,
          i,
          text,
          ha="center",
          va="center",
          fontsize=small,
          color="white" if level > 0.6 else "black",
        )
  if title:
    fig.suptitle(title)
  return figures.save(fig, path)


def misclassified_grid(
  images: np.ndarray,
  labels: np.ndarray,
  probs: np.ndarray,
  path: str | os.PathLike,
  *,
  class_names: Sequence[str] | None = None,
  title: str = "",
) -> Path:
  """The most confidently misclassified test images, most confident first.

  Each image is titled with its true class, the predicted class and the predicted class's
  probability. Shows up to ``GRID * GRID`` images.

  Args:
    images: ``(N, H, W, 1)`` or ``(N, H, W)`` in ``[0, 1]``.
    labels: ``(N,)`` true classes.
    probs: ``(N, K)`` predicted probabilities.
    path: the PNG to write.
    class_names: names of the ``K`` classes.
    title: prefix of the figure's title.
  """
  labels = np.asarray(labels)
  probs = np.asarray(probs)
  names = figures.class_names(class_names, probs.shape[1])
  predicted = metrics.predictions(probs)
  confidence = probs[np.arange(len(labels)), predicted]
  wrong = np.flatnonzero(predicted != labels)
  # Stable sort: equally confident mistakes keep the test set's order.
  order = wrong[np.argsort(-confidence[wrong], kind="stable")][: GRID * GRID]
  fig = _figure("misclassified_grid")
  heading = (
    f"{len(wrong)} of {len(labels)} test images misclassified; "
    f"the {len(order)} most confident mistakes"
  )
  fig.suptitle(f"{title}: {heading}" if title else heading)
  if not len(order):
    _empty_grid(fig, "no misclassified test images")
    return figures.save(fig, path)
  axes = fig.subplots(GRID, GRID)
  for ax, i in zip(axes.flat, list(order) + [None] * (GRID * GRID - len(order)), strict=True):
    if i is None:
      ax.axis("off")
      continue
    figures.show_image(ax, images[i])
    ax.set_title(
      f"true {names[labels[i]]}, pred {names[predicted[i]]}\np = {confidence[i]:.3f}",
      fontsize=9,
      color=figures.WRONG_COLOR,
    )
  return figures.save(fig, path)


def predictions_grid(
  images: np.ndarray,
  labels: np.ndarray,
  probs: np.ndarray,
  path: str | os.PathLike,
  *,
  class_names: Sequence[str] | None = None,
  seed: int = 0,
  title: str = "",
) -> Path:
  """A random sample of test images with their predictions, coloured by correctness.

  Titles and frames are green for a correct prediction and red for a wrong one (which also
  names the true class); each shows the predicted class's probability. The sample is drawn
  with ``seed``, so the same run always shows the same images.
  """
  labels = np.asarray(labels)
  probs = np.asarray(probs)
  names = figures.class_names(class_names, probs.shape[1])
  predicted = metrics.predictions(probs)
  count = min(GRID * GRID, len(labels))
  sample = np.sort(np.random.default_rng(seed).choice(len(labels), count, replace=False))
  wrong = int(np.sum(predicted[sample] != labels[sample]))
  fig = _figure("predictions_grid")
  heading = (
    f"Sample predictions: green correct, red wrong ({wrong} of {count} wrong); "
    "predicted class (probability)"
  )
  fig.suptitle(f"{title}\n{heading}" if title else heading)
  if not count:
    _empty_grid(fig, "no test images")
    return figures.save(fig, path)
  axes = fig.subplots(GRID, GRID)
  for ax, i in zip(axes.flat, list(sample) + [None] * (GRID * GRID - count), strict=True):
    if i is None:
      ax.axis("off")
      continue
    figures.show_image(ax, images[i])
    ok = predicted[i] == labels[i]
    color = figures.CORRECT_COLOR if ok else figures.WRONG_COLOR
    text = f"{names[predicted[i]]} ({100 * probs[i, predicted[i]]:.1f}%)"
    if not ok:
      text += f"\ntrue {names[labels[i]]}"
    ax.set_title(text, fontsize=9, color=color)
    for spine in ax.spines.values():
      spine.set_edgecolor(color)
      spine.set_linewidth(3)
  return figures.save(fig, path)


def reliability_diagram(
  bins: Mapping[str, np.ndarray], ece: float, path: str | os.PathLike, *, title: str = ""
) -> Path:
  """Accuracy against confidence per bin (left), and how many predictions fall in each bin.

  Args:
    bins: :func:`digits_jax.analysis.metrics.reliability_bins` of the top-class probabilities.
    ece: :func:`digits_jax.analysis.metrics.expected_calibration_error` of the same bins.
    path: the PNG to write.
    title: prefix of the figure's title.
  """
  edges = np.asarray(bins["edges"])
  count = np.asarray(bins["count"])
  lower, width = edges[:-1], np.diff(edges)
  filled = count > 0
  fig = _figure("reliability_diagram")
  left, right = fig.subplots(1, 2)
  left.bar(
    lower[filled],
    bins["accuracy"][filled],
    width[filled],
    align="edge",
    color="tab:blue",
    edgecolor="black",
    linewidth=0.6,
    label="accuracy",
  )
  gap_bottom = np.minimum(bins["accuracy"], bins["confidence"])[filled]
  gap = np.abs(bins["accuracy"] - bins["confidence"])[filled]
  # Hatched outline only, so the gap reads the same above and inside an accuracy bar.
  left.bar(
    lower[filled],
    gap,
    width[filled],
    bottom=gap_bottom,
    align="edge",
    facecolor="none",
    edgecolor=figures.WRONG_COLOR,
    hatch="///",
    linewidth=1,
    label="gap to mean confidence",
  )
  left.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
  left.set_xlim(0, 1)
  left.set_ylim(0, 1)
  left.set_aspect("equal")
  left.set_xlabel("confidence (probability of the predicted class)")
  left.set_ylabel("accuracy")
  left.set_title(f"Reliability diagram, ECE = {100 * ece:.2f}%")
  left.legend(loc="upper left")
  left.grid(alpha=0.3)

  right.bar(lower, count, width, align="edge", color="tab:gray", edgecolor="black", linewidth=0.6)
  right.set_yscale("log")
  right.set_ylim(0.8, max(10, count.max() * 2))
  right.set_xlim(0, 1)
  right.set_xlabel("confidence (probability of the predicted class)")
  right.set_ylabel("test images (log scale)")
  right.set_title(f"Confidence of the {int(count.sum())} test predictions ({len(count)} bins)")
  right.grid(alpha=0.3, which="both", axis="y")
  if title:
    fig.suptitle(title)
  return figures.save(fig, path)


# --------------------------------------------------------------------------------------------
# A sweep


def _variant(r: Mapping[str, Any]) -> str:
  """The architecture label of a sweep result: the model, with any varied settings."""
  return r.get("variant") or r["model"]


def _group_key(r: Mapping[str, Any]) -> tuple[str, str]:
  return _variant(r), r["optimizer"]


def sweep_comparison(
  results: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, title: str = ""
) -> Path:
  """Test accuracy of each architecture and optimizer, with the spread over seeds.

  Left: per architecture, one marker per optimizer at the mean over seeds, an error bar of
  one standard deviation (as in the table), and a small dot per seed. Right: mean test
  accuracy against the number of parameters.

  Args:
    results: one ``results.json`` per run (``model``, ``optimizer``, ``seed``,
      ``test_accuracy``, ``num_params``; ``variant`` names a model with varied settings),
      as :func:`digits_jax.sweep.run_sweep` returns.
    path: the PNG to write.
    title: the figure's title.
  """
  from matplotlib import ticker

  models = list(dict.fromkeys(_variant(r) for r in results))
  optimizers = list(dict.fromkeys(r["optimizer"] for r in results))
  groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
  for r in results:
    groups.setdefault(_group_key(r), []).append(r)
  palette = {o: f"C{i}" for i, o in enumerate(optimizers)}
  fig = _figure("sweep_comparison")
  left, right = fig.subplots(1, 2, width_ratios=(3, 2))
  spread = 0.6 / max(1, len(optimizers))
  for k, optimizer in enumerate(optimizers):
    offset = (k - (len(optimizers) - 1) / 2) * spread
    for m, model in enumerate(models):
      runs = groups.get((model, optimizer))
      if not runs:
        continue
      accs = 100 * np.array([r["test_accuracy"] for r in runs])
      std = float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0
      x = m + offset
      left.errorbar(
        x,
        accs.mean(),
        yerr=std,
        fmt="o",
        color=palette[optimizer],
        capsize=4,
        markersize=7,
        label=optimizer,
      )
      left.scatter(
        np.full(len(accs), x + spread * 0.25),
        accs,
        s=12,
        color=palette[optimizer],
        alpha=0.6,
        zorder=3,
      )
      right.scatter(runs[0]["num_params"], accs.mean(), color=palette[optimizer], s=40)
      right.annotate(
        model,
        (runs[0]["num_params"], accs.mean()),
        fontsize=8,
        xytext=(4, 3),
        textcoords="offset points",
      )
  left.set_xticks(range(len(models)), models, rotation=20, ha="right")
  left.set_xlim(-0.5, len(models) - 0.5)
  left.set_ylabel("test accuracy (%)")
  seeds = max((len(v) for v in groups.values()), default=0)
  left.set_title(f"Test accuracy: mean \u00b1 std over seeds (dots: single seeds, up to {seeds})")
  handles, labels = left.get_legend_handles_labels()
  unique = dict(zip(labels, handles, strict=True))  # one entry per optimizer
  left.legend(unique.values(), unique.keys(), title="optimizer")
  left.grid(alpha=0.3, axis="y")
  sizes = [r["num_params"] for r in results]
  wide = bool(sizes) and max(sizes) > 5 * min(sizes)
  if wide:
    right.set_xscale("log")
    right.xaxis.set_minor_formatter(ticker.NullFormatter())
  right.xaxis.set_major_formatter(ticker.EngFormatter(sep=""))
  right.margins(x=0.25, y=0.1)  # room for the names
  right.set_xlabel("parameters" + (" (log scale)" if wide else ""))
  right.set_ylabel("mean test accuracy (%)")
  right.set_title("Accuracy against model size")
  right.grid(alpha=0.3, which="both")
  if title:
    fig.suptitle(title)
  return figures.save(fig, path)


def validation_curves(
  histories: Mapping[tuple[str, str], Sequence[Sequence[Mapping[str, Any]]]],
  path: str | os.PathLike,
  *,
  title: str = "",
) -> Path:
  """Validation accuracy (left) and loss (right) per epoch of every architecture/optimizer.

  Each (model, optimizer) is one line, the mean over its seeds, with a band from the
  lowest to the highest seed; colour marks the architecture, line style the optimizer.

  Args:
    histories: (model, optimizer) to a list of ``metrics.jsonl`` histories, one per seed.
    path: the PNG to write.
    title: the figure's title.
  """
  models = list(dict.fromkeys(m for m, _ in histories))
  optimizers = list(dict.fromkeys(o for _, o in histories))
  styles = ["-", "--", ":", "-."]
  fig = _figure("validation_curves")
  axes = fig.subplots(1, 2)
  last_epoch = 1
  plotted = False
  for (model, optimizer), runs in histories.items():
    color = f"C{models.index(model) % 10}"
    style = styles[optimizers.index(optimizer) % len(styles)]
    for ax, key, scale in ((axes[0], "val_accuracy", 100.0), (axes[1], "val_loss", 1.0)):
      by_epoch: dict[int, list[float]] = {}
      for history in runs:
        for row in history:
          if row.get(key) is not None:
            by_epoch.setdefault(row["epoch"], []).append(scale * row[key])
      if not by_epoch:
        continue
      plotted = True
      epochs = sorted(by_epoch)
      last_epoch = max(last_epoch, epochs[-1])
      values = [by_epoch[e] for e in epochs]
      ax.plot(
        epochs,
        [np.mean(v) for v in values],
        style,
        marker="o",
        markersize=3,
        color=color,
        label=f"{model} / {optimizer}",
      )
      if max(len(v) for v in values) > 1:
        ax.fill_between(
          epochs,
          [min(v) for v in values],
          [max(v) for v in values],
          color=color,
          alpha=0.15,
          linewidth=0,
        )
  for ax, name in ((axes[0], "validation accuracy (%)"), (axes[1], "validation loss")):
    ax.set_xlabel("epoch")
    ax.set_ylabel(name)
    ax.set_xticks(_epoch_ticks(last_epoch))
    ax.grid(alpha=0.3)
    if not plotted:
      ax.text(
        0.5,
        0.5,
        "no validation split",
        ha="center",
        va="center",
        transform=ax.transAxes,
        fontsize=14,
      )
  axes[0].set_title("Validation accuracy (mean over seeds, band: min to max)")
  axes[1].set_title("Validation loss (mean over seeds)")
  if plotted:
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
  if title:
    fig.suptitle(title)
  return figures.save(fig, path)
