"""Run configuration: every setting of a run, its default and its help, in one place.

:class:`Config` is the single list of settings. The command-line flags of the entry
points are generated from its fields (:mod:`experiments.common`), and each network's
source recipe (:attr:`digits_jax.models.ModelSpec.recipe`) is a dict of its field
values. Fields marked as recipe fields default to ``None``, meaning "what the model's
recipe says, else the recipe default given here", filled in by :func:`resolve`:
``Config(model="conv3_dense100")`` trains that network the way its source did, and
``Config(model="conv3_dense100", optimizer="adam")`` changes only the optimizer.

Implementation fields (:data:`IMPLEMENTATION_FIELDS`) choose how the numbers are
computed, not which numbers: they are not part of a run's identity, so a run may be
resumed or compared under other values. Every run writes its resolved config as
``config.json`` next to its results.

A resolved value comes from one of these layers, each overriding the ones before it
(:func:`resolve_with_origins` says which for every field): the field's default
(:data:`DEFAULT`; a recipe field's recipe default), the model's registered recipe
(:data:`RECIPE`), :data:`OPTIMIZER_DEFAULTS` when a run replaces its recipe's optimizer
(:data:`OPTIMIZER_DEFAULT`), an experiment's config file (:data:`CONFIG_FILE`) and the
command line (:data:`COMMAND_LINE`). The entry points print them with ``--dry_run``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
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
EPOCH_LOOPS = ("auto", "scan", "host")
# Adversarial training (digits_jax.training.adversarial): none, FGSM with a random start
# (Wong et al. 2020), PGD (Madry et al. 2018) or TRADES (Zhang et al. 2019).
ADVERSARIAL = ("none", "fgsm", "pgd", "trades")
# What a transfer run (--init_from) trains: every layer, or the dense layers only
# (digits_jax.models.roles says which layers are the features).
FREEZE = ("none", "features")
# What --init_from takes for "no source run" in a comma list (a sweep's), where "" cannot stand.
NO_SOURCE = "none"
# Short names of settings in run directory names and table labels.
SHORT_NAMES = {
  "learning_rate": "lr",
  "batch_size": "bs",
  "epochs": "ep",
  "weight_decay": "wd",
  "label_smoothing": "ls",
  "momentum": "mom",
  "validation_size": "val",
  "train_subset": "sub",
  "rotation": "rot",
  "elastic_alpha": "ela",
  "elastic_sigma": "els",
  "adversarial": "adv",
  "adversarial_eps": "eps",
  "adversarial_steps": "advsteps",
  "adversarial_step_size": "advstep",
  "adversarial_warmup": "warm",
  "trades_beta": "beta",
  "robust_val_size": "rval",
  "robust_val_steps": "rvalsteps",
  "activation": "act",
  "dropout": "drop",
  "init_from": "from",
  "reinit_head": "reinit",
  "freeze": "freeze",
}


# Where a resolved value came from, lowest layer first (module docstring). The entry points
# name the last two; a caller may name others (a sweep's preset).
DEFAULT = "default"
RECIPE = "recipe"
OPTIMIZER_DEFAULT = "optimizer default"
CONFIG_FILE = "config file"
COMMAND_LINE = "command line"
# A value set in the Config passed to resolve_with_origins that its caller did not name.
GIVEN = "given"


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field and the fix."""


def _setting(default: Any, help: str, *, choices: tuple[str, ...] | None = None) -> Any:
  return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def _recipe(default: Any, help: str, *, choices: tuple[str, ...] | None = None) -> Any:
  return dataclasses.field(
    default=None, metadata={"help": help, "choices": choices, "recipe_default": default}
  )


