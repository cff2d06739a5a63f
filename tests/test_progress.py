"""Progress of long work: elapsed time and the estimate of the time left."""

from __future__ import annotations

import io

from digits_jax import progress


def test_seconds_read_as_people_write_them():
  assert progress.format_seconds(42.4) == "42 s"
  assert progress.format_seconds(425) == "7 min 5 s"
  assert progress.format_seconds(7380) == "2 h 03 min"


def test_time_left_is_the_mean_so_far_times_what_is_left(monkeypatch):
  now = [100.0]
  monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
  p = progress.Progress(4)
  assert p.status() == "0 s elapsed"
  now[0] += 30
  p.done()
  assert p.status() == "30 s elapsed, about 1 min 30 s left"
  now[0] += 90
  p.done()
  assert p.status() == "2 min 0 s elapsed, about 2 min 0 s left"


class FakeTerminal(io.StringIO):
  """What the progress line sees of a terminal: ``isatty()``, and what was written."""

  def __init__(self, tty: bool = True):
    super().__init__()
    self.tty = tty

  def isatty(self) -> bool:
    return self.tty


def _clock(now: list[float]):
  return lambda: now[0]


def test_a_long_epoch_shows_one_updating_line_and_erases_it():
  now = [0.0]
  stream = FakeTerminal()
  line = progress.EpochProgress.on_terminal(100, 32, stream, clock=_clock(now))
  line.start("conv2 epoch 1")
  line.update(1)  # the first report: the epoch has compiled, the rate is measured from here
  now[0] = 5.0
  line.update(50)
  assert stream.getvalue() == ""  # before ten seconds, a short epoch stays quiet
  now[0] = 11.0
  line.update(61)
  first = "conv2 epoch 1: 61/100 steps, 175 images/s, about 7 s left"  # 60 steps in 11 s
  assert stream.getvalue() == "\r" + first
  now[0] = 11.2
  line.update(63)
  assert stream.getvalue() == "\r" + first  # not more often than twice a second
  now[0] = 12.0
  line.update(71)  # 70 steps in 12 s since step 1
  second = "conv2 epoch 1: 71/100 steps, 187 images/s, about 5 s left"
  assert stream.getvalue() == "\r" + first + "\r" + second
  line.update(71)  # another device's report of the same step changes nothing
  line.finish()
  # Spaces cover the line and the cursor goes back: the epoch's log line takes its place.
  assert stream.getvalue().endswith("\r" + " " * len(second) + "\r")
  line.update(100)  # a report that comes after the end writes nothing
  assert stream.getvalue().endswith("\r" + " " * len(second) + "\r")


def test_a_shorter_line_covers_the_longer_one_before():
  now = [0.0]
  stream = FakeTerminal()
  line = progress.EpochProgress(1000, 1, stream, clock=_clock(now), after=0, interval=0)
  line.start("e")
  line.update(1)
  now[0] = 1.0
  line.update(2)  # 1 step a second: 998 s left
  now[0] = 1000.0
  line.update(999)  # about 1 s left: shorter
  long, short = stream.getvalue().split("\r")[1:]
  assert (
    len(short) == len(long) and short.rstrip() == "e: 999/1000 steps, 1 images/s, about 1 s left"
  )


def test_no_line_where_standard_error_is_not_a_terminal(monkeypatch):
  assert progress.EpochProgress.on_terminal(100, 32, FakeTerminal(tty=False)) is None
  monkeypatch.setattr(progress.sys, "stderr", FakeTerminal(tty=False))
  assert progress.EpochProgress.on_terminal(100, 32) is None
  monkeypatch.setattr(progress.sys, "stderr", FakeTerminal(tty=True))
  assert progress.EpochProgress.on_terminal(100, 32) is not None
  # A quiet epoch writes nothing either, and erases nothing.
  stream = FakeTerminal()
  line = progress.EpochProgress(100, 32, stream)
  line.start("e")
  line.update(50)
  line.finish()
  assert stream.getvalue() == ""
