"""TensorBoard scalars of a run: one subdirectory per split, written as the epochs end.

``train/`` (``loss``, ``accuracy``, ``epoch_seconds``) and ``validation/`` (``loss``,
``accuracy``) hold one point per epoch, so TensorBoard draws training and validation
in one chart and a run can be watched while it trains; ``test/`` holds the test
metrics as one point at the best epoch. Uses ``tensorboardX``, which needs neither
TensorFlow nor TensorBoard; without it nothing is written (with one warning).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOG_DIR = "tensorboard"  # the scalars' folder inside a run directory

# split -> the metrics.jsonl keys written there, and the tag each is written under.
SERIES: dict[str, dict[str, str]] = {
  "train": {"train_loss": "loss", "train_accuracy": "accuracy", "epoch_seconds": "epoch_seconds"},
  "validation": {"val_loss": "loss", "val_accuracy": "accuracy"},
}


def _summary_writer():
  # tensorboardX imports PyTorch whenever it is installed (about a second at the start of
  # every run where the benchmark layer brings it); scalars need none of it, so the import
  # is kept from finding it unless this process uses PyTorch already.
  hide_torch = "torch" not in sys.modules
  if hide_torch:
    sys.modules["torch"] = None  # "import torch" raises ImportError, which tensorboardX expects
  try:
    from tensorboardX import SummaryWriter
  except ImportError:
    log.warning(
      "tensorboardX is not installed: no TensorBoard scalars written (pip install tensorboardX)"
    )
    return None
  finally:
    if hide_torch and sys.modules.get("torch", 0) is None:
      del sys.modules["torch"]
  return SummaryWriter


class Scalars:
  """Writers for the splits of one log directory; :meth:`add_epoch` writes one row."""

  def __init__(self, logdir: str | os.PathLike):
    self.logdir = Path(logdir)
    self._writer_class = _summary_writer()
    self._writers: dict[str, Any] = {}

  @property
  def enabled(self) -> bool:
    return self._writer_class is not None

  def _writer(self, split: str):
    if split not in self._writers:
      # flush_secs: each epoch reaches the file within a second (tensorboardX default: 2 min).
      self._writers[split] = self._writer_class(str(self.logdir / split), flush_secs=1)
    return self._writers[split]

  def add_epoch(self, row: Mapping[str, Any]) -> None:
    """Writes one ``metrics.jsonl`` row (at step ``row["epoch"]``) and flushes it."""
    if not self.enabled:
      return
    for split, keys in SERIES.items():
      for key, tag in keys.items():
        if row.get(key) is not None:
          self._writer(split).add_scalar(tag, float(row[key]), int(row["epoch"]))
    for writer in self._writers.values():
      writer.flush()

  def add_test(self, metrics: Mapping[str, float], epoch: int) -> None:
    """The test ``loss`` and ``accuracy``, as one point at ``epoch``."""
    if not self.enabled:
      return
    for name in ("loss", "accuracy"):
      self._writer("test").add_scalar(name, float(metrics[name]), int(epoch))

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()
    self._writers.clear()
