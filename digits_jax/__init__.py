"""digits_jax: MNIST-style digit classifiers in JAX and Flax.

Importing the package sizes XLA:CPU's thread pools for several CPU devices
(:func:`reserve_cpu_collective_threads`), which only works before JAX starts its CPU backend.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import MutableMapping

log = logging.getLogger(__name__)

# XLA:CPU sizes its CPU client's thread pools from the first of these that is set, else from
# the processors this process may run on.
POOL_SIZE_VARS = ("PJRT_NPROC", "NPROC")
_DEVICE_COUNT_FLAG = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


def requested_cpu_devices(environ: MutableMapping[str, str] = os.environ) -> int:
  """The CPU devices the environment asks for: ``JAX_NUM_CPU_DEVICES``, else the last
  ``--xla_force_host_platform_device_count`` in ``XLA_FLAGS``, else 1."""
  value = environ.get("JAX_NUM_CPU_DEVICES", "").strip()
  if value.isdigit():  # JAX's -1 (unset) falls through to XLA_FLAGS, as in JAX
    return max(1, int(value))
  found = _DEVICE_COUNT_FLAG.findall(environ.get("XLA_FLAGS", ""))
  return max(1, int(found[-1])) if found else 1


def _processors() -> int:
  """The processors this process may run on, as XLA:CPU counts them (CPU affinity)."""
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return os.cpu_count() or 1


def reserve_cpu_collective_threads(
  environ: MutableMapping[str, str] = os.environ, processors: int | None = None
) -> int | None:
  """Gives XLA:CPU's client thread pool two threads per CPU device (``PJRT_NPROC``).

  Why: XLA:CPU runs each device's part of a multi-device program on a thread of one client
  pool of max(processors, devices) threads, and a collective (all-reduce, all-gather)
  blocks its thread until every device's part has arrived. The launch of each later
  program also takes one pool thread per device, and that thread blocks while its device
  already has 32 programs in flight. When Python runs that far ahead of the devices (a
  loop that dispatches steps without waiting), the launches can hold every thread but the
  one waiting in the collective, so the other device's part never gets a thread: the
  process hangs until XLA's 40 s rendezvous timeout aborts it ("Expected 2 threads to join
  the rendezvous, but only 1 of them arrived on time"). N devices can hold at most N
  launches and N - 1 waiting parts, so 2N threads always leave one to run the missing part.

  The intra-op pool, which XLA sizes the same way, gets as many threads; on fewer
  processors they share them. ``PJRT_NPROC`` or ``NPROC`` set beforehand is kept, with a
  warning when it is too small. XLA reads the variable when JAX starts its CPU backend (the
  first computation or device query), so this must run before that: importing the package
  does it.

  Args:
    environ: the environment to read and change.
    processors: the processors XLA sizes the pool from (default: this process's).

  Returns:
    The ``PJRT_NPROC`` this set, or None when nothing needed setting.
  """
  devices = requested_cpu_devices(environ)
  if devices < 2:
    return None
  needed = 2 * devices
  for name in POOL_SIZE_VARS:
    if environ.get(name, "").strip():
      value = environ[name].strip()
      if not value.isdigit() or max(int(value), devices) < needed:
        log.warning(
          "%s=%s gives XLA:CPU's %d CPU devices fewer than %d client threads: a multi-device "
          "program can hang in a collective until XLA aborts the process; unset it or set "
          "it to %d or more",
          name,
          value,
          devices,
          needed,
          needed,
        )
      return None
  if (processors if processors is not None else _processors()) >= needed:
    return None
  environ["PJRT_NPROC"] = str(needed)
  return needed


reserve_cpu_collective_threads()
