"""Every registered variant: output shape, parameter count, a train step lowers the loss."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digits_jax import models
from digits_jax.config import Config, resolve
from digits_jax.models import native
from digits_jax.training import step

# Counted by hand from the layer shapes (VALID 3x3 convs, 2x2 pools), so a change
# in any layer fails here.
EXPECTED_PARAMS = {
  "conv3_dense128_64": 138_506,
  "conv3_dense100": 159_254,
  "conv2_dense64": 121_930,
  "conv2_dense100": 179_926,
  "conv2_dense128_dropout": 225_034,
  "bn_conv3_wide": 391_370,
  "resnet8": 78_090,
  "vgg_small": 223_034,
  "speedrun": 215_194,
  "speedrun_small": 72_010,
  "madry_mnist": 3_274_634,
}


def test_every_model_has_an_expected_count():
  assert set(EXPECTED_PARAMS) == set(models.MODELS)


@pytest.mark.parametrize("name", list(models.MODELS))
@pytest.mark.parametrize("fast", [True, False])
def test_shape_and_param_count(name, fast):
  model = models.create_model(name, fast=fast)
  variables = models.init_variables(model, jax.random.PRNGKey(0))
  assert models.count_params(variables["params"]) == EXPECTED_PARAMS[name]
  logits = model.apply(variables, jnp.zeros((3, 28, 28, 1)), train=False)
  assert logits.shape == (3, 10)
  assert logits.dtype == jnp.float32


@pytest.mark.parametrize("name", ["speedrun", "bn_conv3_wide", "resnet8"])
def test_compiled_initialisation_gives_the_values_of_the_op_by_op_one(name):
  # init_variables compiles the whole initialisation; the same seed must give the very
  # numbers Flax's op-by-op init gives (runs trained before keep their starting weights).
  model = models.create_model(name)
  key = jax.random.PRNGKey(3)
  compiled = models.init_variables(model, key)
  eager = model.init({"params": key}, jnp.zeros((1, 28, 28, 1), jnp.float32), train=False)
  assert jax.tree_util.tree_structure(compiled) == jax.tree_util.tree_structure(eager)
  for a, b in zip(jax.tree_util.tree_leaves(compiled), jax.tree_util.tree_leaves(eager)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  shapes = models.variable_shapes(model)  # computed without running anything
  assert jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), compiled) == jax.tree_util.tree_map(
    lambda a: (a.shape, a.dtype), shapes
  )


@pytest.mark.parametrize("name", list(models.MODELS))
def test_fast_and_plain_agree(name):
  """Same parameters, same logits: the fast ops change the speed, not the maths."""
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 28, 28, 1))
  fast, plain = models.create_model(name, fast=True), models.create_model(name, fast=False)
  variables = models.init_variables(fast, jax.random.PRNGKey(0))
  np.testing.assert_allclose(
    fast.apply(variables, x), plain.apply(variables, x), rtol=1e-5, atol=1e-5
  )


# The networks whose conv-ReLU-pool layers are one op in training (the first one fused in C++).
FUSED_FIRST_LAYER = [
  "conv3_dense128_64",
  "conv3_dense100",
  "conv2_dense64",
  "conv2_dense100",
  "conv2_dense128_dropout",
  "speedrun",
  "speedrun_small",
  "madry_mnist",
]


@pytest.mark.parametrize("name", FUSED_FIRST_LAYER)
def test_fast_and_plain_agree_in_training(name):
  """Training mode (the fused first layer, dropout with one key): same logits and gradients."""
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 28, 28, 1))
  fast, plain = models.create_model(name, fast=True), models.create_model(name, fast=False)
  params = models.init_variables(fast, jax.random.PRNGKey(0))["params"]
  weights = jax.random.normal(jax.random.PRNGKey(2), (4, 10))

  def loss(model, params):
    logits = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(5)})
    return jnp.sum(logits * weights)

  (fast_loss, fast_grads), (plain_loss, plain_grads) = (
    jax.jit(jax.value_and_grad(functools.partial(loss, m)))(params) for m in (fast, plain)
  )
  assert float(fast_loss) == pytest.approx(float(plain_loss), rel=1e-5, abs=1e-5)
  for a, b in zip(jax.tree.leaves(fast_grads), jax.tree.leaves(plain_grads), strict=True):
    assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) < 1e-4


@pytest.mark.parametrize("name", list(models.MODELS))
def test_one_step_lowers_the_loss(name):
  config = resolve(Config(model=name, batch_size=32, augment=False))
  state = step.create_train_state(config, jax.random.PRNGKey(0), steps_per_epoch=10)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.random((32, 28, 28, 1), np.float32))
  labels = jnp.asarray(rng.integers(0, 10, 32), jnp.int32)
  step_rng = jax.random.PRNGKey(3)

  train_step = jax.jit(step.train_step, static_argnames="config")  # as training runs it

  def loss(state):  # the training loss, same dropout mask before and after
    _, metrics = train_step(state, images, labels, step_rng, config=config)
    return float(metrics["loss"])

  before = loss(state)
  new_state, metrics = train_step(state, images, labels, step_rng, config=config)
  assert float(metrics["loss"]) == pytest.approx(before)
  assert loss(new_state) < before


def test_unknown_model_lists_the_valid_names():
  with pytest.raises(models.UnknownModelError, match="conv2_dense64"):
    models.create_model("resnet50")


@pytest.mark.skipif(not native.available(), reason="the C++ kernels did not build here")
def test_passes_without_a_gradient_take_xla_convolutions_and_agree_with_training_path():
  # Inference (validation, test, predict) runs XLA's own convolutions, faster without a
  # gradient; training steps keep the C++ kernels. Both give the same logits.
  config = resolve(Config(model="conv2_dense64"))
  state = step.create_train_state(config, jax.random.PRNGKey(0), 1)
  images = jax.random.uniform(jax.random.PRNGKey(1), (16, 28, 28, 1))
  inference = step.forward.lower(state, images).as_text()
  training = step.forward.lower(state.replace(infer_fn=None), images).as_text()
  assert "digits_" in training and "digits_" not in inference
  np.testing.assert_allclose(
    step.forward(state, images),
    step.forward(state.replace(infer_fn=None), images),
    rtol=1e-5,
    atol=1e-5,
  )
  # States of one network (a vmapped group's) share it, so they can be stacked.
  model = config.create_model(10)
  a, b = (step.create_train_state(config, jax.random.PRNGKey(i), 1, model=model) for i in (0, 1))
  assert a.infer_fn is not None and a.infer_fn == b.infer_fn


@pytest.mark.skipif(not native.available(), reason="the C++ kernels did not build here")
def test_inference_takes_the_fused_kernel_for_a_narrow_first_layer_only():
  # speedrun_small's 16-channel first layer is the fused kernel in inference (XLA's
  # convolution is slow there); conv2_dense64's 32-channel one stays XLA's. The same logits.
  images = jax.random.uniform(jax.random.PRNGKey(1), (8, 28, 28, 1))
  for name, fused in (("speedrun_small", True), ("conv2_dense64", False)):
    model = models.create_model(name)
    variables = models.init_variables(model, jax.random.PRNGKey(0))
    infer = jax.jit(functools.partial(models.inference_apply(model), train=False))
    hlo = infer.lower(variables, images).as_text()
    assert ("digits_conv_relu_pool" in hlo) == fused and "digits_im2col" not in hlo
    np.testing.assert_allclose(
      infer(variables, images),
      model.apply(variables, images, train=False),
      rtol=1e-5,
      atol=1e-5,
    )


@pytest.mark.skipif(not native.available(), reason="the C++ kernels did not build here")
@pytest.mark.parametrize("name", ["speedrun", "conv2_dense64"])
def test_attack_logits_fuse_the_first_layer_and_keep_the_input_gradient(name):
  # The attacks differentiate the images through the fused first layer: the same logits and
  # the same input gradient as jax.grad of the plain network (XLA's ops, no custom VJPs).
  model = models.create_model(name)
  plain = models.create_model(name, fast=False)
  variables = models.init_variables(model, jax.random.PRNGKey(0))
  images = jax.random.uniform(jax.random.PRNGKey(1), (8, 28, 28, 1))
  labels = jnp.arange(8) % 10
  logits = models.attack_logits(model.apply)

  def input_grad(fn):
    return jax.jit(
      jax.grad(lambda x: -jnp.sum(jax.nn.log_softmax(fn(variables, x))[jnp.arange(8), labels]))
    )

  fused_grad = input_grad(logits)
  assert "digits_conv_relu_pool_input_grad" in fused_grad.lower(images).as_text()
  reference = lambda v, x: plain.apply(v, x, train=False)  # noqa: E731
  np.testing.assert_allclose(logits(variables, images), reference(variables, images), atol=1e-5)
  got, want = fused_grad(images), input_grad(reference)(images)
  assert float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want)) < 1e-4
  # Outside the attacks, evaluation keeps the unfused layer (visualize reads its conv output).
  unfused = jax.jit(lambda x: model.apply(variables, x, train=False)).lower(images).as_text()
  assert "digits_conv_relu_pool" not in unfused
