"""Tests for transfer learning (--init_from, --reinit_head, --freeze): which weights are
copied, which stay frozen, what is refused before training, what is recorded, and resume."""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digits_jax import files, runs
from digits_jax.analysis import compare_report, comparison
from digits_jax.config import Config, resolve
from digits_jax.rundir import read_run
from digits_jax.sweep import grid
from digits_jax.training import loop, transfer
from digits_jax.training.step import create_train_state, train_step
from tests import cli
from tests.conftest import tiny_datasets

FEATURES = ("conv0", "conv1")
TINY = dict(model="conv2_dense64", epochs=1, batch_size=32, train_subset=256, eval_batch_size=256)


@pytest.fixture(scope="module")
def small(mnist):
  return tiny_datasets(mnist, n_train=256, n_val=256, n_test=256)


@pytest.fixture(scope="module")
def source(small, tmp_path_factory):
  """A finished one-epoch conv2_dense64 run: the source of the transfer runs."""
  workdir = tmp_path_factory.mktemp("source") / "run"
  runs.train_and_evaluate(Config(**TINY), workdir, datasets=small, plots=False)
  return workdir


def _variables(workdir):
  run = runs.load_predictor(workdir)
  return jax.device_get({"params": run.state.params, "batch_stats": run.state.batch_stats})


def _equal(a, b) -> bool:
  return all(
    jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x, y: np.array_equal(x, y), a, b))
  )


@pytest.mark.parametrize("reinit_head", [True, False])
def test_init_from_copies_the_matching_layers(source, reinit_head):
  config = resolve(Config(**TINY, init_from=str(source), reinit_head=reinit_head))
  weights = _variables(source)["params"]
  fresh = create_train_state(config, jax.random.PRNGKey(0), 1)
  state = transfer.apply(fresh, transfer.load(config), config)
  for layer in (*FEATURES, "Dense_0"):
    assert _equal(state.params[layer], weights[layer]), layer
  assert _equal(state.params["Dense_1"], weights["Dense_1"]) is not reinit_head
  if reinit_head:
    assert _equal(state.params["Dense_1"], fresh.params["Dense_1"])


def test_freeze_features_trains_only_the_dense_layers_and_records_the_source(
  source, small, tmp_path
):
  # SGD with weight decay: neither the gradient nor the decay may move a frozen weight.
  config = Config(
    **TINY, init_from=str(source), freeze="features", optimizer="sgd", weight_decay=0.01
  )
  workdir = tmp_path / "frozen"
  runs.train_and_evaluate(config, workdir, datasets=small, plots=False)
  before, after = _variables(source)["params"], _variables(workdir)["params"]
  for layer in FEATURES:
    assert _equal(after[layer], before[layer]), layer
  for layer in ("Dense_0", "Dense_1"):
    assert not _equal(after[layer], before[layer]), layer
  record = files.read_json(workdir / "config.json")[transfer.SOURCE_RUN]
  assert record["path"] == str(source)
  assert record["config"] == resolve(Config(**TINY)).identity()
  assert record["sha256"] == transfer.digest(_variables(source))
  assert runs.read_config(workdir)[0].freeze == "features"  # config.json still reads
  report = compare_report.to_markdown(comparison.compare([read_run(source), read_run(workdir)]))
  assert "## Source runs" in report
  assert f"| {workdir} | {source} | conv2_dense64/mnist#" in report
  assert f"| {record['sha256'][:16]}... |" in report


def test_freeze_features_keeps_batch_norm_statistics():
  """One step of a batch-norm network: the convolutions' batch norms keep their
  parameters and statistics bit for bit; the dense layers' batch norm moves."""
  config = resolve(Config(model="bn_conv3_wide", optimizer="adamw", weight_decay=0.1))
  frozen = config.replace(init_from="x", freeze="features")
  state = create_train_state(frozen, jax.random.PRNGKey(0), 1)
  images = jax.random.uniform(jax.random.PRNGKey(1), (16, 28, 28, 1))
  labels = jnp.arange(16) % 10
  new, _ = jax.jit(lambda s: train_step(s, images, labels, jax.random.PRNGKey(2), config=frozen))(
    state
  )
  for c in ("params", "batch_stats"):
    old, now = getattr(state, c), getattr(new, c)
    for layer in ("BatchNorm_0", "BatchNorm_1", "BatchNorm_2"):
      assert _equal(now[layer], old[layer]), (c, layer)
    assert not _equal(now["BatchNorm_3"], old["BatchNorm_3"]), c
  for layer in ("conv0", "conv1", "conv2"):
    assert _equal(new.params[layer], state.params[layer]), layer
  assert not _equal(new.params["Dense_0"], state.params["Dense_0"])


