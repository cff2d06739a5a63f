"""Training speed: seconds per 60,000-image epoch, ours against plain Flax, PyTorch and
Keras (when installed), and K vmapped models against K runs.

    python -m benchmarks.frameworks                       # every registered model
    python -m benchmarks.frameworks --models=conv2_dense128_dropout --steps=100

Prints a Markdown table and writes it (with a CSV and the environment) to --output_dir.

Every timing trains the real network on real-shaped data for ``steps`` optimizer
steps after a warm-up (compilation, first-call allocation) and reports the median
of ``repeats`` such measurements, scaled to one epoch of 60,000 images. All
frameworks run in the same process and take turns: repeat 1 of each, then repeat 2
of each, and so on, so that a burst of load from elsewhere (this project's VMs show
up to 20% steal time) lands on all of them rather than on one column.

* ``ours``: :mod:`digits_jax` as it trains: fast ops, data on the device, batches
  gathered on the device (:func:`digits_jax.training.step.make_epoch_fn`).
* ``flax``: the straightforward Flax version: ``nn.Conv``/``nn.max_pool``, one
  jitted step per batch, NumPy batches sent from the host.
* ``torch``/``keras``: the same layers in PyTorch (plain training loop) and Keras 3
  (``model.fit``), when those are installed; they are optional.
* ``vmap``: K models of one architecture in one vmapped step
  (:mod:`digits_jax.training.groups`), against the same K trained one after another.
"""

from __future__ import annotations

import csv
import functools
import io
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from digits_jax import files, models
from digits_jax.config import Config, resolve
from digits_jax.environment import environment
from digits_jax.models import native
from digits_jax.models.cnn import ConvNet
from digits_jax.training import sharding
from digits_jax.training.optim import make_optimizer
from digits_jax.training.step import create_train_state, make_epoch_fn, train_step

EPOCH_IMAGES = 60_000


Runner = Callable[[], Any]  # one measurement: trains ``steps`` steps, blocks until done


def _seconds(run: Runner) -> float:
  t0 = time.perf_counter()
  run()
  return time.perf_counter() - t0


def interleaved_medians(runners: dict[str, Runner], repeats: int) -> dict[str, float]:
  """Median seconds of each runner over ``repeats`` rounds in which every runner runs once."""
  times: dict[str, list[float]] = {name: [] for name in runners}
  for _ in range(repeats):
    for name, run in runners.items():
      times[name].append(_seconds(run))
  return {name: statistics.median(t) for name, t in times.items()}


def _random_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  return rng.random((n, 28, 28, 1), np.float32), rng.integers(0, 10, n).astype(np.int32)


def prepare_ours(config: Config, steps: int) -> Runner:
  """``steps`` steps of digits_jax's own training loop (compiled and warmed up)."""
  images, labels = _random_data(steps * config.batch_size)
  x, y = jnp.asarray(images), jnp.asarray(labels)
  state = create_train_state(config, jax.random.PRNGKey(0), steps)
  epoch_fn = make_epoch_fn(config)
  holder = {"state": epoch_fn(state, jax.random.PRNGKey(1), x, y)[0]}  # warm-up

  def run():
    holder["state"], metrics = epoch_fn(holder["state"], jax.random.PRNGKey(2), x, y)
    jax.block_until_ready(metrics)

  return run


def prepare_plain_flax(config: Config, steps: int) -> Runner:
  """``steps`` steps of a straightforward Flax loop (host batches), warmed up."""
  config = config.replace(fast_ops=False)
  images, labels = _random_data(steps * config.batch_size)
  bs = config.batch_size
  state = create_train_state(config, jax.random.PRNGKey(0), steps)
  step = jax.jit(functools.partial(train_step, config=config), donate_argnums=0)
  key = jax.random.PRNGKey(1)
  holder = {"state": step(state, images[:bs], labels[:bs], key)[0]}

  def run():
    order = np.random.default_rng(0).permutation(len(labels))
    for i in range(steps):
      idx = order[i * bs : (i + 1) * bs]
      holder["state"], metrics = step(
        holder["state"], images[idx], labels[idx], jax.random.fold_in(key, i)
      )
    jax.block_until_ready(metrics)

  return run


def _layers(name: str):
  module = models.get_spec(name).module
  if not issubclass(module, ConvNet):
    return None
  return module.layers, module.dense, module.dropout


