"""Device check: what this machine does with digits_jax, in one command.

    python -m benchmarks.device_check --output_dir=.     # make device-check

Prints and writes as JSON (``--output_dir``/device_check.json):

* the device: ``jax.devices()``, the backend, the device kind, and whether the CPU-tuned
  ops are on (``fast_ops=auto``: on the CPU only);
* ``epoch``: seconds per epoch of conv2_dense128_dropout, the median over ``--epochs``
  epochs after the first (which compiles), on ``--train_subset`` images (0: all 55,000);
* ``speedrun``: the speedrun recipe's training seconds and test accuracy over
  ``--speedrun_seeds`` seeds: median seconds, mean accuracy with its 95% t interval, and
  how many seeds reach 99%;
* ``group``: ``--group_models`` seeds of conv2_dense128_dropout for ``--group_epochs``
  epochs, trained as one vmapped group and as runs one after another (wall seconds of
  each, compilation and evaluation included) and the speedup.

Goals on a GPU: 99% mean test accuracy in under 0.5 s of training, and a vmapped group at
least 4x faster than the same runs in a row. The flags shrink everything for a test.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import app, flags
from scipy import stats

from digits_jax import data, files, models, runs, sweep
from digits_jax import speedrun as sr
from digits_jax.config import Config, resolve
from digits_jax.environment import environment

MODEL = "conv2_dense128_dropout"


def define_flags() -> None:
  """This script's flags; defined when it runs, so that importing it (the tests do, next to
  the entry points) defines none."""
  flags.DEFINE_string("output_dir", ".", "Where device_check.json is written.")
  flags.DEFINE_string(
    "manual_dir", None, "Folder of the four MNIST files (default: $DIGITS_MANUAL_DIR)."
  )
  flags.DEFINE_integer("epochs", 4, "Epochs timed for the per-epoch figure (the first compiles).")
  flags.DEFINE_integer(
    "train_subset", 0, "Training images for the epoch and group figures (0: all)."
  )
  flags.DEFINE_integer("speedrun_seeds", 5, "Seeds of the speedrun.")
  flags.DEFINE_float("speedrun_epochs", None, "Speedrun epochs (default: the recipe's).")
  flags.DEFINE_integer("group_models", 8, "Seeds trained as one vmapped group and in a row.")
  flags.DEFINE_integer("group_epochs", 1, "Epochs of each model of the group.")


FLAGS = flags.FLAGS


def device_info() -> dict[str, Any]:
  """The devices JAX sees, its backend, the device kind and whether fast ops are on."""
  devices = jax.devices()
  return {
    "devices": [str(d) for d in devices],
    "backend": jax.default_backend(),
    "kind": devices[0].device_kind,
    "fast_ops": models.use_fast_ops("auto"),
  }


def epoch_seconds(datasets: data.Datasets, epochs: int, train_subset: int, workdir: Path):
  """Per-epoch seconds of :data:`MODEL`: the median of the epochs after the first."""
  config = resolve(Config(model=MODEL, epochs=epochs, train_subset=train_subset))
  runs.train_and_evaluate(config, workdir, datasets=datasets, plots=False)  # training timed
  seconds = [r["epoch_seconds"] for r in files.read_jsonl(workdir / "metrics.jsonl")]
  timed = seconds[1:] or seconds
  return {
    "model": MODEL,
    "train_images": train_subset or len(datasets.train.labels),
    "epoch_seconds": seconds,
    "median_seconds": statistics.median(timed),
  }


def accuracy_summary(accuracy: list[float], target: float = 0.99) -> dict[str, Any]:
  """Mean test accuracy, its 95% t interval and how many runs reach ``target``."""
  mean = float(np.mean(accuracy))
  if len(accuracy) > 1:
    sem = float(stats.sem(accuracy))
    low, high = (
      stats.t.interval(0.95, len(accuracy) - 1, loc=mean, scale=sem) if sem else (mean,) * 2
    )
  else:
    low = high = mean
  return {
    "test_accuracy_mean": mean,
    "test_accuracy_low": float(low),
    "test_accuracy_high": float(high),
    "at_target": int(sum(a >= target for a in accuracy)),
    "target": target,
  }


def speedrun(seeds: int, epochs: float | None, manual_dir: str | None) -> dict[str, Any]:
  """The speedrun recipe over ``seeds`` seeds: training seconds and test accuracy."""
  recipe = sr.Recipe() if epochs is None else sr.Recipe().replace(epochs=epochs)
  result = sr.run_speedrun(
    recipe, sr.load_speedrun_data(recipe, manual_dir=manual_dir), range(seeds)
  )
  seconds = [r["train_seconds"] for r in result["runs"]]
  return {
    "recipe": result["recipe"],
    "train_seconds": seconds,
    "train_seconds_median": statistics.median(seconds),
    "compile_seconds": result["runs"][0]["compile_seconds"],
    "test_accuracy": [r["test_accuracy"] for r in result["runs"]],
  } | accuracy_summary([r["test_accuracy"] for r in result["runs"]])


def group(datasets: data.Datasets, k: int, epochs: int, train_subset: int, workdir: Path):
  """``k`` seeds as one vmapped group and one after another: wall seconds and speedup."""
  configs = [
    resolve(Config(model=MODEL, seed=s, epochs=epochs, train_subset=train_subset)) for s in range(k)
  ]
  seconds, accuracy = {}, {}
  for name, vmap in (("vmapped", True), ("in_a_row", False)):
    t0 = time.perf_counter()
    # Without the figures, identical both ways: the seconds compare the training.
    results = sweep.run_sweep(
      configs, workdir / name, load=lambda c: datasets, vmap=vmap, plots=False
    )
    seconds[name] = time.perf_counter() - t0
    accuracy[name] = [r["test_accuracy"] for r in results]
  return {
    "model": MODEL,
    "models": k,
    "epochs": epochs,
    "vmapped_seconds": seconds["vmapped"],
    "in_a_row_seconds": seconds["in_a_row"],
    "speedup": seconds["in_a_row"] / seconds["vmapped"],
    "test_accuracy_vmapped": accuracy["vmapped"],
    "test_accuracy_in_a_row": accuracy["in_a_row"],
  }


def check(
  datasets: data.Datasets,
  workdir: Path,
  *,
  epochs: int = 4,
  train_subset: int = 0,
  speedrun_seeds: int = 5,
  speedrun_epochs: float | None = None,
  group_models: int = 8,
  group_epochs: int = 1,
  manual_dir: str | None = None,
) -> dict[str, Any]:
  """Every figure of the check (the flags of the same names), printed and returned."""
  result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": device_info()}
  result["environment"] = environment()
  print(f"device: {result['device']}")
  e = result["epoch"] = epoch_seconds(datasets, epochs, train_subset, workdir / "epoch")
  print(f"{MODEL}: {e['median_seconds']:.2f} s per epoch of {e['train_images']} images")
  s = result["speedrun"] = speedrun(speedrun_seeds, speedrun_epochs, manual_dir)
  print(
    f"speedrun: {s['train_seconds_median']:.2f} s training "
    f"(median of {speedrun_seeds} seeds), "
    f"test accuracy {100 * s['test_accuracy_mean']:.2f}% "
    f"[{100 * s['test_accuracy_low']:.2f}, {100 * s['test_accuracy_high']:.2f}], "
    f"{s['at_target']}/{speedrun_seeds} at 99%"
  )
  g = result["group"] = group(datasets, group_models, group_epochs, train_subset, workdir / "g")
  print(
    f"{group_models} seeds vmapped: {g['vmapped_seconds']:.1f} s; "
    f"in a row: {g['in_a_row_seconds']:.1f} s; speedup {g['speedup']:.2f}x"
  )
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for name in ("epochs", "speedrun_seeds", "group_models", "group_epochs"):
    if FLAGS[name].value < 1:
      raise app.UsageError(f"--{name} must be at least 1, got {FLAGS[name].value}")
  if FLAGS.train_subset < 0:
    raise app.UsageError(f"--train_subset must be >= 0, got {FLAGS.train_subset}")
  datasets = data.load_datasets("mnist", manual_dir=FLAGS.manual_dir, backend="idx")
  with tempfile.TemporaryDirectory() as tmp:
    result = check(
      datasets,
      Path(tmp),
      epochs=FLAGS.epochs,
      train_subset=FLAGS.train_subset,
      speedrun_seeds=FLAGS.speedrun_seeds,
      speedrun_epochs=FLAGS.speedrun_epochs,
      group_models=FLAGS.group_models,
      group_epochs=FLAGS.group_epochs,
      manual_dir=FLAGS.manual_dir,
    )
  path = Path(FLAGS.output_dir) / "device_check.json"
  files.write_json(path, result)
  print(f"written to {path}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
