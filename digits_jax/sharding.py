"""How arrays are spread over the local devices (GPUs, TPU cores, CPU "devices").

With one device, nothing here changes anything. With several (on CPU, try
``XLA_FLAGS=--xla_force_host_platform_device_count=4``), a single run splits each
batch over them (data parallelism: parameters replicated, gradients all-reduced
by XLA) and a group of vmapped models splits its models axis over them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def _mesh(axis: str) -> Mesh:
  return Mesh(np.array(jax.devices()), (axis,))


def batch_sharding(batch_size: int) -> NamedSharding | None:
  """Sharding that splits a batch over all local devices; None on one device.

  Raises:
    ValueError: the batch size is not a multiple of the device count.
  """
  n = jax.device_count()
  if n == 1:
    return None
  if batch_size % n:
    raise ValueError(f"batch_size {batch_size} must be a multiple of the {n} devices "
                     "to split each batch over them")
  return NamedSharding(_mesh("data"), PartitionSpec("data"))


def stack_models(trees: Sequence[Any]) -> Any:
  """Stacks K pytrees along a new models axis, split over the devices when K allows."""
  stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)
  n = jax.device_count()
  if n == 1 or len(trees) % n:
    return stacked
  return jax.device_put(stacked, NamedSharding(_mesh("models"), PartitionSpec("models")))
