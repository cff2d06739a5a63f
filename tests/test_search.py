"""The recipe search (digits_jax.search, experiments.search) on a real MNIST subset.

Tiny studies: 256 training and 256 validation images, a couple of epochs per trial.
"""

from __future__ import annotations

import csv
import json
import pathlib

import optuna
import pytest

from digits_jax import models
from digits_jax.search import confirm, report, space, study
from tests import cli
from tests.conftest import tiny_datasets

# A small space: the learning rate only, Adam, constant schedule, no augmentation.
TINY_SPACE = {
  name: None for name in space.default_space("conv2_dense64") if name != "learning_rate"
} | {"learning_rate": {"kind": "log", "low": 3e-4, "high": 3e-3}}
TINY_BASE = {"train_subset": 256, "validation_size": 256, "batch_size": 64}


def tiny_spec(**settings) -> space.SearchSpec:
  defaults = {
    "trials": 4,
    "max_epochs": 2,
    "space": TINY_SPACE,
    "base": TINY_BASE,
    "startup_trials": 2,
    "pruner": "none",
  }
  return space.parse(defaults | settings, "conv2_dense64")


@pytest.fixture(scope="module")
def tiny(mnist):
  datasets = tiny_datasets(mnist, n_train=256, n_val=256, n_test=500)
  return lambda config: datasets


