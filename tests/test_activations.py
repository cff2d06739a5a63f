"""--activation and --dropout: every network's non-linearity and dense dropout, as recipe fields."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digits_jax import models
from digits_jax.config import (
  RECIPE,
  Config,
  ConfigError,
  identity_of,
  resolve,
  resolve_with_origins,
)
from digits_jax.models.layers import activation_fn
from digits_jax.sweep.grid import expand, run_name
from digits_jax.training import groups
from digits_jax.training.step import create_train_state, make_epoch_fn, predict, steps_per_epoch
from tests.conftest import tiny_datasets

IMAGES = jax.random.uniform(jax.random.PRNGKey(1), (4, 28, 28, 1))

# The top-level parameter names of every network with its default (ReLU) settings, as they
# were before --activation and --dropout: checkpoints of earlier runs keep loading.
PARAM_NAMES = {
  "conv3_dense128_64": ["Dense_0", "Dense_1", "Dense_2", "conv0", "conv1", "conv2"],
  "conv3_dense100": ["Dense_0", "Dense_1", "conv0", "conv1", "conv2"],
  "conv2_dense64": ["Dense_0", "Dense_1", "conv0", "conv1"],
  "conv2_dense100": ["Dense_0", "Dense_1", "conv0", "conv1"],
  "conv2_dense128_dropout": ["Dense_0", "Dense_1", "conv0", "conv1"],
  "bn_conv3_wide": [f"BatchNorm_{i}" for i in range(4)]
  + ["Dense_0", "Dense_1", "conv0", "conv1", "conv2"],
  "speedrun": ["Dense_0", "Dense_1", "conv0", "conv1"],
  "speedrun_small": ["Dense_0", "Dense_1", "conv0", "conv1"],
  "madry_mnist": ["Dense_0", "Dense_1", "conv0", "conv1"],
  "resnet8": ["block0", "block1", "block2", "bn0", "conv0", "logits"],
  "vgg_small": [f"BatchNorm_{i}" for i in range(7)]
  + ["Dense_0", "Dense_1"]
  + [f"conv{i}" for i in range(6)],
}

PLAIN_ACTIVATIONS = {
  "relu": nn.relu,
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),
  "silu": nn.silu,
  "elu": nn.elu,
  "leaky_relu": lambda x: nn.leaky_relu(x, 0.01),
  "tanh": jnp.tanh,
}


def _pool(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class PlainConv2Dense64(nn.Module):
  """conv2_dense64 in plain Flax: conv32, act, pool, conv64, act, pool, dense 64, act, 10."""

  act: Callable

  @nn.compact
  def __call__(self, x):
    x = _pool(self.act(nn.Conv(32, (3, 3), padding="VALID", name="conv0")(x)))
    x = _pool(self.act(nn.Conv(64, (3, 3), padding="VALID", name="conv1")(x)))
    x = self.act(nn.Dense(64, name="Dense_0")(x.reshape((x.shape[0], -1))))
    return nn.Dense(10, name="Dense_1")(x)


class PlainBNConv3Wide(nn.Module):
  """bn_conv3_wide in plain Flax, in evaluation: three conv-BN-act-pool stages, dense-BN-act."""

  act: Callable

  @nn.compact
  def __call__(self, x):
    for i, width in enumerate((32, 64, 128)):
      x = nn.Conv(width, (3, 3), padding="SAME", name=f"conv{i}")(x)
      x = _pool(self.act(nn.BatchNorm(use_running_average=True, name=f"BatchNorm_{i}")(x)))
    x = nn.Dense(256, name="Dense_0")(x.reshape((x.shape[0], -1)))
    x = self.act(nn.BatchNorm(use_running_average=True, name="BatchNorm_3")(x))
    return nn.Dense(10, name="Dense_1")(x)


class PlainSpeedrun(nn.Module):
  """The speedrun network in plain Flax: conv24 5x5, act, pool, conv32 3x3, act, pool, dense."""

  act: Callable

  @nn.compact
  def __call__(self, x):
    x = _pool(self.act(nn.Conv(24, (5, 5), padding="VALID", name="conv0")(x)))
    x = _pool(self.act(nn.Conv(32, (3, 3), padding="VALID", name="conv1")(x)))
    x = self.act(nn.Dense(256, name="Dense_0")(x.reshape((x.shape[0], -1))))
    return nn.Dense(10, name="Dense_1")(x)


PLAIN = {
  "conv2_dense64": PlainConv2Dense64,
  "bn_conv3_wide": PlainBNConv3Wide,
  "speedrun": PlainSpeedrun,
}


def _random_batch_stats(variables: dict, key: jax.Array) -> dict:
  """``variables`` with running means and variances away from 0 and 1, so BN matters."""
  if "batch_stats" not in variables:
    return variables
  leaves, tree = jax.tree_util.tree_flatten(variables["batch_stats"])
  keys = jax.random.split(key, len(leaves))
  stats = [0.5 + jax.random.uniform(k, x.shape) for k, x in zip(keys, leaves)]
  return {**variables, "batch_stats": jax.tree_util.tree_unflatten(tree, stats)}


@pytest.mark.parametrize("activation", models.ACTIVATIONS)
@pytest.mark.parametrize("name", list(PLAIN))
def test_network_equals_plain_flax_with_the_same_weights(name, activation):
  """Fast and plain layers, training and evaluation: the plain Flax network's numbers (for
  ReLU this compares the fused conv-ReLU-pool with the unfused one)."""
  reference = PLAIN[name](PLAIN_ACTIVATIONS[activation])
  variables = None
  for fast in (True, False):
    model = models.create_model(name, fast=fast, activation=activation, dropout=0.0)
    variables = variables or _random_batch_stats(
      models.init_variables(model, jax.random.PRNGKey(0)), jax.random.PRNGKey(2)
    )
    expected = reference.apply(variables, IMAGES)
    np.testing.assert_allclose(
      model.apply(variables, IMAGES, train=False), expected, rtol=1e-5, atol=1e-5
    )
    if "batch_stats" not in variables:  # BN in training uses batch statistics
      np.testing.assert_allclose(
        model.apply(variables, IMAGES, train=True), expected, rtol=1e-5, atol=1e-5
      )


@pytest.mark.parametrize("name", list(models.MODELS))
def test_default_parameters_keep_their_names_and_every_activation_has_the_same_tree(name):
  relu = models.init_variables(models.create_model(name), jax.random.PRNGKey(0))
  assert sorted(relu["params"]) == sorted(PARAM_NAMES[name])
  other = models.init_variables(
    models.create_model(name, activation="tanh", dropout=0.2), jax.random.PRNGKey(0)
  )
  shapes = lambda v: jax.tree_util.tree_map(jnp.shape, v)  # noqa: E731
  assert shapes(other) == shapes(relu)


def _train_logits(model, variables, key=0):
  logits = model.apply(
    variables,
    IMAGES,
    train=True,
    rngs={"dropout": jax.random.PRNGKey(key)},
    mutable=["batch_stats"],
  )[0]
  return np.asarray(logits)


@pytest.mark.parametrize("name", list(models.MODELS))
def test_dropout_changes_training_outputs_only(name):
  without = models.create_model(name, dropout=0.0)
  variables = models.init_variables(without, jax.random.PRNGKey(0))
  with_dropout = models.create_model(name, dropout=0.5)
  assert not np.allclose(_train_logits(with_dropout, variables), _train_logits(without, variables))
  np.testing.assert_array_equal(
    with_dropout.apply(variables, IMAGES, train=False),
    without.apply(variables, IMAGES, train=False),
  )


def test_dropout_zero_turns_off_the_dropout_of_conv2_dense128_dropout():
  model = models.create_model("conv2_dense128_dropout", dropout=0.0)
  variables = models.init_variables(model, jax.random.PRNGKey(0))
  np.testing.assert_allclose(  # training runs the fused first layer: float rounding apart
    _train_logits(model, variables),
    model.apply(variables, IMAGES, train=False),
    rtol=1e-5,
    atol=1e-6,
  )
  default = models.create_model("conv2_dense128_dropout")
  assert default.dropout == 0.5
  assert not np.allclose(_train_logits(default, variables), _train_logits(model, variables))


def test_recipes_keep_each_architectures_dropout():
  dropout = {name: resolve(Config(model=name)).dropout for name in models.MODELS}
  assert dropout == {
    name: {"conv2_dense128_dropout": 0.5, "bn_conv3_wide": 0.3, "vgg_small": 0.5}.get(name, 0.0)
    for name in models.MODELS
  }
  for name in models.MODELS:  # the recipe's rate is the module's own default
    assert models.create_model(name).dropout == dropout[name]
  resolved = resolve_with_origins(Config(model="conv2_dense128_dropout"))
  assert resolved.origins["dropout"] == RECIPE
  assert resolve(Config()).activation == "relu"


def test_unknown_activation_names_the_valid_ones():
  with pytest.raises(ConfigError, match="unknown activation 'swish'.*relu, gelu, silu"):
    resolve(Config(model="conv2_dense64", activation="swish"))
  with pytest.raises(ValueError, match="valid values are: relu"):
    activation_fn("swish")


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan"), "0.5", True])
def test_dropout_out_of_range_is_refused(rate):
  with pytest.raises(ConfigError, match=r"dropout must be in \[0, 1\)"):
    resolve(Config(model="conv2_dense64", dropout=rate))


def test_old_config_without_the_fields_keeps_its_identity():
  """A config.json written before --activation and --dropout: its architecture's dropout."""
  for name in ("conv2_dense128_dropout", "bn_conv3_wide", "conv2_dense64"):
    fresh = resolve(Config(model=name))
    old = {k: v for k, v in fresh.to_dict().items() if k not in ("activation", "dropout")}
    assert Config.from_dict(old) == fresh
    assert identity_of(old) == fresh.identity()


