"""Time to 99%: one short recipe trained for many seeds, each timed, each tested once.

The speedrun asks how fast a network reaches 99% test accuracy on MNIST, the question
tuomaso/train_mnist_fast asked of PyTorch. Its recipe (:class:`Recipe`) trains a
registered ``Speedrun`` network on the whole training set, normalised, in a fixed batch
order (no shuffling; the seed changes only the initial parameters), with Adam and a
one-cycle learning rate, for one epoch or a fraction of one. No epoch or model is
selected: each seed's final parameters are evaluated once on the test set.

The default recipe is the published one (:data:`REFERENCE`: batch 256, one epoch) with
changes chosen on a held-out validation split, never on the test set: label smoothing
0.1, batch 128, three quarters of an epoch, and the ``speedrun_small`` network (the
published one on the central 24x24 pixels, conv 16 and dense 128: about half the
arithmetic per image) (docs/speedrun.md).

Speed comes from doing no more than the recipe needs: the training set lives on the
device as one array of batches, and initialisation plus every step of a seed's training
is one compiled call (a ``lax.scan``), compiled once and reused for every seed. The
compile time is reported on its own (:attr:`Speedrun.compile_seconds`), the training
time per seed without it.

    recipe = Recipe()
    data = load_speedrun_data(recipe)
    result = run_speedrun(recipe, data, seeds=range(10))
    result["summary"]  # mean test accuracy with a 95% interval, seconds per seed, ...
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from digits_jax import data, models
from digits_jax.analysis import stats
from digits_jax.config import Config, resolve
from digits_jax.training.step import create_train_state, train_step

log = logging.getLogger(__name__)

# The usual MNIST normalisation (mean and standard deviation of the training pixels).
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
TARGET = 0.99


@dataclasses.dataclass(frozen=True)
class Recipe:
  """Everything a speedrun trains with.

  Attributes:
    model: a registered network name.
    batch_size: images per step.
    epochs: passes over the training set; a fraction trains that share of its batches.
    learning_rate: the one-cycle schedule's peak.
    b1: Adam's first-moment decay.
    b2: Adam's second-moment decay.
    pct_start: share of the steps spent rising to the peak.
    div_factor: the schedule starts at ``learning_rate / div_factor``.
    final_div_factor: and ends at that divided by ``final_div_factor``.
    label_smoothing: in [0, 1).
    validation_size: training images held out (0: train on all 60,000). Reported
      figures use 0; a search over recipes holds some out and reads
      :func:`evaluate` on them rather than on the test set.
    activation: the network's non-linearity (:data:`digits_jax.models.ACTIVATIONS`).
  """

  model: str = "speedrun_small"
  batch_size: int = 128
  epochs: float = 0.75
  learning_rate: float = 1e-2
  b1: float = 0.7
  b2: float = 0.9
  pct_start: float = 0.3
  div_factor: float = 25.0
  final_div_factor: float = 1e4
  label_smoothing: float = 0.1
  validation_size: int = 0
  activation: str = "relu"

  def replace(self, **changes: Any) -> Recipe:
    return dataclasses.replace(self, **changes)

  def validate(self) -> None:
    """Checks every value before any data or compute.

    Raises:
      ValueError: naming the field and what it must be.
    """
    models.get_spec(self.model)
    if self.activation not in models.ACTIVATIONS:
      raise ValueError(
        f"unknown activation {self.activation!r}; valid values are: {', '.join(models.ACTIVATIONS)}"
      )
    for name in ("batch_size", "epochs", "learning_rate", "div_factor", "final_div_factor"):
      value = getattr(self, name)
      if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not 0 < self.pct_start < 1:
      raise ValueError(f"pct_start must be in (0, 1), got {self.pct_start}")
    for name in ("b1", "b2", "label_smoothing"):
      if not 0 <= getattr(self, name) < 1:
        raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
    if self.validation_size < 0:
      raise ValueError(f"validation_size must be >= 0, got {self.validation_size}")

  def steps(self, num_train: int) -> int:
    """Optimizer steps on ``num_train`` images: ``epochs`` passes of full batches.

    Raises:
      ValueError: when that is not a single step.
    """
    steps = int(self.epochs * num_train) // self.batch_size
    if steps < 1:
      raise ValueError(
        f"{self.epochs} epochs of {num_train} images is less than one batch of "
        f"{self.batch_size}; raise --epochs or lower --batch_size"
      )
    return steps

  def schedule(self, steps: int) -> optax.Schedule:
    """The learning rate by step: optax's cosine one-cycle over ``steps`` steps."""
    return optax.cosine_onecycle_schedule(
      steps,
      self.learning_rate,
      pct_start=self.pct_start,
      div_factor=self.div_factor,
      final_div_factor=self.final_div_factor,
    )

  def optimizer(self, steps: int) -> optax.GradientTransformation:
    """Adam with this recipe's betas and one-cycle schedule."""
    return optax.adam(self.schedule(steps), b1=self.b1, b2=self.b2)

  def config(self) -> Config:
    """The run settings the library's train step reads: this recipe's network, activation,
    loss and label smoothing, nothing else (no augmentation; the speedrun networks have no
    dropout). The optimizer is :meth:`optimizer`, passed to the train state."""
    return resolve(
      Config(
        model=self.model,
        optimizer="adam",
        learning_rate=self.learning_rate,
        batch_size=self.batch_size,
        schedule="onecycle",
        loss="sparse",
        label_smoothing=self.label_smoothing,
        validation_size=self.validation_size,
        activation=self.activation,
        augment=False,
        ema=0.0,
        adversarial="none",
      )
    )


