"""The robustness evaluation of a finished run, its files, its resume, its refusals, and the
comparison of runs on every robustness axis."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digits_jax import data, files, robustness_eval
from digits_jax.analysis import compare_report, comparison, robustness, robustness_report
from digits_jax.analysis.comparison import A_BETTER, NO_DIFFERENCE
from digits_jax.robustness import store
from tests import cli
from tests.test_compare import BASE_CONFIG, check_png, configuration_runs, synthetic_test_set

# A small evaluation: three corruptions, two eps, a short PGD on 100 images.
SMALL = robustness_eval.Settings(
  corruptions=("stripe", "translate", "shot_noise"),
  eps=(0.1, 0.3),
  steps=5,
  subset=100,
  batch_size=100,
)


def _datasets_of_tiny_run(mnist) -> data.Datasets:
  # tests.conftest.tiny_run's data: its 500 validation images.
  return data.Datasets(
    train=mnist.train,
    validation=data.Split(mnist.validation.images[:500], mnist.validation.labels[:500]),
    test=mnist.test,
    name=mnist.name,
    backend=mnist.backend,
  )


@pytest.fixture(scope="module")
def evaluated(tiny_run, mnist, tmp_path_factory):
  """A copy of the tiny run, evaluated with :data:`SMALL`."""
  workdir = tmp_path_factory.mktemp("robust") / "run"
  shutil.copytree(tiny_run[0], workdir)
  summary = robustness_eval.evaluate_run(workdir, SMALL, datasets=_datasets_of_tiny_run(mnist))
  return workdir, summary


def test_the_evaluation_writes_every_part_and_a_summary(evaluated, tiny_run):
  workdir, summary = evaluated
  assert summary["clean_accuracy"] == pytest.approx(tiny_run[1]["test_accuracy"])
  corrupted = summary["corruptions"]
  assert set(corrupted["accuracy"]) == set(SMALL.corruptions)
  assert corrupted["worst"] in SMALL.corruptions
  assert corrupted["mean"] == pytest.approx(np.mean(list(corrupted["accuracy"].values())))
  for name in SMALL.corruptions:
    arrays = store.load_arrays(store.corruption_path(workdir, name))
    assert arrays["predictions"].shape == (10_000,) and arrays["predictions"].dtype == np.uint8
  attacked = summary["attacks"]
  assert set(attacked["accuracy"]) == {"fgsm", "pgd"}
  assert set(attacked["accuracy"]["pgd"]) == {"0.1", "0.3"}
  arrays = store.load_arrays(store.attack_path(workdir, "pgd", 0.3))
  assert len(arrays["indices"]) == 100 and len(np.unique(arrays["indices"])) == 100
  # The subset is class-stratified: ten images of each class.
  assert np.all(np.bincount(arrays["labels"], minlength=10) == 10)
  # Robust accuracy under PGD is below clean accuracy on the same images, and falls with eps.
  pgd = attacked["accuracy"]["pgd"]
  assert pgd["0.3"] <= pgd["0.1"] <= attacked["clean_accuracy"]
  assert attacked["eps1_accuracy"] == 0.0
  assert attacked["checks_passed"], attacked["checks"]
  calibration = summary["calibration"]
  assert 0 < calibration["temperature"] and calibration["nll_scaled"] <= calibration["nll"] + 1e-3
  cost = summary["cost"]
  assert cost["num_params"] == tiny_run[1]["num_params"]
  assert cost["flops_per_image"] > 2 * 1e5  # conv2_dense64: a few MFLOP per image
  assert set(cost["latency_seconds"]) == {"1", "1024"}
  assert json.loads((workdir / "robustness" / "summary.json").read_text())["run"] == "run"


def test_an_interrupted_evaluation_finishes_with_the_same_numbers(evaluated, mnist, tmp_path):
  workdir, summary = evaluated
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  # As if stopped after the first corruption and before the attacks: later parts are missing.
  (copy / "robustness" / "summary.json").unlink()
  for name in SMALL.corruptions[1:]:
    store.corruption_path(copy, name).unlink()
  shutil.rmtree(copy / "robustness" / "attacks")
  kept = store.corruption_path(copy, SMALL.corruptions[0]).read_bytes()
  again = robustness_eval.evaluate_run(copy, SMALL, datasets=_datasets_of_tiny_run(mnist))
  assert store.corruption_path(copy, SMALL.corruptions[0]).read_bytes() == kept
  for key in ("clean_accuracy", "corruptions", "attacks"):
    a, b = summary[key], again[key]
    if isinstance(a, dict):
      a = {k: v for k, v in a.items() if k not in ("seconds",)}
      b = {k: v for k, v in b.items() if k not in ("seconds",)}
    assert a == b, key


def test_each_corruption_is_generated_once_for_several_runs(tiny_run, mnist, tmp_path, monkeypatch):
  from digits_jax.robustness import corruptions

  calls = []
  corrupt = corruptions.corrupt

  def counted(name, images, seed=0, **kwargs):
    calls.append(name)
    return corrupt(name, images, seed, **kwargs)

  monkeypatch.setattr(corruptions, "corrupt", counted)
  monkeypatch.setattr(robustness_eval, "_GENERATED", {})
  only = robustness_eval.Settings(corruptions=("stripe", "shot_noise"), attacks=(), cost=False)
  for name in ("a", "b"):
    shutil.copytree(tiny_run[0], tmp_path / name)
  summaries = robustness_eval.evaluate_runs(
    [tmp_path / "a", tmp_path / "b"], only, load=lambda config: _datasets_of_tiny_run(mnist)
  )
  assert calls == ["stripe", "shot_noise"]
  # The second run saw the same images: bytes kept exactly (every prediction the same).
  for name in only.corruptions:
    a = store.load_arrays(store.corruption_path(tmp_path / "a", name))["predictions"]
    b = store.load_arrays(store.corruption_path(tmp_path / "b", name))["predictions"]
    fresh = corrupt(name, mnist.test.images[:2000], 0)
    cached = robustness_eval._generated(
      name, mnist.test.images, 0, robustness_eval._digest(mnist.test.images)
    )
    np.testing.assert_array_equal(cached[:2000], fresh)
    np.testing.assert_array_equal(a, b)
  assert summaries[0]["corruptions"]["accuracy"] == summaries[1]["corruptions"]["accuracy"]
  assert summaries[1]["clean_accuracy"] == pytest.approx(tiny_run[1]["test_accuracy"])


def test_the_runs_of_one_network_compile_its_attacks_once(tiny_run, mnist, tmp_path):
  from digits_jax.robustness import dataset_attacks

  only = robustness_eval.Settings(
    corruptions=(), attacks=("fgsm", "pgd"), eps=(0.1,), steps=3, subset=20, cost=False
  )
  for name in ("a", "b"):
    shutil.copytree(tiny_run[0], tmp_path / name)
  robustness_eval._cached_attack_logits.cache_clear()
  dataset_attacks._batch_segment.cache_clear()
  dataset_attacks._batch_fgsm.cache_clear()
  robustness_eval.evaluate_runs(
    [tmp_path / "a"], only, load=lambda config: _datasets_of_tiny_run(mnist)
  )
  compiled = dataset_attacks._batch_segment.cache_info().currsize
  assert compiled >= 1 and dataset_attacks._batch_fgsm.cache_info().currsize == 1
  robustness_eval.evaluate_runs(
    [tmp_path / "b"], only, load=lambda config: _datasets_of_tiny_run(mnist)
  )
  # The second run (another seed of the same network) found every attack compiled.
  assert dataset_attacks._batch_segment.cache_info().currsize == compiled
  assert dataset_attacks._batch_fgsm.cache_info().currsize == 1
  assert robustness_eval._cached_attack_logits.cache_info().hits >= 1


def test_a_network_with_an_unhashable_field_still_gets_its_logits():
  class Listed(nn.Module):
    widths: list  # unhashable: no cached function, but a working one

    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(self.widths[0])(x.reshape(len(x), -1))

  model = Listed([3])
  x = jnp.ones((2, 4, 4, 1))
  variables = model.init(jax.random.key(0), x)
  logits = robustness_eval._attack_logits(model)(variables, x)
  assert logits.shape == (2, 3)


def test_other_settings_are_refused_unless_overwritten(evaluated, mnist, tmp_path):
  workdir, _ = evaluated
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  before = cli.snapshot(copy)
  stronger = robustness_eval.Settings(**{**SMALL.__dict__, "steps": 7})
  with pytest.raises(robustness_eval.RobustnessError, match="steps: 5 there, 7 here"):
    robustness_eval.evaluate_run(copy, stronger, datasets=_datasets_of_tiny_run(mnist))
  assert cli.snapshot(copy) == before


@pytest.mark.parametrize(
  "changes, message",
  [
    ({"corruptions": ("fogg",)}, "unknown corruption 'fogg'"),
    ({"attacks": ("cw",)}, "unknown attack 'cw'"),
    ({"eps": (0.0,)}, "eps"),
    ({"eps": (1.5,)}, "eps"),
    ({"steps": 0}, "steps"),
    ({"restarts": 0}, "restarts"),
    ({"subset": 5}, "at least 10 images"),
  ],
)
def test_bad_settings_stop_before_any_work(changes, message):
  with pytest.raises(robustness_eval.RobustnessError, match=message):
    robustness_eval.Settings(**{**SMALL.__dict__, **changes}).check()


def test_the_entry_point_refuses_bad_input_with_one_line(tmp_path):
  # A run folder without a checkpoint: named, with the fix, before any work.
  run = tmp_path / "run"
  run.mkdir()
  files.write_json(run / "config.json", {"config": BASE_CONFIG})
  files.write_json(run / "results.json", {"test_accuracy": 0.9})
  for flags, message in [
    ((f"--workdir={run}",), "has no checkpoint"),
    ((f"--workdir={run}", "--corruptions=fogg"), "unknown corruption 'fogg'"),
    ((f"--workdir={run}", "--eps=0.1,1.5"), "eps"),
    ((f"--workdir={run}", f"--mnist_c_dir={tmp_path / 'none'}"), "test_images.npy"),
  ]:
    done = cli.run("experiments.robustness", *flags)
    assert done.returncode == 1
    assert message in cli.error_line(done)
  assert not (run / "robustness").exists()


# --------------------------------------------------------------------------------------------
# The comparison on every axis, on synthetic runs whose truth is known.


def _write_robustness(path: Path, labels: np.ndarray, rng, skill: float) -> None:
  """A finished evaluation of a network right on about ``skill`` of corrupted and attacked
  images."""
  n = len(labels)
  accuracy = {}
  names = ("stripe", "fog")
  for name in names:
    right = rng.random(n) < skill
    predictions = np.where(right, labels, (labels + 1) % 10)
    store.save_predictions(store.corruption_path(path, name), predictions, labels)
    accuracy[name] = float(right.mean())
  subset = np.arange(200)
  attacks = {}
  for attack in ("fgsm", "pgd"):
    for eps in (0.1, 0.3):
      right = rng.random(len(subset)) < skill * (1 - eps)
      predictions = np.where(right, labels[subset], (labels[subset] + 1) % 10)
      store.save_predictions(
        store.attack_path(path, attack, eps), predictions, labels[subset], indices=subset
      )
      attacks.setdefault(attack, {})[f"{eps:g}"] = float(right.mean())
  files.write_json(
    store.folder(path) / store.SUMMARY,
    {
      "clean_accuracy": 0.99,
      "corruptions": {"accuracy": accuracy, "mean": float(np.mean(list(accuracy.values())))},
      "attacks": {"accuracy": attacks, "checks": [{"check": "c", "passed": True, "detail": ""}]},
      "calibration": {"ece": 0.01, "ece_scaled": 0.005, "nll": 0.05, "temperature": 1.2},
      "cost": {"num_params": 1000, "flops_per_image": 2e6, "latency_seconds": {"1": 1e-4}},
      "settings": {"subset": 200, "steps": 40},
      "machine": {"cpu": "test", "cpu_count": 2, "backend": "cpu"},
    },
  )


def test_a_more_robust_configuration_is_found_on_each_axis(tmp_path):
  rng = np.random.default_rng(0)
  labels, difficulty, images = synthetic_test_set(rng, 1000)
  runs = []
  for model, skill in (("conv2_dense64", 0.9), ("conv3_dense100", 0.5), ("conv2_dense100", 0.5)):
    members = configuration_runs(rng, labels, difficulty, images, 3.0, (0, 1, 2), model=model)
    for member in members:
      path = tmp_path / member.path
      _write_robustness(path, labels, rng, skill)
      runs.append(type(member)(path, member.config, member.results, member.outputs))
  compared = comparison.compare(runs)
  r = robustness.compare_robustness(compared)
  assert r is not None and len(r.labels) == 3
  label = {x.split()[0]: x for x in r.labels}
  strong, weak = label["conv2_dense64"], label["conv3_dense100"]
  for axis in ("mean corruption", "pgd eps 0.1", "fgsm eps 0.3"):
    verdicts = {(p.a, p.b): p.verdict for p in r.pairs if p.axis == axis}
    assert verdicts[(strong, weak)] == A_BETTER, axis
    # Two configurations of the same skill: no verdict.
    same = {weak, label["conv2_dense100"]}
    assert [v for pair, v in verdicts.items() if set(pair) == same] == [NO_DIFFERENCE], axis
  m = r.metrics[strong]["pgd/0.1"]
  assert len(m.values) == 3 and m.interval.low < m.mean < m.interval.high
  assert r.worst[strong] in ("stripe", "fog")
  markdown = compare_report.write_comparison(compared, tmp_path / "out")
  assert "robustness.md" in markdown
  text = (tmp_path / "out" / "robustness.md").read_text()
  assert f"{strong} better than {weak}" in text
  for name in robustness_report.FIGURES.values():
    if name not in (
      robustness_report.FIGURES["learning"],
      robustness_report.FIGURES["reliability"],
    ):
      check_png(tmp_path / "out" / name)


def test_no_evaluation_no_robustness_section(tmp_path):
  rng = np.random.default_rng(1)
  labels, difficulty, images = synthetic_test_set(rng, 500)
  runs = configuration_runs(rng, labels, difficulty, images, 3.0, (0, 1), model="conv2_dense64")
  runs = [type(r)(tmp_path / r.path, r.config, r.results, r.outputs) for r in runs]
  compared = comparison.compare(runs)
  assert robustness.compare_robustness(compared) is None
  assert robustness_report.write_robustness(compared, tmp_path) is None


def test_published_arrays_are_read_in_place_of_generated_corruptions(evaluated, mnist, tmp_path):
  # A folder in MNIST-C's layout: <dir>/<corruption>/test_images.npy and test_labels.npy.
  published = tmp_path / "mnist_c"
  images = (mnist.test.images[:40, ..., 0] * 255).round().astype(np.uint8)[..., None]
  for name in ("stripe", "fog"):
    (published / name).mkdir(parents=True)
    np.save(published / name / "test_images.npy", images)
    np.save(published / name / "test_labels.npy", mnist.test.labels[:40].astype(np.uint8))
  copy = tmp_path / "run"
  shutil.copytree(evaluated[0], copy, ignore=shutil.ignore_patterns("robustness"))
  settings = robustness_eval.Settings(
    corruptions=("stripe", "fog"), mnist_c_dir=str(published), attacks=(), cost=False
  )
  summary = robustness_eval.evaluate_run(copy, settings, datasets=_datasets_of_tiny_run(mnist))
  assert summary["corruptions"]["source"] == "published"
  arrays = store.load_arrays(store.corruption_path(copy, "fog"))
  assert len(arrays["predictions"]) == 40
  # The published "fog" here is the clean images: its accuracy is the clean accuracy on them.
  clean = np.argmax(evaluated_logits(copy, mnist.test.images[:40]), axis=-1)
  assert summary["corruptions"]["accuracy"]["fog"] == pytest.approx(
    np.mean(clean == mnist.test.labels[:40])
  )
  (published / "fog" / "test_labels.npy").unlink()
  with pytest.raises(robustness_eval.RobustnessError, match="test_labels.npy"):
    settings.check()


def evaluated_logits(run_dir: Path, images: np.ndarray) -> np.ndarray:
  from digits_jax import runs

  return runs.load_predictor(run_dir).probabilities(images)


def test_the_pairs_csv_reads_back(tmp_path):
  rows = [{"axis": "pgd eps 0.1", "verdict": A_BETTER, "p": 0.01}, {"axis": "x", "verdict": "y"}]
  text = robustness_report._csv(rows)
  import csv
  import io

  back = list(csv.DictReader(io.StringIO(text)))
  assert back[0]["verdict"] == A_BETTER and back[1]["p"] == ""


def test_the_cost_benchmark_sets_evaluations_against_epochs(evaluated, tmp_path):
  workdir, summary = evaluated
  done = cli.run(
    "benchmarks.robustness", f"--workdir={workdir}", f"--output_dir={tmp_path}", timeout_s=120
  )
  assert done.returncode == 0, done.stderr[-2000:]
  [row] = json.loads((tmp_path / "robustness_cost.json").read_text())["runs"]
  assert row["total_seconds"] == pytest.approx(summary["total_seconds"])
  assert row["epochs_worth"] == pytest.approx(row["total_seconds"] / row["seconds_per_epoch"])
  assert "training epochs per evaluation (goal: at most 5)" in done.stdout
