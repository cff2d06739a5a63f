"""The files of a run's robustness evaluation, in ``<run>/robustness/``, and their one reader.

Each part is written whole (temporary file, then rename) as soon as it is computed, so an
interrupted evaluation keeps what it finished and, started again with the same settings,
computes only the rest; ``summary.json`` comes last and marks the evaluation finished.

* ``settings.json``: the settings that make the stored parts comparable (what was attacked,
  how strongly, with which seeds, on which corrupted images).
* ``corruptions/<name>.npz``: ``predictions`` and ``labels`` (uint8) of every image of one
  corruption of the test set.
* ``attacks/<attack>-eps<eps>.npz``: ``indices`` into the test set (the fixed subset),
  ``labels`` and ``predictions`` of the attacked images; ``attacks/<attack>-eps<eps>.json``:
  the attack's loss after each step, its seconds.
* ``calibration.json``, ``cost.json``, ``summary.json``.

Predicted labels, not images or logits, are what is kept: a few kilobytes per part, small
enough to commit, and all a paired comparison of networks needs.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from digits_jax import files
from digits_jax.rundir import RunDirError

DIRECTORY = "robustness"
SETTINGS = "settings.json"
SUMMARY = "summary.json"
CALIBRATION = "calibration.json"
COST = "cost.json"


# Settings added after evaluations were first written, with the value those evaluations used.
ADDED_SETTINGS = {"targeted": False}


def settings_of(saved: Mapping[str, Any]) -> dict[str, Any]:
  """Recorded evaluation settings as they would be written now (later-added ones filled in)."""
  return ADDED_SETTINGS | dict(saved)


class RobustnessFilesError(RunDirError):
  """A robustness folder that cannot be read; the message names the file and the fix."""


def folder(run_dir: str | os.PathLike) -> Path:
  return Path(run_dir) / DIRECTORY


def eps_name(eps: float) -> str:
  return f"eps{eps:g}"


def corruption_path(run_dir: str | os.PathLike, name: str) -> Path:
  return folder(run_dir) / "corruptions" / f"{name}.npz"


def attack_path(run_dir: str | os.PathLike, attack: str, eps: float, suffix: str = ".npz") -> Path:
  return folder(run_dir) / "attacks" / f"{attack}-{eps_name(eps)}{suffix}"


def save_arrays(path: Path, **arrays: np.ndarray) -> None:
  """``arrays`` as a compressed ``.npz``, written whole or not at all."""
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **arrays)
  files.write_bytes(path, buffer.getvalue())


def load_arrays(path: Path) -> dict[str, np.ndarray]:
  try:
    with np.load(path) as stored:
      return {k: stored[k] for k in stored.files}
  except (OSError, ValueError) as e:
    raise RobustnessFilesError(
      f"{path} cannot be read ({type(e).__name__}: {e}); delete it and run "
      "python -m experiments.robustness on the run again (it recomputes only what is missing)"
    ) from e


def save_predictions(path: Path, predictions: Any, labels: Any, **extra: np.ndarray) -> None:
  save_arrays(
    path,
    predictions=np.asarray(predictions, np.uint8),
    labels=np.asarray(labels, np.uint8),
    **extra,
  )


def read_json(path: Path) -> Any:
  try:
    return files.read_json(path)
  except (OSError, ValueError) as e:
    raise RobustnessFilesError(
      f"{path} cannot be read ({type(e).__name__}: {e}); delete it and run "
      "python -m experiments.robustness on the run again"
    ) from e


def summary(run_dir: str | os.PathLike) -> dict[str, Any] | None:
  """The run's finished evaluation (``summary.json``), or ``None`` if it has none."""
  path = folder(run_dir) / SUMMARY
  return read_json(path) if path.is_file() else None


def correctness(run_dir: str | os.PathLike, summary_: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Per-image correctness of every part of a finished evaluation, by axis item.

  Keys: ``corruption/<name>`` (every test image under that corruption) and
  ``<attack>/<eps>`` (the attacked subset); values are boolean arrays.
  """
  out: dict[str, np.ndarray] = {}
  for name in (summary_.get("corruptions") or {}).get("accuracy", {}):
    arrays = load_arrays(corruption_path(run_dir, name))
    out[f"corruption/{name}"] = arrays["predictions"] == arrays["labels"]
  for attack, by_eps in ((summary_.get("attacks") or {}).get("accuracy") or {}).items():
    for eps in by_eps:
      arrays = load_arrays(attack_path(run_dir, attack, float(eps)))
      out[f"{attack}/{float(eps):g}"] = arrays["predictions"] == arrays["labels"]
  return out
