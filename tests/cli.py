"""Running the entry points as a user does: a subprocess, its exit status, its stderr.

Shared by the resume and error tests. Every run gets the flags of :data:`TINY`
(a few seconds of training on real MNIST) unless a test overrides them; later
flags win, as absl parses them.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from tests.conftest import REPO

# One small run: 32 steps of 32 images per epoch, 256 validation images.
TINY = (
  "--model=conv2_dense64",
  "--epochs=4",
  "--batch_size=32",
  "--train_subset=1024",
  "--validation_size=256",
  "--data_backend=idx",
  "--plots=false",  # the figures: tests/test_report.py, test_visualize.py, test_sweep.py
)
TIMEOUT_S = 300


def env(home: pathlib.Path | None = None, devices: int | None = None) -> dict[str, str]:
  """The environment of a run: CPU only (bit-for-bit repeatable), no proxies or data env.

  A SLURM array's variables are left out too: a sweep would take them as its worker split.
  ``devices`` makes XLA show that many CPU devices.
  """
  out = {
    k: v
    for k, v in os.environ.items()
    if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "digits_manual_dir")
    and not k.startswith("SLURM_ARRAY_")
  }
  out["JAX_PLATFORMS"] = "cpu"
  if home is not None:
    out["HOME"] = str(home)
  if devices is not None:
    out["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return out


def command(module: str, *flags: str) -> list[str]:
  return [sys.executable, "-m", module, *flags]


def run(
  module: str,
  *flags: str,
  home: pathlib.Path | None = None,
  argv: Sequence[str] | None = None,
  devices: int | None = None,
  timeout_s: float = TIMEOUT_S,
) -> subprocess.CompletedProcess:
  """Runs ``python -m module flags...`` (or ``argv``) from the repo root; waits for it."""
  return subprocess.run(
    list(argv) if argv else command(module, *flags),
    cwd=REPO,
    env=env(home, devices),
    capture_output=True,
    text=True,
    timeout=timeout_s,
  )


def start(module: str, *flags: str) -> subprocess.Popen:
  """Starts ``python -m module flags...`` without waiting; output goes to pipes."""
  return subprocess.Popen(
    command(module, *flags),
    cwd=REPO,
    env=env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def kill_when(
  proc: subprocess.Popen, ready: Callable[[], bool], *, delay_s: float = 0.0, poll_s: float = 0.002
) -> bool:
  """SIGKILLs ``proc`` ``delay_s`` after ``ready()`` is true; False if it exited first."""
  deadline = time.monotonic() + TIMEOUT_S
  while proc.poll() is None and time.monotonic() < deadline:
    if ready():
      time.sleep(delay_s)
      proc.send_signal(signal.SIGKILL)
      proc.communicate()
      return True
    time.sleep(poll_s)
  proc.communicate()
  return False


def epochs_done(workdir: pathlib.Path) -> int:
  """Rows in ``metrics.jsonl``: epochs the run has finished."""
  try:
    return len((workdir / "metrics.jsonl").read_text().splitlines())
  except FileNotFoundError:
    return 0


def timeless(obj: Any) -> Any:
  """Results or metrics rows without the fields that measure time."""
  if isinstance(obj, list):
    return [timeless(o) for o in obj]
  return {k: v for k, v in obj.items() if "seconds" not in k}


def read_results(workdir: pathlib.Path) -> tuple[dict, list[dict]]:
  """``results.json`` and the rows of ``metrics.jsonl``, without timings."""
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return timeless(json.loads((workdir / "results.json").read_text())), timeless(rows)


def snapshot(folder: pathlib.Path) -> dict[str, str]:
  """Relative path -> SHA-256 of every file under ``folder``: to check nothing changed."""
  return {
    str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted(folder.rglob("*"))
    if p.is_file()
  }


def error_line(proc: subprocess.CompletedProcess) -> str:
  """The ``error: ...`` line a failed run ends with; asserts there is no traceback."""
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert lines and lines[-1].startswith("error: "), proc.stderr[-3000:]
  return lines[-1]
