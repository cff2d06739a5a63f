"""What each lever of a finished run gives, on its validation split only.

    python -m experiments.levers --workdir=RUN_DIR [--output_dir=DIR]

For a run trained with ``--ema`` (and any ``--tta`` setting), compares on the run's
validation images, with the weights of its last epoch (latest checkpoint): the trained
weights against their moving average, each with and without test-time augmentation
(the image and its four one-pixel shifts). Each row gives the validation accuracy with its
exact binomial interval; each comparison its exact McNemar p-value and the exact interval of
the difference (:mod:`digits_jax.analysis.stats`). The test split is never read: these are
the numbers a choice of levers may rest on.
"""

import json
import os

import jax.numpy as jnp
import numpy as np
from absl import app, flags

from digits_jax import rundir
from digits_jax.analysis import stats
from digits_jax.training import checkpoints, loop, step
from experiments import common

flags.DEFINE_string("output_dir", None, "Also write the figures to DIR/levers.json.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def _correct(config, state, images, labels, tta: bool) -> np.ndarray:
  logits = step.predict_config(config.replace(tta=tta), state, images, config.eval_batch_size)
  return np.asarray(jnp.argmax(logits, -1) == labels)


def ablation(workdir: str) -> dict:
  """Validation accuracy of raw and averaged weights, with and without TTA."""
  config, _ = rundir.read_config(workdir)
  if not config.ema:
    raise SystemExit(f"{workdir} was trained without --ema: nothing to compare the average with")
  datasets = common.load_data(config)
  val = datasets.validation
  split = loop.training_split(config, datasets)
  template = step.create_train_state(
    config, loop.run_keys(config)[0], step.steps_per_epoch(len(split.labels), config.batch_size)
  )
  latest = checkpoints.LatestCheckpoint(f"{workdir}/checkpoints", identity=config.identity())
  epoch, state = latest.restore(template)
  images, labels = jnp.asarray(val.images), jnp.asarray(val.labels)
  variants = {
    "trained weights": (state, False),
    "trained weights + TTA": (state, True),
    f"EMA {config.ema}": (step.eval_state(state), False),
    f"EMA {config.ema} + TTA": (step.eval_state(state), True),
  }
  correct = {k: _correct(config, s, images, labels, t) for k, (s, t) in variants.items()}
  n = len(labels)
  rows = []
  for name, c in correct.items():
    ci = stats.binomial_interval(int(c.sum()), n)
    rows.append({"variant": name, "val_accuracy": float(c.mean()), "low": ci.low, "high": ci.high})
  names = list(correct)
  pairs = []
  for a, b in [(names[2], names[0]), (names[1], names[0]), (names[3], names[2])]:
    table = stats.mcnemar_table(correct[a], correct[b])
    ci = stats.discordant_interval(table)
    pairs.append(
      {
        "a": a,
        "b": b,
        "difference": float(correct[a].mean() - correct[b].mean()),
        "low": ci.low,
        "high": ci.high,
        "mcnemar_p": stats.mcnemar_pvalue(table),
      }
    )
  return {
    "workdir": str(workdir),
    "epoch": epoch,
    "validation_images": n,
    "rows": rows,
    "pairs": pairs,
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.setup()
  result = ablation(FLAGS.workdir)
  for r in result["rows"]:
    low, high = 100 * r["low"], 100 * r["high"]
    print(f"{r['variant']:<24} {100 * r['val_accuracy']:.2f}% [{low:.2f}, {high:.2f}]")
  for p in result["pairs"]:
    print(
      f"{p['a']} - {p['b']}: {100 * p['difference']:+.2f} pp "
      f"[{100 * p['low']:+.2f}, {100 * p['high']:+.2f}], McNemar p = {p['mcnemar_p']:.3g}"
    )
  if FLAGS.output_dir:
    path = os.path.join(FLAGS.output_dir, "levers.json")
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(path, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  app.run(main)
