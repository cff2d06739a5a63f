"""The path a GPU or TPU takes (``fast_ops`` off), compiled and checked on the CPU.

On an accelerator ``fast_ops=auto`` leaves the CPU-tuned ops out: convolutions and pools
are plain XLA, and a vmapped group of models is one grouped convolution, with no loop
over the models. Here that path is forced with ``fast_ops="off"`` and its lowered form
is read.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digits_jax import models
from digits_jax.config import Config, ConfigError, resolve, validate
from digits_jax.training import sharding
from digits_jax.training.optim import make_optimizer
from digits_jax.training.step import create_train_state, train_step

K = 3  # models in the group
MODEL = "conv2_dense64"  # no dropout: a plain loss without keys gives the same numbers


def test_auto_is_on_for_the_cpu_only(monkeypatch):
  assert jax.default_backend() == "cpu"
  assert models.use_fast_ops("auto") is True
  assert models.use_fast_ops("off") is False and models.use_fast_ops(False) is False
  assert models.use_fast_ops("on") is True and models.use_fast_ops("true") is True
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert models.use_fast_ops("auto") is False
  assert models.use_fast_ops("on") is True


def test_bad_fast_ops_value_is_a_config_error():
  with pytest.raises(ConfigError, match="auto, on, off"):
    validate(resolve(Config(model=MODEL, fast_ops="fast")))


def _group(fast_ops: str):
  config = resolve(Config(model=MODEL, batch_size=16, fast_ops=fast_ops))
  model = models.create_model(config.model, fast=config.fast_ops)
  tx = make_optimizer(config, 10)
  states = [create_train_state(config, jax.random.key(s), 10, model=model, tx=tx) for s in range(K)]
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.random((16, 28, 28, 1), np.float32))
  labels = jnp.asarray(rng.integers(0, 10, 16), jnp.int32)
  keys = jax.random.split(jax.random.key(1), K)
  return config, states, images, labels, keys


def _vmapped_step(config):
  step = lambda s, x, y, r: train_step(s, x, y, r, config=config)  # noqa: E731
  return jax.jit(jax.vmap(step, in_axes=(0, None, None, 0)))


def test_vmapped_group_is_one_grouped_convolution():
  config, states, images, labels, keys = _group("off")
  lowered = _vmapped_step(config).lower(sharding.stack_models(states), images, labels, keys)
  text = lowered.as_text()
  assert "stablehlo.while" not in text  # no lax.map over the models
  groups = re.findall(r"(?:feature|batch)_group_count = (\d+)", text)
  assert str(K) in groups, groups
  hlo = lowered.compile().as_text()
  assert not re.search(r"\bwhile\(", hlo)


def test_vmapped_group_matches_plain_per_model_gradients():
  config, states, images, labels, keys = _group("off")
  stacked = sharding.stack_models(states)
  new, metrics = _vmapped_step(config)(stacked, images, labels, keys)
  plain = models.create_model(MODEL, fast="off")

  def loss(params, batch_stats):
    logits = plain.apply({"params": params, **batch_stats}, images, train=True)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

  for i, state in enumerate(states):
    extra = {"batch_stats": state.batch_stats} if state.batch_stats else {}
    value, grads = jax.value_and_grad(loss)(state.params, extra)
    assert float(metrics["loss"][i]) == pytest.approx(float(value), rel=1e-5)
    expected = state.apply_gradients(grads=grads).params
    got = jax.tree_util.tree_map(lambda x, i=i: x[i], new.params)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
