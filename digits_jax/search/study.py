"""The study: Optuna trials that are ordinary runs, shared by workers through the workdir.

Each model's study lives in ``<workdir>/<model>/``: ``study.log`` is Optuna's journal file
storage, which several processes (SLURM array workers on a shared filesystem) read and
append to; ``search.json`` records the space, and a worker given another one stops before
anything runs. Every trial trains into ``trials/trial-NNNN/``, an ordinary run directory
(``config.json``, ``metrics.jsonl``, checkpoints, resume: :func:`digits_jax.training.loop.train`).
After each epoch the loop reports the validation accuracy to the trial, and the pruner may
stop it there: the run directory then holds ``pruned.json`` with the epoch. The trial's
value is its best validation accuracy, written to ``trial.json``; trials are never
evaluated on the test set (only the confirmation's runs are).

Workers take turns under ``.locks/study.lock`` to ask for a trial, and hold
``.locks/trial-NNNN.lock`` (a kernel ``flock``, dropped however its holder dies) while
training it. A RUNNING trial whose lock file exists but is free belongs to a worker that
was killed: the next worker marks it failed and queues its parameters again, with its run
directory, so the new trial resumes from the killed one's last checkpoint. Workers stop
once the study holds ``trials`` finished trials (complete, pruned or failed for good), so
a command started again continues the study up to that number and never runs a trial twice.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna

from digits_jax import data, files, rundir, runs, sweep
from digits_jax.config import Config, ConfigError
from digits_jax.progress import Progress
from digits_jax.search.space import SearchError, SearchSpec, config_of, suggest
from digits_jax.training import loop
from digits_jax.training.history import TrainingDivergedError

log = logging.getLogger(__name__)

JOURNAL = "study.log"
SPEC_FILE = "search.json"
TRIALS_DIR = "trials"
LOCKS_DIR = ".locks"
PRUNED_FILE = "pruned.json"
# A complete trial's outcome (its run directory has no test results: trials are not tested).
TRIAL_FILE = "trial.json"
STUDY_WAIT_S = 300.0
# User attributes of a trial.
RUN_DIR = "run_dir"
REQUEUED = "requeued"
PRUNED_AT = "pruned_at"
ERROR = "error"


def study_dir(workdir: str | Path, spec: SearchSpec) -> Path:
  return Path(workdir) / spec.model


def storage(directory: Path) -> optuna.storages.BaseStorage:
  """The journal file storage of a study directory (created)."""
  directory.mkdir(parents=True, exist_ok=True)
  backend = optuna.storages.journal.JournalFileBackend(str(directory / JOURNAL))
  return optuna.storages.JournalStorage(backend)


def make_pruner(spec: SearchSpec) -> optuna.pruners.BasePruner:
  if spec.pruner == "successive_halving":
    return optuna.pruners.SuccessiveHalvingPruner(
      min_resource=spec.min_resource, reduction_factor=spec.reduction_factor
    )
  if spec.pruner == "hyperband":
    return optuna.pruners.HyperbandPruner(
      min_resource=spec.min_resource,
      max_resource=spec.max_epochs,
      reduction_factor=spec.reduction_factor,
    )
  if spec.pruner == "median":
    return optuna.pruners.MedianPruner(n_warmup_steps=spec.min_resource - 1)
  return optuna.pruners.NopPruner()


def check_spec(directory: Path, spec: SearchSpec) -> None:
  """Records the study's space in ``search.json``, or checks it against the one recorded.

  Raises:
    SearchError: the directory holds a study of another space.
  """
  path = directory / SPEC_FILE
  ours = spec.identity()
  if path.exists():
    recorded = files.read_json(path)
    if recorded != ours:
      differ = sorted(k for k in ours if recorded.get(k) != ours.get(k))
      raise SearchError(
        f"{directory} holds a study with other settings ({', '.join(differ)} differ, see "
        f"{path}); start it with the same config to continue it, or choose another --workdir"
      )
    return
  files.write_json(path, ours)


def open_study(
  workdir: str | Path, spec: SearchSpec, *, seed_offset: int = 0, write: bool = True
) -> optuna.Study:
  """The model's study in ``workdir`` (created), with its TPE sampler and pruner."""
  directory = study_dir(workdir, spec)
  if write:
    with _lock(directory, "study", wait_s=STUDY_WAIT_S):
      check_spec(directory, spec)
  elif not (directory / JOURNAL).exists():
    raise SearchError(f"{directory} holds no study ({JOURNAL}); run the search first")
  opened = optuna.create_study(
    study_name=spec.model,
    storage=storage(directory),
    pruner=make_pruner(spec),
    direction="maximize",
    load_if_exists=True,
  )
  # Seeded per worker and per start, so that a worker started again does not draw the
  # parameters it drew before.
  opened.sampler = optuna.samplers.TPESampler(
    seed=spec.sampler_seed + seed_offset + len(opened.get_trials(deepcopy=False)),
    n_startup_trials=spec.startup_trials,
    constant_liar=True,
  )
  return opened


