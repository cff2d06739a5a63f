"""Adversarial training: the attack of each batch inside the train step, and the robust
validation that chooses the best epoch.

The attacks are those of the robustness evaluation (:mod:`digits_jax.robustness.attacks`),
one implementation with two uses:

* ``fgsm`` -- "fast" adversarial training (Wong et al., 2020): one signed-gradient step of
  ``1.25 * eps`` from a uniform random start in the L-inf ball, i.e. :func:`attacks.pgd`
  with one step.
* ``pgd`` -- Madry et al. (2018): :func:`attacks.pgd` with ``adversarial_steps`` steps of
  ``2.5 * eps / steps`` (or ``adversarial_step_size``) from a random start.
* ``trades`` -- Zhang et al. (2019): the attack raises the KL divergence between the
  network's prediction on the clean image and on the attacked one (:func:`attacks.pgd`
  against the clean prediction as a target distribution); the loss is the clean
  cross-entropy plus ``trades_beta`` times that KL divergence.

Training takes the attack's last iterate (``keep_best=False``), as those papers do; the
evaluation keeps each example's most damaging one.

The attack sees the network as the step trains it (batch statistics of the batch, the
step's dropout mask) with its parameters held constant: it needs input gradients only, and
the adversarial images enter the loss as constants. ``eps`` rises linearly from 0 over the
first ``adversarial_warmup`` epochs (:func:`eps_at`, traced, so nothing recompiles).

After each epoch :class:`RobustValidation` attacks a fixed class-stratified subset of the
validation split with PGD at the full ``eps``; the run's best epoch is the one of highest
robust validation accuracy (:func:`digits_jax.training.history.score`), and a sudden fall of
it (catastrophic overfitting, :func:`digits_jax.training.history.collapsed`) is logged and
written with the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from digits_jax import models
from digits_jax.config import Config
from digits_jax.robustness import attacks, dataset_attacks

# Fast adversarial training's step, in units of eps (Wong et al. 2020: alpha = 1.25 eps).
FGSM_STEP = 1.25


def enabled(config: Config) -> bool:
  """Whether ``config`` trains adversarially."""
  return config.adversarial not in (None, "none")


def eps_at(config: Config, step: jax.Array, steps_per_epoch: int) -> jax.Array:
  """The training attack's radius at optimizer step ``step`` (0-based, may be traced).

  ``adversarial_eps`` after the warm-up; during it, ``eps * (step + 1) / warm-up steps``, so
  the last step of the warm-up trains at the full radius.
  """
  eps = jnp.float32(config.adversarial_eps)
  warmup = config.adversarial_warmup * steps_per_epoch
  if not warmup:
    return eps
  return eps * jnp.minimum(1.0, (jnp.asarray(step, jnp.float32) + 1.0) / warmup)


def _step_size(config: Config, eps: jax.Array) -> jax.Array | float | None:
  if config.adversarial_step_size:
    return config.adversarial_step_size
  if config.adversarial == "fgsm":
    return FGSM_STEP * eps
  return None  # attacks.pgd's rule: 2.5 * eps / steps


def perturb(
  config: Config,
  logits_fn: Callable[[jax.Array], jax.Array],
  images: jax.Array,
  labels: jax.Array,
  eps: jax.Array,
  key: jax.Array,
  clean_logits: jax.Array | None = None,
) -> jax.Array:
  """The training attack's images for one batch (constants of the outer gradient).

  Args:
    config: the run's config (``adversarial`` is fgsm, pgd or trades).
    logits_fn: images to logits, the network with its parameters held constant.
    images, labels: the batch.
    eps: the radius (:func:`eps_at`).
    key: the key of the random start.
    clean_logits: TRADES' logits of the clean batch (its attack's target).
  """
  steps = 1 if config.adversarial == "fgsm" else config.adversarial_steps
  targets = labels
  if config.adversarial == "trades":
    targets = jax.nn.softmax(jax.lax.stop_gradient(clean_logits).astype(jnp.float32), axis=-1)
  return attacks.pgd(
    logits_fn,
    images,
    targets,
    eps,
    key,
    steps=steps,
    step_size=_step_size(config, eps),
    random_start=True,
    keep_best=False,
  )


def trades_kl(clean_logits: jax.Array, adversarial_logits: jax.Array) -> jax.Array:
  """Per-example KL(softmax(clean) || softmax(adversarial)), TRADES' robustness term."""
  clean = jax.nn.log_softmax(clean_logits.astype(jnp.float32), axis=-1)
  adversarial = jax.nn.log_softmax(adversarial_logits.astype(jnp.float32), axis=-1)
  return jnp.sum(jnp.exp(clean) * (clean - adversarial), axis=-1)


class RobustValidation:
  """PGD accuracy on a fixed class-stratified subset of the validation split, per epoch.

  The subset (``robust_val_size`` images, :func:`dataset_attacks.stratified_subset` with the run's
  seed) and the attack's keys are the same every epoch, so epochs are compared on the same
  attack; the attack is compiled once.
  """

  def __init__(self, config: Config, apply_fn: Callable[..., Any], images, labels):
    self.config = config
    labels = np.asarray(labels)
    size = min(config.robust_val_size, len(labels))
    self.indices = dataset_attacks.stratified_subset(labels, size, seed=config.seed)
    self.images = np.asarray(images)[self.indices]
    self.labels = labels[self.indices]
    self.settings = attacks.PGDSettings(steps=config.robust_val_steps)
    # One function object for every epoch: the compiled attack is cached on it.
    self._logits = models.attack_logits(apply_fn)

  def __len__(self) -> int:
    return len(self.labels)

  def accuracy(self, variables: dict[str, Any]) -> float:
    """The fraction of the subset still classified correctly under the attack."""
    variables = {k: v for k, v in variables.items() if v or k == "params"}
    out = dataset_attacks.robust_predictions(
      self._logits,
      variables,
      self.images,
      self.labels,
      [self.config.adversarial_eps],
      settings=self.settings,
      seed=self.config.seed,
      batch_size=self.config.eval_batch_size,
    )
    predicted = out["predictions"][float(self.config.adversarial_eps)]
    return float(np.mean(predicted == self.labels))
