"""The run's reports, plots and TensorBoard scalars, and the sweep's plots."""

from __future__ import annotations

import csv
import struct
import time

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as sk_metrics

from digits_jax import files, sweep
from digits_jax.analysis import metrics, plots, report

RUN_PLOTS = {kind: f"{report.PLOTS_DIR}/{name}" for kind, name in report.PLOT_FILES.items()}


def check_png(path, kind: str) -> None:
  """``path`` is a PNG of the size ``plots.SIZES[kind]`` that is not blank."""
  assert path.is_file(), path
  with Image.open(path) as image:
    assert image.format == "PNG"
    assert image.size == plots.SIZES[kind], (path, image.size)
    pixels = np.asarray(image.convert("RGB")).astype(np.int32)
  assert pixels.std() > 5, f"{path} looks blank"
  colours = np.unique((pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2])
  assert len(colours) > 20, f"{path} has almost no content"


def read_confusion_csv(path) -> tuple[list[str], np.ndarray]:
  with open(path) as f:
    rows = list(csv.reader(f))
  return rows[0][1:], np.array([[int(v) for v in row[1:]] for row in rows[1:]])


def read_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
  """Scalars of TensorBoard event files, read as TensorBoard reads them (TFRecords)."""
  from tensorboardX.proto import event_pb2

  events = sorted(logdir.glob("events.out.tfevents.*"))
  assert len(events) == 1, events
  data, pos, out = events[0].read_bytes(), 0, {}
  while pos < len(data):
    (length,) = struct.unpack("<Q", data[pos : pos + 8])
    event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
    pos += 12 + length + 4  # length, its CRC, the record, its CRC
    for value in event.summary.value:
      out.setdefault(value.tag, []).append((event.step, value.simple_value))
  return out


def test_a_run_writes_every_report_and_plot(tiny_run):
  workdir, results = tiny_run
  for kind, name in RUN_PLOTS.items():
    check_png(workdir / name, kind)
  n_test = files.read_json(workdir / "config.json")["data"]["test"]
  assert n_test == 10000

  names, cm = read_confusion_csv(workdir / "confusion_matrix.csv")
  assert names == [str(i) for i in range(10)]
  assert cm.sum() == n_test

  rep = files.read_json(workdir / "classification_report.json")
  assert sum(rep[c]["support"] for c in names) == n_test
  assert rep["accuracy"] == np.trace(cm) / n_test
  # results.json's accuracy is the same count, as a float32 mean.
  assert rep["accuracy"] == pytest.approx(results["test_accuracy"], abs=1e-6)
  assert (workdir / "classification_report.txt").read_text() == metrics.format_report(rep)

  calibration = files.read_json(workdir / "calibration.json")
  assert sum(b["count"] for b in calibration["bins"]) == n_test
  assert 0.0 <= calibration["ece"] < 1.0
  assert calibration["accuracy"] == rep["accuracy"]


def test_tensorboard_scalars_are_the_metrics_per_epoch(tiny_run):
  workdir, results = tiny_run
  history = files.read_jsonl(workdir / "metrics.jsonl")
  tb = workdir / report.TENSORBOARD_DIR
  as_f32 = lambda rows, key: [(r["epoch"], float(np.float32(r[key]))) for r in rows]
  train = read_scalars(tb / "train")
  assert train["loss"] == as_f32(history, "train_loss")
  assert train["accuracy"] == as_f32(history, "train_accuracy")
  assert train["epoch_seconds"] == as_f32(history, "epoch_seconds")
  validation = read_scalars(tb / "validation")
  assert validation == {
    "loss": as_f32(history, "val_loss"),
    "accuracy": as_f32(history, "val_accuracy"),
  }
  test = read_scalars(tb / "test")
  best = results["best_epoch"]
  assert test == {
    "loss": [(best, float(np.float32(results["test_loss"])))],
    "accuracy": [(best, float(np.float32(results["test_accuracy"])))],
  }


def _synthetic(mnist, n=600, wrong=0.1, seed=0):
  """Test images and labels with logits that are right about ``1 - wrong`` of the time."""
  rng = np.random.default_rng(seed)
  labels = mnist.test.labels[:n]
  logits = rng.normal(size=(n, 10)).astype(np.float32)
  right = rng.random(n) >= wrong
  logits[np.arange(n)[right], labels[right]] += 5.0
  return mnist.test.images[:n], labels, logits