def _implementation(default: Any, help: str, *, choices: tuple[str, ...] | None = None) -> Any:
  return dataclasses.field(
    default=default, metadata={"help": help, "choices": choices, "implementation": True}
  )


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that determines a run's numbers, and how they are computed."""

  model: str = _setting("conv2_dense128_dropout", "Registered model name.")
  dataset: str = _setting("mnist", "Dataset.", choices=data.DATASETS)
  seed: int = _setting(0, "Seed for initialisation, shuffling, dropout and augmentation.")
  validation_size: int = _setting(
    5000, "Training images held out for validation (model selection)."
  )
  train_subset: int = _setting(
    0,
    "Train on only the first N training images (0: all). For smoke tests, never for "
    "reported numbers.",
  )
  # Recipe fields: None takes the model's recipe value.
  optimizer: str | None = _recipe("adam", "Optimizer.", choices=OPTIMIZERS)
  learning_rate: float | None = _recipe(1e-3, "Peak learning rate.")
  momentum: float | None = _recipe(0.9, "SGD momentum.")
  weight_decay: float | None = _recipe(0.0, "Weight decay (adamw and sgd).")
  schedule: str | None = _recipe("constant", "Learning-rate schedule.", choices=SCHEDULES)
  batch_size: int | None = _recipe(128, "Batch size.")
  epochs: int | None = _recipe(10, "Epochs.")
  loss: str | None = _recipe(
    "sparse", "Cross-entropy on integer labels (sparse) or one-hot targets.", choices=LOSSES
  )
  label_smoothing: float | None = _recipe(0.0, "Label smoothing in [0, 1).")
  augment: bool | None = _recipe(
    False, "Random rotations, shifts and zooms of the training images (see the next three)."
  )
  rotation: float | None = _recipe(10.0, "With --augment: largest rotation, degrees.")
  shift: float | None = _recipe(2.0, "With --augment: largest shift per axis, pixels.")
  zoom: float | None = _recipe(
    0.0, "With --augment: scale factors are uniform in [1 - zoom, 1 + zoom] (0: none)."
  )
  # Implementation fields: how, not what (see IMPLEMENTATION_FIELDS).
  fast_ops: str = _implementation(
    "auto",
    "Convolutions and pools through digits_jax.models.ops (same maths; faster on a CPU, "
    "docs/speed.md): auto (on the CPU backend only), on or off; true/false mean on/off.",
  )
  epoch_loop: str = _implementation(
    "auto",
    "One compiled scan per epoch, or one compiled step per batch (host).",
    choices=EPOCH_LOOPS,
  )
  eval_batch_size: int = _implementation(1000, "Batch size for validation and test.")
  # Recipe fields added later (levers of the accuracy attempts, docs/accuracy.md).
  elastic_alpha: float | None = _recipe(
    0.0,
    "With --augment: elastic distortion (Simard et al. 2003), scale of the smoothed random "
    "displacement fields in pixels; no pixel moves more than this per axis (0: none).",
  )
  elastic_sigma: float | None = _recipe(
    4.0, "With --elastic_alpha: standard deviation of the fields' Gaussian smoothing, pixels."
  )
  ema: float | None = _recipe(
    0.0,
    "Decay of an exponential moving average of the weights (e.g. 0.999; 0: none). When set, "
    "validation, the best checkpoint and the test use the averaged weights.",
  )
  tta: bool | None = _recipe(
    False,
    "Test-time augmentation: validation and test average the class probabilities of each "
    "image and its four one-pixel shifts.",
  )

  # Adversarial training (docs/adversarial.md).
  adversarial: str | None = _recipe(
    "none",
    "Adversarial training: train on L-inf attacks of each batch made inside the train step "
    "(fgsm: one step from a random start, Wong et al. 2020; pgd: Madry et al. 2018; trades: "
    "Zhang et al. 2019).",
    choices=ADVERSARIAL,
  )
  adversarial_eps: float | None = _recipe(
    0.3, "With --adversarial: the L-inf radius of the training attack, in (0, 1]."
  )
  adversarial_steps: int | None = _recipe(
    10, "With --adversarial=pgd or trades: attack steps per batch (fgsm takes one)."
  )
  adversarial_step_size: float | None = _recipe(
    0.0,
    "With --adversarial: the attack's step size (0: 1.25 * eps for fgsm, 2.5 * eps / steps "
    "for pgd and trades).",
  )
  adversarial_warmup: int | None = _recipe(
    0, "With --adversarial: epochs over which eps rises linearly from 0 (0: none)."
  )
  trades_beta: float | None = _recipe(
    6.0, "With --adversarial=trades: weight of the KL term (robustness against accuracy)."
  )
  robust_val_size: int | None = _recipe(
    1000,
    "With --adversarial: validation images (a fixed class-stratified subset) attacked after "
    "each epoch by PGD at --adversarial_eps; the best epoch is the one of highest robust "
    "validation accuracy (0: clean validation accuracy chooses).",
  )
  robust_val_steps: int | None = _recipe(
    20, "With --adversarial: steps of that validation attack (one random start)."
  )

  # The network's non-linearity and dropout (recipe fields: dropout is the architecture's).
  activation: str | None = _recipe(
    "relu",
    "The network's activation in place of every ReLU (gelu: exact, erf; leaky_relu: slope "
    "0.01). Only relu keeps the fused conv-ReLU-pool kernels.",
    choices=models.ACTIVATIONS,
  )
  dropout: float | None = _recipe(
    0.0,
    "Dropout rate after the network's hidden dense layers, in [0, 1) (0: none; default: "
    "its architecture's, e.g. 0.5 for conv2_dense128_dropout).",
  )
  # Transfer learning (docs/transfer.md).
  init_from: str = _setting(
    "",
    "A finished run's folder whose best checkpoint gives the initial weights (params and "
    'batch_stats), layer by layer where names and shapes match ("" or none: train from '
    "scratch). {seed} in it is replaced by the run's seed.",
  )
  reinit_head: bool = _setting(
    False,
    "With --init_from: initialise the output layer afresh instead of copying it (it is "
    "anyway when its shape differs).",
  )
  freeze: str = _setting(
    "none",
    "With --init_from: features keeps the convolution and batch-norm layers (and their "
    "batch statistics) as the source left them; only the dense layers train.",
    choices=FREEZE,
  )

  def replace(self, **changes: Any) -> Config:
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def create_model(self, num_classes: int = data.NUM_CLASSES) -> Any:
    """The network this config names, with its activation, dropout and ``fast_ops``."""
    return models.create_model(
      self.model,
      fast=self.fast_ops,
      num_classes=num_classes,
      activation=self.activation,
      dropout=self.dropout,
    )

  def identity(self) -> dict[str, Any]:
    """The fields that make two runs the same run (all but the implementation fields)."""
    return {k: v for k, v in self.to_dict().items() if k not in IMPLEMENTATION_FIELDS}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> Config:
    """The config a ``config.json`` recorded; fields it lacks take their defaults.

    ``d`` is a resolved config, so a recipe field it lacks was added after it was written:
    it takes what runs did before the field existed, its model's registered recipe value
    where the recipe sets it (conv2_dense128_dropout's dropout of 0.5), else its recipe
    default (the augmentation's strengths, for one).

    Raises:
      ConfigError: ``d`` names a field this version does not know.
    """
    unknown = set(d) - set(FIELDS)
    if unknown:
      raise ConfigError(f"unknown config fields {sorted(unknown)}; known: {sorted(FIELDS)}")
    recipe = recipe_values(d.get("model", FIELDS["model"].default))
    return cls(**({n: v for n, v in recipe.items() if n not in d} | dict(d)))


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Config)}
RECIPE_FIELDS = tuple(n for n, f in FIELDS.items() if "recipe_default" in f.metadata)
IMPLEMENTATION_FIELDS = tuple(n for n, f in FIELDS.items() if f.metadata.get("implementation"))


