"""A sweep split across worker processes that share one workdir.

Real ``python -m experiments.sweep`` workers: a worker SIGKILLed mid-run and started again
resumes; ``--collect_only`` tables whatever has finished and names the rest; one process
started again fills the holes. Two workers at once (launched through
``scripts/slurm_sweep.sbatch`` as a SLURM array would) train each run once and give the
numbers and table of the sweep one process finished. Misconfigured workers (an index out of
range, another grid on the same workdir) fail at once with a message; the search's workers
take their split from the same helper, with the same checks.
"""

from __future__ import annotations

import csv
import os
import random
import re
import signal
import socket
import subprocess
import sys

import pytest

from digits_jax import files, sweep
from digits_jax.config import Config, resolve
from tests import cli
from tests.conftest import REPO

SWEEP = "experiments.sweep"
# Two runs of 2 epochs (4 steps each): seed 0 goes to worker 0, seed 1 to worker 1.
GRID = (
  "--models=conv2_dense64",
  "--seeds=0,1",
  "--epochs=2",
  "--batch_size=32",
  "--train_subset=128",
  "--validation_size=128",
  "--data_backend=idx",
  "--plots=false",
)
# Columns and fields that measure time, different in every run.
TIMED = ("seconds_per_run", "seconds_per_epoch")
FAST_S = 60  # a misconfigured worker fails long before this


def _config(seed: int) -> Config:
  return resolve(
    Config(
      model="conv2_dense64",
      seed=seed,
      epochs=2,
      batch_size=32,
      train_subset=128,
      validation_size=128,
    )
  )


def _flags(mnist_dir, workdir, *extra: str) -> list[str]:
  return [*GRID, f"--manual_dir={mnist_dir}", f"--workdir={workdir}", *extra]


def _table(workdir) -> list[dict[str, str]]:
  """results.csv without its timings."""
  with open(workdir / "results.csv") as f:
    return [{k: v for k, v in row.items() if k not in TIMED} for row in csv.DictReader(f)]


def _runs(workdir) -> dict[str, tuple]:
  """Each finished run's results and metrics rows, without timings."""
  return {p.parent.name: cli.read_results(p.parent) for p in workdir.glob("*/results.json")}


def _trained(stderr: str) -> list[str]:
  """The runs a worker's log says it trained."""
  # "HH:MM:SS [i/N] RUN: training; ... elapsed[, about ... left]"
  return sorted(re.findall(r"^\S+ \[\d+/\d+\] (\S+): training;", stderr, flags=re.MULTILINE))


def _epochs_saved(run) -> int:
  steps = [int(p.name) for p in (run / "checkpoints/latest").glob("*") if p.name.isdigit()]
  return max(steps, default=0)


def _fast(
  *flags: str, env: dict[str, str] | None = None, module: str = SWEEP
) -> subprocess.CompletedProcess:
  return subprocess.run(
    cli.command(module, *flags),
    cwd=REPO,
    env=env or cli.env(),
    capture_output=True,
    text=True,
    timeout=FAST_S,
  )


# ----------------------------------------------------------------------------------------
# The split and the locks, in-process


def test_every_run_belongs_to_exactly_one_worker():
  configs = [_config(s) for s in range(7)]
  for n in (1, 2, 3, 7, 9):
    shares = [sweep.share(configs, n, i) for i in range(n)]
    assert sorted(c.seed for s in shares for c in s) == list(range(7))
    assert [c.seed for c in shares[0]] == list(range(0, 7, n))
  with pytest.raises(sweep.WorkerError, match="--worker_index=2 is out of range"):
    sweep.share(configs, 2, 2)
  with pytest.raises(sweep.WorkerError, match="--num_workers=0: the number of workers must be"):
    sweep.share(configs, 0, 0)


