"""Transfer learning: a run that starts from the weights of another, finished run.

``--init_from=RUN`` copies the best checkpoint of ``RUN`` (params and batch_stats) into the
new run's freshly initialised model, layer by layer; every layer but the output layer (the
head, :mod:`digits_jax.models.roles`) must be present in both networks with the same
shapes. The head is copied too unless ``--reinit_head`` or its shape differs (another
class count). :func:`check` refuses a source that cannot serve, before any data is loaded;
:func:`load` restores its weights and :func:`apply` copies them.

The run records its source in ``config.json`` under :data:`SOURCE_RUN`: the folder, the
source's config identity and a SHA-256 of the weights copied (:func:`digest`), written with
the rest of ``config.json`` when the run is prepared; training checks the weights it copies
against that record (:func:`check_recorded`). A resumed run continues from its own
checkpoint and does not read the source again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from digits_jax import files, models
from digits_jax.config import Config, ConfigError
from digits_jax.data import NUM_CLASSES
from digits_jax.models import roles
from digits_jax.rundir import SOURCE_RUN, RunDirError, read_config
from digits_jax.training import checkpoints
from digits_jax.training.step import TrainState, variables_template

log = logging.getLogger(__name__)

_SCRATCH = "or train from scratch (--init_from=none)"


class TransferError(ConfigError):
  """A source run that cannot start this run; the message names the layers and the fix."""


@dataclasses.dataclass(frozen=True)
class Source:
  """A source run's best weights, restored.

  Attributes:
    path: the run's folder, as ``--init_from`` named it.
    config: its recorded config.
    best_epoch: the epoch of its best checkpoint.
    variables: ``params`` and ``batch_stats`` of that checkpoint, as numpy arrays.
    sha256: :func:`digest` of ``variables``.
  """

  path: Path
  config: Config
  best_epoch: int
  variables: Mapping[str, Any]
  sha256: str

  def record(self) -> dict[str, Any]:
    """What ``config.json`` keeps of the source (:data:`SOURCE_RUN`)."""
    return {
      "path": str(self.path),
      "config": self.config.identity(),
      "best_epoch": self.best_epoch,
      "sha256": self.sha256,
    }


def _leaves(tree: Mapping[str, Any]) -> dict[str, Any]:
  """``{"params/conv0/kernel": leaf, ...}``: a variables tree flattened by path, sorted."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  out = {"/".join(str(getattr(k, "key", k)) for k in path): leaf for path, leaf in flat}
  return dict(sorted(out.items()))


def digest(variables: Mapping[str, Any]) -> str:
  """SHA-256 of a variables tree: each leaf's path, dtype, shape and bytes, in path order."""
  h = hashlib.sha256()
  for path, leaf in _leaves(variables).items():
    leaf = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{path}:{leaf.dtype.str}:{leaf.shape};".encode())
    h.update(leaf.tobytes())
  return h.hexdigest()


def _shapes(config: Config, num_classes: int) -> dict[str, tuple[int, ...]]:
  """The leaf shapes of a config's model variables, computed without any compute."""
  model = models.create_model(config.model, fast="off", num_classes=num_classes)
  tree = models.variable_shapes(model)
  return {p: tuple(s.shape) for p, s in _leaves(tree).items()}


def _layer(path: str) -> str:
  """``params/block1/conv0/kernel`` -> ``block1/conv0``."""
  return "/".join(path.split("/")[1:-1])


def mismatches(
  source: Mapping[str, tuple[int, ...]], target: Mapping[str, tuple[int, ...]]
) -> list[str]:
  """Where two networks' leaf shapes (by path) differ outside the target's head, one line
  per layer: present in one only, or of other shapes."""
  head = roles.head_layer({p.split("/")[1] for p in target if p.startswith("params/")})
  problems: dict[str, list[str]] = {}
  for path in sorted(set(source) | set(target)):
    layer = _layer(path)
    if layer.split("/")[0] == head and path in source and path in target:
      continue  # the head may differ: it is then initialised afresh
    if path not in target:
      problems.setdefault(layer, []).append("only in the source run")
    elif path not in source:
      problems.setdefault(layer, []).append("only in this run's network")
    elif source[path] != target[path]:
      leaf = path.split("/")[-1]
      problems.setdefault(layer, []).append(
        f"{leaf} {source[path]} in the source run, {target[path]} here"
      )
  return [f"{layer} ({', '.join(dict.fromkeys(why))})" for layer, why in problems.items()]