def prepare_torch(config: Config, steps: int) -> Runner | None:
  """``steps`` steps of the same network in PyTorch; None if unavailable."""
  try:
    import torch
  except ImportError:
    return None
  spec = _layers(config.model)
  if spec is None:
    return None
  conv_layers, dense, dropout = spec
  torch.manual_seed(0)
  layers, channels, size = [], 1, 28
  for layer in conv_layers:
    if layer == "pool":
      layers.append(torch.nn.MaxPool2d(2))
      size //= 2
    else:
      layers += [torch.nn.Conv2d(channels, layer, 3), torch.nn.ReLU()]
      channels, size = layer, size - 2
  layers.append(torch.nn.Flatten())
  width = channels * size * size
  for d in dense:
    layers += [torch.nn.Linear(width, d), torch.nn.ReLU()]
    if dropout:
      layers.append(torch.nn.Dropout(dropout))
    width = d
  layers.append(torch.nn.Linear(width, 10))
  net = torch.nn.Sequential(*layers)
  if config.optimizer == "sgd":
    opt = torch.optim.SGD(net.parameters(), lr=config.learning_rate, momentum=config.momentum)
  else:
    opt = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
  loss_fn = torch.nn.CrossEntropyLoss()
  images, labels = _random_data(steps * config.batch_size)
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  y = torch.from_numpy(labels.astype(np.int64))
  bs = config.batch_size

  def run():
    order = torch.randperm(len(y))
    for i in range(steps):
      idx = order[i * bs : (i + 1) * bs]
      opt.zero_grad()
      loss = loss_fn(net(x[idx]), y[idx])
      loss.backward()
      opt.step()

  run()  # warm-up
  return run


def prepare_keras(config: Config, steps: int) -> Runner | None:
  """``steps`` steps of the same network in Keras (``model.fit``); None if unavailable."""
  try:
    import keras
  except ImportError:
    return None
  spec = _layers(config.model)
  if spec is None:
    return None
  conv_layers, dense, dropout = spec
  keras.utils.set_random_seed(0)
  layers = [keras.Input((28, 28, 1))]
  for layer in conv_layers:
    layers.append(
      keras.layers.MaxPooling2D(2)
      if layer == "pool"
      else keras.layers.Conv2D(layer, 3, activation="relu")
    )
  layers.append(keras.layers.Flatten())
  for d in dense:
    layers.append(keras.layers.Dense(d, activation="relu"))
    if dropout:
      layers.append(keras.layers.Dropout(dropout))
  layers.append(keras.layers.Dense(10))
  net = keras.Sequential(layers)
  opt = (
    keras.optimizers.SGD(config.learning_rate, momentum=config.momentum)
    if config.optimizer == "sgd"
    else keras.optimizers.Adam(config.learning_rate)
  )
  net.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  images, labels = _random_data(steps * config.batch_size)

  def run():
    net.fit(images, labels, batch_size=config.batch_size, epochs=1, shuffle=True, verbose=0)

  run()  # warm-up: traces the train function
  return run


def time_vmap(config: Config, k: int, steps: int, repeats: int) -> tuple[float, float]:
  """Seconds for ``steps`` steps of K models: (vmapped together, one after another)."""
  images, labels = _random_data(steps * config.batch_size)
  x, y = jnp.asarray(images), jnp.asarray(labels)
  tx = make_optimizer(config, steps)
  model = config.create_model()
  states = [
    create_train_state(config, jax.random.PRNGKey(i), steps, tx=tx, model=model) for i in range(k)
  ]
  rngs = jax.random.split(jax.random.PRNGKey(1), k)
  group_fn = make_epoch_fn(config, vmapped=True)
  single_fn = make_epoch_fn(config)
  group = {"state": group_fn(sharding.stack_models(states), rngs, x, y)[0]}
  singles = [single_fn(s, r, x, y)[0] for s, r in zip(states, rngs)]

  def run_group():
    group["state"], metrics = group_fn(group["state"], rngs, x, y)
    jax.block_until_ready(metrics)

  def run_singles():
    for i in range(k):
      singles[i], metrics = single_fn(singles[i], rngs[i], x, y)
    jax.block_until_ready(metrics)

  medians = interleaved_medians({"group": run_group, "singles": run_singles}, repeats)
  return medians["group"], medians["singles"]