@pytest.fixture(scope="module")
def tiny_study(tiny, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("search")
  spec = tiny_spec(confirm_top=1, confirm_seeds=2)
  finished = study.run_worker(workdir, spec, load=tiny)
  return workdir, spec, finished


def test_a_tiny_study_writes_a_row_per_trial_and_the_plots(tiny_study):
  workdir, spec, finished = tiny_study
  directory = study.study_dir(workdir, spec)
  markdown = report.write(finished, spec, directory)
  with open(directory / "search.csv") as f:
    rows = list(csv.DictReader(f))
  assert [int(r["trial"]) for r in rows] == [0, 1, 2, 3]
  assert {r["state"] for r in rows} == {"complete"}
  for r in rows:
    assert 3e-4 <= float(r["learning_rate"]) <= 3e-3
    assert 0 < float(r["val_accuracy"]) <= 1 and float(r["seconds"]) > 0
    run_dir = directory / "trials" / r["run_dir"]
    assert cli.epochs_done(run_dir) == 2
    # A trial is never tested: the objective is validation accuracy only.
    assert not (run_dir / "results.json").exists()
    assert json.loads((run_dir / "trial.json").read_text())["val_accuracy"] == float(
      r["val_accuracy"]
    )
  for name in report.PLOTS:
    assert (directory / name).stat().st_size > 1000, name
  assert "| trial |" in markdown and "Best: trial" in markdown


def test_importances_need_two_complete_trials(tiny, tmp_path):
  spec = tiny_spec(trials=1)
  one = study.run_worker(tmp_path, spec, load=tiny)
  markdown = report.write(one, spec, study.study_dir(tmp_path, spec))
  assert "Not drawn: param_importances.png (needs two complete trials" in markdown
  assert not (study.study_dir(tmp_path, spec) / "param_importances.png").exists()
  assert (study.study_dir(tmp_path, spec) / "optimization_history.png").exists()


def test_a_learning_rate_that_cannot_learn_is_pruned_at_the_first_rung(tiny, tmp_path):
  spec = tiny_spec(
    trials=3,
    max_epochs=3,
    pruner="successive_halving",
    space=TINY_SPACE | {"learning_rate": {"kind": "log", "low": 1e-9, "high": 1e-2}},
  )
  opened = study.open_study(tmp_path, spec)
  for lr in (3e-3, 3e-3, 1e-9):
    opened.enqueue_trial({"learning_rate": lr})
  finished = study.run_worker(tmp_path, spec, load=tiny)
  bad = finished.trials[2]
  assert bad.params["learning_rate"] == 1e-9
  assert bad.state == optuna.trial.TrialState.PRUNED
  assert finished.trials[0].state == optuna.trial.TrialState.COMPLETE
  run_dir = study.study_dir(tmp_path, spec) / "trials" / "trial-0002"
  assert json.loads((run_dir / "pruned.json").read_text())["epoch"] == 1
  assert cli.epochs_done(run_dir) == 1
  report.write(finished, spec, study.study_dir(tmp_path, spec))
  rows = list(csv.DictReader(open(study.study_dir(tmp_path, spec) / "search.csv")))
  assert (rows[2]["state"], rows[2]["pruned_at"]) == ("pruned", "1")
  assert rows[2]["val@1"] and not rows[2]["val@3"]


def test_the_confirmation_retrains_the_best_and_the_recipe_on_fresh_seeds(tiny_study, tiny):
  workdir, spec, finished = tiny_study
  directory = study.study_dir(workdir, spec)
  out = confirm.confirm(finished, spec, directory, load=tiny, plots=False)  # figures: test_report
  best = max(finished.trials, key=lambda t: t.value)
  runs = sorted(p.parent.name for p in (directory / "confirm").glob("*/results.json"))
  assert len(runs) == (spec.confirm_top + 1) * spec.confirm_seeds  # K x S, and the recipe's
  assert all(r.endswith(("seed1000", "seed1001")) for r in runs)
  assert (directory / "confirm" / "compare.md").exists()
  rows = {r["candidate"]: r for r in out["rows"]}
  assert set(rows) == {f"trial {best.number}", "recipe"}
  assert rows[f"trial {best.number}"]["search_val"] == best.value
  assert "verdict" in rows[f"trial {best.number}"]
  text = (directory / "confirm" / "confirm.md").read_text()
  assert f"| trial {best.number} |" in text and "| recipe |" in text


def _config_file(path: pathlib.Path, trials: int, max_epochs: int, train_subset: int) -> str:
  path.write_text(
    "import ml_collections\n\n"
    "def get_config():\n"
    "  return ml_collections.ConfigDict({\n"
    f"    'models': 'conv2_dense64', 'trials': {trials}, 'max_epochs': {max_epochs},\n"
    "    'startup_trials': 2, 'pruner': 'none',\n"
    f"    'base': {{'train_subset': {train_subset}, 'validation_size': 256, 'batch_size': 64,\n"
    "             'optimizer': 'adam', 'schedule': 'constant', 'augment': False,\n"
    "             'label_smoothing': 0.0, 'epochs': " + str(max_epochs) + "},\n"
    "    'space': {'learning_rate': {'kind': 'log', 'low': 3e-4, 'high': 3e-3}},\n"
    "  })\n"
  )
  return str(path)


def _search_flags(config: str, workdir: pathlib.Path, mnist_dir) -> list[str]:
  return [
    f"--config={config}",
    f"--workdir={workdir}",
    f"--manual_dir={mnist_dir}",
    "--data_backend=idx",
    "--plots=false",  # the confirmation runs' figures: tests/test_report.py
  ]


def _spec_of(trials: int, max_epochs: int, train_subset: int) -> space.SearchSpec:
  base = {
    "train_subset": train_subset,
    "validation_size": 256,
    "batch_size": 64,
    "optimizer": "adam",
    "schedule": "constant",
    "augment": False,
    "label_smoothing": 0.0,
    "epochs": max_epochs,
  }
  return space.parse(
    {
      "trials": trials,
      "max_epochs": max_epochs,
      "startup_trials": 2,
      "pruner": "none",
      "base": base,
      "space": {"learning_rate": {"kind": "log", "low": 3e-4, "high": 3e-3}},
    },
    "conv2_dense64",
  )


def _check_each_trial_ran_once(opened: optuna.Study, directory: pathlib.Path, trials: int):
  counted = [t for t in opened.trials if not t.user_attrs.get(study.REQUEUED)]
  assert len(counted) == trials
  assert all(t.state == optuna.trial.TrialState.COMPLETE for t in counted)
  run_dirs = [t.user_attrs[study.RUN_DIR] for t in counted]
  assert len(set(run_dirs)) == trials
  for name in run_dirs:
    assert (directory / "trials" / name / "trial.json").exists()


def test_two_workers_share_one_study_and_run_each_trial_once(mnist_dir, tmp_path):
  config = _config_file(tmp_path / "tiny.py", trials=4, max_epochs=2, train_subset=256)
  workdir = tmp_path / "study"
  procs = [
    cli.start(
      "experiments.search",
      *_search_flags(config, workdir, mnist_dir),
      "--num_workers=2",
      f"--worker_index={i}",
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=cli.TIMEOUT_S) for p in procs]
  for p, (_, err) in zip(procs, outs, strict=True):
    assert p.returncode == 0, err[-3000:]
  both = [err.count("worker 0: trial") + err.count("worker 1: trial") for _, err in outs]
  assert sum(both) == 4  # four trials in all, between the two workers
  spec = _spec_of(4, 2, 256)
  opened = study.open_study(workdir, spec, write=False)
  _check_each_trial_ran_once(opened, study.study_dir(workdir, spec), 4)


def test_a_killed_worker_s_trial_is_queued_again_and_the_study_finishes(mnist_dir, tmp_path):
  # Longer trials (2,048 images, 6 epochs) so that the kill lands inside the first one.
  config = _config_file(tmp_path / "slow.py", trials=2, max_epochs=6, train_subset=2048)
  workdir = tmp_path / "study"
  spec = _spec_of(2, 6, 2048)
  first = study.study_dir(workdir, spec) / "trials" / "trial-0000"
  proc = cli.start("experiments.search", *_search_flags(config, workdir, mnist_dir))
  assert cli.kill_when(proc, lambda: cli.epochs_done(first) >= 1), "it finished before the kill"
  opened = study.open_study(workdir, spec, write=False)
  assert opened.trials[0].state == optuna.trial.TrialState.RUNNING
  killed_at = cli.epochs_done(first)
  assert 1 <= killed_at < 6

  # Started again (here in-process, on the same 256 validation images), it finishes.
  datasets = {}

  def load(config):
    from digits_jax import data

    if "d" not in datasets:
      datasets["d"] = data.load_datasets(
        "mnist", manual_dir=str(mnist_dir), validation_size=256, backend="idx"
      )
    return datasets["d"]

  finished = study.run_worker(workdir, spec, load=load)
  assert finished.trials[0].state == optuna.trial.TrialState.FAIL
  assert finished.trials[0].user_attrs[study.REQUEUED]
  retry = next(t for t in finished.trials if t.user_attrs.get("retry_of") == 0)
  assert retry.params == finished.trials[0].params
  assert retry.user_attrs[study.RUN_DIR] == "trial-0000"  # resumed from its checkpoint
  assert cli.epochs_done(first) == 6
  epochs = [
    json.loads(line)["epoch"] for line in (first / "metrics.jsonl").read_text().splitlines()
  ]
  assert epochs == [1, 2, 3, 4, 5, 6]
  _check_each_trial_ran_once(finished, study.study_dir(workdir, spec), 2)
  # Started once more, it has nothing left to do.
  again = study.run_worker(workdir, spec, load=load)
  assert len(again.trials) == len(finished.trials)


@pytest.mark.parametrize(
  "settings, message",
  [
    ({"space": {"width": {"kind": "int", "low": 16, "high": 64}}}, "not a Config field"),
    ({"space": {"seed": {"kind": "int", "low": 0, "high": 5}}}, "not a recipe field"),
    ({"space": {"learning_rate": {"kind": "log", "low": 1e-2, "high": 1e-2}}}, "is empty"),
    ({"space": {"batch_size": {"kind": "choice", "choices": ()}}}, "is empty"),
    ({"space": {"epochs": {"kind": "int", "low": 2, "high": 20}}}, "exceeds the budget"),
    ({"pruner": "random"}, "pruner 'random' is unknown"),
    ({"trails": 4}, "unknown study settings ['trails']"),
  ],
)
def test_bad_settings_are_refused_with_the_fix(settings, message):
  with pytest.raises(space.SearchError, match=None) as raised:
    space.parse(settings, "conv2_dense64")
  assert message in str(raised.value)


def test_an_unknown_model_is_refused():
  with pytest.raises(models.UnknownModelError):
    space.parse({}, "conv9_nope")


def test_bad_input_fails_before_anything_is_written(tmp_path):
  config = tmp_path / "bad.py"
  config.write_text(
    "import ml_collections\n\ndef get_config():\n  return ml_collections.ConfigDict({\n"
    "    'models': 'conv2_dense64', 'trials': 2,\n"
    "    'space': {'learning_rate': {'kind': 'log', 'low': 0.01, 'high': 0.001}}})\n"
  )
  workdir = tmp_path / "study"
  out = cli.run("experiments.search", f"--config={config}", f"--workdir={workdir}")
  assert out.returncode != 0
  assert "space.learning_rate: the range [0.01, 0.001] is empty; give low < high" in (
    cli.error_line(out)
  )
  out = cli.run("experiments.search", "--models=conv9_nope", f"--workdir={workdir}")
  assert out.returncode != 0 and "conv9_nope" in cli.error_line(out)
  assert not workdir.exists()
