"""Run configuration: one frozen dataclass, defaults in one place.

Fields left ``None`` take the value of the model's source recipe
(:class:`digits_jax.models.Recipe`) when the config is :func:`resolve`-d, so
``Config(model="conv3_dense100")`` trains that network the way its source did and
``Config(model="conv3_dense100", optimizer="adam")`` changes only the optimizer.
Every run writes its resolved config as ``config.json`` next to its results.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from digits_jax import data, models

OPTIMIZERS = ("adam", "adamw", "sgd")
# When a run replaces its recipe's optimizer (``--optimizer=sgd`` on an Adam
# recipe), these take the place of the recipe's optimizer settings unless given.
OPTIMIZER_DEFAULTS = {
    "adam": {"learning_rate": 1e-3, "weight_decay": 0.0},
    "adamw": {"learning_rate": 1e-3, "weight_decay": 1e-4},
    "sgd": {"learning_rate": 0.01, "weight_decay": 0.0},
}
SCHEDULES = ("constant", "cosine", "onecycle")
LOSSES = ("sparse", "onehot")


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that determines a run's numbers."""

  model: str = "conv2_dense128_dropout"
  dataset: str = "mnist"
  seed: int = 0
  validation_size: int = 5000
  # None: take the value from the model's source recipe.
  optimizer: str | None = None
  learning_rate: float | None = None
  momentum: float | None = None
  weight_decay: float | None = None
  schedule: str | None = None
  batch_size: int | None = None
  epochs: int | None = None
  loss: str | None = None
  label_smoothing: float | None = None
  augment: bool | None = None
  # Implementation choices that do not change the maths.
  fast_ops: bool = True
  eval_batch_size: int = 1000
  # Use only the first N training images (after the validation split); 0 = all.
  # For smoke tests and quick looks, never for reported numbers.
  train_subset: int = 0

  def replace(self, **changes: Any) -> Config:
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> Config:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
      raise ConfigError(f"unknown config fields {sorted(unknown)}; known: {sorted(names)}")
    return cls(**d)


def resolve(config: Config) -> Config:
  """Fills ``None`` fields from the model's recipe and validates every value.

  Raises:
    UnknownModelError: the model name is not registered.
    ConfigError: a value is out of range or not one of the valid names.
  """
  recipe = models.get_spec(config.model).recipe
  if config.optimizer is not None and config.optimizer != recipe.optimizer:
    _choice("optimizer", config.optimizer, OPTIMIZERS)
    recipe = dataclasses.replace(recipe, optimizer=config.optimizer,
                                 **OPTIMIZER_DEFAULTS[config.optimizer])
  filled = {
      f.name: getattr(recipe, f.name)
      for f in dataclasses.fields(recipe)
      if getattr(config, f.name) is None
  }
  config = config.replace(**filled)
  validate(config)
  return config


def _choice(name: str, value: str, valid: tuple[str, ...]) -> None:
  if value not in valid:
    raise ConfigError(f"unknown {name} {value!r}; valid values are: {', '.join(valid)}")


def _positive(name: str, value: float) -> None:
  if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
    raise ConfigError(f"{name} must be a positive number, got {value!r}")


def validate(config: Config) -> None:
  """Checks a resolved config; cheap, so it runs before any data or compute."""
  models.get_spec(config.model)
  _choice("dataset", config.dataset, data.DATASETS)
  _choice("optimizer", config.optimizer, OPTIMIZERS)
  _choice("schedule", config.schedule, SCHEDULES)
  _choice("loss", config.loss, LOSSES)
  _positive("learning_rate", config.learning_rate)
  _positive("batch_size", config.batch_size)
  _positive("epochs", config.epochs)
  _positive("eval_batch_size", config.eval_batch_size)
  for name in ("batch_size", "epochs", "eval_batch_size", "validation_size", "train_subset"):
    if not isinstance(getattr(config, name), int):
      raise ConfigError(f"{name} must be an integer, got {getattr(config, name)!r}")
  if config.validation_size < 0 or config.train_subset < 0:
    raise ConfigError("validation_size and train_subset must be >= 0")
  if not 0 <= config.label_smoothing < 1:
    raise ConfigError(f"label_smoothing must be in [0, 1), got {config.label_smoothing}")
  if not 0 <= config.momentum < 1:
    raise ConfigError(f"momentum must be in [0, 1), got {config.momentum}")
  if config.weight_decay < 0:
    raise ConfigError(f"weight_decay must be >= 0, got {config.weight_decay}")
  if config.weight_decay and config.optimizer == "adam":
    raise ConfigError("weight_decay needs --optimizer=adamw or sgd (adam has none)")


def check_sizes(config: Config, num_train: int) -> None:
  """Checks the batch size against the number of training images actually used."""
  if config.train_subset > num_train:
    raise ConfigError(
        f"train_subset {config.train_subset} is larger than the {num_train} training images "
        "left after the validation split; lower --train_subset (0 uses them all)"
    )
  if config.batch_size > num_train:
    raise ConfigError(
        f"batch_size {config.batch_size} is larger than the {num_train} training images "
        "(after the validation split and any train_subset); lower --batch_size"
    )
