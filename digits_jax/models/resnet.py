"""A small ResNet for 28x28 digits (He et al. 2016), in the registry as ``resnet8``.

Its convolutions are the shared fast-or-plain layers (:mod:`digits_jax.models.layers`),
stride 1, so every downsampling is a 2x2 max-pool; convolutions are submodules named
``conv0``, ``conv1``, ... (inside each residual block), the names the pictures of what a
network learned look for. Sized to cost at most about twice the arithmetic of
``bn_conv3_wide`` per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from digits_jax.data import NUM_CLASSES
from digits_jax.models.layers import Dropout, activation_fn, batch_norm, conv, pool
from digits_jax.models.registry import register


class ResidualBlock(nn.Module):
  """He et al.'s basic block: two 3x3 conv-BN layers and a shortcut, ReLU after the sum.

  ``x -> conv0 -> BN -> ReLU -> conv1 -> BN -> (+ shortcut(x)) -> ReLU``. The shortcut is
  the identity when the input already has ``features`` channels, else a learned projection
  (a 1x1 convolution, written as ``nn.Dense`` over the channel axis, then BN): He et al.'s
  option B. ``activation`` replaces both ReLUs.
  """

  features: int
  fast: bool = True
  activation: str = "relu"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    act = activation_fn(self.activation)
    shortcut = x
    if x.shape[-1] != self.features:
      shortcut = nn.Dense(self.features, name="projection")(x)
      shortcut = batch_norm(train, name="projection_bn")(shortcut)
    y = conv(self.features, fast=self.fast, padding="SAME", name="conv0")(x)
    y = act(batch_norm(train, name="bn0")(y))
    y = conv(self.features, fast=self.fast, padding="SAME", name="conv1")(y)
    y = batch_norm(train, name="bn1")(y)
    return act(y + shortcut)


class ResNet(nn.Module):
  """A ResNet for 28x28 inputs: a 3x3 stem, three stages of residual blocks, average pool.

  The layout is that of the CIFAR-10 networks of He, Zhang, Ren and Sun, "Deep Residual
  Learning for Image Recognition" (CVPR 2016), section 4.2: a 3x3 conv of 16 filters,
  then three stages of residual blocks with 16, 32 and 64 filters on maps that halve in
  size from stage to stage, global average pooling, and a 10-way dense layer; batch norm
  after every convolution, ReLU after the sum of each block. With ``blocks_per_stage=1``
  this is their ``6n + 2 = 8``-layer net.

  Changed for 28x28 and this project: the maps are 28, 14 and 7 pixels (32, 16 and 8 in
  the paper); a stage halves the map with a 2x2 max-pool before its first block, not with
  a stride-2 convolution (the fast convolution is stride 1 only), and where the width
  grows the shortcut is a 1x1 projection with batch norm (the paper's option B; its CIFAR
  nets used zero-padded identity shortcuts, option A). Convolutions keep the bias and the
  LeCun-normal initialisation of ``nn.Conv`` (the paper: He initialisation, no bias), so
  fast and plain layers stay interchangeable.

  ``activation`` replaces every ReLU; ``dropout`` (0, none, by default) applies to the pooled
  features before the dense layer.
  """

  num_classes: int = NUM_CLASSES
  fast: bool = True
  activation: str = "relu"
  dropout: float = 0.0
  widths: Sequence[int] = (16, 32, 64)
  blocks_per_stage: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = conv(self.widths[0], fast=self.fast, padding="SAME", name="conv0")(x)
    x = activation_fn(self.activation)(batch_norm(train, name="bn0")(x))
    block = 0
    for stage, width in enumerate(self.widths):
      if stage:
        x = pool(x, fast=self.fast)
      for _ in range(self.blocks_per_stage):
        x = ResidualBlock(width, fast=self.fast, activation=self.activation, name=f"block{block}")(
          x, train
        )
        block += 1
    x = jnp.mean(x, axis=(1, 2))  # global average pooling
    if self.dropout:
      x = Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="logits")(x)


@register(
  "resnet8",
  recipe=dict(
    optimizer="sgd",
    learning_rate=0.1,
    momentum=0.9,
    weight_decay=1e-4,
    batch_size=128,
    epochs=12,
    loss="sparse",
    schedule="onecycle",
    augment=True,
  ),
  source="He et al. 2016, 'Deep Residual Learning for Image Recognition', the CIFAR-10 "
  "ResNet with n=1 (8 layers): 3x3 stem of 16, residual blocks of 16/32/64 with batch norm, "
  "global average pooling; for 28x28, downsampling by max-pool and 1x1 projection "
  "shortcuts. SGD with momentum 0.9, peak learning rate 0.1 and weight decay 1e-4 as in "
  "the paper; a one-cycle schedule over 12 epochs, random shifts and rotations.",
  reported="aims at 99.5%+",
)
class ResNet8(ResNet):
  """ResNet-8: stem conv 16, one residual block each of 16 (28x28), 32 (14x14), 64 (7x7).

  The recipe follows the paper's CIFAR-10 training (SGD with momentum 0.9, learning rate
  0.1, weight decay 1e-4, batch 128), with a one-cycle schedule over 12 epochs (warm-up to
  0.1, then cosine decay) in place of its step decays over 64k iterations, and MNIST's
  usual augmentation (shifts up to 2 px, rotations up to 10 degrees) in place of crops and
  flips.
  """
