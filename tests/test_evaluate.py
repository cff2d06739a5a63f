"""Rebuilding a run's reports from its checkpoint: ``python -m experiments.evaluate``."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from digits_jax import data, files, rundir, runs
from digits_jax.analysis import report, visualize
from digits_jax.training import checkpoints
from tests.conftest import REPO
from tests.test_report import RUN_PLOTS, check_png

# Files that depend only on the checkpoint's test predictions: rebuilt byte for byte.
PREDICTION_FILES = (
  "classification_report.txt",
  "classification_report.json",
  "confusion_matrix.csv",
  "calibration.json",
)


def _evaluate(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "experiments.evaluate", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_evaluate_rebuilds_the_reports_and_reproduces_the_test_accuracy(
  tiny_run, mnist_dir, tmp_path
):
  original, results = tiny_run
  workdir = tmp_path / "run"
  shutil.copytree(original, workdir)
  for name in (*PREDICTION_FILES, "test_outputs.npz"):
    (workdir / name).unlink()
  shutil.rmtree(workdir / report.PLOTS_DIR)
  shutil.rmtree(workdir / report.TENSORBOARD_DIR)

  out = _evaluate(f"--workdir={workdir}", f"--manual_dir={mnist_dir}", "--data_backend=idx")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "reproduced exactly" in out.stdout, out.stdout
  assert f"{100 * results['test_accuracy']:.2f}%" in out.stdout
  for name in PREDICTION_FILES:
    assert (workdir / name).read_bytes() == (original / name).read_bytes(), name
  for kind, name in RUN_PLOTS.items():
    check_png(workdir / name, kind)
  # What the network learned (their panels: tests/test_visualize.py).
  for name in visualize.FILES.values():
    assert (workdir / report.PLOTS_DIR / name).stat().st_size > 10_000, name
  for split in ("train", "validation", "test"):
    assert any((workdir / report.TENSORBOARD_DIR / split).glob("events.out.tfevents.*"))
  # The stored test outputs of a run that lacks them (an earlier version's) are written.
  outputs, saved = rundir.load_test_outputs(workdir), rundir.load_test_outputs(original)
  assert np.array_equal(outputs.probabilities, saved.probabilities)
  assert np.mean(outputs.predictions == outputs.labels) == pytest.approx(results["test_accuracy"])
  # Training's own files are read, never written.
  for name in ("config.json", "metrics.jsonl", "results.json"):
    assert (workdir / name).read_bytes() == (original / name).read_bytes(), name


def test_rebuild_gives_the_runs_exact_test_metrics(tiny_run, mnist, tmp_path):
  original, results = tiny_run
  workdir = tmp_path / "run"
  shutil.copytree(original, workdir)
  out = runs.rebuild(workdir, datasets=mnist, plots=False)  # figures: the test above
  assert out["reproduced"] is True
  assert out["test_accuracy"] == results["test_accuracy"]  # exactly, not approximately
  assert out["test_loss"] == results["test_loss"]
  assert out["best_epoch"] == results["best_epoch"]
  assert out["report"]["num_test"] == len(mnist.test)

  # Without results.json there is nothing to compare with, but the reports are written.
  (workdir / "results.json").unlink()
  assert runs.rebuild(workdir, datasets=mnist)["reproduced"] is None


def test_rebuild_refuses_what_is_not_a_finished_run(tiny_run, mnist, tmp_path):
  with pytest.raises(runs.RunDirError, match="has no config.json"):
    runs.rebuild(tmp_path, datasets=mnist)
  files.write_text(tmp_path / "config.json", "{not json")
  with pytest.raises(runs.RunDirError, match="is not a run's config"):
    runs.rebuild(tmp_path, datasets=mnist)
  shutil.copy(tiny_run[0] / "config.json", tmp_path / "config.json")
  with pytest.raises(checkpoints.CheckpointError, match="has no checkpoint"):
    runs.rebuild(tmp_path, datasets=mnist)
  assert not (tmp_path / "checkpoints").exists()  # nothing created by the failed attempt
  # Another test split than the run's: refused rather than reported as a different accuracy.
  small = data.Datasets(
    train=mnist.train,
    validation=mnist.validation,
    test=data.Split(mnist.test.images[:100], mnist.test.labels[:100]),
    name="mnist",
    backend="idx",
  )
  with pytest.raises(data.DataError, match="tested on 10000 images.*has 100"):
    runs.rebuild(tiny_run[0], datasets=small)


def test_evaluate_without_a_run_fails_with_one_line(tmp_path):
  out = _evaluate(f"--workdir={tmp_path}")
  assert out.returncode == 1
  assert "error:" in out.stderr and "has no config.json" in out.stderr
  assert "Traceback" not in out.stderr
