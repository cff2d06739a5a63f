"""Several models of one architecture trained together, and all local devices used.

A sweep over seeds and learning rates trains K copies of one network that differ
only in their initial parameters, their data order, their dropout and augmentation
keys and their learning rate. :func:`train_group` stacks the K train states along a
leading axis and runs the ordinary train step under ``jax.vmap``: one compiled call
per step trains all K models, which keeps the processor busier than K small calls
in a row (on a GPU, the difference is much larger). Each model keeps its own keys,
derived exactly as in a single run, so a model trained in a group ends with the
same numbers as the same config trained alone, up to float rounding.

With several devices, the models axis is split over them when K divides evenly
(:mod:`digits_jax.sharding`).
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
import numpy as np

from digits_jax import checkpoints, data, files, models, sharding, train
from digits_jax.config import Config, check_sizes

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


def train_group(configs: Sequence[Config], workdirs: Sequence[str | Path], *,
                datasets: data.Datasets, epoch_loop: str = "auto") -> list[dict[str, Any]]:
  """Trains K configs that share a :func:`group_key` in one vmapped step.

  Each model writes the same files as :func:`digits_jax.train.train_and_evaluate`
  into its own work directory. ``train_seconds`` in each model's results is the
  group's wall time divided by K (the cost per model); ``group_seconds`` is the
  whole.

  Args:
    configs: resolved configs differing only in :data:`PER_MODEL_FIELDS`.
    workdirs: one directory per config.
    datasets: the data, shared by all models.
    epoch_loop: see :func:`digits_jax.train.make_epoch_fn`.

  Returns:
    One results dict per config, in order.
  """
  k = len(configs)
  if k != len(workdirs) or not k:
    raise ValueError("train_group needs one workdir per config, and at least one config")
  if len({group_key(c) for c in configs}) != 1:
    raise ValueError(f"configs of one group may differ only in {PER_MODEL_FIELDS}")
  base = configs[0]
  split = train.training_split(base, datasets)
  check_sizes(base, len(split.labels))
  workdirs = [Path(w) for w in workdirs]
  for config, workdir in zip(configs, workdirs):
    train.write_config(workdir, config, datasets, split,
                       group=[w.name for w in workdirs])

  steps = train.steps_per_epoch(len(split.labels), base.batch_size)
  # One optimizer and one module for all: the peak learning rate lives in the state.
  tx = train.make_optimizer(base, steps)
  model = models.create_model(base.model, fast=base.fast_ops, num_classes=datasets.num_classes)
  states, train_rngs = [], []
  for config in configs:
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    state = train.create_train_state(config, init_rng, steps, tx=tx, model=model)
    hyperparams = dict(state.opt_state.hyperparams,
                       learning_rate=jnp.asarray(config.learning_rate, jnp.float32))
    states.append(state.replace(opt_state=state.opt_state._replace(hyperparams=hyperparams)))
    train_rngs.append(train_rng)
  state = sharding.stack_models(states)
  train_rngs = jnp.stack(train_rngs)
  num_params = models.count_params(states[0].params)

  x_train, y_train = jnp.asarray(split.images), jnp.asarray(split.labels)
  x_val = jnp.asarray(datasets.validation.images)
  y_val = jnp.asarray(datasets.validation.labels)
  epoch_fn = train.make_epoch_fn(base, epoch_loop, vmapped=True)
  predict = jax.jit(jax.vmap(train.forward, in_axes=(0, None)))

  bests = [checkpoints.BestCheckpoint(w / "checkpoints") for w in workdirs]
  histories: list[list[dict[str, Any]]] = [[] for _ in configs]
  group_seconds = 0.0
  for epoch in range(1, base.epochs + 1):
    t0 = time.perf_counter()
    epoch_rngs = jax.vmap(jax.random.fold_in, in_axes=(0, None))(train_rngs, epoch)
    state, step_metrics = epoch_fn(state, epoch_rngs, x_train, y_train)
    step_metrics = jax.device_get(step_metrics)
    seconds = time.perf_counter() - t0
    group_seconds += seconds
    val_logits = _batched_predict(predict, state, x_val, base.eval_batch_size)
    for i, workdir in enumerate(workdirs):
      train.check_finite(step_metrics["loss"][i], epoch)
      row = {"epoch": epoch, "epoch_seconds": seconds / k,
             "train_loss": float(np.mean(step_metrics["loss"][i])),
             "train_accuracy": float(np.mean(step_metrics["accuracy"][i]))}
      if val_logits is not None:
        val = train.metrics_from_logits(val_logits[i], y_val)
        row |= {"val_loss": val["loss"], "val_accuracy": val["accuracy"]}
      histories[i].append(row)
      files.write_jsonl(workdir / "metrics.jsonl", histories[i])
      model_state = _model(state, i)
      bests[i].maybe_save(epoch, train.checkpoint_variables(model_state),
                          row.get("val_accuracy", float(epoch)))
    log.info("%s group of %d, epoch %d: %.1f s, val accuracy %s", base.model, k, epoch,
             seconds, " ".join(f"{h[-1].get('val_accuracy', float('nan')):.4f}"
                               for h in histories))

  results = []
  for i, (config, workdir) in enumerate(zip(configs, workdirs)):
    model_state = _model(state, i)
    results.append(train.finish_run(config, workdir, model_state, bests[i], histories[i],
                                    datasets, num_params=num_params, group_size=k,
                                    group_seconds=group_seconds))
  return results


def _batched_predict(predict, state, images: jax.Array, batch_size: int) -> jax.Array | None:
  """Logits (K, N, classes) of all K models, in batches; None for an empty split."""
  n = images.shape[0]
  if not n:
    return None
  bs = min(batch_size, n)
  padded = jnp.pad(images, ((0, (-n) % bs),) + ((0, 0),) * (images.ndim - 1))
  chunks = [predict(state, padded[i:i + bs]) for i in range(0, padded.shape[0], bs)]
  return jnp.concatenate(chunks, axis=1)[:, :n]
