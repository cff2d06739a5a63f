"""What each --activation costs in training time, against ReLU, on one network.

    python -m benchmarks.activations [--model=conv2_dense64] [--steps=100] [--repeats=5]

For each activation, one compiled training epoch function (:func:`make_epoch_fn`, the one a
run uses) of ``--steps`` steps over a fixed set of random images is compiled once (not timed)
and then timed ``--repeats`` times; the activations take turns (repeat 1 of each, then
repeat 2 of each, ...) so a burst of load from elsewhere hits them all. Prints and writes
(``--output_dir``/activations.json and .md) the median seconds per step, that figure scaled
to an epoch of the model's training split and its ratio to ReLU's.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from absl import app, flags

from digits_jax import data, files, models
from digits_jax.config import Config, resolve
from digits_jax.environment import environment
from digits_jax.training.step import create_train_state, make_epoch_fn

# Training images of an epoch: MNIST's 60,000 less the default validation split.
EPOCH_IMAGES = 60_000 - 5_000


def define_flags() -> None:
  flags.DEFINE_string("model", "conv2_dense64", "Registered network.")
  flags.DEFINE_list("activations", list(models.ACTIVATIONS), "Activations to time.")
  flags.DEFINE_integer("steps", 100, "Training steps per timed call.")
  flags.DEFINE_integer("repeats", 5, "Timed calls per activation (the median is reported).")
  flags.DEFINE_string("output_dir", ".", "Where activations.json and activations.md go.")


def make_run(config: Config, steps: int):
  """A function running ``steps`` training steps of ``config`` on random images, compiled."""
  key = jax.random.PRNGKey(0)
  n = steps * config.batch_size
  images = jax.random.uniform(key, (n, data.IMAGE_SIZE, data.IMAGE_SIZE, 1), jnp.float32)
  labels = jax.random.randint(key, (n,), 0, data.NUM_CLASSES)
  state = {"state": create_train_state(config, key, steps)}
  epoch = make_epoch_fn(config)

  def run() -> float:
    start = time.perf_counter()
    state["state"], metrics = epoch(state["state"], key, images, labels)
    jax.block_until_ready(metrics)
    return time.perf_counter() - start

  run()  # compiles
  return run


def measure(model: str, activations: list[str], steps: int, repeats: int) -> list[dict[str, Any]]:
  """One row per activation: median seconds per step and per epoch, ratio to the first."""
  configs = {a: resolve(Config(model=model, activation=a)) for a in activations}
  runs = {a: make_run(c, steps) for a, c in configs.items()}
  times: dict[str, list[float]] = {a: [] for a in activations}
  for _ in range(repeats):
    for a, run in runs.items():
      times[a].append(run() / steps)
  rows = []
  for a in activations:
    step = statistics.median(times[a])
    epoch = step * EPOCH_IMAGES / configs[a].batch_size
    rows.append({"activation": a, "seconds_per_step": step, "seconds_per_epoch": epoch})
  for row in rows:
    row["ratio_to_first"] = row["seconds_per_epoch"] / rows[0]["seconds_per_epoch"]
  return rows


def markdown(model: str, rows: list[dict[str, Any]]) -> str:
  """The rows as a markdown table."""
  lines = [
    f"| activation ({model}) | ms/step | s/epoch | vs {rows[0]['activation']} |",
    "|---|---|---|---|",
  ]
  lines += [
    f"| {r['activation']} | {1e3 * r['seconds_per_step']:.1f} | {r['seconds_per_epoch']:.1f} "
    f"| {r['ratio_to_first']:.2f} |"
    for r in rows
  ]
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  f = flags.FLAGS
  activations = list(dict.fromkeys(["relu", *f.activations]))
  rows = measure(f.model, activations, f.steps, f.repeats)
  table = markdown(f.model, rows)
  print(table)
  out = Path(f.output_dir)
  out.mkdir(parents=True, exist_ok=True)
  record = {
    "model": f.model,
    "steps": f.steps,
    "repeats": f.repeats,
    "rows": rows,
    "machine": environment(),
  }
  files.write_json(out / "activations.json", record)
  files.write_text(out / "activations.md", table)
  print(f"wrote {out / 'activations.json'} and {out / 'activations.md'}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
