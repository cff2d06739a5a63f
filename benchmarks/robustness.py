"""What a robustness evaluation costs, against the training epochs of the same network.

    python -m benchmarks.robustness --workdir=runs/robustness-source [--measure]

For every finished run under each ``--workdir`` with a robustness evaluation, prints and
writes as JSON (``--output_dir``/robustness_cost.json): the seconds of each part of the
evaluation (corruptions, attacks, calibration and the rest), their total, the run's
seconds per training epoch (its median epoch, ``results.json``) and the ratio of the two.
The goal: an evaluation with the default settings (15 corruptions of 10,000 images, FGSM and
PGD-40 at four eps on 1,000 images) costs at most five training epochs.

With ``--measure`` the evaluation is run again now, on a copy of each run's folder without
its robustness files, and that time is reported instead of the stored one: the figure of
this machine as it is now, next to the stored epoch time (measured while the run trained).
"""

from __future__ import annotations

import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from absl import app, flags

from digits_jax import data, files, robustness_eval, rundir
from digits_jax.environment import environment
from digits_jax.robustness import store

GOAL_EPOCHS = 5.0


def define_flags() -> None:
  flags.DEFINE_multi_string("workdir", None, "A finished run or a folder of runs.")
  flags.DEFINE_string("output_dir", ".", "Where robustness_cost.json is written.")
  flags.DEFINE_bool("measure", False, "Evaluate a copy of each run again now and time it.")
  flags.DEFINE_string("manual_dir", None, "MNIST folder (default: $DIGITS_MANUAL_DIR).")
  flags.mark_flag_as_required("workdir")


def _measure(run_dir: Path, manual_dir: str | None) -> dict[str, Any]:
  with tempfile.TemporaryDirectory() as tmp:
    copy = Path(tmp) / run_dir.name
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(store.DIRECTORY, "plots"))
    config, _ = rundir.read_config(copy)
    datasets = data.load_datasets(
      config.dataset, manual_dir=manual_dir, validation_size=config.validation_size
    )
    start = time.perf_counter()
    summary = robustness_eval.evaluate_run(copy, datasets=datasets, progress=lambda line: None)
    summary["total_seconds"] = time.perf_counter() - start
    return summary


def main(argv):
  del argv
  # JAX reports each backend it could not start at INFO ("Unable to initialize backend 'tpu'").
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  flags_ = flags.FLAGS
  rows = []
  for run_dir in rundir.find_runs(flags_.workdir):
    summary = _measure(run_dir, flags_.manual_dir) if flags_.measure else store.summary(run_dir)
    if summary is None:
      print(f"{run_dir}: no robustness evaluation; left out")
      continue
    results = files.read_json(run_dir / "results.json")
    epoch = results.get("seconds_per_epoch")
    row = {
      "run": run_dir.name,
      "model": summary["model"],
      "parts_seconds": summary["seconds"],
      "total_seconds": summary["total_seconds"],
      "seconds_per_epoch": epoch,
      "epochs_worth": summary["total_seconds"] / epoch if epoch else None,
      "measured_now": bool(flags_.measure),
    }
    rows.append(row)
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in summary["seconds"].items())
    print(
      f"{row['run']}: {row['total_seconds']:.0f} s ({parts}); a training epoch "
      f"{epoch:.1f} s; {row['epochs_worth']:.1f} epochs' worth"
    )
  if rows:
    worth = [r["epochs_worth"] for r in rows if r["epochs_worth"] is not None]
    print(
      f"{len(rows)} runs: median {statistics.median(worth):.1f}, largest {max(worth):.1f} "
      f"training epochs per evaluation (goal: at most {GOAL_EPOCHS:g})"
    )
  out = Path(flags_.output_dir) / "robustness_cost.json"
  files.write_json(out, {"runs": rows, "goal_epochs": GOAL_EPOCHS, "machine": environment()})
  print(f"wrote {out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
