"""Logging set-up of every entry point, in one place (no flags of its own).

Progress lines go to stderr at INFO (or ``level``). Libraries that log through absl
(orbax, jax) speak at WARNING unless ``--verbosity`` is given; ``--log_dir`` also writes
absl's log file there.
"""

from __future__ import annotations

import logging
import sys

import absl.logging
from absl import flags


def setup(level: int = logging.INFO, fmt: str = "%(asctime)s %(message)s") -> None:
  """Sends progress to stderr; honours absl's ``--verbosity`` and ``--log_dir``."""
  logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S", stream=sys.stderr, force=True)
  # JAX reports at INFO each backend it could not start ("Unable to initialize backend 'tpu'
  # ... libtpu.so"): normal on a machine without that hardware, alarming as a first line.
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  given = flags.FLAGS
  if not given["verbosity"].present:
    absl.logging.set_verbosity(absl.logging.WARNING)
  if given["log_dir"].present and given.log_dir:
    handler = absl.logging.get_absl_handler()
    handler.use_absl_log_file(log_dir=given.log_dir)
    logging.getLogger().addHandler(handler)
