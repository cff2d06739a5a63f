"""Attacks over a whole dataset, on the host: the drivers around the attacks of
:mod:`digits_jax.robustness.attacks`.

* :func:`robust_predictions` -- the classes predicted for the adversarial versions of a
  dataset at several ``eps``: batches of one compiled function for every ``eps``, PGD in
  segments that let go of the images already broken, restarts only on the survivors.
* :func:`stratified_subset` -- a fixed class-balanced subset of a test split to attack.

The robustness evaluation (:mod:`digits_jax.robustness_eval`) and adversarial training's
robust validation (:mod:`digits_jax.training.adversarial`) call them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from digits_jax.robustness.attacks import (
  ATTACKS,
  AttackError,
  PGDSettings,
  _ball,
  _cross_entropy,
  _is_int,
  _keep_better,
  _pgd,
  _random_start,
  _steps,
  check_eps,
  fgsm_step,
  gradient_sign,
)


def _eps_tag(eps: float) -> int:
  """An integer naming ``eps`` for key derivation (micro-units of the pixel range)."""
  return int(round(eps * 1_000_000))


@functools.lru_cache(maxsize=16)
def _batch_attack(
  logits_fn_of_params: Callable[[Any, jax.Array], jax.Array], settings: PGDSettings
) -> Callable[..., tuple[jax.Array, jax.Array]]:
  """The jitted PGD of one batch in one piece (targeted steps), kept for the next call with
  the same function and settings (a new radius, seed or dataset then compiles nothing)."""

  def attack_batch(params, x, y, valid, eps, eps_tag, index, base_key):
    fn = lambda z: logits_fn_of_params(params, z)
    key = jax.random.fold_in(jax.random.fold_in(base_key, eps_tag), index)
    adversarial, losses = _pgd(
      fn,
      x,
      y,
      eps,
      key,
      steps=settings.steps,
      step_size=settings.step_size,
      random_start=settings.random_start,
      restarts=settings.restarts,
      targeted_classes=settings.targeted_classes,
    )
    return jnp.argmax(fn(adversarial), axis=-1), jnp.sum(losses * valid, axis=1)

  return jax.jit(attack_batch)


@functools.lru_cache(maxsize=16)
def _batch_fgsm(
  logits_fn_of_params: Callable[[Any, jax.Array], jax.Array],
) -> Callable[..., tuple[jax.Array, jax.Array]]:
  """The jitted FGSM of one batch at several radii ``eps`` ``(E,)``: the input gradient does
  not depend on the radius, so it is taken once and the adversarial images of every radius
  step along its sign (:func:`fgsm_step` at each ``eps``, one gradient instead of ``E``).
  Returns the predicted classes ``(E, B)`` and the summed losses ``(E,)`` over ``valid``."""

  def attack_batch(params, x, y, valid, eps):
    fn = lambda z: logits_fn_of_params(params, z)
    direction = gradient_sign(fn, x, y)
    classes, losses = [], []
    for e in range(eps.shape[0]):
      logits = fn(fgsm_step(x, direction, eps[e]))
      classes.append(jnp.argmax(logits, axis=-1))
      losses.append(jnp.sum(_cross_entropy(logits, y) * valid))
    return jnp.stack(classes), jnp.stack(losses)

  return jax.jit(attack_batch)


def cached(factory, *args):
  """``factory(*args)`` from its ``functools.lru_cache``, or made for this call only when an
  argument cannot be hashed (a closure's captured list, a Flax module with a list field)."""
  try:
    return factory(*args)
  except TypeError:
    return factory.__wrapped__(*args)


# Untargeted PGD in robust_predictions runs in segments of this many steps; after each, the
# images already misclassified leave the attack (their iterates cannot unbreak them: the attack
# keeps a misclassifying iterate), and the survivors go on. Each image's path is its own (the
# loss is summed over the batch, batch norm runs in inference mode), so the survivors take the
# steps they would have taken together.
SEGMENT_STEPS = 10
# Images per compiled attack call (PGD's segments and FGSM). On the CPU an input gradient
# costs less per image in small calls, whose activations stay in the cache: at 50 images
# against 100, 1.1x (conv2_dense64) to 1.9x (resnet8, madry_mnist) more images a second,
# only speedrun_small (the smallest activations) losing 13% (2026-12-07, docs/robustness.md);
# 500 images ran at half the speed of 100. One shape compiles once. Random starts keep their
# keys per ``batch_size`` images, so the numbers do not depend on it.
ATTACK_BATCH = 50


@functools.lru_cache(maxsize=16)
def _batch_start(settings: PGDSettings) -> Callable[..., jax.Array]:
  """The jitted random start of one key block of untargeted PGD: the start that ``attacks.pgd``
  in one piece takes for batch ``index`` (its first run)."""

  def start(x0, eps, eps_tag, index, base_key):
    eps, _, lower, upper = _ball(x0, eps, settings.steps, settings.step_size)
    key = jax.random.fold_in(jax.random.fold_in(base_key, eps_tag), index)
    return _random_start(jax.random.split(key, 1)[0], x0, eps, lower, upper)

  return jax.jit(start)


@functools.lru_cache(maxsize=16)
def _batch_segment(
  logits_fn_of_params: Callable[[Any, jax.Array], jax.Array], settings: PGDSettings, length: int
) -> Callable[..., tuple[jax.Array, ...]]:
  """The jitted segment of ``length`` steps of one untargeted PGD run on one batch, from the
  iterate ``x``, with the last iterate judged too when ``finish``. Returns the iterate, the
  best ``(x, broken, loss)``, the losses before each step ``(length, B)``, the loss at the
  last iterate (``finish``) and the classes predicted for the best images."""

  def attack_batch(params, x0, x, best, y, eps, finish):
    fn = lambda z: logits_fn_of_params(params, z)
    eps, step, lower, upper = _ball(x0, eps, settings.steps, settings.step_size)

    def objective(z):
      logits = fn(z)
      return jnp.sum(_cross_entropy(logits, y)), logits

    (x, best), losses = _steps(
      jax.grad(objective, has_aux=True), x, best, y, lower, upper, step, length
    )

    def judge_last(best):
      logits = fn(x)
      return _keep_better(best, x, logits, y), _cross_entropy(logits, y)

    best, last_loss = jax.lax.cond(
      finish, judge_last, lambda best: (best, jnp.zeros(y.shape, jnp.float32)), best
    )
    return x, best, losses, last_loss, jnp.argmax(fn(best[0]), axis=-1)

  return jax.jit(attack_batch)


def _padded(rows: np.ndarray, size: int) -> np.ndarray:
  """``rows`` padded to ``size`` with copies of its last (the copies' results are dropped)."""
  return np.concatenate([rows, np.repeat(rows[-1:], size - rows.size)])


def _segmented_pgd(
  logits_fn_of_params, params, images, labels, eps, settings, base_key, batch
) -> tuple[np.ndarray, list[float]]:
  """One untargeted PGD run (:func:`robust_predictions`'s) in segments of
  :data:`SEGMENT_STEPS` steps, each after the first on the images still correctly
  classified, in calls of :data:`ATTACK_BATCH` images; the random starts are those of
  ``attacks.pgd`` in one piece on batches of ``batch``. Returns the predicted classes and the
  mean loss after each step, an image's loss held at its last value once it has left the
  attack."""
  n = len(images)
  length = min(settings.steps, SEGMENT_STEPS)
  lengths = [length] * (settings.steps // length) + [settings.steps % length] * bool(
    settings.steps % length
  )
  tag, eps_array = np.int32(_eps_tag(eps)), np.float32(eps)
  x, best_x = images.copy(), images.copy()
  if settings.random_start:
    begin = _batch_start(settings)
    for b in range(0, n, batch):
      rows = np.arange(b, min(b + batch, n))
      started = begin(images[_padded(rows, batch)], eps_array, tag, np.int32(b // batch), base_key)
      x[rows] = np.asarray(started)[: rows.size]
  broken = np.zeros(n, bool)
  best_loss = np.full(n, -np.inf, np.float32)
  before = np.zeros((settings.steps, n), np.float32)
  last_loss = np.zeros(n, np.float32)
  predicted = np.zeros(n, np.int64)
  alive, done = np.arange(n), 0
  size = min(batch, ATTACK_BATCH)
  for k, steps in enumerate(lengths):
    finish = k == len(lengths) - 1
    run = cached(_batch_segment, logits_fn_of_params, settings, steps)
    calls = []
    for b in range(0, alive.size, size):
      rows = alive[b : b + size]
      padded = _padded(rows, size)
      calls.append(
        (
          rows,
          run(
            params,
            images[padded],
            x[padded],
            (best_x[padded], broken[padded], best_loss[padded]),
            labels[padded],
            eps_array,
            finish,
          ),
        )
      )
    for rows, out in calls:
      new_x, (new_best_x, new_broken, new_loss), losses, last, classes = jax.device_get(out)
      m = rows.size
      x[rows], best_x[rows] = new_x[:m], new_best_x[:m]
      broken[rows], best_loss[rows] = new_broken[:m], new_loss[:m]
      before[done : done + steps, rows] = losses[:, :m]
      predicted[rows] = classes[:m]
      if finish:
        last_loss[rows] = last[:m]
    done += steps
    if not finish:
      left = alive[broken[alive]]
      before[done:, left] = before[done - 1, left]
      last_loss[left] = before[done - 1, left]
      alive = alive[~broken[alive]]
      if not alive.size:
        break
  # before[t] is the loss before step t; after each step, it is before[t + 1] (last: last_loss).
  after = np.concatenate([before[1:], last_loss[None]], axis=0)
  return predicted, [float(v) for v in after.astype(np.float64).mean(axis=1)]


def robust_predictions(
  logits_fn_of_params: Callable[[Any, jax.Array], jax.Array],
  params: Any,
  images: np.ndarray,
  labels: np.ndarray,
  eps_values: float | Iterable[float],
  *,
  attack: str = "pgd",
  settings: PGDSettings = PGDSettings(),
  seed: int = 0,
  batch_size: int = 500,
) -> dict[str, dict[float, Any]]:
  """The predicted classes of adversarial versions of a dataset, for several radii.

  One function, jit-compiled once, attacks every batch at every radius (``eps`` and the
  keys are traced; the last batch is padded with copies of the last image, whose results
  are dropped); FGSM takes one input gradient per image for all the radii together. The
  compiled function is kept for later calls with the same ``logits_fn_of_params`` (the same
  object), attack and settings, so calling once per radius compiles once too (once per batch
  shape). The key of batch ``b`` at radius ``eps`` is
  ``fold_in(fold_in(key(seed), round(eps * 1e6)), b)``, split once per run inside
  ``attacks.pgd``, so the same seed, radius and batch size give the same numbers.

  Args:
    logits_fn_of_params: ``(params, images) -> logits``, pure (for a Flax model, e.g.
      ``lambda v, x: model.apply(v, x, train=False)``).
    params: its first argument (a model's variables).
    images: ``(N, H, W, C)`` images in ``[0, 1]``.
    labels: ``(N,)`` true classes.
    eps_values: the radii, each in ``(0, 1]``.
    attack: one of :data:`ATTACKS`.
    settings: ``attacks.pgd``'s settings (unused by FGSM).
    seed: seed of the random starts.
    batch_size: images per call.

  Returns:
    ``{"predictions": {eps: (N,) int64 classes predicted for the adversarial images},
    "losses": {eps: [mean cross-entropy over the N images after each step]}}``: PGD's
    ``steps`` losses of its first run, FGSM's single one.

  Raises:
    AttackError: an unknown attack, bad radii or settings, mismatched or empty arrays, or a
      batch size below 1.
  """
  if attack not in ATTACKS:
    raise AttackError(f"unknown attack {attack!r}: valid attacks are {', '.join(ATTACKS)}")
  eps_values = check_eps(eps_values)
  settings.check()
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels).astype(np.int32)
  n = len(images)
  if n == 0 or labels.shape != (n,):
    raise AttackError(
      f"got {n} images and labels of shape {labels.shape}: give one label per image, "
      "at least one image"
    )
  if not _is_int(batch_size) or batch_size < 1:
    raise AttackError(f"batch_size must be an integer >= 1, got {batch_size!r}")
  if attack == "pgd" and settings.restarts > 1 and not settings.targeted_classes:
    return _restarts_on_survivors(
      logits_fn_of_params, params, images, labels, eps_values, settings, seed, batch_size
    )
  batch = min(batch_size, n)
  if attack == "pgd" and not settings.targeted_classes:
    result: dict[str, dict[float, Any]] = {"predictions": {}, "losses": {}}
    for eps in eps_values:
      predicted, losses = _segmented_pgd(
        logits_fn_of_params, params, images, labels, eps, settings, jax.random.key(seed), batch
      )
      result["predictions"][eps], result["losses"][eps] = predicted, losses
    return result
  if attack == "fgsm":
    return _fgsm_predictions(logits_fn_of_params, params, images, labels, eps_values, batch)
  batches = -(-n // batch)
  images, labels, mask = _padded_batches(images, labels, batch)
  run = cached(_batch_attack, logits_fn_of_params, settings)
  base_key = jax.random.key(seed)
  outputs: dict[float, list[tuple[jax.Array, jax.Array]]] = {}
  for eps in eps_values:
    eps_array = np.float32(eps)
    tag = np.int32(_eps_tag(eps))
    outputs[eps] = [
      run(
        params,
        images[b * batch : (b + 1) * batch],
        labels[b * batch : (b + 1) * batch],
        mask[b * batch : (b + 1) * batch],
        eps_array,
        tag,
        np.int32(b),
        base_key,
      )
      for b in range(batches)
    ]
  result: dict[str, dict[float, Any]] = {"predictions": {}, "losses": {}}
  for eps, parts in outputs.items():
    predicted = np.concatenate([np.asarray(p) for p, _ in parts])[:n]
    loss_sums = np.sum([np.asarray(s, np.float64) for _, s in parts], axis=0)
    result["predictions"][eps] = predicted.astype(np.int64)
    result["losses"][eps] = [float(v) for v in loss_sums / n]
  return result


def _padded_batches(
  images: np.ndarray, labels: np.ndarray, batch: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``images`` and ``labels`` padded to whole batches with copies of the last, and the mask
  of the real ones (the copies' results are dropped)."""
  n = len(images)
  rows = _padded(np.arange(n), n + (-n) % batch)
  return images[rows], labels[rows], (np.arange(rows.size) < n).astype(np.float32)


def _fgsm_predictions(
  logits_fn_of_params, params, images, labels, eps_values, batch
) -> dict[str, dict[float, Any]]:
  """:func:`robust_predictions` of FGSM: every radius from one input gradient per image, in
  calls of at most :data:`ATTACK_BATCH` images (no random start: each image's result is its
  own at any batch size)."""
  n = len(images)
  batch = min(batch, ATTACK_BATCH)
  images, labels, mask = _padded_batches(images, labels, batch)
  run = cached(_batch_fgsm, logits_fn_of_params)
  eps_array = np.asarray(eps_values, np.float32)
  parts = [
    run(params, images[b : b + batch], labels[b : b + batch], mask[b : b + batch], eps_array)
    for b in range(0, len(images), batch)
  ]
  classes = np.concatenate([np.asarray(c) for c, _ in parts], axis=1)[:, :n].astype(np.int64)
  loss_sums = np.sum([np.asarray(s, np.float64) for _, s in parts], axis=0)
  return {
    "predictions": {eps: classes[i] for i, eps in enumerate(eps_values)},
    "losses": {eps: [float(loss_sums[i] / n)] for i, eps in enumerate(eps_values)},
  }


def _restart_seed(seed: int, restart: int) -> int:
  """The seed of untargeted restart ``restart`` (0: ``seed`` itself)."""
  return (seed + 104_729 * restart) % 2**31


def _restarts_on_survivors(
  logits_fn_of_params, params, images, labels, eps_values, settings, seed, batch_size
) -> dict[str, dict[float, Any]]:
  """:func:`robust_predictions` of untargeted PGD with several restarts, each restart after
  the first attacking only the images every earlier one left correctly classified.

  An image counts as broken when any restart breaks it, as when the restarts run together
  (``attacks.pgd`` keeps a misclassifying iterate where there is one), but an image already
  broken costs no more restarts: against a network without robustness, the restarts at
  large radii cost almost nothing. Restart ``r`` uses seed :func:`_restart_seed`; the
  survivors are padded to the first restart's batch shape, so nothing compiles again.
  """
  single = dataclasses.replace(settings, restarts=1)
  result = robust_predictions(
    logits_fn_of_params,
    params,
    images,
    labels,
    eps_values,
    settings=single,
    seed=seed,
    batch_size=batch_size,
  )
  batch = min(batch_size, len(labels))
  for eps in eps_values:
    predicted = result["predictions"][eps]
    for restart in range(1, settings.restarts):
      alive = np.flatnonzero(predicted == labels)
      if not alive.size:
        break
      padded = _padded(alive, alive.size + (-alive.size) % batch)
      again = robust_predictions(
        logits_fn_of_params,
        params,
        images[padded],
        labels[padded],
        [eps],
        settings=single,
        seed=_restart_seed(seed, restart),
        batch_size=batch,
      )["predictions"][eps][: alive.size]
      broken = again != labels[alive]
      predicted[alive[broken]] = again[broken]
  return result


def stratified_subset(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
  """The indices of a fixed class-stratified subset of ``size`` examples.

  Each class present gets ``size // K`` examples, the remainder going one each to the
  classes of lowest label; a class with too few examples gives all it has and the others
  share its shortfall the same way. Within a class the examples are a seeded random draw.

  Args:
    labels: ``(N,)`` classes.
    size: the subset's size, at most ``N``.
    seed: seed of the draw within each class.

  Returns:
    ``(size,)`` sorted ``int64`` indices into ``labels``.

  Raises:
    AttackError: ``size`` below 0 or above ``N``.
  """
  labels = np.asarray(labels).ravel()
  if not _is_int(size) or size < 0 or size > labels.size:
    raise AttackError(
      f"subset size {size!r} is not in [0, {labels.size}]: ask for at most the "
      f"{labels.size} examples there are"
    )
  classes = np.unique(labels)
  members = [np.flatnonzero(labels == c) for c in classes]
  capacity = np.array([len(m) for m in members])
  quota = np.zeros(len(classes), np.int64)
  remaining = size
  while remaining > 0:
    open_classes = np.flatnonzero(quota < capacity)
    share, extra = divmod(remaining, len(open_classes))
    for rank, c in enumerate(open_classes):
      give = min(share + (rank < extra), capacity[c] - quota[c])
      quota[c] += give
      remaining -= give
  rng = np.random.default_rng(seed)
  chosen = [rng.permutation(m)[:q] for m, q in zip(members, quota)]
  return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.zeros(0, np.int64)
