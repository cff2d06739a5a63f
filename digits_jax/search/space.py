"""What a search explores: the parameters, their ranges, and the settings of the study.

A search space maps :class:`~digits_jax.config.Config` recipe fields to a parameter:

* ``{"kind": "log", "low": 1e-4, "high": 1e-2}``: log-uniform float (learning rate,
  weight decay);
* ``{"kind": "float", "low": 0.0, "high": 0.2}``: uniform float;
* ``{"kind": "int", "low": 2, "high": 10}``: integer, both ends included;
* ``{"kind": "choice", "choices": (32, 64, 128)}``: one of the values.

Some fields only mean something with others, and are asked for only then: weight decay
with ``adamw`` or ``sgd`` (Adam has none), momentum with ``sgd``, the augmentation's
strengths (rotation, shift, zoom) with ``augment``. :func:`default_space` gives a space
for each registered model around its recipe; a config file's ``space`` replaces or adds
entries (:func:`parse`). Everything is checked by :func:`parse` before anything runs.
Dropout and the activation are recipe fields like the others, so a config file's ``space``
may search them (``{"dropout": {"kind": "float", "low": 0.0, "high": 0.5}}``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from digits_jax import models
from digits_jax.config import (
  DEFAULT,
  FIELDS,
  OPTIMIZERS,
  RECIPE_FIELDS,
  SCHEDULES,
  Config,
  ConfigError,
  describe,
  resolve,
  resolve_with_origins,
)

KINDS = ("log", "float", "int", "choice")
PRUNERS = ("successive_halving", "hyperband", "median", "none")
# The fields a search may vary: the recipe fields (how a network is trained).
SEARCHABLE = RECIPE_FIELDS
# Settings a field needs to mean anything: searched only when the condition holds.
CONDITIONS = {
  "weight_decay": ("optimizer", ("adamw", "sgd")),
  "momentum": ("optimizer", ("sgd",)),
  "rotation": ("augment", (True,)),
  "shift": ("augment", (True,)),
  "zoom": ("augment", (True,)),
}
# The settings of a study besides its space; ``base`` holds fixed Config fields.
STUDY_FIELDS = (
  "models",
  "trials",
  "max_epochs",
  "space",
  "base",
  "sampler_seed",
  "startup_trials",
  "pruner",
  "min_resource",
  "reduction_factor",
  "confirm_top",
  "confirm_seeds",
  "confirm_first_seed",
)


class SearchError(ConfigError):
  """A search that cannot work; the message names the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class Param:
  """One searched field."""

  name: str
  kind: str
  low: float | None = None
  high: float | None = None
  choices: tuple[Any, ...] = ()

  def describe(self) -> str:
    if self.kind == "choice":
      return "{" + ", ".join(map(str, self.choices)) + "}"
    return f"{self.kind} [{self.low:g}, {self.high:g}]"

  def to_dict(self) -> dict[str, Any]:
    if self.kind == "choice":
      return {"kind": "choice", "choices": list(self.choices)}
    return {"kind": self.kind, "low": self.low, "high": self.high}


@dataclasses.dataclass(frozen=True)
class SearchSpec:
  """A study of one model: its space, fixed fields, budget, sampler and pruner."""

  model: str
  trials: int
  max_epochs: int
  space: tuple[Param, ...]
  base: tuple[tuple[str, Any], ...] = ()
  sampler_seed: int = 0
  startup_trials: int = 10
  pruner: str = "successive_halving"
  min_resource: int = 1
  reduction_factor: int = 3
  confirm_top: int = 0
  confirm_seeds: int = 3
  confirm_first_seed: int = 1000

  def base_config(self) -> Config:
    """The fixed fields (a training subset, the validation size) on the model."""
    return Config(model=self.model, **dict(self.base))

  def identity(self) -> dict[str, Any]:
    """What makes two studies the same study (the number of trials may grow)."""
    return {
      "model": self.model,
      "max_epochs": self.max_epochs,
      "space": {p.name: p.to_dict() for p in self.space},
      "base": dict(self.base),
      "pruner": [self.pruner, self.min_resource, self.reduction_factor],
    }

  def rungs(self) -> list[int]:
    """The epochs at which the pruner compares trials (every epoch but for halving)."""
    if self.pruner in ("successive_halving", "hyperband"):
      out, epoch = [], self.min_resource
      while epoch <= self.max_epochs:
        out.append(epoch)
        epoch *= self.reduction_factor
      return out
    return list(range(1, self.max_epochs + 1))


