"""The ResNet and VGG families: names, shapes, exact sizes, fast and plain paths, shortcuts.

``tests/test_models.py`` runs its checks (shape and parameter count on both paths, fast and
plain logits agree, one train step lowers the loss) over every registered model, these
included; here are the checks specific to the deeper nets.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digits_jax import models
from digits_jax.models import resnet, vgg

# Counted by hand (3x3 SAME convs with bias, BN scale and bias, dense layers):
# resnet8: stem 9*16+16 + BN 32; block0 2 x (9*16*16+16) + 2 BN 32; block1 (9*16*32+32) +
#   (9*32*32+32) + projection 16*32+32 + 3 BN 64; block2 (9*32*64+64) + (9*64*64+64) +
#   projection 32*64+64 + 3 BN 128; logits 64*10+10.
# vgg_small: convs 160, 2320, 4640, 9248, 18496, 36928; BN 2*(16+16+32+32+64+64);
#   dense 576*256+256 + BN 512; logits 256*10+10.
EXPECTED_PARAMS = {"resnet8": 78_090, "vgg_small": 223_034}
DEEP = list(EXPECTED_PARAMS)


def _init(name, *, fast=True, num_classes=10):
  model = models.create_model(name, fast=fast, num_classes=num_classes)
  return model, models.init_variables(model, jax.random.PRNGKey(0))


def test_names_say_the_family():
  resnets = [n for n, s in models.MODELS.items() if issubclass(s.module, resnet.ResNet)]
  vggs = [n for n, s in models.MODELS.items() if issubclass(s.module, vgg.VGG)]
  assert resnets == ["resnet8"] and vggs == ["vgg_small"]
  assert all("resnet" in n for n in resnets) and all("vgg" in n for n in vggs)
  for name in DEEP:
    spec = models.get_spec(name)
    assert 10 <= spec.recipe["epochs"] <= 15
    assert spec.source and spec.reported.startswith("aims at")


@pytest.mark.parametrize("name", DEEP)
def test_exact_parameter_counts_and_one_tree_for_both_paths(name):
  _, fast = _init(name, fast=True)
  _, plain = _init(name, fast=False)
  assert models.count_params(fast["params"]) == EXPECTED_PARAMS[name]
  shapes = lambda v: jax.tree_util.tree_map(jnp.shape, v)  # noqa: E731
  assert shapes(fast) == shapes(plain)  # params and batch_stats
  assert set(fast) == {"params", "batch_stats"}


@pytest.mark.parametrize("name", DEEP)
@pytest.mark.parametrize("fast", [True, False])
def test_output_shape_follows_num_classes(name, fast):
  model, variables = _init(name, fast=fast, num_classes=7)
  logits = model.apply(variables, jnp.zeros((5, 28, 28, 1)), train=False)
  assert logits.shape == (5, 7)


@pytest.mark.parametrize("name", DEEP)
def test_fast_and_plain_agree_in_training_mode(name):
  """Batch statistics, their updates and the parameter gradients match on both paths."""
  x = jax.random.uniform(jax.random.PRNGKey(1), (6, 28, 28, 1))
  labels = jnp.arange(6) % 10
  fast_model, variables = _init(name, fast=True)
  plain_model, _ = _init(name, fast=False)

  def loss(model, params):
    logits, updates = model.apply(
      {**variables, "params": params},
      x,
      train=True,
      rngs={"dropout": jax.random.PRNGKey(2)},
      mutable=["batch_stats"],
    )
    ce = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(6), labels])
    return ce, (logits, updates)

  results = [
    jax.jit(jax.value_and_grad(lambda p, m=m: loss(m, p), has_aux=True))(variables["params"])
    for m in (fast_model, plain_model)
  ]
  (fast_loss, (fast_logits, fast_stats)), fast_grads = results[0]
  (plain_loss, (plain_logits, plain_stats)), plain_grads = results[1]
  np.testing.assert_allclose(fast_logits, plain_logits, rtol=1e-4, atol=1e-5)
  for a, b in zip(
    jax.tree_util.tree_leaves(fast_stats), jax.tree_util.tree_leaves(plain_stats), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  for a, b in zip(
    jax.tree_util.tree_leaves(fast_grads), jax.tree_util.tree_leaves(plain_grads), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
  assert float(fast_loss) == pytest.approx(float(plain_loss), rel=1e-5)


def test_resnet_projects_only_where_the_width_changes():
  _, variables = _init("resnet8")
  params = variables["params"]
  assert "projection" not in params["block0"]
  assert params["block1"]["projection"]["kernel"].shape == (16, 32)
  assert params["block2"]["projection"]["kernel"].shape == (32, 64)


@pytest.mark.parametrize("fast", [True, False])
def test_residual_block_adds_its_shortcut(fast):
  """With the residual branch silenced (last BN scale and bias 0) a block is its shortcut."""
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 7, 7, 4))
  for features in (4, 8):  # identity, then projection
    block = resnet.ResidualBlock(features, fast=fast)
    variables = jax.jit(block.init)(jax.random.PRNGKey(4), x)
    params = jax.tree_util.tree_map(lambda a: a, variables["params"])  # a mutable copy
    params["bn1"] = {"scale": jnp.zeros(features), "bias": jnp.zeros(features)}
    out = block.apply({**variables, "params": params}, x)
    if features == 4:
      expected = jax.nn.relu(x)
    else:  # 1x1 projection, then BN with running statistics mean 0, variance 1
      projection = params["projection"]
      y = x @ projection["kernel"] + projection["bias"]
      bn = params["projection_bn"]
      expected = jax.nn.relu(y / jnp.sqrt(1 + 1e-5) * bn["scale"] + bn["bias"])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    # And the branch does contribute when it is not silenced.
    assert not np.allclose(block.apply(variables, x), out)


def test_vgg_without_batch_norm():
  """The batch-norm-free variant of the paper: same convs, no BN parameters or statistics."""
  model = vgg.VGG(batch_norm=False)
  variables = models.init_variables(model, jax.random.PRNGKey(0))
  assert set(variables) == {"params"}
  assert models.count_params(variables["params"]) == EXPECTED_PARAMS["vgg_small"] - 960
  assert model.apply(variables, jnp.zeros((2, 28, 28, 1))).shape == (2, 10)


@pytest.mark.parametrize("name", DEEP)
def test_convolutions_are_named_for_the_visualisations(name):
  _, variables = _init(name)
  params = variables["params"]
  if name == "resnet8":
    assert {"conv0", "block0", "block1", "block2"} <= set(params)
    assert all({"conv0", "conv1"} <= set(params[f"block{i}"]) for i in range(3))
  else:
    assert {f"conv{i}" for i in range(6)} <= set(params)
