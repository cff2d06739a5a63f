"""How a run spreads over devices: its batches over every device, vmapped groups' models.

* Data parallel (:func:`data_mesh`): one run uses every device of every process. The
  state and the data are replicated (:func:`replicate`); each device trains on its own
  equal slice of every batch inside ``jax.shard_map`` and the gradients are averaged
  (:func:`digits_jax.training.step.make_epoch_fn`). With one device the run is the
  plain single-device computation.
* Groups (:func:`stack_models`): K vmapped models split their models axis over the local
  devices when K is a multiple of the device count.

On CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` gives N devices; importing
digits_jax gives XLA's CPU client 2N threads for them, fewer can deadlock their collectives
(:func:`digits_jax.reserve_cpu_collective_threads`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from digits_jax.config import ConfigError

# The mesh axis a data-parallel run splits its batches over.
DATA_AXIS = "data"


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A one-axis mesh (:data:`DATA_AXIS`) over ``devices``: by default every process's."""
  return Mesh(np.array(jax.devices() if devices is None else list(devices)), (DATA_AXIS,))


def check_batch_size(batch_size: int, num_devices: int, what: str = "--batch_size") -> None:
  """Raises ConfigError unless ``batch_size`` splits into equal parts over the devices."""
  if batch_size % num_devices:
    lower = batch_size - batch_size % num_devices
    raise ConfigError(
      f"{what}={batch_size} does not split over {num_devices} devices: each device trains "
      f"on an equal part of every batch; give a multiple of {num_devices} (e.g. "
      f"{lower or num_devices} or {lower + num_devices})"
    )


def replicate(tree: Any, mesh: Mesh) -> Any:
  """``tree``'s arrays, each copied whole onto every device of ``mesh``.

  Every process passes the same values (the same seed, the same data); the result is a
  global array that every process's jitted computations can take.
  """
  sharding = NamedSharding(mesh, PartitionSpec())
  return jax.tree_util.tree_map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree
  )


def split_rows(x: np.ndarray, mesh: Mesh) -> jax.Array:
  """``x`` (the same in every process) with its rows split in equal parts over ``mesh``."""
  sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
  return jax.make_array_from_process_local_data(sharding, x, x.shape)


def to_local(tree: Any) -> Any:
  """``tree`` with each array replicated on several devices as its copy on one of them.

  What a process computes with alone (metrics, reports, pictures) must not use global
  arrays, whose computations every process has to join. Other arrays are left as they are.
  """

  def local(x):
    if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1 and x.is_fully_replicated:
      return x.addressable_data(0)
    return x

  return jax.tree_util.tree_map(local, tree)


def mesh_of(tree: Any) -> Mesh | None:
  """The data-parallel mesh ``tree``'s arrays are replicated on, ``None`` when on one device."""
  for x in jax.tree_util.tree_leaves(tree):
    sharding = getattr(x, "sharding", None)
    if isinstance(sharding, NamedSharding) and DATA_AXIS in sharding.mesh.axis_names:
      return sharding.mesh if sharding.mesh.size > 1 else None
  return None


def stack_models(trees: Sequence[Any]) -> Any:
  """Stacks K pytrees along a new models axis, split over the devices when K allows."""
  stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)
  n = jax.device_count()
  if n == 1 or len(trees) % n:
    return stacked
  mesh = Mesh(np.array(jax.devices()), ("models",))
  return jax.device_put(stacked, NamedSharding(mesh, PartitionSpec("models")))
