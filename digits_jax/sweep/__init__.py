"""Sweeps: a grid of configs trained one after another, then one table.

The grid is the product of lists of :class:`~digits_jax.config.Config` values (models,
optimizers, seeds, and any recipe setting: ``learning_rate=[1e-3, 3e-3]``), each config
validated before anything runs. Every run gets its own directory under the sweep's,
named by what sets it apart (:func:`run_name`). Finished runs are skipped, an
interrupted run resumes from its last checkpoint, so a sweep started again picks up
where it stopped. A run directory holding another config's results stops the sweep
before anything runs (unless ``overwrite``). The table groups runs by model, optimizer
and every varied setting, and gives the mean and standard deviation over seeds.

Several worker processes may split one sweep (a SLURM job array, one process per GPU):
worker ``i`` of ``N`` trains runs ``i, i + N, ...`` of the grid (:func:`share`) into the
same directory. The first records the grid in ``sweep.json`` and a worker with another
grid stops at once (:func:`record_grid`); a run is trained only under its lock file in
``.locks/`` (:func:`digits_jax.files.exclusive_lock`), so a worker started twice never
trains a run at the same time as its twin; :func:`collect` writes the table of whatever
has finished and names what has not.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import itertools
import json
import logging
import math
import statistics
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax

from digits_jax import data, files, models, rundir, runs
from digits_jax.analysis import compare_report, comparison, plots
from digits_jax.config import (
  SHORT_NAMES,
  Config,
  ConfigError,
  own_settings,
  resolve,
  varied_settings,
)
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

# What a sweep keeps next to its run directories: the grid its workers share, and the
# lock files of its runs, its grid record and its table.
SWEEP_FILE = "sweep.json"
LOCKS_DIR = ".locks"
# How long a worker waits for another to finish writing sweep.json, or the table.
GRID_WAIT_S = 30.0
COLLECT_WAIT_S = 600.0


class WorkerError(ConfigError):
  """A sweep worker that cannot go on: a bad worker index, another grid, no file locks."""


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


def run_dir(workdir: Path, config: Config) -> Path:
  """The directory of ``config``'s run: ``workdir/``:func:`run_name`."""
  return workdir / run_name(config)


def run_dirs(workdir: str | Path, configs: Sequence[Config]) -> list[Path]:
  """The directories of ``configs``' runs under the sweep's ``workdir``."""
  return [run_dir(Path(workdir), c) for c in dict.fromkeys(configs)]


def variant(config: Config, varied: Sequence[str]) -> str:
  """The model's name with the values of the ``varied`` settings (``conv2_dense64 lr=0.003``)."""
  return " ".join(
    [config.model] + [f"{SHORT_NAMES.get(k, k)}={_value(getattr(config, k))}" for k in varied]
  )


def share(configs: Sequence[Config], num_workers: int, worker_index: int) -> list[Config]:
  """The runs worker ``worker_index`` of ``num_workers`` trains: run ``i`` goes to worker ``i % N``.

  A fixed split of the ordered grid: every run belongs to exactly one worker, whoever
  starts first or is started again.

  Raises:
    WorkerError: ``num_workers`` below 1, or ``worker_index`` outside ``0..num_workers - 1``.
  """
  if num_workers < 1:
    raise WorkerError(f"--num_workers must be at least 1, got {num_workers}")
  if not 0 <= worker_index < num_workers:
    raise WorkerError(
      f"--worker_index={worker_index} is out of range for --num_workers={num_workers}: "
      f"workers are numbered 0 to {num_workers - 1}"
    )
  return list(dict.fromkeys(configs))[worker_index::num_workers]


def grid_digest(configs: Sequence[Config]) -> str:
  """SHA-256 of the grid's ordered run identities: equal exactly when the split is equal."""
  identities = [c.identity() for c in dict.fromkeys(configs)]
  return hashlib.sha256(json.dumps(identities, sort_keys=True).encode()).hexdigest()


def _lock(workdir: Path, name: str, *, wait_s: float = 0.0):
  if jax.process_count() > 1:
    # The processes of one multi-process run train every run together: a lock taken by one
    # would turn the others away and leave them waiting in a collective. Such a sweep is a
    # single worker (run_sweep refuses a split), so there is no one to lock out.
    return contextlib.nullcontext()
  return files.exclusive_lock(workdir / LOCKS_DIR / f"{name}.lock", wait_s=wait_s)


