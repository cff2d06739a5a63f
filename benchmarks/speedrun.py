"""Time to 99%, side by side: the speedrun recipe in digits_jax, PyTorch and Keras.

    python -m experiments.speedrun                    # 10 seeds each, interleaved
    python -m experiments.speedrun --keras            # Keras 3 (TensorFlow) as well
    python -m experiments.speedrun --seeds=5 --torch=false

Both train the same network (:class:`digits_jax.models.cnn.Speedrun`, rebuilt layer
for layer by :func:`torch_net`) with the same recipe
(:class:`digits_jax.speedrun.Recipe`) on the same normalised arrays in the same
batch order: Adam with the recipe's betas, the learning rate of optax's one-cycle
schedule at every step (:func:`torch_learning_rates`), cross-entropy. PyTorch's side is
the plain loop of tuomaso/train_mnist_fast: the data in memory as one tensor, slices as
batches, one ``optimizer.step()`` per batch. The seeds take turns (ours seed 0, PyTorch
seed 0, ours seed 1, ...) so load from elsewhere hits both; each side's time is the
median over seeds of the wall time from building the network to the last step.
Evaluation on the test set (once per seed, after training) is not timed.

With ``keras=True`` the same recipe also runs in Keras 3 on TensorFlow (:class:`KerasSpeedrun`):
``model.fit`` over the same batches in the same order, a learning-rate schedule that reads
the same per-step rates. Its time, from building the network to the last step, includes
the graph building and XLA compilation Keras does in ``fit`` (it cannot be told apart
there), as a Keras user's would.

:func:`run_side_by_side` returns every side's runs and summaries and the ratios;
:mod:`experiments.speedrun` prints them and writes ``speedrun.json`` and ``speedrun.md``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import jax
import numpy as np

from digits_jax import models
from digits_jax import speedrun as sr

log = logging.getLogger(__name__)


def torch_net(model: str = "speedrun"):
  """The registered ``speedrun``-style network ``model`` as a ``torch.nn.Module`` (NCHW).

  Same layers, shapes and parameter count as ours; PyTorch's default initialisation.
  """
  import torch

  spec = models.get_spec(model).module
  layers, channels, size = [], 1, 28
  if spec.crop:
    c = spec.crop
    layers.append(torch.nn.ZeroPad2d(-c))  # negative padding cuts c pixels off every edge
    size -= 2 * c
  for width, k in zip(spec.features, spec.kernel_sizes):
    layers += [torch.nn.Conv2d(channels, width, k), torch.nn.MaxPool2d(2), torch.nn.ReLU()]
    channels, size = width, (size - k + 1) // 2
  layers += [
    torch.nn.Flatten(),
    torch.nn.Linear(channels * size * size, spec.dense),
    torch.nn.ReLU(),
    torch.nn.Linear(spec.dense, 10),
  ]
  return torch.nn.Sequential(*layers)


def torch_learning_rates(recipe: sr.Recipe, steps: int) -> np.ndarray:
  """The learning rate of every step: the values of our optax schedule."""
  schedule = recipe.schedule(steps)
  return np.asarray([float(schedule(i)) for i in range(steps)])


class _Twin:
  """What the other frameworks' sides share: one seed trained, tested and recorded."""

  label = ""

  def train(self, seed: int) -> tuple[Any, float]:
    raise NotImplementedError

  def test_accuracy(self, net) -> float:
    raise NotImplementedError

  def record(self, seed: int) -> dict[str, Any]:
    """Trains and tests one seed: ``{"seed", "train_seconds", "compile_seconds", ...}``."""
    net, seconds = self.train(seed)
    accuracy = self.test_accuracy(net)
    log.info("%s seed %d: %.2f s, test accuracy %.2f%%", self.label, seed, seconds, 100 * accuracy)
    return {
      "seed": seed,
      "train_seconds": seconds,
      "compile_seconds": 0.0,
      "test_accuracy": accuracy,
    }


def torch_device(jax_backend: str, cuda_available: bool) -> tuple[str, str | None]:
  """Where PyTorch trains so that it runs on the device JAX runs on.

  Args:
    jax_backend: ``jax.default_backend()``.
    cuda_available: ``torch.cuda.is_available()``.

  Returns:
    ``(device, why_no_ratio)``: the torch device, and ``None`` when both sides run on the
    same kind of device, else why the ratio of their times says nothing (it is then not
    given).
  """
  if jax_backend == "cpu":
    return "cpu", None
  if jax_backend in ("gpu", "cuda", "rocm") and cuda_available:
    return "cuda", None
  return "cpu", (
    f"no ratio: JAX runs on {jax_backend} but PyTorch can only use the CPU here"
    " (torch.cuda.is_available() is False or there is no PyTorch backend for it)"
  )


