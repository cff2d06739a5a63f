"""What the entry points share: flags generated from the Config, start-up, errors.

Every field of :class:`digits_jax.config.Config` is a flag of the same name
(:func:`define_config_flags`), with the field's help; recipe fields left unset take the
value of each model's source recipe. The sweep takes comma-separated lists instead.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

import absl.logging
import jax
from absl import flags

from digits_jax import data
from digits_jax.config import FIELDS, RECIPE_FIELDS, Config, ConfigError
from digits_jax.models import UnknownModelError, native
from digits_jax.runs import RunDirError
from digits_jax.training import checkpoints, distributed
from digits_jax.training.history import TrainingDivergedError

flags.DEFINE_string(
  "manual_dir",
  None,
  "Folder with the four original MNIST IDX files (gzipped or not); nothing "
  f"then touches the network. Default: the environment variable "
  f"{data.MANUAL_DIR_ENV}.",
)
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data_dir (default: tfds' own).")
flags.DEFINE_enum(
  "data_backend",
  "auto",
  list(data.BACKENDS),
  "tfds, idx (reads the IDX files directly; no TensorFlow needed), or auto: "
  "tfds when TensorFlow is installed.",
)
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


def grid_from_flags(names: Sequence[str]) -> dict[str, list[Any]]:
  """The values of the list flags ``names`` that were given, parsed (a sweep's grid)."""
  return {
    n: [parse_value(n, v) for v in FLAGS[n].value] for n in names if FLAGS[n].value is not None
  }


def load_data(config: Config) -> data.Datasets:
  return data.load_datasets(
    config.dataset,
    manual_dir=FLAGS.manual_dir,
    data_dir=FLAGS.data_dir,
    validation_size=config.validation_size,
    backend=FLAGS.data_backend,
  )


def setup(*, multiprocess: bool = False) -> None:
  """Start-up of every entry point: logging, and the process-wide settings it opts into.

  With ``multiprocess`` (train and sweep), the process first joins a multi-process
  runtime as the distributed flags say (:func:`digits_jax.training.distributed.initialize`),
  exiting with the reason when it cannot.
  Progress lines go to stderr (orbax's per-checkpoint chatter only when asked for);
  orbax's noise after a failed restore is dropped
  (:func:`digits_jax.training.checkpoints.quiet_abandoned_reads`); on CPU, with
  ``--tune_malloc``, freed memory stays mapped between steps
  (:func:`digits_jax.models.native.tune_allocator`).
  """
  logging.basicConfig(
    level=logging.INFO,
    format="%(asctime)s %(message)s",
    datefmt="%H:%M:%S",
    stream=sys.stderr,
    force=True,
  )
  absl.logging.set_verbosity(absl.logging.WARNING)
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


def fail(error: Exception) -> None:
  """Exits non-zero with the error's message and no traceback."""
  sys.exit(f"error: {error}")