# The published recipe (tuomaso/train_mnist_fast): what PyTorch trains in the benchmark.
REFERENCE = Recipe(
  model="speedrun",
  batch_size=256,
  epochs=1.0,
  learning_rate=1e-2,
  b1=0.7,
  b2=0.9,
  label_smoothing=0.0,
)


@dataclasses.dataclass(frozen=True)
class SpeedrunData:
  """Normalised MNIST arrays for a speedrun (NumPy, NHWC, float32; labels int32)."""

  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  validation_images: np.ndarray
  validation_labels: np.ndarray


def normalise(images: np.ndarray) -> np.ndarray:
  """Pixels in [0, 1] to zero mean and unit variance (MNIST's training statistics)."""
  return ((images - MNIST_MEAN) / MNIST_STD).astype(np.float32)


def speedrun_data(datasets: data.Datasets) -> SpeedrunData:
  """The splits of ``datasets`` normalised for :class:`Speedrun` (:func:`run_speedrun`)."""
  return SpeedrunData(
    normalise(datasets.train.images),
    datasets.train.labels.astype(np.int32),
    normalise(datasets.test.images),
    datasets.test.labels.astype(np.int32),
    normalise(datasets.validation.images),
    datasets.validation.labels.astype(np.int32),
  )


def load_speedrun_data(recipe: Recipe, *, manual_dir: str | None = None) -> SpeedrunData:
  """MNIST through the ``idx`` backend (no TensorFlow), normalised.

  Args:
    recipe: its ``validation_size`` sets the held-out split.
    manual_dir: folder of the four MNIST files (default: ``$DIGITS_MANUAL_DIR``).

  Raises:
    digits_jax.data.DataError: the files are missing or wrong (the message says where to
      put them).
  """
  datasets = data.load_datasets(
    "mnist", manual_dir=manual_dir, validation_size=recipe.validation_size, backend="idx"
  )
  return speedrun_data(datasets)


def batch_array(images: np.ndarray, labels: np.ndarray, batch_size: int):
  """The data as (batches, batch_size, ...) arrays in its own order; the remainder is dropped."""
  n = len(labels) // batch_size * batch_size
  return (
    images[:n].reshape(-1, batch_size, *images.shape[1:]),
    labels[:n].reshape(-1, batch_size),
  )


def make_train_fn(recipe: Recipe, num_train: int, *, fast: bool = True) -> Callable:
  """The pure ``(rng, batched_images, batched_labels) -> (params, final_loss)`` of one seed.

  Initialisation from ``rng`` and ``recipe.steps(num_train)`` steps of the library's train
  step (:func:`digits_jax.training.step.train_step`, with the recipe's Adam and one-cycle
  schedule) over the batches in order, wrapping round after the last batch, as one
  ``lax.scan``.
  """
  model = models.create_model(recipe.model, fast=fast, activation=recipe.activation)
  steps = recipe.steps(num_train)
  tx = recipe.optimizer(steps)
  config = recipe.config()

  def train(rng, images, labels):
    state = create_train_state(config, rng, steps, tx=tx, model=model)
    num_batches = labels.shape[0]

    def body(state, i):
      b = i % num_batches
      step_rng = jax.random.fold_in(rng, i)  # dropout's key, for recipes whose network has it
      state, metrics = train_step(state, images[b], labels[b], step_rng, config=config)
      return state, metrics["loss"]

    state, losses = jax.lax.scan(body, state, jnp.arange(steps))
    return state.params, losses[-1]

  return train


