"""A run's directory: its layout, what is written into it, and one reader of it.

A run directory holds ``config.json`` (the resolved config, and for a final fit or a transfer
run a record of the run it comes from), ``results.json`` (written last:
it marks the run finished) and ``test_outputs.npz`` (:func:`save_test_outputs`): the class
probabilities on the test set in float16, the predicted classes, the labels, and SHA-256
digests of the test images and labels, so that two runs can be checked to have been tested
on the same images in the same order. :func:`read_run` reads all three; :func:`read_config`
only the config (cheap, for code that restores a checkpoint); :func:`find_runs` finds the
finished runs under folders.

A directory belongs to one config, the one its ``config.json`` records; two configs are the
same run when their :meth:`~digits_jax.config.Config.identity` agrees (implementation fields
such as ``fast_ops`` may differ, and a ``config.json`` written by an earlier version keeps its
identity). Another config's directory is refused (:func:`check`, naming the fields that
differ) rather than mixed with, unless ``overwrite`` asks to delete the old run's files first
(:func:`clear`); the same config finds either its finished results or a run to resume: the
history in ``metrics.jsonl`` up to the epoch of its last complete checkpoint
(:func:`resume_history`). Every problem with a directory is a :class:`RunDirError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from digits_jax import data, files
from digits_jax.config import Config, ConfigError, differences, identity_of
from digits_jax.environment import environment

log = logging.getLogger(__name__)

OUTPUTS_FILE = "test_outputs.npz"
OUTPUTS_FORMAT = 1
EVALUATE_COMMAND = "python -m experiments.evaluate --workdir={}"
# config.json's entry of a final fit (digits_jax.runs.final_fit_record): its validation run,
# the recipe's epoch count and validation split, and the validation accuracy that chose.
FINAL_FIT = "final_fit"
# config.json's entry of a transfer run (digits_jax.training.transfer.SOURCE_RUN): its source
# run's folder, config identity, best epoch and weights' SHA-256.
SOURCE_RUN = "source_run"


class RunDirError(ConfigError):
  """A directory that is not a (finished) run's, or a run file that cannot be read; the
  message names the file and the fix."""


# --------------------------------------------------------------------------------------------
# Per-run test outputs


@dataclasses.dataclass(frozen=True)
class TestOutputs:
  """A run's predictions on the test set, as ``test_outputs.npz`` stores them.

  Attributes:
    probabilities: ``(N, K)`` float16 class probabilities.
    predictions: ``(N,)`` predicted classes (argmax of the full-precision probabilities, so
      the run's accuracy is exact even where float16 rounding ties two classes).
    labels: ``(N,)`` true classes.
    images_sha256: SHA-256 of the test images' bytes, in the stored order.
    images_dtype: the images' dtype when digested (``"float32"``, ``"uint8"``).
    images_shape: the images' shape when digested.
    labels_sha256: SHA-256 of the labels as little-endian int64, in the stored order.
  """

  __test__ = False  # not a pytest test class despite its name

  probabilities: np.ndarray
  predictions: np.ndarray
  labels: np.ndarray
  images_sha256: str
  images_dtype: str
  images_shape: tuple[int, ...]
  labels_sha256: str

  @property
  def num_examples(self) -> int:
    return int(self.labels.shape[0])

  @property
  def num_classes(self) -> int:
    return int(self.probabilities.shape[1])

  @property
  def correct(self) -> np.ndarray:
    """``(N,)`` bool: which test images the run classified correctly."""
    return self.predictions == self.labels

  @property
  def accuracy(self) -> float:
    return float(np.mean(self.correct))

  @property
  def test_set(self) -> tuple[str, str, tuple[int, ...], str]:
    """What identifies the test set and its order: digests, dtype and shape."""
    return self.images_sha256, self.images_dtype, self.images_shape, self.labels_sha256


def _labels_sha256(labels: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()


def make_test_outputs(probabilities: Any, labels: Any, images: Any) -> TestOutputs:
  """The :class:`TestOutputs` of a run's test predictions, checked.

  Args:
    probabilities: ``(N, K)`` class probabilities (softmax of the logits, not the logits);
      kept as float16, with their argmax kept exactly as the predictions.
    labels: ``(N,)`` integer true classes in ``[0, K)``.
    images: ``(N, ...)`` the test images, uint8 or float32 as the run used them; only their
      SHA-256 digest (of the bytes as given, in the given order), dtype and shape are kept.

  Raises:
    ValueError: shapes that disagree, probabilities that are not probabilities, or labels
      out of range.
  """
  probabilities = np.asarray(probabilities)
  labels = np.asarray(labels)
  images = np.asarray(images)
  if probabilities.ndim != 2 or labels.ndim != 1 or images.ndim < 1:
    raise ValueError(
      f"expected probabilities (N, K), labels (N,) and images (N, ...); got "
      f"shapes {probabilities.shape}, {labels.shape} and {images.shape}"
    )
  n, k = probabilities.shape
  if labels.shape[0] != n or images.shape[0] != n:
    raise ValueError(
      f"{n} rows of probabilities, {labels.shape[0]} labels and "
      f"{images.shape[0]} images: they must be the same test examples"
    )
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
  if n and (labels.min() < 0 or labels.max() >= k):
    raise ValueError(f"labels must lie in [0, {k}), got {labels.min()} to {labels.max()}")
  p = probabilities.astype(np.float64)
  if not np.all(np.isfinite(p)) or (
    n and (p.min() < 0 or p.max() > 1 or np.abs(p.sum(axis=1) - 1).max() > 1e-3)
  ):
    raise ValueError(
      "probabilities must be finite, in [0, 1] and sum to 1 per row: pass the "
      "softmax of the logits, not the logits"
    )
  return TestOutputs(
    probabilities=probabilities.astype(np.float16),
    predictions=probabilities.argmax(axis=1).astype(np.int32),
    labels=labels.astype(np.int32),
    images_sha256=hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest(),
    images_dtype=images.dtype.name,
    images_shape=tuple(int(s) for s in images.shape),
    labels_sha256=_labels_sha256(labels),
  )


def save_test_outputs(
  run_dir: str | os.PathLike, probabilities: Any, labels: Any, images: Any
) -> Path:
  """Writes ``run_dir/test_outputs.npz`` atomically: what the comparison of runs reads.

  ``probabilities``, ``labels`` and ``images`` as :func:`make_test_outputs` takes them (its
  checks, its ValueError); returns the path written.
  """
  outputs = make_test_outputs(probabilities, labels, images)
  buffer = io.BytesIO()
  np.savez_compressed(
    buffer,
    format=np.int64(OUTPUTS_FORMAT),
    probabilities=outputs.probabilities,
    predictions=outputs.predictions,
    labels=outputs.labels,
    images_sha256=np.str_(outputs.images_sha256),
    images_dtype=np.str_(outputs.images_dtype),
    images_shape=np.asarray(outputs.images_shape, np.int64),
    labels_sha256=np.str_(outputs.labels_sha256),
  )
  path = Path(run_dir) / OUTPUTS_FILE
  files.write_bytes(path, buffer.getvalue())
  return path


def load_test_outputs(run_dir: str | os.PathLike) -> TestOutputs:
  """Reads ``run_dir/test_outputs.npz`` (no pickles) and checks it is whole.

  Raises:
    RunDirError: the file is missing, unreadable, or inconsistent; the message gives
      the command that writes it again.
  """
  run_dir = Path(run_dir)
  path = run_dir / OUTPUTS_FILE
  fix = f"write it again with `{EVALUATE_COMMAND.format(run_dir)}`"
  if not path.is_file():
    raise RunDirError(f"{run_dir} has no {OUTPUTS_FILE} (stored test outputs); {fix}")
  try:
    with np.load(path, allow_pickle=False) as npz:
      fields = {name: npz[name] for name in npz.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
    raise RunDirError(f"{path} cannot be read ({e}); {fix}") from e
  missing = sorted(
    {
      "format",
      "probabilities",
      "predictions",
      "labels",
      "images_sha256",
      "images_dtype",
      "images_shape",
      "labels_sha256",
    }
    - set(fields)
  )
  if missing:
    raise RunDirError(f"{path} lacks {', '.join(missing)}; {fix}")
  if int(fields["format"]) != OUTPUTS_FORMAT:
    raise RunDirError(
      f"{path} has format {int(fields['format'])}, this version reads "
      f"format {OUTPUTS_FORMAT}; {fix}"
    )
  outputs = TestOutputs(
    probabilities=fields["probabilities"],
    predictions=fields["predictions"],
    labels=fields["labels"],
    images_sha256=str(fields["images_sha256"]),
    images_dtype=str(fields["images_dtype"]),
    images_shape=tuple(int(s) for s in fields["images_shape"]),
    labels_sha256=str(fields["labels_sha256"]),
  )
  n = outputs.labels.shape[0] if outputs.labels.ndim == 1 else -1
  if (
    outputs.probabilities.ndim != 2
    or outputs.probabilities.shape[0] != n
    or outputs.predictions.shape != (n,)
    or outputs.images_shape[:1] != (n,)
    or _labels_sha256(outputs.labels) != outputs.labels_sha256
  ):
    raise RunDirError(f"{path} is inconsistent (its shapes or label digest disagree); {fix}")
  return outputs


# --------------------------------------------------------------------------------------------
# Runs


@dataclasses.dataclass(frozen=True)
class Run:
  """One finished run: its directory, resolved config, results and test outputs."""

  path: Path
  config: Mapping[str, Any]
  results: Mapping[str, Any]
  outputs: TestOutputs
  final_fit: Mapping[str, Any] | None = None  # config.json's FINAL_FIT entry, if any
  source_run: Mapping[str, Any] | None = None  # config.json's SOURCE_RUN entry, if any

  @property
  def seed(self) -> Any:
    return self.config.get("seed", self.results.get("seed"))

  @property
  def key(self) -> tuple[tuple[str, str], ...]:
    """The fields that define the run's configuration: its identity without the seed.

    (:meth:`digits_jax.config.Config.identity`: implementation fields are left out, and a
    config.json of an earlier version reads as it would be written now.)
    A final fit's configuration is its recipe's (the validation run's epoch count and
    split) plus a ``FINAL_FIT`` field: the final fits of several seeds, whose epoch counts
    validation chose one by one, are seeds of one configuration. A transfer run's source is
    its source's configuration (:attr:`source`), not its folder: runs of several seeds, each
    from the source run of its seed, are seeds of one configuration.
    """
    identity = identity_of(self.config)
    if self.source is not None:
      identity["init_from"] = self.source
    if self.final_fit is not None:
      identity |= {k: self.final_fit[k] for k in ("epochs", "validation_size")}
      identity[FINAL_FIT] = True
    return tuple(
      sorted((k, json.dumps(v, sort_keys=True)) for k, v in identity.items() if k != "seed")
    )

  @property
  def source(self) -> str | None:
    """A transfer run's source configuration, ``model/dataset#digest`` (the digest: of the
    source's identity without its seed), from config.json's :data:`SOURCE_RUN` entry; else
    ``None``."""
    recorded = (self.source_run or {}).get("config")
    if not isinstance(recorded, dict):
      return None
    rest = {k: v for k, v in recorded.items() if k != "seed"}
    digest = hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:8]
    return f"{recorded.get('model')}/{recorded.get('dataset')}#{digest}"

  @property
  def val_accuracy(self) -> float | None:
    """The run's validation accuracy; a final fit's is its validation run's, the figure
    that chose its epoch count."""
    value = self.results.get("val_accuracy")
    if value is None and self.final_fit is not None:
      value = self.final_fit.get("val_accuracy")
    return value


def find_runs(paths: Iterable[str | os.PathLike]) -> list[Path]:
  """The finished run directories (with config.json and results.json) under ``paths``.

  Each path may be a run directory or any folder above run directories (a sweep, a folder
  of sweeps); folders are searched recursively, not below a run directory. Directories with
  a config.json but no results.json (runs still training or interrupted) are skipped with a
  warning.

  Args:
    paths: folders to search.

  Returns:
    The run directories, each once (however it was reached), sorted; as found under the
    given paths, so relative paths stay relative in what the comparison writes.

  Raises:
    RunDirError: a path is not a folder, or no finished run was found.
  """
  paths = [Path(p) for p in paths]
  found: dict[Path, Path] = {}  # resolved path -> the path as found
  for root in paths:
    if not root.is_dir():
      raise RunDirError(
        f"{root} is not a folder; pass a run directory or a folder of runs (a sweep's --workdir)"
      )
    for directory, subdirs, names in os.walk(root):
      directory = Path(directory)
      if "config.json" in names and "results.json" in names:
        found.setdefault(directory.resolve(), directory)
        subdirs.clear()
      elif "config.json" in names:
        log.warning("%s: no results.json (the run has not finished); left out", directory)
        subdirs.clear()
      else:
        subdirs.sort()
  if not found:
    raise RunDirError(
      f"no finished runs under {', '.join(map(str, paths))}: a run directory holds "
      "config.json and results.json, as experiments.train and experiments.sweep write them"
    )
  return sorted(found.values())


def read_run(run_dir: str | os.PathLike) -> Run:
  """Reads a finished run's config.json, results.json and test_outputs.npz.

  Raises:
    RunDirError: a file is missing or unreadable.
  """
  run_dir = Path(run_dir)
  try:
    saved = files.read_json(run_dir / "config.json")
    results = files.read_json(run_dir / "results.json")
  except (OSError, ValueError) as e:
    raise RunDirError(f"{run_dir} is not a finished run directory ({e})") from e
  if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
    raise RunDirError(f"{run_dir / 'config.json'} has no 'config' entry: not a run's config")
  try:
    identity_of(saved["config"])
  except (ConfigError, TypeError) as e:
    raise RunDirError(
      f"{run_dir / 'config.json'} holds no config this version can read ({e})"
    ) from e
  final_fit = saved.get(FINAL_FIT)
  if final_fit is not None and not (
    isinstance(final_fit, dict) and {"epochs", "validation_size"} <= final_fit.keys()
  ):
    raise RunDirError(
      f"{run_dir / 'config.json'}: its {FINAL_FIT!r} entry lacks the recipe's epochs and "
      "validation_size"
    )
  source_run = saved.get(SOURCE_RUN)
  if source_run is not None and not isinstance(source_run, dict):
    raise RunDirError(f"{run_dir / 'config.json'}: its {SOURCE_RUN!r} entry is not an object")
  return Run(run_dir, saved["config"], results, load_test_outputs(run_dir), final_fit, source_run)


# --------------------------------------------------------------------------------------------


def read_config(workdir: str | os.PathLike) -> tuple[Config, dict[str, Any]]:
  """A run directory's config (as recorded) and its whole ``config.json``.

  Raises:
    RunDirError: no ``config.json``, or not a run's.
  """
  workdir = Path(workdir)
  if not (workdir / "config.json").is_file():
    raise RunDirError(
      f"{workdir} has no config.json: it is not a run's work directory "
      "(python -m experiments.train --workdir=... makes one)"
    )
  try:
    saved = files.read_json(workdir / "config.json")
    config = Config.from_dict(saved["config"])
  except (ValueError, KeyError, TypeError, ConfigError) as e:
    raise RunDirError(
      f"{workdir}/config.json is not a run's config ({type(e).__name__}: {e})"
    ) from e
  return config, saved


# --------------------------------------------------------------------------------------------
# Whose a run directory is, whether it finished, what to resume from

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


def _fix(workdir: Path) -> str:
  return f"choose another --workdir, or pass --overwrite to delete the results in {workdir}"


def saved_config(workdir: str | os.PathLike) -> dict[str, Any] | None:
  """The ``config`` dict of ``workdir/config.json``; ``None`` if there is none.

  Raises:
    RunDirError: ``config.json`` exists but cannot be read as a run's config.
  """
  path = Path(workdir) / "config.json"
  if not path.exists():
    return None
  try:
    saved = files.read_json(path)["config"]
    if not isinstance(saved, dict):
      raise TypeError(f"'config' is a {type(saved).__name__}, not an object")
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise RunDirError(
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
  except (RunDirError, OSError, ValueError):
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
    RunDirError: ``workdir`` holds another config's run, or run files without a
      ``config.json`` to say whose they are.
  """
  workdir = Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise RunDirError(f"--workdir {workdir} is a file, not a directory")
  if overwrite:
    return None
  saved = saved_config(workdir)
  if saved is None:
    leftovers = [name for name in RUN_FILES if (workdir / name).exists()]
    if leftovers:
      raise RunDirError(
        f"{workdir} holds {', '.join(leftovers)} but no config.json, so it cannot be told "
        f"whose they are; {_fix(workdir)}"
      )
    return None
  diffs = _same_run(saved, config)
  if diffs:
    raise RunDirError(
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
    RunDirError: the file lacks some of those epochs or cannot be read.
  """
  path = Path(workdir) / "metrics.jsonl"
  try:
    rows = files.read_jsonl(path)
  except (OSError, ValueError) as e:
    raise RunDirError(
      f"{path} cannot be read ({type(e).__name__}: {e}); {_fix(Path(workdir))}"
    ) from e
  kept = [
    r
    for r in rows
    if isinstance(r, dict) and isinstance(r.get("epoch"), int) and r["epoch"] <= epoch
  ]
  if [r.get("epoch") for r in kept] != list(range(1, epoch + 1)):
    raise RunDirError(
      f"cannot resume from the checkpoint of epoch {epoch}: {path} should list epochs 1 to "
      f"{epoch} once each, but lists {[r.get('epoch') for r in kept]}; {_fix(Path(workdir))}"
    )
  return kept
