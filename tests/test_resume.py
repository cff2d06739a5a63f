"""Runs survive interruption: killed at any moment, the same command carries on.

Real training processes (``python -m experiments.train`` / ``experiments.sweep``) are
SIGKILLed in the middle of an epoch and in the middle of an orbax checkpoint write,
then started again with the same command. They must end with exactly the numbers of
the uninterrupted run ``cli_run`` (same seed, same machine), with no temporary or
truncated file left. Every file is written under pytest's temporary directories.
"""

from __future__ import annotations

import csv
import json
import random
import shutil

from digits_jax import sweep
from digits_jax.config import Config, resolve
from tests import cli

TRAIN = "experiments.train"


def _orbax_tmp_dirs(workdir) -> set[str]:
  """Temporary directories of orbax saves not complete: ``best/3.orbax-checkpoint-tmp``."""
  return {
    str(p.relative_to(workdir / "checkpoints"))
    for p in (workdir / "checkpoints").glob("*/*.orbax-checkpoint-tmp*")
  }


class _NewSaveInProgress:
  """True once a checkpoint save started after now is in progress.

  Temporary directories left by an earlier kill do not count until the restarted run has
  deleted them: a save of the same epoch may then create one of the same name again.
  """

  def __init__(self, workdir):
    self.workdir = workdir
    self.stale = _orbax_tmp_dirs(workdir)

  def __call__(self) -> bool:
    now = _orbax_tmp_dirs(self.workdir)
    self.stale &= now
    return bool(now - self.stale)


def _epochs_saved(workdir) -> int:
  """The epoch of the complete latest checkpoint (0 if none)."""
  steps = [int(p.name) for p in (workdir / "checkpoints/latest").glob("*") if p.name.isdigit()]
  return max(steps, default=0)


def _whole_files(workdir) -> None:
  """Every JSON file and JSON line the run has written parses: none is cut short."""
  for path in workdir.glob("*.json"):
    json.loads(path.read_text())
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    json.loads(line)


def _no_leftovers(workdir) -> None:
  assert not _orbax_tmp_dirs(workdir), "an interrupted save was not cleaned up"
  assert not list(workdir.rglob(".*.tmp")), "a temporary file of an atomic write is left"


def test_killed_run_ends_with_the_numbers_of_an_uninterrupted_one(cli_run, mnist_dir, tmp_path):
  workdir = tmp_path / "run"
  flags = (*cli.TINY, f"--manual_dir={mnist_dir}", f"--workdir={workdir}")

  # 1. Killed at a random moment after epoch 1's checkpoint is complete: mostly in the
  # middle of epoch 2 (an epoch takes a few tenths of a second here), or in its writes.
  proc = cli.start(TRAIN, *flags)
  assert cli.kill_when(
    proc, lambda: _epochs_saved(workdir) >= 1, delay_s=random.uniform(0.02, 0.25)
  ), "finished before the kill"
  assert 1 <= _epochs_saved(workdir) < 4
  _whole_files(workdir)

  # 2. Started again, killed while orbax writes a checkpoint: as soon as a temporary
  # directory of this process (not one the first kill left) appears. That it is still
  # there afterwards proves the kill came in the middle of the write.
  saving = _NewSaveInProgress(workdir)
  proc = cli.start(TRAIN, *flags)
  assert cli.kill_when(proc, saving), "finished before the kill"
  assert saving(), "the write completed before the kill"
  _whole_files(workdir)

  # 3. Started again, it runs to the end: the same numbers, epochs 1..4 once each.
  out = cli.run(TRAIN, *flags)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "resuming after epoch" in out.stderr
  _no_leftovers(workdir)
  results, rows = cli.read_results(workdir)
  assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
  assert (results, rows) == cli.read_results(cli_run)


def test_finished_run_started_again_is_not_trained_again(cli_run, mnist_dir, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(cli_run, workdir)
  before = cli.snapshot(workdir)
  out = cli.run(TRAIN, *cli.TINY, f"--manual_dir={mnist_dir}", f"--workdir={workdir}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "finished already; not trained again" in out.stdout
  assert "test accuracy" in out.stdout
  assert cli.snapshot(workdir) == before


def test_sweep_skips_finished_runs_resumes_the_killed_one_and_counts_each_once(
  cli_run, mnist_dir, tmp_path
):
  # The uninterrupted run is this sweep's seed 0, finished; seed 1 is killed mid-run.
  tiny = resolve(
    Config(
      model="conv2_dense64", epochs=4, batch_size=32, train_subset=1024, validation_size=256, seed=1
    )
  )
  seed0_name = sweep.run_name(tiny.replace(seed=0))
  shutil.copytree(cli_run, tmp_path / seed0_name)
  seed0 = cli.snapshot(tmp_path / seed0_name)
  seed1 = tmp_path / sweep.run_name(tiny)
  flags = [f for f in cli.TINY if not f.startswith("--model=")]
  flags += [
    "--models=conv2_dense64",
    "--seeds=0,1,1",
    f"--manual_dir={mnist_dir}",
    f"--workdir={tmp_path}",
  ]
  proc = cli.start("experiments.sweep", *flags)
  assert cli.kill_when(proc, lambda: _epochs_saved(seed1) >= 1, delay_s=random.uniform(0, 0.3)), (
    "finished before the kill"
  )
  assert not (seed1 / "results.json").exists()

  out = cli.run("experiments.sweep", *flags)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"{seed0_name}: already finished, skipped" in out.stderr
  assert f"{seed1}: resuming after epoch" in out.stderr
  assert cli.snapshot(tmp_path / seed0_name) == seed0
  _no_leftovers(seed1)
  with open(tmp_path / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["model"], r["seeds"]) for r in rows] == [("conv2_dense64", "2")]
  assert "have not finished" not in (tmp_path / "results.md").read_text()
  assert sorted(p.parent.name for p in tmp_path.glob("*/results.json")) == [
    seed0_name,
    seed1.name,
  ]