def benchmark_model(
  name: str,
  *,
  steps: int,
  repeats: int,
  batch_size: int | None = None,
  frameworks: tuple[str, ...] = ("ours", "flax", "torch", "keras"),
) -> dict[str, Any]:
  """One row of the speed table: seconds per 60,000-image epoch in each framework."""
  config = resolve(Config(model=name, batch_size=batch_size, augment=False))
  per_epoch = EPOCH_IMAGES / (steps * config.batch_size)
  preparers = {
    "ours": prepare_ours,
    "flax": prepare_plain_flax,
    "torch": prepare_torch,
    "keras": prepare_keras,
  }
  row: dict[str, Any] = {
    "model": name,
    "batch_size": config.batch_size,
    "optimizer": config.optimizer,
  }
  runners = {f: preparers[f](config, steps) for f in frameworks}
  medians = interleaved_medians({f: r for f, r in runners.items() if r is not None}, repeats)
  for framework in frameworks:
    seconds = medians.get(framework)
    row[f"{framework}_s_per_epoch"] = None if seconds is None else seconds * per_epoch
  ours = row.get("ours_s_per_epoch")
  if ours:
    row["ours_images_per_s"] = EPOCH_IMAGES / ours
    for framework in frameworks[1:]:
      other = row.get(f"{framework}_s_per_epoch")
      row[f"{framework}_over_ours"] = None if other is None else other / ours
  return row


# --- the command line ---------------------------------------------------------

flags.DEFINE_list("models", list(models.MODELS), "Models to time.")
flags.DEFINE_list(
  "frameworks",
  ["ours", "flax", "torch", "keras"],
  "Which implementations to time (ours is always first).",
)
flags.DEFINE_integer("steps", 60, "Optimizer steps per measurement.")
flags.DEFINE_integer("repeats", 3, "Measurements per figure (the median is reported).")
flags.DEFINE_integer("batch_size", None, "Batch size (default: each model's recipe).")
flags.DEFINE_integer("vmap_models", 4, "K for the vmapped-sweep measurement (0: skip).")
flags.DEFINE_string("vmap_model", "conv2_dense128_dropout", "Model for the vmap measurement.")
flags.DEFINE_string("output_dir", "benchmark_results", "Where the table is written.")
FLAGS = flags.FLAGS

COLUMNS = (
  "model",
  "batch_size",
  "optimizer",
  "ours_s_per_epoch",
  "flax_s_per_epoch",
  "torch_s_per_epoch",
  "keras_s_per_epoch",
  "ours_images_per_s",
  "flax_over_ours",
  "torch_over_ours",
  "keras_over_ours",
)


def _fmt(value):
  if value is None:
    return "-"
  return f"{value:.2f}" if isinstance(value, float) else str(value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for name in FLAGS.models + [FLAGS.vmap_model]:
    try:
      models.get_spec(name)
    except models.UnknownModelError as e:
      raise app.UsageError(str(e)) from None
  frameworks = tuple(["ours"] + [f for f in FLAGS.frameworks if f != "ours"])
  if jax.default_backend() == "cpu":
    native.tune_allocator()  # as training does (experiments.common.setup); all columns share it
  env = environment()
  print(
    f"# {platform.node()} {env['cpu']} ({env['cpu_count']} cores), "
    f"{env['devices']}, jax {env['jax']}, {time.strftime('%Y-%m-%d %H:%M')}"
  )
  rows = []
  for name in FLAGS.models:
    row = benchmark_model(
      name,
      steps=FLAGS.steps,
      repeats=FLAGS.repeats,
      batch_size=FLAGS.batch_size,
      frameworks=frameworks,
    )
    print(" | ".join(f"{c}={_fmt(row.get(c))}" for c in COLUMNS), flush=True)
    rows.append(row)

  lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  lines += ["| " + " | ".join(_fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
  table = "\n".join(lines) + "\n"
  if FLAGS.vmap_models:
    config = resolve(Config(model=FLAGS.vmap_model, batch_size=FLAGS.batch_size, augment=False))
    k = FLAGS.vmap_models
    together, apart = time_vmap(config, k, FLAGS.steps, FLAGS.repeats)
    images = k * FLAGS.steps * config.batch_size
    table += (
      f"\nvmap, {k} x {config.model} (batch {config.batch_size}): "
      f"{images / together:.0f} images/s together, {images / apart:.0f} images/s "
      f"one after another: {apart / together:.2f}x\n"
    )
  print(table)
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  files.write_text(f"{FLAGS.output_dir}/benchmark.md", table)
  files.write_text(f"{FLAGS.output_dir}/benchmark.csv", out.getvalue())
  files.write_json(
    f"{FLAGS.output_dir}/environment.json",
    {
      **env,
      **_other_frameworks(),
      "native_kernels": native.available(),
      "steps": FLAGS.steps,
      "repeats": FLAGS.repeats,
      "date": time.strftime("%Y-%m-%d %H:%M"),
    },
  )


def _other_frameworks() -> dict[str, str]:
  """Versions of the optional frameworks that were timed."""
  versions = {}
  for name in ("torch", "keras", "tensorflow"):
    try:
      versions[name] = __import__(name).__version__
    except ImportError:
      pass
  return versions


if __name__ == "__main__":
  app.run(main)
