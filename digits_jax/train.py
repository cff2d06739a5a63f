"""Training and evaluation.

The pieces, from the inside out:

* :func:`train_step` -- pure ``(state, images, labels, rng) -> (state, metrics)``:
  augmentation, forward, cross-entropy, gradient, optax update.
* :func:`make_epoch_fn` -- one epoch over batches drawn by an on-device permutation
  of the on-device training set: a single compiled ``lax.scan``, or one compiled step
  per batch on a CPU without the C++ kernels (XLA's convolutions are slow in loops).
* :func:`predict` / :func:`evaluate` -- logits in fixed-size batches, then loss and
  accuracy.
* :func:`train_and_evaluate` -- the run: data, state, epochs, validation after each
  epoch, the best-by-validation checkpoint (orbax), test metrics of that checkpoint,
  and every file of the work directory.

The test set is touched once, at the end, by the checkpoint that validation chose.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax.training import train_state

from digits_jax import augment, checkpoints, data, files, models, native, report, workdirs
from digits_jax.config import Config, check_sizes, resolve

log = logging.getLogger(__name__)


class TrainState(train_state.TrainState):
  """Flax's TrainState plus the BatchNorm statistics ({} for models without BN)."""

  batch_stats: Any = None


class TrainingDivergedError(RuntimeError):
  """The loss became NaN or infinite."""


