"""The model registry: a name for every network, with the recipe and source it comes from.

A network is a Flax Linen module class taking ``num_classes``, ``fast``, ``activation`` and
``dropout`` and called as ``module(images, train=...)``; :func:`register` files it under a
name with the training recipe its source used, so a sweep at "source settings" is a list of
names.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from digits_jax.data import IMAGE_SIZE, NUM_CLASSES
from digits_jax.models import layers, native, ops


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A registered network.

  Attributes:
    name: the registry name.
    module: the Linen module class.
    recipe: the training settings its source used, as :class:`digits_jax.config.Config`
      field values; fields it leaves out take the config's recipe defaults.
    source: what the network reproduces, and where it comes from.
    reported: the test accuracy its source reports (or what it aims at).
    in_sweeps: whether a sweep trains it when no ``--models`` are named (the networks of
      the results table); others train when named.
  """

  name: str
  module: type[nn.Module]
  recipe: Mapping[str, Any]
  source: str
  reported: str
  in_sweeps: bool = True


MODELS: dict[str, ModelSpec] = {}


class UnknownModelError(ValueError):
  """A model name that is not registered; the message lists the registered ones."""


def register(
  name: str, *, recipe: Mapping[str, Any], source: str, reported: str, in_sweeps: bool = True
) -> Callable[[type[nn.Module]], type[nn.Module]]:
  """Class decorator adding a Linen module to :data:`MODELS` under ``name``."""

  def wrap(cls: type[nn.Module]) -> type[nn.Module]:
    if name in MODELS:
      raise ValueError(f"model {name!r} is registered twice")
    MODELS[name] = ModelSpec(name, cls, dict(recipe), source, reported, in_sweeps)
    return cls

  return wrap


def sweep_models() -> list[str]:
  """The networks a sweep trains by default: those registered with ``in_sweeps``."""
  return [name for name, spec in MODELS.items() if spec.in_sweeps]


def get_spec(name: str) -> ModelSpec:
  """The registry entry for ``name``.

  Raises:
    UnknownModelError: naming the registered models.
  """
  try:
    return MODELS[name]
  except KeyError:
    raise UnknownModelError(
      f"unknown model {name!r}; registered models are: {', '.join(MODELS)}"
    ) from None


FAST_OPS = ("auto", "on", "off")


def fast_ops_mode(value: bool | str = "auto") -> str:
  """``auto``, ``on`` or ``off``: a ``fast_ops`` value checked without asking which backend
  runs (so a config can be checked before JAX starts one; :func:`use_fast_ops` decides).

  Raises:
    ValueError: for a value that is none of those (or true, false), naming the valid ones.
  """
  text = str(value).strip().lower()
  text = {"true": "on", "1": "on", "false": "off", "0": "off"}.get(text, text)
  if text not in FAST_OPS:
    raise ValueError(
      f"unknown fast_ops {value!r}; valid values are: auto, on, off (or true, false)"
    )
  return text


def use_fast_ops(value: bool | str = "auto") -> bool:
  """Whether the CPU-tuned ops of :mod:`digits_jax.models.ops` are used.

  ``auto`` (the default) means on the CPU backend only: their custom gradients, the C++
  kernels and the per-model loops of a vmapped group suit XLA:CPU, while on a GPU or TPU
  plain XLA convolutions and pools are faster, and a vmapped group is one grouped
  convolution. ``on`` / ``off`` force either path; ``True`` / ``False`` (and the strings
  ``true`` / ``false``, what older ``config.json`` files hold) mean ``on`` / ``off``.

  Raises:
    ValueError: for any other value, naming the valid ones.
  """
  text = fast_ops_mode(value)
  if text == "auto":
    return jax.default_backend() == "cpu"
  return text == "on"


