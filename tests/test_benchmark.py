"""The speed benchmark's mechanics (never its timings: speed lives in the benchmark)."""

from __future__ import annotations

from benchmarks import frameworks as benchmark


def test_frameworks_take_turns_in_every_round():
  calls = []
  runners = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
  medians = benchmark.interleaved_medians(runners, repeats=3)
  assert calls == ["a", "b", "c"] * 3
  assert set(medians) == {"a", "b", "c"} and all(m >= 0 for m in medians.values())


def test_benchmark_row_for_ours_and_plain_flax():
  row = benchmark.benchmark_model("conv2_dense64", steps=2, repeats=1, frameworks=("ours", "flax"))
  assert row["model"] == "conv2_dense64" and row["batch_size"] == 64
  assert row["ours_s_per_epoch"] > 0 and row["flax_s_per_epoch"] > 0
  assert row["ours_images_per_s"] == benchmark.EPOCH_IMAGES / row["ours_s_per_epoch"]
  assert row["flax_over_ours"] == row["flax_s_per_epoch"] / row["ours_s_per_epoch"]
