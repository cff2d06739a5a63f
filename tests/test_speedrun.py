"""The speedrun recipe: its schedule, its PyTorch twin, and a short run that learns."""

from __future__ import annotations

import json

import jax
import numpy as np
import optax
import pytest

from digits_jax import data, models
from digits_jax import speedrun as sr
from tests import cli
from tests.conftest import requires


def test_schedule_is_optax_one_cycle():
  recipe = sr.Recipe(learning_rate=0.02, pct_start=0.25, div_factor=10, final_div_factor=100)
  steps = 200
  schedule = recipe.schedule(steps)
  ours = [float(schedule(i)) for i in range(steps)]
  expected = optax.cosine_onecycle_schedule(
    steps, 0.02, pct_start=0.25, div_factor=10, final_div_factor=100
  )
  np.testing.assert_allclose(ours, [float(expected(i)) for i in range(steps)], rtol=1e-6)
  assert ours[0] == pytest.approx(0.002) and max(ours) == pytest.approx(0.02, rel=1e-3)
  assert float(schedule(steps)) == pytest.approx(0.002 / 100)


def test_optimizer_steps_with_the_schedule():
  """Adam's first step moves each parameter by the schedule's first rate (sign of grad)."""
  recipe = sr.Recipe()
  tx = recipe.optimizer(100)
  params = {"w": np.ones(3, np.float32)}
  updates, _ = tx.update({"w": np.array([1.0, -2.0, 0.5], np.float32)}, tx.init(params), params)
  expected = -float(recipe.schedule(100)(0)) * np.sign([1, -2, 1])
  np.testing.assert_allclose(updates["w"], expected, rtol=1e-5)


def test_steps_and_batches():
  recipe = sr.Recipe(batch_size=256, epochs=1)
  assert recipe.steps(60_000) == 234 and recipe.replace(epochs=0.5).steps(60_000) == 117
  assert sr.REFERENCE.steps(60_000) == 234 and sr.Recipe().steps(60_000) == 351
  with pytest.raises(ValueError, match="less than one batch"):
    recipe.replace(epochs=0.001).steps(60_000)
  images = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
  x, y = sr.batch_array(images, np.arange(10), 4)
  assert x.shape == (2, 4, 2) and y.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(b1=1.0), dict(pct_start=1.5)])
def test_bad_recipe_is_refused(bad):
  with pytest.raises(ValueError, match=next(iter(bad))):
    sr.Recipe(**bad).validate()


@pytest.mark.parametrize("name", ["speedrun", "speedrun_small"])
def test_torch_network_computes_ours(name):
  """Ours and the PyTorch twin, given the same parameters, give the same logits."""
  torch = requires("torch")
  from benchmarks import speedrun as side

  model = models.create_model(name)
  params = models.init_variables(model, jax.random.PRNGKey(0))["params"]
  net = side.torch_net(name)
  assert sum(p.numel() for p in net.parameters()) == models.count_params(params)
  convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
  dense = [m for m in net if isinstance(m, torch.nn.Linear)]
  with torch.no_grad():
    for i, m in enumerate(convs):
      m.weight.copy_(
        torch.from_numpy(np.array(params[f"conv{i}"]["kernel"]).transpose(3, 2, 0, 1).copy())
      )
      m.bias.copy_(torch.from_numpy(np.array(params[f"conv{i}"]["bias"])))
    # Ours flattens (h, w, c), PyTorch (c, h, w): reorder the first dense layer's inputs.
    kernel = np.asarray(params["Dense_0"]["kernel"])
    channels = convs[-1].out_channels
    side_len = int(round((kernel.shape[0] / channels) ** 0.5))
    kernel = kernel.reshape(side_len, side_len, channels, -1).transpose(2, 0, 1, 3)
    dense[0].weight.copy_(torch.from_numpy(kernel.reshape(-1, kernel.shape[-1]).T.copy()))
    dense[0].bias.copy_(torch.from_numpy(np.array(params["Dense_0"]["bias"])))
    dense[1].weight.copy_(torch.from_numpy(np.array(params["Dense_1"]["kernel"]).T.copy()))
    dense[1].bias.copy_(torch.from_numpy(np.array(params["Dense_1"]["bias"])))
    images = np.random.RandomState(0).randn(3, 28, 28, 1).astype(np.float32)
    theirs = net(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
  ours = model.apply({"params": params}, images)
  assert theirs.shape == (3, 10)
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["speedrun", "speedrun_small"])
def test_keras_network_computes_ours(name):
  """Ours and the Keras twin, given the same parameters, give the same logits."""
  requires("tensorflow")
  keras = requires("keras")
  from benchmarks import speedrun as side

  model = models.create_model(name)
  params = models.init_variables(model, jax.random.PRNGKey(0))["params"]
  net = side.keras_net(name)
  assert net.count_params() == models.count_params(params)
  # Keras keeps our layouts: HWIO kernels, (in, out) dense kernels, NHWC flattened (h, w, c).
  ours_in_order = [params[f"conv{i}"] for i in range(len(model.features))]
  ours_in_order += [params["Dense_0"], params["Dense_1"]]
  theirs = [layer for layer in net.layers if layer.weights]
  assert all(isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) for layer in theirs)
  for layer, p in zip(theirs, ours_in_order, strict=True):
    layer.set_weights([np.asarray(p["kernel"]), np.asarray(p["bias"])])
  images = np.random.RandomState(0).randn(3, 28, 28, 1).astype(np.float32)
  logits = np.asarray(net(images))
  assert logits.shape == (3, 10)
  np.testing.assert_allclose(model.apply({"params": params}, images), logits, rtol=1e-4, atol=1e-5)