@functools.partial(jax.jit, static_argnums=0)
def _logits(model, params, images):
  return model.apply({"params": params}, images, train=False)


def evaluate(
  recipe: Recipe, params, images: np.ndarray, labels: np.ndarray, batch_size: int = 2000
) -> float:
  """Accuracy of ``params`` on ``images``, in fixed-size batches (the last one padded)."""
  model = models.create_model(recipe.model, activation=recipe.activation)
  n = len(labels)
  padded = np.pad(images, ((0, (-n) % batch_size),) + ((0, 0),) * (images.ndim - 1))
  chunks = [
    _logits(model, params, jnp.asarray(padded[i : i + batch_size]))
    for i in range(0, len(padded), batch_size)
  ]
  predicted = np.asarray(jnp.argmax(jnp.concatenate(chunks)[:n], -1))
  return float(np.mean(predicted == labels))


class Speedrun:
  """A compiled speedrun: train one seed (or several vmapped) in one call, then test it.

  Construction puts the batches on the device and compiles the training call
  (:attr:`compile_seconds`); :meth:`train` then only runs it.

  Args:
    recipe: the recipe.
    data: normalised data (:func:`speedrun_data`).
    vmap_seeds: compile for this many seeds trained together under ``jax.vmap`` (0: one
      seed per call).
  """

  def __init__(self, recipe: Recipe, data: SpeedrunData, *, vmap_seeds: int = 0):
    recipe.validate()
    self.recipe = recipe
    self.data = data
    self.vmap_seeds = vmap_seeds
    self.steps = recipe.steps(len(data.train_labels))
    images, labels = batch_array(data.train_images, data.train_labels, recipe.batch_size)
    self._images = jax.device_put(images)
    self._labels = jax.device_put(labels)
    fn = make_train_fn(recipe, len(data.train_labels))
    key = jax.random.PRNGKey(0)
    if vmap_seeds:
      fn = jax.vmap(fn, in_axes=(0, None, None))
      key = jax.random.split(key, vmap_seeds)
    t0 = time.perf_counter()
    self._compiled = jax.jit(fn).lower(key, self._images, self._labels).compile()
    self.compile_seconds = time.perf_counter() - t0

  def train(self, seeds: int | Sequence[int]) -> tuple[Any, float]:
    """Trains from ``seeds`` (one int, or ``vmap_seeds`` ints); returns (params, seconds).

    The seconds are the wall time of the compiled call, until its results are ready.
    """
    if self.vmap_seeds:
      rng = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    else:
      rng = jax.random.PRNGKey(seeds)
    jax.block_until_ready(rng)
    t0 = time.perf_counter()
    params, loss = self._compiled(rng, self._images, self._labels)
    jax.block_until_ready((params, loss))
    return params, time.perf_counter() - t0

  def test_accuracy(self, params) -> float:
    """Accuracy of one seed's parameters on the test set."""
    return evaluate(self.recipe, params, self.data.test_images, self.data.test_labels)

  def validation_accuracy(self, params) -> float:
    """Accuracy of one seed's parameters on the held-out training images."""
    return evaluate(self.recipe, params, self.data.validation_images, self.data.validation_labels)

  def run(self, seeds: Iterable[int]) -> list[dict[str, Any]]:
    """Trains and tests every seed; one record per seed (see :func:`run_speedrun`)."""
    seeds = list(seeds)
    groups = (
      [seeds[i : i + self.vmap_seeds] for i in range(0, len(seeds), self.vmap_seeds)]
      if self.vmap_seeds
      else [[s] for s in seeds]
    )
    records = []
    for group in groups:
      if self.vmap_seeds and len(group) != self.vmap_seeds:
        raise ValueError(
          f"{len(seeds)} seeds do not split into groups of {self.vmap_seeds}; give a "
          "multiple of --vmap_seeds"
        )
      params, seconds = self.train(group if self.vmap_seeds else group[0])
      for i, seed in enumerate(group):
        p = jax.tree_util.tree_map(lambda x, i=i: x[i], params) if self.vmap_seeds else params
        records.append(self.record(seed, p, seconds / len(group)))
    return records

  def record(self, seed: int, params, seconds: float) -> dict[str, Any]:
    """One seed's row of ``speedrun.json``."""
    row = {
      "seed": seed,
      "train_seconds": seconds,
      "compile_seconds": self.compile_seconds,
      "test_accuracy": self.test_accuracy(params),
    }
    if len(self.data.validation_labels):
      row["validation_accuracy"] = self.validation_accuracy(params)
    log.info("seed %d: %.2f s, test accuracy %.2f%%", seed, seconds, 100 * row["test_accuracy"])
    return row


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
  """Mean and its Student-t 95% interval over seeds (:func:`stats.seed_interval`)."""
  values = np.asarray(values, float)
  mean = float(values.mean())
  if len(values) < 2:
    return mean, mean, mean
  interval = stats.seed_interval(values)
  return mean, interval.low, interval.high


