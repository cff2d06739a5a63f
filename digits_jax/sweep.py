"""Sweeps: many runs (architectures x optimizers x seeds), one accuracy table.

Each run gets its own work directory ``<workdir>/<model>-<optimizer>-seed<seed>``
with the files of :func:`digits_jax.train.train_and_evaluate`. A run whose
directory already holds results for the same config is not trained again and an
interrupted run resumes from its last checkpoint, so a sweep started again picks
up where it stopped. A run directory that holds another config's results stops
the sweep before anything runs (unless ``overwrite``). The table groups runs by
(model, optimizer) and gives the mean and standard deviation over seeds, each
distinct run counted once.
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

from digits_jax import data, files, models, parallel, plots, train, workdirs
from digits_jax.config import Config, resolve

log = logging.getLogger(__name__)

TABLE_COLUMNS = (
    "model", "optimizer", "dataset", "seeds", "test_acc_mean", "test_acc_std",
    "val_acc_mean", "best_epoch_mean", "epochs", "batch_size", "params",
    "seconds_per_run", "seconds_per_epoch", "reported",
)


def expand(base: Config, model_names: Sequence[str], optimizers: Sequence[str | None],
           seeds: Sequence[int]) -> list[Config]:
  """The resolved configs of the grid, validated before anything runs.

  A name or seed listed twice gives its runs once.
  """
  configs = [resolve(base.replace(model=m, optimizer=o, seed=s))
             for m, o, s in itertools.product(model_names, optimizers, seeds)]
  return list(dict.fromkeys(configs))


def run_name(config: Config) -> str:
  return f"{config.model}-{config.optimizer}-seed{config.seed}"


def finished_results(config: Config, run_dir: Path) -> dict[str, Any] | None:
  """The results of an earlier identical run in ``run_dir``, if it finished."""
  return workdirs.finished_results(config, run_dir)


def run_sweep(configs: Iterable[Config], workdir: str | Path, *,
              load: Callable[[Config], data.Datasets],
              epoch_loop: str = "auto",
              overwrite: bool = False,
              vmap: bool = False) -> list[dict[str, Any]]:
  """Trains every config (skipping finished ones, resuming interrupted ones).

  Args:
    configs: resolved configs, e.g. from :func:`expand`; each distinct one runs once.
    workdir: the sweep's directory; each run gets a subdirectory.
    load: returns the datasets for a config (called once per distinct dataset).
    epoch_loop: see :func:`digits_jax.train.make_epoch_fn`.
    overwrite: delete what the run directories hold and train every run again.
    vmap: train the unfinished runs that differ only in seed and learning rate
      together, in one vmapped step (:func:`digits_jax.parallel.train_group`). A
      group that is interrupted starts again from its first epoch.

  Returns:
    The results of every run, in the order of ``configs``.

  Raises:
    WorkdirError: before anything runs, if a run directory holds another config's run.
  """
  workdir = Path(workdir)
  configs = list(dict.fromkeys(configs))
  # Every run directory is checked before the first run starts.
  finished = {c: workdirs.check(c, workdir / run_name(c), overwrite=overwrite) for c in configs}
  cache: dict[tuple, data.Datasets] = {}

  def datasets(config: Config) -> data.Datasets:
    key = (config.dataset, config.validation_size)
    if key not in cache:
      cache[key] = load(config)
    return cache[key]

  if vmap:
    groups: dict[tuple, list[Config]] = {}
    for config in configs:
      if finished[config] is None:
        groups.setdefault(parallel.group_key(config), []).append(config)
    for group in groups.values():
      if len(group) > 1:
        run_dirs = [workdir / run_name(c) for c in group]
        for run_dir in run_dirs:
          workdirs.clear(run_dir)  # a group restarts from scratch: no stale checkpoints
        log.info("training %s together (vmapped)", ", ".join(d.name for d in run_dirs))
        for config, results in zip(group, parallel.train_group(
            group, run_dirs, datasets=datasets(group[0]), epoch_loop=epoch_loop)):
          finished[config] = results

  all_results = []
  for config in configs:
    run_dir = workdir / run_name(config)
    results = finished[config]
    if results is not None:
      log.info("%s: already finished, skipped", run_dir.name)
    else:
      results = train.train_and_evaluate(config, run_dir, datasets=datasets(config),
                                         epoch_loop=epoch_loop, overwrite=overwrite)
      log.info("%s: test accuracy %.4f", run_dir.name, results["test_accuracy"])
    all_results.append({**results, "dataset": config.dataset, "epochs": config.epochs,
                        "batch_size": config.batch_size, "run": run_dir.name})
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


def write_plots(results: Sequence[dict[str, Any]], workdir: str | Path) -> list[Path]:
  """Writes the sweep's figures next to ``results.md``.

  ``comparison.png``: test accuracy per architecture and optimizer with the spread over
  seeds, and against the parameter count (:func:`digits_jax.plots.sweep_comparison`).
  ``validation_curves.png``: every architecture/optimizer's validation accuracy and loss
  per epoch, overlaid, read from each run's ``metrics.jsonl``
  (:func:`digits_jax.plots.validation_curves`).

  Args:
    results: as :func:`run_sweep` returns them (``run`` names each run's directory).
    workdir: the sweep's directory.

  Returns:
    The two paths written.
  """
  workdir = Path(workdir)
  histories: dict[tuple[str, str], list[list[dict[str, Any]]]] = {}
  for r in results:
    run = r.get("run") or f"{r['model']}-{r['optimizer']}-seed{r['seed']}"
    histories.setdefault((r["model"], r["optimizer"]), []).append(
        files.read_jsonl(workdir / run / "metrics.jsonl"))
  title = f"Sweep {workdir.name}: {len(results)} runs"
  return [plots.sweep_comparison(results, workdir / "comparison.png", title=title),
          plots.validation_curves(histories, workdir / "validation_curves.png", title=title)]