def test_small_network_sees_only_the_centre():
  """``speedrun_small`` crops 2 pixels off every edge: the border does not change its logits."""
  model = models.create_model("speedrun_small")
  variables = models.init_variables(model, jax.random.PRNGKey(0))
  assert models.count_params(variables["params"]) == 72_010
  images = np.random.RandomState(1).randn(2, 28, 28, 1).astype(np.float32)
  border = images.copy()
  border[:, :2] = border[:, -2:] = border[:, :, :2] = border[:, :, -2:] = 5.0
  np.testing.assert_array_equal(model.apply(variables, images), model.apply(variables, border))
  inner = images.copy()
  inner[:, 2, 2] += 1.0  # the crop's corner pixel is seen
  assert not np.array_equal(model.apply(variables, images), model.apply(variables, inner))


def test_torch_learning_rates_are_ours():
  from benchmarks import speedrun as side

  recipe = sr.Recipe()
  rates = side.torch_learning_rates(recipe, 50)
  np.testing.assert_allclose(rates, [float(recipe.schedule(50)(i)) for i in range(50)], rtol=1e-6)


@pytest.fixture(scope="module")
def small(mnist):
  """2,048 training and 1,000 test images of real MNIST, normalised."""
  return sr.speedrun_data(
    data.Datasets(
      train=data.Split(mnist.train.images[:2048], mnist.train.labels[:2048]),
      validation=data.Split(mnist.validation.images[:500], mnist.validation.labels[:500]),
      test=data.Split(mnist.test.images[:1000], mnist.test.labels[:1000]),
      name=mnist.name,
      backend=mnist.backend,
    )
  )


SMALL_RECIPE = sr.Recipe(epochs=2, batch_size=64)  # 64 steps


@pytest.fixture(scope="module")
def speedrun(small):
  return sr.Speedrun(SMALL_RECIPE, small)


def test_short_run_learns_and_is_deterministic(speedrun):
  assert speedrun.steps == 64 and speedrun.compile_seconds > 0
  runs = speedrun.run([0, 0])
  assert [r["seed"] for r in runs] == [0, 0]
  assert all(r["test_accuracy"] > 0.9 and r["validation_accuracy"] > 0.9 for r in runs)
  assert runs[0]["test_accuracy"] == runs[1]["test_accuracy"]
  assert all(r["train_seconds"] > 0 for r in runs)


def test_summary():
  runs = [
    {"seed": s, "train_seconds": t, "compile_seconds": 2.0, "test_accuracy": a}
    for s, t, a in [(0, 1.0, 0.991), (1, 3.0, 0.989), (2, 2.0, 0.993)]
  ]
  summary = sr.summarize(runs)
  assert summary["train_seconds_median"] == 2.0 and summary["with_compile_seconds_median"] == 4.0
  assert summary["test_accuracy_mean"] == pytest.approx(0.991)
  assert summary["test_accuracy_std"] == pytest.approx(0.002)
  half = 4.302653 * 0.002 / np.sqrt(3)  # Student t, 2 degrees of freedom, 95%
  assert summary["test_accuracy_low"] == pytest.approx(0.991 - half)
  assert summary["test_accuracy_high"] == pytest.approx(0.991 + half)
  assert summary["fraction_at_target"] == pytest.approx(2 / 3)
  assert "| digits_jax | 2.00 | 4.00 | 99.10% [" in sr.markdown({"summary": summary})


