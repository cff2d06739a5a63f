"""Sweeps architectures, optimizers and seeds; writes the accuracy table.

    python -m experiments.sweep                      # quick preset: every model, short
    python -m experiments.sweep --preset=source      # each model at its source's settings
    python -m experiments.sweep --optimizer=sgd --seeds=0,1,2

Writes <workdir>/results.md and results.csv, the plots comparison.png and
validation_curves.png, and one directory per run (with its reports and plots). Started
again on the same workdir, finished runs are skipped and an interrupted run
resumes from its last checkpoint; --overwrite trains every run from scratch. The
logic lives in :mod:`digits_jax.sweep`.
"""

import time

import jax
from absl import app, flags

from digits_jax import models, sweep
from experiments import common

# Epochs of the quick preset: enough for every source variant to pass 98% on
# MNIST, short enough for the whole default sweep to take about 15 minutes on
# a 2-core CPU.
QUICK_EPOCHS = 2

flags.DEFINE_list("models", list(models.MODELS), "Comma-separated model names.")
flags.DEFINE_list("optimizer", [], "Comma-separated optimizers (default: each model's own).")
flags.DEFINE_list("seeds", ["0"], "Comma-separated integer seeds.")
flags.DEFINE_enum("vmap", "auto", ["auto", "on", "off"],
                  "Train runs that differ only in seed together in one vmapped step. auto: on "
                  "accelerators, off on CPU, where it measured slower (see README, Speed).")
flags.DEFINE_enum("preset", "quick", ["quick", "source"],
                  f"quick: {QUICK_EPOCHS} epochs per run unless --epochs is given; "
                  "source: each model's source recipe (the full table).")
FLAGS = flags.FLAGS


def _use_vmap() -> bool:
  if FLAGS.vmap == "auto":
    return jax.default_backend() != "cpu"
  return FLAGS.vmap == "on"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.setup_logging()
  workdir = FLAGS.workdir or f"runs/sweep-{FLAGS.preset}"
  try:
    seeds = [int(s) for s in FLAGS.seeds]
  except ValueError:
    common.fail(ValueError(f"--seeds must be comma-separated integers, got {FLAGS.seeds}"))
  epochs = FLAGS.epochs
  if epochs is None and FLAGS.preset == "quick":
    epochs = QUICK_EPOCHS
  try:
    configs = sweep.expand(common.base_config(epochs=epochs, seed=0), FLAGS.models,
                           FLAGS.optimizer or [None], seeds)
    start = time.perf_counter()
    results = sweep.run_sweep(configs, workdir, load=common.load_data,
                              epoch_loop=FLAGS.epoch_loop, overwrite=FLAGS.overwrite,
                              vmap=_use_vmap())
  except common.USER_ERRORS as e:
    common.fail(e)
  markdown = sweep.write_tables(sweep.summarize(results), workdir)
  sweep.write_plots(results, workdir)
  print(markdown)
  print(f"{len(results)} runs in {time.perf_counter() - start:.0f} s; "
        f"tables in {workdir}/results.md and results.csv, "
        "plots in comparison.png and validation_curves.png")


if __name__ == "__main__":
  app.run(main)