def make_schedule(config: Config, steps_per_epoch: int) -> optax.Schedule:
  """The learning-rate multiplier by step: 1 at the peak, the config's shape around it."""
  total = steps_per_epoch * config.epochs
  if config.schedule == "constant":
    return optax.constant_schedule(1.0)
  if config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, 1.0, warmup_steps=min(steps_per_epoch, total // 10), decay_steps=total)
  if config.schedule == "onecycle":
    return optax.cosine_onecycle_schedule(total, 1.0)
  raise ValueError(config.schedule)


def _optimizer(learning_rate, *, name: str, multiplier: optax.Schedule, momentum: float,
               weight_decay: float) -> optax.GradientTransformation:
  lr = lambda count: learning_rate * multiplier(count)
  if name == "adam":
    return optax.adam(lr)
  if name == "adamw":
    return optax.adamw(lr, weight_decay=weight_decay)
  if name == "sgd":
    sgd = optax.sgd(lr, momentum=momentum or None)
    if weight_decay:
      return optax.chain(optax.add_decayed_weights(weight_decay), sgd)
    return sgd
  raise ValueError(name)


def make_optimizer(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
  """The optax optimizer a resolved config names, with its learning-rate schedule.

  The peak learning rate is an injected hyperparameter: it lives in the optimizer
  state (``opt_state.hyperparams["learning_rate"]``), not in the compiled code, so
  models that differ only in learning rate can be trained together under
  ``jax.vmap`` (:mod:`digits_jax.parallel`).
  """
  factory = optax.inject_hyperparams(
      _optimizer, static_args=("name", "multiplier", "momentum", "weight_decay"))
  return factory(learning_rate=config.learning_rate, name=config.optimizer,
                 multiplier=make_schedule(config, steps_per_epoch),
                 momentum=config.momentum, weight_decay=config.weight_decay)


def create_train_state(config: Config, rng: jax.Array, steps_per_epoch: int,
                       num_classes: int = models.NUM_CLASSES,
                       tx: optax.GradientTransformation | None = None,
                       model: nn.Module | None = None) -> TrainState:
  """A fresh TrainState.

  ``tx`` and ``model`` default to those ``config`` names; states that are to be
  stacked (:mod:`digits_jax.parallel`) must share both objects.
  """
  model = model or models.create_model(config.model, fast=config.fast_ops,
                                       num_classes=num_classes)
  variables = models.init_variables(model, rng)
  return TrainState.create(
      apply_fn=model.apply,
      params=variables["params"],
      batch_stats=variables.get("batch_stats", {}),
      tx=tx or make_optimizer(config, steps_per_epoch),
  )


def cross_entropy(logits: jax.Array, labels: jax.Array, *, loss: str = "sparse",
                  label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy.

  ``sparse`` takes the integer labels directly, ``onehot`` builds categorical
  targets first (what Keras' categorical cross-entropy does). Without smoothing the
  two are the same number; label smoothing always goes through one-hot targets.
  """
  if loss == "sparse" and not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def _variables(state: TrainState, params=None) -> dict:
  variables = {"params": state.params if params is None else params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return variables


def train_step(state: TrainState, images: jax.Array, labels: jax.Array, rng: jax.Array,
               *, config: Config) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on one batch. Pure; ``rng`` drives augmentation and dropout."""
  augment_rng, dropout_rng = jax.random.split(rng)
  if config.augment:
    images = augment.random_rotate_shift(augment_rng, images)

  def loss_fn(params):
    logits, updates = state.apply_fn(
        _variables(state, params), images, train=True,
        rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
    loss = cross_entropy(logits, labels, loss=config.loss,
                         label_smoothing=config.label_smoothing).mean()
    return loss, (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(
      grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  return state, {"loss": loss, "accuracy": accuracy}


def steps_per_epoch(num_train: int, batch_size: int) -> int:
  """Full batches per epoch; the remainder (a fresh random one each epoch) is dropped."""
  return num_train // batch_size


def _epoch_plan(rng: jax.Array, num_train: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """The epoch's batches (steps, batch_size) of indices and the key its steps fold in."""
  steps = steps_per_epoch(num_train, batch_size)
  perm_rng, step_rng = jax.random.split(rng)
  batches = jax.random.permutation(perm_rng, num_train)[: steps * batch_size]
  return batches.reshape(steps, batch_size), step_rng


def _indexed_step(state: TrainState, images: jax.Array, labels: jax.Array, batches: jax.Array,
                  step: jax.Array, step_rng: jax.Array, *, config: Config,
                  batch_sharding: jax.sharding.Sharding | None = None):
  """Step ``step`` of an epoch: gathers its batch on the device, then trains on it.

  With ``batch_sharding`` the gathered batch is split over devices (data
  parallelism); the parameters stay replicated and XLA inserts the gradient
  all-reduce.
  """
  idx = batches[step]
  x, y = images[idx], labels[idx]
  if batch_sharding is not None:
    x, y = jax.lax.with_sharding_constraint((x, y), batch_sharding)
  return train_step(state, x, y, jax.random.fold_in(step_rng, step), config=config)


def train_epoch(state: TrainState, rng: jax.Array, images: jax.Array, labels: jax.Array,
                *, config: Config, batch_sharding: jax.sharding.Sharding | None = None
                ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One epoch as a single ``lax.scan`` over a fresh on-device permutation.

  Returns the new state and per-step metrics (arrays of length steps).
  """
  batches, step_rng = _epoch_plan(rng, images.shape[0], config.batch_size)

  def body(state, step):
    return _indexed_step(state, images, labels, batches, step, step_rng, config=config,
                         batch_sharding=batch_sharding)

  return jax.lax.scan(body, state, jnp.arange(batches.shape[0]))


def make_epoch_fn(config: Config, epoch_loop: str = "auto", *, vmapped: bool = False,
                  batch_sharding: jax.sharding.Sharding | None = None):
  """A compiled ``(state, rng, images, labels) -> (state, step_metrics)`` for one epoch.

  ``scan`` compiles the whole epoch into one call (:func:`train_epoch`). ``host``
  dispatches one compiled step per batch from Python, the data staying on the
  device. Both compute the same steps with the same keys. ``auto`` picks ``scan``,
  except on a CPU without the C++ kernels of :mod:`digits_jax.native` or with
  ``fast_ops=False``: there the convolutions are XLA's own, which XLA:CPU runs more
  than ten times slower inside a loop body than at top level (measured: 1.4 s against
  0.09 s per step of ``conv2_dense128_dropout`` at batch 128). With the kernels (im2col
  products), the scanned epoch measured 8% to 30% faster per step than the host loop
  on the 2-core VM (``conv2_dense100`` 5.5 vs 6.0 ms, ``conv3_dense100`` 11.1 vs 12.5 ms,
  ``conv2_dense128_dropout`` 23.2 vs 26.1 ms, ``bn_conv3_wide`` 76 vs 112 ms).

  Args:
    config: the resolved config of the run (of every model, when vmapped).
    epoch_loop: ``auto``, ``scan`` or ``host``.
    vmapped: ``state`` and ``rng`` carry a leading models axis (several models
      trained together, see :mod:`digits_jax.parallel`); the data is shared, each
      model draws its own batches. Step metrics then have shape (models, steps).
    batch_sharding: split each batch over devices, see :func:`_indexed_step`.
  """
  if jax.default_backend() == "cpu":
    native.tune_allocator()  # keep step buffers mapped between steps (see its docstring)
  if epoch_loop == "auto":
    xla_convs = not (config.fast_ops and native.use_native())
    slow_loops = jax.default_backend() == "cpu" and xla_convs
    epoch_loop = "host" if slow_loops else "scan"
  if epoch_loop not in ("scan", "host"):
    raise ValueError(f"epoch_loop must be auto, scan or host, got {epoch_loop!r}")
  step = functools.partial(_indexed_step, config=config, batch_sharding=batch_sharding)
  if epoch_loop == "scan":
    epoch = functools.partial(train_epoch, config=config, batch_sharding=batch_sharding)
    if vmapped:
      epoch = jax.vmap(epoch, in_axes=(0, 0, None, None))
    return jax.jit(epoch, donate_argnums=0)

  plan = _epoch_plan
  if vmapped:
    plan = jax.vmap(plan, in_axes=(0, None, None))
    step = jax.vmap(step, in_axes=(0, None, None, 0, None, 0))
  plan = jax.jit(plan, static_argnums=(1, 2))
  step_fn = jax.jit(step, donate_argnums=0)

  def run(state, rng, images, labels):
    batches, step_rng = plan(rng, images.shape[0], config.batch_size)
    per_step = []
    for i in range(batches.shape[-2]):
      state, metrics = step_fn(state, images, labels, batches, np.int32(i), step_rng)
      per_step.append(metrics)
    stack = functools.partial(jnp.stack, axis=1 if vmapped else 0)
    return state, jax.tree_util.tree_map(lambda *xs: stack(xs), *per_step)

  return run


@jax.jit
def forward(state: TrainState, images: jax.Array) -> jax.Array:
  return state.apply_fn(_variables(state), images, train=False)


def predict(state: TrainState, images: jax.Array, batch_size: int = 1000) -> jax.Array:
  """Logits for ``images``, in fixed-size batches (the last one padded).

  A host loop over one compiled forward pass: XLA:CPU's own convolutions (the
  fallback without the C++ kernels) are much slower inside a ``lax.scan``.
  """
  n = images.shape[0]
  bs = min(batch_size, n)
  padded = jnp.pad(images, ((0, (-n) % bs),) + ((0, 0),) * (images.ndim - 1))
  logits = [forward(state, padded[i:i + bs]) for i in range(0, padded.shape[0], bs)]
  return jnp.concatenate(logits)[:n]


def metrics_from_logits(logits: jax.Array, labels: jax.Array) -> dict[str, float]:
  return {
      "loss": float(cross_entropy(logits, labels).mean()),
      "accuracy": float(jnp.mean(jnp.argmax(logits, -1) == labels)),
  }


def evaluate(state: TrainState, images: jax.Array, labels: jax.Array,
             batch_size: int = 1000) -> dict[str, float]:
  """Mean cross-entropy and accuracy over a whole split."""
  return metrics_from_logits(predict(state, images, batch_size), labels)


def environment() -> dict[str, Any]:
  """What the numbers were measured on: library versions and devices."""
  cpu = ""
  try:
    cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
               if line.startswith("model name"))
  except (OSError, StopIteration):
    cpu = platform.processor()
  return {
      "python": platform.python_version(),
      "jax": jax.__version__,
      "flax": flax.__version__,
      "optax": optax.__version__,
      "numpy": np.__version__,
      "backend": jax.default_backend(),
      "devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()],
      "cpu": cpu,
      "cpu_count": os.cpu_count(),
  }


def check_finite(step_losses: np.ndarray, epoch: int) -> None:
  """Stops a run whose loss became NaN or infinite during ``epoch``.

  Called before anything of the epoch is saved, so the files of the run stay those
  of the last good epoch.

  Raises:
    TrainingDivergedError: naming the epoch, the step and what was kept.
  """
  bad = np.flatnonzero(~np.isfinite(step_losses))
  if bad.size:
    step, steps = int(bad[0]) + 1, step_losses.size
    kept = ("no epoch finished, so nothing was saved" if epoch == 1 else
            f"the checkpoints and metrics.jsonl of epoch {epoch - 1}, the last good one, are kept")
    raise TrainingDivergedError(
        f"training diverged: the loss became {step_losses[bad[0]]} at epoch {epoch}, step "
        f"{step} of {steps} (step {(epoch - 1) * steps + step} of the run); stopped, and {kept}. "
        "Lower --learning_rate (or check the data), then start again with --overwrite or in "
        "another --workdir.")


def training_split(config: Config, datasets: data.Datasets) -> data.Split:
  """The training images a run uses: all, or the first ``train_subset``."""
  train = datasets.train
  if config.train_subset:
    train = data.Split(train.images[: config.train_subset], train.labels[: config.train_subset])
  return train


def write_config(workdir: Path, config: Config, datasets: data.Datasets, split: data.Split,
                 **extra: Any) -> None:
  """Writes ``config.json``: the resolved config, the environment and the data sizes."""
  workdir.mkdir(parents=True, exist_ok=True)
  files.write_json(workdir / "config.json",
                   {"config": config.to_dict(), "environment": environment(),
                    "data": {"backend": datasets.backend, "train": len(split.labels),
                             "validation": len(datasets.validation.labels),
                             "test": len(datasets.test.labels)},
                    **extra})


def checkpoint_variables(state: TrainState) -> dict[str, Any]:
  """What the best checkpoint keeps of a state: the model's variables."""
  return {"params": state.params, "batch_stats": state.batch_stats}


def _score(row: dict[str, Any]) -> float:
  """What the best checkpoint maximises: validation accuracy, or else the epoch.

  Without a validation split the last epoch is "best": nothing else may choose.
  """
  return row.get("val_accuracy", float(row["epoch"]))


def _best_epoch(history: list[dict[str, Any]]) -> int | None:
  """The epoch :class:`checkpoints.BestCheckpoint` keeps for ``history`` (ties: the first)."""
  best = None
  for row in history:
    if best is None or _score(row) > _score(best):
      best = row
  return None if best is None else best["epoch"]


def resume(workdir: Path, state: TrainState, latest: checkpoints.LatestCheckpoint,
           best: checkpoints.BestCheckpoint) -> tuple[TrainState, list[dict[str, Any]]]:
  """The state and history a run continues from: those of its last complete checkpoint.

  At the end of each epoch a run writes ``metrics.jsonl``, then the latest checkpoint,
  then (if better) the best one, so after a kill at any moment ``metrics.jsonl`` may
  hold one epoch more than the latest checkpoint (dropped here, computed again), and
  the best checkpoint may lack the latest epoch (saved here from the restored state),
  but never holds a later one. Orbax deletes the temporary directory of a save that
  was interrupted.

  Args:
    workdir: the run's directory.
    state: a fresh state, the structure to restore into; returned if there is no
      checkpoint.
    latest, best: the run's checkpoints.

  Returns:
    The restored state (or ``state``) and the history of its epochs (or ``[]``).

  Raises:
    CheckpointError: a checkpoint is unreadable, another run's, or disagrees with
      ``metrics.jsonl``.
  """
  history: list[dict[str, Any]] = []
  epoch = latest.epoch()
  if epoch is not None:
    epoch, state = latest.restore(state)
    history = workdirs.resume_history(workdir, epoch)
    best.maybe_save(epoch, checkpoint_variables(state), _score(history[-1]))
  files.write_jsonl(workdir / "metrics.jsonl", history)
  if best.best_epoch() != _best_epoch(history):
    found = (f"there is no checkpoint in {latest.directory} to resume from" if epoch is None
             else f"{workdir / 'metrics.jsonl'} and the latest checkpoint (epoch {epoch}) make "
             f"epoch {_best_epoch(history)} the best")
    raise checkpoints.CheckpointError(
        f"the best checkpoint in {best.directory} holds epoch {best.best_epoch()}, but {found}; "
        "the directory was changed by hand or written by another program. "
        f"{checkpoints.FIX_HINT}")
  if epoch is not None:
    log.info("%s: resuming after epoch %d, from its checkpoint", workdir, epoch)
  return state, history


def finish_run(config: Config, workdir: Path, state: TrainState,
               best: checkpoints.BestCheckpoint, history: list[dict[str, Any]],
               datasets: data.Datasets, *, num_params: int, **extra: Any) -> dict[str, Any]:
  """Evaluates the best-by-validation checkpoint on the test set; writes results.json.

  First writes the reports, plots and TensorBoard scalars of :mod:`digits_jax.report`
  from the same test logits; ``results.json`` comes last, as it marks the run finished.

  ``extra`` items are added to the results.
  """
  best_epoch = best.best_epoch()
  variables = best.restore(checkpoint_variables(state))
  best_state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"])
  logits = predict(best_state, jnp.asarray(datasets.test.images), config.eval_batch_size)
  test = metrics_from_logits(logits, jnp.asarray(datasets.test.labels))
  best_row = history[best_epoch - 1]
  results = {
      "model": config.model,
      "optimizer": config.optimizer,
      "learning_rate": config.learning_rate,
      "seed": config.seed,
      "num_params": num_params,
      "best_epoch": best_epoch,
      "val_accuracy": best_row.get("val_accuracy"),
      "val_loss": best_row.get("val_loss"),
      "test_accuracy": test["accuracy"],
      "test_loss": test["loss"],
      "train_seconds": sum(r["epoch_seconds"] for r in history),
      # The median leaves out the first epoch's compilation when there are 3 or more.
      "seconds_per_epoch": float(np.median([r["epoch_seconds"] for r in history])),
      **extra,
  }
  report.write_run_report(workdir, logits, datasets.test.labels, datasets.test.images, history,
                          best_epoch=best_epoch, test_metrics=test)
  # Last: results.json marks the run finished (see workdirs.check); a run killed before
  # it writes its reports again when started again.
  files.write_json(workdir / "results.json", results)
  return results


def train_and_evaluate(config: Config, workdir: str | os.PathLike, *,
                       datasets: data.Datasets | None = None,
                       manual_dir: str | None = None,
                       data_dir: str | None = None,
                       epoch_loop: str = "auto",
                       overwrite: bool = False) -> dict[str, Any]:
  """Trains ``config`` and writes everything about the run into ``workdir``.

  Started again on the same ``workdir``, a run picks up where it stopped: it
  returns the results of a finished run without training, and otherwise resumes
  from the checkpoint of the last finished epoch (see :func:`resume`), ending with
  the same numbers as a run that was never interrupted. A ``workdir`` holding
  another config's run is refused unless ``overwrite`` (see :mod:`digits_jax.workdirs`).

  Files written: ``config.json`` (resolved config and environment),
  ``metrics.jsonl`` (one line per epoch), ``results.json`` (test metrics of the
  best-by-validation checkpoint, with timing and parameter count),
  ``checkpoints/`` (orbax), and the reports, plots and TensorBoard scalars of
  :func:`digits_jax.report.write_run_report`.

  Args:
    config: what to run; ``None`` fields come from the model's source recipe.
    workdir: directory for the run's files (created).
    datasets: already loaded data (a sweep loads once); else loaded here.
    manual_dir, data_dir: where the data comes from, see :func:`data.load_datasets`.
    epoch_loop: how an epoch is dispatched, see :func:`make_epoch_fn`.
    overwrite: delete the files of a previous run in ``workdir`` (any config) and
      start from scratch.

  Returns:
    The contents of ``results.json``.

  Raises:
    ConfigError: a bad config, or ``workdir`` holds another config's run
      (:class:`workdirs.WorkdirError`).
    DataError: the data cannot be loaded.
    CheckpointError: a checkpoint in ``workdir`` is corrupt or another run's.
    TrainingDivergedError: the loss became NaN or infinite.
  """
  config = resolve(config)
  workdir = Path(workdir)
  finished = workdirs.check(config, workdir, overwrite=overwrite)
  if finished is not None:
    log.info("%s: finished already, not trained again (results.json)", workdir)
    return finished
  if datasets is None:
    datasets = data.load_datasets(config.dataset, manual_dir=manual_dir, data_dir=data_dir,
                                  validation_size=config.validation_size)
  split = training_split(config, datasets)
  check_sizes(config, len(split.labels))
  # Every check passed: only now may the previous run's files go.
  if overwrite:
    workdirs.clear(workdir)
  if workdirs.saved_config(workdir) is None:  # else resuming: keep the original
    write_config(workdir, config, datasets, split)

  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  steps = steps_per_epoch(len(split.labels), config.batch_size)
  state = create_train_state(config, init_rng, steps, datasets.num_classes)
  num_params = models.count_params(state.params)

  x_train, y_train = jnp.asarray(split.images), jnp.asarray(split.labels)
  x_val, y_val = jnp.asarray(datasets.validation.images), jnp.asarray(datasets.validation.labels)
  has_val = len(y_val) > 0

  epoch_fn = make_epoch_fn(config, epoch_loop)
  latest = checkpoints.LatestCheckpoint(workdir / "checkpoints", identity=config.to_dict())
  if latest.epoch() is None:
    # Nothing to resume from, so the run starts at epoch 1: a best checkpoint is then left
    # by an interrupted run that saved no latest one (parallel.train_group saves none).
    checkpoints.BestCheckpoint.discard(workdir / "checkpoints")
  best = checkpoints.BestCheckpoint(workdir / "checkpoints")
  state, history = resume(workdir, state, latest, best)
  for epoch in range(len(history) + 1, config.epochs + 1):
    t0 = time.perf_counter()
    state, step_metrics = epoch_fn(state, jax.random.fold_in(train_rng, epoch), x_train, y_train)
    step_metrics = jax.device_get(step_metrics)
    seconds = time.perf_counter() - t0
    check_finite(step_metrics["loss"], epoch)
    row = {"epoch": epoch, "epoch_seconds": seconds,
           "train_loss": float(np.mean(step_metrics["loss"])),
           "train_accuracy": float(np.mean(step_metrics["accuracy"]))}
    if has_val:
      val = evaluate(state, x_val, y_val, config.eval_batch_size)
      row |= {"val_loss": val["loss"], "val_accuracy": val["accuracy"]}
    history.append(row)
    files.write_jsonl(workdir / "metrics.jsonl", history)
    log.info("%s epoch %d: %s", config.model, epoch,
             ", ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch"))
    # This order (metrics.jsonl, latest, best) is what resume() relies on after a kill.
    latest.save(epoch, state)
    best.maybe_save(epoch, checkpoint_variables(state), _score(row))

  return finish_run(config, workdir, state, best, history, datasets, num_params=num_params)
