"""How the models of a vmapped group are spread over the local devices.

With one device, nothing here changes anything. With several (on CPU, try
``XLA_FLAGS=--xla_force_host_platform_device_count=4``), a group of K vmapped models
splits its models axis over them when K is a multiple of the device count. A single
run uses one device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def stack_models(trees: Sequence[Any]) -> Any:
  """Stacks K pytrees along a new models axis, split over the devices when K allows."""
  stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)
  n = jax.device_count()
  if n == 1 or len(trees) % n:
    return stacked
  mesh = Mesh(np.array(jax.devices()), ("models",))
  return jax.device_put(stacked, NamedSharding(mesh, PartitionSpec("models")))