def _read_record(path: Path) -> dict[str, Any] | None:
  if not path.exists():
    return None
  try:
    record = files.read_json(path)
    if not isinstance(record.get("runs"), list) or not isinstance(record.get("digest"), str):
      raise ValueError("no 'runs' list and 'digest'")
  except (OSError, ValueError, AttributeError) as e:
    raise WorkerError(
      f"{path} cannot be read as a sweep's grid ({type(e).__name__}: {e}); delete it (the "
      "runs are kept) and start the workers again"
    ) from e
  return record


def _differences(recorded: Sequence[str], ours: Sequence[str]) -> str:
  def listing(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

  only_recorded = [n for n in recorded if n not in set(ours)]
  only_ours = [n for n in ours if n not in set(recorded)]
  if not only_recorded and not only_ours:
    return "the same run names, in another order or with other settings"
  parts = []
  if only_recorded:
    parts.append(f"only in the recorded grid: {listing(only_recorded)}")
  if only_ours:
    parts.append(f"only in this command's: {listing(only_ours)}")
  return "; ".join(parts)


def record_grid(
  workdir: str | Path, configs: Sequence[Config], *, replace: bool = False, write: bool = True
) -> None:
  """Records the grid in ``workdir/sweep.json``, or checks it against the one recorded.

  Every worker of a sweep must split the same ordered grid, else runs would be left out or
  mixed with another sweep's. The grid recorded there may be replaced only once all its
  runs have finished (a finished sweep may be extended), or with ``replace``.

  Args:
    workdir: the sweep's directory.
    configs: the grid, in order (as :func:`expand` gives it).
    replace: replace a recorded grid even if some of its runs have not finished.
    write: record the grid if none is; false only checks (for collecting).

  Raises:
    WorkerError: another grid with unfinished runs is recorded (naming how the two
      differ), or file locks do not work in ``workdir``.
  """
  workdir = Path(workdir)
  configs = list(dict.fromkeys(configs))
  ours = {"digest": grid_digest(configs), "runs": [run_dir(workdir, c).name for c in configs]}
  path = workdir / SWEEP_FILE
  with _guard(workdir, "sweep", wait_s=GRID_WAIT_S):
    recorded = _read_record(path)
    if recorded is not None and recorded["digest"] == ours["digest"]:
      return
    if recorded is not None:
      unfinished = [n for n in recorded["runs"] if not (workdir / n / "results.json").exists()]
      if (unfinished and not replace) or not write:
        raise WorkerError(
          f"{workdir} belongs to another sweep: {path} records a grid of "
          f"{len(recorded['runs'])} runs ({len(unfinished)} not finished), this command's "
          f"has {len(configs)} ({_differences(recorded['runs'], ours['runs'])}). Start "
          "every worker of a sweep with the same flags; for a new sweep choose another "
          f"--workdir, or, if the one recorded is abandoned, delete {path} (finished runs the "
          "new grid shares are reused)"
        )
      log.info("%s: replacing the grid recorded there (%d runs)", path, len(recorded["runs"]))
    if write and jax.process_index() == 0:
      files.write_json(path, ours)


@contextlib.contextmanager
def _guard(workdir: Path, name: str, *, wait_s: float) -> Iterator[None]:
  """A lock that waits, turning lock trouble into a :class:`WorkerError`."""
  try:
    with _lock(workdir, name, wait_s=wait_s):
      yield
  except files.LockBusyError as e:
    raise WorkerError(
      f"{e.path} has been held by {e.holder} for over {wait_s:.0f} s; if that process is "
      "hung, stop it and start this command again"
    ) from e
  except files.LockError as e:
    raise WorkerError(str(e)) from e


def _row(config: Config, path: Path, results: dict[str, Any], varied: Sequence[str]) -> dict:
  return {
    **results,
    "model": config.model,
    "dataset": config.dataset,
    "epochs": config.epochs,
    "batch_size": config.batch_size,
    "run": path.name,
    "variant": variant(config, varied),
    "settings": {k: getattr(config, k) for k in varied},
  }


def run_sweep(
  configs: Iterable[Config],
  workdir: str | Path,
  *,
  load: Callable[[Config], data.Datasets],
  overwrite: bool = False,
  vmap: bool = False,
  num_workers: int = 1,
  worker_index: int = 0,
) -> list[dict[str, Any]]:
  """Trains this worker's share of the configs (skipping finished ones, resuming interrupted ones).

  Args:
    configs: resolved configs, e.g. from :func:`expand`; each distinct one runs once.
    workdir: the sweep's directory; each run gets a subdirectory (:func:`run_dir`).
    load: returns the datasets for a config (called once per distinct dataset).
    overwrite: delete what this worker's run directories hold and train them again.
    vmap: train the unfinished runs that differ only in seed and learning rate together,
      in one vmapped step (:func:`digits_jax.training.groups.train_group`). A group that is
      interrupted starts again from its first epoch.
    num_workers, worker_index: train only the runs :func:`share` gives this worker. A run
      whose lock another process holds (the same worker started twice) is left to it.

  Returns:
    The results of this worker's finished runs, in the order of ``configs``, each with
    ``run`` (its directory's name), ``variant``, ``dataset``, ``epochs``, ``batch_size``
    and the values of the varied settings.

  Raises:
    WorkerError: before anything runs, if the worker index is out of range or another
      grid is recorded in ``workdir`` (:func:`record_grid`).
    WorkdirError: before anything runs, if a run directory holds another config's run.
  """
  workdir = Path(workdir)
  configs = list(dict.fromkeys(configs))
  if num_workers > 1 and jax.process_count() > 1:
    raise WorkerError(
      f"this sweep runs as {jax.process_count()} processes of one jax.distributed runtime "
      f"and as worker {worker_index} of {num_workers}: split a sweep into workers or "
      "spread each run over processes, not both (pass --num_workers=1, or start the "
      "workers without the distributed runtime, --distributed=off)"
    )
  mine = share(configs, num_workers, worker_index)
  dirs = {c: run_dir(workdir, c) for c in mine}
  # Every run directory is checked before anything is written or the first run starts.
  finished = {c: workdirs.check(c, dirs[c], overwrite=overwrite) for c in mine}
  record_grid(workdir, configs, replace=overwrite)
  if num_workers > 1:
    log.info(
      "worker %d of %d: %d of the grid's %d runs (%d finished already)",
      worker_index,
      num_workers,
      len(mine),
      len(configs),
      sum(r is not None for r in finished.values()),
    )
  cache: dict[tuple, data.Datasets] = {}

  def datasets(config: Config) -> data.Datasets:
    key = (config.dataset, config.validation_size)
    if key not in cache:
      cache[key] = load(config)
    return cache[key]

  def still_unfinished(config: Config) -> bool:
    # Read again under the run's lock: another process may have finished it meanwhile.
    return overwrite or workdirs.finished_results(config, dirs[config]) is None

  if vmap:
    batches: dict[tuple, list[Config]] = {}
    for config in mine:
      if finished[config] is None:
        batches.setdefault(groups.group_key(config), []).append(config)
    for group in batches.values():
      if len(group) < 2:
        continue
      with contextlib.ExitStack() as locks:
        try:
          for config in group:
            locks.enter_context(_guard_run(workdir, config))
        except files.LockBusyError:
          continue  # a member is being trained elsewhere: the loop below takes the rest
        group = [c for c in group if still_unfinished(c)]
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
  for config in mine:
    path = dirs[config]
    results = finished[config]
    if results is not None:
      log.info("%s: already finished, skipped", path.name)
    else:
      try:
        with _guard_run(workdir, config):
          if still_unfinished(config):
            log.info("%s: training", path.name)
            results = runs.train_and_evaluate(
              config, path, datasets=datasets(config), overwrite=overwrite
            )
            log.info("%s: test accuracy %.4f", path.name, results["test_accuracy"])
          else:
            results = workdirs.finished_results(config, path)
            log.info("%s: finished by another process meanwhile, skipped", path.name)
      except files.LockBusyError as e:
        log.warning("%s: being trained by %s; left to it", path.name, e.holder)
        continue
    all_results.append(_row(config, path, results, varied))
  return all_results


@contextlib.contextmanager
def _guard_run(workdir: Path, config: Config) -> Iterator[None]:
  """The lock of one run: :class:`files.LockBusyError` if held, else held for the block."""
  try:
    with _lock(workdir, run_name(config)):
      yield
  except files.LockBusyError:
    raise
  except files.LockError as e:
    raise WorkerError(str(e)) from e


@dataclasses.dataclass(frozen=True)
class Collected:
  """What :func:`collect` found and wrote.

  Attributes:
    results: the finished runs' results, in grid order (as :func:`run_sweep` gives them).
    missing: the directory names of the grid's runs that have not finished.
    worker_of: each missing run's worker (for the split :func:`collect` was given).
    markdown: the console table of :func:`write_tables`; empty when nothing has finished.
    comparison: the comparison of the finished runs, or ``None``.
    comparison_error: why there is no comparison, if there is none.
  """

  results: list[dict[str, Any]]
  missing: list[str]
  worker_of: dict[str, int]
  markdown: str
  comparison: comparison.Comparison | None
  comparison_error: str | None


def finished_runs(
  workdir: str | Path, configs: Sequence[Config]
) -> tuple[list[dict[str, Any]], list[str]]:
  """The results of the grid's finished runs (grid order) and the names of the others."""
  workdir = Path(workdir)
  configs = list(dict.fromkeys(configs))
  varied = varied_settings(configs)
  results, missing = [], []
  for config in configs:
    path = run_dir(workdir, config)
    done = workdirs.finished_results(config, path)
    if done is None:
      missing.append(path.name)
    else:
      results.append(_row(config, path, done, varied))
  return results, missing


def _collect_once(workdir: Path, configs: list[Config], num_workers: int) -> Collected:
  position = {run_dir(workdir, c).name: i for i, c in enumerate(configs)}
  results, missing = finished_runs(workdir, configs)
  worker_of = {name: position[name] % num_workers for name in missing}
  if not results:
    return Collected(results, missing, worker_of, "", None, "no run has finished")
  markdown = write_tables(summarize(results), workdir, missing=missing, total=len(configs))
  write_plots(results, workdir)
  try:
    compared = comparison.compare_runs([workdir / r["run"] for r in results])
    compare_report.write_comparison(compared, workdir)
    error = None
  except rundir.RunDirError as e:  # e.g. runs of an earlier version without test outputs
    compared, error = None, str(e)
  return Collected(results, missing, worker_of, markdown, compared, error)


def collect(
  workdir: str | Path,
  configs: Sequence[Config],
  *,
  num_workers: int = 1,
  wait: bool = True,
) -> Collected | None:
  """Writes the table, plots and comparison of the grid's finished runs; names the others.

  One process writes at a time (under ``.locks/collect.lock``). A request made while
  another writes (``.locks/collect.pending``) makes the writer read the runs and write
  again when it is done, so the last table written has seen every run finished before
  the last request. A table that lacks runs says which below it. Nothing is written when
  no run has finished.

  Args:
    workdir: the sweep's directory.
    configs: the grid, in order.
    num_workers: the split, to say which worker each missing run belongs to.
    wait: wait for a process that is writing the table, then write it here (else leave
      the request to that process and return ``None``).

  Returns:
    What was found and written; ``None`` if left to another process.

  Raises:
    WorkerError: the table has been locked by another process for over
      :data:`COLLECT_WAIT_S` (when waiting), or file locks do not work in ``workdir``.
  """
  workdir = Path(workdir)
  configs = list(dict.fromkeys(configs))
  pending = workdir / LOCKS_DIR / "collect.pending"
  pending.parent.mkdir(parents=True, exist_ok=True)
  pending.touch()
  collected = None
  while True:
    try:
      with _lock(workdir, "collect", wait_s=COLLECT_WAIT_S if wait else 0.0):
        while True:
          pending.unlink(missing_ok=True)  # requests from now on are answered by a rewrite
          collected = _collect_once(workdir, configs, num_workers)
          if not pending.exists():
            break
    except files.LockBusyError as e:
      if not wait:
        return collected  # the holder sees the request after it lets go, at the latest
      raise WorkerError(
        f"{e.path} has been held by {e.holder} for over {COLLECT_WAIT_S:.0f} s; if that "
        "process is hung, stop it and collect again"
      ) from e
    except files.LockError as e:
      raise WorkerError(str(e)) from e
    # A request made between the last look and letting go: answer it, unless another
    # process holds the lock by now (then that one does).
    if not pending.exists():
      return collected
    wait = False


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