def test_report_of_given_logits_counts_and_matches_sklearn(mnist, tmp_path):
  images, labels, logits = _synthetic(mnist)
  history = [{"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.8}]  # no validation split
  summary = report.write_run_report(tmp_path, logits, labels, images, history)
  predicted = logits.argmax(axis=1)

  names, cm = read_confusion_csv(tmp_path / "confusion_matrix.csv")
  direct = np.zeros((10, 10), np.int64)
  for t, p in zip(labels, predicted, strict=True):
    direct[t, p] += 1
  np.testing.assert_array_equal(cm, direct)
  assert cm.sum() == len(labels)

  expected = sk_metrics.classification_report(
    labels, predicted, labels=range(10), output_dict=True, zero_division=0.0
  )
  assert files.read_json(tmp_path / "classification_report.json") == expected
  assert (tmp_path / "classification_report.txt").read_text() == (
    sk_metrics.classification_report(
      labels, predicted, labels=range(10), digits=4, zero_division=0.0
    )
  )
  assert summary["accuracy"] == expected["accuracy"]
  assert summary["num_test"] == len(labels)
  for kind, name in RUN_PLOTS.items():
    check_png(tmp_path / name, kind)
    assert name in summary["files"]
  assert not (tmp_path / report.TENSORBOARD_DIR / "test").exists()  # no test metrics given


def test_plots_of_a_perfect_model_and_rewriting_the_report(mnist, tmp_path):
  images, labels, logits = _synthetic(mnist, n=200, wrong=0.0)
  history = [
    {
      "epoch": e,
      "train_loss": 1 / e,
      "train_accuracy": 1 - 0.1 / e,
      "val_loss": 1.1 / e,
      "val_accuracy": 1 - 0.2 / e,
    }
    for e in (1, 2, 3)
  ]
  for _ in range(2):  # the second time replaces the first's files
    report.write_run_report(
      tmp_path, logits, labels, images, history, test_metrics={"loss": 0.1, "accuracy": 1.0}
    )
  check_png(tmp_path / RUN_PLOTS["misclassified_grid"], "misclassified_grid")  # "none" message
  for split in ("train", "validation", "test"):
    read_scalars(tmp_path / report.TENSORBOARD_DIR / split)  # exactly one event file each
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dirs
  # The best epoch defaults to the best validation accuracy, as the checkpoint chooses it.
  assert read_scalars(tmp_path / report.TENSORBOARD_DIR / "test")["accuracy"] == [(3, 1.0)]


def _fake_sweep(
  tmp_path, models=("conv2_dense64", "conv3_dense100"), optimizers=("adam", "sgd"), seeds=(0, 1, 2)
):
  rng = np.random.default_rng(0)
  results = []
  for m in models:
    for o in optimizers:
      for s in seeds:
        run = f"{m}-{o}-seed{s}"
        acc = 0.98 + 0.005 * rng.random()
        files.write_jsonl(
          tmp_path / run / "metrics.jsonl",
          [{"epoch": e, "val_accuracy": acc - 0.01 / e, "val_loss": 0.1 / e} for e in (1, 2, 3)],
        )
        results.append(
          {
            "model": m,
            "optimizer": o,
            "seed": s,
            "test_accuracy": acc,
            "num_params": 1000 * len(m),
            "run": run,
          }
        )
  return results


def test_sweep_writes_the_comparison_and_validation_curves(tmp_path):
  paths = sweep.write_plots(_fake_sweep(tmp_path), tmp_path)
  assert [p.name for p in paths] == ["comparison.png", "validation_curves.png"]
  check_png(tmp_path / "comparison.png", "sweep_comparison")
  check_png(tmp_path / "validation_curves.png", "validation_curves")


def test_sweep_plots_of_one_seed_without_validation(tmp_path):
  results = _fake_sweep(tmp_path, models=("conv2_dense64",), optimizers=("adam",), seeds=(0,))
  files.write_jsonl(
    tmp_path / results[0]["run"] / "metrics.jsonl",
    [{"epoch": 1, "train_loss": 0.3, "train_accuracy": 0.9}],
  )
  sweep.write_plots(results, tmp_path)
  check_png(tmp_path / "comparison.png", "sweep_comparison")
  check_png(tmp_path / "validation_curves.png", "validation_curves")


def _scalars_when_ready(logdir, tag, steps, timeout_s=20.0):
  """``read_scalars(logdir)[tag]`` once it holds ``steps`` points (the writer thread flushes)."""
  deadline = time.monotonic() + timeout_s
  while True:
    found = read_scalars(logdir).get(tag, []) if any(logdir.glob("events.*")) else []
    if len(found) >= steps or time.monotonic() > deadline:
      return found
    time.sleep(0.1)


def test_scalars_are_readable_as_each_epoch_ends(tmp_path):
  """The run loop's writer flushes within a second, so TensorBoard shows a run as it trains."""
  from digits_jax.training import summaries

  scalars = summaries.Scalars(tmp_path)
  rows = [
    {
      "epoch": 1,
      "epoch_seconds": 2.0,
      "train_loss": 0.5,
      "train_accuracy": 0.8,
      "val_loss": 0.4,
      "val_accuracy": 0.85,
    },
    {
      "epoch": 2,
      "epoch_seconds": 1.5,
      "train_loss": 0.3,
      "train_accuracy": 0.9,
      "val_loss": 0.25,
      "val_accuracy": 0.91,
    },
  ]
  try:
    scalars.add_epoch(rows[0])
    assert _scalars_when_ready(tmp_path / "validation", "accuracy", 1) == [(1, pytest.approx(0.85))]
    scalars.add_epoch(rows[1])
    train = _scalars_when_ready(tmp_path / "train", "loss", 2)  # the writers are still open
    assert train == [(1, 0.5), (2, pytest.approx(0.3))]
  finally:
    scalars.close()


def test_error_bars_are_never_negative():
  # Three seeds that agree: the interval's ends can round a hair past the mean.
  from digits_jax.analysis import figures

  bars = figures.error_bars([0.3], [0.3], [0.3 - 1e-16])
  assert 0.3 - 1e-16 < 0.3  # unclipped, the upper bar would be negative
  assert bars.shape == (2, 1) and (bars >= 0).all()
  np.testing.assert_allclose(figures.error_bars([0.5], [0.4], [0.7]), [[0.1], [0.2]])
