"""The L-inf attacks: exact answers on linear classifiers, a trained CNN, the driver, the guards."""

from __future__ import annotations

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from digits_jax.robustness import attacks, dataset_attacks, masking

NUM_CLASSES = 10


def _linear_case(n: int = 600, eps: float = 0.05, seed: int = 0):
  """A 10-class linear classifier on 28x28 inputs in [0.35, 0.65] and its exact robustness.

  With ``eps <= 0.3`` no box bound binds, so an input of predicted class ``y`` can be flipped
  exactly when ``min_j (z_y - z_j) / ||w_y - w_j||_1 <= eps``. Inputs within 1% of that
  threshold are left out, so float rounding cannot decide them.
  """
  rng = np.random.default_rng(seed)
  d = 28 * 28
  w = (rng.normal(size=(d, NUM_CLASSES)) / np.sqrt(d)).astype(np.float32)
  b = (rng.normal(size=NUM_CLASSES) * 0.1).astype(np.float32)
  # Inputs leaning toward a class's weights by a random amount: a mix of robust and not.
  directions = np.sign(w - w.mean(axis=1, keepdims=True))
  lean = rng.uniform(0.0, 1.5, size=(n, 1)) * directions[:, rng.integers(0, NUM_CLASSES, n)].T
  x = (0.5 + 0.15 * np.clip(lean + 0.7 * rng.normal(size=(n, d)), -1, 1)).astype(np.float32)
  logits = x.astype(np.float64) @ w + b
  y = logits.argmax(axis=1)
  l1 = np.abs(w[:, :, None] - w[:, None, :]).astype(np.float64).sum(axis=0)
  ratio = (logits[np.arange(n), y][:, None] - logits) / np.where(l1[y] > 0, l1[y], 1.0)
  ratio[np.arange(n), y] = np.inf
  radius = ratio.min(axis=1)  # the smallest eps that flips each input
  keep = np.abs(radius / eps - 1) > 0.01
  x, y, radius = x[keep][:500], y[keep][:500], radius[keep][:500]
  assert x.min() - eps > 0 and x.max() + eps < 1
  logits_fn = lambda images: images.reshape(images.shape[0], -1) @ w + b
  return logits_fn, x.reshape(-1, 28, 28, 1), y, radius > eps


def test_pgd_reaches_the_exact_robust_accuracy_of_a_linear_classifier():
  eps = 0.05
  logits_fn, x, y, robust = _linear_case(eps=eps)
  exact = robust.mean()
  assert 0.3 < exact < 0.7  # a mix of breakable and unbreakable inputs

  key = jax.random.key(0)
  attack = lambda **kwargs: attacks.pgd(logits_fn, x, y, eps, key, **kwargs)
  untargeted, targeted = jax.jit(
    lambda: (attack(steps=20, restarts=2), attack(steps=10, targeted_classes=True))
  )()
  accuracy = {}
  for name, adversarial in (("untargeted", untargeted), ("targeted", targeted)):
    adversarial = np.asarray(adversarial)
    assert np.abs(adversarial - x).max() <= eps + 1e-6
    correct = np.asarray(logits_fn(adversarial)).argmax(axis=1) == y
    assert correct[robust].all()  # no attack breaks an input that cannot be broken
    accuracy[name] = correct.mean()
  # Untargeted cross-entropy PGD can overestimate (here by several points): its ascent ends
  # at a vertex of high loss that raises several classes at once but flips none.
  assert accuracy["untargeted"] >= exact
  # Per-class targeted runs are exact on a linear classifier.
  assert abs(accuracy["targeted"] - exact) <= 0.01


def test_fgsm_is_the_closed_form_on_a_linear_binary_classifier():
  rng = np.random.default_rng(1)
  w = (rng.normal(size=(28 * 28, 2)) * 0.01).astype(np.float32)  # logits far from saturation
  b = np.zeros(2, np.float32)
  x = rng.uniform(0.0, 1.0, size=(64, 28, 28, 1)).astype(np.float32)
  x[:, :3] = 0.0  # pixels on the box bounds: clipping must keep them in [0, 1]
  x[:, -3:] = 1.0
  y = rng.integers(0, 2, 64)
  logits_fn = lambda images: images.reshape(images.shape[0], -1) @ w + b
  eps = 0.1
  adversarial = np.asarray(jax.jit(attacks.fgsm, static_argnums=0)(logits_fn, x, y, eps))
  # The cross-entropy's input gradient is a positive multiple of w_other - w_label.
  toward = (w[:, 1 - y] - w[:, y]).T.reshape(x.shape)
  np.testing.assert_allclose(adversarial, np.clip(x + eps * np.sign(toward), 0, 1), atol=1e-6)
  assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0
  assert np.abs(adversarial - x).max() <= eps + 1e-6