def test_a_held_lock_is_busy_names_its_holder_and_dies_with_it(tmp_path):
  path = tmp_path / "run.lock"
  with files.exclusive_lock(path):
    with pytest.raises(files.LockBusyError, match=f"pid {os.getpid()}"):
      with files.exclusive_lock(path, wait_s=0.3):
        pass
  with files.exclusive_lock(path):  # released: free again
    pass
  # Held by a process that is then SIGKILLed: the kernel lets go, no stale lock is left.
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sys, time; from digits_jax import files\n"
      f"with files.exclusive_lock({str(path)!r}):\n  print('held', flush=True); time.sleep(60)",
    ],
    cwd=REPO,
    stdout=subprocess.PIPE,
    text=True,
  )
  assert holder.stdout.readline().strip() == "held"
  with pytest.raises(files.LockBusyError, match=f"pid {holder.pid}"):
    with files.exclusive_lock(path):
      pass
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  with files.exclusive_lock(path, wait_s=5):
    pass


def test_a_table_being_written_is_left_to_its_writer_who_writes_again(tmp_path):
  configs = [_config(0), _config(1)]
  pending = tmp_path / sweep.LOCKS_DIR / "collect.pending"
  with files.exclusive_lock(tmp_path / sweep.LOCKS_DIR / "collect.lock"):
    assert sweep.collect(tmp_path, configs, num_workers=2, wait=False) is None
    assert pending.exists()  # the request the writer answers when it is done
    with pytest.raises(sweep.WorkerError, match="collect.lock has been held by"):
      with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sweep, "COLLECT_WAIT_S", 0.2)
        sweep.collect(tmp_path, configs)
  collected = sweep.collect(tmp_path, configs, num_workers=2, wait=False)
  assert not pending.exists()
  assert collected.results == [] and collected.markdown == ""
  assert collected.missing == [sweep.run_name(c) for c in configs]
  assert collected.worker_of == {sweep.run_name(c): c.seed for c in configs}
  assert not (tmp_path / "results.md").exists()


# ----------------------------------------------------------------------------------------
# Misconfiguration: a message within seconds, nothing written


# The sweep and the search take their split from one helper (experiments.workers): the same
# checks and messages for both.
SPLIT_FLAGS = {
  SWEEP: GRID,
  "experiments.search": ("--models=conv2_dense64", "--trials=1", "--data_backend=idx"),
}


@pytest.mark.parametrize("module", list(SPLIT_FLAGS))
def test_a_worker_index_out_of_range_fails_at_once(module, tmp_path):
  flags = (*SPLIT_FLAGS[module], f"--workdir={tmp_path}")
  out = _fast(*flags, "--num_workers=2", "--worker_index=2", module=module)
  assert out.returncode == 1
  line = cli.error_line(out)
  assert "--worker_index=2 is out of range for --num_workers=2" in line
  assert "workers are numbered 0 to 1; give each worker its own --worker_index" in line
  out = _fast(*flags, "--num_workers=0", module=module)
  assert out.returncode == 1
  assert "--num_workers=0: the number of workers must be at least 1" in cli.error_line(out)
  out = _fast(*flags, env=cli.env() | {"SLURM_ARRAY_TASK_ID": "x"}, module=module)
  assert out.returncode == 1
  assert "$SLURM_ARRAY_TASK_ID='x' is not an integer; pass --worker_index" in cli.error_line(out)
  assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("module", list(SPLIT_FLAGS))
def test_a_slurm_array_not_numbered_from_zero_fails_at_once(module, tmp_path):
  flags = (*SPLIT_FLAGS[module], f"--workdir={tmp_path}")
  slurm = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "2"}
  out = _fast(*flags, env=cli.env() | slurm, module=module)
  assert out.returncode == 1
  line = cli.error_line(out)
  assert "$SLURM_ARRAY_TASK_ID=2 is out of range for $SLURM_ARRAY_TASK_COUNT=2" in line
  assert "sbatch --array=0-1" in line
  # --array=1-2: task 1 is in range, but worker 0's runs would never run.
  slurm |= {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "2"}
  out = _fast(*flags, env=cli.env() | slurm, module=module)
  assert out.returncode == 1
  assert "indices run 1 to 2 for 2 tasks" in cli.error_line(out)
  assert "--array=0-1" in cli.error_line(out)
  assert not any(tmp_path.iterdir())