def _torch_cuda_available() -> bool:
  import torch

  return torch.cuda.is_available()


class TorchSpeedrun(_Twin):
  """The recipe in PyTorch: data as NCHW tensors, batches in order.

  Args:
    recipe: the recipe (its model must be a ``Speedrun`` network).
    data: the same normalised arrays ours trains on.
    device: the torch device (:func:`torch_device`).
  """

  label = "PyTorch"

  def __init__(self, recipe: sr.Recipe, data: sr.SpeedrunData, device: str = "cpu"):
    import torch

    self.torch = torch
    self.device = device
    self.recipe = recipe
    self.data = data
    self.steps = recipe.steps(len(data.train_labels))
    images, labels = sr.batch_array(data.train_images, data.train_labels, recipe.batch_size)
    images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 1, 4, 2, 3)))
    self._images = images.to(device)
    self._labels = torch.from_numpy(labels.astype(np.int64)).to(device)
    self._rates = torch_learning_rates(recipe, self.steps).tolist()

  def train(self, seed: int) -> tuple[Any, float]:
    """Builds the network from ``seed`` and trains it; returns (network, seconds)."""
    torch = self.torch
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    net = torch_net(self.recipe.model).to(self.device)
    opt = torch.optim.Adam(
      net.parameters(), lr=self._rates[0], betas=(self.recipe.b1, self.recipe.b2)
    )
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=self.recipe.label_smoothing)
    net.train()
    num_batches = len(self._labels)
    for step in range(self.steps):
      for group in opt.param_groups:
        group["lr"] = self._rates[step]
      b = step % num_batches
      opt.zero_grad()
      loss = loss_fn(net(self._images[b]), self._labels[b])
      loss.backward()
      opt.step()
    if self.device == "cuda":
      torch.cuda.synchronize()
    return net, time.perf_counter() - t0

  def test_accuracy(self, net) -> float:
    """Accuracy of a trained network on the test set."""
    torch = self.torch
    net.eval()
    with torch.no_grad():
      x = torch.from_numpy(np.ascontiguousarray(self.data.test_images.transpose(0, 3, 1, 2)))
      predicted = net(x.to(self.device)).argmax(1).cpu().numpy()
    return float(np.mean(predicted == self.data.test_labels))


def keras_net(model: str = "speedrun"):
  """The registered ``speedrun``-style network ``model`` as a ``keras.Sequential`` (NHWC).

  Same layers, shapes and parameter count as ours; Keras's default initialisation.
  """
  import keras

  spec = models.get_spec(model).module
  layers = [keras.Input((28, 28, 1))]
  if spec.crop:
    layers.append(keras.layers.Cropping2D(spec.crop))
  for width, k in zip(spec.features, spec.kernel_sizes):
    layers += [keras.layers.Conv2D(width, k), keras.layers.MaxPooling2D(2), keras.layers.ReLU()]
  layers += [
    keras.layers.Flatten(),
    keras.layers.Dense(spec.dense, activation="relu"),
    keras.layers.Dense(10),
  ]
  return keras.Sequential(layers)


