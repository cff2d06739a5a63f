"""The layers the networks share: 3x3 convolutions and 2x2 max-pooling, fast or plain.

With ``fast=True`` (the default) convolutions and pools run through
:mod:`digits_jax.models.ops`, whose backward passes are much cheaper on XLA:CPU; with
``fast=False`` they are plain ``nn.Conv`` / ``nn.max_pool``. Both build the same
parameter tree, so a checkpoint trained one way loads the other way.

Inside :func:`split_batch` (a data-parallel train step, where each device holds a slice
of the batch), :func:`batch_norm` averages its statistics over the whole batch and
:class:`Dropout` draws the whole batch's mask and keeps this device's rows, so a split
batch gets the numbers of the whole one, up to float rounding.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.module import merge_param

from digits_jax.models import native, ops

# The non-linearities a network may use; relu is every network's default.
ACTIVATIONS = ("relu", "gelu", "silu", "elu", "leaky_relu", "tanh")
_ACTIVATION_FNS: dict[str, Callable[[jax.Array], jax.Array]] = {
  "relu": nn.relu,
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),
  "silu": jax.nn.silu,
  "elu": jax.nn.elu,
  "leaky_relu": lambda x: jax.nn.leaky_relu(x, negative_slope=0.01),
  "tanh": jnp.tanh,
}


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
  """The function of the activation ``name``: ReLU, exact (erf) GELU, SiLU, ELU (alpha 1),
  leaky ReLU (slope 0.01) or tanh.

  Raises:
    ValueError: for a name not in :data:`ACTIVATIONS`, listing the valid ones.
  """
  try:
    return _ACTIVATION_FNS[name]
  except KeyError:
    raise ValueError(
      f"unknown activation {name!r}; valid values are: {', '.join(ACTIVATIONS)}"
    ) from None


# The mesh axis the batch is split over while a train step is traced; None: not split.
_BATCH_AXIS: contextvars.ContextVar[str | None] = contextvars.ContextVar("batch_axis", default=None)


@contextlib.contextmanager
def split_batch(axis_name: str) -> Iterator[None]:
  """Within it, models are traced for a batch split over the mesh axis ``axis_name``.

  Used around ``model.apply`` inside ``jax.shard_map``: BatchNorm reduces over the axis,
  dropout masks are drawn for the whole batch.
  """
  token = _BATCH_AXIS.set(axis_name)
  try:
    yield
  finally:
    _BATCH_AXIS.reset(token)


# The widest first layer conv_act_pool runs as the fused kernel in evaluation mode too (see
# fused_evaluation); 0: none.
_FUSED_EVALUATION: contextvars.ContextVar[int] = contextvars.ContextVar(
  "fused_evaluation", default=0
)


@contextlib.contextmanager
def fused_evaluation(max_channels: int = native.MAX_FUSED_CHANNELS) -> Iterator[None]:
  """Within it, models traced in evaluation mode run a first layer on one-channel images
  (conv, ReLU, 2x2 pool; :func:`conv_act_pool`) with at most ``max_channels`` outputs as the
  fused C++ kernel that training runs, whether ``fast`` or not (on the CPU with the kernels
  built; elsewhere nothing changes).

  For the attacks (:func:`digits_jax.models.attack_logits`, every width): the kernel's input
  gradient costs less than the unfused layer's. For inference
  (:func:`digits_jax.models.inference_apply`, up to :data:`ops.XLA_SLOW_CHANNELS`): where
  XLA's own convolution is slow. Outside it, evaluation keeps the conv module's own output,
  which :mod:`digits_jax.analysis.visualize` captures. The logits agree to float rounding.
  """
  token = _FUSED_EVALUATION.set(max_channels)
  try:
    yield
  finally:
    _FUSED_EVALUATION.reset(token)


def batch_slice(x: jax.Array, axis_name: str | None) -> jax.Array:
  """This device's rows of ``x``, an array drawn for the whole batch split over ``axis_name``.

  Args:
    x: an array whose leading axis is the whole batch (the same on every device).
    axis_name: the mesh axis the batch is split over, in equal parts; ``None``: ``x``.
  """
  if axis_name is None:
    return x
  rows = x.shape[0] // jax.lax.axis_size(axis_name)
  return jax.lax.dynamic_slice_in_dim(x, jax.lax.axis_index(axis_name) * rows, rows, axis=0)


class Dropout(nn.Dropout):
  """``nn.Dropout`` whose mask does not depend on how the batch is split over devices.

  Outside :func:`split_batch` it is ``nn.Dropout`` (same name, same key, same mask).
  Inside, each device draws the mask of the whole batch and keeps its own rows: the
  mask a device's examples get is the one they get when one device holds the batch.
  """

  @nn.compact
  def __call__(self, inputs, deterministic: bool | None = None, rng: jax.Array | None = None):
    deterministic = merge_param("deterministic", self.deterministic, deterministic)
    if self.rate == 0.0 or deterministic:
      return inputs
    if self.rate == 1.0:
      return jnp.zeros_like(inputs)
    keep_prob = 1.0 - self.rate
    if rng is None:
      rng = self.make_rng(self.rng_collection)
    axis = _BATCH_AXIS.get()
    shape = list(inputs.shape)
    if axis is not None and 0 not in self.broadcast_dims:
      shape[0] *= jax.lax.axis_size(axis)
    else:
      axis = None
    for dim in self.broadcast_dims:
      shape[dim] = 1
    mask = batch_slice(jax.random.bernoulli(rng, p=keep_prob, shape=shape), axis)
    mask = jnp.broadcast_to(mask, inputs.shape)
    return jax.lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))


class FastConv(nn.Module):
  """A stride-1 conv with ``nn.Conv``'s parameters, computed by :func:`ops.conv2d`.

  With ``relu_pool`` it returns ``max_pool_2x2(relu(conv))`` through
  :func:`ops.conv_relu_pool` (one fused kernel for one-channel input on the CPU).
  """

  features: int
  kernel_size: int = 3
  padding: str = "VALID"
  relu_pool: bool = False
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features))
    bias = self.param("bias", self.bias_init, (self.features,))
    if self.relu_pool:
      return ops.conv_relu_pool(x, kernel, bias, self.padding)
    return ops.conv2d(x, kernel, self.padding) + bias


def torch_default_init(fan_in: int) -> dict[str, nn.initializers.Initializer]:
  """PyTorch's default initialisation of a conv or linear layer with ``fan_in`` inputs.

  Kernel and bias uniform in +-1/sqrt(fan_in) (``kaiming_uniform_(a=sqrt(5))``), as
  ``kernel_init``/``bias_init`` keyword arguments of :func:`conv` or ``nn.Dense``.
  """
  bound = fan_in**-0.5

  def bias_init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return {
    "kernel_init": nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
    "bias_init": bias_init,
  }


def conv(
  features: int,
  *,
  fast: bool,
  padding: str = "VALID",
  kernel_size: int = 3,
  name: str | None = None,
  **init: nn.initializers.Initializer,
) -> nn.Module:
  """A stride-1 conv layer (3x3 by default), fast or plain; both have one parameter tree.

  ``init`` may set ``kernel_init`` and ``bias_init`` (default: LeCun normal, zeros).
  """
  if fast:
    return FastConv(features, kernel_size=kernel_size, padding=padding, name=name, **init)
  return nn.Conv(features, (kernel_size, kernel_size), padding=padding, name=name, **init)


def conv_act_pool(
  x: jax.Array,
  features: int,
  *,
  activation: str,
  fast: bool,
  train: bool,
  name: str,
  padding: str = "VALID",
  kernel_size: int = 3,
  **init: nn.initializers.Initializer,
) -> jax.Array:
  """A conv layer, the activation ``activation`` and a 2x2 max-pool applied to ``x``, with
  :func:`conv`'s parameters: ``pool(act(conv(...)(x)))``, on every backend.

  For ``relu``, fast and in training, it is one op (:func:`ops.conv_relu_pool`, the same
  numbers as pooling before the ReLU: for a network's first layer on one-channel images on
  the CPU, one fused kernel, which skips writing the full-size activation). In evaluation
  it is the conv module, the activation and the pool, so the conv module's output (what
  :mod:`digits_jax.analysis.visualize` shows) is the convolution itself; within
  :func:`fused_evaluation` a layer that is one C++ kernel may be that kernel, ``fast`` or
  not. Any other activation is applied before the pool: GELU and SiLU are not monotone, so
  pooling first would give other numbers.
  """
  one_kernel = features <= _FUSED_EVALUATION.get() and ops.is_one_kernel(x.shape[-1], features)
  if activation == "relu" and ((fast and train) or one_kernel):
    return FastConv(features, kernel_size, padding, relu_pool=True, name=name, **init)(x)
  layer = conv(features, fast=fast, padding=padding, kernel_size=kernel_size, name=name, **init)
  return pool(activation_fn(activation)(layer(x)), fast=fast)


def batch_norm(train: bool, name: str | None = None) -> nn.BatchNorm:
  """Batch norm with batch statistics in training and running ones after (momentum 0.9).

  Within :func:`split_batch` the batch statistics are those of the whole batch.
  """
  axis = _BATCH_AXIS.get() if train else None
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, axis_name=axis, name=name)


def pool(x: jax.Array, *, fast: bool) -> jax.Array:
  """2x2 max-pool with stride 2 (odd sizes are floored, as in Keras)."""
  if fast:
    return ops.max_pool_2x2(x)
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
