"""Deeper families for the registry: a small ResNet and a VGG-style stack, sized for 28x28.

Both use the shared layers of :mod:`digits_jax.models` (:func:`~digits_jax.models.conv`,
:func:`~digits_jax.models.pool`), so with ``fast=True`` their convolutions and pools run
through the im2col kernels of :mod:`digits_jax.ops`, and ``fast=True`` and ``fast=False``
build the same parameter tree. Those convolutions are stride 1, so every downsampling here
is a 2x2 max-pool. Convolutions are submodules named ``conv0``, ``conv1``, ... (inside each
residual block for the ResNet), the names :mod:`digits_jax.visualize` looks for.

Both nets are sized to cost at most about twice the arithmetic of ``bn_conv3_wide`` per
image, so that several seeds of each can be trained on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from digits_jax.models import NUM_CLASSES, Recipe, conv, pool, register


def _batch_norm(train: bool, name: str | None = None) -> nn.BatchNorm:
  """Batch norm as in ``bn_conv3_wide``: batch statistics in training, running ones after."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)


class ResidualBlock(nn.Module):
  """He et al.'s basic block: two 3x3 conv-BN layers and a shortcut, ReLU after the sum.

  ``x -> conv0 -> BN -> ReLU -> conv1 -> BN -> (+ shortcut(x)) -> ReLU``. The shortcut is
  the identity when the input already has ``features`` channels, else a learned projection
  (a 1x1 convolution, written as ``nn.Dense`` over the channel axis, then BN): He et al.'s
  option B.
  """

  features: int
  fast: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    shortcut = x
    if x.shape[-1] != self.features:
      shortcut = nn.Dense(self.features, name="projection")(x)
      shortcut = _batch_norm(train, name="projection_bn")(shortcut)
    y = conv(self.features, fast=self.fast, padding="SAME", name="conv0")(x)
    y = nn.relu(_batch_norm(train, name="bn0")(y))
    y = conv(self.features, fast=self.fast, padding="SAME", name="conv1")(y)
    y = _batch_norm(train, name="bn1")(y)
    return nn.relu(y + shortcut)


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
  """

  num_classes: int = NUM_CLASSES
  fast: bool = True
  widths: Sequence[int] = (16, 32, 64)
  blocks_per_stage: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = conv(self.widths[0], fast=self.fast, padding="SAME", name="conv0")(x)
    x = nn.relu(_batch_norm(train, name="bn0")(x))
    block = 0
    for stage, width in enumerate(self.widths):
      if stage:
        x = pool(x, fast=self.fast)
      for _ in range(self.blocks_per_stage):
        x = ResidualBlock(width, fast=self.fast, name=f"block{block}")(x, train)
        block += 1
    x = jnp.mean(x, axis=(1, 2))  # global average pooling
    return nn.Dense(self.num_classes, name="logits")(x)


class VGG(nn.Module):
  """A VGG-style net: blocks of two 3x3 SAME convolutions, each block ending in a 2x2 pool.

  From Simonyan and Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
  Recognition" (ICLR 2015): only 3x3 convolutions with stride 1 and padding 1 (``SAME``),
  stacked in pairs so two layers see a 5x5 field with fewer parameters and one more
  non-linearity; 2x2 max-pooling with stride 2 after each stack; widths doubling after
  each pool; ReLU; dense layers with dropout 0.5 before the classifier.

  Changed for 28x28: three blocks of 16, 32 and 64 filters (the paper: five blocks of 64
  to 512 on 224x224 images) take the maps 28 -> 14 -> 7 -> 3, and one dense layer of 256
  (the paper: two of 4096). With ``batch_norm`` (the default) every convolution and the
  dense layer are followed by batch norm before the ReLU, which the paper predates: it lets
  the net train from scratch at a high learning rate in a few epochs, where the paper
  initialised its deeper nets from a trained shallower one.
  """

  num_classes: int = NUM_CLASSES
  fast: bool = True
  widths: Sequence[int] = (16, 32, 64)
  dense: int = 256
  dropout: float = 0.5
  batch_norm: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    def activation(y: jax.Array) -> jax.Array:
      return nn.relu(_batch_norm(train)(y) if self.batch_norm else y)

    convs = 0
    for width in self.widths:
      for _ in range(2):
        x = activation(conv(width, fast=self.fast, padding="SAME", name=f"conv{convs}")(x))
        convs += 1
      x = pool(x, fast=self.fast)
    x = x.reshape((x.shape[0], -1))
    x = activation(nn.Dense(self.dense)(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)


@register(
  "resnet8",
  Recipe(
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


@register(
  "vgg_small",
  Recipe(
    optimizer="sgd",
    learning_rate=0.05,
    momentum=0.9,
    weight_decay=5e-4,
    batch_size=128,
    epochs=12,
    loss="sparse",
    schedule="onecycle",
    augment=True,
  ),
  source="Simonyan and Zisserman 2015, 'Very Deep Convolutional Networks for Large-Scale "
  "Image Recognition': blocks of two 3x3 SAME convs then 2x2 max-pool, widths doubling; "
  "here 16/32/64 with batch norm, dense 256, dropout 0.5. SGD momentum 0.9 and weight "
  "decay 5e-4 as in the paper; a one-cycle schedule peaking at 0.05 over 12 epochs, "
  "random shifts and rotations.",
  reported="aims at 99.5%+",
)
class VGGSmall(VGG):
  """VGG-small: conv16-conv16-pool, conv32-conv32-pool, conv64-conv64-pool, dense 256, 10.

  Batch norm after every layer. The recipe keeps the paper's SGD with momentum 0.9 and
  weight decay 5e-4 and batch size near its 256 (128, the project's usual); with batch
  norm the learning rate can peak at 0.05 (the paper: 0.01 without it), on a one-cycle
  schedule over 12 epochs rather than divided by 10 on plateaus.
  """
