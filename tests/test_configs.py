"""The experiments in configs/: each loads, names only flags of its entry point, and
``--config.FIELD`` and explicit flags override it in that order."""

from __future__ import annotations

import collections
import pathlib
import sys

import pytest

from experiments import common
from tests import cli
from tests.conftest import REPO

CONFIGS = sorted((REPO / "configs").glob("*.py"))


def _module_text(path: pathlib.Path) -> str:
  return path.read_text()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_says_command_cost_and_results(path):
  config = common.load_config_file(str(path))
  assert len(config) > 0
  text = _module_text(path)
  assert "ENTRY_POINT = " in text
  for part in ("Command:", f"--config=configs/{path.name}", "Cost:", "Results:"):
    assert part in text, f"{path.name}: its docstring lacks {part!r}"


def test_every_field_is_a_flag_of_its_entry_point():
  by_entry = collections.defaultdict(list)
  for path in CONFIGS:
    text = _module_text(path)
    entry = text.split("ENTRY_POINT = ", 1)[1].split("\n", 1)[0].strip().strip("\"'")
    if entry != "experiments.search":  # a search space, checked by the search itself
      by_entry[entry].append(str(path))
  assert set(by_entry) >= {"experiments.sweep", "experiments.speedrun"}
  for entry, paths in by_entry.items():
    script = (
      "import importlib, sys\n"
      "from absl import flags\n"
      f"importlib.import_module({entry!r})\n"
      "flags.FLAGS.mark_as_parsed()\n"
      "from experiments import common\n"
      f"for p in {paths!r}:\n"
      "  common.config_file_values(common.load_config_file(p), p)\n"
      "print('ok')\n"
    )
    done = cli.run("", argv=[sys.executable, "-c", script])
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]


def test_unknown_field_of_a_config_file_is_named(tmp_path):
  path = tmp_path / "bad.py"
  path.write_text(
    "import ml_collections\n"
    "def get_config():\n"
    "  return ml_collections.ConfigDict({'seeds': [0], 'learning_rat': 0.1})\n"
  )
  done = cli.run("experiments.sweep", f"--config={path}", "--collect_only")
  assert done.returncode != 0
  assert "learning_rat is not a flag of this entry point" in done.stderr


def test_override_precedence_flag_then_config_field_then_file(tmp_path):
  config = "--config=configs/sweep_quick.py"
  # The file's workdir (runs/sweep-quick) gives way to --config.workdir ...
  done = cli.run("experiments.sweep", config, f"--config.workdir={tmp_path}/a", "--collect_only")
  assert done.returncode != 0
  assert f"--workdir {tmp_path}/a does not exist" in done.stderr
  # ... which gives way to a flag given on the command line.
  done = cli.run(
    "experiments.sweep",
    config,
    f"--config.workdir={tmp_path}/a",
    f"--workdir={tmp_path}/b",
    "--collect_only",
  )
  assert done.returncode != 0
  assert f"--workdir {tmp_path}/b does not exist" in done.stderr


def test_list_fields_of_a_config_file_take_overrides(tmp_path):
  """--config.seeds=1 (as the README's command) overrides a file's list of seeds: the grid
  names exactly the overridden runs."""
  done = cli.run(
    "experiments.sweep",
    "--config=configs/sweep_source.py",
    "--config.seeds=1",
    f"--workdir={tmp_path}",
    "--collect_only",
  )
  assert "10 of 10 runs have not finished: conv3_dense128_64-adam-seed1, " in done.stdout, (
    done.stderr[-2000:]
  )
  assert "seed0" not in done.stdout and "seed2" not in done.stdout


def test_unknown_config_override_fails_clearly():
  done = cli.run(
    "experiments.sweep", "--config=configs/sweep_quick.py", "--config.learning_rat=0.1"
  )
  assert done.returncode != 0
  assert "learning_rat" in done.stderr


def test_train_takes_a_config_file_and_the_final_fit_trains_on_all_images(mnist_dir, tmp_path):
  """configs/final_fit.py through experiments.train: the file's recipe, its fields
  overridden by --config.FIELD, then by flags; the final fit in <workdir>-final."""
  import json

  run = tmp_path / "run"
  done = cli.run(
    "experiments.train",
    "--config=configs/final_fit.py",
    "--config.model=conv2_dense64",
    "--config.epochs=2",
    "--epochs=3",  # a flag on the command line beats the file and --config.epochs
    "--train_subset=384",
    "--validation_size=256",
    "--batch_size=64",
    "--plots=false",
    "--data_backend=idx",
    f"--manual_dir={mnist_dir}",
    f"--workdir={run}",
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert "final fit on all training images" in done.stdout
  config = json.loads((run / "config.json").read_text())["config"]
  assert (config["model"], config["epochs"], config["rotation"], config["zoom"]) == (
    "conv2_dense64",
    3,
    15.0,
    0.15,
  )
  best = json.loads((run / "results.json").read_text())["best_epoch"]
  final = pathlib.Path(f"{run}-final")
  final_config = json.loads((final / "config.json").read_text())
  assert final_config["config"]["validation_size"] == 0
  assert final_config["config"]["epochs"] == best
  assert final_config["data"]["validation"] == 0
  assert final_config["final_fit"] == {
    "of": "run",
    "epochs": 3,
    "validation_size": 256,
    "best_epoch": best,
    "val_accuracy": json.loads((run / "results.json").read_text())["val_accuracy"],
  }
  results, rows = cli.read_results(final)
  assert [r["epoch"] for r in rows] == list(range(1, best + 1))
  assert results["val_accuracy"] is None and results["test_accuracy"] > 0.5
