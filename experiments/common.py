"""What the entry points share: flags generated from the Config, start-up, errors.

Every field of :class:`digits_jax.config.Config` is a flag of the same name
(:func:`define_config_flags`), with the field's help; recipe fields left unset take the
value of each model's source recipe. The sweep takes comma-separated lists instead.
``--dry_run`` prints the resolved settings, each with its origin (:func:`flag_origin`,
:func:`digits_jax.config.resolve_with_origins`), and exits before any data or training.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from digits_jax import data
from digits_jax.config import (
  COMMAND_LINE,
  CONFIG_FILE,
  DEFAULT,
  FIELDS,
  RECIPE_FIELDS,
  Config,
  ConfigError,
  Resolved,
  describe,
  resolve_with_origins,
)
from digits_jax.models import UnknownModelError, native
from digits_jax.rundir import RunDirError
from digits_jax.training import checkpoints, distributed
from digits_jax.training.history import TrainingDivergedError
from experiments import data_flags, logs
from experiments.data_flags import load_data  # noqa: F401  (the entry points' data loader)

flags.adopt_module_key_flags(data_flags)  # listed by --help of every entry point using common
flags.DEFINE_string(
  "workdir",
  None,
  "Directory for the results (created). Started again on the same directory, "
  "a run resumes from its last checkpoint, or reports its results if finished.",
)
flags.DEFINE_bool(
  "overwrite",
  False,
  "Delete the results already in --workdir (of any config) and start from "
  "scratch. Without it, a --workdir holding another config's run is refused.",
)
flags.DEFINE_bool(
  "plots",
  True,
  "Draw each run's figures into <run>/plots/ (curves, confusion matrix, image grids, "
  "filters, activations, saliency), the slowest of its reports; without them a run writes "
  "its text reports only, and python -m experiments.evaluate --workdir=RUN draws them later.",
)
flags.DEFINE_bool(
  "robustness",
  False,
  "After each run's test evaluation, evaluate it under corruptions and attacks, its "
  "calibration and cost with the default settings (<run>/robustness/); python -m "
  "experiments.robustness does the same for finished runs, with every setting a flag.",
)
flags.DEFINE_bool(
  "dry_run",
  False,
  "Print the resolved settings, each with where its value came from (default, recipe, "
  "config file, command line), and exit without loading data or training.",
)
flags.DEFINE_bool(
  "tune_malloc",
  True,
  "On CPU, keep freed memory mapped between training steps (glibc mallopt; "
  "the process keeps its peak heap). See docs/speed.md.",
)

flags.DEFINE_enum(
  "distributed",
  "auto",
  list(distributed.MODES),
  "Join a multi-process JAX runtime (one run over the devices of several hosts). auto: "
  "when --coordinator_address, --num_processes or --process_id is given, or JAX detects "
  "a cluster (SLURM, Cloud TPU, Open MPI, ...); on: always; off: never. See docs/scaling.md.",
)
flags.DEFINE_string(
  "coordinator_address", None, "HOST:PORT of process 0 in a multi-process run (all processes)."
)
flags.DEFINE_integer("num_processes", None, "How many processes a multi-process run has.")
flags.DEFINE_integer("process_id", None, "This process's id in a multi-process run: 0, 1, ...")
flags.DEFINE_integer(
  "distributed_timeout",
  60,
  "Seconds to wait for every process of a multi-process run to join before failing, and "
  "for a silent peer process before stopping with an error (exit status 3). See "
  "docs/scaling.md.",
)

FLAGS = flags.FLAGS

# The errors a user's input can cause; each message names the problem and the fix.
USER_ERRORS = (
  ConfigError,
  UnknownModelError,
  data.DataError,
  checkpoints.CheckpointError,
  TrainingDivergedError,
  RunDirError,
  distributed.DistributedError,
)


def _field_type(field: dataclasses.Field) -> type:
  """int, float, bool or str: the type of a Config field, ``None`` taken away."""
  hint = typing.get_type_hints(Config)[field.name]
  if isinstance(hint, types.UnionType):
    hint = next(t for t in typing.get_args(hint) if t is not type(None))
  return hint


def _help(name: str) -> str:
  field = FIELDS[name]
  text = field.metadata["help"]
  if field.metadata["choices"]:
    text += f" One of: {', '.join(field.metadata['choices'])}."
  if name in RECIPE_FIELDS:
    text += " Default: the model's recipe."
  return text


def define_config_flags(*, lists: bool = False, skip: Sequence[str] = ()) -> None:
  """Defines a flag for every Config field not in ``skip``.

  Args:
    lists: each flag takes a comma-separated list of values (a sweep's grid), and
      defaults to ``None`` (the field's default, or the recipe's).
    skip: fields the entry point defines itself.
  """
  for name, field in FIELDS.items():
    if name in skip:
      continue
    kind = _field_type(field)
    default = None if lists or name in RECIPE_FIELDS else field.default
    if lists:
      flags.DEFINE_list(name, default, _help(name) + " Comma-separated values: one run each.")
    elif kind is bool:
      flags.DEFINE_bool(name, default, _help(name))
    elif kind is int:
      flags.DEFINE_integer(name, default, _help(name))
    elif kind is float:
      flags.DEFINE_float(name, default, _help(name))
    else:
      flags.DEFINE_string(name, default, _help(name))


def parse_value(name: str, text: str) -> Any:
  """One value of a list flag as the Config field's type.

  Raises:
    ConfigError: naming the flag and the value.
  """
  kind = _field_type(FIELDS[name])
  text = text.strip()
  try:
    if kind is bool:
      if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError(text)
      return text.lower() in ("true", "1")
    return kind(text)
  except ValueError:
    raise ConfigError(f"--{name}: {text!r} is not a valid {kind.__name__}") from None


def config_from_flags(skip: Sequence[str] = (), **overrides: Any) -> Config:
  """The Config the scalar config flags describe (``overrides`` win)."""
  values = {n: FLAGS[n].value for n in FIELDS if n not in skip and n in FLAGS}
  return Config(**(values | overrides))


def resolved_config() -> Resolved:
  """The resolved Config the scalar config flags describe, with the origin of every value.

  Raises:
    ConfigError, UnknownModelError: a value that cannot work.
  """
  given = {n: flag_origin(n) for n in FIELDS if n in FLAGS}
  return resolve_with_origins(config_from_flags(), {n: o for n, o in given.items() if o != DEFAULT})


def grid_from_flags(names: Sequence[str]) -> dict[str, list[Any]]:
  """The values of the list flags ``names`` that were given, parsed (a sweep's grid)."""
  return {
    n: [parse_value(n, v) for v in FLAGS[n].value] for n in names if FLAGS[n].value is not None
  }


def evaluate_robustness(config: Config, workdir, datasets: data.Datasets) -> None:
  """``--robustness``: the robustness evaluation of a finished run, default settings, one
  line per part (a no-op for a run already evaluated; only process 0 of several)."""
  from digits_jax import robustness_eval

  if jax.process_index() != 0:
    return
  name = pathlib.Path(workdir).name
  summary = robustness_eval.evaluate_run(
    workdir, datasets=datasets, progress=lambda line: print(f"{name}: {line}", flush=True)
  )
  folder = pathlib.Path(workdir) / "robustness"
  print(f"{name}: robustness in {folder} ({summary['total_seconds']:.0f} s)")


def setup(*, multiprocess: bool = False) -> None:
  """Start-up of every entry point: logging, and the process-wide settings it opts into.

  With ``multiprocess`` (train and sweep), the process first joins a multi-process
  runtime as the distributed flags say (:func:`digits_jax.training.distributed.initialize`),
  exiting with the reason when it cannot.
  Progress lines go to stderr (orbax's per-checkpoint chatter only when asked for);
  asyncio's log records about the reads orbax abandons after a failed restore are dropped
  (:func:`digits_jax.training.checkpoints.quiet_abandoned_reads`); on CPU, with
  ``--tune_malloc``, freed memory stays mapped between steps
  (:func:`digits_jax.models.native.tune_allocator`).
  """
  logs.setup()
  if multiprocess:
    try:
      distributed.initialize(
        FLAGS.coordinator_address,
        FLAGS.num_processes,
        FLAGS.process_id,
        mode=FLAGS.distributed,
        timeout_s=FLAGS.distributed_timeout,
      )
    except (ConfigError, distributed.DistributedError) as e:
      fail(e)
  checkpoints.quiet_abandoned_reads()
  if FLAGS.tune_malloc and jax.default_backend() == "cpu":
    native.tune_allocator()


def parse_seeds(values: Sequence[str], name: str = "--seeds") -> list[int]:
  """Seeds from a list flag: integers and ranges, ``0,1,2`` or ``0-9`` (both ends included).

  Raises:
    ConfigError: a value that is neither, or no seed at all.
  """
  seeds = []
  for text in values:
    first, dash, last = text.strip().partition("-")
    try:
      seeds += list(range(int(first), int(last) + 1)) if dash else [int(first)]
    except ValueError:
      raise ConfigError(
        f"{name}: {text!r} is not a seed; give integers or ranges, e.g. 0,1,2 or 0-9"
      ) from None
  if not seeds:
    raise ConfigError(f"{name} names no seed; give integers or ranges, e.g. 0,1,2 or 0-9")
  return seeds


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, where a boolean field's list flag (a sweep's) also takes the bare form.

  ``--augment`` and ``--noaugment`` mean ``--augment=true`` and ``--augment=false``, as they
  do for train; ``--augment=true,false`` still sweeps both. For ``app.run(flags_parser=...)``.
  """
  bools = {n for n in FIELDS if _field_type(FIELDS[n]) is bool and n in FLAGS}
  bools = {n for n in bools if isinstance(FLAGS[n].parser, flags.ListParser)}
  out = []
  for arg in argv:
    name = arg[2:] if arg.startswith("--") else None
    if name in bools:
      arg = f"--{name}=true"
    elif name and name.startswith("no") and name[2:] in bools:
      arg = f"--{name[2:]}=false"
    out.append(arg)
  return app.parse_flags_with_usage(out)


def fail(error: Exception) -> None:
  """Exits non-zero with the error's message and no traceback."""
  sys.exit(f"error: {error}")


# An experiment as a file: configs/NAME.py, whose get_config() returns a ConfigDict of flag
# values. Precedence: a flag given on the command line, then --config.FIELD=VALUE, then the
# file, then the flag's default.
CONFIG_HELP = (
  "An experiment's config file, configs/NAME.py (its docstring gives the command, the cost "
  "and where the results live). --config.FIELD=VALUE overrides one of its fields; a flag "
  "given on the command line (--FIELD=VALUE) overrides both."
)


def define_config_file() -> None:
  """Defines ``--config`` (an ml_collections config file of this entry point's flags)."""
  config_flags.DEFINE_config_file("config", None, CONFIG_HELP, lock_config=True)


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """``get_config()`` of the config file at ``path`` (for tests and notebooks)."""
  spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  if spec is None or not os.path.isfile(path):
    raise ConfigError(f"config file {path} does not exist; the experiments are in configs/")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _as_flag_value(flag: flags.Flag, value: Any) -> Any:
  if isinstance(flag.parser, flags.ListParser):  # a list flag (a sweep's grid) takes strings
    if isinstance(value, str):
      return [v.strip() for v in value.split(",") if v.strip()]
    values = value if isinstance(value, (list, tuple)) else [value]
    return [str(v) for v in values]
  if isinstance(value, (list, tuple)):
    return ",".join(str(v) for v in value)
  return value


def config_file_values(config: ml_collections.ConfigDict, name: str = "--config") -> dict[str, Any]:
  """The flag values a config file sets, keyed by flag name.

  Raises:
    ConfigError: a field that is not a flag of this entry point.
  """
  unknown = [k for k in config.keys() if k not in FLAGS or k == "config"]
  if unknown:
    raise ConfigError(
      f"{name}: {', '.join(sorted(unknown))} is not a flag of this entry point; "
      "use the flag names that --help lists"
    )
  return {k: _as_flag_value(FLAGS[k], v) for k, v in config.items()}


# The flags apply_config_file set, each with its origin: CONFIG_FILE, or COMMAND_LINE for a
# --config.FIELD=VALUE override.
_from_config_file: dict[str, str] = {}


def apply_config_file() -> None:
  """Sets each flag the ``--config`` file names, unless it was given on the command line."""
  _from_config_file.clear()
  if "config" not in FLAGS or FLAGS.config is None:
    return
  name = f"--config={config_flags.get_config_filename(FLAGS['config'])}"
  overridden = config_flags.get_override_values(FLAGS["config"])
  for flag, value in config_file_values(FLAGS.config, name).items():
    if not FLAGS[flag].present:
      setattr(FLAGS, flag, value)
      _from_config_file[flag] = COMMAND_LINE if flag in overridden else CONFIG_FILE


def flag_origin(name: str) -> str:
  """Where the flag ``name``'s value came from: the command line (the flag, or a
  ``--config.FIELD`` override), the ``--config`` file (:func:`apply_config_file`), else
  its default."""
  if FLAGS[name].present:
    return COMMAND_LINE
  return _from_config_file.get(name, DEFAULT)


def flag_lines(names: Sequence[str], values: dict[str, Any] | None = None) -> list[str]:
  """:func:`digits_jax.config.describe` of the flags ``names``: value and origin each;
  ``values`` replaces a flag's value where the entry point computes one (a default
  workdir)."""
  values = {n: FLAGS[n].value for n in names} | (values or {})
  return describe(values, {n: flag_origin(n) for n in names})


def print_dry_run(sections: dict[str, list[str]]) -> None:
  """``--dry_run``'s output: each section's title, then its lines indented."""
  for title, lines in sections.items():
    print(f"{title}:")
    for line in lines:
      print(f"  {line}")
