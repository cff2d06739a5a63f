"""A sweep's grid: its configs, the names of their runs, each worker's share, and the record
in ``sweep.json`` that keeps every worker on the same grid."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax

from digits_jax import files
from digits_jax.config import (
  SHORT_NAMES,
  Config,
  ConfigError,
  Resolved,
  describe,
  format_value,
  own_settings,
  resolve_with_origins,
)

log = logging.getLogger(__name__)

# What a sweep keeps next to its run directories: the grid its workers share, and the
# lock files of its runs, its grid record and its table.
SWEEP_FILE = "sweep.json"
LOCKS_DIR = ".locks"
# How long a worker waits for another to finish writing sweep.json.
GRID_WAIT_S = 30.0


# The quick preset (make sweep): every network trained far enough to show that it learns
# (above 98% test accuracy) in a few minutes on a CPU. One epoch per run; conv3_dense128_64
# takes the more steps of batch 64, and the three heavy networks train their one epoch (their
# one-cycle schedule over that epoch) on the first images of the training split only,
# resnet8 with batch 64 too. What each setting gave, and what it replaced, is measured in
# docs/install.md ("make sweep"). The table's columns and the run names show these settings.
# Flags given on the command line take precedence.
QUICK_EPOCHS = 1
QUICK_SETTINGS = {
  "conv3_dense128_64": {"batch_size": 64},
  "bn_conv3_wide": {"train_subset": 20_000},
  "resnet8": {"train_subset": 20_000, "batch_size": 64},
  "vgg_small": {"train_subset": 15_000},
}


def quick_settings(model: str) -> dict[str, list]:
  """The quick preset's settings for one model: {field: [value]}."""
  return {"epochs": [QUICK_EPOCHS]} | {k: [v] for k, v in QUICK_SETTINGS.get(model, {}).items()}


# The origin of a value the quick preset sets (digits_jax.config.resolve_with_origins).
QUICK_PRESET = "quick preset"
PRESETS = ("quick", "source")


class WorkerError(ConfigError):
  """A sweep worker that cannot go on: a bad worker index, another grid, no file locks."""


def expand(base: Config, grid: Mapping[str, Sequence[Any]]) -> list[Config]:
  """The resolved configs of the product of ``grid``'s lists, validated before anything runs.

  Args:
    base: the settings every run shares.
    grid: Config field name to the values it takes (``{"model": [...], "seed": [0, 1]}``).

  A value listed twice gives its runs once.

  Raises:
    ConfigError, UnknownModelError: a field or value that cannot work.
  """
  return [r.config for r in expand_with_origins(base, grid)]


def expand_with_origins(
  base: Config, grid: Mapping[str, Sequence[Any]], given: Mapping[str, str] | None = None
) -> list[Resolved]:
  """:func:`expand`, each config with the origin of its values.

  Args:
    base, grid: as for :func:`expand`.
    given: the origin of the values of ``base`` and ``grid``
      (:func:`digits_jax.config.resolve_with_origins`).
  """
  names = list(grid)
  runs: dict[Config, Resolved] = {}
  for values in itertools.product(*grid.values()):
    resolved = resolve_with_origins(base.replace(**dict(zip(names, values, strict=True))), given)
    runs.setdefault(resolved.config, resolved)
  return list(runs.values())


def preset_runs(
  base: Config,
  grid: Mapping[str, Sequence[Any]],
  *,
  preset: str,
  given: Mapping[str, str] | None = None,
) -> list[Resolved]:
  """A sweep's runs: :func:`expand_with_origins` of ``grid``, under a preset.

  Args:
    base, grid, given: as for :func:`expand_with_origins`; ``grid`` has ``model``.
    preset: ``source`` (each model's recipe) or ``quick``: each model also takes
      :func:`quick_settings` where the grid does not set them (their origin:
      :data:`QUICK_PRESET`).

  Raises:
    ConfigError, UnknownModelError: a field or value that cannot work.
  """
  if preset not in PRESETS:
    raise ConfigError(f"unknown preset {preset!r}; valid values are: {', '.join(PRESETS)}")
  if preset == "source":
    return expand_with_origins(base, grid, given)
  runs = []
  for model in grid["model"]:
    quick = {k: v for k, v in quick_settings(model).items() if k not in grid}
    origins = dict(given or {}) | dict.fromkeys(quick, QUICK_PRESET)
    runs += expand_with_origins(base, {**grid, "model": [model], **quick}, origins)
  return runs