def summarize(runs: Sequence[dict[str, Any]], target: float = TARGET) -> dict[str, Any]:
  """Seconds per seed and test accuracy over seeds.

  Returns:
    ``train_seconds_median``, ``with_compile_seconds_median`` (training plus the one
    compilation, as a single seed trained in a fresh process would pay it),
    ``compile_seconds``, ``test_accuracy_mean`` with ``test_accuracy_low``/``_high`` (95%,
    Student t over seeds), ``test_accuracy_std``, ``fraction_at_target`` (seeds at or above
    ``target``) and ``seeds``.
  """
  seconds = [r["train_seconds"] for r in runs]
  accuracy = [r["test_accuracy"] for r in runs]
  compile_seconds = runs[0]["compile_seconds"]
  mean, low, high = mean_interval(accuracy)
  return {
    "seeds": len(runs),
    "train_seconds_median": statistics.median(seconds),
    "compile_seconds": compile_seconds,
    "with_compile_seconds_median": statistics.median(seconds) + compile_seconds,
    "test_accuracy_mean": mean,
    "test_accuracy_low": low,
    "test_accuracy_high": high,
    "test_accuracy_std": float(np.std(accuracy, ddof=1)) if len(runs) > 1 else 0.0,
    "fraction_at_target": float(np.mean(np.asarray(accuracy) >= target)),
    "target": target,
  }


def run_speedrun(
  recipe: Recipe, data: SpeedrunData, seeds: Iterable[int], *, vmap_seeds: int = 0
) -> dict[str, Any]:
  """Compiles once, trains and tests every seed.

  Returns:
    ``{"recipe", "steps", "runs": [{"seed", "train_seconds", "compile_seconds",
    "test_accuracy"}, ...], "summary"}`` (:func:`summarize`); with a validation split each
    run also has ``validation_accuracy``.
  """
  speedrun = Speedrun(recipe, data, vmap_seeds=vmap_seeds)
  runs = speedrun.run(seeds)
  return {
    "recipe": dataclasses.asdict(recipe),
    "steps": speedrun.steps,
    "vmap_seeds": vmap_seeds,
    "backend": jax.default_backend(),
    "runs": runs,
    "summary": summarize(runs),
  }


def markdown(result: dict[str, Any]) -> str:
  """The table of a :func:`run_speedrun` result (and of PyTorch's and Keras's, when they ran)."""
  lines = [
    "| implementation | train s/seed (median) | with compile | test accuracy, mean [95%] "
    "| std | seeds >= 99% |",
    "|---|---|---|---|---|---|",
  ]
  sides = (("digits_jax", "summary"), ("PyTorch", "torch_summary"), ("Keras", "keras_summary"))
  for name, key in sides:
    s = result.get(key)
    if s is None:
      continue
    lines.append(
      f"| {name} | {s['train_seconds_median']:.2f} | {s['with_compile_seconds_median']:.2f} | "
      f"{100 * s['test_accuracy_mean']:.2f}% [{100 * s['test_accuracy_low']:.2f}, "
      f"{100 * s['test_accuracy_high']:.2f}] | {100 * s['test_accuracy_std']:.2f} | "
      f"{s['fraction_at_target'] * s['seeds']:.0f}/{s['seeds']} |"
    )
  if "ratio" in result:
    lines.append(f"\nours / PyTorch, training seconds per seed: {result['ratio']:.2f}")
  elif "ratio_note" in result:
    lines.append(f"\n{result['ratio_note']}")
  if "keras_ratio" in result:
    lines.append(f"ours / Keras, training seconds per seed: {result['keras_ratio']:.2f}")
  return "\n".join(lines) + "\n"