def test_another_network_is_refused_naming_the_layers(source, tmp_path):
  other = tmp_path / "conv3"
  shutil.copytree(source, other)
  saved = files.read_json(other / "config.json")
  saved["config"]["model"] = "conv3_dense100"
  files.write_json(other / "config.json", saved)
  config = resolve(Config(**TINY, init_from=str(other)))
  with pytest.raises(transfer.TransferError) as e:
    runs.check_workdir(config, tmp_path / "run")
  msg = str(e.value)
  assert "its network (conv3_dense100) does not match this run's (conv2_dense64)" in msg
  assert "conv2 (only in the source run)" in msg
  assert "Dense_0 (bias (100,) in the source run, (64,) here, kernel (1024, 100)" in msg
  assert "--model=conv3_dense100" in msg and "--init_from=none" in msg
  assert not (tmp_path / "run").exists()


def test_missing_run_and_run_without_checkpoint_are_refused(source, tmp_path):
  with pytest.raises(transfer.TransferError, match="no such run folder"):
    runs.check_workdir(resolve(Config(**TINY, init_from=str(tmp_path / "nope"))), tmp_path / "a")
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(transfer.TransferError, match="is not a run's folder"):
    runs.check_workdir(resolve(Config(**TINY, init_from=str(empty))), tmp_path / "a")
  shutil.copy(source / "config.json", empty / "config.json")
  with pytest.raises(transfer.TransferError, match=r"has no checkpoint \(checkpoints/best\)"):
    runs.check_workdir(resolve(Config(**TINY, init_from=str(empty))), tmp_path / "a")


def test_cli_refuses_a_missing_source_run(tmp_path):
  missing = tmp_path / "missing"
  out = cli.run(
    "experiments.train",
    *cli.TINY,
    f"--init_from={missing}",
    f"--workdir={tmp_path / 'run'}",
    f"--manual_dir={tmp_path / 'no-data'}",
  )
  assert out.returncode != 0
  assert f"--init_from={missing}: no such run folder" in out.stderr
  assert not (tmp_path / "run").exists()


class _Stop(Exception):
  pass


def _stop_after_first(row):
  if row["epoch"] == 1:
    raise _Stop


def test_resumed_transfer_run_ends_as_an_uninterrupted_one(source, small, tmp_path):
  copy = tmp_path / "source"
  shutil.copytree(source, copy)
  config = resolve(Config(**{**TINY, "epochs": 2}, init_from=str(copy)))
  whole = runs.train_and_evaluate(config, tmp_path / "whole", datasets=small, plots=False)
  workdir = tmp_path / "resumed"
  runs.prepare(config, workdir, small)
  with pytest.raises(_Stop):
    loop.train(config, workdir, small, on_epoch=_stop_after_first)
  shutil.rmtree(copy / "checkpoints")  # the resumed run must not need its source again
  resumed = runs.train_and_evaluate(config, workdir, datasets=small, plots=False)
  drop = ("train_seconds", "seconds_per_epoch")
  assert {k: v for k, v in resumed.items() if k not in drop} == {
    k: v for k, v in whole.items() if k not in drop
  }
  assert _equal(_variables(workdir), _variables(tmp_path / "whole"))
  assert (
    files.read_json(workdir / "config.json")[transfer.SOURCE_RUN]
    == files.read_json(tmp_path / "whole" / "config.json")[transfer.SOURCE_RUN]
  )


def test_config_json_is_written_once_and_a_changed_source_stops_training(source, small, tmp_path):
  copy = tmp_path / "source"
  shutil.copytree(source, copy)
  config = resolve(Config(**TINY, init_from=str(copy)))
  workdir = tmp_path / "run"
  runs.prepare(config, workdir, small)
  # The source is recorded with the rest of config.json, before any training.
  written = (workdir / "config.json").read_bytes()
  record = files.read_json(workdir / "config.json")[transfer.SOURCE_RUN]
  assert record["sha256"] == transfer.digest(_variables(copy))
  # The source run's best weights change before the first epoch of this one: refused.
  runs.train_and_evaluate(
    resolve(Config(**TINY, seed=1)), copy, datasets=small, plots=False, overwrite=True
  )
  with pytest.raises(transfer.TransferError, match="changed since.*--overwrite"):
    loop.train(config, workdir, small)
  assert (workdir / "config.json").read_bytes() == written


def test_sweep_names_the_source_run_of_each_seed():
  base = Config(model="conv2_dense64", dataset="fashion_mnist")
  configs = grid.expand(
    base,
    {
      "init_from": ["none", "runs/src/conv2_dense64-adam-seed{seed}"],
      "freeze": ["none", "features"],
      "seed": [0, 1],
    },
  )
  assert len(configs) == 6  # from scratch once per seed, not once per --freeze
  sources = {(c.seed, c.init_from) for c in configs if c.init_from}
  assert sources == {(s, f"runs/src/conv2_dense64-adam-seed{s}") for s in (0, 1)}
  assert all(c.freeze == "none" and not c.reinit_head for c in configs if not c.init_from)
  names = {grid.run_name(c) for c in configs}
  assert (
    "conv2_dense64-adam-datasetfashion_mnist-fromconv2_dense64-adam-seed1-freezefeatures-seed1"
    in names
  )
