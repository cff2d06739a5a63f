"""Several models of one architecture trained together in one vmapped step.

A sweep over seeds and learning rates trains K copies of one network that differ only
in their initial parameters, their data order, their dropout and augmentation keys and
their learning rate. :func:`train_group` stacks the K train states along a leading
axis and runs the ordinary epoch under ``jax.vmap``: one compiled call per step trains
all K models. Each model keeps its own keys, derived exactly as in a single run, so a
model trained in a group ends with the same numbers as the same config trained alone,
up to float rounding. With several devices the models axis is split over them when K
divides evenly (:func:`digits_jax.training.sharding.stack_models`).

On a CPU one model already keeps the cores busy, and the sweep leaves this off there
(see docs/speed.md); on accelerators it is the sweep's default.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from digits_jax import data, files, models, rundir
from digits_jax.config import Config
from digits_jax.training import checkpoints, history, sharding
from digits_jax.training.loop import TrainingOutcome, resume, run_keys, training_split
from digits_jax.training.optim import make_optimizer
from digits_jax.training.step import (
  create_train_state,
  make_epoch_fn,
  metrics_from_logits,
  model_variables,
  predict,
  steps_per_epoch,
)

log = logging.getLogger(__name__)

# Config fields that may differ between the models of one group.
PER_MODEL_FIELDS = ("seed", "learning_rate")


def group_key(config: Config) -> tuple:
  """Configs with equal keys can be trained together by :func:`train_group`."""
  shared = dataclasses.replace(config, **{f: None for f in PER_MODEL_FIELDS})
  return tuple(sorted(shared.to_dict().items()))


def _model(tree: Any, i: int) -> Any:
  """Model ``i`` of a stacked pytree."""
  return jax.tree_util.tree_map(lambda x: x[i], tree)


def train_group(
  configs: Sequence[Config], run_dirs: Sequence[str | Path], *, datasets: data.Datasets
) -> list[TrainingOutcome]:
  """Trains K configs that share a :func:`group_key` in one vmapped step, resuming.

  Each model writes ``config.json`` (with the group's run names), ``metrics.jsonl``, its
  latest and its best checkpoint into its own run directory, as a single run does. Started
  again on the same directories, an interrupted group resumes from the epoch its models'
  latest checkpoints share, and ends with the numbers of a group that was never
  interrupted; when they share none (some model has no checkpoint, or one of another
  epoch), the group clears them and starts again. Each model's ``epoch_seconds`` is the
  group's wall time divided by K.

  Args:
    configs: resolved configs differing only in :data:`PER_MODEL_FIELDS`.
    run_dirs: one directory per config.
    datasets: the data, shared by all models.

  Returns:
    One :class:`~digits_jax.training.loop.TrainingOutcome` per config, in order.
  """
  k = len(configs)
  if k != len(run_dirs) or not k:
    raise ValueError("train_group needs one run directory per config, and at least one config")
  if len({group_key(c) for c in configs}) != 1:
    raise ValueError(f"configs of one group may differ only in {PER_MODEL_FIELDS}")
  base = configs[0]
  split = training_split(base, datasets)
  run_dirs = [Path(d) for d in run_dirs]

  def latest_checkpoints():
    return [
      checkpoints.LatestCheckpoint(d / "checkpoints", identity=c.identity())
      for c, d in zip(configs, run_dirs)
    ]

  latests = latest_checkpoints()
  start = {latest.epoch() for latest in latests}
  if len(start) != 1 or None in start:
    for run_dir in run_dirs:  # nothing shared to resume from: start again
      rundir.clear(run_dir)
    latests = latest_checkpoints()
  for config, run_dir in zip(configs, run_dirs):
    if rundir.saved_config(run_dir) is None:  # else resuming: keep the original
      rundir.write_config(
        run_dir, config, datasets, len(split.labels), group=[d.name for d in run_dirs]
      )

  steps = steps_per_epoch(len(split.labels), base.batch_size)
  # One optimizer and one module for all: the peak learning rate lives in the state.
  tx = make_optimizer(base, steps)
  model = base.create_model(datasets.num_classes)
  states, train_rngs = [], []
  for config in configs:
    init_rng, train_rng = run_keys(config)
    state = create_train_state(config, init_rng, steps, tx=tx, model=model)
    hyperparams = dict(
      state.opt_state.hyperparams, learning_rate=jnp.asarray(config.learning_rate, jnp.float32)
    )
    states.append(state.replace(opt_state=state.opt_state._replace(hyperparams=hyperparams)))
    train_rngs.append(train_rng)
  bests = [checkpoints.BestCheckpoint(d / "checkpoints") for d in run_dirs]
  histories: list[list[dict[str, Any]]] = []
  for i, run_dir in enumerate(run_dirs):
    states[i], rows = resume(run_dir, states[i], latests[i], bests[i])
    histories.append(rows)
  state = sharding.stack_models(states)
  train_rngs = jnp.stack(train_rngs)
  num_params = models.count_params(states[0].params)

  x_train, y_train = jnp.asarray(split.images), jnp.asarray(split.labels)
  x_val = jnp.asarray(datasets.validation.images)
  y_val = jnp.asarray(datasets.validation.labels)
  epoch_fn = make_epoch_fn(base, vmapped=True)

  for epoch in range(len(histories[0]) + 1, base.epochs + 1):
    t0 = time.perf_counter()
    epoch_rngs = jax.vmap(jax.random.fold_in, in_axes=(0, None))(train_rngs, epoch)
    state, step_metrics = epoch_fn(state, epoch_rngs, x_train, y_train)
    step_metrics = jax.device_get(step_metrics)
    seconds = time.perf_counter() - t0
    val_logits = (
      predict(state, x_val, base.eval_batch_size, models_axis=True) if len(y_val) else None
    )
    for i, run_dir in enumerate(run_dirs):
      history.check_finite(step_metrics["loss"][i], epoch)
      val = None if val_logits is None else metrics_from_logits(val_logits[i], y_val)
      row = history.epoch_row(epoch, seconds / k, _model(step_metrics, i), val)
      histories[i].append(row)
      files.write_jsonl(run_dir / "metrics.jsonl", histories[i])
      # This order (metrics.jsonl, latest, best) is what resume() relies on after a kill.
      latests[i].save(epoch, _model(state, i))
      bests[i].maybe_save(epoch, model_variables(_model(state, i)), history.score(row))
    log.info(
      "%s group of %d, epoch %d: %.1f s, val accuracy %s",
      base.model,
      k,
      epoch,
      seconds,
      " ".join(f"{h[-1].get('val_accuracy', float('nan')):.4f}" for h in histories),
    )
  return [TrainingOutcome(_model(state, i), histories[i], bests[i], num_params) for i in range(k)]