def recipe_values(model: str) -> dict[str, Any]:
  """Every recipe field's value for ``model``: its registered recipe's where it sets one,
  else the recipe default (only the defaults for a model that is not registered)."""
  defaults = {n: FIELDS[n].metadata["recipe_default"] for n in RECIPE_FIELDS}
  spec = models.MODELS.get(model)
  return defaults | (dict(spec.recipe) if spec else {})


# The settings of adversarial training other than the switch itself.
ADVERSARIAL_FIELDS = (
  "adversarial_eps",
  "adversarial_steps",
  "adversarial_step_size",
  "adversarial_warmup",
  "trades_beta",
  "robust_val_size",
  "robust_val_steps",
)


def identity_of(saved: Mapping[str, Any]) -> dict[str, Any]:
  """The :meth:`Config.identity` of a config dict as a ``config.json`` recorded it.

  Fields added since the file was written take the values runs had before the field existed
  (:meth:`Config.from_dict`), so the runs of earlier versions keep their identity.
  """
  return Config.from_dict(saved).identity()


def differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  """``field: value there, value here`` for every field in which two config dicts differ."""
  return [
    f"{k}: {saved.get(k)!r} there, {current.get(k)!r} here"
    for k in sorted(set(saved) | set(current))
    if saved.get(k) != current.get(k)
  ]


@dataclasses.dataclass(frozen=True)
class Resolved:
  """A resolved config and where each of its values came from.

  Attributes:
    config: the resolved, validated config.
    origins: every field's origin (:data:`DEFAULT`, :data:`RECIPE`, ...).
  """

  config: Config
  origins: Mapping[str, str]

  def lines(self) -> list[str]:
    """One line per field: name, value and origin (:func:`describe`)."""
    return describe(self.config.to_dict(), self.origins)


def resolve(config: Config) -> Config:
  """Fills ``None`` fields from the model's recipe and validates every value.

  Raises:
    UnknownModelError: the model name is not registered.
    ConfigError: a value is out of range or not one of the valid names.
  """
  return resolve_with_origins(config).config


