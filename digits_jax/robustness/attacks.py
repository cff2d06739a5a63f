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

Attacking a whole dataset (batches, several ``eps``, restarts, the images that leave once
broken, a fixed subset) is :mod:`digits_jax.robustness.dataset_attacks`.

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
import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
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
      result is kept. ``dataset_attacks.robust_predictions`` runs restarts after the first on the
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
  return fgsm_step(x, gradient_sign(logits_fn, x, labels), eps)


def gradient_sign(logits_fn: LogitsFn, images: jax.Array, labels: jax.Array) -> jax.Array:
  """``sign(grad_x CE)`` at ``images``: FGSM's direction, the same at every radius."""
  x = jax.lax.stop_gradient(jnp.asarray(images))
  labels = jnp.asarray(labels)
  return jnp.sign(jax.grad(lambda z: _cross_entropy(logits_fn(z), labels).sum())(x))


def fgsm_step(images: jax.Array, direction: jax.Array, eps: float | jax.Array) -> jax.Array:
  """``clip(x + eps * direction, 0, 1)``, a constant of outer gradients: FGSM's image at
  radius ``eps`` along :func:`gradient_sign`'s ``direction``."""
  x = jnp.asarray(images)
  eps = jnp.asarray(eps, x.dtype)
  return jax.lax.stop_gradient(jnp.clip(x + eps * direction, 0.0, 1.0))


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
