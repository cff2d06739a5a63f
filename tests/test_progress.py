"""Progress of long work: elapsed time and the estimate of the time left."""

from __future__ import annotations

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