@contextlib.contextmanager
def _lock(directory: Path, name: str, *, wait_s: float = 0.0) -> Iterator[None]:
  try:
    with files.exclusive_lock(directory / LOCKS_DIR / f"{name}.lock", wait_s=wait_s):
      yield
  except files.LockBusyError:
    raise
  except files.LockError as e:
    raise SearchError(str(e)) from e


def trial_name(number: int) -> str:
  return f"trial-{number:04d}"


def counts(study: optuna.Study) -> int:
  """Trials that count towards the budget: all but those failed and queued again.

  Queued (WAITING) trials count too, and are run even beyond the budget.
  """
  return sum(1 for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(REQUEUED))


def finished(study: optuna.Study) -> int:
  """Trials done for good: complete, pruned, or failed and not queued again."""
  done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
  return sum(
    1
    for t in study.get_trials(deepcopy=False)
    if t.state in done
    or (t.state == optuna.trial.TrialState.FAIL and not t.user_attrs.get(REQUEUED))
  )


def recover(study: optuna.Study, directory: Path) -> list[int]:
  """Fails the RUNNING trials of killed workers and queues their parameters again.

  A trial's worker holds its lock while training it; a lock file that exists but can be
  taken means the worker died. Returns the numbers of the trials queued again.
  """
  requeued = []
  for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
    lock = directory / LOCKS_DIR / f"{trial_name(t.number)}.lock"
    if not lock.exists():
      continue  # asked for, its worker about to lock it
    try:
      with _lock(directory, trial_name(t.number)):
        current = study._storage.get_trial(t._trial_id)
        if current.state != optuna.trial.TrialState.RUNNING:
          continue
        run_dir = current.user_attrs.get(RUN_DIR, trial_name(t.number))
        study._storage.set_trial_user_attr(t._trial_id, REQUEUED, True)
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(current.params, user_attrs={RUN_DIR: run_dir, "retry_of": t.number})
        log.warning(
          "trial %d: its worker is gone; queued again, resuming from %s", t.number, run_dir
        )
        requeued.append(t.number)
    except files.LockBusyError:
      continue  # alive
  return requeued


def _record_pruned(run_dir: Path, trial: optuna.Trial, row: dict[str, Any]) -> None:
  files.write_json(
    run_dir / PRUNED_FILE,
    {"trial": trial.number, "epoch": row["epoch"], "val_accuracy": row.get("val_accuracy")},
  )


