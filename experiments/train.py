"""Trains one model: ``python -m experiments.train --model=NAME --workdir=DIR``.

Writes config.json, metrics.jsonl (per epoch), results.json (test metrics of the
best-by-validation checkpoint) and checkpoints/ into --workdir. The logic lives
in :func:`digits_jax.train.train_and_evaluate`.
"""

from absl import app, flags

from digits_jax import models, train
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
    datasets = common.load_data(config)
    results = train.train_and_evaluate(config, FLAGS.workdir, datasets=datasets,
                                       epoch_loop=FLAGS.epoch_loop)
  except common.USER_ERRORS as e:
    common.fail(e)
  print(f"{config.model}: test accuracy {100 * results['test_accuracy']:.2f}% "
        f"(best epoch {results['best_epoch']} by validation), results in {FLAGS.workdir}")


if __name__ == "__main__":
  app.run(main)
