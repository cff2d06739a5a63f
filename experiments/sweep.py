"""Sweeps architectures, optimizers, seeds and any setting; writes the accuracy table.

    python -m experiments.sweep                      # quick preset: every model, short
    python -m experiments.sweep --preset=source      # each model at its source's settings
    python -m experiments.sweep --optimizer=sgd --seeds=0,1,2
    python -m experiments.sweep --models=conv2_dense64 --learning_rate=0.001,0.003 \\
        --batch_size=64,128                          # a grid: every combination

Every Config field is a flag taking comma-separated values; the grid is their product,
and every value is checked before the first run. Writes <workdir>/results.md and
results.csv, comparison.png and validation_curves.png, and one directory per run.
Started again on the same workdir, finished runs are skipped and an interrupted run
resumes. The logic lives in :mod:`digits_jax.sweep`.
"""

import logging
import time

import jax
from absl import app, flags

from digits_jax import models, sweep
from digits_jax.analysis import compare
from digits_jax.config import FIELDS, ConfigError
from experiments import common

# Epochs of the quick preset: enough for every source network to pass 98% on MNIST,
# short enough for the default sweep to take minutes on a laptop CPU.
QUICK_EPOCHS = 2

common.define_config_flags(lists=True, skip=("model", "seed"))
flags.DEFINE_list("models", list(models.MODELS), "Comma-separated model names.")
flags.DEFINE_list("seeds", ["0"], "Comma-separated integer seeds.")
flags.DEFINE_enum(
  "vmap",
  "auto",
  ["auto", "on", "off"],
  "Train runs that differ only in seed and learning rate together in one "
  "vmapped step. auto: on accelerators, off on CPU, where it measured slower "
  "(docs/speed.md).",
)
flags.DEFINE_enum(
  "preset",
  "quick",
  ["quick", "source"],
  f"quick: {QUICK_EPOCHS} epochs per run unless --epochs is given; "
  "source: each model's source recipe (the full table).",
)
FLAGS = flags.FLAGS


def _use_vmap() -> bool:
  if FLAGS.vmap == "auto":
    return jax.default_backend() != "cpu"
  if FLAGS.vmap == "on" and jax.default_backend() == "cpu":
    logging.warning(
      "--vmap=on on a CPU: vmapped groups measured slower there than the same runs one "
      "after another (docs/speed.md); --vmap=auto trains them one at a time"
    )
  return FLAGS.vmap == "on"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.setup()
  workdir = FLAGS.workdir or f"runs/sweep-{FLAGS.preset}"
  try:
    grid = {"model": FLAGS.models, "seed": [common.parse_value("seed", s) for s in FLAGS.seeds]}
    grid |= common.grid_from_flags([n for n in FIELDS if n not in ("model", "seed")])
    if "epochs" not in grid and FLAGS.preset == "quick":
      grid["epochs"] = [QUICK_EPOCHS]
    # Scalars the grid leaves out keep their defaults (or the recipe's).
    configs = sweep.expand(common.config_from_flags(skip=FIELDS), grid)
    start = time.perf_counter()
    results = sweep.run_sweep(
      configs, workdir, load=common.load_data, overwrite=FLAGS.overwrite, vmap=_use_vmap()
    )
  except (*common.USER_ERRORS, ConfigError) as e:
    common.fail(e)
  markdown = sweep.write_tables(sweep.summarize(results), workdir)
  sweep.write_plots(results, workdir)
  print(markdown)
  print(
    f"{len(results)} runs in {time.perf_counter() - start:.0f} s; "
    f"tables in {workdir}/results.md and results.csv, "
    "plots in comparison.png and validation_curves.png"
  )
  try:
    comparison = compare.compare_runs(sweep.run_dirs(workdir, configs))
  except compare.ComparisonError as e:  # e.g. runs of an earlier version without test outputs
    print(f"no comparison: {e}")
    return
  compare.write_comparison(comparison, workdir)
  print(compare.headline(comparison))
  print(f"comparison with intervals and paired tests in {workdir}/compare.md")


if __name__ == "__main__":
  app.run(main)