class _TinyCNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), strides=(2, 2))(x))
    x = nn.relu(nn.Conv(16, (3, 3), strides=(2, 2))(x))
    return nn.Dense(NUM_CLASSES)(x.reshape(x.shape[0], -1))


def _blocky_digits(rng, prototypes, n):
  """Noisy copies of ten blocky 28x28 prototypes: synthetic digits a tiny CNN learns fast."""
  y = rng.integers(0, NUM_CLASSES, n)
  x = np.clip(prototypes[y] + rng.normal(scale=0.4, size=(n, 28, 28, 1)), 0, 1)
  return x.astype(np.float32), y.astype(np.int32)


@pytest.fixture(scope="module")
def trained_cnn():
  """A tiny CNN after 100 Adam steps of 64 synthetic digits, and 200 test digits."""
  rng = np.random.default_rng(0)
  prototypes = np.kron(rng.uniform(size=(NUM_CLASSES, 7, 7, 1)), np.ones((1, 4, 4, 1)))
  model = _TinyCNN()
  params = _random_variables(lambda key: model.init(key, jnp.zeros((1, 28, 28, 1))), rng)
  optimizer = optax.adam(1e-2)

  @jax.jit
  def train_step(params, state, x, y):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()
    updates, state = optimizer.update(jax.grad(loss)(params), state)
    return optax.apply_updates(params, updates), state

  state = optimizer.init(params)
  x, y = _blocky_digits(rng, prototypes, 100 * 64)
  for i in range(100):
    params, state = train_step(params, state, x[i * 64 : (i + 1) * 64], y[i * 64 : (i + 1) * 64])
  test_x, test_y = _blocky_digits(rng, prototypes, 200)
  return model.apply, params, test_x, test_y


def test_pgd_on_a_trained_cnn_is_stronger_than_fgsm_and_passes_the_masking_checks(trained_cnn):
  apply, params, x, y = trained_cnn
  clean = np.mean(np.asarray(apply(params, x)).argmax(axis=1) == y)
  assert clean > 0.9
  eps = (0.05, 0.1, 0.2)
  settings = attacks.PGDSettings(steps=10)
  pgd = dataset_attacks.robust_predictions(apply, params, x, y, (*eps, 1.0), settings=settings)
  fgsm = dataset_attacks.robust_predictions(apply, params, x, y, eps, attack="fgsm")
  pgd_acc = {e: float(np.mean(pgd["predictions"][e] == y)) for e in eps}
  fgsm_acc = {e: float(np.mean(fgsm["predictions"][e] == y)) for e in eps}
  assert all(pgd_acc[e] <= fgsm_acc[e] for e in eps)
  assert pgd_acc[0.2] < fgsm_acc[0.2] - 0.1  # many steps find what one step misses
  assert np.mean(pgd["predictions"][1.0] == y) == 0.0
  for e in eps:
    losses = pgd["losses"][e]
    assert len(losses) == settings.steps and losses[-1] > losses[0]
  assert len(fgsm["losses"][0.1]) == 1
  checks = masking.masking_checks(
    clean,
    fgsm_acc,
    pgd_acc,
    {e: pgd["losses"][e] for e in eps},
    float(np.mean(pgd["predictions"][1.0] == y)),
    num_images=len(y),
  )
  assert len(checks) == 5 and all(c["passed"] for c in checks), checks


def test_fgsm_at_several_radii_from_one_gradient_is_fgsm_at_each(trained_cnn):
  # robust_predictions takes FGSM's input gradient once for all radii (in calls of
  # ATTACK_BATCH images): the same classes as attacks.fgsm at each.
  apply, params, x, y = trained_cnn
  x, y, eps = x[:140], y[:140], (0.05, 0.1, 0.2, 0.3)  # the last call padded
  out = dataset_attacks.robust_predictions(apply, params, x, y, eps, attack="fgsm")
  attack = jax.jit(
    lambda z, labels, e: apply(params, attacks.fgsm(lambda v: apply(params, v), z, labels, e))
  )
  for e in eps:
    logits = np.concatenate(
      [np.asarray(attack(x[b : b + 100], y[b : b + 100], e)) for b in (0, 100)]
    )
    np.testing.assert_array_equal(out["predictions"][e], logits.argmax(axis=1))
    loss = -np.mean(jax.nn.log_softmax(logits)[np.arange(140), y])
    np.testing.assert_allclose(out["losses"][e], [loss], rtol=1e-4, atol=1e-6)
  accuracy = [np.mean(out["predictions"][e] == y) for e in eps]
  assert accuracy[-1] < accuracy[0]  # a real attack: larger radii break more