def test_vmapped_seeds_match_single_seeds(speedrun, small):
  together = sr.Speedrun(SMALL_RECIPE, small, vmap_seeds=2).run([3, 4])
  for seed, b in zip([3, 4], together):
    (a,) = speedrun.run([seed])
    assert a["seed"] == b["seed"] == seed
    assert abs(a["test_accuracy"] - b["test_accuracy"]) <= 0.002


def test_torch_side_learns(small):
  requires("torch")
  from benchmarks import speedrun as side

  result = side.run_side_by_side(SMALL_RECIPE.replace(epochs=1), small, [0])
  assert result["torch_runs"][0]["test_accuracy"] > 0.85
  assert result["runs"][0]["test_accuracy"] > 0.85
  assert result["ratio"] == pytest.approx(
    result["runs"][0]["train_seconds"] / result["torch_runs"][0]["train_seconds"]
  )
  assert "PyTorch" in sr.markdown(result)


@pytest.mark.parametrize(
  "backend, cuda, device, ratio",
  [
    ("cpu", False, "cpu", True),
    ("cpu", True, "cpu", True),
    ("gpu", True, "cuda", True),
    ("gpu", False, "cpu", False),
    ("tpu", False, "cpu", False),
    ("tpu", True, "cpu", False),
  ],
)
def test_torch_runs_where_jax_runs_or_no_ratio(backend, cuda, device, ratio):
  from benchmarks import speedrun as side

  got, why = side.torch_device(backend, cuda)
  assert got == device
  assert (why is None) == ratio
  if why:
    assert backend in why


def test_no_ratio_printed_across_devices(small, monkeypatch):
  """JAX on a GPU, PyTorch without CUDA: both train, the ratio is left out and why is said."""
  pytest.importorskip("torch")
  from benchmarks import speedrun as side

  monkeypatch.setattr(side, "_torch_cuda_available", lambda: False)
  monkeypatch.setattr(side.jax, "default_backend", lambda: "gpu")
  result = side.run_side_by_side(SMALL_RECIPE.replace(epochs=0.2), small, [0])
  assert result["torch_device"] == "cpu" and "ratio" not in result
  table = sr.markdown(result)
  assert "ours / PyTorch" not in table and "no ratio: JAX runs on gpu" in table


def test_keras_side_learns(small):
  requires("tensorflow")
  requires("keras")
  from benchmarks import speedrun as side

  result = side.run_side_by_side(
    SMALL_RECIPE.replace(epochs=1), small, [0], torch=False, keras=True
  )
  assert "torch_runs" not in result
  assert result["keras_runs"][0]["test_accuracy"] > 0.85
  assert result["keras_ratio"] == pytest.approx(
    result["runs"][0]["train_seconds"] / result["keras_runs"][0]["train_seconds"]
  )
  assert "Keras" in sr.markdown(result)


def test_cli_writes_speedrun_json(mnist_dir, tmp_path):
  out = cli.run(
    "experiments.speedrun",
    "--seeds=3",
    "--torch=false",
    "--epochs=0.05",
    f"--manual_dir={mnist_dir}",
    f"--output_dir={tmp_path}",
  )
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads((tmp_path / "speedrun.json").read_text())
  (run,) = result["runs"]
  assert run["seed"] == 3  # --seeds is a list of seeds, as in the sweep
  assert set(run) >= {"seed", "train_seconds", "compile_seconds", "test_accuracy"}
  assert (tmp_path / "speedrun.md").is_file()


def test_cli_refuses_a_bad_recipe(mnist_dir, tmp_path):
  out = cli.run("experiments.speedrun", "--epochs=-1", "--torch=false", f"--output_dir={tmp_path}")
  assert out.returncode != 0 and "epochs must be a positive number" in out.stderr
  assert not (tmp_path / "speedrun.json").exists()


def test_cli_takes_its_output_folder_as_output_dir_only(tmp_path):
  out = cli.run("experiments.speedrun", "--torch=false", f"--workdir={tmp_path}")
  assert out.returncode != 0
  assert "give its output folder as --output_dir" in out.stderr
  assert not any(tmp_path.iterdir())