def describe_runs(runs: Sequence[Resolved]) -> tuple[list[str], list[str]]:
  """What a sweep's dry run prints: the settings every run shares, one aligned line each with
  its origin (:func:`digits_jax.config.describe`), and one line per run, its name and the
  settings in which runs differ (``field=value (origin)``)."""
  first = runs[0] if runs else None
  fields = list(first.config.to_dict()) if first else []

  def item(run: Resolved, name: str) -> tuple[Any, str]:
    return getattr(run.config, name), run.origins[name]

  varied = [n for n in fields if len({repr(item(r, n)) for r in runs}) > 1]
  shared = [n for n in fields if n not in varied]
  shared_lines = (
    describe({n: getattr(first.config, n) for n in shared}, first.origins) if first else []
  )
  run_lines = [
    run_name(r.config)
    + ": "
    + ", ".join(f"{n}={format_value(getattr(r.config, n))} ({r.origins[n]})" for n in varied)
    for r in runs
  ]
  return shared_lines, run_lines


def _value(v: Any) -> str:
  return f"{v:g}" if isinstance(v, float) else str(v).lower() if isinstance(v, bool) else str(v)


def _named(name: str, value: Any) -> str:
  """A setting's value in a run's name: a source run (``init_from``) by its folder's name."""
  return Path(value).name if name == "init_from" else _value(value)


def run_name(config: Config) -> str:
  """``model-optimizer[-setting...]-seedN``: the settings that differ from the recipe."""
  settings = "".join(
    f"-{SHORT_NAMES.get(k, k)}{_named(k, v)}" for k, v in own_settings(config).items()
  )
  return f"{config.model}-{config.optimizer}{settings}-seed{config.seed}"


def run_dir(workdir: Path, config: Config) -> Path:
  """The directory of ``config``'s run: ``workdir/``:func:`run_name`."""
  return workdir / run_name(config)


def run_dirs(workdir: str | Path, configs: Sequence[Config]) -> list[Path]:
  """The directories of ``configs``' runs under the sweep's ``workdir``."""
  return [run_dir(Path(workdir), c) for c in dict.fromkeys(configs)]


def variant(config: Config, varied: Sequence[str]) -> str:
  """The model's name with the values of the ``varied`` settings (``conv2_dense64 lr=0.003``)."""
  return " ".join(
    [config.model] + [f"{SHORT_NAMES.get(k, k)}={_named(k, getattr(config, k))}" for k in varied]
  )


def share(configs: Sequence[Config], num_workers: int, worker_index: int) -> list[Config]:
  """The runs worker ``worker_index`` of ``num_workers`` trains: run ``i`` goes to worker ``i % N``.

  A fixed split of the ordered grid: every run belongs to exactly one worker, whoever
  starts first or is started again.

  Raises:
    WorkerError: ``num_workers`` below 1, or ``worker_index`` outside ``0..num_workers - 1``.
  """
  check_split(num_workers, worker_index)
  return list(dict.fromkeys(configs))[worker_index::num_workers]


def check_split(
  num_workers: int,
  worker_index: int,
  *,
  count_from: str = "--num_workers",
  index_from: str = "--worker_index",
  hint: str = "",
) -> None:
  """Raises unless ``worker_index`` numbers one of ``num_workers`` workers (0 to N-1).

  The one bounds check of a worker split (the sweep's and the search's); ``count_from`` and
  ``index_from`` name where the values came from (a flag or an environment variable), and
  ``hint`` is added to the message.

  Raises:
    WorkerError: ``num_workers`` below 1, or ``worker_index`` outside ``0..num_workers - 1``.
  """
  if num_workers < 1:
    raise WorkerError(
      f"{count_from}={num_workers}: the number of workers must be at least 1; pass "
      "--num_workers=N with N >= 1 (1: this process does all the work)"
    )
  if not 0 <= worker_index < num_workers:
    raise WorkerError(
      f"{index_from}={worker_index} is out of range for {count_from}={num_workers}: workers "
      f"are numbered 0 to {num_workers - 1}; give each worker its own --worker_index in that "
      f"range{hint}"
    )