def test_run_names_and_groups_tell_activations_and_dropout_apart():
  configs = expand(
    Config(), {"model": ["conv2_dense64"], "activation": ["relu", "gelu"], "seed": [0]}
  )
  names = [run_name(c) for c in configs]
  assert names == ["conv2_dense64-adam-seed0", "conv2_dense64-adam-actgelu-seed0"]
  assert "drop0.2" in run_name(resolve(Config(model="conv2_dense64", dropout=0.2)))
  relu = configs[0]
  assert groups.group_key(relu) != groups.group_key(configs[1])
  assert groups.group_key(relu) != groups.group_key(relu.replace(dropout=0.3))


def test_a_short_gelu_training_learns(mnist):
  """One epoch of 1,024 real images with GELU: well above chance on 1,000 test images."""
  datasets = tiny_datasets(mnist, n_train=1024, n_val=16, n_test=1000)
  config = resolve(
    Config(model="conv2_dense64", activation="gelu", batch_size=32, epoch_loop="host")
  )
  steps = steps_per_epoch(len(datasets.train.labels), config.batch_size)
  state = create_train_state(config, jax.random.PRNGKey(0), steps)
  epoch = make_epoch_fn(config)
  images, labels = jnp.asarray(datasets.train.images), jnp.asarray(datasets.train.labels)
  state, _ = epoch(state, jax.random.PRNGKey(1), images, labels)
  logits = predict(state, jnp.asarray(datasets.test.images))
  accuracy = float(np.mean(np.argmax(logits, -1) == datasets.test.labels))
  assert accuracy > 0.7, accuracy
