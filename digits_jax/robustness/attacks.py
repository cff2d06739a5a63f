"""L-inf adversarial attacks on images in [0, 1] (the guards against gradient masking are
:mod:`digits_jax.robustness.masking`).

* :func:`fgsm` -- the fast gradient sign method (Goodfellow et al., 2015): one step of size
  ``eps`` along the sign of the cross-entropy's input gradient.
* :func:`pgd` -- projected gradient descent (Madry et al., 2018): ``steps`` signed-gradient
  steps on the cross-entropy, each projected back onto the L-inf ball of radius ``eps``
  around the image intersected with ``[0, 1]``, from random starts in the ball; per example
  it keeps the most damaging iterate of every restart (a misclassifying one if any, else the
  one of highest loss). With ``targeted_classes`` it adds one run per class that raises that
  class's logit over the true one (the multi-targeted attack of Gowal et al., 2019).
* :func:`robust_predictions` -- the host-level driver: a dataset in batches, several
  ``eps``, one compiled function for all of them.
* :func:`stratified_subset` -- a fixed class-balanced subset of a test split to attack.

Every attack is a pure JAX function of ``logits_fn`` (images ``(B, H, W, C)`` in ``[0, 1]`` to
logits ``(B, K)``), jittable with ``eps`` and ``step_size`` traced, so one compiled function
serves every ``eps`` (an ``eps`` warm-up schedule in adversarial training does not
recompile). The adversarial images they return are constants of any outer gradient
(``stop_gradient``). Inside a training step, close ``logits_fn`` over
``jax.lax.stop_gradient(params)``: the attack needs input gradients only, and the CPU ops'
custom gradients have no second derivative.

The module depends on jax, numpy and optax only, so training steps can use it as it is.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

ATTACKS = ("fgsm", "pgd")

LogitsFn = Callable[[jax.Array], jax.Array]


class AttackError(ValueError):
  """Attack settings that cannot run; the message names the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class PGDSettings:
  """Settings of :func:`pgd`.

  Attributes:
    steps: signed-gradient steps per run.
    step_size: the L-inf size of a step. ``None``: ``2.5 * eps / steps`` (Madry et al.'s
      rule). A given size below ``eps / steps`` is raised to ``eps / steps``, so the steps
      can always reach the edge of the ball.
    restarts: untargeted runs, each from its own random start; per example the most damaging
      result is kept. :func:`robust_predictions` runs restarts after the first on the
      images still correctly classified only.
    random_start: start each run from a uniform random point of the ball (else from the
      image itself).
    targeted_classes: also run one targeted attack per class (see :func:`pgd`).
  """

  steps: int = 40
  step_size: float | None = None
  restarts: int = 1
  random_start: bool = True
  targeted_classes: bool = False

  def check(self) -> None:
    """Raises :class:`AttackError` for settings :func:`pgd` cannot run."""
    _check_pgd(self.steps, self.step_size, self.restarts, self.random_start)


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_pgd(steps: Any, step_size: Any, restarts: Any, random_start: bool) -> None:
  if not _is_int(steps) or steps < 1:
    raise AttackError(f"PGD steps must be an integer >= 1, got {steps!r}: set steps to 1 or more")
  if not _is_int(restarts) or restarts < 1:
    raise AttackError(
      f"PGD restarts must be an integer >= 1, got {restarts!r}: set restarts to 1 or more"
    )
  if isinstance(step_size, numbers.Real) and not isinstance(step_size, bool):
    if not (math.isfinite(step_size) and step_size > 0):
      raise AttackError(
        f"PGD step_size must be a positive number, got {step_size!r}: give a size > 0, "
        "or None for 2.5 * eps / steps"
      )
  elif step_size is not None and not isinstance(step_size, jax.Array):
    raise AttackError(
      f"PGD step_size must be a number or None, got {step_size!r}: give a size > 0, "
      "or None for 2.5 * eps / steps"
    )
  if restarts > 1 and not random_start:
    raise AttackError(
      f"{restarts} PGD restarts without a random start repeat the same run: set "
      "random_start=True, or restarts=1"
    )


