"""What adversarial training costs per epoch, against standard training of the same network.

    python -m benchmarks.adversarial [--models=madry_mnist,conv3_dense100] [--pgd_steps=7,40]
        [--trades_steps=7]

For each network at its recipe, times training epochs on the first ``--images`` training
images: standard, fast (FGSM with a random start), PGD-k for each k of ``--pgd_steps`` and
TRADES-k for each k of ``--trades_steps`` (none by default),
each after one epoch that compiles, as the median of ``--epochs`` epochs (the settings take
turns epoch by epoch, so the ratios hold on a machine whose load changes). Prints and writes
(``--output_dir``/adversarial_cost.json) seconds per epoch scaled to the full 55,000 images
and the ratio to the standard epoch, with the machine. The goal: fast adversarial training
at most 2.5 times a standard epoch. The per-epoch robust validation is not in these figures
(it runs after the epoch; its cost is that of ``robust_val_size`` images under
``robust_val_steps`` PGD steps).
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import jax
import numpy as np
from absl import app, flags

from digits_jax import data, files
from digits_jax.config import Config, resolve
from digits_jax.environment import environment
from digits_jax.training import step

FULL_TRAIN = 55_000
GOAL_RATIO = 2.5

flags.DEFINE_list("models", ["madry_mnist", "conv3_dense100"], "Networks to time.")
flags.DEFINE_list("pgd_steps", ["7"], "PGD training steps to time (k of PGD-k).")
flags.DEFINE_list("trades_steps", [], "TRADES training steps to time (k of TRADES-k).")
flags.DEFINE_integer("images", 5000, "Training images per timed epoch.")
flags.DEFINE_integer("epochs", 3, "Timed epochs per setting (after one that compiles).")
flags.DEFINE_float("eps", 0.3, "Training attack radius.")
flags.DEFINE_string("output_dir", ".", "Where adversarial_cost.json is written.")
flags.DEFINE_string("manual_dir", None, "MNIST folder (default: $DIGITS_MANUAL_DIR).")
FLAGS = flags.FLAGS


def epoch_seconds(
  configs: dict[str, Config], images: np.ndarray, labels: np.ndarray, epochs: int
) -> dict[str, float]:
  """The median seconds of ``epochs`` training epochs of each config after a compiling one.

  The settings take turns epoch by epoch, so a change in the machine's load falls on all of
  them alike and their ratios hold.
  """
  x, y = jax.numpy.asarray(images), jax.numpy.asarray(labels)
  steps = step.steps_per_epoch(len(labels), next(iter(configs.values())).batch_size)
  states = {k: step.create_train_state(c, jax.random.PRNGKey(0), steps) for k, c in configs.items()}
  fns = {k: step.make_epoch_fn(c) for k, c in configs.items()}
  times: dict[str, list[float]] = {k: [] for k in configs}
  for epoch in range(epochs + 1):
    for k in configs:
      t0 = time.perf_counter()
      states[k], metrics = fns[k](states[k], jax.random.PRNGKey(epoch), x, y)
      jax.block_until_ready(metrics)
      times[k].append(time.perf_counter() - t0)
  return {k: statistics.median(t[1:]) for k, t in times.items()}


def main(argv):
  del argv
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  datasets = data.load_datasets("mnist", manual_dir=FLAGS.manual_dir, backend="idx")
  images = datasets.train.images[: FLAGS.images]
  labels = datasets.train.labels[: FLAGS.images]
  scale = FULL_TRAIN / len(labels)
  settings = (
    [("standard", {}), ("fgsm", {"adversarial": "fgsm"})]
    + [(f"pgd-{k}", {"adversarial": "pgd", "adversarial_steps": int(k)}) for k in FLAGS.pgd_steps]
    + [
      (f"trades-{k}", {"adversarial": "trades", "adversarial_steps": int(k)})
      for k in FLAGS.trades_steps
    ]
  )
  rows: list[dict[str, Any]] = []
  for model in FLAGS.models:
    configs = {
      name: resolve(Config(model=model, adversarial_eps=FLAGS.eps, **changes))
      for name, changes in settings
    }
    seconds = epoch_seconds(configs, images, labels, FLAGS.epochs)
    for name in configs:
      scaled, ratio = seconds[name] * scale, seconds[name] / seconds["standard"]
      rows.append({"model": model, "training": name, "epoch_seconds": scaled, "ratio": ratio})
      print(f"{model:16s} {name:10s} {scaled:8.1f} s per 55,000-image epoch  x{ratio:.2f}")
  fast = [r["ratio"] for r in rows if r["training"] == "fgsm"]
  verdict = "met" if max(fast) <= GOAL_RATIO else "not met"
  print(
    f"fast adversarial training: at most x{max(fast):.2f} a standard epoch "
    f"(goal x{GOAL_RATIO}: {verdict})"
  )
  files.write_json(
    f"{FLAGS.output_dir}/adversarial_cost.json",
    {"rows": rows, "images": len(labels), "eps": FLAGS.eps, "environment": environment()},
  )


if __name__ == "__main__":
  app.run(main)