def resolve_with_origins(config: Config, given: Mapping[str, str] | None = None) -> Resolved:
  """:func:`resolve`, recording where every value came from.

  Args:
    config: the config to resolve; ``None`` recipe fields take the model's recipe.
    given: the origin of each value set in ``config`` (``{"epochs": COMMAND_LINE}``). A
      ``None`` recipe field takes :data:`RECIPE`, :data:`OPTIMIZER_DEFAULT` or
      :data:`DEFAULT` by the layer that filled it, whatever ``given`` says; any other field
      it leaves out is :data:`DEFAULT` when it holds the field's default, else :data:`GIVEN`.

  Raises:
    UnknownModelError: the model name is not registered.
    ConfigError: a value is out of range or not one of the valid names.
  """
  given = dict(given or {})
  spec = models.get_spec(config.model)
  unknown = set(spec.recipe) - set(RECIPE_FIELDS)
  if unknown:
    raise ConfigError(
      f"the recipe of {spec.name} sets {sorted(unknown)}, which are not "
      f"recipe fields ({', '.join(RECIPE_FIELDS)})"
    )
  recipe = recipe_values(spec.name)
  layer = {n: RECIPE if n in spec.recipe else DEFAULT for n in RECIPE_FIELDS}
  if config.optimizer is not None and config.optimizer != recipe["optimizer"]:
    _choice("optimizer", config.optimizer, OPTIMIZERS)
    recipe |= {"optimizer": config.optimizer, **OPTIMIZER_DEFAULTS[config.optimizer]}
    layer |= dict.fromkeys(OPTIMIZER_DEFAULTS[config.optimizer], OPTIMIZER_DEFAULT)
  filled = {n: recipe[n] for n in RECIPE_FIELDS if getattr(config, n) is None}
  if (config.adversarial or recipe["adversarial"]) == "none":
    # The attack's settings mean nothing without an attack: a standard run is one run
    # whatever they say (a sweep over --adversarial=none,fgsm names it as the plain recipe).
    filled |= {n: recipe[n] for n in ADVERSARIAL_FIELDS}
  origins = {
    n: layer[n]
    if n in filled
    else given.get(n, DEFAULT if getattr(config, n) == f.default else GIVEN)
    for n, f in FIELDS.items()
  }
  transfer = _transfer_settings(config)
  origins |= {n: DEFAULT for n, v in transfer.items() if v == FIELDS[n].default}
  config = config.replace(model=spec.name, **filled, **transfer)
  validate(config)
  return Resolved(config, origins)


def _transfer_settings(config: Config) -> dict[str, Any]:
  """The transfer fields as a run means them: ``init_from`` with ``{seed}`` replaced by the
  seed (so a sweep names the source run of each seed), and without a source run, no source
  and the other two at their defaults (they mean nothing then: a sweep over
  ``--init_from=none,RUN --freeze=none,features`` trains one run from scratch)."""
  source = str(config.init_from or "").strip()
  if source.lower() == NO_SOURCE:
    source = ""
  source = source.replace("{seed}", str(config.seed))
  if not source:
    return {"init_from": "", "reinit_head": False, "freeze": "none"}
  return {"init_from": source} if source != config.init_from else {}


def format_value(value: Any) -> str:
  """A setting's value as a person reads it: ``0.001``, ``true``, ``mnist``."""
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, float):
    return f"{value:g}"
  if isinstance(value, (list, tuple)):
    return ",".join(format_value(v) for v in value)
  return "none" if value is None else str(value)


def describe(values: Mapping[str, Any], origins: Mapping[str, str]) -> list[str]:
  """One aligned line per setting: its name, its value and where the value came from."""
  texts = {n: format_value(v) for n, v in values.items()}
  name_width = max(map(len, texts), default=0)
  value_width = max(map(len, texts.values()), default=0)
  return [
    f"{n:<{name_width}}  {t:<{value_width}}  {origins.get(n, DEFAULT)}".rstrip()
    for n, t in texts.items()
  ]


# Fields every run is named by anyway, or that never name one.
_NAMED_ALWAYS = ("model", "optimizer", "seed")


def own_settings(config: Config) -> dict[str, Any]:
  """The settings of a resolved ``config`` that differ from its model's recipe and defaults.

  Model, optimizer, seed and the implementation fields are left out: what is left is what
  sets a run apart from its model's recipe (``{"learning_rate": 0.003}``).
  """
  recipe = resolve(Config(model=config.model, optimizer=config.optimizer)).to_dict()
  return {
    k: v
    for k, v in config.to_dict().items()
    if k not in _NAMED_ALWAYS and k not in IMPLEMENTATION_FIELDS and v != recipe[k]
  }