def run_trial(
  study: optuna.Study,
  trial: optuna.Trial,
  spec: SearchSpec,
  directory: Path,
  datasets: Callable[[Config], data.Datasets],
) -> None:
  """Trains one trial in its run directory, reporting each epoch; tells the study the end."""
  run_name = trial.user_attrs.get(RUN_DIR)
  if run_name is None:
    run_name = trial_name(trial.number)
    trial.set_user_attr(RUN_DIR, run_name)
  run_dir = directory / TRIALS_DIR / run_name
  config = suggest(trial, spec)

  def on_epoch(row: dict[str, Any]) -> None:
    value = row.get("val_accuracy")
    if value is None:
      raise SearchError("a search needs a validation split: set base.validation_size > 0")
    trial.report(value, row["epoch"])
    if trial.should_prune():
      _record_pruned(run_dir, trial, row)
      trial.set_user_attr(PRUNED_AT, row["epoch"])
      raise optuna.TrialPruned(f"pruned after epoch {row['epoch']}")

  start = time.time()
  try:
    loaded = datasets(config)
    rundir.check(config, run_dir)
    runs.prepare(config, run_dir, loaded)
    trained = loop.train(config, run_dir, loaded, on_epoch=on_epoch)
  except optuna.TrialPruned:
    trial.set_user_attr("seconds", time.time() - start)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    log.info("trial %d (%s): pruned", trial.number, run_name)
    return
  except (TrainingDivergedError, ConfigError, data.DataError) as e:
    trial.set_user_attr(ERROR, str(e)[:500])
    trial.set_user_attr("seconds", time.time() - start)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    log.warning("trial %d (%s): failed: %s", trial.number, run_name, e)
    return
  (run_dir / PRUNED_FILE).unlink(missing_ok=True)  # an earlier attempt's; this one finished
  best_epoch = trained.best.best_epoch()
  # The objective: validation accuracy of the best epoch. A trial is never tested.
  value = trained.history[best_epoch - 1]["val_accuracy"]
  seconds = time.time() - start
  files.write_json(
    run_dir / TRIAL_FILE,
    {"trial": trial.number, "val_accuracy": value, "best_epoch": best_epoch, "seconds": seconds},
  )
  trial.set_user_attr("seconds", seconds)
  trial.set_user_attr("best_epoch", best_epoch)
  study.tell(trial, value)
  log.info("trial %d (%s): validation %.4f", trial.number, run_name, value)


def run_worker(
  workdir: str | Path,
  spec: SearchSpec,
  *,
  load: Callable[[Config], data.Datasets],
  num_workers: int = 1,
  worker_index: int = 0,
  max_trials: int | None = None,
) -> optuna.Study:
  """Runs trials of ``spec``'s study until it holds ``spec.trials`` of them.

  Args:
    workdir: the search's directory; the study is in ``workdir/<model>``.
    spec: the checked study settings (:func:`digits_jax.search.space.parse`).
    load: returns the datasets of a config (loaded once per validation size).
    num_workers, worker_index: as the sweep defines them; each worker seeds its sampler
      differently, and all of them share the one study.
    max_trials: stop after this many trials in this process (tests).

  Raises:
    SearchError: another study's settings in the directory.
    WorkerError: a bad worker index (:func:`digits_jax.sweep.check_split`).
  """
  sweep.check_split(num_workers, worker_index)
  directory = study_dir(workdir, spec)
  study = open_study(workdir, spec, seed_offset=1000 * worker_index)
  cache: dict[tuple, data.Datasets] = {}

  def datasets(config: Config) -> data.Datasets:
    key = (config.dataset, config.validation_size)
    if key not in cache:
      cache[key] = load(config)
    return cache[key]

  done = 0
  progress = Progress(max(0, spec.trials - counts(study)))
  while max_trials is None or done < max_trials:
    with contextlib.ExitStack() as held:
      with _lock(directory, "study", wait_s=STUDY_WAIT_S):
        recover(study, directory)
        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        if counts(study) >= spec.trials and not waiting:
          break
        trial = study.ask()
        held.enter_context(_lock(directory, trial_name(trial.number)))
      log.info(
        "worker %d: trial %d [%d/%d]; %s",
        worker_index,
        trial.number,
        min(counts(study), spec.trials),
        spec.trials,
        progress.status(),
      )
      run_trial(study, trial, spec, directory, datasets)
      done += 1
      progress.done()
  log.info(
    "worker %d: %d trials here; the study holds %d finished of %d",
    worker_index,
    done,
    finished(study),
    spec.trials,
  )
  return study


def trial_config(spec: SearchSpec, trial: optuna.trial.FrozenTrial) -> Config:
  """The resolved config a finished trial trained."""
  return config_of(spec, trial.params)
