"""Sweeps architectures, optimizers, seeds and any setting; writes the accuracy table.

    python -m experiments.sweep                      # quick preset: every model, short
    python -m experiments.sweep --preset=source      # each model at its source's settings
    python -m experiments.sweep --optimizer=sgd --seeds=0,1,2
    python -m experiments.sweep --models=conv2_dense64 --learning_rate=0.001,0.003 \\
        --batch_size=64,128                          # a grid: every combination
    python -m experiments.sweep --config=configs/sweep_ensemble.py   # an experiment's file
    python -m experiments.sweep --config=configs/sweep_source.py --config.seeds=0

A config file (configs/NAME.py) sets flags by name; a flag given on the command line
overrides ``--config.FIELD``, which overrides the file.

Every Config field is a flag taking comma-separated values; the grid is their product,
and every value is checked before the first run. Writes <workdir>/compare.md (the table per
configuration, with intervals and paired tests; results.md points to it), results.csv,
comparison.png and validation_curves.png, and one directory per run.
Started again on the same workdir, finished runs are skipped and an interrupted run
resumes. The logic lives in :mod:`digits_jax.sweep`.

Split across N worker processes (each trains runs i, i+N, ... into the same workdir; the
defaults come from a SLURM job array's SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT):

    python -m experiments.sweep --preset=source --seeds=0,1,2 --num_workers=8 --worker_index=3
    python -m experiments.sweep --preset=source --seeds=0,1,2 --collect_only

Every worker writes the table of whatever has finished when it is done; --collect_only
writes it without training. Command lines for SLURM, GPUs and TPUs: docs/workers.md.

``--dry_run`` prints the runs, the settings they share and those in which they differ, each
with the origin of its value, and exits.
"""

import logging
import os
import time

import jax
from absl import app, flags

from digits_jax import models, sweep
from digits_jax.analysis import compare_report
from digits_jax.config import FIELDS, ConfigError
from experiments import common, workers

common.define_config_file()
common.define_config_flags(lists=True, skip=("model", "seed"))
flags.adopt_module_key_flags(common)
flags.adopt_module_key_flags(workers)
flags.DEFINE_list(
  "models",
  models.sweep_models(),
  "Comma-separated model names (default: the networks of the results table; "
  "madry_mnist trains when named).",
)
flags.DEFINE_list("seeds", ["0"], "Seeds: integers and ranges, e.g. 0,1,2 or 0-9.")
flags.DEFINE_enum(
  "vmap",
  "auto",
  ["auto", "on", "off"],
  "Train runs that differ only in seed and learning rate together in one "
  "vmapped step. auto: on accelerators, off on CPU, where it is slower (docs/speed.md).",
)
flags.DEFINE_enum(
  "preset",
  "quick",
  list(sweep.PRESETS),
  "quick: one epoch per run (the heavy networks on part of the training split; see "
  "digits_jax.sweep.QUICK_SETTINGS) unless --epochs is given; "
  "source: each model's source recipe (the full table).",
)
flags.DEFINE_bool(
  "collect_only",
  False,
  "Train nothing: write the table, plots and comparison of the runs that have finished "
  "in --workdir, and name those that have not.",
)
FLAGS = flags.FLAGS


def _use_vmap() -> bool:
  if jax.process_count() > 1:  # groups are not split over processes; each run is, instead
    return False
  if FLAGS.vmap == "auto":
    return jax.default_backend() != "cpu"
  if FLAGS.vmap == "on" and jax.default_backend() == "cpu":
    logging.warning(
      "--vmap=on on a CPU: vmapped groups measured slower there than the same runs one "
      "after another (docs/speed.md); --vmap=auto trains them one at a time"
    )
  return FLAGS.vmap == "on"


def _report_missing(collected: sweep.Collected, total: int, num_workers: int) -> None:
  if not collected.missing:
    return
  names = ", ".join(
    f"{name} (worker {collected.worker_of[name]})" if num_workers > 1 else name
    for name in collected.missing
  )
  print(
    f"{len(collected.missing)} of {total} runs have not finished: {names}. Start "
    + ("those workers" if num_workers > 1 else "the sweep")
    + " again with the same flags to train them (or while none is running: one process "
    "with --num_workers=1 trains them all)."
  )