def varied_settings(configs: list[Config]) -> list[str]:
  """The settings that differ among ``configs`` away from their recipes.

  Two models whose recipes differ in batch size vary nothing; a grid over learning rates
  varies ``learning_rate``.
  """
  own = [own_settings(c) for c in configs]
  names = dict.fromkeys(k for o in own for k in o)
  return [k for k in names if len({repr(o.get(k, "recipe")) for o in own}) > 1]


def _choice(name: str, value: str, valid: tuple[str, ...]) -> None:
  if value not in valid:
    raise ConfigError(f"unknown {name} {value!r}; valid values are: {', '.join(valid)}")


def _positive(name: str, value: float) -> None:
  if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
    raise ConfigError(f"{name} must be a positive number, got {value!r}")


def validate(config: Config) -> None:
  """Checks a resolved config; cheap, so it runs before any data or compute."""
  models.get_spec(config.model)
  for name, field in FIELDS.items():
    if field.metadata["choices"]:
      _choice(name, getattr(config, name), field.metadata["choices"])
  try:
    models.fast_ops_mode(config.fast_ops)  # not use_fast_ops: that would start a backend
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _positive("learning_rate", config.learning_rate)
  _positive("batch_size", config.batch_size)
  _positive("epochs", config.epochs)
  _positive("eval_batch_size", config.eval_batch_size)
  for name in ("batch_size", "epochs", "eval_batch_size", "validation_size", "train_subset"):
    if not isinstance(getattr(config, name), int) or isinstance(getattr(config, name), bool):
      raise ConfigError(f"{name} must be an integer, got {getattr(config, name)!r}")
  if config.validation_size < 0 or config.train_subset < 0:
    raise ConfigError("validation_size and train_subset must be >= 0")
  if not 0 <= config.label_smoothing < 1:
    raise ConfigError(f"label_smoothing must be in [0, 1), got {config.label_smoothing}")
  if not 0 <= config.momentum < 1:
    raise ConfigError(f"momentum must be in [0, 1), got {config.momentum}")
  if config.weight_decay < 0:
    raise ConfigError(f"weight_decay must be >= 0, got {config.weight_decay}")
  if not 0 <= config.rotation <= 180:
    raise ConfigError(f"rotation must be in [0, 180] degrees, got {config.rotation}")
  if config.shift < 0:
    raise ConfigError(f"shift must be >= 0 pixels, got {config.shift}")
  if not 0 <= config.zoom < 1:
    raise ConfigError(f"zoom must be in [0, 1), got {config.zoom}")
  if config.elastic_alpha < 0:
    raise ConfigError(f"elastic_alpha must be >= 0 pixels, got {config.elastic_alpha}")
  _positive("elastic_sigma", config.elastic_sigma)
  if not 0 <= config.ema < 1:
    raise ConfigError(f"ema must be in [0, 1) (0: no averaging), got {config.ema}")
  dropout = config.dropout
  if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
    raise ConfigError(
      f"dropout must be in [0, 1) (0: none), got {config.dropout!r}: give --dropout=0.5 "
      "for instance"
    )
  _validate_adversarial(config)
  if not isinstance(config.init_from, str) or not isinstance(config.reinit_head, bool):
    raise ConfigError(
      f"init_from must be a run's folder and reinit_head true or false, got "
      f"{config.init_from!r} and {config.reinit_head!r}"
    )
  if config.weight_decay and config.optimizer == "adam":
    raise ConfigError("weight_decay needs --optimizer=adamw or sgd (adam has none)")


def _validate_adversarial(config: Config) -> None:
  if config.adversarial == "none":
    return
  eps = config.adversarial_eps
  if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps <= 1:
    raise ConfigError(
      f"adversarial_eps must be in (0, 1] (images are in [0, 1]), got {eps!r}: "
      "give --adversarial_eps=0.3 for instance"
    )
  for name in ("adversarial_steps", "robust_val_steps"):
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ConfigError(f"{name} must be an integer >= 1, got {value!r}: give --{name}=10")
  for name in ("adversarial_warmup", "robust_val_size"):
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
  if config.adversarial_warmup > config.epochs:
    raise ConfigError(
      f"adversarial_warmup ({config.adversarial_warmup} epochs) is longer than the run "
      f"({config.epochs} epochs): lower --adversarial_warmup"
    )
  step = config.adversarial_step_size
  if not (isinstance(step, (int, float)) and math.isfinite(step) and step >= 0):
    raise ConfigError(f"adversarial_step_size must be >= 0 (0: automatic), got {step!r}")
  _positive("trades_beta", config.trades_beta)
  if config.robust_val_size > config.validation_size:
    raise ConfigError(
      f"robust_val_size {config.robust_val_size} is larger than the validation split "
      f"({config.validation_size} images): lower --robust_val_size"
    )


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
