"""Joining a multi-process JAX runtime, and what only one process of it does.

A run across hosts is one program started on every host: each process joins the
``jax.distributed`` runtime (:func:`initialize`), after which ``jax.devices()`` lists the
devices of every process and one mesh spans them all
(:mod:`digits_jax.training.sharding`). Every process computes every step; files other
than checkpoints are written by process 0 alone (:func:`is_writer`), and the processes
wait for each other (:func:`barrier`) where one must see what another wrote. With one
process nothing here changes anything.
"""

from __future__ import annotations

import logging
import re
import socket
import time

import jax
from jax.experimental import multihost_utils

from digits_jax.config import ConfigError

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")


class DistributedError(RuntimeError):
  """The process could not join the multi-process runtime."""


def detected_cluster() -> str | None:
  """The cluster JAX's own detection finds (SLURM, Cloud TPU, Open MPI, ...), or ``None``.

  The names are those of ``jax.distributed.initialize``'s cluster environments; the
  opt-in ones (mpi4py) are not looked for.
  """
  try:
    from jax._src.clusters import ClusterEnv
  except ImportError:  # a JAX without cluster detection
    return None
  for env in ClusterEnv._cluster_types:
    if not env.opt_in_only_method and env.is_env_present():
      return env.__name__
  return None


def _check_arguments(
  coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> None:
  if coordinator_address is not None and not re.fullmatch(r".+:\d+", coordinator_address):
    raise ConfigError(
      f"--coordinator_address={coordinator_address!r} is not HOST:PORT; give process 0's "
      "host and a free port, e.g. --coordinator_address=10.0.0.1:1234"
    )
  if num_processes is not None and num_processes < 1:
    raise ConfigError(f"--num_processes={num_processes}: a run needs at least one process")
  if process_id is not None and process_id < 0:
    raise ConfigError(f"--process_id={process_id}: process ids start at 0")
  if num_processes is not None and process_id is not None and process_id >= num_processes:
    raise ConfigError(
      f"--process_id={process_id} is out of range for --num_processes={num_processes}: "
      f"give each process its own id from 0 to {num_processes - 1}"
    )


def _host_port(address: str) -> tuple[str, int]:
  host, port = address.rsplit(":", 1)
  return host.strip("[]"), int(port)


def _check_coordinator(address: str, process_id: int | None, timeout_s: float) -> None:
  """Fails with a clear message where JAX's runtime would abort the process instead.

  Process 0 must be able to listen on the port; any other process waits (up to
  ``timeout_s``) for something to answer at ``address``.
  """
  host, port = _host_port(address)
  if process_id == 0:
    try:
      with socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True):
        pass
    except (OSError, ValueError) as e:
      raise DistributedError(
        f"process 0 cannot listen on port {port} of --coordinator_address={address} ({e}); "
        "choose a free port, the same for every process"
      ) from e
    return
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host, port), timeout=1.0):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise DistributedError(
          f"nothing answers at --coordinator_address={address} after {timeout_s:g} s ({e}); "
          "start process 0 with the same address (its host and a free port), check that "
          "this host can reach it, or raise --distributed_timeout"
        ) from e
      time.sleep(0.2)


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  mode: str = "auto",
  timeout_s: int = 60,
) -> bool:
  """Joins this process to a ``jax.distributed`` runtime when asked to; call before any JAX work.

  Args:
    coordinator_address: ``HOST:PORT`` of process 0, where the runtime's coordinator runs.
    num_processes: how many processes the run has.
    process_id: this process's id, 0 to ``num_processes - 1``.
    mode: ``auto`` joins when any of the three is given or JAX detects a cluster
      (:func:`detected_cluster`), which then supplies what is not given; ``on`` always
      joins; ``off`` never does (and refuses the three).
    timeout_s: how long to wait for every process to join before failing.

  Returns:
    Whether this process is now part of a multi-process runtime.

  Raises:
    ConfigError: inconsistent arguments (a process id out of range, an address that is
      not ``HOST:PORT``, an unknown mode, arguments missing with no cluster to supply them).
    DistributedError: the runtime could not be joined within ``timeout_s``.
  """
  if mode not in MODES:
    raise ConfigError(f"distributed mode must be one of {', '.join(MODES)}, got {mode!r}")
  given = {
    "--coordinator_address": coordinator_address,
    "--num_processes": num_processes,
    "--process_id": process_id,
  }
  named = [k for k, v in given.items() if v is not None]
  if mode == "off":
    if named:
      raise ConfigError(f"{', '.join(named)} given with --distributed=off; drop one or the other")
    return False
  if jax.distributed.is_initialized():
    return True
  cluster = detected_cluster()
  if mode == "auto" and not named and cluster is None:
    return False
  _check_arguments(coordinator_address, num_processes, process_id)
  missing = [k for k, v in given.items() if v is None]
  if missing and cluster is None:
    raise ConfigError(
      f"a multi-process run needs {', '.join(missing)} as well: JAX detects no cluster "
      "(SLURM, Cloud TPU, Open MPI, ...) here to supply them"
    )
  if timeout_s < 1:
    raise ConfigError(f"--distributed_timeout={timeout_s}: give at least 1 second")
  # Collectives between CPU processes need an implementation; gloo ships with jaxlib.
  if "jax_cpu_collectives_implementation" in jax.config.values:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  where = coordinator_address or f"the coordinator {cluster} names"
  if coordinator_address is not None:
    _check_coordinator(coordinator_address, process_id, timeout_s)
  # JAX's runtime aborts the process (no exception) when the others do not all join in
  # time; this line says what it was waiting for.
  log.info(
    "process %s of %s: joining the run's processes at %s (waiting up to %d s)",
    "?" if process_id is None else process_id,
    "?" if num_processes is None else num_processes,
    where,
    timeout_s,
  )
  try:
    jax.distributed.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
      initialization_timeout=timeout_s,
    )
  except Exception as e:  # jaxlib raises its own runtime errors for unreachable peers
    text = " ".join(str(e).split())[:300]
    raise DistributedError(
      f"could not join the run's processes at {where} within {timeout_s} s "
      f"({type(e).__name__}: {text}); check that every process was started with the same "
      "--coordinator_address and --num_processes and its own --process_id, that process 0 "
      "runs and its address is reachable from this host, or raise --distributed_timeout"
    ) from e
  log.info(
    "process %d of %d joined the runtime at %s; %d devices in all, %d here",
    jax.process_index(),
    jax.process_count(),
    where,
    jax.device_count(),
    jax.local_device_count(),
  )
  return True


def is_writer() -> bool:
  """Whether this process writes the run's files: process 0 (the only one, usually)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process has reached the barrier ``name`` (nothing with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
