"""Checkpoints through orbax: the best-by-validation model of a run.

Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a killed run never leaves a half-written checkpoint behind, and it
reads back plain arrays (no unpickling of arbitrary files).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint directory that cannot be read as this run's checkpoint."""


class BestCheckpoint:
  """Keeps one checkpoint: the epoch with the highest validation accuracy so far.

  Ties keep the earlier epoch, so a plateau does not move the choice.
  """

  def __init__(self, directory: str | os.PathLike):
    self.directory = Path(directory).absolute() / "best"
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda m: m["score"], best_mode="max",
            enable_async_checkpointing=False),
    )
    self._best_score = self._existing_best_score()

  def _existing_best_score(self) -> float | None:
    step = self._manager.best_step()
    if step is None:
      return None
    metrics = self._manager.metrics(step) or {}
    return metrics.get("score")

  def maybe_save(self, epoch: int, variables: Any, score: float) -> bool:
    """Saves ``variables`` as epoch ``epoch`` if ``score`` beats the best so far."""
    if self._best_score is not None and score <= self._best_score:
      return False
    self._manager.save(epoch, args=ocp.args.StandardSave(variables),
                       metrics={"score": float(score)})
    self._manager.wait_until_finished()
    self._best_score = score
    return True

  def best_epoch(self) -> int | None:
    return self._manager.best_step()

  def restore(self, like: Any) -> Any:
    """Restores the best checkpoint into the structure (shapes, dtypes) of ``like``."""
    step = self.best_epoch()
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(like))
    except Exception as e:  # orbax raises many types for unreadable or foreign trees
      raise CheckpointError(
          f"checkpoint {self.directory}/{step} cannot be restored as this model "
          f"({type(e).__name__}: {e}); it may be corrupt or from another config. "
          "Delete the work directory or pass --overwrite.") from e
