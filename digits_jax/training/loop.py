"""The run loop: epochs of training with validation, checkpoints and resume.

:func:`train` takes a run from its last complete checkpoint (or from scratch) to its
last epoch. After each epoch it validates, appends a row to ``metrics.jsonl``, adds
the row to the TensorBoard scalars, then saves the latest state and, when validation
improved, the best model. What happens after training -- the test set, the reports,
``results.json`` -- is :mod:`digits_jax.runs`.

A run uses every device of every process (:mod:`digits_jax.training.sharding`). With
several processes, each runs this same loop: all of them train, validate and save the
checkpoints together (orbax's multi-process saving), and only process 0 writes
``metrics.jsonl`` and the TensorBoard scalars (:mod:`digits_jax.training.distributed`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from digits_jax import data, files, models, rundir
from digits_jax.config import Config
from digits_jax.progress import EpochProgress
from digits_jax.training import (
  adversarial,
  checkpoints,
  distributed,
  history,
  sharding,
  summaries,
  transfer,
)
from digits_jax.training.step import (
  TrainState,
  create_train_state,
  eval_state,
  make_epoch_fn,
  metrics_from_logits,
  model_variables,
  predict_config,
  steps_per_epoch,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainingOutcome:
  """What training leaves in memory: the last state, the history and the best checkpoint."""

  state: TrainState
  history: list[dict[str, Any]]
  best: checkpoints.BestCheckpoint
  num_params: int


def training_split(config: Config, datasets: data.Datasets) -> data.Split:
  """The training images a run uses: all, or the first ``train_subset``."""
  train = datasets.train
  if config.train_subset:
    train = data.Split(train.images[: config.train_subset], train.labels[: config.train_subset])
  return train


def run_keys(config: Config) -> tuple[jax.Array, jax.Array]:
  """The keys of a run: one for initialisation, one folded with each epoch's number."""
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  return init_rng, train_rng


def resume(
  workdir: Path,
  state: TrainState,
  latest: checkpoints.LatestCheckpoint,
  best: checkpoints.BestCheckpoint,
) -> tuple[TrainState, list[dict[str, Any]]]:
  """The state and history a run continues from: those of its last complete checkpoint.

  At the end of each epoch a run writes ``metrics.jsonl``, then the latest checkpoint,
  then (if better) the best one, so after a kill at any moment ``metrics.jsonl`` may
  hold one epoch more than the latest checkpoint (dropped here, computed again), and
  the best checkpoint may lack the latest epoch (saved here from the restored state),
  but never holds a later one. Orbax deletes the temporary directory of a save that
  was interrupted.

  Returns:
    The restored state (or ``state`` when there is no checkpoint) and the history of
    its epochs (or ``[]``).

  Raises:
    CheckpointError: a checkpoint is unreadable, another run's, or disagrees with
      ``metrics.jsonl``.
  """
  rows: list[dict[str, Any]] = []
  epoch = latest.epoch()
  if epoch is not None:
    epoch, state = latest.restore(state)
    rows = rundir.resume_history(workdir, epoch)
    best.maybe_save(epoch, model_variables(state), history.score(rows[-1]))
  if distributed.is_writer():
    files.write_jsonl(workdir / "metrics.jsonl", rows)
  if best.best_epoch() != history.best_epoch(rows):
    found = (
      f"there is no checkpoint in {latest.directory} to resume from"
      if epoch is None
      else f"{workdir / 'metrics.jsonl'} and the latest checkpoint (epoch {epoch}) make "
      f"epoch {history.best_epoch(rows)} the best"
    )
    raise checkpoints.CheckpointError(
      f"the best checkpoint in {best.directory} holds epoch {best.best_epoch()}, but {found}; "
      "the directory was changed by hand or written by another program. "
      f"{checkpoints.FIX_HINT}"
    )
  if epoch is not None:
    log.info("%s: resuming after epoch %d, from its checkpoint", workdir, epoch)
  return state, rows


def epoch_progress(steps: int, batch_size: int) -> EpochProgress | None:
  """The updating line of a long epoch, where standard error is a terminal (else ``None``:
  the epoch then compiles without reporting its steps, and log files never see the line).

  Not with several processes: each would compile its own program.
  """
  if jax.process_count() > 1:
    return None
  return EpochProgress.on_terminal(steps, batch_size)


def validate(
  config: Config,
  state: TrainState,
  images,
  labels,
  robust: adversarial.RobustValidation | None = None,
) -> dict[str, float]:
  """Validation loss and accuracy of the model a run evaluates: the moving average of the
  weights when ``config.ema``, each image's shifted copies averaged when ``config.tta``;
  with ``robust``, its PGD accuracy too (``robust_accuracy``)."""
  state = eval_state(state)
  logits = predict_config(config, state, images, config.eval_batch_size)
  metrics = metrics_from_logits(logits, labels)
  if robust is not None:
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    metrics["robust_accuracy"] = robust.accuracy(sharding.to_local(variables))
  return metrics


