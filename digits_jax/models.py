"""CNN variants as Flax Linen modules, in a registry by name.

Each source network of the project is one small class, named by its structure
(``conv2_dense128_dropout`` = two conv layers, a dense layer of 128, dropout), and
registered with the training recipe its source used (``Recipe``), so a sweep at
"source settings" is a list of names.

Where a source left filter counts or padding open we follow the Keras defaults the
sources were written in: 3x3 kernels, ``VALID`` padding, 2x2 max-pooling with
stride 2, ReLU. Every module takes ``fast``: with ``fast=True`` (the default) the
convolutions and pools run through :mod:`digits_jax.ops`, whose backward passes are
much cheaper on XLA:CPU; with ``fast=False`` they are plain ``nn.Conv`` /
``nn.max_pool``. Both build the same parameter tree, so a checkpoint trained one way
loads the other way.

Adding a variant: write a class with ``__call__(self, x, train: bool)`` returning
logits, and decorate it with ``@register(name, Recipe(...), source=..., reported=...)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from digits_jax import ops

NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class Recipe:
  """The training settings a source network was published with.

  ``None``-valued fields of a run's config are filled from here
  (see :func:`digits_jax.config.resolve`).
  """

  optimizer: str = "adam"
  learning_rate: float = 1e-3
  batch_size: int = 128
  epochs: int = 10
  loss: str = "sparse"  # "sparse" (integer labels) or "onehot" (categorical)
  momentum: float = 0.9
  schedule: str = "constant"
  weight_decay: float = 0.0
  label_smoothing: float = 0.0
  augment: bool = False


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  name: str
  module: type[nn.Module]
  recipe: Recipe
  source: str
  reported: str


MODELS: dict[str, ModelSpec] = {}


def register(name: str, recipe: Recipe, *, source: str, reported: str) -> Callable:
  """Class decorator adding a Linen module to :data:`MODELS` under ``name``."""

  def wrap(cls: type[nn.Module]) -> type[nn.Module]:
    if name in MODELS:
      raise ValueError(f"model {name!r} is registered twice")
    MODELS[name] = ModelSpec(name, cls, recipe, source, reported)
    return cls

  return wrap


class UnknownModelError(ValueError):
  pass


def get_spec(name: str) -> ModelSpec:
  """Returns the registry entry for ``name``, or raises with the valid names."""
  try:
    return MODELS[name]
  except KeyError:
    raise UnknownModelError(
        f"unknown model {name!r}; registered models are: {', '.join(MODELS)}"
    ) from None


def create_model(name: str, *, fast: bool = True, num_classes: int = NUM_CLASSES) -> nn.Module:
  """Instantiates the registered module ``name``."""
  return get_spec(name).module(num_classes=num_classes, fast=fast)


def count_params(params) -> int:
  return sum(x.size for x in jax.tree_util.tree_leaves(params))


# --- layers shared by the variants ------------------------------------------


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


def conv(features: int, *, fast: bool, padding: str = "VALID", name: str | None = None):
  """A 3x3 conv layer, fast or plain; both have the same parameter tree."""
  if fast:
    return FastConv(features, padding=padding, name=name)
  return nn.Conv(features, (3, 3), padding=padding, name=name)


def pool(x: jax.Array, *, fast: bool) -> jax.Array:
  """2x2 max-pool with stride 2 (odd sizes are floored, as in Keras)."""
  if fast:
    return ops.max_pool_2x2(x)
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class ConvNet(nn.Module):
  """3x3 conv (ReLU) and 2x2 max-pool layers, flatten, dense ReLU layers, logits.

  The source variants below only set the class attributes; their docstrings say
  what each one reproduces.
  """

  num_classes: int = NUM_CLASSES
  fast: bool = True
  layers: Sequence[int | str] = ()  # conv widths and "pool", in order
  dense: Sequence[int] = ()
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    convs = 0
    for layer in self.layers:
      if layer == "pool":
        x = pool(x, fast=self.fast)
      else:
        x = nn.relu(conv(layer, fast=self.fast, name=f"conv{convs}")(x))
        convs += 1
    x = x.reshape((x.shape[0], -1))
    for width in self.dense:
      x = nn.relu(nn.Dense(width)(x))
      if self.dropout:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)


@register(
    "conv3_dense2",
    Recipe(optimizer="adam", learning_rate=1e-3, batch_size=128, epochs=10, loss="sparse"),
    source="Source 1: three 3x3 conv layers with ReLU, two 2x2 max-pools, flatten, two "
    "dense ReLU layers, softmax over 10; Adam, sparse categorical cross-entropy.",
    reported="98.83%",
)
class Conv3Dense2(ConvNet):
  """Source 1: conv32-pool-conv64-pool-conv64, dense 128, dense 64, softmax 10.

  "Three 3x3 conv layers with ReLU, two 2x2 max-pools, flatten, two dense ReLU
  layers, softmax over 10. Adam, sparse cross-entropy; reported 98.83% test
  accuracy." The widths (32/64/64, dense 128/64) are ours: the source leaves them
  open; 32/64/64 is the Keras tutorial layout. Epochs and batch size are not
  given either: 10 and 128.
  """

  layers: Sequence[int | str] = (32, "pool", 64, "pool", 64)
  dense: Sequence[int] = (128, 64)


@register(
    "conv3_dense100",
    Recipe(optimizer="sgd", learning_rate=0.01, momentum=0.9, batch_size=32, epochs=10,
           loss="onehot"),
    source="Source 2: conv and max-pool layers then dense layers; SGD with momentum, "
    "categorical (one-hot) cross-entropy.",
    reported="about 99% (SGD lr 0.01, momentum 0.9, batch 32, 10 epochs)",
)
class Conv3Dense100(ConvNet):
  """Source 2: conv32-pool-conv64-conv64-pool, dense 100, softmax 10; SGD.

  "Conv and max-pool layers then dense layers, trained with SGD and categorical
  (one-hot) cross-entropy." The source gives no widths; we use the common Keras
  'deeper baseline' of this family (conv 32, pool, conv 64, conv 64, pool, dense
  100) with SGD(lr=0.01, momentum=0.9), batch 32, 10 epochs.
  """

  layers: Sequence[int | str] = (32, "pool", 64, 64, "pool")
  dense: Sequence[int] = (100,)


@register(
    "conv2_dense64",
    Recipe(optimizer="adam", learning_rate=1e-3, batch_size=64, epochs=10, loss="sparse"),
    source="Source 3: conv 32 (3x3, ReLU), max-pool, conv 64, max-pool, dense 64 ReLU, "
    "dense 10; Adam, sparse cross-entropy, 10 epochs, batch 64, validation split.",
    reported="above 98%",
)
class Conv2Dense64(ConvNet):
  """Source 3: conv32-pool-conv64-pool, dense 64, softmax 10.

  "Conv 32 (3x3, ReLU), max-pool, conv 64, max-pool, dense 64 ReLU, dense 10.
  Adam, sparse cross-entropy, 10 epochs, batch 64, validation split; the source
  mentions dropout and data augmentation as options. Reported above 98%." The
  options are available as ``--augment`` (and the dropout variant is
  ``conv2_dense128_dropout``).
  """

  layers: Sequence[int | str] = (32, "pool", 64, "pool")
  dense: Sequence[int] = (64,)


@register(
    "conv2_dense100",
    Recipe(optimizer="adam", learning_rate=1e-3, batch_size=32, epochs=10, loss="sparse"),
    source="Source 4: conv 32, max-pool, conv 64, max-pool, dense 100 ReLU, dense 10; "
    "Adam, sparse cross-entropy, 10 epochs.",
    reported="98%+",
)
class Conv2Dense100(ConvNet):
  """Source 4: conv32-pool-conv64-pool, dense 100, softmax 10.

  "Conv 32, max-pool, conv 64, max-pool, dense 100 ReLU, dense 10. Adam, sparse
  cross-entropy, 10 epochs." Batch size is not given: 32, the Keras default.
  """

  layers: Sequence[int | str] = (32, "pool", 64, "pool")
  dense: Sequence[int] = (100,)


@register(
    "conv2_dense128_dropout",
    Recipe(optimizer="adam", learning_rate=1e-3, batch_size=128, epochs=20, loss="onehot"),
    source="Source 5: conv 32, max-pool, conv 64, max-pool, dense 128 ReLU, dropout 0.5, "
    "dense 10; Adam, one-hot cross-entropy, 20 epochs.",
    reported="98%+",
)
class Conv2Dense128Dropout(ConvNet):
  """Source 5: conv32-pool-conv64-pool, dense 128, dropout 0.5, softmax 10.

  "Conv 32, max-pool, conv 64, max-pool, dense 128 ReLU, dropout 0.5, dense 10.
  Adam, one-hot cross-entropy, 20 epochs." Batch 128 (not given by the source;
  it is the batch of the speed anchors).
  """

  layers: Sequence[int | str] = (32, "pool", 64, "pool")
  dense: Sequence[int] = (128,)
  dropout: float = 0.5


@register(
    "bn_conv3_wide",
    Recipe(optimizer="adamw", learning_rate=3e-3, weight_decay=1e-4, batch_size=128,
           epochs=15, loss="sparse", schedule="onecycle", label_smoothing=0.1,
           augment=True),
    source="Ours, from the sources' future work (batch norm, wider and deeper, data "
    "augmentation): conv 32/64/128 with batch norm, dense 256, dropout 0.3; AdamW "
    "one-cycle, label smoothing 0.1, random shifts and rotations.",
    reported="aims at 99.5%+",
)
class BNConv3Wide(nn.Module):
  """Modern variant: three SAME-padded conv-BN-ReLU-pool stages, dense 256.

  conv32-BN-pool (28->14), conv64-BN-pool (14->7), conv128-BN-pool (7->3),
  dense 256-BN, dropout 0.3, dense 10; trained with augmentation, AdamW and a
  one-cycle schedule. About three times the arithmetic of source 5.
  """

  num_classes: int = NUM_CLASSES
  fast: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)  # noqa: E731
    for i, width in enumerate((32, 64, 128)):
      x = conv(width, fast=self.fast, padding="SAME", name=f"conv{i}")(x)
      x = pool(nn.relu(norm()(x)), fast=self.fast)
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(norm()(nn.Dense(256)(x)))
    x = nn.Dropout(0.3, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)


def init_variables(model: nn.Module, rng: jax.Array, image_shape=(28, 28, 1)) -> dict:
  """Initialises a model's variables (params and, for BN models, batch_stats)."""
  return model.init({"params": rng}, jnp.zeros((1, *image_shape), jnp.float32), train=False)


from digits_jax import deep_models  # noqa: E402,F401  (registers the ResNet and VGG nets)
