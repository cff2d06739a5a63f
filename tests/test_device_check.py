"""The device check, shrunk to seconds on the CPU: every figure is there and sane."""

from __future__ import annotations

import json

import pytest

from benchmarks import device_check
from digits_jax import files
from tests import cli
from tests.conftest import tiny_datasets


def test_accuracy_summary_counts_and_brackets_the_mean():
  s = device_check.accuracy_summary([0.985, 0.991, 0.993, 0.990])
  assert s["at_target"] == 3
  assert s["test_accuracy_low"] < s["test_accuracy_mean"] < s["test_accuracy_high"]
  assert s["test_accuracy_mean"] == pytest.approx(0.98975)


def test_tiny_check_writes_sane_json(mnist, mnist_dir, tmp_path):
  tiny = tiny_datasets(mnist, 512, 256, 500)
  result = device_check.check(
    tiny,
    tmp_path,
    epochs=2,
    speedrun_seeds=2,
    speedrun_epochs=0.05,
    group_models=2,
    group_epochs=1,
    manual_dir=str(mnist_dir),
  )
  files.write_json(tmp_path / "check.json", result)
  result = json.loads((tmp_path / "check.json").read_text())
  assert result["device"]["backend"] == "cpu" and result["device"]["fast_ops"] is True
  assert result["device"]["devices"]
  e = result["epoch"]
  assert len(e["epoch_seconds"]) == 2 and e["median_seconds"] > 0 and e["train_images"] == 512
  s = result["speedrun"]
  assert len(s["test_accuracy"]) == 2 and 0.5 < s["test_accuracy_mean"] <= 1
  assert s["test_accuracy_low"] <= s["test_accuracy_mean"] <= s["test_accuracy_high"]
  assert 0 <= s["at_target"] <= 2
  g = result["group"]
  assert g["models"] == 2 and g["vmapped_seconds"] > 0 and g["in_a_row_seconds"] > 0
  assert g["speedup"] == pytest.approx(g["in_a_row_seconds"] / g["vmapped_seconds"])
  # The same models trained both ways end with the same numbers.
  assert g["test_accuracy_vmapped"] == pytest.approx(g["test_accuracy_in_a_row"], abs=2e-3)


def test_bad_flag_fails_at_once(tmp_path):
  out = cli.run("benchmarks.device_check", "--group_models=0", f"--output_dir={tmp_path}")
  assert out.returncode != 0
  assert "--group_models must be at least 1" in out.stderr