def check_eps(eps_values: float | Iterable[float]) -> tuple[float, ...]:
  """The attack radii as floats, each checked to lie in ``(0, 1]``.

  Args:
    eps_values: one radius or several, in the units of the pixels (images in ``[0, 1]``).

  Returns:
    The radii in the given order.

  Raises:
    AttackError: no radius, a radius that is not a number, is outside ``(0, 1]`` or is
      listed twice; the message names it.
  """
  values = [eps_values] if isinstance(eps_values, numbers.Number) else list(eps_values)
  if not values:
    raise AttackError("no eps values: give at least one attack radius in (0, 1]")
  checked: list[float] = []
  for value in values:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      raise AttackError(f"eps {value!r} is not a number: give attack radii in (0, 1]")
    eps = float(value)
    if not (math.isfinite(eps) and 0.0 < eps <= 1.0):
      raise AttackError(
        f"eps {value!r} is outside (0, 1]: the images are in [0, 1], so give radii in (0, 1] "
        "(and measure the clean accuracy for eps 0 without an attack)"
      )
    if eps in checked:
      raise AttackError(f"eps {value!r} is listed twice: give each attack radius once")
    checked.append(eps)
  return tuple(checked)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy, in float32, of integer labels ``(B,)`` or of target
  distributions ``(B, K)`` (TRADES attacks the clean prediction: against it the
  cross-entropy is the KL divergence plus a constant)."""
  logits = logits.astype(jnp.float32)
  if labels.ndim == logits.ndim:
    return optax.softmax_cross_entropy(logits, labels.astype(jnp.float32))
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _classes(labels: jax.Array) -> jax.Array:
  """The class of each example: the label, or the most probable class of a distribution."""
  return jnp.argmax(labels, axis=-1) if labels.ndim > 1 else labels


def fgsm(logits_fn: LogitsFn, images: jax.Array, labels: jax.Array, eps: float | jax.Array):
  """The fast gradient sign method: ``clip(x + eps * sign(grad_x CE), 0, 1)``.

  Args:
    logits_fn: images to logits, a pure JAX function.
    images: ``(B, ...)`` images in ``[0, 1]``.
    labels: ``(B,)`` true classes.
    eps: the L-inf radius (may be traced).

  Returns:
    The adversarial images, the dtype of ``images``, as constants of outer gradients.
  """
  x = jax.lax.stop_gradient(jnp.asarray(images))
  labels = jnp.asarray(labels)
  eps = jnp.asarray(eps, x.dtype)
  grad = jax.grad(lambda z: _cross_entropy(logits_fn(z), labels).sum())(x)
  return jax.lax.stop_gradient(jnp.clip(x + eps * jnp.sign(grad), 0.0, 1.0))


def _keep_better(best, x, logits, labels):
  """Per example, ``x`` where it beats ``best``: it misclassifies and the best does not, or
  both do (or both do not) and its cross-entropy is higher."""
  best_x, best_broken, best_loss = best
  loss = _cross_entropy(logits, labels)
  broken = jnp.argmax(logits, axis=-1) != _classes(labels)
  better = (broken & ~best_broken) | ((broken == best_broken) & (loss > best_loss))
  rows = better.reshape(better.shape + (1,) * (x.ndim - 1))
  return jnp.where(rows, x, best_x), best_broken | broken, jnp.where(better, loss, best_loss)


def _ball(x0: jax.Array, eps, steps: int, step_size) -> tuple[jax.Array, ...]:
  """``eps`` and the step size in the images' dtype, and the box ``[x0 - eps, x0 + eps]``
  within ``[0, 1]`` (see :class:`PGDSettings` for the step size)."""
  eps = jnp.asarray(eps, jnp.float32)
  if step_size is None:
    step = 2.5 * eps / steps
  else:
    step = jnp.maximum(jnp.asarray(step_size, jnp.float32), eps / steps)
  eps, step = eps.astype(x0.dtype), step.astype(x0.dtype)
  return eps, step, jnp.clip(x0 - eps, 0.0, 1.0), jnp.clip(x0 + eps, 0.0, 1.0)


def _random_start(key, x0, eps, lower, upper) -> jax.Array:
  noise = jax.random.uniform(key, x0.shape, x0.dtype, -1.0, 1.0) * eps
  return jnp.clip(x0 + noise, lower, upper)


def _steps(grad_fn, x, best, labels, lower, upper, step, length: int):
  """``length`` PGD steps from ``x``, each iterate a candidate for ``best``
  (:func:`_keep_better`); returns ``((x, best), losses)``, ``losses[t]`` the per-example
  cross-entropy before step ``t``. ``grad_fn(x) -> (gradient, logits)``."""

  def body(carry, _):
    x, best = carry
    grad, logits = grad_fn(x)
    best = _keep_better(best, x, logits, labels)
    loss = _cross_entropy(logits, labels)
    x = jnp.clip(x + step * jnp.sign(grad), lower, upper)
    return (x, best), loss

  return jax.lax.scan(body, (x, best), None, length=length)


def _pgd(
  logits_fn: LogitsFn,
  images: jax.Array,
  labels: jax.Array,
  eps: float | jax.Array,
  key: jax.Array,
  *,
  steps: int,
  step_size: float | jax.Array | None,
  random_start: bool,
  restarts: int,
  targeted_classes: bool,
  keep_best: bool = True,
) -> tuple[jax.Array, jax.Array]:
  """:func:`pgd`'s adversarial images and the per-example losses ``(steps, B)`` of its first
  run after each step (without ``keep_best``: before each step)."""
  _check_pgd(steps, step_size, restarts, random_start)
  x0 = jax.lax.stop_gradient(jnp.asarray(images))
  labels = jnp.asarray(labels)
  eps, step, lower, upper = _ball(x0, eps, steps, step_size)

  # Runs: the untargeted restarts (target -1), then one run per target class.
  targets = [-1] * restarts
  if targeted_classes and labels.ndim > 1:
    raise AttackError("targeted PGD runs need integer labels, not target distributions")
  if targeted_classes:
    targets += list(range(jax.eval_shape(logits_fn, x0).shape[-1]))
  targets = jnp.asarray(targets, jnp.int32)
  keys = jax.random.split(key, len(targets))

  def objective(x, target):
    logits = logits_fn(x)
    ce = _cross_entropy(logits, labels)
    if not targeted_classes:
      return jnp.sum(ce), logits
    num_classes = logits.shape[-1]
    toward = jax.nn.one_hot(target, num_classes) - jax.nn.one_hot(labels, num_classes)
    margin = jnp.sum(toward * logits.astype(jnp.float32), axis=-1)
    return jnp.sum(jnp.where(target < 0, ce, margin)), logits

  grad_fn = jax.grad(objective, has_aux=True)

  if not keep_best:
    if len(targets) != 1:
      raise AttackError("an attack without keep_best makes one untargeted run: set restarts=1")
    x = _random_start(keys[0], x0, eps, lower, upper) if random_start else x0

    def last_body(x, _):
      grad, logits = grad_fn(x, targets[0])
      return jnp.clip(x + step * jnp.sign(grad), lower, upper), _cross_entropy(logits, labels)

    x, losses = jax.lax.scan(last_body, x, None, length=steps)
    return jax.lax.stop_gradient(x), losses

  def run(best, run_spec):
    run_key, target = run_spec
    x = _random_start(run_key, x0, eps, lower, upper) if random_start else x0
    (x, best), losses = _steps(
      lambda z: grad_fn(z, target), x, best, labels, lower, upper, step, steps
    )
    logits = logits_fn(x)
    best = _keep_better(best, x, logits, labels)
    # losses[t] is the loss before step t; shift to the loss after each step.
    losses = jnp.concatenate([losses[1:], _cross_entropy(logits, labels)[None]], axis=0)
    return best, losses

  batch = x0.shape[0]
  best = (x0, jnp.zeros((batch,), bool), jnp.full((batch,), -jnp.inf, jnp.float32))
  (best_x, _, _), losses = jax.lax.scan(run, best, (keys, targets))
  return jax.lax.stop_gradient(best_x), losses[0]


def pgd(
  logits_fn: LogitsFn,
  images: jax.Array,
  labels: jax.Array,
  eps: float | jax.Array,
  key: jax.Array,
  *,
  steps: int = 40,
  step_size: float | jax.Array | None = None,
  random_start: bool = True,
  restarts: int = 1,
  return_losses: bool = False,
  targeted_classes: bool = False,
  keep_best: bool = True,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """L-inf projected gradient descent on the cross-entropy (Madry et al., 2018).

  Each run starts from a uniform random point of the ball (or the image itself) and takes
  ``steps`` steps ``x <- proj(x + step_size * sign(grad))`` onto the box
  ``[x0 - eps, x0 + eps] ∩ [0, 1]``. The loss is summed over the batch, so each example's
  gradient is its own. Untargeted runs maximise the cross-entropy; with
  ``targeted_classes`` one more run per class ``t`` maximises the logit margin
  ``z_t - z_y`` (no change for examples of class ``t``). Every iterate of every run is a
  candidate, and per example the attack returns the first-best one: one that misclassifies
  if any does, else the one of highest cross-entropy.

  Args:
    logits_fn: images to logits, a pure JAX function.
    images: ``(B, ...)`` images in ``[0, 1]``.
    labels: ``(B,)`` true classes, or ``(B, K)`` target distributions (the attack then
      raises the cross-entropy against them; a run "misclassifies" where its most probable
      class differs from theirs).
    eps: the L-inf radius (may be traced).
    key: PRNG key of the random starts; run ``r`` uses ``jax.random.split(key, runs)[r]``.
    steps: steps per run (static).
    step_size: see :class:`PGDSettings` (may be traced).
    random_start: start from a random point of the ball.
    restarts: untargeted runs (static).
    return_losses: also return the batch's mean cross-entropy after each step of the first
      run, ``(steps,)``.
    targeted_classes: add one margin-maximising run per class.
    keep_best: return the first-best iterate (evaluation). ``False`` returns the last
      iterate of a single run, as adversarial training does (Madry et al.; Wong et al.),
      which saves the forward pass of every candidate; ``return_losses`` then gives the
      losses before each step.

  Returns:
    The adversarial images (constants of outer gradients), and with ``return_losses`` the
    ``(steps,)`` losses.

  Raises:
    AttackError: ``steps`` or ``restarts`` below 1, a non-positive ``step_size``, or
      several restarts without a random start.
  """
  adversarial, losses = _pgd(
    logits_fn,
    images,
    labels,
    eps,
    key,
    steps=steps,
    step_size=step_size,
    random_start=random_start,
    restarts=restarts,
    targeted_classes=targeted_classes,
    keep_best=keep_best,
  )
  if return_losses:
    return adversarial, losses.mean(axis=1)
  return adversarial


def _eps_tag(eps: float) -> int:
  """An integer naming ``eps`` for key derivation (micro-units of the pixel range)."""
  return int(round(eps * 1_000_000))


@functools.lru_cache(maxsize=16)
def _batch_attack(
  logits_fn_of_params: Callable[[Any, jax.Array], jax.Array], attack: str, settings: PGDSettings
) -> Callable[..., tuple[jax.Array, jax.Array]]:
  """The jitted attack of one batch, kept for the next call with the same function and
  settings (a new radius, seed or dataset then compiles nothing)."""

  def attack_batch(params, x, y, valid, eps, eps_tag, index, base_key):
    fn = lambda z: logits_fn_of_params(params, z)
    key = jax.random.fold_in(jax.random.fold_in(base_key, eps_tag), index)
    if attack == "fgsm":
      adversarial = fgsm(fn, x, y, eps)
      logits = fn(adversarial)
      losses = _cross_entropy(logits, y)[None]
    else:
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
      logits = fn(adversarial)
    return jnp.argmax(logits, axis=-1), jnp.sum(losses * valid, axis=1)

  return jax.jit(attack_batch)


def _compiled(factory, logits_fn_of_params, *args):
  """``factory(logits_fn_of_params, *args)`` from its cache, or compiled for this call only
  when the function cannot be hashed."""
  try:
    return factory(logits_fn_of_params, *args)
  except TypeError:
    return factory.__wrapped__(logits_fn_of_params, *args)


# Untargeted PGD in robust_predictions runs in segments of this many steps; after each, the
# images already misclassified leave the attack (their iterates cannot unbreak them: the attack
# keeps a misclassifying iterate), and the survivors go on. Each image's path is its own (the
# loss is summed over the batch, batch norm runs in inference mode), so the survivors take the
# steps they would have taken together.
SEGMENT_STEPS = 10
# Images per compiled attack call (PGD's segments and FGSM). On the CPU an input gradient
# costs about half as much per image at 100 images as at 250 or 500 (conv2_dense64: 9,800
# against 4,400 images a second, the allocator tuned as the entry points tune it; the larger
# batches' activations leave the cache), and one shape compiles once. Random starts keep
# their keys per ``batch_size`` images, so the numbers do not depend on it.
ATTACK_BATCH = 100


@functools.lru_cache(maxsize=16)
def _batch_start(settings: PGDSettings) -> Callable[..., jax.Array]:
  """The jitted random start of one key block of untargeted PGD: the start that :func:`pgd`
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
  :func:`pgd` in one piece on batches of ``batch``. Returns the predicted classes and the
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
    run = _compiled(_batch_segment, logits_fn_of_params, settings, steps)
    for b in range(0, alive.size, size):
      rows = alive[b : b + size]
      padded = _padded(rows, size)
      out = run(
        params,
        images[padded],
        x[padded],
        (best_x[padded], broken[padded], best_loss[padded]),
        labels[padded],
        eps_array,
        finish,
      )
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
  are dropped). The compiled function is kept for later calls with the same
  ``logits_fn_of_params`` (the same object), attack and settings, so calling once per radius
  compiles once too (once per batch shape). The key of batch ``b`` at radius ``eps`` is
  ``fold_in(fold_in(key(seed), round(eps * 1e6)), b)``, split once per run inside
  :func:`pgd`, so the same seed, radius and batch size give the same numbers.

  Args:
    logits_fn_of_params: ``(params, images) -> logits``, pure (for a Flax model, e.g.
      ``lambda v, x: model.apply(v, x, train=False)``).
    params: its first argument (a model's variables).
    images: ``(N, H, W, C)`` images in ``[0, 1]``.
    labels: ``(N,)`` true classes.
    eps_values: the radii, each in ``(0, 1]``.
    attack: one of :data:`ATTACKS`.
    settings: :func:`pgd`'s settings (unused by FGSM).
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
  if attack == "fgsm":  # no random start: each image's result is its own at any batch size
    batch = min(batch, ATTACK_BATCH)
  batches = -(-n // batch)
  pad = batches * batch - n
  if pad:
    images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
    labels = np.concatenate([labels, np.repeat(labels[-1:], pad)])
  mask = (np.arange(batches * batch) < n).astype(np.float32)

  run = _compiled(_batch_attack, logits_fn_of_params, attack, settings)
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


def _restart_seed(seed: int, restart: int) -> int:
  """The seed of untargeted restart ``restart`` (0: ``seed`` itself)."""
  return (seed + 104_729 * restart) % 2**31


def _restarts_on_survivors(
  logits_fn_of_params, params, images, labels, eps_values, settings, seed, batch_size
) -> dict[str, dict[float, Any]]:
  """:func:`robust_predictions` of untargeted PGD with several restarts, each restart after
  the first attacking only the images every earlier one left correctly classified.

  An image counts as broken when any restart breaks it, as when the restarts run together
  (:func:`pgd` keeps a misclassifying iterate where there is one), but an image already
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
      padded = np.concatenate([alive, np.repeat(alive[-1:], (-alive.size) % batch)])
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
