"""A process of a multi-process run that dies ends the run cleanly on every other process.

Two local CPU processes join a ``jax.distributed`` runtime on 127.0.0.1; one is killed
(SIGKILL, as an OOM kill or a lost node) in the middle of the run, after the first
checkpoint. The survivor must stop by itself within ``--distributed_timeout`` (plus a
generous margin: this is a liveness check, not a speed one), with an ``error:`` line that
names the lost process and the way out, and the exit status of a lost peer (not JAX's
abort, 134). Both started again, the run finishes with the numbers of a run never
interrupted.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time

from digits_jax.training import distributed
from tests import cli
from tests.conftest import REPO

# Three epochs of 16 steps: the kill lands in epoch 2 or 3, before the end.
RUN = (
  "--model=conv2_dense64",
  "--epochs=3",
  "--batch_size=32",
  "--train_subset=512",
  "--validation_size=256",
  "--plots=false",
  "--data_backend=idx",
)
TIMEOUT_S = 10  # --distributed_timeout of the killed run
MARGIN_S = 60  # a loaded machine may be slow to schedule the survivor


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(workdir, mnist_dir, timeout_s: int) -> list[subprocess.Popen]:
  port = _free_port()
  return [
    subprocess.Popen(
      cli.command(
        "experiments.train",
        *RUN,
        f"--manual_dir={mnist_dir}",
        f"--workdir={workdir}",
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
        f"--distributed_timeout={timeout_s}",
      ),
      cwd=REPO,
      env=cli.env(devices=1),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]


def _finish(procs: list[subprocess.Popen], timeout_s: float = cli.TIMEOUT_S) -> list[tuple]:
  out = []
  try:
    for p in procs:
      stdout, stderr = p.communicate(timeout=timeout_s)
      out.append((p.returncode, stdout, stderr))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  return out


def _run_to_the_end(workdir, mnist_dir) -> None:
  for code, stdout, stderr in _finish(_start(workdir, mnist_dir, 120)):
    assert code == 0, stderr[-3000:]
    assert "test accuracy" in stdout


def _kill_and_watch(workdir, mnist_dir, victim: int) -> str:
  """Starts a run, kills ``victim`` after the first checkpoint; the survivor's stderr."""
  procs = _start(workdir, mnist_dir, TIMEOUT_S)
  survivor = procs[1 - victim]
  deadline = time.monotonic() + cli.TIMEOUT_S
  try:
    while not (workdir / "checkpoints" / "latest" / "1").is_dir():
      assert all(p.poll() is None for p in procs), _finish(procs)
      assert time.monotonic() < deadline, "no checkpoint of epoch 1 in time"
      time.sleep(0.05)
    procs[victim].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    _, stderr = survivor.communicate(timeout=TIMEOUT_S + MARGIN_S)
    waited = time.monotonic() - killed_at
  finally:
    _finish(procs)
  assert not (workdir / "results.json").exists(), "the run ended before the kill"
  assert survivor.returncode == distributed.LOST_PEER_EXIT, stderr[-3000:]
  assert waited < TIMEOUT_S + MARGIN_S
  assert "Traceback" not in stderr and "DEADLINE_EXCEEDED" not in stderr, stderr[-3000:]
  line = stderr.strip().splitlines()[-1]
  assert line.startswith(f"error: process {victim} of 2 was lost"), stderr[-3000:]
  assert "Start all processes again: the run resumes from its last checkpoint" in line
  return stderr


def test_a_killed_process_ends_the_other_and_the_run_resumes_with_the_same_numbers(
  mnist_dir, tmp_path
):
  workdir = tmp_path / "killed"
  _kill_and_watch(workdir, mnist_dir, victim=1)
  _run_to_the_end(workdir, mnist_dir)
  reference = tmp_path / "whole"
  _run_to_the_end(reference, mnist_dir)
  results, rows = cli.read_results(workdir)
  want_results, want_rows = cli.read_results(reference)
  assert [r["epoch"] for r in rows] == [1, 2, 3]
  assert rows == want_rows
  assert results == want_results


def test_a_killed_process_0_the_coordinator_ends_the_others_with_an_error(mnist_dir, tmp_path):
  """Process 0 runs JAX's coordination service: its loss must be reported all the same."""
  _kill_and_watch(tmp_path / "killed", mnist_dir, victim=0)