def create_model(
  name: str,
  *,
  fast: bool | str = "auto",
  num_classes: int = NUM_CLASSES,
  activation: str = "relu",
  dropout: float | None = None,
) -> nn.Module:
  """Instantiates the registered module ``name``; ``fast`` as in :func:`use_fast_ops`.

  Args:
    name: the registered network.
    fast: as in :func:`use_fast_ops`.
    num_classes: the output layer's width.
    activation: the network's non-linearity (:data:`digits_jax.models.layers.ACTIVATIONS`).
    dropout: the rate of its dropout layers; ``None``: its architecture's.
  """
  options = {} if dropout is None else {"dropout": dropout}
  return get_spec(name).module(
    num_classes=num_classes, fast=use_fast_ops(fast), activation=activation, **options
  )


@functools.cache  # one per network: train states to be stacked need the same infer_fn
def inference_model(model: nn.Module) -> nn.Module | None:
  """The network on XLA's own convolutions for passes without a gradient, where ``model``
  runs the C++ kernels; else ``None``.

  The kernels pay where a gradient is taken; a forward pass alone is 2-9x faster through
  XLA's convolutions on the CPU (docs/speed.md, "Forward passes without a gradient"). Same
  maths: the logits agree to float rounding.
  """
  if getattr(model, "fast", False) and native.use_native():
    return model.clone(fast=False)
  return None


def _fused(apply_fn: Callable[..., Any], max_channels: int) -> Callable[..., Any]:
  """``apply_fn`` traced within :func:`layers.fused_evaluation` (``max_channels``)."""

  def apply(*args: Any, **kwargs: Any) -> Any:
    with layers.fused_evaluation(max_channels):
      return apply_fn(*args, **kwargs)

  return apply


@functools.cache  # one per network: train states to be stacked need the same infer_fn
def inference_apply(model: nn.Module) -> Callable[..., Any] | None:
  """The ``apply`` of passes without a gradient (validation, test, corrupted images,
  predict): :func:`inference_model`'s, except that a first conv-ReLU-pool layer on
  one-channel images with at most ``ops.XLA_SLOW_CHANNELS`` outputs is the fused C++ kernel
  (:func:`layers.fused_evaluation`), where XLA's convolution is slow (``speedrun_small``:
  the whole forward pass about twice as fast); ``None`` where ``model`` is already plain."""
  plain = inference_model(model)
  return None if plain is None else _fused(plain.apply, ops.XLA_SLOW_CHANNELS)


def attack_logits(apply_fn: Callable[..., jax.Array]) -> Callable[[Any, jax.Array], jax.Array]:
  """``(variables, images) -> logits`` of a model's ``apply_fn`` in inference mode, for passes
  that take gradients with respect to the images (the attacks): traced within
  :func:`layers.fused_evaluation`, so a first conv-ReLU-pool layer on one-channel images is
  the fused C++ kernel, whose input gradient costs less than the unfused layer's on the CPU
  (docs/robustness.md). The logits agree with ``apply_fn``'s to float rounding.
  """
  fused = _fused(apply_fn, native.MAX_FUSED_CHANNELS)
  return lambda variables, images: fused(variables, images, train=False)


def init_variables(model: nn.Module, rng: jax.Array, image_shape=(IMAGE_SIZE, IMAGE_SIZE, 1)):
  """A model's initial variables (``params`` and, for BatchNorm models, ``batch_stats``).

  Compiled as one program: run op by op, the initialisation compiles every initialiser and
  layer op on its own, which on the CPU costs more than the whole program (``speedrun``
  2.2 s against 1.3 s, ``resnet8`` 4.7 s against 2.5 s); the values are the same.
  """
  image = jnp.zeros((1, *image_shape), jnp.float32)
  return jax.jit(lambda r: model.init({"params": r}, image, train=False))(rng)


def variable_shapes(model: nn.Module, image_shape=(IMAGE_SIZE, IMAGE_SIZE, 1)) -> Any:
  """The shapes and dtypes of :func:`init_variables`' tree, computed without running it: the
  target a checkpoint is restored into."""
  return jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0), image_shape))


def count_params(params) -> int:
  """The number of scalars in a parameter tree."""
  return sum(x.size for x in jax.tree_util.tree_leaves(params))
