"""The worker split of the entry points that share one --workdir between processes.

``--num_workers`` and ``--worker_index`` (defaulting to a SLURM job array's
``$SLURM_ARRAY_TASK_COUNT`` and ``$SLURM_ARRAY_TASK_ID``), looked up and checked in one
place for :mod:`experiments.sweep` and :mod:`experiments.search`; docs/workers.md.
Importing the module defines the two flags; the entry point adopts them with
``flags.adopt_module_key_flags(workers)``.
"""

from __future__ import annotations

import os

from absl import flags

from digits_jax.sweep import WorkerError, check_split

SLURM_COUNT = "SLURM_ARRAY_TASK_COUNT"
SLURM_INDEX = "SLURM_ARRAY_TASK_ID"
SLURM_MIN = "SLURM_ARRAY_TASK_MIN"
SLURM_MAX = "SLURM_ARRAY_TASK_MAX"

flags.DEFINE_integer(
  "num_workers",
  None,
  "How many worker processes share --workdir, each started with its own --worker_index "
  "(the sweep: worker i trains runs i, i+N, ... of the grid; the search: the workers share "
  f"each study). Default: ${SLURM_COUNT}, else 1.",
)
flags.DEFINE_integer(
  "worker_index",
  None,
  f"This worker's number, 0 to --num_workers - 1. Default: ${SLURM_INDEX}, else 0.",
)
FLAGS = flags.FLAGS


def _lookup(flag: str, env: str, default: int) -> tuple[int, str]:
  """The flag's value, else the environment variable's, else ``default``; and its source."""
  if FLAGS[flag].value is not None:
    return FLAGS[flag].value, f"--{flag}"
  text = os.environ.get(env)
  if text is None:
    return default, f"--{flag}"
  try:
    return int(text), f"${env}"
  except ValueError:
    raise WorkerError(f"${env}={text!r} is not an integer; pass --{flag} instead") from None


def split() -> tuple[int, int]:
  """``(num_workers, worker_index)`` from the flags, else the SLURM array's environment.

  Checked before anything runs; each error names the flag or variable the value came from
  and the fix.

  Raises:
    WorkerError: a value that is not an integer, fewer than one worker, an index outside
      ``0..num_workers - 1``, or a job array whose indices do not run from 0 to N-1.
  """
  num_workers, count_from = _lookup("num_workers", SLURM_COUNT, 1)
  worker_index, index_from = _lookup("worker_index", SLURM_INDEX, 0)
  from_array = count_from.startswith("$") and index_from.startswith("$")
  first, last = os.environ.get(SLURM_MIN), os.environ.get(SLURM_MAX)
  if from_array and num_workers >= 1 and first and last:
    # The array's size is the number of workers only if its indices are 0..N-1.
    if (first, last) != ("0", str(num_workers - 1)):
      raise WorkerError(
        f"this job array's indices run {first} to {last} for {num_workers} tasks, but "
        f"workers are numbered 0 to N-1: submit it with --array=0-{num_workers - 1} "
        "(or pass --num_workers=N of the whole array when resubmitting part of one)"
      )
  hint = ""
  if index_from.startswith("$"):
    hint = (
      f"; a job array's indices must be 0 to N-1 (sbatch --array=0-{max(num_workers, 1) - 1}); "
      "when resubmitting part of an array, pass --num_workers=N of the whole array"
    )
  check_split(num_workers, worker_index, count_from=count_from, index_from=index_from, hint=hint)
  return num_workers, worker_index