def grid_digest(configs: Sequence[Config]) -> str:
  """SHA-256 of the grid's ordered run identities: equal exactly when the split is equal."""
  identities = [c.identity() for c in dict.fromkeys(configs)]
  return hashlib.sha256(json.dumps(identities, sort_keys=True).encode()).hexdigest()


def _lock(workdir: Path, name: str, *, wait_s: float = 0.0):
  if jax.process_count() > 1:
    # The processes of one multi-process run train every run together: a lock taken by one
    # would turn the others away and leave them waiting in a collective. Such a sweep is a
    # single worker (run_sweep refuses a split), so there is no one to lock out.
    return contextlib.nullcontext()
  return files.exclusive_lock(workdir / LOCKS_DIR / f"{name}.lock", wait_s=wait_s)


def _read_record(path: Path) -> dict[str, Any] | None:
  if not path.exists():
    return None
  try:
    record = files.read_json(path)
    if not isinstance(record.get("runs"), list) or not isinstance(record.get("digest"), str):
      raise ValueError("no 'runs' list and 'digest'")
  except (OSError, ValueError, AttributeError) as e:
    raise WorkerError(
      f"{path} cannot be read as a sweep's grid ({type(e).__name__}: {e}); delete it (the "
      "runs are kept) and start the workers again"
    ) from e
  return record


def _differences(recorded: Sequence[str], ours: Sequence[str]) -> str:
  def listing(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

  only_recorded = [n for n in recorded if n not in set(ours)]
  only_ours = [n for n in ours if n not in set(recorded)]
  if not only_recorded and not only_ours:
    return "the same run names, in another order or with other settings"
  parts = []
  if only_recorded:
    parts.append(f"only in the recorded grid: {listing(only_recorded)}")
  if only_ours:
    parts.append(f"only in this command's: {listing(only_ours)}")
  return "; ".join(parts)


def record_grid(
  workdir: str | Path, configs: Sequence[Config], *, replace: bool = False, write: bool = True
) -> None:
  """Records the grid in ``workdir/sweep.json``, or checks it against the one recorded.

  Every worker of a sweep must split the same ordered grid, else runs would be left out or
  mixed with another sweep's. The grid recorded there may be replaced only once all its
  runs have finished (a finished sweep may be extended), or with ``replace``.

  Args:
    workdir: the sweep's directory.
    configs: the grid, in order (as :func:`expand` gives it).
    replace: replace a recorded grid even if some of its runs have not finished.
    write: record the grid if none is; false only checks (for collecting).

  Raises:
    WorkerError: another grid with unfinished runs is recorded (naming how the two
      differ), or file locks do not work in ``workdir``.
  """
  workdir = Path(workdir)
  configs = list(dict.fromkeys(configs))
  ours = {"digest": grid_digest(configs), "runs": [run_dir(workdir, c).name for c in configs]}
  path = workdir / SWEEP_FILE
  with _guard(workdir, "sweep", wait_s=GRID_WAIT_S):
    recorded = _read_record(path)
    if recorded is not None and recorded["digest"] == ours["digest"]:
      return
    if recorded is not None:
      unfinished = [n for n in recorded["runs"] if not (workdir / n / "results.json").exists()]
      if (unfinished and not replace) or not write:
        raise WorkerError(
          f"{workdir} belongs to another sweep: {path} records a grid of "
          f"{len(recorded['runs'])} runs ({len(unfinished)} not finished), this command's "
          f"has {len(configs)} ({_differences(recorded['runs'], ours['runs'])}). Start "
          "every worker of a sweep with the same flags; for a new sweep choose another "
          f"--workdir, or, if the one recorded is abandoned, delete {path} (finished runs the "
          "new grid shares are reused)"
        )
      log.info("%s: replacing the grid recorded there (%d runs)", path, len(recorded["runs"]))
    if write and jax.process_index() == 0:
      files.write_json(path, ours)


@contextlib.contextmanager
def _guard(workdir: Path, name: str, *, wait_s: float) -> Iterator[None]:
  """A lock that waits, turning lock trouble into a :class:`WorkerError`."""
  try:
    with _lock(workdir, name, wait_s=wait_s):
      yield
  except files.LockBusyError as e:
    raise WorkerError(
      f"{e.path} has been held by {e.holder} for over {wait_s:.0f} s; if that process is "
      "hung, stop it and start this command again"
    ) from e
  except files.LockError as e:
    raise WorkerError(str(e)) from e