def test_srun_workers_under_distributed_auto_do_not_join_a_runtime(tmp_path):
  """docs/workers.md's srun recipe: SLURM's step variables do not make the workers one run."""
  sweep.record_grid(tmp_path, [_config(0), _config(1)])
  srun = {
    "SLURM_JOB_ID": "7",
    "SLURM_STEP_NODELIST": "node1",
    "SLURM_NTASKS": "2",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "1",
  }
  flags = (*GRID, f"--workdir={tmp_path}", "--collect_only", "--distributed_timeout=5")
  out = _fast(*flags, "--num_workers=2", "--worker_index=1", env=cli.env() | srun)
  # It got past start-up to the sweep itself: nothing is finished yet to collect.
  assert out.returncode == 1
  assert "none of the 2 runs" in cli.error_line(out)
  # One process alone in the same environment takes it for a cluster and tries to join
  # (and fails: there is no process 0 here), which is what the workers are spared.
  out = _fast(*flags, "--num_workers=1", env=cli.env() | srun)
  assert out.returncode != 0
  assert "none of the 2 runs" not in out.stderr


def test_a_worker_with_another_grid_fails_at_once_naming_both(tmp_path):
  sweep.record_grid(tmp_path, [_config(0), _config(1)])
  before = cli.snapshot(tmp_path)
  out = _fast(*GRID, "--seeds=0,2", f"--workdir={tmp_path}")
  assert out.returncode == 1
  line = cli.error_line(out)
  assert "belongs to another sweep" in line
  assert f"only in the recorded grid: {sweep.run_name(_config(1))}" in line
  assert f"only in this command's: {sweep.run_name(_config(2))}" in line
  assert cli.snapshot(tmp_path) == before  # sweep.json kept; nothing trained


def test_collect_only_with_nothing_finished_fails(tmp_path):
  out = _fast(*GRID, f"--workdir={tmp_path}", "--collect_only")
  assert out.returncode == 1
  assert "none of the 2 runs" in cli.error_line(out)


def test_a_run_locked_by_another_process_is_left_to_it(mnist_dir, tmp_path):
  lock = tmp_path / sweep.LOCKS_DIR / f"{sweep.run_name(_config(0))}.lock"
  with files.exclusive_lock(lock):
    out = _fast(*_flags(mnist_dir, tmp_path, "--seeds=0"))
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"being trained by {socket.gethostname()} pid {os.getpid()}; left to it" in out.stderr
  assert _trained(out.stderr) == []
  assert not list(tmp_path.glob("*/config.json"))


# ----------------------------------------------------------------------------------------
# Real workers


@pytest.fixture(scope="module")
def filled(mnist_dir, tmp_path_factory):
  """The sweep of :data:`GRID` with holes: worker 0 of 2 killed and started again, then one
  process (``--num_workers=1``) filling in worker 1's run. Collected after each step.

  Returns:
    ``(workdir, outputs)``: the finished sweep, and each step's process by name.
  """
  workdir = tmp_path_factory.mktemp("filled")
  seed0 = workdir / sweep.run_name(_config(0))
  worker0 = _flags(mnist_dir, workdir, "--num_workers=2", "--worker_index=0")
  outputs = {}

  # Worker 0 killed after its run's first checkpoint, mostly in the middle of epoch 2.
  proc = cli.start(SWEEP, *worker0)
  outputs["killed"] = cli.kill_when(
    proc, lambda: _epochs_saved(seed0) >= 1, delay_s=random.uniform(0, 0.2)
  )
  outputs["finished_before_restart"] = (seed0 / "results.json").exists()
  outputs["restarted"] = cli.run(SWEEP, *worker0)
  outputs["table_of_one"] = _table(workdir)
  outputs["results_md_of_one"] = (workdir / "results.md").read_text()
  outputs["runs_of_one"] = _runs(workdir)
  outputs["collect_one"] = _fast(*_flags(mnist_dir, workdir, "--collect_only"))
  outputs["seed0_mtime"] = (seed0 / "results.json").stat().st_mtime
  outputs["fill"] = cli.run(SWEEP, *_flags(mnist_dir, workdir, "--num_workers=1"))
  return workdir, outputs


