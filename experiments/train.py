"""Trains one model: ``python -m experiments.train --model=NAME --workdir=DIR``.

Every field of :class:`digits_jax.config.Config` is a flag (``--epochs``,
``--learning_rate``, ``--augment``, ...); unset recipe flags keep the model's source
recipe. Writes config.json, metrics.jsonl, results.json, checkpoints/ and the reports
into --workdir; the same command started again resumes an interrupted run or prints
the results of a finished one. The logic lives in :mod:`digits_jax.runs`.

With --final_fit, once the run is finished, the same recipe is trained again on all the
training images (validation split included) for the epoch count validation chose, in
<workdir>-final, and tested once there (docs/accuracy.md).

An experiment's settings may come from a config file (``--config=configs/final_fit.py``,
each field a flag of this script; flags given on the command line win). ``--dry_run``
prints the resolved settings with the origin of each value and exits.

On several hosts, the same command runs on each, with --coordinator_address,
--num_processes and --process_id (or under SLURM or on a Cloud TPU slice, without them):
one run then uses every device of every host (docs/scaling.md).
"""

from absl import app, flags

from digits_jax import runs
from experiments import common

common.define_config_file()
common.define_config_flags()
flags.adopt_module_key_flags(common)
# --workdir is required, as absl's mark_flag_as_required words it, but for a dry run.
flags.register_multi_flags_validator(
  ["workdir", "dry_run"],
  lambda values: values["workdir"] is not None or values["dry_run"],
  message="Flag --workdir must have a value other than None (only a --dry_run runs without one).",
)
flags.DEFINE_bool(
  "final_fit",
  False,
  "After the run, train its recipe on all training images (no validation split) for the "
  "best epoch's count, in <workdir>-final, and test that once.",
)
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    common.apply_config_file()
    # Resolved and checked once, before any backend starts (setup may join several hosts).
    resolved = common.resolved_config()
  except common.USER_ERRORS as e:
    common.fail(e)
  if FLAGS.dry_run:
    run_flags = ["workdir", "final_fit", "overwrite", "plots", "robustness"]
    common.print_dry_run({"settings": resolved.lines(), "run": common.flag_lines(run_flags)})
    return
  config = resolved.config
  common.setup(multiprocess=True)
  try:
    # Checked before loading any data: a finished run needs none.
    results = runs.check_workdir(config, FLAGS.workdir, overwrite=FLAGS.overwrite)
    if results is not None:
      print(
        f"{FLAGS.workdir} holds this run, finished already; not trained again "
        "(--overwrite trains it from scratch)"
      )
    else:
      results = runs.train_checked(
        config,
        FLAGS.workdir,
        common.load_data(config),
        overwrite=FLAGS.overwrite,
        plots=FLAGS.plots,
      )
    print(
      f"{config.model}: test accuracy {100 * results['test_accuracy']:.2f}% "
      f"(best epoch {results['best_epoch']} by validation), results in {FLAGS.workdir}"
    )
    if FLAGS.robustness:
      common.evaluate_robustness(config, FLAGS.workdir, common.load_data(config))
    if FLAGS.final_fit:
      final = runs.final_fit_config(config, results)
      final_dir = str(FLAGS.workdir).rstrip("/") + runs.FINAL_FIT_SUFFIX
      final_results = runs.train_and_evaluate(
        final,
        final_dir,
        datasets=common.load_data(final),
        overwrite=FLAGS.overwrite,
        plots=FLAGS.plots,
        final_fit=runs.final_fit_record(config, results, FLAGS.workdir),
      )
      print(
        f"{config.model} final fit on all training images, {final.epochs} epochs: test "
        f"accuracy {100 * final_results['test_accuracy']:.2f}%, results in {final_dir}"
      )
  except common.USER_ERRORS as e:
    common.fail(e)


if __name__ == "__main__":
  app.run(main)