def test_robust_predictions_compiles_once_and_repeats_with_the_same_seed(trained_cnn, caplog):
  apply, params, x, y = trained_cnn
  settings = attacks.PGDSettings(steps=3, restarts=2)
  run = lambda eps, seed=0: dataset_attacks.robust_predictions(
    apply, params, x[:150], y[:150], eps, settings=settings, seed=seed, batch_size=64
  )
  with jax.log_compiles(True), caplog.at_level(logging.WARNING):
    first = run((0.1, 0.2))  # three batches, the last one padded, two radii
    again = run((0.1, 0.2))
    other = run((0.3,), seed=1)  # a later call, another radius and seed
  messages = [record.getMessage() for record in caplog.records]
  compiled = [m for m in messages if m.startswith("Compiling jit(attack_batch)")]
  assert len(compiled) == 1, compiled
  for e in (0.1, 0.2):
    assert first["predictions"][e].shape == (150,) and first["predictions"][e].dtype == np.int64
    np.testing.assert_array_equal(first["predictions"][e], again["predictions"][e])
    assert len(first["losses"][e]) == 3 and first["losses"][e] == again["losses"][e]
  assert set(other["predictions"]) == {0.3}
  # An unhashable function is compiled for its call only.
  unhashable = type("Unhashable", (), {"__call__": staticmethod(apply), "__hash__": None})()
  out = dataset_attacks.robust_predictions(unhashable, params, x[:10], y[:10], 0.1, attack="fgsm")
  assert out["predictions"][0.1].shape == (10,)


def test_pgd_in_segments_breaks_the_images_the_run_in_one_piece_breaks(trained_cnn):
  # robust_predictions stops attacking an image once it is misclassified, goes on with the
  # survivors, and runs calls of ATTACK_BATCH images, fewer than a block of random starts
  # here: the same images end up broken as when every image takes every step in its block
  # (attacks.pgd's keys), and the loss still rises.
  apply, params, x, y = trained_cnn
  settings = attacks.PGDSettings(steps=25)  # segments of 10, 10 and 5 steps
  x, y, batch = x[:150], y[:150], 128
  assert dataset_attacks.ATTACK_BATCH < batch
  whole = dataset_attacks._batch_attack(apply, settings)
  base_key = jax.random.key(0)
  for eps in (0.1, 0.15):
    out = dataset_attacks.robust_predictions(
      apply, params, x, y, eps, settings=settings, batch_size=batch
    )
    padded = np.concatenate([np.arange(150), np.full(106, 149)])
    in_one_piece = np.concatenate(
      [
        np.asarray(
          whole(
            params,
            x[padded[b : b + batch]],
            y[padded[b : b + batch]],
            np.ones(batch, np.float32),
            np.float32(eps),
            np.int32(dataset_attacks._eps_tag(eps)),
            np.int32(b // batch),
            base_key,
          )[0]
        )
        for b in range(0, 256, batch)
      ]
    )[:150]
    broken = out["predictions"][eps] != y
    assert 0 < broken.sum() < 150
    np.testing.assert_array_equal(broken, in_one_piece != y)
    losses = out["losses"][eps]
    assert len(losses) == 25 and losses[-1] > losses[0]


def test_pgd_keeps_the_best_of_its_restarts_and_stays_in_the_ball(trained_cnn):
  apply, params, x, y = trained_cnn
  logits_fn = lambda images: apply(params, images)
  eps, key = 0.1, jax.random.key(3)
  attack = lambda restarts: attacks.pgd(logits_fn, x, y, eps, key, steps=5, restarts=restarts)
  several, single = map(np.asarray, jax.jit(lambda: (attack(3), attack(1)))())
  assert several.min() >= 0.0 and several.max() <= 1.0
  assert np.abs(several - x).max() <= eps + 1e-6
  # Run r starts from split(key, runs)[r], the same for any number of runs: the first of
  # three restarts is the single run, and the best of three does at least as much damage.
  assert np.array_equal(
    jax.random.key_data(jax.random.split(key, 1)[0]),
    jax.random.key_data(jax.random.split(key, 3)[0]),
  ), "jax.random.split no longer gives prefix-stable keys: compare the runs another way"
  logits_several, logits_single = np.asarray(logits_fn(several)), np.asarray(logits_fn(single))
  broken_several = logits_several.argmax(axis=1) != y
  broken_single = logits_single.argmax(axis=1) != y
  assert broken_several[broken_single].all()
  assert broken_single.sum() > 0
  neither = ~broken_several
  ce = lambda logits: np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, y))
  gain = ce(logits_several)[neither] - ce(logits_single)[neither]
  assert gain.min() >= -1e-5 and gain.max() > 1e-3  # the other restarts won some examples


