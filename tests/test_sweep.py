"""The sweep: table aggregation, and the real entry point on a tiny subset."""

from __future__ import annotations

import csv
import math
import re
import subprocess
import sys

import pytest

from digits_jax import models, sweep
from tests.conftest import REPO


def _result(model, seed, acc, opt="adam"):
  return {
    "model": model,
    "optimizer": opt,
    "dataset": "mnist",
    "seed": seed,
    "test_accuracy": acc,
    "val_accuracy": acc,
    "best_epoch": 2,
    "epochs": 3,
    "batch_size": 64,
    "num_params": 10,
    "train_seconds": 4.0,
    "seconds_per_epoch": 1.0,
  }


def test_summarize_mean_and_std_over_seeds():
  rows = sweep.summarize(
    [
      _result("conv2_dense64", 0, 0.98),
      _result("conv2_dense64", 1, 0.99),
      _result("conv2_dense100", 0, 0.97),
    ]
  )
  assert len(rows) == 2
  first = rows[0]
  assert first["seeds"] == 2
  assert first["test_acc_mean"] == pytest.approx(0.985)
  assert first["test_acc_std"] == pytest.approx(0.00707107, rel=1e-5)
  assert math.isnan(rows[1]["test_acc_std"])  # one seed: no spread
  markdown = sweep.to_markdown(rows)
  assert "| conv2_dense64 | adam | mnist | 2 | 98.50% | 0.71% |" in markdown
  assert "98.50%" in markdown and "97.00%" in markdown


def test_sweep_entry_point_writes_a_table(mnist_dir, tmp_path):
  cmd = [
    sys.executable,
    "-m",
    "experiments.sweep",
    "--models=conv2_dense64,conv3_dense100",
    "--seeds=0,1",
    "--vmap=on",
    "--epochs=1",
    "--train_subset=512",
    "--validation_size=256",
    f"--manual_dir={mnist_dir}",
    "--data_backend=idx",
    f"--workdir={tmp_path}",
  ]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "--vmap=on on a CPU" in out.stderr  # vmapped groups measured slower there
  with open(tmp_path / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["model"], r["optimizer"], r["seeds"]) for r in rows] == [
    ("conv2_dense64", "adam", "2"),
    ("conv3_dense100", "sgd", "2"),
  ]
  for r in rows:
    assert 0.1 < float(r["test_acc_mean"]) <= 1.0
    assert float(r["test_acc_std"]) >= 0.0
    assert int(r["params"]) > 0
  # One Markdown table per configuration: compare.md; results.md points to it.
  assert "[compare.md](compare.md)" in (tmp_path / "results.md").read_text()
  assert "| model | optimizer |" not in (tmp_path / "results.md").read_text()
  assert len(list(tmp_path.glob("*/results.json"))) == 4
  # The sweep's plots, and each run's report (their content: tests/test_report.py).
  for name in ("comparison.png", "validation_curves.png"):
    assert (tmp_path / name).stat().st_size > 0
  assert len(list(tmp_path.glob("*/plots/confusion_matrix.png"))) == 4
  # The comparison of the two configurations, from the runs' stored test outputs.
  assert "comparison with intervals and paired tests" in out.stdout, out.stdout[-2000:]
  with open(tmp_path / "compare.csv") as f:
    configurations = list(csv.DictReader(f))
  assert sorted(c["n"] for c in configurations) == ["2", "2"]
  for name in ("compare.md", "compare_pairs.csv", "compare_forest.png", "compare_pairs.png"):
    assert (tmp_path / name).stat().st_size > 0


def test_unknown_model_fails_before_any_compute(tmp_path):
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.sweep",
      "--models=conv2_dense64,lenet",
      f"--workdir={tmp_path}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode != 0
  assert "unknown model 'lenet'" in out.stderr and "conv2_dense64" in out.stderr
  assert not any(tmp_path.iterdir())


def test_a_learning_rate_grid_gives_rows_that_differ_in_that_value_only(mnist_dir, tmp_path):
  cmd = [
    sys.executable,
    "-m",
    "experiments.sweep",
    "--models=conv2_dense64",
    "--learning_rate=0.001,0.003",
    "--epochs=1",
    "--train_subset=256",
    "--validation_size=256",
    f"--manual_dir={mnist_dir}",
    "--data_backend=idx",
    "--plots=false",  # the figures: test_sweep_entry_point_writes_a_table
    f"--workdir={tmp_path}",
  ]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(tmp_path / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [float(r["learning_rate"]) for r in rows] == [0.001, 0.003]
  # Progress: each run's place in the sweep, elapsed time and, after the first, the time left.
  assert "[1/2] conv2_dense64-adam-val256-sub256-ep1-seed0: training; 0 s elapsed" in out.stderr
  assert re.search(r"\[2/2\] \S+: training; [\w ]+ elapsed, about [\w ]+ left", out.stderr)
  fixed = [
    {
      k: v
      for k, v in r.items()
      if k in ("model", "optimizer", "dataset", "seeds", "epochs", "batch_size", "params")
    }
    for r in rows
  ]
  assert fixed[0] == fixed[1]
  assert sorted(p.parent.name for p in tmp_path.glob("*/results.json")) == [
    "conv2_dense64-adam-val256-sub256-ep1-seed0",
    "conv2_dense64-adam-val256-sub256-lr0.003-ep1-seed0",
  ]


@pytest.mark.parametrize(
  "flag, message",
  [
    ("--learning_rate=0.001,abc", "--learning_rate: 'abc' is not a valid float"),
    ("--batch_size=64,0", "batch_size must be a positive number, got 0"),
    ("--schedule=cosine,bogus", "unknown schedule 'bogus'"),
  ],
)
def test_a_bad_grid_value_fails_before_training(tmp_path, flag, message):
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.sweep",
      "--models=conv2_dense64",
      flag,
      f"--workdir={tmp_path}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 1
  assert message in out.stderr.strip().splitlines()[-1]
  assert not any(tmp_path.iterdir())


def test_quick_preset_settings():
  """make sweep's preset: one epoch each, the three heavy networks on a subset, two batch
  sizes changed (the table's columns and the run names say so)."""
  assert set(sweep.QUICK_SETTINGS) <= set(models.MODELS)
  for name in ("bn_conv3_wide", "resnet8", "vgg_small"):
    assert sweep.quick_settings(name)["train_subset"][0] >= 15_000
  assert sweep.quick_settings("resnet8") == {
    "epochs": [1],
    "train_subset": [20_000],
    "batch_size": [64],
  }
  assert sweep.quick_settings("conv3_dense128_64") == {"epochs": [1], "batch_size": [64]}
  assert sweep.quick_settings("conv2_dense64") == {"epochs": [1]}
  assert sweep.quick_settings("no_such_model") == {"epochs": [1]}
