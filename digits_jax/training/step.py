"""The compiled core of training: the train step, one epoch of steps, and prediction.

* :func:`train_step` -- pure ``(state, images, labels, rng) -> (state, metrics)``:
  augmentation, forward, cross-entropy, gradient, optax update.
* :func:`make_epoch_fn` -- one epoch over batches drawn by an on-device permutation of
  the on-device training set: a single compiled ``lax.scan``, or one compiled step per
  batch where XLA's own convolutions would run inside the loop (``epoch_loop``).
* :func:`predict` / :func:`evaluate` -- logits in fixed-size batches, then loss and
  accuracy; :func:`predict_tta` averages the probabilities of shifted copies
  (test-time augmentation, ``config.tta``).

With ``config.ema`` (a decay, e.g. 0.999) the state also carries an exponential moving
average of the model variables (:func:`update_ema`); :func:`model_variables` (what the
best checkpoint keeps) and :func:`eval_state` (what validation sees) are then the averaged
ones, while the latest checkpoint, the whole state, keeps both.

Given a mesh of several devices (:func:`digits_jax.training.sharding.data_mesh`), the
epoch runs inside ``jax.shard_map``: every device draws the same permutation, gathers its
own equal slice of every batch and computes its gradient, and ``lax.pmean`` averages the
gradients and metrics; BatchNorm, dropout and augmentation see the whole batch
(:func:`digits_jax.models.layers.split_batch`), so the numbers are those of one device up
to float rounding. Prediction then splits each batch of images over the devices.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import struct
from flax.training import train_state
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from digits_jax import augment, models
from digits_jax.config import Config
from digits_jax.data import NUM_CLASSES
from digits_jax.models import layers, native, roles
from digits_jax.training import adversarial, sharding
from digits_jax.training.optim import make_optimizer


class TrainState(train_state.TrainState):
  """Flax's TrainState plus the BatchNorm statistics ({} for models without BN), the
  moving average of both (``ema``: {} without ``config.ema``), and ``infer_fn``: the
  network's ``apply`` for passes without a gradient (:func:`forward`), or ``None`` for
  ``apply_fn``."""

  batch_stats: Any = None
  ema: Any = None
  infer_fn: Callable[..., Any] | None = struct.field(pytree_node=False, default=None)


def create_train_state(
  config: Config,
  rng: jax.Array,
  steps_per_epoch: int,
  num_classes: int = NUM_CLASSES,
  tx: optax.GradientTransformation | None = None,
  model: nn.Module | None = None,
) -> TrainState:
  """A fresh TrainState.

  ``tx`` and ``model`` default to those ``config`` names; states that are to be
  stacked (:mod:`digits_jax.training.groups`) must share both objects.
  """
  model = model or config.create_model(num_classes)
  variables = models.init_variables(model, rng)
  state = _state(model, variables, tx or make_optimizer(config, steps_per_epoch))
  if config.ema:
    # The average starts at the initial weights (no debiasing).
    state = state.replace(ema=jax.tree_util.tree_map(jnp.copy, _raw_variables(state)))
  return state


def variables_template(model: nn.Module) -> dict[str, Any]:
  """What :func:`model_variables` gives for ``model``, as shapes and dtypes computed without
  running anything: the structure a best checkpoint is restored into."""
  shapes = models.variable_shapes(model)
  return {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}


def inference_state(model: nn.Module, variables: dict[str, Any]) -> TrainState:
  """A TrainState that only predicts: ``model`` with ``variables`` (a checkpoint's
  :func:`model_variables`), no optimizer state (``optax.identity``)."""
  return _state(model, variables, optax.identity())


def _state(
  model: nn.Module, variables: dict[str, Any], tx: optax.GradientTransformation
) -> TrainState:
  """``model`` with ``variables`` and the optimizer ``tx`` (its state fresh), no average."""
  return TrainState.create(
    apply_fn=model.apply,
    infer_fn=models.inference_apply(model),
    params=variables["params"],
    batch_stats=variables.get("batch_stats") or {},
    tx=tx,
    ema={},
  )


def _raw_variables(state: TrainState) -> dict[str, Any]:
  return {"params": state.params, "batch_stats": state.batch_stats}


def model_variables(state: TrainState) -> dict[str, Any]:
  """What a checkpoint of the model keeps: ``params`` and ``batch_stats``, the moving
  averages of both when the state has them."""
  return state.ema if state.ema else _raw_variables(state)


def eval_state(state: TrainState) -> TrainState:
  """``state`` with its averaged variables in place of the trained ones, if it has them."""
  if not state.ema:
    return state
  return state.replace(params=state.ema["params"], batch_stats=state.ema["batch_stats"])


def update_ema(ema: Any, variables: Any, decay: float) -> Any:
  """One step of the moving average: ``decay * ema + (1 - decay) * variables``.

  The same recurrence as ``optax.ema(decay, debias=False)``, started at the initial
  weights rather than at zero, so it needs no debiasing.
  """
  return jax.tree_util.tree_map(lambda e, v: decay * e + (1.0 - decay) * v, ema, variables)


def cross_entropy(
  logits: jax.Array, labels: jax.Array, *, loss: str = "sparse", label_smoothing: float = 0.0
) -> jax.Array:
  """Per-example softmax cross-entropy.

  ``sparse`` takes the integer labels directly, ``onehot`` builds categorical targets
  first (what Keras' categorical cross-entropy does). Without smoothing the two are the
  same number; label smoothing always goes through one-hot targets.
  """
  if loss == "sparse" and not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def _apply_variables(state: TrainState, params=None) -> dict:
  variables = {"params": state.params if params is None else params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return variables


def train_step(
  state: TrainState,
  images: jax.Array,
  labels: jax.Array,
  rng: jax.Array,
  *,
  config: Config,
  batch_axis: str | None = None,
  steps_per_epoch: int = 1,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on one batch. Pure; ``rng`` drives augmentation and dropout.

  With ``config.adversarial`` the step trains on an attack of the (augmented) batch made
  here (:mod:`digits_jax.training.adversarial`); its loss and accuracy are then those of
  the attacked batch (TRADES: its whole objective, and the accuracy on the attacked batch).

  Args:
    state, images, labels, rng: the state, the batch and the step's key.
    config: the run's config.
    batch_axis: inside ``jax.shard_map``, the mesh axis the batch is split over:
      ``images`` and ``labels`` are then this device's equal part of the batch, and the
      gradients and metrics are averaged over the axis (the whole batch's).
    steps_per_epoch: optimizer steps per epoch (the attack's eps warm-up counts in them).
  """
  augment_rng, dropout_rng = jax.random.split(rng)
  if config.augment:
    images = augment.random_warp(
      augment_rng,
      images,
      config.rotation,
      config.shift,
      config.zoom,
      config.elastic_alpha or 0.0,
      config.elastic_sigma or 4.0,
      batch_axis=batch_axis,
    )

  def apply(params, x, batch_stats=None):
    variables = _apply_variables(state, params)
    if batch_stats is not None:
      variables["batch_stats"] = batch_stats
    with layers.split_batch(batch_axis) if batch_axis else contextlib.nullcontext():
      return state.apply_fn(
        variables, x, train=True, rngs={"dropout": dropout_rng}, mutable=["batch_stats"]
      )

  def ce(logits):
    return cross_entropy(logits, labels, loss=config.loss, label_smoothing=config.label_smoothing)

  if adversarial.enabled(config):
    # The attack needs input gradients only: the parameters are constants to it.
    frozen = jax.lax.stop_gradient(state.params)
    attack_logits = lambda x: apply(frozen, x)[0]  # noqa: E731
    eps = adversarial.eps_at(config, state.step, steps_per_epoch)
    attack_rng = jax.random.fold_in(rng, 2)  # the augmentation and dropout keys stay as they are

  if config.adversarial == "trades":

    def loss_fn(params):
      clean, updates = apply(params, images)
      x_adv = adversarial.perturb(
        config, attack_logits, images, labels, eps, attack_rng, clean_logits=clean
      )
      logits, updates = apply(params, x_adv, updates.get("batch_stats"))
      kl = adversarial.trades_kl(clean, logits)
      return (ce(clean) + config.trades_beta * kl).mean(), (logits, updates)

  else:
    if adversarial.enabled(config):
      images = adversarial.perturb(config, attack_logits, images, labels, eps, attack_rng)

    def loss_fn(params):
      logits, updates = apply(params, images)
      return ce(logits).mean(), (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  if batch_axis:
    grads, loss, accuracy = jax.lax.pmean((grads, loss, accuracy), batch_axis)
  batch_stats = updates.get("batch_stats", state.batch_stats)
  if config.freeze == "features":
    # Frozen batch-norm layers keep their statistics as the source run left them.
    batch_stats = roles.keep_features(state.batch_stats, batch_stats, state.params)
  old_ema = state.ema
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if config.ema:
    ema = update_ema(old_ema, _raw_variables(state), config.ema)
    if config.freeze == "features":
      ema = {c: roles.keep_features(old_ema[c], ema[c], state.params) for c in ema}
    state = state.replace(ema=ema)
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


def _indexed_step(
  state: TrainState,
  images: jax.Array,
  labels: jax.Array,
  batches: jax.Array,
  step: jax.Array,
  step_rng: jax.Array,
  *,
  config: Config,
  batch_axis: str | None = None,
  on_step: Callable[[int], None] | None = None,
):
  """Step ``step`` of an epoch: gathers its batch (or this device's part) on the device.

  ``on_step``, if given, is called on the host with the steps done so far, about a hundred
  times an epoch (:func:`make_epoch_fn`)."""
  idx = layers.batch_slice(batches[step], batch_axis)
  out = train_step(
    state,
    images[idx],
    labels[idx],
    jax.random.fold_in(step_rng, step),
    config=config,
    batch_axis=batch_axis,
    steps_per_epoch=batches.shape[0],
  )
  if on_step is not None:
    _report_step(step, batches.shape[0], on_step)
  return out


def _report_step(step: jax.Array, steps: int, on_step: Callable[[int], None]) -> None:
  """Calls ``on_step(step + 1)`` on the host every ``steps // 100`` steps and at the last.

  The callback reads only the step's number, none of its floats, so the step computes
  what it computes without it."""
  done = step + 1
  every = max(1, steps // 100)
  jax.lax.cond(
    (done % every == 0) | (done == steps),
    lambda d: jax.debug.callback(lambda d: on_step(int(d)), d),
    lambda d: None,
    done,
  )


def train_epoch(
  state: TrainState,
  rng: jax.Array,
  images: jax.Array,
  labels: jax.Array,
  *,
  config: Config,
  batch_axis: str | None = None,
  on_step: Callable[[int], None] | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One epoch as a single ``lax.scan`` over a fresh on-device permutation.

  With ``batch_axis`` (inside ``jax.shard_map``) each device trains on its part of every
  batch (:func:`train_step`). Returns the new state and per-step metrics (arrays of
  length steps).
  """
  batches, step_rng = _epoch_plan(rng, images.shape[0], config.batch_size)

  def body(state, step):
    return _indexed_step(
      state,
      images,
      labels,
      batches,
      step,
      step_rng,
      config=config,
      batch_axis=batch_axis,
      on_step=on_step,
    )

  return jax.lax.scan(body, state, jnp.arange(batches.shape[0]))


def epoch_loop(config: Config) -> str:
  """``scan`` or ``host``: what ``config.epoch_loop`` (``auto``, ``scan``, ``host``) means here.

  ``auto`` picks ``scan``, except on a CPU whose convolutions are XLA's own (no C++
  kernels, or ``fast_ops=False``): XLA:CPU runs those far slower inside a loop body than
  at top level, so there each step is dispatched from Python (see docs/speed.md).
  """
  if config.epoch_loop != "auto":
    return config.epoch_loop
  xla_convs = not (models.use_fast_ops(config.fast_ops) and native.use_native())
  return "host" if jax.default_backend() == "cpu" and xla_convs else "scan"


def make_epoch_fn(
  config: Config,
  *,
  vmapped: bool = False,
  mesh: Mesh | None = None,
  on_step: Callable[[int], None] | None = None,
):
  """A compiled ``(state, rng, images, labels) -> (state, step_metrics)`` for one epoch.

  ``scan`` compiles the whole epoch into one call (:func:`train_epoch`); ``host``
  dispatches one compiled step per batch from Python, the data staying on the device.
  Both compute the same steps with the same keys; :func:`epoch_loop` says which runs.

  Args:
    config: the resolved config of the run (of every model, when vmapped).
    vmapped: ``state`` and ``rng`` carry a leading models axis (several models trained
      together, see :mod:`digits_jax.training.groups`); the data is shared, each model
      draws its own batches. Step metrics then have shape (models, steps).
    mesh: a data-parallel mesh (:func:`digits_jax.training.sharding.data_mesh`) of
      several devices: every batch is split over them. The arguments must then be
      replicated on it (:func:`digits_jax.training.sharding.replicate`), and so are the
      results. ``None`` or one device: the single-device computation.
    on_step: called on the host with the steps of the epoch done so far, about a hundred
      times an epoch, from a host callback compiled into the step (a progress line,
      :class:`digits_jax.progress.EpochProgress`); with several devices, once per device.
      Not with ``vmapped``. ``None`` compiles the step without it.
  """
  loop = epoch_loop(config)
  if loop not in ("scan", "host"):
    raise ValueError(f"epoch_loop must be auto, scan or host, got {config.epoch_loop!r}")
  sharded = mesh is not None and mesh.size > 1
  if sharded and vmapped:
    raise ValueError("a vmapped group of models does not split its batches over devices")
  if on_step is not None and vmapped:
    raise ValueError("a vmapped group of models reports no steps")
  axis, split, place = None, (lambda fn: fn), (lambda x: x)
  if sharded:
    sharding.check_batch_size(config.batch_size, mesh.size)
    axis = sharding.DATA_AXIS

    def split(fn):
      return jax.shard_map(fn, mesh=mesh, in_specs=P(), out_specs=P(), check_vma=False)

    def place(x):
      return sharding.replicate(x, mesh)

  if loop == "scan":
    epoch = functools.partial(train_epoch, config=config, batch_axis=axis, on_step=on_step)
    if vmapped:
      epoch = jax.vmap(epoch, in_axes=(0, 0, None, None))
    epoch = jax.jit(split(epoch), donate_argnums=0)
    return lambda state, rng, images, labels: epoch(state, place(rng), images, labels)

  step = functools.partial(_indexed_step, config=config, batch_axis=axis, on_step=on_step)
  plan = _epoch_plan
  if vmapped:
    plan = jax.vmap(plan, in_axes=(0, None, None))
    step = jax.vmap(step, in_axes=(0, None, None, 0, None, 0))
  plan = jax.jit(plan, static_argnums=(1, 2))
  step_fn = jax.jit(split(step), donate_argnums=0)

  def run(state, rng, images, labels):
    batches, step_rng = plan(place(rng), images.shape[0], config.batch_size)
    per_step = []
    for i in range(batches.shape[-2]):
      state, metrics = step_fn(state, images, labels, batches, place(np.int32(i)), step_rng)
      per_step.append(metrics)
    stack = functools.partial(jnp.stack, axis=1 if vmapped else 0)
    return state, jax.tree_util.tree_map(lambda *xs: stack(xs), *per_step)

  return run


@jax.jit
def forward(state: TrainState, images: jax.Array) -> jax.Array:
  """Logits of one batch, in inference mode (through ``state.infer_fn`` if it has one)."""
  return (state.infer_fn or state.apply_fn)(_apply_variables(state), images, train=False)


# Vmapped over models, XLA's own convolutions would be one grouped convolution (slower on the
# CPU, docs/speed.md): a stack of models keeps its training path.
_forward_models = jax.jit(
  jax.vmap(
    lambda state, images: state.apply_fn(_apply_variables(state), images, train=False),
    in_axes=(0, None),
  )
)


@functools.cache
def _split_forward(mesh: Mesh):
  """Logits of a batch split over ``mesh``'s devices, gathered whole on every device."""

  def fn(state, images):
    logits = (state.infer_fn or state.apply_fn)(_apply_variables(state), images, train=False)
    return jax.lax.all_gather(logits, sharding.DATA_AXIS, tiled=True)

  return jax.jit(
    jax.shard_map(
      fn, mesh=mesh, in_specs=(P(), P(sharding.DATA_AXIS)), out_specs=P(), check_vma=False
    )
  )


def _predict_split(state: TrainState, images, batch_size: int, mesh: Mesh) -> jax.Array:
  """:func:`predict` with each batch split over the devices of ``mesh`` (every process)."""
  images = np.asarray(images)
  n, parts = images.shape[0], mesh.size
  bs = -(-max(1, min(batch_size, n)) // parts) * parts
  padded = np.pad(images, ((0, (-n) % bs),) + ((0, 0),) * (images.ndim - 1))
  fn = _split_forward(mesh)
  chunks = [
    sharding.to_local(fn(state, sharding.split_rows(padded[i : i + bs], mesh)))
    for i in range(0, padded.shape[0], bs)
  ]
  return jnp.concatenate(chunks)[:n]


def predict(
  state: TrainState, images: jax.Array, batch_size: int = 1000, *, models_axis: bool = False
) -> jax.Array:
  """Logits for ``images``, in fixed-size batches (the last one padded).

  A host loop over one compiled forward pass: XLA:CPU's own convolutions (the fallback
  without the C++ kernels) are much slower inside a ``lax.scan``.

  A state replicated on a data-parallel mesh (:mod:`digits_jax.training.sharding`)
  splits each batch over the mesh's devices, in every process; the logits then come back
  whole, on one of this process's devices.

  Args:
    state: the model's state; with ``models_axis``, K stacked states.
    images: (N, 28, 28, 1).
    batch_size: images per forward pass.
    models_axis: ``state`` has a leading models axis; the logits are then (K, N, classes).
  """
  mesh = None if models_axis else sharding.mesh_of(state.params)
  if mesh is not None:
    return _predict_split(state, images, batch_size, mesh)
  n = images.shape[0]
  bs = max(1, min(batch_size, n))
  padded = jnp.pad(images, ((0, (-n) % bs),) + ((0, 0),) * (images.ndim - 1))
  fn = _forward_models if models_axis else forward
  chunks = [fn(state, padded[i : i + bs]) for i in range(0, padded.shape[0], bs)]
  logits = jnp.concatenate(chunks, axis=1 if models_axis else 0)
  return logits[:, :n] if models_axis else logits[:n]


def predict_tta(
  state: TrainState, images: jax.Array, batch_size: int = 1000, shifts=augment.TTA_SHIFTS
) -> jax.Array:
  """Test-time augmentation: log of the mean class probabilities over shifted copies.

  Each copy (:func:`digits_jax.augment.shifted_copies`) goes through :func:`predict`;
  the result is a valid logits array (its softmax is the mean of the copies' softmaxes).
  """
  probs = [
    jax.nn.softmax(predict(state, copy, batch_size), axis=-1)
    for copy in augment.shifted_copies(jnp.asarray(images), shifts)
  ]
  return jnp.log(jnp.mean(jnp.stack(probs), axis=0))


def predict_config(config: Config, state: TrainState, images, batch_size: int) -> jax.Array:
  """:func:`predict`, or :func:`predict_tta` when ``config.tta``."""
  return (predict_tta if config.tta else predict)(state, images, batch_size)


def metrics_from_logits(logits: jax.Array, labels: jax.Array) -> dict[str, float]:
  """Mean cross-entropy and accuracy."""
  loss, accuracy = _loss_and_accuracy(logits, labels)
  return {"loss": float(loss), "accuracy": float(accuracy)}


@jax.jit
def _loss_and_accuracy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  # One compiled call per shape, shared by every run of a process (a sweep's runs all
  # evaluate the same validation and test sizes), rather than an op-by-op compile each.
  return cross_entropy(logits, labels).mean(), jnp.mean(jnp.argmax(logits, -1) == labels)


def evaluate(
  state: TrainState, images: jax.Array, labels: jax.Array, batch_size: int = 1000
) -> dict[str, float]:
  """Mean cross-entropy and accuracy over a whole split."""
  return metrics_from_logits(predict(state, images, batch_size), labels)
