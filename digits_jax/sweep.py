"""Sweeps: a grid of configs trained one after another, then one table.

The grid is the product of lists of :class:`~digits_jax.config.Config` values (models,
optimizers, seeds, and any recipe setting: ``learning_rate=[1e-3, 3e-3]``), each config
validated before anything runs. Every run gets its own directory under the sweep's,
named by what sets it apart (:func:`run_name`). Finished runs are skipped, an
interrupted run resumes from its last checkpoint, so a sweep started again picks up
where it stopped. A run directory holding another config's results stops the sweep
before anything runs (unless ``overwrite``). The table groups runs by model, optimizer
and every varied setting, and gives the mean and standard deviation over seeds.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from digits_jax import data, files, models, runs
from digits_jax.analysis import plots
from digits_jax.config import SHORT_NAMES, Config, own_settings, resolve, varied_settings
from digits_jax.training import groups, workdirs

log = logging.getLogger(__name__)

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


def expand(base: Config, grid: Mapping[str, Sequence[Any]]) -> list[Config]:
  """The resolved configs of the product of ``grid``'s lists, validated before anything runs.

  Args:
    base: the settings every run shares.
    grid: Config field name to the values it takes (``{"model": [...], "seed": [0, 1]}``).

  A value listed twice gives its runs once.

  Raises:
    ConfigError, UnknownModelError: a field or value that cannot work.
  """
  names = list(grid)
  configs = [
    resolve(base.replace(**dict(zip(names, values, strict=True))))
    for values in itertools.product(*grid.values())
  ]
  return list(dict.fromkeys(configs))


def _value(v: Any) -> str:
  return f"{v:g}" if isinstance(v, float) else str(v).lower() if isinstance(v, bool) else str(v)


def run_name(config: Config) -> str:
  """``model-optimizer[-setting...]-seedN``: the settings that differ from the recipe."""
  settings = "".join(
    f"-{SHORT_NAMES.get(k, k)}{_value(v)}" for k, v in own_settings(config).items()
  )
  return f"{config.model}-{config.optimizer}{settings}-seed{config.seed}"


def _legacy_names(config: Config) -> list[str]:
  """Names earlier versions gave this run's directory: ``model-optimizer-seedN``."""
  names = [config.model] + [a for a, m in models.ALIASES.items() if m == config.model]
  return [f"{m}-{config.optimizer}-seed{config.seed}" for m in names]


def run_dir(workdir: Path, config: Config) -> Path:
  """The directory of ``config``'s run: :func:`run_name`, or the name an earlier version gave.

  A directory under an earlier name is used when it holds this very run, so sweeps
  written before stay finished.
  """
  current = workdir / run_name(config)
  if current.exists():
    return current
  for name in _legacy_names(config):
    legacy = workdir / name
    if legacy != current and workdirs.finished_results(config, legacy) is not None:
      return legacy
  return current


def run_dirs(workdir: str | Path, configs: Sequence[Config]) -> list[Path]:
  """The directories of ``configs``' runs under the sweep's ``workdir``."""
  return [run_dir(Path(workdir), c) for c in dict.fromkeys(configs)]


def variant(config: Config, varied: Sequence[str]) -> str:
  """The model's name with the values of the ``varied`` settings (``conv2_dense64 lr=0.003``)."""
  return " ".join(
    [config.model] + [f"{SHORT_NAMES.get(k, k)}={_value(getattr(config, k))}" for k in varied]
  )


def run_sweep(
  configs: Iterable[Config],
  workdir: str | Path,
  *,
  load: Callable[[Config], data.Datasets],
  overwrite: bool = False,
  vmap: bool = False,
) -> list[dict[str, Any]]:
  """Trains every config (skipping finished ones, resuming interrupted ones).

  Args:
    configs: resolved configs, e.g. from :func:`expand`; each distinct one runs once.
    workdir: the sweep's directory; each run gets a subdirectory (:func:`run_dir`).
    load: returns the datasets for a config (called once per distinct dataset).
    overwrite: delete what the run directories hold and train every run again.
    vmap: train the unfinished runs that differ only in seed and learning rate together,
      in one vmapped step (:func:`digits_jax.training.groups.train_group`). A group that is
      interrupted starts again from its first epoch.

  Returns:
    The results of every run, in the order of ``configs``, each with ``run`` (its
    directory's name), ``variant``, ``dataset``, ``epochs``, ``batch_size`` and the
    values of the varied settings.

  Raises:
    WorkdirError: before anything runs, if a run directory holds another config's run.
  """
  workdir = Path(workdir)
  configs = list(dict.fromkeys(configs))
  dirs = {c: run_dir(workdir, c) for c in configs}
  # Every run directory is checked before the first run starts.
  finished = {c: workdirs.check(c, dirs[c], overwrite=overwrite) for c in configs}
  cache: dict[tuple, data.Datasets] = {}

  def datasets(config: Config) -> data.Datasets:
    key = (config.dataset, config.validation_size)
    if key not in cache:
      cache[key] = load(config)
    return cache[key]

  if vmap:
    batches: dict[tuple, list[Config]] = {}
    for config in configs:
      if finished[config] is None:
        batches.setdefault(groups.group_key(config), []).append(config)
    for group in batches.values():
      if len(group) < 2:
        continue
      run_dirs = [dirs[c] for c in group]
      for path in run_dirs:
        workdirs.clear(path)  # a group restarts from scratch: no stale checkpoints
      log.info("training %s together (vmapped)", ", ".join(d.name for d in run_dirs))
      trained = groups.train_group(group, run_dirs, datasets=datasets(group[0]))
      group_seconds = sum(r["epoch_seconds"] for r in trained[0].history) * len(group)
      for config, path, one in zip(group, run_dirs, trained, strict=True):
        finished[config] = runs.finish(
          config, path, one, datasets(config), group_size=len(group), group_seconds=group_seconds
        )

  varied = varied_settings(configs)
  all_results = []
  for config in configs:
    path = dirs[config]
    results = finished[config]
    if results is not None:
      log.info("%s: already finished, skipped", path.name)
    else:
      results = runs.train_and_evaluate(
        config, path, datasets=datasets(config), overwrite=overwrite
      )
      log.info("%s: test accuracy %.4f", path.name, results["test_accuracy"])
    all_results.append(
      {
        **results,
        "model": config.model,
        "dataset": config.dataset,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "run": path.name,
        "variant": variant(config, varied),
        "settings": {k: getattr(config, k) for k in varied},
      }
    )
  return all_results


def _std(xs: list[float]) -> float:
  return statistics.stdev(xs) if len(xs) > 1 else math.nan


def summarize(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per configuration (model, optimizer, dataset, varied settings) over its seeds.

  The varied settings (``settings`` of each result, see :func:`run_sweep`) become columns
  after ``optimizer``.
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
  seeds, and against the parameter count (:func:`digits_jax.analysis.plots.sweep_comparison`).
  ``validation_curves.png``: every architecture/optimizer's validation accuracy and loss
  per epoch, overlaid, read from each run's ``metrics.jsonl``.

  Args:
    results: as :func:`run_sweep` returns them (``run`` names each run's directory).
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
