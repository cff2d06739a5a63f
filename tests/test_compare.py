"""The comparison of runs: statistics against known values, behaviour on synthetic runs whose
truth is known, the files and plots, the entry point, and every refusal."""

from __future__ import annotations

import dataclasses
import gc
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from digits_jax import files, rundir
from digits_jax.analysis import compare_report, comparison
from digits_jax.analysis import stats as cstats
from tests import cli

K = 10
BASE_CONFIG = {
  "model": "conv2_dense64",
  "optimizer": "adam",
  "learning_rate": 0.001,
  "dataset": "mnist",
  "epochs": 2,
  "batch_size": 64,
  "seed": 0,
  "fast_ops": True,
  "eval_batch_size": 1000,
}


def softmax(logits: np.ndarray) -> np.ndarray:
  e = np.exp(logits - logits.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def probabilities(
  rng: np.random.Generator, labels: np.ndarray, difficulty: np.ndarray, skill: float
) -> np.ndarray:
  """A network's test probabilities: the true class's logit is raised by ``skill`` minus the
  image's difficulty (shared by every network), plus this network's own noise."""
  logits = rng.normal(size=(len(labels), K))
  logits[np.arange(len(labels)), labels] += skill - difficulty
  return softmax(logits)


def synthetic_test_set(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
  """Labels, per-image difficulty and small stand-in images (only their digest is used)."""
  labels = rng.integers(0, K, n)
  difficulty = rng.exponential(1.0, n)
  images = rng.random((n, 4), dtype=np.float32)
  return labels, difficulty, images


def run(
  config: dict, probs: np.ndarray, labels: np.ndarray, images: np.ndarray, path: str = "run"
) -> rundir.Run:
  outputs = rundir.make_test_outputs(probs, labels, images)
  results = {"test_accuracy": outputs.accuracy, "seed": config["seed"], "num_params": 1000}
  return rundir.Run(Path(path), config, results, outputs)


def configuration_runs(rng, labels, difficulty, images, skill: float, seeds, **config):
  return [
    run(
      BASE_CONFIG | config | {"seed": s},
      probabilities(rng, labels, difficulty, skill),
      labels,
      images,
      f"{config.get('model', 'm')}-{s}",
    )
    for s in seeds
  ]


def write_run(
  run_dir: Path,
  config: dict,
  probs: np.ndarray,
  labels: np.ndarray,
  images: np.ndarray,
  *,
  outputs: bool = True,
) -> Path:
  """A finished run directory as training writes it (config.json, results.json, outputs)."""
  run_dir.mkdir(parents=True)
  files.write_json(
    run_dir / "config.json", {"config": config, "environment": {}, "data": {"test": len(labels)}}
  )
  accuracy = float(np.mean(probs.argmax(axis=1) == labels))
  if outputs:
    rundir.save_test_outputs(run_dir, probs, labels, images)
  files.write_json(
    run_dir / "results.json",
    {
      "test_accuracy": accuracy,
      "seed": config["seed"],
      "model": config["model"],
      "optimizer": config["optimizer"],
      "num_params": 121930,
    },
  )
  return run_dir


def write_sweep(root: Path, rng, n: int = 1000, seeds=(0, 1)) -> Path:
  """Two configurations (one clearly better) with ``seeds`` each, in ``root``."""
  labels, difficulty, images = synthetic_test_set(rng, n)
  for model, skill in (("good", 6.0), ("weak", 3.0)):
    for s in seeds:
      write_run(
        root / f"{model}-adam-seed{s}",
        BASE_CONFIG | {"model": model, "seed": s},
        probabilities(rng, labels, difficulty, skill),
        labels,
        images,
      )
  return root


def check_png(path: Path) -> None:
  assert path.is_file(), path
  with Image.open(path) as image:
    assert image.format == "PNG"
    assert min(image.size) >= 300
    pixels = np.asarray(image.convert("RGB")).astype(np.int32)
  assert pixels.std() > 5, f"{path} looks blank"
  colours = np.unique((pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2])
  assert len(colours) > 20, f"{path} has almost no content"


# --------------------------------------------------------------------------------------------
# Statistics against known values


def test_exact_mcnemar_on_a_textbook_table():
  # 161 paired outcomes, 6 and 16 discordant: the exact two-sided p is 2 P(X <= 6), X ~ B(22, .5).
  a = np.array([1] * 59 + [1] * 6 + [0] * 16 + [0] * 80, bool)
  b = np.array([1] * 59 + [0] * 6 + [1] * 16 + [0] * 80, bool)
  table = cstats.mcnemar_table(a, b)
  np.testing.assert_array_equal(table, [[59, 6], [16, 80]])
  expected = 2 * sum(math.comb(22, k) for k in range(7)) / 2**22
  assert cstats.mcnemar_pvalue(table) == pytest.approx(expected, rel=1e-12)
  assert cstats.mcnemar_pvalue(table) == pytest.approx(0.0525, abs=1e-4)
  assert cstats.mcnemar_pvalue([[10, 0], [0, 5]]) == 1.0  # no disagreement: no evidence


def test_holm_adjusts_as_the_textbook_step_down():
  assert cstats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
  assert cstats.holm([0.2]) == [0.2]
  assert cstats.holm([]) == []


def test_binomial_interval_is_clopper_pearson():
  for k, n in ((9912, 10000), (10000, 10000), (0, 50), (37, 40)):
    iv = cstats.binomial_interval(k, n)
    low = stats.beta.ppf(0.025, k, n - k + 1) if k else 0.0
    high = stats.beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    assert (iv.low, iv.high) == pytest.approx((low, high), abs=1e-9)
    assert "binomial" in iv.method


def test_seed_interval_is_student_t():
  iv = cstats.seed_interval([0.990, 0.991, 0.992])
  half = 4.302652729749464 * 0.001 / math.sqrt(3)  # t(0.975, 2 df) * s / sqrt(n)
  assert (iv.low, iv.high) == pytest.approx((0.991 - half, 0.991 + half), abs=1e-12)
  assert iv.method == "t over 3 seeds"
  assert cstats.seed_interval([0.99, 0.99]) == cstats.Interval(0.99, 0.99, "t over 2 seeds")


def test_difference_interval_paired_welch_and_not_applicable():
  n = 10000
  a = {0: 9913, 1: 9920, 2: 9915}
  b = {0: 9910, 1: 9915, 2: 9911}  # differences 3, 5, 4: mean 4, sd 1
  iv = cstats.difference_interval(a, b, n)
  half = stats.t.ppf(0.975, 2) / math.sqrt(3)
  assert (iv.low, iv.high) == pytest.approx(((4 - half) / n, (4 + half) / n), abs=1e-12)
  assert iv.method.startswith("paired t")
  # Other seeds: Welch, with the Welch-Satterthwaite degrees of freedom.
  c = {5: 9900, 6: 9906}
  iv = cstats.difference_interval(a, c, n)
  xa, xc = np.array(list(a.values()), float), np.array(list(c.values()), float)
  va, vc = xa.var(ddof=1) / 3, xc.var(ddof=1) / 2
  df = (va + vc) ** 2 / (va**2 / 2 + vc**2 / 1)
  half = stats.t.ppf(0.975, df) * math.sqrt(va + vc)
  d = xa.mean() - xc.mean()
  assert (iv.low, iv.high) == pytest.approx(((d - half) / n, (d + half) / n), abs=1e-12)
  assert iv.method.startswith("Welch")
  assert cstats.difference_interval({0: 9900}, {0: 9890}, n) is None
  assert cstats.difference_interval(a, {7: 9890}, n) is None


def test_discordant_interval_is_dual_to_the_exact_mcnemar_test():
  for a_only, b_only in ((6, 16), (3, 14), (20, 20), (0, 9), (40, 22), (2, 0), (0, 0)):
    table = np.array([[900, a_only], [b_only, 50]])
    iv = cstats.discordant_interval(table)
    n = table.sum()
    assert iv.low <= (a_only - b_only) / n <= iv.high
    if a_only + b_only:
      excluded = not iv.low <= 0 <= iv.high
      assert excluded == (cstats.mcnemar_pvalue(table) < 0.05), (a_only, b_only)


# --------------------------------------------------------------------------------------------
# Stored test outputs


def test_test_outputs_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  labels, difficulty, _ = synthetic_test_set(rng, 300)
  images = rng.integers(0, 256, (300, 28, 28, 1), dtype=np.uint8)
  probs = probabilities(rng, labels, difficulty, 3.0)
  path = rundir.save_test_outputs(tmp_path, probs, labels, images)
  assert path == tmp_path / "test_outputs.npz"
  out = rundir.load_test_outputs(tmp_path)
  assert out.probabilities.dtype == np.float16 and out.probabilities.shape == (300, K)
  np.testing.assert_allclose(out.probabilities, probs, atol=1e-3)
  np.testing.assert_array_equal(out.predictions, probs.argmax(axis=1))
  np.testing.assert_array_equal(out.labels, labels)
  assert out.accuracy == np.mean(probs.argmax(axis=1) == labels)
  assert out.images_dtype == "uint8" and out.images_shape == (300, 28, 28, 1)
  assert out.test_set == rundir.make_test_outputs(probs, labels, images).test_set
  # Another order of the same images and labels is another test set.
  order = rng.permutation(300)
  shuffled = rundir.make_test_outputs(probs[order], labels[order], images[order])
  assert shuffled.images_sha256 != out.images_sha256
  assert shuffled.labels_sha256 != out.labels_sha256
  assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary file left


def test_test_outputs_refuse_what_is_not_probabilities(tmp_path):
  labels = np.array([0, 1, 2])
  images = np.zeros((3, 2), np.float32)
  with pytest.raises(ValueError, match="softmax of the logits"):
    rundir.save_test_outputs(tmp_path, np.array([[3.0, -1, 0]] * 3), labels, images)
  with pytest.raises(ValueError, match="same test examples"):
    rundir.save_test_outputs(tmp_path, np.full((3, 3), 1 / 3), labels[:2], images)
  with pytest.raises(ValueError, match="lie in"):
    rundir.save_test_outputs(tmp_path, np.full((3, 3), 1 / 3), np.array([0, 1, 3]), images)
  assert not (tmp_path / "test_outputs.npz").exists()


def test_unreadable_test_outputs_name_the_file_and_the_fix(tmp_path):
  (tmp_path / "test_outputs.npz").write_bytes(b"not a zip file")
  with pytest.raises(rundir.RunDirError, match="experiments.evaluate --workdir="):
    rundir.load_test_outputs(tmp_path)


# --------------------------------------------------------------------------------------------
# Comparisons of synthetic runs whose truth is known


def test_a_truly_better_model_is_found():
  rng = np.random.default_rng(1)
  labels, difficulty, images = synthetic_test_set(rng, 10000)
  weak = configuration_runs(rng, labels, difficulty, images, 4.0, (0, 1, 2), model="weak")
  good = configuration_runs(rng, labels, difficulty, images, 5.0, (0, 1, 2), model="good")
  result = comparison.compare(weak + good)  # the worse listed first: the order must not matter
  assert [c.label for c in result.configurations] == ["good adam", "weak adam"]
  good_c, weak_c = result.configurations
  assert good_c.seeds == (0, 1, 2) and good_c.interval.method == "t over 3 seeds"
  assert good_c.mean == pytest.approx(np.mean(good_c.accuracies))
  assert good_c.ensemble_accuracy >= max(good_c.accuracies) - 0.002
  (pair,) = result.pairs
  assert (pair.a, pair.b, pair.verdict) == ("good adam", "weak adam", comparison.A_BETTER)
  assert pair.pvalue_holm < 1e-6
  assert pair.difference_interval.method == "paired t over 3 seeds"
  assert pair.difference_interval.low > 0  # every seed agrees
  assert all(p < 0.001 for p in pair.seed_pvalues) and len(pair.seed_pvalues) == 3
  assert pair.ensemble_interval.low > 0
  assert pair.notes == ()


def test_two_configurations_of_the_same_model_are_mostly_called_equal(monkeypatch):
  # statsmodels' Holm correction ends with gc.collect(), which would take most of the time of
  # 200 repetitions; garbage collection changes no number.
  monkeypatch.setattr(gc, "collect", lambda *args: 0)
  rng = np.random.default_rng(2)
  repetitions, calls = 200, []
  for _ in range(repetitions):
    labels, difficulty, images = synthetic_test_set(rng, 2000)
    runs = [
      *configuration_runs(rng, labels, difficulty, images, 4.0, (0, 1, 2), model="a"),
      *configuration_runs(rng, labels, difficulty, images, 4.0, (0, 1, 2), model="b"),
    ]
    calls.append(comparison.compare(runs).pairs[0].verdict)
  rate = calls.count("no significant difference") / repetitions
  # At the 5% level about 95% (the exact test is a little conservative); a band of 99.9%
  # of a binomial(200, 0.95) around it.
  low, high = stats.binom.ppf([0.0005, 0.9995], repetitions, 0.95) / repetitions
  assert low <= rate <= high, (rate, calls.count("A better"), calls.count("B better"))


def test_labels_name_only_what_varies_and_seeds_group():
  rng = np.random.default_rng(3)
  labels, difficulty, images = synthetic_test_set(rng, 500)
  runs = [
    run(
      BASE_CONFIG | {"learning_rate": lr, "seed": s, "fast_ops": s == 0},
      probabilities(rng, labels, difficulty, 3.0),
      labels,
      images,
      f"{lr}-{s}",
    )
    for lr in (0.001, 0.003)
    for s in (0, 1)
  ]
  runs.append(
    run(
      BASE_CONFIG | {"optimizer": "sgd", "learning_rate": 0.01},
      probabilities(rng, labels, difficulty, 3.0),
      labels,
      images,
      "sgd",
    )
  )
  result = comparison.compare(runs)
  assert sorted(c.label for c in result.configurations) == [
    "conv2_dense64 adam lr=0.001",
    "conv2_dense64 adam lr=0.003",
    "conv2_dense64 sgd lr=0.01",
  ]
  assert sorted(len(c.seeds) for c in result.configurations) == [1, 2, 2]
  assert len(result.pairs) == 3
  single = next(c for c in result.configurations if len(c.seeds) == 1)
  assert single.interval.method == "binomial over 500 test images"
  assert math.isnan(single.std)


def test_labels_show_an_attacks_settings_only_where_a_configuration_sets_them():
  # A standard run carries the attack settings' defaults, FGSM a step count it never uses:
  # neither belongs in its label, as neither is in its run's name.
  keys = [
    tuple(
      (k, json.dumps(v))
      for k, v in (
        BASE_CONFIG | {"adversarial": kind, "adversarial_warmup": warm, "adversarial_steps": steps}
      ).items()
    )
    for kind, warm, steps in (("none", 0, 10), ("fgsm", 2, 10), ("pgd", 2, 7))
  ]
  assert comparison._labels(keys) == [
    "conv2_dense64 adam adv=none",
    "conv2_dense64 adam adv=fgsm warm=2",
    "conv2_dense64 adam adv=pgd warm=2 advsteps=7",
  ]


def test_final_fits_group_by_recipe_and_rank_by_their_validation_runs():
  """Final fits of three seeds (epoch counts 18, 19, 20 chosen one by one) are one
  configuration, "final fit" beside their recipe's, with their validation runs' accuracy."""
  rng = np.random.default_rng(5)
  labels, difficulty, images = synthetic_test_set(rng, 500)
  recipe = {"epochs": 20, "validation_size": 5000}
  runs = []
  for s, best in zip((0, 1, 2), (18, 19, 20), strict=True):
    validation_run = run(
      BASE_CONFIG | recipe | {"seed": s},
      probabilities(rng, labels, difficulty, 3.0),
      labels,
      images,
      f"v{s}",
    )
    validation_run.results["val_accuracy"] = 0.99 + s / 1000
    final_config = BASE_CONFIG | {"epochs": best, "validation_size": 0, "seed": s}
    final = run(final_config, probabilities(rng, labels, difficulty, 3.0), labels, images)
    record = recipe | {"of": f"v{s}", "best_epoch": best, "val_accuracy": 0.99 + s / 1000}
    runs += [validation_run, dataclasses.replace(final, path=Path(f"v{s}-final"), final_fit=record)]
  result = comparison.compare(runs, ensemble_top=2)
  by_label = {c.label: c for c in result.configurations}
  assert sorted(by_label) == ["conv2_dense64 adam", "conv2_dense64 adam final fit"]
  final = by_label["conv2_dense64 adam final fit"]
  assert final.seeds == (0, 1, 2) and final.val_accuracy == pytest.approx(0.991)
  assert len(result.pairs) == 1 and result.ensemble is not None
  # A run without the record, trained with validation_size=0 for 18 epochs, is no final fit.
  plain = dataclasses.replace(runs[1], final_fit=None)
  assert plain.key != runs[1].key and plain.val_accuracy is None


def test_one_configuration_and_one_seed_are_tables_without_tests(tmp_path):
  rng = np.random.default_rng(4)
  labels, difficulty, images = synthetic_test_set(rng, 500)
  only = comparison.compare(
    [run(BASE_CONFIG, probabilities(rng, labels, difficulty, 3.0), labels, images)]
  )
  assert only.pairs == ()
  markdown = compare_report.write_comparison(only, tmp_path)
  assert "not applicable" in markdown and "binomial over 500 test images" in markdown
  check_png(tmp_path / "compare_forest.png")
  check_png(tmp_path / "compare_pairs.png")

  seeds = comparison.compare(
    [
      run(BASE_CONFIG | {"model": m}, probabilities(rng, labels, difficulty, s), labels, images, m)
      for m, s in (("a", 3.0), ("b", 2.0))
    ]
  )
  (pair,) = seeds.pairs
  assert pair.difference_interval is None and len(pair.seed_pvalues) == 1
  assert pair.seed_pvalues[0] == pair.ensemble_pvalue  # one seed: its ensemble is the run
  assert pair.dispersion == 1.0 and pair.seed_pvalues[0] == pytest.approx(pair.pvalue)
  assert "one seed pair" in pair.notes[0]
  assert "| n/a |" in compare_report.to_markdown(seeds)


# --------------------------------------------------------------------------------------------
# Files and the entry point


def test_entry_point_end_to_end(tmp_path):
  rng = np.random.default_rng(5)
  sweep = write_sweep(tmp_path / "sweep", rng)
  (sweep / "unfinished-seed0").mkdir()  # a run still training: left out, not an error
  files.write_json(sweep / "unfinished-seed0" / "config.json", {"config": BASE_CONFIG})
  out = cli.run("experiments.compare", f"--workdir={sweep}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "| good adam | weak adam |" in out.stdout and f"**{comparison.A_BETTER}**" in out.stdout
  assert "unfinished-seed0" in out.stderr
  markdown = (sweep / "compare.md").read_text()
  assert markdown in out.stdout
  rows = (sweep / "compare.csv").read_text().splitlines()
  assert rows[0].startswith("configuration,seeds,n,mean_accuracy") and len(rows) == 3
  pairs = (sweep / "compare_pairs.csv").read_text().splitlines()
  assert len(pairs) == 2 and pairs[1].startswith("good adam,weak adam,")
  saved = json.loads((sweep / "compare.json").read_text())
  assert len(saved["runs"]) == 4 and saved["pairs"][0]["verdict"] == comparison.A_BETTER
  check_png(sweep / "compare_forest.png")
  check_png(sweep / "compare_pairs.png")
  # Several sweeps at once, written elsewhere: the runs of both are found.
  write_sweep(tmp_path / "more", np.random.default_rng(5), seeds=(2,))
  out = cli.run(
    "experiments.compare",
    f"--workdir={sweep}",
    f"--workdir={tmp_path / 'more'}",
    f"--output_dir={tmp_path / 'both'}",
  )
  assert out.returncode == 0, out.stderr[-3000:]
  saved = json.loads((tmp_path / "both" / "compare.json").read_text())
  assert len(saved["runs"]) == 6
  assert [c["seeds"] for c in saved["configurations"]] == [[0, 1, 2], [0, 1, 2]]


def test_entry_point_names_runs_without_outputs_and_writes_nothing(tmp_path):
  rng = np.random.default_rng(6)
  sweep = write_sweep(tmp_path / "sweep", rng, n=200)
  labels, difficulty, images = synthetic_test_set(np.random.default_rng(6), 200)
  old = write_run(
    sweep / "old-adam-seed0",
    BASE_CONFIG | {"model": "old"},
    probabilities(rng, labels, difficulty, 3.0),
    labels,
    images,
    outputs=False,
  )
  before = cli.snapshot(sweep)
  out = cli.run("experiments.compare", f"--workdir={sweep}")
  assert out.returncode == 1
  line = cli.error_line(out)
  assert str(old) in line and f"python -m experiments.evaluate --workdir={old}" in line
  assert "1 of 5 runs" in line
  assert cli.snapshot(sweep) == before


def test_find_runs_refuses_empty_and_missing_folders(tmp_path, monkeypatch):
  with pytest.raises(rundir.RunDirError, match="not a folder"):
    rundir.find_runs([tmp_path / "nowhere"])
  with pytest.raises(rundir.RunDirError, match="no finished runs"):
    rundir.find_runs([tmp_path])
  sweep = write_sweep(tmp_path / "sweep", np.random.default_rng(7), n=100)
  found = rundir.find_runs([sweep, sweep / "good-adam-seed0"])  # overlapping: each once
  assert [p.name for p in found] == [
    "good-adam-seed0",
    "good-adam-seed1",
    "weak-adam-seed0",
    "weak-adam-seed1",
  ]
  # Paths stay as given: relative ones (what compare.json records) do not name the machine.
  monkeypatch.chdir(tmp_path)
  found = rundir.find_runs(["sweep", tmp_path / "sweep" / "good-adam-seed0"])
  assert [str(p) for p in found][:2] == ["sweep/good-adam-seed0", "sweep/good-adam-seed1"]
  assert len(found) == 4


def test_runs_of_other_datasets_are_refused_by_name():
  rng = np.random.default_rng(8)
  labels, difficulty, images = synthetic_test_set(rng, 200)
  probs = probabilities(rng, labels, difficulty, 3.0)
  runs = [
    run(BASE_CONFIG, probs, labels, images, "digits"),
    run(BASE_CONFIG | {"dataset": "fashion_mnist"}, probs, labels, images, "clothes"),
  ]
  with pytest.raises(comparison.ComparisonError, match="different datasets") as error:
    comparison.compare(runs)
  assert "digits" in str(error.value) and "clothes" in str(error.value)


def test_other_test_sets_or_label_orders_are_refused_by_name():
  rng = np.random.default_rng(9)
  labels, difficulty, images = synthetic_test_set(rng, 200)
  probs = probabilities(rng, labels, difficulty, 3.0)
  order = rng.permutation(200)
  first = run(BASE_CONFIG, probs, labels, images, "first")
  shuffled = run(
    BASE_CONFIG | {"model": "b"}, probs[order], labels[order], images[order], "shuffled"
  )
  with pytest.raises(comparison.ComparisonError, match="different order") as error:
    comparison.compare([first, shuffled])
  assert "first" in str(error.value) and "shuffled" in str(error.value)
  other = run(BASE_CONFIG | {"model": "c"}, probs, labels, images + 1, "other_images")
  with pytest.raises(comparison.ComparisonError, match="not tested on the same test set"):
    comparison.compare([first, other])


def test_duplicate_runs_are_refused_by_name():
  rng = np.random.default_rng(10)
  labels, difficulty, images = synthetic_test_set(rng, 200)
  probs = probabilities(rng, labels, difficulty, 3.0)
  a = run(BASE_CONFIG, probs, labels, images, "sweep1/run")
  b = run(BASE_CONFIG | {"fast_ops": False}, probs, labels, images, "sweep2/run")
  with pytest.raises(comparison.ComparisonError, match="same configuration with the same seed"):
    comparison.compare([a, b])
  with pytest.raises(comparison.ComparisonError, match="no runs"):
    comparison.compare([])


def test_outputs_that_disagree_with_results_json_are_flagged():
  rng = np.random.default_rng(11)
  labels, difficulty, images = synthetic_test_set(rng, 200)
  a = run(BASE_CONFIG, probabilities(rng, labels, difficulty, 3.0), labels, images, "fine")
  stale = rundir.Run(
    Path("stale"),
    BASE_CONFIG | {"model": "b"},
    {"test_accuracy": 0.5},
    run(BASE_CONFIG, probabilities(rng, labels, difficulty, 3.0), labels, images).outputs,
  )
  result = comparison.compare([a, stale])
  (warning,) = result.warnings
  assert warning.startswith("stale:") and "experiments.evaluate --workdir=stale" in warning
  assert f"**Warning:** {warning}" in compare_report.to_markdown(result)
  assert comparison.compare([a]).warnings == ()


def test_the_ensemble_of_configurations_is_chosen_by_validation_and_averages_per_seed():
  rng = np.random.default_rng(7)
  labels, difficulty, images = synthetic_test_set(rng, 3000)
  runs = []
  # "lucky" is the best on the test set but the worst on validation: it must not be chosen.
  for model, skill, val in (("a", 5.0, 0.99), ("b", 4.8, 0.98), ("lucky", 6.0, 0.90)):
    for r in configuration_runs(rng, labels, difficulty, images, skill, (0, 1, 2), model=model):
      r.results.update(val_accuracy=val, train_seconds=10.0, seconds_per_epoch=5.0)
      runs.append(r)
  result = comparison.compare(runs, ensemble_top=2)
  e = result.ensemble
  assert e.members == ("a adam", "b adam") and e.versus == "a adam"
  assert e.seeds == (0, 1, 2) and e.interval.method == "t over 3 seeds"
  for seed, accuracy in zip(e.seeds, e.accuracies, strict=True):
    members = [r for r in runs if r.seed == seed and r.config["model"] in ("a", "b")]
    mean = np.mean([r.outputs.probabilities.astype(np.float32) for r in members], axis=0)
    assert accuracy == pytest.approx(np.mean(mean.argmax(1) == labels))
  assert e.mean == pytest.approx(np.mean(e.accuracies))
  assert e.runs == 6 and e.train_seconds == 20.0
  a = next(c for c in result.configurations if c.label == "a adam")
  assert e.difference == pytest.approx(e.all_accuracy - a.ensemble_accuracy)
  assert e.table[0][1] - e.table[1][0] == round(e.difference * len(labels))
  assert 0 < e.pvalue <= 1
  assert (a.val_accuracy, a.seconds_per_epoch, a.train_seconds) == pytest.approx((0.99, 5.0, 10.0))
  markdown = compare_report.to_markdown(result)
  assert "## Ensemble of the 2 best configurations by validation accuracy" in markdown
  assert "a adam, b adam" in markdown
  # One configuration per model: "a" with SGD, second by validation, gives way to "b".
  sgd = configuration_runs(
    rng, labels, difficulty, images, 5.0, (0, 1, 2), model="a", optimizer="sgd"
  )
  for r in sgd:
    r.results.update(val_accuracy=0.985)
    runs.append(r)
  assert comparison.compare(runs, ensemble_top=2).ensemble.members == ("a adam", "a sgd")
  distinct = comparison.compare(runs, ensemble_top=2, one_per_model=True).ensemble
  assert distinct.members == ("a adam", "b adam") and distinct.one_per_model
  assert "the best configuration of each of the 2 best models" in "\n".join(
    compare_report.ensemble_markdown(distinct)
  )
  assert comparison.compare(runs, ensemble_top=3, one_per_model=True).ensemble.members == (
    "a adam",
    "b adam",
    "lucky adam",
  )
  # Without validation accuracies, or with ensemble_top=0, there is no ensemble.
  assert comparison.compare(runs, ensemble_top=0).ensemble is None
  for r in runs:
    r.results.pop("val_accuracy")
  assert comparison.compare(runs).ensemble is None
