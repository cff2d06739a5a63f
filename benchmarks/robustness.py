"""What a robustness evaluation costs, against the training epochs of the same network.

    python -m benchmarks.robustness --workdir=runs/robustness-source [--measure]

For every finished run under each ``--workdir`` with a robustness evaluation, prints and
writes as JSON (``--output_dir``/robustness_cost.json): the seconds of each part of the
evaluation (corruptions, attacks, calibration and the rest), their total, the run's
seconds per training epoch (its median epoch, ``results.json``) and the ratio of the two.
The goal: an evaluation with the default settings (15 corruptions of 10,000 images, FGSM and
PGD-40 at four eps on 1,000 images) costs at most five training epochs.

With ``--measure`` the evaluation is run again now, on a copy of each run's folder without
its robustness files, and four epochs of the run's config are trained now (the median of the
last three is the epoch's time: the first compiles, and one epoch of a small network varies
by a quarter from one measurement to the next): both sides of the ratio measured on this
machine as it is now, one after the other. The runs are measured in one process, as
``experiments.robustness`` evaluates a folder of runs: the first run measured pays for
generating the corrupted images, the later ones reuse them (``first`` in the output says
which paid). On the CPU the allocator is tuned first, as ``experiments.robustness`` and
``experiments.train`` tune it.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
from absl import app, flags

from digits_jax import data, files, robustness_eval, rundir, runs
from digits_jax.environment import environment
from digits_jax.models import native
from digits_jax.robustness import store

GOAL_EPOCHS = 5.0
TRAINED_EPOCHS = 4  # with --measure: the first compiles, the median of the others is timed


def define_flags() -> None:
  flags.DEFINE_multi_string("workdir", None, "A finished run or a folder of runs.")
  flags.DEFINE_string("output_dir", ".", "Where robustness_cost.json is written.")
  flags.DEFINE_bool("measure", False, "Evaluate a copy of each run again now and time it.")
  flags.DEFINE_string("manual_dir", None, "MNIST folder (default: $DIGITS_MANUAL_DIR).")
  flags.mark_flag_as_required("workdir")


def _measure(run_dir: Path, manual_dir: str | None) -> tuple[dict[str, Any], float]:
  """The run's evaluation, timed now on a copy, and the seconds of a training epoch now."""
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
    trained = Path(tmp) / "epochs"
    runs.train_and_evaluate(
      dataclasses.replace(config, epochs=TRAINED_EPOCHS, init_from=""),
      trained,
      datasets=datasets,
      plots=False,
    )
    seconds = [m["epoch_seconds"] for m in files.read_jsonl(trained / "metrics.jsonl")[1:]]
    return summary, statistics.median(seconds)


def main(argv):
  del argv
  # JAX reports each backend it could not start at INFO ("Unable to initialize backend 'tpu'").
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  flags_ = flags.FLAGS
  if flags_.measure and jax.default_backend() == "cpu":
    native.tune_allocator()  # as both measured commands do
  rows = []
  for run_dir in rundir.find_runs(flags_.workdir):
    if flags_.measure:
      first = not rows  # the first run measured generates the corrupted images
      summary, epoch = _measure(run_dir, flags_.manual_dir)
    else:
      summary = store.summary(run_dir)
      first = None
      epoch = files.read_json(run_dir / "results.json").get("seconds_per_epoch")
    if summary is None:
      print(f"{run_dir}: no robustness evaluation; left out")
      continue
    row = {
      "run": run_dir.name,
      "model": summary["model"],
      "parts_seconds": summary["seconds"],
      "total_seconds": summary["total_seconds"],
      "seconds_per_epoch": epoch,
      "epochs_worth": summary["total_seconds"] / epoch if epoch else None,
      "measured_now": bool(flags_.measure),
      "first": first,
    }
    rows.append(row)
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in summary["seconds"].items())
    print(
      f"{row['run']}: {row['total_seconds']:.0f} s ({parts}"
      f"{'; corruptions generated' if first else ''}); a training epoch "
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