def default_space(model: str, max_epochs: int = 10) -> dict[str, dict[str, Any]]:
  """A space around ``model``'s recipe: learning rate within 10x of it, and the rest."""
  recipe = resolve(Config(model=model))
  lr = recipe.learning_rate
  space: dict[str, dict[str, Any]] = {
    "optimizer": {"kind": "choice", "choices": ("adam", "adamw", "sgd")},
    "learning_rate": {"kind": "log", "low": lr / 10, "high": lr * 10},
    "weight_decay": {"kind": "log", "low": 1e-6, "high": 1e-2},
    "momentum": {"kind": "float", "low": 0.8, "high": 0.99},
    "schedule": {"kind": "choice", "choices": SCHEDULES},
    "batch_size": {"kind": "choice", "choices": (32, 64, 128, 256)},
    "epochs": {"kind": "int", "low": max(1, max_epochs // 2), "high": max_epochs},
    "label_smoothing": {"kind": "float", "low": 0.0, "high": 0.2},
    "augment": {"kind": "choice", "choices": (False, True)},
    "rotation": {"kind": "float", "low": 0.0, "high": 15.0},
    "shift": {"kind": "float", "low": 0.0, "high": 3.0},
    "zoom": {"kind": "float", "low": 0.0, "high": 0.15},
  }
  if recipe.optimizer == "sgd":
    # An SGD recipe's learning rate is no guide for Adam's: keep the optimizer.
    space["optimizer"] = {"kind": "choice", "choices": ("sgd",)}
  return space


def _param(name: str, entry: Mapping[str, Any], max_epochs: int) -> Param:
  where = f"space.{name}"
  if name not in FIELDS:
    raise SearchError(
      f"{where}: {name!r} is not a Config field; searchable fields: {', '.join(SEARCHABLE)}"
    )
  if name not in SEARCHABLE:
    raise SearchError(
      f"{where}: {name!r} is not a recipe field and cannot be searched (fix it under "
      f"'base' instead); searchable fields: {', '.join(SEARCHABLE)}"
    )
  entry = dict(entry)
  kind = entry.get("kind")
  if kind not in KINDS:
    raise SearchError(f"{where}.kind is {kind!r}; use one of: {', '.join(KINDS)}")
  extra = set(entry) - ({"kind", "choices"} if kind == "choice" else {"kind", "low", "high"})
  if extra:
    raise SearchError(f"{where} has {sorted(extra)}, which a {kind!r} parameter does not take")
  if kind == "choice":
    choices = tuple(entry.get("choices") or ())
    if not choices:
      raise SearchError(f"{where}.choices is empty; give at least one value")
    allowed = FIELDS[name].metadata["choices"] or (OPTIMIZERS if name == "optimizer" else None)
    wrong = [c for c in choices if allowed and c not in allowed]
    if wrong:
      raise SearchError(f"{where}.choices has {wrong}; valid values are: {', '.join(allowed)}")
    return Param(name, kind, choices=choices)
  low, high = entry.get("low"), entry.get("high")
  if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (low, high)):
    raise SearchError(f"{where} needs numeric low and high, got low={low!r}, high={high!r}")
  if low >= high:
    raise SearchError(
      f"{where}: the range [{low}, {high}] is empty; give low < high (or a 'choice' with "
      "one value to fix the field)"
    )
  if kind == "log" and low <= 0:
    raise SearchError(f"{where}: a log range needs low > 0, got {low}")
  if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
    raise SearchError(f"{where}: an int range needs integer ends, got [{low}, {high}]")
  if name == "epochs" and high > max_epochs:
    raise SearchError(
      f"{where}: high={high} exceeds the budget max_epochs={max_epochs}; lower it or raise "
      "max_epochs"
    )
  if kind == "int":
    low, high = int(low), int(high)
  return Param(name, kind, low=low, high=high)


def parse(settings: Mapping[str, Any], model: str) -> SearchSpec:
  """The checked :class:`SearchSpec` of ``model`` from a study's settings.

  Args:
    settings: as a config file gives them (:data:`STUDY_FIELDS`); ``space`` entries
      replace those of :func:`default_space` (an entry ``None`` drops one).
    model: a registered model name.

  Raises:
    UnknownModelError: ``model`` is not registered.
    SearchError: an unknown setting or field, an empty range, a bad value.
  """
  model = models.get_spec(model).name
  unknown = set(settings) - set(STUDY_FIELDS)
  if unknown:
    raise SearchError(f"unknown study settings {sorted(unknown)}; known: {', '.join(STUDY_FIELDS)}")
  max_epochs = int(settings.get("max_epochs", 10))
  trials = int(settings.get("trials", 20))
  if max_epochs < 1 or trials < 1:
    raise SearchError(f"trials and max_epochs must be at least 1, got {trials}, {max_epochs}")
  base = dict(settings.get("base") or {})
  bad = set(base) - set(FIELDS) | {"model"} & set(base)
  if bad:
    raise SearchError(
      f"base has {sorted(bad)}: give Config fields other than model ({', '.join(FIELDS)})"
    )
  entries = default_space(model, max_epochs) | dict(settings.get("space") or {})
  space = tuple(
    _param(n, e, max_epochs) for n, e in entries.items() if e is not None and n not in base
  )
  fixed = dict(base)
  if "epochs" not in {p.name for p in space}:
    fixed.setdefault("epochs", max_epochs)
  try:
    resolve(Config(model=model, **fixed))
  except TypeError as e:
    raise SearchError(f"base: {e}") from e
  pruner = settings.get("pruner", "successive_halving")
  if pruner not in PRUNERS:
    raise SearchError(f"pruner {pruner!r} is unknown; use one of: {', '.join(PRUNERS)}")
  spec = SearchSpec(
    model=model,
    trials=trials,
    max_epochs=max_epochs,
    space=space,
    base=tuple(sorted(fixed.items())),
    sampler_seed=int(settings.get("sampler_seed", 0)),
    startup_trials=int(settings.get("startup_trials", 10)),
    pruner=pruner,
    min_resource=int(settings.get("min_resource", 1)),
    reduction_factor=int(settings.get("reduction_factor", 3)),
    confirm_top=int(settings.get("confirm_top", 0)),
    confirm_seeds=int(settings.get("confirm_seeds", 3)),
    confirm_first_seed=int(settings.get("confirm_first_seed", 1000)),
  )
  if spec.confirm_top < 0 or spec.confirm_seeds < 1:
    raise SearchError("confirm_top must be >= 0 and confirm_seeds >= 1")
  seed = spec.base_config().seed
  if spec.confirm_top and seed in range(
    spec.confirm_first_seed, spec.confirm_first_seed + spec.confirm_seeds
  ):
    raise SearchError(
      f"the confirmation seeds {spec.confirm_first_seed}.. include the search's seed {seed}; "
      "raise confirm_first_seed"
    )
  return spec


def applies(name: str, values: Mapping[str, Any]) -> bool:
  """Whether ``name`` means anything given the ``values`` chosen (or fixed) so far."""
  if name not in CONDITIONS:
    return True
  on, allowed = CONDITIONS[name]
  return values.get(on) in allowed


def suggest(trial: Any, spec: SearchSpec) -> Config:
  """The resolved Config of an Optuna ``trial``: its suggested values on the base."""
  fixed = resolve(spec.base_config()).to_dict()
  values: dict[str, Any] = {}
  for p in spec.space:
    if not applies(p.name, fixed | values):
      continue
    if p.kind == "choice":
      values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
    elif p.kind == "int":
      values[p.name] = trial.suggest_int(p.name, p.low, p.high)
    else:
      values[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.kind == "log")
  return config_of(spec, values)


def config_of(spec: SearchSpec, values: Mapping[str, Any]) -> Config:
  """The resolved Config of a trial's parameter ``values`` on the study's base."""
  values = dict(values)
  optimizer = values.get("optimizer", dict(spec.base).get("optimizer"))
  if optimizer == "adam" and "weight_decay" not in dict(spec.base):
    values["weight_decay"] = 0.0
  return resolve(spec.base_config().replace(**values))


def describe_spec(spec: SearchSpec, given: Mapping[str, str]) -> dict[str, list[str]]:
  """What a search's dry run prints of a study: its settings, the Config settings every trial
  shares (those the space does not search) and the space, one line each with its origin
  (:func:`digits_jax.config.describe`).

  Args:
    spec: the study (:func:`parse`).
    given: the origin of each setting its config file or command line set, keyed by study
      setting (``trials``, ``models``), ``base.FIELD`` or ``space.FIELD``; the rest are
      defaults. An ``epochs`` fixed by the budget takes the origin of ``max_epochs``.
  """
  study = {n: getattr(spec, n) for n in STUDY_FIELDS if n not in ("models", "space", "base")}
  study = {"model": spec.model} | study
  origins = {n: given.get(n, DEFAULT) for n in study} | {"model": given.get("models", DEFAULT)}
  base = {n: given.get(f"base.{n}", DEFAULT) for n in dict(spec.base)}
  if "base.epochs" not in given and "epochs" in base:
    base["epochs"] = given.get("max_epochs", DEFAULT)
  fixed = resolve_with_origins(spec.base_config(), base | {"model": origins["model"]})
  searched = {p.name for p in spec.space}
  fixed_values = {n: v for n, v in fixed.config.to_dict().items() if n not in searched}
  space = {p.name: p.describe() for p in spec.space}
  return {
    f"study of {spec.model}": describe(study, origins),
    "settings every trial shares": describe(fixed_values, fixed.origins),
    "search space": describe(space, {n: given.get(f"space.{n}", DEFAULT) for n in space}),
  }