def test_stratified_subset_is_balanced_fixed_and_sorted():
  labels = np.random.default_rng(0).integers(0, NUM_CLASSES, 5000)
  subset = dataset_attacks.stratified_subset(labels, 1000, seed=0)
  assert subset.shape == (1000,) and np.all(np.diff(subset) > 0)
  np.testing.assert_array_equal(np.bincount(labels[subset]), np.full(NUM_CLASSES, 100))
  np.testing.assert_array_equal(subset, dataset_attacks.stratified_subset(labels, 1000, seed=0))
  assert not np.array_equal(subset, dataset_attacks.stratified_subset(labels, 1000, seed=1))
  counts = np.bincount(labels[dataset_attacks.stratified_subset(labels, 1005)])
  assert counts.min() == 100 and counts.max() == 101 and counts.sum() == 1005
  # A class with too few examples gives all it has; the others make up the rest.
  scarce = np.concatenate([np.zeros(3, int), np.ones(50, int), np.full(50, 2)])
  np.testing.assert_array_equal(
    np.bincount(scarce[dataset_attacks.stratified_subset(scarce, 30)]), [3, 14, 13]
  )
  with pytest.raises(attacks.AttackError, match="at most the 5000"):
    dataset_attacks.stratified_subset(labels, 5001)


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan")])
def test_bad_eps_is_an_attack_error(bad):
  with pytest.raises(attacks.AttackError, match=rf"eps {bad!r} is outside \(0, 1\]"):
    attacks.check_eps([0.1, bad])


def test_bad_settings_and_attack_names_are_attack_errors():
  assert attacks.check_eps([0.1, 1]) == (0.1, 1.0)
  assert attacks.check_eps(0.3) == (0.3,)
  with pytest.raises(attacks.AttackError, match="no eps values"):
    attacks.check_eps([])
  with pytest.raises(attacks.AttackError, match="listed twice"):
    attacks.check_eps([0.1, 0.1])
  with pytest.raises(attacks.AttackError, match="steps must be an integer >= 1, got 0"):
    attacks.PGDSettings(steps=0).check()
  with pytest.raises(attacks.AttackError, match="restarts must be an integer >= 1, got 0"):
    attacks.PGDSettings(restarts=0).check()
  with pytest.raises(attacks.AttackError, match="step_size must be a positive number"):
    attacks.PGDSettings(step_size=-0.01).check()
  with pytest.raises(attacks.AttackError, match="random_start=True"):
    attacks.PGDSettings(restarts=3, random_start=False).check()
  attacks.PGDSettings(steps=1, step_size=0.01, restarts=2).check()
  x, y = np.zeros((2, 28, 28, 1), np.float32), np.zeros(2, np.int32)
  with pytest.raises(attacks.AttackError, match="steps must be an integer >= 1, got 0"):
    attacks.pgd(lambda z: z.reshape(2, -1)[:, :10], x, y, 0.1, jax.random.key(0), steps=0)
  with pytest.raises(attacks.AttackError, match="unknown attack 'cw': valid attacks are fgsm, pgd"):
    dataset_attacks.robust_predictions(lambda p, z: z, None, x, y, [0.1], attack="cw")
  with pytest.raises(attacks.AttackError, match="outside"):
    dataset_attacks.robust_predictions(lambda p, z: z, None, x, y, [0.0])


def _checks(**changes):
  args = dict(
    clean_accuracy=0.99,
    fgsm_acc={0.1: 0.80, 0.2: 0.50},
    pgd_acc={0.1: 0.70, 0.2: 0.20},
    pgd_losses={0.1: [0.5, 0.9, 1.2], 0.2: [1.0, 2.0, 3.0]},
    acc_at_eps1=0.0,
  )
  args.update(changes)
  return {c["check"]: c for c in masking.masking_checks(**args, num_images=1000)}


