"""Progress of long work: elapsed time and an estimate of the time left."""

from __future__ import annotations

import time


class Progress:
  """Elapsed time and an estimate of the time left, for ``total`` pieces of work done one
  after another: the mean time of the pieces done so far times the pieces left."""

  def __init__(self, total: int):
    self.total, self.finished, self.start = total, 0, time.monotonic()

  def done(self) -> None:
    self.finished += 1

  def status(self) -> str:
    elapsed = time.monotonic() - self.start
    text = f"{format_seconds(elapsed)} elapsed"
    if self.finished:
      left = elapsed / self.finished * max(0, self.total - self.finished)
      text += f", about {format_seconds(left)} left"
    return text


def format_seconds(seconds: float) -> str:
  """``42 s``, ``7 min 5 s``, ``2 h 03 min``."""
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds} s"
  if seconds < 3600:
    return f"{seconds // 60} min {seconds % 60} s"
  return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
