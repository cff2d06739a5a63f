"""Checkpoints through orbax: the best-by-validation model and the state to resume.

Two orbax managers under ``<workdir>/checkpoints``:

* ``best/`` -- :class:`BestCheckpoint`, the variables of the epoch with the best
  validation accuracy so far; the test metrics come from it.
* ``latest/`` -- :class:`LatestCheckpoint`, the whole train state (parameters,
  BatchNorm statistics, optimizer state, step) at the end of the last finished
  epoch, from which a killed run resumes.

Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a killed run never leaves a half-written checkpoint under a step's
name; the temporary directories of an interrupted save are deleted when a manager
opens. It reads back plain arrays and JSON (no unpickling of arbitrary files).
Anything orbax cannot read, or a checkpoint of another run, raises
:class:`CheckpointError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import serialization

from digits_jax import files
from digits_jax.config import ConfigError, differences, identity_of


class CheckpointError(RuntimeError):
  """A checkpoint directory that cannot be read as this run's checkpoint."""


# How a user gets past an unusable checkpoint; ends every CheckpointError message.
FIX_HINT = (
  "Move the work directory away, or pass --overwrite to delete its results and start again."
)


def _brief(e: BaseException, limit: int = 300) -> str:
  """``Type: first line of the message``, cut short: orbax's messages run to pages."""
  lines = str(e).strip().splitlines()
  text = lines[0] if lines else ""
  return f"{type(e).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


# What asyncio logs about the futures of an abandoned read.
_ABANDONED = (
  "Task exception was never retrieved",
  "Future exception was never retrieved",
  "Task was destroyed but it is pending",
)


def quiet_abandoned_reads() -> None:
  """Drops asyncio's log records about the reads orbax abandons when a restore fails.

  When one array of a checkpoint cannot be read, orbax gives up on the others while they
  are still being read, and asyncio logs "Future exception was never retrieved" for each.
  A filter on the ``asyncio`` logger drops those records; every other record is logged as
  before. The entry points call it at start-up (``experiments.common``); a library user
  opts in by calling it. A damaged checkpoint of this program does not get that far: its
  manifest (:func:`write_manifest`) refuses it before orbax reads an array.
  """
  logger = logging.getLogger("asyncio")
  if not any(getattr(f, "_drops_abandoned_reads", False) for f in logger.filters):
    logger.addFilter(_AbandonedReads())


class _AbandonedReads(logging.Filter):
  _drops_abandoned_reads = True

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_ABANDONED)


# Beside the files orbax writes in a step's directory: each file's size and SHA-256.
MANIFEST = "digits_jax_manifest.json"


def _digest(path: Path) -> str:
  h = hashlib.sha256()
  with path.open("rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def write_manifest(step_dir: Path) -> None:
  """Records the size and SHA-256 of every file of a finished checkpoint.

  Orbax keeps no checksums, and a restore that meets a damaged array file fails while it
  is still reading the others (their late callbacks then find its event loop closed, and
  Python prints each as an ignored exception). :func:`verify_manifest` reads this file
  first, so a damaged checkpoint is refused by name before any array is read. Written
  after orbax has renamed the step's directory into place, by the first process only; a
  run killed in between leaves a checkpoint without a manifest, which restores unchecked.
  """
  if jax.process_index() != 0:
    return
  listed = {
    str(p.relative_to(step_dir)): {"bytes": p.stat().st_size, "sha256": _digest(p)}
    for p in sorted(step_dir.rglob("*"))
    if p.is_file() and p.name != MANIFEST
  }
  files.write_json(step_dir / MANIFEST, {"files": listed})


def verify_manifest(step_dir: Path) -> None:
  """Raises :class:`CheckpointError` naming the first file that differs from the manifest.

  A checkpoint without a manifest (its run was killed right after the save, or it was
  written before manifests existed) passes unchecked.
  """
  path = step_dir / MANIFEST
  if not path.exists():
    return
  try:
    files = json.loads(path.read_text())["files"]
    expected = {str(name): (int(f["bytes"]), str(f["sha256"])) for name, f in files.items()}
  except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
    raise CheckpointError(
      f"checkpoint {step_dir} cannot be read: its manifest {MANIFEST} is not valid "
      f"({type(e).__name__}); it is corrupt. {FIX_HINT}"
    ) from e
  for name, (size, sha256) in expected.items():
    file = step_dir / name
    if not file.is_file():
      problem = "is missing"
    elif file.stat().st_size != size:
      problem = f"has {file.stat().st_size} bytes, {size} when written"
    elif _digest(file) != sha256:
      problem = "differs from its checksum when written"
    else:
      continue
    raise CheckpointError(
      f"checkpoint {step_dir} cannot be read: its file {name} {problem}; it is corrupt. {FIX_HINT}"
    )


def _open_manager(directory: Path, **options: Any) -> ocp.CheckpointManager:
  """An orbax manager, after deleting the temporary directories of an interrupted save.

  The deletion happens here, before the manager opens, rather than in orbax's background
  thread, so that a program that stops right after opening (on a corrupt checkpoint, say)
  does not print the thread's failure at exit.
  """
  try:
    if directory.is_dir() and jax.process_index() == 0:
      for path in ocp.utils.tmp_checkpoints(directory):
        shutil.rmtree(path.get(), ignore_errors=True)
    return ocp.CheckpointManager(
      directory,
      options=ocp.CheckpointManagerOptions(
        enable_async_checkpointing=False, cleanup_tmp_directories=False, **options
      ),
    )
  except Exception as e:  # orbax raises many types for unreadable metadata
    raise CheckpointError(
      f"the checkpoint directory {directory} cannot be read ({_brief(e)}); it is corrupt "
      f"or not an orbax checkpoint directory. {FIX_HINT}"
    ) from e


class BestCheckpoint:
  """Keeps one checkpoint: the epoch with the highest validation accuracy so far.

  Ties keep the earlier epoch, so a plateau does not move the choice.
  """

  def __init__(self, directory: str | os.PathLike):
    self.directory = Path(directory).absolute() / "best"
    self._manager = _open_manager(
      self.directory, max_to_keep=1, best_fn=lambda m: m["score"], best_mode="max"
    )
    self._best_score = self._existing_best_score()

  def _existing_best_score(self) -> float | None:
    try:
      step = self._manager.best_step()
      if step is None:
        return None
      score = (self._manager.metrics(step) or {}).get("score")
      if not isinstance(score, (int, float)):
        raise ValueError(f"its metrics hold no numeric 'score' (found {score!r})")
      return float(score)
    except Exception as e:  # a foreign manager's metrics: best_fn's KeyError, ...
      raise CheckpointError(
        f"the best-checkpoint directory {self.directory} cannot be read ({_brief(e)}); it is "
        f"corrupt or not this program's. {FIX_HINT}"
      ) from e

  def maybe_save(self, epoch: int, variables: Any, score: float) -> bool:
    """Saves ``variables`` as epoch ``epoch`` if ``score`` beats the best so far."""
    if self._best_score is not None and score <= self._best_score:
      return False
    self._manager.save(
      epoch, args=ocp.args.StandardSave(variables), metrics={"score": float(score)}
    )
    self._manager.wait_until_finished()
    write_manifest(self.directory / str(epoch))
    self._best_score = score
    return True

  def best_epoch(self) -> int | None:
    return self._manager.best_step()

  @staticmethod
  def discard(directory: str | os.PathLike) -> None:
    """Deletes the best checkpoint under ``directory`` (before a run starts from scratch)."""
    shutil.rmtree(Path(directory).absolute() / "best", ignore_errors=True)

  def restore(self, like: Any) -> Any:
    """Restores the best checkpoint into the structure (shapes, dtypes) of ``like``."""
    step = self.best_epoch()
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    verify_manifest(self.directory / str(step))
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(like))
    except Exception as e:  # orbax raises many types for unreadable or foreign trees
      raise CheckpointError(
        f"checkpoint {self.directory}/{step} cannot be restored as this model "
        f"({_brief(e)}); it may be corrupt or from another config. {FIX_HINT}"
      ) from e