def test_masking_checks_pass_a_clean_evaluation_and_flag_each_violation():
  clean = _checks()
  assert len(clean) == 5 and all(c["passed"] for c in clean.values())
  # One image of slack for the random starts.
  assert all(c["passed"] for c in _checks(pgd_acc={0.1: 0.801, 0.2: 0.20}).values())

  failed = lambda checks: {name for name, c in checks.items() if not c["passed"]}
  rising = _checks(fgsm_acc={0.1: 0.80, 0.2: 0.80}, pgd_acc={0.1: 0.70, 0.2: 0.75})
  assert failed(rising) == {"PGD robust accuracy never rises with eps"}
  assert failed(_checks(clean_accuracy=0.6)) == {
    "PGD robust accuracy never rises with eps",
    "FGSM robust accuracy never rises with eps",
  }
  weaker = _checks(pgd_acc={0.1: 0.70, 0.2: 0.55})
  assert failed(weaker) == {"PGD at least as strong as FGSM"}
  assert "PGD weaker at eps 0.2" in weaker["PGD at least as strong as FGSM"]["detail"]
  assert failed(_checks(acc_at_eps1=0.02)) == {"eps = 1 leaves 0% accuracy"}
  falling = _checks(pgd_losses={0.1: [0.5, 0.9, 1.2], 0.2: [1.0, 0.8, 0.7]})
  assert failed(falling) == {"attack loss rises over its steps"}
  assert "loss falls at eps 0.2" in falling["attack loss rises over its steps"]["detail"]
  # Checks without their data are left out.
  assert set(_checks(fgsm_acc={}, pgd_losses={}, acc_at_eps1=None)) == {
    "PGD robust accuracy never rises with eps"
  }


def test_input_gradients_of_the_fast_cpu_ops_equal_the_plain_ones():
  """The attacks differentiate a network with respect to its input, through the custom
  gradients of the fast ops (C++ kernels on the CPU); they must equal XLA's own."""
  from digits_jax.models import create_model, init_variables

  fast = create_model("conv2_dense64", fast="on")
  plain = create_model("conv2_dense64", fast="off")
  rng = np.random.default_rng(0)
  variables = _random_variables(lambda key: init_variables(plain, key), rng)
  x = rng.uniform(size=(16, 28, 28, 1)).astype(np.float32)
  x[:4, :6] = 0.0  # MNIST-like empty rows
  y = rng.integers(0, NUM_CLASSES, 16)

  def input_grad(model, train):
    return jax.grad(lambda z: _sum_ce(model.apply(variables, z, train=train), y))

  # Evaluation layers, and training's fused first layer; one compilation for all four.
  models = {"fast": fast, "plain": plain}
  input_grads = jax.jit(
    lambda x: {(m, t): input_grad(models[m], t)(x) for m in models for t in (False, True)}
  )

  grads = input_grads(x)
  for train in (False, True):
    reference = np.asarray(grads["plain", train])
    assert np.abs(reference).max() > 0
    np.testing.assert_allclose(
      grads["fast", train], reference, rtol=1e-4, atol=1e-5 * np.abs(reference).max()
    )


def _random_variables(init, rng):
  """Variables of the shapes ``init(key)`` gives, drawn on the host: nothing to compile."""
  shapes = jax.eval_shape(init, jax.random.key(0))
  draw = lambda s: rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]) if s.ndim > 1 else 10)
  return jax.tree_util.tree_map(lambda s: draw(s).astype(np.float32), shapes)


def _sum_ce(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()


def test_pgd_inside_a_jitted_training_step_with_a_traced_eps():
  """Adversarial training: the parameter gradient of the loss on PGD images, eps traced."""
  from digits_jax.models import create_model, init_variables

  model = create_model("conv2_dense64", fast="on")
  rng = np.random.default_rng(0)
  variables = _random_variables(lambda key: init_variables(model, key), rng)
  x = rng.uniform(size=(8, 28, 28, 1)).astype(np.float32)
  y = rng.integers(0, NUM_CLASSES, 8)

  @jax.jit
  def grads(variables, eps, key):
    fixed = jax.lax.stop_gradient(variables)
    logits_fn = lambda z: model.apply(fixed, z, train=True)
    adversarial = attacks.pgd(logits_fn, x, y, eps, key, steps=2)
    return jax.grad(lambda v: _sum_ce(model.apply(v, adversarial, train=True), y))(variables)

  for eps in (0.05, 0.1):
    tree = grads(variables, eps, jax.random.key(1))
    assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(tree))
  assert grads._cache_size() == 1  # a new eps does not recompile


def test_restarts_attack_the_survivors_and_never_help_the_network(trained_cnn):
  apply, params, x, y = trained_cnn
  run = (
    lambda restarts: dataset_attacks.robust_predictions(  # noqa: E731
      apply, params, x[:200], y[:200], 0.15, settings=attacks.PGDSettings(3, None, restarts)
    )["predictions"][0.15]
  )
  one, three = run(1), run(3)
  # The first restart is the single run; later ones can only break more images.
  assert not np.any((one != y[:200]) & (three == y[:200]))
  assert np.mean(three == y[:200]) <= np.mean(one == y[:200])
