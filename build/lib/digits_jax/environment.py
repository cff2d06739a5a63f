"""What the numbers were measured on: library versions, devices and processor."""

from __future__ import annotations

import os
import platform
from typing import Any

import flax
import jax
import numpy as np
import optax


def cpu_name() -> str:
  """The processor's model name (from /proc/cpuinfo on Linux)."""
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor()


def environment() -> dict[str, Any]:
  """Library versions, JAX backend and devices, processor and core count."""
  return {
    "python": platform.python_version(),
    "jax": jax.__version__,
    "flax": flax.__version__,
    "optax": optax.__version__,
    "numpy": np.__version__,
    "backend": jax.default_backend(),
    "devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()],
    "cpu": cpu_name(),
    "cpu_count": os.cpu_count(),
  }
