"""Progress of long work: elapsed time and an estimate of the time left.

:class:`Progress` counts pieces of work (a sweep's runs, a search's trials) for log lines;
:class:`EpochProgress` is the updating terminal line inside one long epoch.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO


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


class EpochProgress:
  """One updating line on a terminal while a long epoch trains: steps done of the epoch's,
  images per second, and the time left in the epoch.

  Nothing is written before the epoch has run ``after`` seconds (short epochs stay quiet),
  nor more often than every ``interval`` seconds; :meth:`finish` erases the line, so the
  epoch's log line takes its place. Build it with :meth:`on_terminal`, which gives ``None``
  where the stream is not a terminal: a log file never sees the line.

  :meth:`update` may be called from another thread (a compiled epoch reports its steps
  through a host callback) and with a count it has seen before (one per device).
  """

  def __init__(
    self,
    steps: int,
    batch_size: int,
    stream: TextIO,
    *,
    clock: Callable[[], float] = time.monotonic,
    after: float = 10.0,
    interval: float = 0.5,
  ):
    self.steps, self.batch_size, self.stream, self.clock = steps, batch_size, stream, clock
    self.after, self.interval = after, interval
    self.lock = threading.Lock()
    self.start("")

  @classmethod
  def on_terminal(cls, steps: int, batch_size: int, stream: TextIO | None = None, **kwargs):
    """An :class:`EpochProgress` writing to ``stream`` (standard error by default) if it is
    a terminal, else ``None``."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return cls(steps, batch_size, stream, **kwargs) if isatty and isatty() else None

  def start(self, label: str) -> None:
    """A new epoch begins; ``label`` starts its line (``conv2 epoch 3``)."""
    self.label, self.begun, self.done, self.written = label, self.clock(), 0, 0
    self.first: tuple[float, int] | None = None  # (time, steps) of the first report
    self.last_write = -float("inf")

  def update(self, done: int) -> None:
    """``done`` steps of the epoch are finished."""
    with self.lock:
      self._update(done)

  def _update(self, done: int) -> None:
    now = self.clock()
    if done <= self.done:
      return
    self.done = done
    if self.first is None:
      # The rate is measured from the first report on: before it the epoch may have been
      # compiling.
      self.first = (now, done)
      return
    if now - self.begun < self.after or now - self.last_write < self.interval:
      return
    t0, s0 = self.first
    rate = (done - s0) / max(now - t0, 1e-9)  # steps per second
    text = (
      f"{self.label}: {done}/{self.steps} steps, {rate * self.batch_size:,.0f} images/s, "
      f"about {format_seconds((self.steps - done) / rate)} left"
    )
    self._write(text)
    self.last_write = now

  def finish(self) -> None:
    """Erases the line, if one was written."""
    with self.lock:
      self.done = self.steps  # a report that comes late writes nothing
      if not self.written:
        return
      self._write("")
      self.stream.write("\r")
      self.stream.flush()

  def _write(self, text: str) -> None:
    # Spaces cover what is left of a longer line before (no terminal escape codes needed).
    self.stream.write("\r" + text.ljust(self.written))
    self.stream.flush()
    self.written = len(text)