class LatestCheckpoint:
  """The whole train state at the end of the last finished epoch: what a run resumes from.

  One is kept: orbax deletes the previous epoch's only after the new one is complete.
  Each carries ``identity`` (the run's :meth:`digits_jax.config.Config.identity`), and
  :meth:`restore` refuses a checkpoint with another identity, e.g. one copied from
  another run.
  """

  def __init__(self, directory: str | os.PathLike, identity: dict[str, Any]):
    self.directory = Path(directory).absolute() / "latest"
    self._identity = identity
    self._manager = _open_manager(self.directory, max_to_keep=1)

  def epoch(self) -> int | None:
    """The epoch of the checkpoint, ``None`` when there is none."""
    return self._manager.latest_step()

  def save(self, epoch: int, state: Any) -> None:
    """Saves ``state`` (a Flax-serializable object, e.g. a TrainState) as epoch ``epoch``."""
    self._manager.save(
      epoch,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(serialization.to_state_dict(state)),
        run=ocp.args.JsonSave({"epoch": epoch, "identity": self._identity}),
      ),
    )
    self._manager.wait_until_finished()
    write_manifest(self.directory / str(epoch))

  def _restore_state(self, epoch: int, target: Any) -> Any:
    return self._manager.restore(
      epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
    ).state

  def restore(self, like: Any) -> tuple[int, Any]:
    """The checkpoint's epoch and state, the state rebuilt in the structure of ``like``.

    Raises:
      CheckpointError: there is no checkpoint, it is unreadable, or it is another run's
        (another config, or arrays that do not fit ``like``).
    """
    epoch = self.epoch()
    if epoch is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    path = self.directory / str(epoch)
    verify_manifest(path)
    try:
      run = self._manager.restore(epoch, args=ocp.args.Composite(run=ocp.args.JsonRestore())).run
      ours = run["identity"]
    except Exception as e:  # orbax raises many types for unreadable or foreign trees
      raise CheckpointError(
        f"checkpoint {path} cannot be read ({_brief(e)}); it is corrupt or was not written "
        f"by this program. {FIX_HINT}"
      ) from e
    try:
      theirs = identity_of(ours)
      diffs = "; ".join(differences(theirs, self._identity))
    except (ConfigError, TypeError) as e:
      diffs = f"its identity {ours!r} is not a config ({e})"
    if diffs:
      raise CheckpointError(f"checkpoint {path} belongs to another run ({diffs}). {FIX_HINT}")
    target = serialization.to_state_dict(like)
    try:
      try:
        saved = self._restore_state(epoch, target)
      except ValueError:
        if not isinstance(target, dict) or target.get("ema") != {}:
          raise
        # Written before train states had an ``ema`` field (empty without --ema).
        saved = self._restore_state(epoch, {k: v for k, v in target.items() if k != "ema"})
        saved = {**saved, "ema": {}}
      return epoch, serialization.from_state_dict(like, saved)
    except Exception as e:  # orbax raises many types for unreadable or foreign trees
      raise CheckpointError(
        f"checkpoint {path} cannot be restored as this model ({_brief(e)}); it is corrupt "
        f"or from another config. {FIX_HINT}"
      ) from e