def train(
  config: Config,
  workdir: str | Path,
  datasets: data.Datasets,
  *,
  on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainingOutcome:
  """Trains a resolved ``config`` in ``workdir``, resuming from its last checkpoint.

  ``on_epoch``, if given, is called with each epoch's row (those restored on resume
  first) once its checkpoints are saved; an exception it raises stops the run there
  (a search prunes a trial so, :mod:`digits_jax.search.study`).

  The work directory must already be this run's (see :mod:`digits_jax.runs`). Every
  batch is split over all devices of all processes; with several processes, every one
  calls this with the same arguments.

  Raises:
    ConfigError: the batch size does not split over the devices.
    CheckpointError: a checkpoint in ``workdir`` is corrupt or another run's.
    TrainingDivergedError: the loss became NaN or infinite.
  """
  workdir = Path(workdir)
  mesh = sharding.data_mesh()
  # The batch size is checked against the devices once: make_epoch_fn below splits it (and
  # runs.prepare, before the run's files are written).
  split = training_split(config, datasets)
  init_rng, train_rng = run_keys(config)
  steps = steps_per_epoch(len(split.labels), config.batch_size)
  state = create_train_state(config, init_rng, steps, datasets.num_classes)
  num_params = models.count_params(state.params)
  latest = checkpoints.LatestCheckpoint(workdir / "checkpoints", identity=config.identity())
  if config.init_from and latest.epoch() is None:
    # A fresh transfer run starts from its source's weights; a resumed one from its own.
    source = transfer.load(config, datasets.num_classes)
    transfer.check_recorded(workdir, source)
    state = transfer.apply(state, source, config)

  x_val, y_val = datasets.validation.images, jnp.asarray(datasets.validation.labels)
  if mesh.size > 1:
    # Every device holds the state and the training set; each takes its part of a batch.
    state, x_train, y_train = sharding.replicate((state, split.images, split.labels), mesh)
  else:
    x_train, y_train = jnp.asarray(split.images), jnp.asarray(split.labels)
    x_val = jnp.asarray(x_val)

  robust = None
  if adversarial.enabled(config) and config.robust_val_size and len(y_val):
    robust = adversarial.RobustValidation(
      config, state.apply_fn, datasets.validation.images, datasets.validation.labels
    )
  progress = epoch_progress(steps, config.batch_size)
  epoch_fn = make_epoch_fn(config, mesh=mesh, on_step=progress and progress.update)
  if latest.epoch() is None:
    # Nothing to resume from, so the run starts at epoch 1: a best checkpoint is then left
    # by an interrupted run that saved no latest one.
    if distributed.is_writer():
      checkpoints.BestCheckpoint.discard(workdir / "checkpoints")
    distributed.barrier("discarded best checkpoint")
  best = checkpoints.BestCheckpoint(workdir / "checkpoints")
  state, rows = resume(workdir, state, latest, best)
  scalars = summaries.Scalars(workdir / summaries.LOG_DIR)
  try:
    for row in rows if on_epoch else ():
      on_epoch(row)
    for epoch in range(len(rows) + 1, config.epochs + 1):
      t0 = time.perf_counter()
      if progress:
        progress.start(f"{config.model} epoch {epoch}")
      try:
        state, step_metrics = epoch_fn(
          state, jax.random.fold_in(train_rng, epoch), x_train, y_train
        )
        step_metrics = jax.device_get(sharding.to_local(step_metrics))
        if progress:
          jax.effects_barrier()  # every step's report is in before the line is erased
      finally:
        if progress:
          progress.finish()
      seconds = time.perf_counter() - t0
      history.check_finite(step_metrics["loss"], epoch)
      val = validate(config, state, x_val, y_val, robust) if len(y_val) else None
      row = history.epoch_row(epoch, seconds, step_metrics, val)
      rows.append(row)
      if history.collapsed(rows):
        log.warning(
          "%s epoch %d: robust validation accuracy fell to %.4f from %.4f: catastrophic "
          "overfitting of the training attack; the best epoch stays the one before it",
          config.model,
          epoch,
          row["val_robust_accuracy"],
          max(r["val_robust_accuracy"] for r in rows[:-1]),
        )
      if distributed.is_writer():
        files.write_jsonl(workdir / "metrics.jsonl", rows)
        scalars.add_epoch(row)
      log.info(
        "%s epoch %d: %s",
        config.model,
        epoch,
        ", ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch"),
      )
      # This order (metrics.jsonl, latest, best) is what resume() relies on after a kill.
      latest.save(epoch, state)
      best.maybe_save(epoch, model_variables(state), history.score(row))
      if on_epoch:
        on_epoch(row)
  finally:
    scalars.close()
  return TrainingOutcome(state, rows, best, num_params)
