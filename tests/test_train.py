"""Training: config resolution, determinism, the epoch loops, end to end on real MNIST."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digits_jax import files, runs
from digits_jax.config import Config, ConfigError, resolve
from digits_jax.training import step
from tests.conftest import tiny_datasets


def _tiny(mnist, n_train=1024, n_val=512):
  return tiny_datasets(mnist, n_train, n_val, 1000)


def test_resolve_takes_the_recipe_and_overrides():
  config = resolve(Config(model="conv3_dense100"))
  assert (config.optimizer, config.learning_rate, config.batch_size, config.loss) == (
    "sgd",
    0.01,
    32,
    "onehot",
  )
  adam = resolve(Config(model="conv3_dense100", optimizer="adam"))
  assert (adam.optimizer, adam.learning_rate, adam.batch_size) == ("adam", 1e-3, 32)
  assert resolve(Config(model="conv3_dense100", learning_rate=0.05)).learning_rate == 0.05


@pytest.mark.parametrize(
  "change, message",
  [
    ({"learning_rate": 0.0}, "learning_rate must be a positive"),
    ({"learning_rate": -1.0}, "learning_rate must be a positive"),
    ({"batch_size": 0}, "batch_size must be a positive"),
    ({"optimizer": "rmsprop"}, "valid values are: adam, adamw, sgd"),
    ({"dataset": "cifar10"}, "valid values are: mnist, fashion_mnist, kmnist"),
    ({"loss": "hinge"}, "unknown loss"),
    ({"label_smoothing": 1.5}, "label_smoothing"),
  ],
)
def test_bad_config_values_are_named(change, message):
  with pytest.raises(ConfigError, match=message):
    resolve(Config(model="conv2_dense64", **change))


def test_cross_entropy_sparse_equals_onehot():
  logits = jax.random.normal(jax.random.PRNGKey(0), (8, 10))
  labels = jnp.arange(8) % 10
  np.testing.assert_allclose(
    step.cross_entropy(logits, labels, loss="sparse"),
    step.cross_entropy(logits, labels, loss="onehot"),
    rtol=1e-6,
  )
  # With smoothing the target is (1 - a) one_hot + a / K.
  a = 0.1
  targets = (1 - a) * jax.nn.one_hot(labels, 10) + a / 10
  expected = -(targets * jax.nn.log_softmax(logits)).sum(-1)
  np.testing.assert_allclose(
    step.cross_entropy(logits, labels, label_smoothing=a), expected, rtol=1e-6
  )


def test_scan_and_host_epochs_compute_the_same_steps():
  config = resolve(Config(model="conv2_dense64", batch_size=16))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.random((64, 28, 28, 1), np.float32))
  labels = jnp.asarray(rng.integers(0, 10, 64), jnp.int32)
  state = step.create_train_state(config, jax.random.PRNGKey(0), 4)
  results = {}
  for loop in ("scan", "host"):
    fresh = jax.tree_util.tree_map(jnp.copy, state)
    epoch_fn = step.make_epoch_fn(config.replace(epoch_loop=loop))
    results[loop] = epoch_fn(fresh, jax.random.PRNGKey(1), images, labels)
  (s1, m1), (s2, m2) = results["scan"], results["host"]
  np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(s1.params), jax.tree_util.tree_leaves(s2.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loop", ["scan", "host"])
def test_an_epoch_that_reports_its_steps_computes_the_same_steps(loop):
  # The progress line's host callback reads only the step's number: the numbers are those
  # of the epoch compiled without it, bit for bit.
  config = resolve(Config(model="conv2_dense64", batch_size=16, epoch_loop=loop))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.random((64, 28, 28, 1), np.float32))
  labels = jnp.asarray(rng.integers(0, 10, 64), jnp.int32)
  state = step.create_train_state(config, jax.random.PRNGKey(0), 4)
  seen = []
  results = [
    step.make_epoch_fn(config, on_step=on_step)(
      jax.tree_util.tree_map(jnp.copy, state), jax.random.PRNGKey(1), images, labels
    )
    for on_step in (None, seen.append)
  ]
  jax.effects_barrier()
  assert sorted(seen) == [1, 2, 3, 4]
  (plain, plain_metrics), (reported, reported_metrics) = jax.device_get(results)
  np.testing.assert_array_equal(plain_metrics["loss"], reported_metrics["loss"])
  for a, b in zip(
    jax.tree_util.tree_leaves(plain.params), jax.tree_util.tree_leaves(reported.params)
  ):
    np.testing.assert_array_equal(a, b)


def test_a_run_on_a_terminal_shows_its_steps_and_a_log_file_never_does(monkeypatch, tmp_path):
  from digits_jax import data, progress
  from digits_jax.training import loop
  from tests.test_progress import FakeTerminal

  class Eager(progress.EpochProgress):  # every report shows, not only after ten seconds
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs, after=0, interval=0)

  monkeypatch.setattr(loop, "EpochProgress", Eager)
  rng = np.random.default_rng(0)
  split = lambda n: data.Split(
    rng.random((n, 28, 28, 1), np.float32), rng.integers(0, 10, n).astype(np.int32)
  )
  datasets = data.Datasets(split(128), split(32), split(32), name="mnist", backend="idx")
  config = Config(model="conv2_dense64", epochs=2, batch_size=16, seed=0)
  results, written = {}, {}
  for tty in (False, True):
    stream = FakeTerminal(tty)
    monkeypatch.setattr("sys.stderr", stream)
    results[tty] = runs.train_and_evaluate(
      config, tmp_path / str(tty), datasets=datasets, plots=False
    )
    monkeypatch.undo()
    monkeypatch.setattr(loop, "EpochProgress", Eager)
    written[tty] = stream.getvalue()
  assert "steps" not in written[False] and "\r" not in written[False]
  for epoch in (1, 2):
    assert f"\rconv2_dense64 epoch {epoch}: 8/8 steps, " in written[True]
  assert written[True].endswith(" \r")  # erased at the end of the epoch
  timeless = lambda r: {k: v for k, v in r.items() if "seconds" not in k}
  assert timeless(results[True]) == timeless(results[False])


def test_predict_pads_the_last_batch():
  config = resolve(Config(model="conv2_dense64"))
  state = step.create_train_state(config, jax.random.PRNGKey(0), 1)
  images = jax.random.uniform(jax.random.PRNGKey(1), (23, 28, 28, 1))
  full = step.forward(state, images)
  np.testing.assert_allclose(step.predict(state, images, batch_size=10), full, rtol=1e-5, atol=1e-6)


def test_same_seed_same_numbers(mnist, tmp_path):
  tiny = _tiny(mnist)
  config = Config(model="conv2_dense128_dropout", epochs=2, batch_size=64, augment=True)
  # No plots: the numbers are what is compared, and the plots cost more than the training.
  run = functools.partial(runs.train_and_evaluate, datasets=tiny, plots=False)
  a, b = run(config, tmp_path / "a"), run(config, tmp_path / "b")
  c = run(config.replace(seed=1), tmp_path / "c")
  timeless = lambda rows: [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]
  assert timeless([a]) == timeless([b])
  assert timeless(files.read_jsonl(tmp_path / "a/metrics.jsonl")) == timeless(
    files.read_jsonl(tmp_path / "b/metrics.jsonl")
  )
  assert a["test_loss"] != c["test_loss"]


def test_run_writes_its_files(mnist, tmp_path):
  results = runs.train_and_evaluate(
    Config(model="bn_conv3_wide", epochs=2, batch_size=64),
    tmp_path,
    datasets=_tiny(mnist),
    plots=False,  # the plots of a run: tests/test_report.py
  )
  saved = files.read_json(tmp_path / "config.json")
  assert saved["config"]["model"] == "bn_conv3_wide"
  assert saved["config"]["optimizer"] == "adamw"  # resolved from the recipe
  assert saved["environment"]["jax"] == jax.__version__
  rows = files.read_jsonl(tmp_path / "metrics.jsonl")
  assert [r["epoch"] for r in rows] == [1, 2]
  best = max(rows, key=lambda r: r["val_accuracy"])
  assert results["best_epoch"] == best["epoch"]
  assert results["val_accuracy"] == best["val_accuracy"]
  assert files.read_json(tmp_path / "results.json") == results


def test_a_run_without_plots_draws_them_later(mnist, tmp_path):
  """--plots=false (the quick sweep): text reports only; evaluate draws the figures."""
  tiny = _tiny(mnist)
  config = Config(model="conv2_dense64", epochs=1, batch_size=64)
  results = runs.train_and_evaluate(config, tmp_path, datasets=tiny, plots=False)
  assert (tmp_path / "classification_report.txt").is_file()
  assert (tmp_path / "test_outputs.npz").is_file()
  assert not (tmp_path / "plots").exists()
  rebuilt = runs.rebuild(tmp_path, datasets=tiny)
  assert rebuilt["reproduced"] and rebuilt["test_accuracy"] == results["test_accuracy"]
  for name in ("confusion_matrix.png", "misclassified.png", "saliency.png"):
    assert (tmp_path / "plots" / name).is_file()


def test_batch_larger_than_the_training_set(mnist, tmp_path):
  with pytest.raises(ConfigError, match="larger than the 100 training images"):
    runs.train_and_evaluate(
      Config(model="conv2_dense64", batch_size=128, train_subset=100), tmp_path, datasets=mnist
    )


def test_one_epoch_on_real_mnist_reaches_97_percent(mnist, tmp_path):
  """End to end: the full training set, one epoch of the smallest source network."""
  results = runs.train_and_evaluate(
    Config(model="conv2_dense64", epochs=1), tmp_path, datasets=mnist, plots=False
  )
  assert results["test_accuracy"] >= 0.97, results