def check(config: Config, num_classes: int = NUM_CLASSES) -> Config:
  """Checks that ``config.init_from`` names a finished run whose network matches this one;
  reads its config only (no weights, no data).

  Returns:
    The source run's recorded config.

  Raises:
    TransferError: no such folder, no run's config there, no checkpoint, or layers that
      differ (named, with the fix).
  """
  path = Path(config.init_from)
  if not path.is_dir():
    raise TransferError(
      f"--init_from={path}: no such run folder; give the --workdir of a finished run, {_SCRATCH}"
    )
  try:
    source, _ = read_config(path)
  except RunDirError as e:
    raise TransferError(f"--init_from={path} is not a run's folder ({e}); {_SCRATCH}") from e
  if not (path / "checkpoints" / "best").is_dir():
    raise TransferError(
      f"--init_from={path} has no checkpoint (checkpoints/best): the run stopped before its "
      "first epoch ended; finish it (its train command again resumes it), choose another "
      f"run, {_SCRATCH}"
    )
  problems = mismatches(_shapes(source, NUM_CLASSES), _shapes(config, num_classes))
  if problems:
    raise TransferError(
      f"--init_from={path}: its network ({source.model}) does not match this run's "
      f"({config.model}) beyond the output layer; layers that differ: {'; '.join(problems)}. "
      f"Start from a run of the same network (--model={source.model}), {_SCRATCH}"
    )
  return source


def load(config: Config, num_classes: int = NUM_CLASSES) -> Source:
  """Restores the best weights of the run ``config.init_from`` names, checked by :func:`check`.

  Raises:
    TransferError: see :func:`check`.
    CheckpointError: its checkpoint cannot be restored.
  """
  source = check(config, num_classes)
  path = Path(config.init_from)
  best = checkpoints.BestCheckpoint(path / "checkpoints")
  variables = jax.device_get(best.restore(variables_template(source.create_model(NUM_CLASSES))))
  variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats") or {}}
  return Source(path, source, best.best_epoch(), variables, digest(variables))


def apply(state: TrainState, source: Source, config: Config) -> TrainState:
  """``state`` with ``source``'s weights in every layer, the head excepted where
  ``config.reinit_head`` or its shape differs; the moving average (``config.ema``) restarts
  at the copied weights."""
  head = roles.head_layer(state.params)
  fresh_head = config.reinit_head or jax.tree_util.tree_map(
    np.shape, source.variables["params"].get(head)
  ) != jax.tree_util.tree_map(jnp.shape, state.params.get(head))

  def copy(target: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    return {
      k: v
      if k == head and fresh_head
      else jax.tree_util.tree_map(lambda t, s: jnp.asarray(s, t.dtype), v, given[k])
      for k, v in target.items()
    }

  state = state.replace(
    params=copy(state.params, source.variables["params"]),
    batch_stats=copy(state.batch_stats or {}, source.variables["batch_stats"]),
  )
  if state.ema:
    state = state.replace(
      ema=jax.tree_util.tree_map(
        jnp.copy, {"params": state.params, "batch_stats": state.batch_stats}
      )
    )
  log.info(
    "weights from %s (epoch %d)%s",
    source.path,
    source.best_epoch,
    f"; {head} initialised afresh" if fresh_head else "",
  )
  return state


def recorded(workdir: str | Path) -> dict[str, Any] | None:
  """The :data:`SOURCE_RUN` entry of a run's ``config.json``, if any."""
  path = Path(workdir) / "config.json"
  if not path.is_file():
    return None
  try:
    return files.read_json(path).get(SOURCE_RUN)
  except (OSError, ValueError, AttributeError):
    return None


def check_recorded(workdir: str | Path, source: Source) -> None:
  """Checks that ``source`` is the source ``config.json`` recorded when the run was prepared
  (:func:`digits_jax.runs.prepare`): a source run that went on training since then has
  other best weights, and the run would not start from what its config.json says.

  Raises:
    TransferError: the recorded source differs, or there is no record.
  """
  record = recorded(workdir)
  if record != source.record():
    raise TransferError(
      f"--init_from={source.path}: its best weights (epoch {source.best_epoch}, sha256 "
      f"{source.sha256[:12]}) are not those {Path(workdir) / 'config.json'} recorded when "
      f"this run was prepared ({_described(record)}): the source run changed since; start "
      "this run again with --overwrite to take its weights as they are now"
    )


def _described(record: Mapping[str, Any] | None) -> str:
  if not isinstance(record, Mapping):
    return "no record"
  return f"epoch {record.get('best_epoch')}, sha256 {str(record.get('sha256'))[:12]}"
