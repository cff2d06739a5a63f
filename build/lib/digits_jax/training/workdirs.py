"""A run's work directory: whose it is, whether it finished, what to resume from.

A work directory belongs to one config, the one its ``config.json`` records; two
configs are the same run when their :meth:`~digits_jax.config.Config.identity` agrees
(implementation fields such as ``fast_ops`` may differ, and a ``config.json`` written
by an earlier version keeps its identity).

* Another config's directory is refused (:class:`WorkdirError`, naming the fields
  that differ) rather than mixed with, unless ``overwrite`` asks to delete the old
  run's files first (:func:`clear`).
* The same config finds either its finished results (:func:`check` returns them
  and nothing is trained again) or a run to resume: the history in
  ``metrics.jsonl`` up to the epoch of its last complete checkpoint
  (:func:`resume_history`).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from digits_jax import data, files
from digits_jax.config import Config, ConfigError, differences, identity_of
from digits_jax.environment import environment

log = logging.getLogger(__name__)

# Everything a run writes into its work directory; :func:`clear` deletes these and
# nothing else. A module that writes more files into a run directory adds them here.
RUN_FILES = [
  "config.json",
  "metrics.jsonl",
  "results.json",
  "checkpoints",
  "test_outputs.npz",
  # digits_jax.analysis.report.write_run_report
  "classification_report.txt",
  "classification_report.json",
  "confusion_matrix.csv",
  "calibration.json",
  "plots",
  "tensorboard",
]


class WorkdirError(ConfigError):
  """A work directory that holds another run's results, or unreadable ones."""


def _fix(workdir: Path) -> str:
  return (
    f"choose another --workdir, or pass --overwrite to delete the results in "
    f"{workdir} and start again"
  )


def saved_config(workdir: str | os.PathLike) -> dict[str, Any] | None:
  """The ``config`` dict of ``workdir/config.json``; ``None`` if there is none.

  Raises:
    WorkdirError: ``config.json`` exists but cannot be read as a run's config.
  """
  path = Path(workdir) / "config.json"
  if not path.exists():
    return None
  try:
    saved = files.read_json(path)["config"]
    if not isinstance(saved, dict):
      raise TypeError(f"'config' is a {type(saved).__name__}, not an object")
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise WorkdirError(
      f"{path} cannot be read as a run's config ({type(e).__name__}: {e}); {_fix(Path(workdir))}"
    ) from e
  return saved


def _same_run(saved: dict[str, Any], config: Config) -> list[str]:
  """The differences between a saved config dict's identity and ``config``'s."""
  try:
    return differences(identity_of(saved), config.identity())
  except (ConfigError, TypeError) as e:
    return [f"config.json holds no config this version can read ({e})"]


def finished_results(config: Config, workdir: str | os.PathLike) -> dict[str, Any] | None:
  """The results of a finished run of ``config`` in ``workdir``, else ``None``."""
  workdir = Path(workdir)
  try:
    saved = saved_config(workdir)
    if saved is None or _same_run(saved, config):
      return None
    return files.read_json(workdir / "results.json")
  except (WorkdirError, OSError, ValueError):
    return None


def write_config(
  workdir: str | os.PathLike, config: Config, datasets: data.Datasets, num_train: int, **extra: Any
) -> None:
  """Writes ``config.json``: the resolved config, the environment and the data sizes."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  files.write_json(
    workdir / "config.json",
    {
      "config": config.to_dict(),
      "environment": environment(),
      "data": {
        "backend": datasets.backend,
        "train": num_train,
        "validation": len(datasets.validation.labels),
        "test": len(datasets.test.labels),
      },
      **extra,
    },
  )


def check(
  config: Config, workdir: str | os.PathLike, *, overwrite: bool = False
) -> dict[str, Any] | None:
  """Checks that ``workdir`` may hold a run of ``config``; reads, never writes.

  Args:
    config: the resolved config about to run.
    workdir: its work directory (need not exist).
    overwrite: the old contents are to be deleted (by :func:`clear`), so any are fine.

  Returns:
    The finished run's results if ``workdir`` already holds them for this very
    config (and ``overwrite`` is false), else ``None``: start or resume the run.

  Raises:
    WorkdirError: ``workdir`` holds another config's run, or run files without a
      ``config.json`` to say whose they are.
  """
  workdir = Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise WorkdirError(f"--workdir {workdir} is a file, not a directory")
  if overwrite:
    return None
  saved = saved_config(workdir)
  if saved is None:
    leftovers = [name for name in RUN_FILES if (workdir / name).exists()]
    if leftovers:
      raise WorkdirError(
        f"{workdir} holds {', '.join(leftovers)} but no config.json, so it cannot be told "
        f"whose they are; {_fix(workdir)}"
      )
    return None
  diffs = _same_run(saved, config)
  if diffs:
    raise WorkdirError(
      f"{workdir} holds the results of a different config ({'; '.join(diffs)}); refusing "
      f"to mix them: {_fix(workdir)}"
    )
  return finished_results(config, workdir)


def clear(workdir: str | os.PathLike) -> None:
  """Deletes a previous run's files from ``workdir``: :data:`RUN_FILES` and their temporaries.

  Nothing else in ``workdir`` is touched.

  ``config.json`` goes last, so an interrupted clear still leaves a directory that
  says whose its remaining files are.
  """
  workdir = Path(workdir)
  if not workdir.is_dir():
    return
  for name in [n for n in RUN_FILES if n != "config.json"] + ["config.json"]:
    path = workdir / name
    if path.is_dir() and not path.is_symlink():
      shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
      path.unlink()
  for tmp in workdir.iterdir():  # temporary files and folders of writers that were killed
    if not any(tmp.name.startswith(f".{name}.") for name in RUN_FILES):
      continue
    if tmp.is_dir() and not tmp.is_symlink():
      shutil.rmtree(tmp)
    else:
      tmp.unlink()
  log.info("%s: deleted the previous run's files (--overwrite)", workdir)


def resume_history(workdir: str | os.PathLike, epoch: int) -> list[dict[str, Any]]:
  """The rows of ``metrics.jsonl`` for epochs ``1..epoch``, those a checkpoint covers.

  Rows of later epochs (written before a kill interrupted their checkpoint) are
  dropped: the resumed run computes them again.

  Raises:
    WorkdirError: the file lacks some of those epochs or cannot be read.
  """
  path = Path(workdir) / "metrics.jsonl"
  try:
    rows = files.read_jsonl(path)
  except (OSError, ValueError) as e:
    raise WorkdirError(
      f"{path} cannot be read ({type(e).__name__}: {e}); {_fix(Path(workdir))}"
    ) from e
  kept = [
    r
    for r in rows
    if isinstance(r, dict) and isinstance(r.get("epoch"), int) and r["epoch"] <= epoch
  ]
  if [r.get("epoch") for r in kept] != list(range(1, epoch + 1)):
    raise WorkdirError(
      f"cannot resume from the checkpoint of epoch {epoch}: {path} should list epochs 1 to "
      f"{epoch} once each, but lists {[r.get('epoch') for r in kept]}; {_fix(Path(workdir))}"
    )
  return kept
