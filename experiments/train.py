"""Trains one model: ``python -m experiments.train --model=NAME --workdir=DIR``.

Writes config.json, metrics.jsonl (per epoch), results.json (test metrics of the
best-by-validation checkpoint), checkpoints/, and the reports, plots and TensorBoard
scalars of :mod:`digits_jax.report` into --workdir. The same command
started again resumes an interrupted run from its last checkpoint, or prints the
results of a finished one; --overwrite starts from scratch. Bad flags, data or
checkpoints exit with status 1 and one ``error:`` line. The logic lives in
:func:`digits_jax.train.train_and_evaluate`.
"""

from absl import app, flags

from digits_jax import models, train, workdirs
from digits_jax.config import resolve
from experiments import common

flags.DEFINE_string("model", "conv2_dense128_dropout",
                    f"Registered model: {', '.join(models.MODELS)}.")
flags.DEFINE_string("optimizer", None, "adam, adamw or sgd (default: the model's recipe).")
flags.DEFINE_integer("seed", 0, "Seed for initialisation, shuffling, dropout, augmentation.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.setup_logging()
  try:
    config = resolve(common.base_config(model=FLAGS.model, optimizer=FLAGS.optimizer,
                                        seed=FLAGS.seed))
    # Checked before loading any data: a finished run needs none.
    results = workdirs.check(config, FLAGS.workdir, overwrite=FLAGS.overwrite)
    if results is not None:
      print(f"{FLAGS.workdir} holds this run, finished already; not trained again "
            "(--overwrite trains it from scratch)")
    else:
      datasets = common.load_data(config)
      results = train.train_and_evaluate(config, FLAGS.workdir, datasets=datasets,
                                         epoch_loop=FLAGS.epoch_loop, overwrite=FLAGS.overwrite)
  except common.USER_ERRORS as e:
    common.fail(e)
  print(f"{config.model}: test accuracy {100 * results['test_accuracy']:.2f}% "
        f"(best epoch {results['best_epoch']} by validation), results in {FLAGS.workdir}")


if __name__ == "__main__":
  app.run(main)
