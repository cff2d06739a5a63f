"""The layers the networks share: 3x3 convolutions and 2x2 max-pooling, fast or plain.

With ``fast=True`` (the default) convolutions and pools run through
:mod:`digits_jax.models.ops`, whose backward passes are much cheaper on XLA:CPU; with
``fast=False`` they are plain ``nn.Conv`` / ``nn.max_pool``. Both build the same
parameter tree, so a checkpoint trained one way loads the other way.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from digits_jax.models import ops


class FastConv(nn.Module):
  """A stride-1 conv with ``nn.Conv``'s parameters, computed by :func:`ops.conv2d`."""

  features: int
  kernel_size: int = 3
  padding: str = "VALID"
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features))
    bias = self.param("bias", self.bias_init, (self.features,))
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


def batch_norm(train: bool, name: str | None = None) -> nn.BatchNorm:
  """Batch norm with batch statistics in training and running ones after (momentum 0.9)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)


def pool(x: jax.Array, *, fast: bool) -> jax.Array:
  """2x2 max-pool with stride 2 (odd sizes are floored, as in Keras)."""
  if fast:
    return ops.max_pool_2x2(x)
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
