"""The accuracy levers: moving average of the weights, test-time augmentation, settings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digits_jax import augment
from digits_jax.config import Config, ConfigError, resolve
from digits_jax.training import checkpoints, step

# The train step compiled, as training runs it (run op by op it takes seconds per step).
TRAIN_STEP = jax.jit(step.train_step, static_argnames="config")


def _batch(n=16, seed=0):
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.random((n, 28, 28, 1), np.float32))
  labels = jnp.asarray(rng.integers(0, 10, n), jnp.int32)
  return images, labels


def _leaves(tree):
  return jax.tree_util.tree_leaves(tree)


def test_ema_equals_the_hand_recurrence():
  """EMA of weights after k steps: e_0 = w_0, e_t = d e_(t-1) + (1 - d) w_t.

  This is optax.ema(d, debias=False) started at the initial weights instead of zeros, so
  no debiasing (optax's division by 1 - d^t) is needed or applied.
  """
  decay, k = 0.8, 4
  config = resolve(Config(model="bn_conv3_wide", batch_size=16, augment=False, ema=decay))
  plain = config.replace(ema=0.0)
  images, labels = _batch()
  state = step.create_train_state(config, jax.random.PRNGKey(0), 10)
  raw = step.create_train_state(plain, jax.random.PRNGKey(0), 10)
  assert raw.ema == {} and state.ema["batch_stats"]  # a network with BatchNorm
  hand = jax.tree_util.tree_map(np.asarray, {"params": raw.params, "batch_stats": raw.batch_stats})
  for t in range(k):
    key = jax.random.PRNGKey(10 + t)
    state, _ = TRAIN_STEP(state, images, labels, key, config=config)
    raw, _ = TRAIN_STEP(raw, images, labels, key, config=plain)
    now = {"params": raw.params, "batch_stats": raw.batch_stats}
    hand = jax.tree_util.tree_map(lambda e, w: decay * e + (1 - decay) * np.asarray(w), hand, now)
  # Averaging does not change training: the trained weights are those of the plain run.
  for a, b in zip(_leaves(state.params), _leaves(raw.params), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for a, b in zip(_leaves(state.ema), _leaves(hand), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert not np.allclose(_leaves(state.ema["params"])[0], _leaves(state.params)[0])
  # What is evaluated and checkpointed as the model is the average.
  for a, b in zip(_leaves(step.model_variables(state)), _leaves(state.ema), strict=True):
    np.testing.assert_array_equal(a, b)
  evaluated = step.eval_state(state)
  for a, b in zip(_leaves(evaluated.params), _leaves(state.ema["params"]), strict=True):
    np.testing.assert_array_equal(a, b)
  assert step.eval_state(raw) is raw


def test_latest_checkpoint_keeps_both_weights(tmp_path):
  config = resolve(Config(model="conv2_dense64", batch_size=16, augment=False, ema=0.5))
  images, labels = _batch()
  state = step.create_train_state(config, jax.random.PRNGKey(0), 10)
  state, _ = TRAIN_STEP(state, images, labels, jax.random.PRNGKey(1), config=config)
  latest = checkpoints.LatestCheckpoint(tmp_path / "ckpt", identity=config.identity())
  latest.save(1, state)
  template = step.create_train_state(config, jax.random.PRNGKey(5), 10)
  epoch, restored = latest.restore(template)
  assert epoch == 1
  for a, b in zip(_leaves((restored.params, restored.ema)), _leaves((state.params, state.ema))):
    np.testing.assert_array_equal(a, b)


def _hand_shift(x, dy, dx):
  """Images moved down dy and right dx pixels, zeros coming in."""
  h, w = x.shape[1:3]
  out = np.zeros_like(x)
  out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
    :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
  ]
  return out


def test_tta_is_the_mean_of_its_copies():
  config = resolve(Config(model="conv2_dense64"))
  state = step.create_train_state(config, jax.random.PRNGKey(0), 1)
  images, _ = _batch(7)
  x = np.asarray(images)
  copies = [_hand_shift(x, dy, dx) for dy, dx in augment.TTA_SHIFTS]
  probs = [np.asarray(jax.nn.softmax(step.forward(state, jnp.asarray(c)), -1)) for c in copies]
  expected = np.mean(probs, axis=0)
  got = np.asarray(jax.nn.softmax(step.predict_tta(state, images, batch_size=3), -1))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
  assert not np.allclose(got, probs[0])
  # With the image itself as the only copy, TTA is plain prediction.
  alone = step.predict_tta(state, images, 3, shifts=((0, 0),))
  np.testing.assert_allclose(
    jax.nn.softmax(alone, -1), jax.nn.softmax(step.predict(state, images, 3), -1), rtol=1e-5
  )
  tta = resolve(Config(model="conv2_dense64", tta=True))
  np.testing.assert_allclose(step.predict_config(tta, state, images, 3), np.log(got), rtol=1e-4)


@pytest.mark.parametrize(
  ("changes", "match"),
  [
    ({"ema": 1.0}, "ema must be in"),
    ({"ema": -0.1}, "ema must be in"),
    ({"elastic_alpha": -1.0}, "elastic_alpha must be"),
    ({"elastic_sigma": 0.0}, "elastic_sigma must be"),
  ],
)
def test_bad_lever_settings_are_named(changes, match):
  with pytest.raises(ConfigError, match=match):
    resolve(Config(model="conv2_dense64", **changes))


def test_levers_default_off_and_old_configs_keep_their_identity():
  config = resolve(Config(model="vgg_small"))
  assert (config.ema, config.elastic_alpha, config.tta) == (0.0, 0.0, False)
  saved = {k: v for k, v in config.to_dict().items() if k not in ("ema", "tta", "elastic_alpha")}
  assert Config.from_dict(saved).identity() == config.identity()


def test_final_fit_trains_on_all_images_for_the_chosen_epochs(mnist, tmp_path):
  from digits_jax import data, runs
  from tests.conftest import tiny_datasets

  tiny = tiny_datasets(mnist, n_train=512, n_val=256, n_test=500)
  config = resolve(Config(model="conv2_dense64", epochs=3, batch_size=64))
  # No plots: the final fit's settings and numbers are what is checked.
  results = runs.train_and_evaluate(config, tmp_path / "run", datasets=tiny, plots=False)
  final = runs.final_fit_config(config, results)
  assert final.validation_size == 0 and final.epochs == results["best_epoch"]
  assert final.replace(validation_size=5000, epochs=3) == config
  merged = data.Datasets(
    train=data.Split(
      np.concatenate([tiny.train.images, tiny.validation.images]),
      np.concatenate([tiny.train.labels, tiny.validation.labels]),
    ),
    validation=data.Split(tiny.validation.images[:0], tiny.validation.labels[:0]),
    test=tiny.test,
    name=tiny.name,
    backend=tiny.backend,
  )
  final_results = runs.train_and_evaluate(final, tmp_path / "final", datasets=merged, plots=False)
  assert final_results["best_epoch"] == final.epochs  # the last: nothing else may choose
  assert final_results["val_accuracy"] is None
  assert 0.5 < final_results["test_accuracy"] <= 1.0
  with pytest.raises(ConfigError, match="validation split"):
    runs.final_fit_config(final, final_results)


def test_a_checkpoint_from_before_the_ema_field_still_resumes(tmp_path):
  import orbax.checkpoint as ocp
  from flax import serialization

  config = resolve(Config(model="conv2_dense64"))
  state = step.create_train_state(config, jax.random.PRNGKey(0), 10)
  latest = checkpoints.LatestCheckpoint(tmp_path, identity=config.identity())
  old = serialization.to_state_dict(state)
  del old["ema"]  # what a run saved before train states had the field
  latest._manager.save(
    1,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(old),
      run=ocp.args.JsonSave({"epoch": 1, "identity": config.identity()}),
    ),
  )
  latest._manager.wait_until_finished()
  epoch, restored = checkpoints.LatestCheckpoint(tmp_path, identity=config.identity()).restore(
    state
  )
  assert epoch == 1 and restored.ema == {}
  for a, b in zip(_leaves(restored.params), _leaves(state.params), strict=True):
    np.testing.assert_array_equal(a, b)


def test_a_tta_run_serves_what_its_test_measured(mnist, tmp_path):
  """predict and the drawing page go through Predictor.probabilities: for a run trained with
  test-time augmentation they give the test's probabilities, TTA included."""
  from digits_jax import data, rundir, runs

  datasets = data.Datasets(
    train=mnist.train,
    validation=data.Split(mnist.validation.images[:500], mnist.validation.labels[:500]),
    test=data.Split(mnist.test.images[:2000], mnist.test.labels[:2000]),
    name=mnist.name,
    backend=mnist.backend,
  )
  results = runs.train_and_evaluate(
    Config(model="conv2_dense64", epochs=1, train_subset=512, tta=True),
    tmp_path,
    datasets=datasets,
    plots=False,
  )
  loaded = runs.load_predictor(tmp_path)
  served = loaded.probabilities(datasets.test.images)
  tested = rundir.load_test_outputs(tmp_path).probabilities
  np.testing.assert_allclose(served, tested, atol=1e-3)  # stored as float16
  accuracy = np.mean(np.argmax(served, -1) == datasets.test.labels)
  assert accuracy == pytest.approx(results["test_accuracy"], abs=1e-6)  # float32 there
  # Without TTA the same weights give other probabilities: the test above can fail.
  plain = loaded.state.apply_fn(
    {"params": loaded.state.params}, jax.numpy.asarray(datasets.test.images[:200]), train=False
  )
  assert not np.allclose(np.asarray(jax.nn.softmax(plain, -1)), served[:200], atol=1e-5)
