"""What a network costs: parameters, FLOPs per image, training throughput and inference latency.

* FLOPs come from XLA's cost analysis of the compiled forward pass at batch 1 on the plain-XLA
  path (``fast="off"``): the project's C++ kernels are custom calls whose work XLA cannot see,
  so the fast path would report only the layers around them. Convolutions and dense layers
  count a multiply-add as two FLOPs.
* Training throughput is the run's own figure: training images per second of its median epoch
  (``results.json``), measured while it trained, on the machine it trained on.
* Latency is measured here and now, on the machine recorded beside it: the median wall time of
  a jitted forward pass on the path inference takes (:func:`digits_jax.models.inference_apply`:
  XLA's own convolutions where the run trained with the C++ kernels, but the fused kernel for
  a first layer of at most 16 channels on one-channel images) at batch 1 and batch 1,024,
  after a warm-up call (the committed studies' evaluations timed the C++ kernels' path).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from digits_jax import environment, models
from digits_jax.data import IMAGE_SIZE, NUM_CLASSES

LATENCY_BATCHES = (1, 1024)


def flops_per_image(
  model_name: str,
  variables: Mapping[str, Any],
  num_classes: int = NUM_CLASSES,
  activation: str = "relu",
) -> float:
  """Forward FLOPs of one image, from XLA's cost analysis of the plain-XLA forward pass."""
  model = models.create_model(
    model_name, fast="off", num_classes=num_classes, activation=activation
  )
  image = jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 1), jnp.float32)
  compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, image).compile()
  analysis = compiled.cost_analysis()
  if isinstance(analysis, Sequence):  # older jax: one dict per computation
    analysis = analysis[0] if analysis else {}
  return float(analysis.get("flops", float("nan")))


def latency_seconds(
  forward, variables: Mapping[str, Any], batch: int, *, repeats: int = 20, min_seconds: float = 0.25
) -> float:
  """Median seconds of ``forward(variables, images)`` on a batch of ``batch`` zero images.

  Runs at least ``repeats`` times and at least ``min_seconds`` in all (fewer repeats for slow
  batches are not enough to take a median of), after one warm-up call that compiles.
  """
  images = jnp.zeros((batch, IMAGE_SIZE, IMAGE_SIZE, 1), jnp.float32)
  jax.block_until_ready(forward(variables, images))
  times: list[float] = []
  start = time.perf_counter()
  while len(times) < repeats or time.perf_counter() - start < min_seconds:
    t0 = time.perf_counter()
    jax.block_until_ready(forward(variables, images))
    times.append(time.perf_counter() - t0)
    if len(times) >= 10 * repeats:
      break
  return float(np.median(times))


def measure(
  model_name: str,
  variables: Mapping[str, Any],
  results: Mapping[str, Any],
  num_train: int | None,
  *,
  fast: bool | str = "auto",
  num_classes: int = NUM_CLASSES,
  batches: Sequence[int] = LATENCY_BATCHES,
  activation: str = "relu",
) -> dict[str, Any]:
  """A trained network's cost, JSON-ready.

  Args:
    model_name: the registered network.
    variables: its variables (``params`` and, with batch norm, ``batch_stats``).
    results: the run's ``results.json`` (``num_params``, ``seconds_per_epoch``).
    num_train: training images per epoch (``config.json``'s ``data.train``), for throughput.
    fast: the run's ``fast_ops`` (the latency is measured on the path its inference takes).
    num_classes: the output layer's width.
    batches: the batch sizes whose latency is measured.
    activation: the run's activation.

  Returns:
    ``num_params``, ``flops_per_image``, ``train_images_per_second`` (``None`` without the
    run's timing), ``latency_seconds`` ({batch: seconds}), ``images_per_second_inference``
    at the largest batch, and ``machine`` (:func:`digits_jax.environment.environment`).
  """
  model = models.create_model(model_name, fast=fast, num_classes=num_classes, activation=activation)
  apply = models.inference_apply(model) or model.apply
  forward = jax.jit(lambda v, x: apply(v, x, train=False))
  latency = {str(b): latency_seconds(forward, variables, b) for b in batches}
  seconds_per_epoch = results.get("seconds_per_epoch")
  throughput = None
  if num_train and seconds_per_epoch:
    throughput = float(num_train) / float(seconds_per_epoch)
  largest = max(batches)
  return {
    "num_params": int(models.count_params(variables["params"])),
    "flops_per_image": flops_per_image(model_name, variables, num_classes, activation),
    "train_images_per_second": throughput,
    "latency_seconds": latency,
    "images_per_second_inference": largest / latency[str(largest)],
    "machine": environment.environment(),
  }