def _print_dry_run(planned: list, workdir: str) -> None:
  shared, runs = sweep.describe_runs(planned)
  run_flags = ["workdir", "preset", "overwrite", "plots", "robustness", "collect_only"]
  common.print_dry_run(
    {
      "settings every run shares": shared,
      "runs, and the settings in which they differ": runs,
      "sweep": common.flag_lines(run_flags, {"workdir": workdir}),
    }
  )
  print(f"{len(planned)} run{'s' * (len(planned) != 1)}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    common.apply_config_file()
    num_workers, worker_index = workers.split()
    # Every run is resolved and checked once, before any backend starts.
    grid = {"model": FLAGS.models, "seed": common.parse_seeds(FLAGS.seeds)}
    grid |= common.grid_from_flags([n for n in FIELDS if n not in ("model", "seed")])
    given = {n: common.flag_origin(n) for n in grid if n in FLAGS}
    given |= {"model": common.flag_origin("models"), "seed": common.flag_origin("seeds")}
    # Scalars the grid leaves out keep their defaults (or the recipe's).
    planned = sweep.preset_runs(
      common.config_from_flags(skip=FIELDS), grid, preset=FLAGS.preset, given=given
    )
  except (*common.USER_ERRORS, ConfigError) as e:
    common.fail(e)
  workdir = FLAGS.workdir or f"runs/sweep-{FLAGS.preset}"
  if FLAGS.dry_run:
    _print_dry_run(planned, workdir)
    return
  configs = [r.config for r in planned]
  # Split workers are independent processes (srun starts them with SLURM's variables, which
  # JAX would read as one multi-process run): under --distributed=auto they never join one.
  common.setup(multiprocess=num_workers == 1 or FLAGS.distributed != "auto")
  start = time.perf_counter()
  try:
    if FLAGS.collect_only:
      if not os.path.isdir(workdir):
        raise ConfigError(f"--workdir {workdir} does not exist: there is nothing to collect")
      sweep.record_grid(workdir, configs, write=False)
    else:
      trained = sweep.run_sweep(
        configs,
        workdir,
        load=common.load_data,
        overwrite=FLAGS.overwrite,
        vmap=_use_vmap(),
        num_workers=num_workers,
        worker_index=worker_index,
        plots=FLAGS.plots,
        after_run=common.evaluate_robustness if FLAGS.robustness else None,
      )
    if jax.process_index() != 0:  # process 0 writes the tables of a multi-process sweep
      return
    # A worker leaves the table to one that is writing it (which then writes it again).
    collected = sweep.collect(
      workdir, configs, num_workers=num_workers, wait=FLAGS.collect_only or num_workers == 1
    )
  except (*common.USER_ERRORS, ConfigError) as e:
    common.fail(e)
  if collected is None:
    print(
      f"{len(trained)} runs in {time.perf_counter() - start:.0f} s; another worker is writing "
      f"the tables in {workdir} (compare.md, results.csv), and writes them again to include "
      "these runs"
    )
    return
  if not collected.results:
    _report_missing(collected, len(configs), num_workers)
    if FLAGS.collect_only:
      common.fail(ConfigError(f"none of the {len(configs)} runs in {workdir} has finished"))
    return
  print(collected.markdown)
  if FLAGS.collect_only:
    print(f"{len(collected.results)} finished runs collected", end="")
  else:
    print(f"{len(trained)} runs in {time.perf_counter() - start:.0f} s", end="")
  print(
    f"; tables in {workdir}/compare.md and results.csv, "
    "plots in comparison.png and validation_curves.png"
  )
  _report_missing(collected, len(configs), num_workers)
  if collected.comparison is None:
    print(f"no comparison: {collected.comparison_error}")
    return
  print(compare_report.headline(collected.comparison))
  print(f"comparison with intervals and paired tests in {workdir}/compare.md")


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags)
