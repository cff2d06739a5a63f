"""Adversarial training: the attack inside the train step, its schedule, robust validation,
what it buys on real MNIST, resume, and the refusals of bad settings."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digits_jax import runs
from digits_jax.config import Config, ConfigError, resolve
from digits_jax.robustness import attacks, dataset_attacks
from digits_jax.training import adversarial, history, loop, step
from tests import cli
from tests.conftest import tiny_datasets


def _batch(n=32, seed=0):
  rng = np.random.default_rng(seed)
  return (
    jnp.asarray(rng.random((n, 28, 28, 1), np.float32)),
    jnp.asarray(rng.integers(0, 10, n), jnp.int32),
  )


def _config(model="conv2_dense64", **changes):
  return resolve(Config(model=model, batch_size=32, **changes))


def _max_abs_diff(a, b) -> float:
  leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  return max((float(jnp.max(jnp.abs(x - y))) for x, y in leaves), default=0.0)


@pytest.mark.parametrize("kind", ["fgsm", "pgd"])
def test_the_training_attack_raises_the_batch_loss(mnist, kind):
  config = _config(adversarial=kind, adversarial_eps=0.1, adversarial_steps=5)
  state = step.create_train_state(config, jax.random.PRNGKey(0), steps_per_epoch=10)
  images = jnp.asarray(mnist.train.images[:64])
  labels = jnp.asarray(mnist.train.labels[:64])
  logits_fn = lambda x: state.apply_fn({"params": state.params}, x, train=False)  # noqa: E731
  x_adv = adversarial.perturb(config, logits_fn, images, labels, 0.1, jax.random.key(1))
  assert float(jnp.max(jnp.abs(x_adv - images))) <= 0.1 + 1e-6
  assert float(jnp.min(x_adv)) >= 0.0 and float(jnp.max(x_adv)) <= 1.0
  clean = step.cross_entropy(logits_fn(images), labels).mean()
  attacked = step.cross_entropy(logits_fn(x_adv), labels).mean()
  assert float(attacked) > float(clean) + 0.01


def test_the_trades_attack_moves_the_prediction_away_from_the_clean_one(mnist):
  config = _config(adversarial="trades", adversarial_eps=0.1, adversarial_steps=5)
  state = step.create_train_state(config, jax.random.PRNGKey(0), steps_per_epoch=10)
  images = jnp.asarray(mnist.train.images[:64])
  labels = jnp.asarray(mnist.train.labels[:64])
  logits_fn = lambda x: state.apply_fn({"params": state.params}, x, train=False)  # noqa: E731
  clean = logits_fn(images)
  x_adv = adversarial.perturb(
    config, logits_fn, images, labels, 0.1, jax.random.key(1), clean_logits=clean
  )
  kl = adversarial.trades_kl(clean, logits_fn(x_adv))
  assert float(jnp.mean(kl)) > 1e-4
  assert float(jnp.min(kl)) >= -1e-6
  np.testing.assert_allclose(adversarial.trades_kl(clean, clean), 0.0, atol=1e-6)


@pytest.mark.parametrize(
  ("model", "kind"),
  [("conv2_dense128_dropout", "pgd"), ("conv2_dense64", "fgsm"), ("bn_conv3_wide", "pgd")],
)
def test_with_eps_zero_the_adversarial_step_is_the_standard_step(model, kind):
  """Dropout, batch norm and augmentation (bn_conv3_wide) keep their keys; nothing moves."""
  standard = _config(model)
  attacked = resolve(Config(model=model, batch_size=32, adversarial=kind)).replace(
    adversarial_eps=0.0
  )
  images, labels = _batch()
  state = step.create_train_state(standard, jax.random.PRNGKey(0), steps_per_epoch=10)
  key = jax.random.PRNGKey(7)
  a, metrics_a = jax.jit(lambda s: step.train_step(s, images, labels, key, config=standard))(state)
  b, metrics_b = jax.jit(lambda s: step.train_step(s, images, labels, key, config=attacked))(state)
  assert float(metrics_a["loss"]) == float(metrics_b["loss"])
  assert _max_abs_diff(a.params, b.params) == 0.0
  assert _max_abs_diff(a.batch_stats, b.batch_stats) == 0.0


def test_eps_warms_up_linearly_over_its_epochs():
  config = _config(adversarial="fgsm", adversarial_eps=0.3, adversarial_warmup=2, epochs=4)
  values = [float(adversarial.eps_at(config, jnp.int32(s), steps_per_epoch=10)) for s in range(25)]
  np.testing.assert_allclose(values[:20], 0.3 * np.arange(1, 21) / 20, rtol=1e-6)
  assert values[19] == pytest.approx(0.3) and values[20:] == [pytest.approx(0.3)] * 5
  flat = _config(adversarial="fgsm", adversarial_eps=0.3)
  assert float(adversarial.eps_at(flat, jnp.int32(0), steps_per_epoch=10)) == pytest.approx(0.3)


def test_robust_validation_accuracy_chooses_the_best_epoch_and_collapses_are_found():
  rows = [
    {"epoch": 1, "val_accuracy": 0.95, "val_robust_accuracy": 0.60},
    {"epoch": 2, "val_accuracy": 0.97, "val_robust_accuracy": 0.70},
    {"epoch": 3, "val_accuracy": 0.99, "val_robust_accuracy": 0.05},
    {"epoch": 4, "val_accuracy": 0.99, "val_robust_accuracy": 0.55},
  ]
  assert history.best_epoch(rows) == 2  # not epoch 3 or 4, the best clean ones
  assert [history.collapsed(rows[: i + 1]) for i in range(4)] == [False, False, True, False]
  assert history.collapse_epochs(rows) == [3]
  assert history.best_epoch([{"epoch": 1, "val_accuracy": 0.9}]) == 1


@pytest.mark.parametrize(
  ("changes", "message"),
  [
    ({"adversarial": "cw"}, "unknown adversarial 'cw'"),
    ({"adversarial": "fgsm", "adversarial_eps": 0.0}, r"adversarial_eps must be in \(0, 1\]"),
    ({"adversarial": "pgd", "adversarial_eps": 1.5}, r"adversarial_eps must be in \(0, 1\]"),
    ({"adversarial": "pgd", "adversarial_steps": 0}, "adversarial_steps must be an integer >= 1"),
    ({"adversarial": "pgd", "adversarial_warmup": 30}, "adversarial_warmup"),
    ({"adversarial": "trades", "trades_beta": -1.0}, "trades_beta"),
    ({"adversarial": "fgsm", "robust_val_size": 6000}, "robust_val_size 6000 is larger"),
  ],
)
def test_bad_adversarial_settings_are_refused_by_name(changes, message):
  with pytest.raises(ConfigError, match=message):
    resolve(Config(model="conv2_dense64", **changes))


def test_a_bad_attack_stops_the_command_before_any_work(mnist_dir, tmp_path):
  out = cli.run(
    "experiments.train",
    *cli.TINY,
    "--adversarial=fgsm",
    "--adversarial_eps=2",
    f"--manual_dir={mnist_dir}",
    f"--workdir={tmp_path / 'run'}",
  )
  assert out.returncode != 0
  assert "adversarial_eps must be in (0, 1]" in out.stderr
  assert not (tmp_path / "run").exists()


def _robust_accuracy(state, images, labels, eps):
  out = dataset_attacks.robust_predictions(
    lambda v, x: state.apply_fn(v, x, train=False),
    {"params": state.params},
    images,
    labels,
    [eps],
    settings=attacks.PGDSettings(steps=20),
  )
  return float(np.mean(out["predictions"][eps] == labels))


def test_fast_adversarial_training_buys_robustness_on_real_mnist(mnist, tmp_path):
  """Same recipe, same data and steps: FGSM training at eps 0.1 keeps more of a PGD-20
  attack at eps 0.1 than standard training, on 500 held-out test images."""
  datasets = tiny_datasets(mnist, n_train=4096, n_val=256, n_test=500)
  base = dict(model="conv2_dense64", epochs=2, batch_size=64, validation_size=256)
  accuracies = {}
  for kind in ("none", "fgsm"):
    config = resolve(Config(**base, adversarial=kind, adversarial_eps=0.1, robust_val_size=128))
    runs.prepare(config, tmp_path / kind, datasets)
    trained = loop.train(config, tmp_path / kind, datasets)
    accuracies[kind] = _robust_accuracy(
      trained.state, datasets.test.images, datasets.test.labels, 0.1
    )
    assert ("val_robust_accuracy" in trained.history[-1]) == (kind == "fgsm")
  assert accuracies["fgsm"] > accuracies["none"] + 0.1, accuracies


class _Stop(Exception):
  pass


def test_a_resumed_adversarial_run_ends_with_the_numbers_of_an_uninterrupted_one(mnist, tmp_path):
  datasets = tiny_datasets(mnist, n_train=1024, n_val=256, n_test=500)
  config = Config(
    model="conv2_dense64",
    epochs=3,
    batch_size=64,
    validation_size=256,
    adversarial="pgd",
    adversarial_eps=0.2,
    adversarial_steps=3,
    adversarial_warmup=2,
    robust_val_size=128,
    robust_val_steps=5,
  )
  whole = runs.train_and_evaluate(config, tmp_path / "whole", datasets=datasets, plots=False)

  def stop_after_first(row):
    if row["epoch"] == 1:
      raise _Stop

  resolved = resolve(config)
  runs.prepare(resolved, tmp_path / "resumed", datasets)
  with pytest.raises(_Stop):
    loop.train(resolved, tmp_path / "resumed", datasets, on_epoch=stop_after_first)
  resumed = runs.train_and_evaluate(config, tmp_path / "resumed", datasets=datasets, plots=False)
  assert cli.timeless(resumed) == cli.timeless(whole)
  rows = [
    cli.timeless(json.loads(line))
    for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
  ]
  assert [r["epoch"] for r in rows] == [1, 2, 3]
  assert all("val_robust_accuracy" in r for r in rows)
  assert whole["collapse_epochs"] == history.collapse_epochs(rows)


def test_attack_settings_without_an_attack_name_the_plain_recipe():
  plain = resolve(Config(model="conv2_dense64"))
  ignored = resolve(Config(model="conv2_dense64", adversarial_eps=0.1, adversarial_warmup=3))
  assert ignored == plain
  assert resolve(Config(model="conv2_dense64", adversarial="fgsm", adversarial_eps=0.1)) != plain


def test_the_trades_objective_is_the_clean_loss_plus_a_positive_kl_term(mnist):
  """Same state, batch and key: TRADES' loss is the standard step's clean cross-entropy plus
  beta times a KL divergence, which the attack makes positive."""
  standard = _config("conv2_dense128_dropout")
  trades = _config("conv2_dense128_dropout", adversarial="trades", adversarial_eps=0.1)
  state = step.create_train_state(standard, jax.random.PRNGKey(0), steps_per_epoch=10)
  images = jnp.asarray(mnist.train.images[:32])
  labels = jnp.asarray(mnist.train.labels[:32])
  key = jax.random.PRNGKey(3)
  train_step = jax.jit(step.train_step, static_argnames="config")
  _, clean = train_step(state, images, labels, key, config=standard)
  new_state, robust = train_step(state, images, labels, key, config=trades)
  assert float(robust["loss"]) > float(clean["loss"]) + 1e-4
  assert np.isfinite(float(robust["loss"]))
  assert _max_abs_diff(new_state.params, state.params) > 0
