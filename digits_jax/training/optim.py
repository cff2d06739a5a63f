"""The optax optimizer and learning-rate schedule a config names."""

from __future__ import annotations

import jax
import optax

from digits_jax.config import Config
from digits_jax.models import roles


def make_schedule(config: Config, steps_per_epoch: int) -> optax.Schedule:
  """The learning-rate multiplier by step: 1 at the peak, the config's shape around it."""
  total = steps_per_epoch * config.epochs
  if config.schedule == "constant":
    return optax.constant_schedule(1.0)
  if config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
      0.0, 1.0, warmup_steps=min(steps_per_epoch, total // 10), decay_steps=total
    )
  if config.schedule == "onecycle":
    return optax.cosine_onecycle_schedule(total, 1.0)
  raise ValueError(config.schedule)


def freeze_labels(params) -> dict:
  """``"frozen"`` for every leaf of a feature layer (:mod:`digits_jax.models.roles`), else
  ``"train"``: the labels of ``optax.multi_transform`` under ``freeze=features``."""
  features = set(roles.feature_layers(params))
  return {
    k: jax.tree_util.tree_map(lambda _, f=k in features: "frozen" if f else "train", v)
    for k, v in params.items()
  }


def _optimizer(
  learning_rate,
  *,
  name: str,
  multiplier: optax.Schedule,
  momentum: float,
  weight_decay: float,
  freeze: str = "none",
) -> optax.GradientTransformation:
  tx = _base_optimizer(
    learning_rate, name=name, multiplier=multiplier, momentum=momentum, weight_decay=weight_decay
  )
  if freeze == "features":
    # Zero updates for the features: neither the gradient nor weight decay moves them.
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, freeze_labels)
  return tx


def _base_optimizer(
  learning_rate, *, name: str, multiplier: optax.Schedule, momentum: float, weight_decay: float
) -> optax.GradientTransformation:
  lr = lambda count: learning_rate * multiplier(count)  # noqa: E731
  if name == "adam":
    return optax.adam(lr)
  if name == "adamw":
    return optax.adamw(lr, weight_decay=weight_decay)
  if name == "sgd":
    sgd = optax.sgd(lr, momentum=momentum or None)
    if weight_decay:
      return optax.chain(optax.add_decayed_weights(weight_decay), sgd)
    return sgd
  raise ValueError(name)


def make_optimizer(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
  """The optax optimizer a resolved config names, with its learning-rate schedule.

  The peak learning rate is an injected hyperparameter: it lives in the optimizer
  state (``opt_state.hyperparams["learning_rate"]``), not in the compiled code, so
  models that differ only in learning rate can be trained together under
  ``jax.vmap`` (:mod:`digits_jax.training.groups`). With ``freeze=features`` the feature
  layers get zero updates (:func:`freeze_labels`).
  """
  factory = optax.inject_hyperparams(
    _optimizer, static_args=("name", "multiplier", "momentum", "weight_decay", "freeze")
  )
  return factory(
    learning_rate=config.learning_rate,
    name=config.optimizer,
    multiplier=make_schedule(config, steps_per_epoch),
    momentum=config.momentum,
    weight_decay=config.weight_decay,
    freeze=config.freeze,
  )