def test_a_killed_worker_resumes_and_the_table_fills_as_runs_finish(filled):
  workdir, out = filled
  seed0, seed1 = (sweep.run_name(_config(s)) for s in (0, 1))
  assert out["killed"] and not out["finished_before_restart"], "finished before the kill"

  # Started again, worker 0 resumes its run, and tables what has finished: its own run,
  # naming worker 1's as missing (below the table and in its output).
  restarted = out["restarted"]
  assert restarted.returncode == 0, restarted.stderr[-3000:]
  assert f"{workdir / seed0}: resuming after epoch 1" in restarted.stderr
  assert f"{seed1} (worker 1)" in restarted.stdout
  assert list(out["runs_of_one"]) == [seed0]
  [row] = out["table_of_one"]
  assert row["seeds"] == "1"
  assert float(row["test_acc_mean"]) == out["runs_of_one"][seed0][0]["test_accuracy"]
  assert (
    f"1 of 2 runs have not finished and are not in this table: {seed1}."
    in (out["results_md_of_one"])
  )

  # --collect_only trains nothing and says the same.
  collect = out["collect_one"]
  assert collect.returncode == 0, collect.stderr[-3000:]
  assert f"1 of 2 runs have not finished: {seed1}." in collect.stdout
  assert "1 finished runs collected" in collect.stdout

  # One process fills the hole: trains run 1 only, leaves run 0 as it was, tables both.
  fill = out["fill"]
  assert fill.returncode == 0, fill.stderr[-3000:]
  assert _trained(fill.stderr) == [seed1]
  assert f"{seed0}: already finished, skipped" in fill.stderr
  assert (workdir / seed0 / "results.json").stat().st_mtime == out["seed0_mtime"]
  assert _runs(workdir)[seed0] == out["runs_of_one"][seed0]
  assert [r["seeds"] for r in _table(workdir)] == ["2"]
  assert "have not finished" not in (workdir / "results.md").read_text()
  for name, (_, rows) in _runs(workdir).items():
    assert [r["epoch"] for r in rows] == [1, 2], name


def test_two_workers_at_once_give_the_table_of_one_and_train_each_run_once(
  filled, mnist_dir, tmp_path
):
  """Launched through the sbatch script as a SLURM array of two would launch them."""
  one_worker, _ = filled
  script = REPO / "scripts" / "slurm_sweep.sbatch"
  env = cli.env() | {"PYTHON": sys.executable, "SLURM_ARRAY_TASK_COUNT": "2"}
  workers = [
    subprocess.Popen(
      ["bash", str(script), *_flags(mnist_dir, tmp_path)],
      cwd=REPO,
      env=env | {"SLURM_ARRAY_TASK_ID": str(i)},
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outs = [w.communicate(timeout=cli.TIMEOUT_S) for w in workers]
  for w, (_, err) in zip(workers, outs, strict=True):
    assert w.returncode == 0, err[-3000:]
  # Run i went to worker i, and to no other; each epoch was trained once.
  assert [_trained(err) for _, err in outs] == [
    [sweep.run_name(_config(0))],
    [sweep.run_name(_config(1))],
  ]
  for name, (_, rows) in _runs(tmp_path).items():
    assert [r["epoch"] for r in rows] == [1, 2], name
  # The same numbers, table and comparison as the sweep finished by one process.
  assert _runs(tmp_path) == _runs(one_worker)
  assert _table(tmp_path) == _table(one_worker)
  assert "have not finished" not in (tmp_path / "results.md").read_text()
  assert _comparison(tmp_path) == _comparison(one_worker)


def _comparison(workdir) -> list[dict[str, str]]:
  """compare.csv without the runs' paths and timings."""
  with open(workdir / "compare.csv") as f:
    return [
      {k: v for k, v in row.items() if k not in ("runs", "seconds_per_epoch", "train_seconds")}
      for row in csv.DictReader(f)
    ]
