"""``--dry_run`` on train, sweep, search and speedrun: the resolved settings, each with where
its value came from (default, recipe, config file, command line), and nothing run or written."""

from __future__ import annotations

import re

import pytest

from digits_jax import config as config_lib
from digits_jax.config import Config, resolve_with_origins
from tests import cli

ORIGINS = ("default", "recipe", "optimizer default", "config file", "command line", "quick preset")


def _origins(stdout: str) -> dict[str, list[str]]:
  """Setting name -> the origins its lines give (``  name  value  origin``), in order."""
  found: dict[str, list[str]] = {}
  for line in stdout.splitlines():
    match = re.fullmatch(rf"  (\w+)  +(.+?)  +({'|'.join(ORIGINS)})", line)
    if match:
      found.setdefault(match[1], []).append(match[3])
  return found


def _dry_run(module: str, tmp_path, *flags: str) -> dict[str, list[str]]:
  """Runs ``module --dry_run flags`` with its work directory in ``tmp_path``; checks that it
  exits 0 and writes nothing there. Returns the origins it printed."""
  folder = "output_dir" if module == "experiments.speedrun" else "workdir"
  done = cli.run(module, *flags, f"--{folder}={tmp_path / 'out'}", "--dry_run")
  assert done.returncode == 0, done.stderr[-3000:]
  assert list(tmp_path.iterdir()) == [], "a dry run wrote into its work directory's folder"
  return _origins(done.stdout)


def test_every_config_field_gets_an_origin_and_each_layer_is_named():
  resolved = resolve_with_origins(
    Config(model="conv3_dense100", optimizer="adam", epochs=3),
    {"optimizer": config_lib.COMMAND_LINE, "epochs": config_lib.CONFIG_FILE},
  )
  assert set(resolved.origins) == set(config_lib.FIELDS)  # no list of fields to keep up
  origins = resolved.origins
  assert origins["optimizer"] == "command line" and origins["epochs"] == "config file"
  assert origins["batch_size"] == "recipe"  # conv3_dense100's recipe: 32
  assert (resolved.config.learning_rate, origins["learning_rate"]) == (1e-3, "optimizer default")
  assert origins["dataset"] == "default" and origins["augment"] == "default"
  # A value set without a named origin is told apart from a default.
  assert resolve_with_origins(Config(model="conv2_dense64", seed=3)).origins["seed"] == "given"
  assert len(resolved.lines()) == len(config_lib.FIELDS)


def test_train_dry_run(tmp_path):
  origins = _dry_run("experiments.train", tmp_path, "--config=configs/final_fit.py", "--epochs=3")
  assert origins["epochs"] == ["command line"]
  assert origins["rotation"] == ["config file"] and origins["final_fit"] == ["config file"]
  assert origins["optimizer"] == ["recipe"]  # vgg_small's: sgd
  assert origins["dataset"] == ["default"] and origins["overwrite"] == ["default"]


def test_train_needs_a_workdir_but_for_a_dry_run():
  done = cli.run("experiments.train", "--model=conv2_dense64")
  assert done.returncode != 0 and "--workdir must have a value" in done.stderr
  done = cli.run("experiments.train", "--model=conv2_dense64", "--dry_run")
  assert done.returncode == 0, done.stderr[-3000:]
  assert _origins(done.stdout)["model"] == ["command line"]


def test_sweep_dry_run(tmp_path):
  origins = _dry_run(
    "experiments.sweep",
    tmp_path,
    "--config=configs/sweep_longer.py",  # bn_conv3_wide, 30 epochs, one seed
    "--learning_rate=0.01",
  )
  assert origins["learning_rate"] == ["command line"]
  assert origins["epochs"] == ["config file"] and origins["model"] == ["config file"]
  assert origins["batch_size"] == ["recipe"] and origins["dataset"] == ["default"]


def test_sweep_dry_run_lists_each_run_and_what_sets_it_apart(tmp_path):
  workdir = tmp_path / "workdir"
  done = cli.run(
    "experiments.sweep",
    "--models=conv2_dense64,resnet8",
    "--seeds=0,1",
    f"--workdir={workdir}",
    "--dry_run",
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert not workdir.exists()
  assert done.stdout.rstrip().endswith("4 runs")
  # The quick preset: one epoch for every run, and resnet8's batch of 64.
  assert _origins(done.stdout)["epochs"] == ["quick preset"]
  run = next(
    line for line in done.stdout.splitlines() if "resnet8-sgd-sub20000-bs64-ep1-seed1:" in line
  )
  assert "batch_size=64 (quick preset)" in run and "seed=1 (command line)" in run
  assert "optimizer=sgd (recipe)" in run


def test_search_dry_run(tmp_path):
  origins = _dry_run(
    "experiments.search", tmp_path, "--config=configs/search_conv2_dense64.py", "--trials=5"
  )
  assert origins["trials"] == ["command line"] and origins["max_epochs"] == ["config file"]
  assert origins["learning_rate"] == ["config file"]  # the space's entry
  assert origins["loss"] == ["recipe"] and origins["dataset"] == ["default"]


def test_speedrun_dry_run(tmp_path):
  origins = _dry_run(
    "experiments.speedrun", tmp_path, "--config=configs/speedrun.py", "--batch_size=256"
  )
  assert origins["batch_size"] == ["command line"] and origins["seeds"] == ["config file"]
  assert origins["epochs"] == ["recipe"] and origins["vmap_seeds"] == ["default"]


@pytest.mark.parametrize(
  ("module", "flags", "message"),
  [
    ("experiments.train", ("--model=conv2_dense64", "--learning_rate=-1"), "learning_rate"),
    ("experiments.sweep", ("--models=conv2_dense64", "--batch_size=0"), "batch_size"),
  ],
)
def test_a_dry_run_still_refuses_bad_settings(module, flags, message):
  done = cli.run(module, *flags, "--dry_run")
  assert done.returncode != 0
  assert message in cli.error_line(done)
