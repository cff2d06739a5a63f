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
import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax

from digits_jax import data, files, rundir, runs
from digits_jax.analysis import compare_report, comparison
from digits_jax.config import Config, varied_settings
from digits_jax.progress import Progress

# The pieces, re-exported: ``digits_jax.sweep`` stays the one public entry.
from digits_jax.sweep.grid import (  # noqa: F401
  GRID_WAIT_S,
  LOCKS_DIR,
  PRESETS,
  QUICK_EPOCHS,
  QUICK_PRESET,
  QUICK_SETTINGS,
  SWEEP_FILE,
  WorkerError,
  _differences,
  _guard,
  _lock,
  _read_record,
  _value,
  check_split,
  describe_runs,
  expand,
  expand_with_origins,
  grid_digest,
  preset_runs,
  quick_settings,
  record_grid,
  run_dir,
  run_dirs,
  run_name,
  share,
  variant,
)
from digits_jax.sweep.table import (  # noqa: F401
  TABLE_COLUMNS,
  _fmt,
  _std,
  summarize,
  table_columns,
  to_csv,
  to_markdown,
  write_plots,
  write_tables,
)
from digits_jax.training import groups

log = logging.getLogger(__name__)

# How long a worker waits for another to finish writing the table.
COLLECT_WAIT_S = 600.0


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
  plots: bool = True,
  after_run: Callable[[Config, Path, data.Datasets], None] | None = None,
) -> list[dict[str, Any]]:
  """Trains this worker's share of the configs (skipping finished ones, resuming interrupted ones).

  Args:
    configs: resolved configs, e.g. from :func:`expand`; each distinct one runs once.
    workdir: the sweep's directory; each run gets a subdirectory (:func:`run_dir`).
    load: returns the datasets for a config (called once per distinct dataset).
    overwrite: delete what this worker's run directories hold and train them again.
    vmap: train the unfinished runs that differ only in seed and learning rate together,
      in one vmapped step (:func:`digits_jax.training.groups.train_group`). A group that is
      interrupted resumes from its models' latest checkpoints.
    num_workers, worker_index: train only the runs :func:`share` gives this worker. A run
      whose lock another process holds (the same worker started twice) is left to it.
    plots: draw each run's figures (:func:`digits_jax.runs.write_evaluation`).
    after_run: called with each of this worker's finished runs (config, directory, data),
      right after its test evaluation (a robustness evaluation, for one).

  Returns:
    The results of this worker's finished runs, in the order of ``configs``, each with
    ``run`` (its directory's name), ``variant``, ``dataset``, ``epochs``, ``batch_size``
    and the values of the varied settings.

  Raises:
    WorkerError: before anything runs, if the worker index is out of range or another
      grid is recorded in ``workdir`` (:func:`record_grid`).
    RunDirError: before anything runs, if a run directory holds another config's run.
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
  finished = {c: rundir.check(c, dirs[c], overwrite=overwrite) for c in mine}
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
    return overwrite or rundir.finished_results(config, dirs[config]) is None

  if vmap:
    batches: dict[tuple, list[Config]] = {}
    for config in mine:
      if finished[config] is None and not config.init_from:  # transfer runs train alone
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
        if overwrite:
          for path in run_dirs:
            rundir.clear(path)
        log.info("training %s together (vmapped)", ", ".join(d.name for d in run_dirs))
        trained = groups.train_group(group, run_dirs, datasets=datasets(group[0]))
        group_seconds = sum(r["epoch_seconds"] for r in trained[0].history) * len(group)
        for config, path, one in zip(group, run_dirs, trained, strict=True):
          finished[config] = runs.finish(
            config,
            path,
            one,
            datasets(config),
            plots=plots,
            group_size=len(group),
            group_seconds=group_seconds,
          )

  varied = varied_settings(configs)
  all_results = []
  progress = Progress(sum(r is None for r in finished.values()))
  for i, config in enumerate(mine):
    path = dirs[config]
    results = finished[config]
    if results is not None:
      log.info("[%d/%d] %s: already finished, skipped", i + 1, len(mine), path.name)
    else:
      try:
        with _guard_run(workdir, config):
          if still_unfinished(config):
            log.info("[%d/%d] %s: training; %s", i + 1, len(mine), path.name, progress.status())
            results = runs.train_and_evaluate(
              config, path, datasets=datasets(config), overwrite=overwrite, plots=plots
            )
            progress.done()
            log.info("%s: test accuracy %.4f", path.name, results["test_accuracy"])
          else:
            results = rundir.finished_results(config, path)
            log.info("%s: finished by another process meanwhile, skipped", path.name)
      except files.LockBusyError as e:
        log.warning("%s: being trained by %s; left to it", path.name, e.holder)
        continue
    if after_run is not None:
      after_run(config, path, datasets(config))
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
    done = rundir.finished_results(config, path)
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
