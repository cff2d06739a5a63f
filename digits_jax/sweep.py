"""Sweeps: many runs (architectures x optimizers x seeds), one accuracy table.

Each run gets its own work directory ``<workdir>/<model>-<optimizer>-seed<seed>``
with the files of :func:`digits_jax.train.train_and_evaluate`. A run whose
directory already holds results for the same config is not trained again, so a
sweep started again picks up where it stopped. The table groups runs by
(model, optimizer) and gives the mean and standard deviation over seeds.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from digits_jax import data, files, models, train
from digits_jax.config import Config, resolve

log = logging.getLogger(__name__)

TABLE_COLUMNS = (
    "model", "optimizer", "dataset", "seeds", "test_acc_mean", "test_acc_std",
    "val_acc_mean", "best_epoch_mean", "epochs", "batch_size", "params",
    "seconds_per_run", "seconds_per_epoch", "reported",
)


def expand(base: Config, model_names: Sequence[str], optimizers: Sequence[str | None],
           seeds: Sequence[int]) -> list[Config]:
  """The resolved configs of the grid, validated before anything runs."""
  return [resolve(base.replace(model=m, optimizer=o, seed=s))
          for m, o, s in itertools.product(model_names, optimizers, seeds)]


def run_name(config: Config) -> str:
  return f"{config.model}-{config.optimizer}-seed{config.seed}"


def finished_results(config: Config, run_dir: Path) -> dict[str, Any] | None:
  """The results of an earlier identical run in ``run_dir``, if it finished."""
  try:
    saved = files.read_json(run_dir / "config.json")["config"]
    results = files.read_json(run_dir / "results.json")
  except (OSError, ValueError, KeyError):
    return None
  return results if saved == config.to_dict() else None


def run_sweep(configs: Iterable[Config], workdir: str | Path, *,
              load: Callable[[Config], data.Datasets],
              epoch_loop: str = "auto") -> list[dict[str, Any]]:
  """Trains every config (skipping finished ones) and returns their results.

  Args:
    configs: resolved configs, e.g. from :func:`expand`.
    workdir: the sweep's directory; each run gets a subdirectory.
    load: returns the datasets for a config (called once per distinct dataset).
    epoch_loop: see :func:`digits_jax.train.make_epoch_fn`.
  """
  workdir = Path(workdir)
  cache: dict[tuple, data.Datasets] = {}
  all_results = []
  for config in configs:
    run_dir = workdir / run_name(config)
    results = finished_results(config, run_dir)
    if results is not None:
      log.info("%s: already finished, skipped", run_dir.name)
    else:
      key = (config.dataset, config.validation_size)
      if key not in cache:
        cache[key] = load(config)
      results = train.train_and_evaluate(config, run_dir, datasets=cache[key],
                                         epoch_loop=epoch_loop)
      log.info("%s: test accuracy %.4f", run_dir.name, results["test_accuracy"])
    all_results.append({**results, "dataset": config.dataset, "epochs": config.epochs,
                        "batch_size": config.batch_size})
  return all_results


def _std(xs: list[float]) -> float:
  return statistics.stdev(xs) if len(xs) > 1 else math.nan


def summarize(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per (model, optimizer, dataset): mean and std over seeds."""
  groups: dict[tuple, list[dict[str, Any]]] = {}
  for r in results:
    groups.setdefault((r["model"], r["optimizer"], r["dataset"]), []).append(r)
  rows = []
  for (model, optimizer, dataset), runs in groups.items():
    test = [r["test_accuracy"] for r in runs]
    val = [r["val_accuracy"] for r in runs if r["val_accuracy"] is not None]
    rows.append({
        "model": model,
        "optimizer": optimizer,
        "dataset": dataset,
        "seeds": len(runs),
        "test_acc_mean": statistics.fmean(test),
        "test_acc_std": _std(test),
        "val_acc_mean": statistics.fmean(val) if val else math.nan,
        "best_epoch_mean": statistics.fmean(r["best_epoch"] for r in runs),
        "epochs": runs[0]["epochs"],
        "batch_size": runs[0]["batch_size"],
        "params": runs[0]["num_params"],
        "seconds_per_run": statistics.fmean(r["train_seconds"] for r in runs),
        "seconds_per_epoch": statistics.fmean(r["seconds_per_epoch"] for r in runs),
        "reported": models.get_spec(model).reported,
    })
  return rows


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
  lines = ["| " + " | ".join(TABLE_COLUMNS) + " |",
           "|" + "---|" * len(TABLE_COLUMNS)]
  for row in rows:
    lines.append("| " + " | ".join(_fmt(c, row[c]) for c in TABLE_COLUMNS) + " |")
  return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
  """The table as CSV with full-precision numbers (accuracies as fractions)."""
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=TABLE_COLUMNS, lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  return out.getvalue()


def write_tables(rows: Sequence[dict[str, Any]], workdir: str | Path) -> str:
  """Writes ``results.md`` and ``results.csv`` into ``workdir``; returns the Markdown."""
  workdir = Path(workdir)
  markdown = to_markdown(rows)
  files.write_text(workdir / "results.md", markdown)
  files.write_text(workdir / "results.csv", to_csv(rows))
  return markdown
