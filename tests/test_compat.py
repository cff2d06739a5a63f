"""Run directories written by earlier versions stay readable: finished runs stay finished."""

from __future__ import annotations

import shutil

from digits_jax import files, rundir, runs
from digits_jax.config import Config, resolve


def _as_earlier_version(workdir, model_name: str) -> None:
  """Rewrites config.json as earlier versions wrote it: no epoch_loop, no augmentation
  strengths, a former model name."""
  saved = files.read_json(workdir / "config.json")
  config = dict(saved["config"])
  for added in ("epoch_loop", "rotation", "shift", "zoom"):
    config.pop(added)
  config["model"] = model_name
  files.write_json(workdir / "config.json", saved | {"config": config})


def test_an_earlier_config_json_is_the_same_run(tiny_run, tmp_path):
  original, results = tiny_run
  workdir = tmp_path / "run"
  shutil.copytree(original, workdir)
  _as_earlier_version(workdir, "conv2_dense64")
  config = resolve(Config(model="conv2_dense64", epochs=2, train_subset=512))
  assert rundir.check(config, workdir) == results
  # Implementation fields are no part of a run's identity.
  assert rundir.check(config.replace(fast_ops=False, epoch_loop="host"), workdir) == results
  # A real difference still is.
  assert rundir.finished_results(config.replace(epochs=3), workdir) is None


def test_evaluate_reads_an_earlier_run(tiny_run, mnist, tmp_path):
  original, results = tiny_run
  workdir = tmp_path / "run"
  shutil.copytree(original, workdir)
  _as_earlier_version(workdir, "conv2_dense64")
  (workdir / "test_outputs.npz").unlink()
  out = runs.rebuild(workdir, datasets=mnist)
  assert out["reproduced"] is True and (workdir / "test_outputs.npz").is_file()


def test_runs_from_before_the_augmentation_settings_keep_their_strengths():
  # A config.json without rotation/shift/zoom was trained with 10 deg, 2 px, no zoom.
  saved = resolve(Config(model="bn_conv3_wide")).to_dict()
  for added in ("rotation", "shift", "zoom"):
    saved.pop(added)
  earlier = Config.from_dict(saved)
  assert (earlier.rotation, earlier.shift, earlier.zoom) == (10.0, 2.0, 0.0)
  assert earlier == resolve(Config(model="bn_conv3_wide"))
  assert earlier != resolve(Config(model="bn_conv3_wide", zoom=0.1))