class KerasSpeedrun(_Twin):
  """The recipe in Keras 3 (TensorFlow backend): ``model.fit`` over the same batches.

  Args:
    recipe: the recipe (its model must be a ``Speedrun`` network).
    data: the same normalised arrays ours trains on.
  """

  label = "Keras"

  def __init__(self, recipe: sr.Recipe, data: sr.SpeedrunData):
    import keras
    import tensorflow as tf

    self.keras, self.tf = keras, tf
    self.recipe = recipe
    self.data = data
    self.steps = recipe.steps(len(data.train_labels))
    images, labels = sr.batch_array(data.train_images, data.train_labels, recipe.batch_size)
    order = np.arange(self.steps) % len(labels)  # batches in order, as ours and PyTorch's
    self._batches = (images[order], np.eye(10, dtype=np.float32)[labels[order]])
    self._rates = torch_learning_rates(recipe, self.steps).astype(np.float32)

  def train(self, seed: int) -> tuple[Any, float]:
    """Builds the network from ``seed`` and trains it; returns (network, seconds)."""
    keras, tf = self.keras, self.tf
    rates = self._rates

    class Rates(keras.optimizers.schedules.LearningRateSchedule):
      def __call__(self, step):
        return tf.gather(rates, tf.minimum(tf.cast(step, tf.int32), len(rates) - 1))

    t0 = time.perf_counter()
    keras.utils.set_random_seed(seed)
    net = keras_net(self.recipe.model)
    net.compile(
      optimizer=keras.optimizers.Adam(Rates(), beta_1=self.recipe.b1, beta_2=self.recipe.b2),
      loss=keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=self.recipe.label_smoothing
      ),
    )
    batches = tf.data.Dataset.from_tensor_slices(self._batches)
    net.fit(batches, epochs=1, shuffle=False, verbose=0)
    return net, time.perf_counter() - t0

  def test_accuracy(self, net) -> float:
    """Accuracy of a trained network on the test set."""
    logits = net.predict(self.data.test_images, batch_size=1000, verbose=0)
    return float(np.mean(logits.argmax(1) == self.data.test_labels))


def run_side_by_side(
  recipe: sr.Recipe,
  data: sr.SpeedrunData,
  seeds: list[int],
  *,
  torch_recipe: sr.Recipe | None = None,
  torch: bool = True,
  keras: bool = False,
) -> dict[str, Any]:
  """Ours, PyTorch (when installed) and Keras (when asked), seed by seed in turns.

  Args:
    recipe: what ours trains.
    data: the arrays every side trains and tests on.
    seeds: one run of each side per seed.
    torch_recipe: what PyTorch and Keras train (default: ``recipe``; the benchmark passes
      :data:`digits_jax.speedrun.REFERENCE`, the published recipe).
    torch: train it in PyTorch when PyTorch is installed.
    keras: also train it in Keras 3 on TensorFlow.

  Returns:
    :func:`digits_jax.speedrun.run_speedrun`'s dict, plus ``torch_recipe``,
    ``torch_runs``, ``torch_summary`` and ``ratio`` (our median training seconds over
    PyTorch's) when PyTorch is installed, and ``keras_runs``, ``keras_summary`` and
    ``keras_ratio`` with ``keras``.

  Raises:
    ImportError: ``keras`` and Keras or TensorFlow is not installed.
  """
  torch_recipe = torch_recipe or recipe
  ours = sr.Speedrun(recipe, data)
  backend = jax.default_backend()
  try:
    device, why_no_ratio = torch_device(backend, _torch_cuda_available()) if torch else ("", None)
    theirs = TorchSpeedrun(torch_recipe, data, device) if torch else None
  except ImportError:
    theirs = None
  keras_side = KerasSpeedrun(torch_recipe, data) if keras else None
  runs, torch_runs, keras_runs = [], [], []
  for seed in seeds:
    runs += ours.run([seed])
    if theirs is not None:
      torch_runs.append(theirs.record(seed))
    if keras_side is not None:
      keras_runs.append(keras_side.record(seed))
  result = {
    "recipe": dataclasses.asdict(recipe),
    "steps": ours.steps,
    "runs": runs,
    "summary": sr.summarize(runs),
  }
  if torch_runs:
    result["torch_recipe"] = dataclasses.asdict(torch_recipe)
    result["torch_steps"] = theirs.steps
    result["torch_runs"] = torch_runs
    result["torch_summary"] = sr.summarize(torch_runs)
    result["torch_device"] = theirs.device
    if why_no_ratio:
      result["ratio_note"] = why_no_ratio
    else:
      result["ratio"] = (
        result["summary"]["train_seconds_median"] / result["torch_summary"]["train_seconds_median"]
      )
  if keras_runs:
    result["torch_recipe"] = dataclasses.asdict(torch_recipe)
    result["keras_runs"] = keras_runs
    result["keras_summary"] = sr.summarize(keras_runs)
    if backend == "cpu":  # the Keras twin is TensorFlow on the CPU
      result["keras_ratio"] = (
        result["summary"]["train_seconds_median"] / result["keras_summary"]["train_seconds_median"]
      )
    else:
      result["keras_ratio_note"] = f"no Keras ratio: JAX runs on {backend}, Keras on the CPU"
  return result
