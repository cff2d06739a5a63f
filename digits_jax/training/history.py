"""A run's per-epoch record (the rows of ``metrics.jsonl``) and what is decided from it.

One row per epoch: ``epoch``, ``epoch_seconds``, ``train_loss``, ``train_accuracy`` and,
with a validation split, ``val_loss`` and ``val_accuracy`` (and, in adversarial training,
``val_robust_accuracy``). The best epoch -- the one whose checkpoint is tested -- is chosen
here, from validation figures alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


class TrainingDivergedError(RuntimeError):
  """The loss became NaN or infinite."""


def epoch_row(
  epoch: int,
  seconds: float,
  step_metrics: Mapping[str, np.ndarray],
  validation: Mapping[str, float] | None = None,
) -> dict[str, Any]:
  """The ``metrics.jsonl`` row of one epoch, from its per-step metrics and validation."""
  row = {
    "epoch": epoch,
    "epoch_seconds": seconds,
    "train_loss": float(np.mean(step_metrics["loss"])),
    "train_accuracy": float(np.mean(step_metrics["accuracy"])),
  }
  if validation is not None:
    row |= {"val_loss": validation["loss"], "val_accuracy": validation["accuracy"]}
    if "robust_accuracy" in validation:
      row["val_robust_accuracy"] = validation["robust_accuracy"]
  return row


def score(row: Mapping[str, Any]) -> float:
  """What the best checkpoint maximises: robust validation accuracy where the row has it
  (adversarial training), else validation accuracy, or else the epoch.

  Without a validation split the last epoch is "best": nothing else may choose.
  """
  val = row.get("val_robust_accuracy", row.get("val_accuracy"))
  return float(row["epoch"]) if val is None else val


# A fall of robust validation accuracy this far below its best so far (while clean accuracy
# holds) is catastrophic overfitting (Wong et al. 2020: PGD accuracy drops towards zero
# within an epoch while FGSM accuracy stays high).
COLLAPSE_DROP = 0.2


def collapsed(history: Sequence[Mapping[str, Any]]) -> bool:
  """Whether the last row's robust validation accuracy fell at least :data:`COLLAPSE_DROP`
  below the best of the earlier rows."""
  robust = [r["val_robust_accuracy"] for r in history if "val_robust_accuracy" in r]
  if len(robust) < 2 or "val_robust_accuracy" not in history[-1]:
    return False
  return max(robust[:-1]) - robust[-1] >= COLLAPSE_DROP


def collapse_epochs(history: Sequence[Mapping[str, Any]]) -> list[int]:
  """The epochs at which :func:`collapsed` held."""
  return [r["epoch"] for i, r in enumerate(history) if collapsed(history[: i + 1])]


def best_epoch(history: Sequence[Mapping[str, Any]]) -> int | None:
  """The epoch of the best checkpoint: highest :func:`score`, the earliest on ties."""
  best = None
  for row in history:
    if best is None or score(row) > score(best):
      best = row
  return None if best is None else best["epoch"]


def check_finite(step_losses: np.ndarray, epoch: int) -> None:
  """Stops a run whose loss became NaN or infinite during ``epoch``.

  Called before anything of the epoch is saved, so the files of the run stay those of
  the last good epoch.

  Raises:
    TrainingDivergedError: naming the epoch, the step and what was kept.
  """
  step_losses = np.asarray(step_losses)
  bad = np.flatnonzero(~np.isfinite(step_losses))
  if bad.size:
    step, steps = int(bad[0]) + 1, step_losses.size
    kept = (
      "no epoch finished, so nothing was saved"
      if epoch == 1
      else f"the checkpoints and metrics.jsonl of epoch {epoch - 1}, the last good one, are kept"
    )
    raise TrainingDivergedError(
      f"training diverged: the loss became {step_losses[bad[0]]} at epoch {epoch}, step "
      f"{step} of {steps} (step {(epoch - 1) * steps + step} of the run); stopped, and {kept}. "
      "Lower --learning_rate (or check the data), then start again with --overwrite or in "
      "another --workdir."
    )
