"""A sweep's table per configuration (mean and spread over seeds) and its figures."""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from digits_jax import files, models
from digits_jax.analysis import plots

TABLE_COLUMNS = (
  "model",
  "optimizer",
  "dataset",
  "seeds",
  "test_acc_mean",
  "test_acc_std",
  "val_acc_mean",
  "best_epoch_mean",
  "epochs",
  "batch_size",
  "params",
  "seconds_per_run",
  "seconds_per_epoch",
  "reported",
)


def _std(xs: list[float]) -> float:
  return statistics.stdev(xs) if len(xs) > 1 else math.nan


def summarize(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per configuration (model, optimizer, dataset, varied settings) over its seeds.

  The varied settings (``settings`` of each result, see :func:`digits_jax.sweep.run_sweep`)
  become columns after ``optimizer``.
  """
  by_config: dict[tuple, list[dict[str, Any]]] = {}
  for r in results:
    settings = tuple(sorted(r.get("settings", {}).items()))
    by_config.setdefault((r["model"], r["optimizer"], r["dataset"], settings), []).append(r)
  rows = []
  for (model, optimizer, dataset, settings), group in by_config.items():
    test = [r["test_accuracy"] for r in group]
    val = [r["val_accuracy"] for r in group if r["val_accuracy"] is not None]
    rows.append(
      {
        "model": model,
        "optimizer": optimizer,
        **dict(settings),
        "dataset": dataset,
        "seeds": len(group),
        "test_acc_mean": statistics.fmean(test),
        "test_acc_std": _std(test),
        "val_acc_mean": statistics.fmean(val) if val else math.nan,
        "best_epoch_mean": statistics.fmean(r["best_epoch"] for r in group),
        "epochs": group[0]["epochs"],
        "batch_size": group[0]["batch_size"],
        "params": group[0]["num_params"],
        "seconds_per_run": statistics.fmean(r["train_seconds"] for r in group),
        "seconds_per_epoch": statistics.fmean(r["seconds_per_epoch"] for r in group),
        "reported": models.get_spec(model).reported,
      }
    )
  return rows


def table_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
  """:data:`TABLE_COLUMNS` with the varied settings of ``rows`` after ``optimizer``."""
  extra = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in TABLE_COLUMNS]
  return [*TABLE_COLUMNS[:2], *extra, *TABLE_COLUMNS[2:]]


def _fmt(column: str, value: Any) -> str:
  if isinstance(value, float):
    if math.isnan(value):
      return "-"
    if column.startswith(("test_acc", "val_acc")):
      return f"{100 * value:.2f}%"
    return f"{value:.1f}"
  return str(value)


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
  """The table as GitHub Markdown, accuracies in percent."""
  columns = table_columns(rows)
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  for row in rows:
    lines.append("| " + " | ".join(_fmt(c, row.get(c)) for c in columns) + " |")
  return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
  """The table as CSV with full-precision numbers (accuracies as fractions)."""
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=table_columns(rows), lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  return out.getvalue()


def write_tables(
  rows: Sequence[dict[str, Any]],
  workdir: str | Path,
  *,
  missing: Sequence[str] = (),
  total: int | None = None,
) -> str:
  """Writes ``results.csv`` and ``results.md`` into ``workdir``; returns the console table.

  The sweep's one Markdown table per configuration is ``compare.md`` (written by
  :func:`digits_jax.analysis.compare_report.write_comparison`, with intervals and tests);
  ``results.md`` points to it and names the runs that have not finished, and
  ``results.csv`` keeps the sweep's own columns (epochs, batch size, best epoch, the
  figure each model's source reports).

  Args:
    rows: as :func:`summarize` gives them.
    workdir: the sweep's directory.
    missing: runs of the grid that have not finished; ``results.md`` names them.
    total: the number of runs in the grid (for that note).
  """
  workdir = Path(workdir)
  note = ""
  if missing:
    total = total if total is not None else len(missing)
    note = (
      f"\n{len(missing)} of {total} runs have not finished and are not in this table: "
      f"{', '.join(missing)}.\n"
    )
  pointer = (
    "# Sweep results\n\nThe table per configuration, with intervals and paired tests: "
    "[compare.md](compare.md) (compare.csv). results.csv adds the sweep's own columns per "
    "configuration (epochs, batch size, mean best epoch, the figure each model's source "
    "reports).\n"
  )
  files.write_text(workdir / "results.md", pointer + note)
  files.write_text(workdir / "results.csv", to_csv(rows))
  return to_markdown(rows) + note


def write_plots(results: Sequence[dict[str, Any]], workdir: str | Path) -> list[Path]:
  """Writes the sweep's figures next to ``results.csv``.

  ``comparison.png``: test accuracy per architecture and optimizer with the spread over
  seeds, and against the parameter count (:func:`digits_jax.analysis.plots.sweep_comparison`).
  ``validation_curves.png``: every architecture/optimizer's validation accuracy and loss
  per epoch, overlaid, read from each run's ``metrics.jsonl``.

  Args:
    results: as :func:`digits_jax.sweep.run_sweep` returns them (``run`` names each run's
      directory).
    workdir: the sweep's directory.

  Returns:
    The two paths written.
  """
  workdir = Path(workdir)
  histories: dict[tuple[str, str], list[list[dict[str, Any]]]] = {}
  for r in results:
    histories.setdefault((r.get("variant") or r["model"], r["optimizer"]), []).append(
      files.read_jsonl(workdir / r["run"] / "metrics.jsonl")
    )
  title = f"Sweep {workdir.name}: {len(results)} runs"
  return [
    plots.sweep_comparison(results, workdir / "comparison.png", title=title),
    plots.validation_curves(histories, workdir / "validation_curves.png", title=title),
  ]
