"""The layers the networks share: 3x3 convolutions and 2x2 max-pooling, fast or plain.

With ``fast=True`` (the default) convolutions and pools run through
:mod:`digits_jax.models.ops`, whose backward passes are much cheaper on XLA:CPU; with
``fast=False`` they are plain ``nn.Conv`` / ``nn.max_pool``. Both build the same
parameter tree, so a checkpoint trained one way loads the other way.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from digits_jax.models import ops


class FastConv(nn.Module):
  """A stride-1 conv with ``nn.Conv``'s parameters, computed by :func:`ops.conv2d`."""

  features: int
  kernel_size: int = 3
  padding: str = "VALID"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features)
    )
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    return ops.conv2d(x, kernel, self.padding) + bias


def conv(
  features: int,
  *,
  fast: bool,
  padding: str = "VALID",
  kernel_size: int = 3,
  name: str | None = None,
) -> nn.Module:
  """A stride-1 conv layer (3x3 by default), fast or plain; both have one parameter tree."""
  if fast:
    return FastConv(features, kernel_size=kernel_size, padding=padding, name=name)
  return nn.Conv(features, (kernel_size, kernel_size), padding=padding, name=name)


def batch_norm(train: bool, name: str | None = None) -> nn.BatchNorm:
  """Batch norm with batch statistics in training and running ones after (momentum 0.9)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)


def pool(x: jax.Array, *, fast: bool) -> jax.Array:
  """2x2 max-pool with stride 2 (odd sizes are floored, as in Keras)."""
  if fast:
    return ops.max_pool_2x2(x)
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
