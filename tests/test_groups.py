"""Vmapped groups, also split over several devices, give the numbers of plain single runs."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest

import digits_jax
from digits_jax import files, runs, sweep
from digits_jax.config import Config, resolve
from digits_jax.training import groups
from tests import cli
from tests.conftest import REPO, tiny_datasets

COMPARED = ("test_accuracy", "test_loss", "val_accuracy", "val_loss", "best_epoch")


def _tiny(mnist, n_train=1024, n_val=500):
  return tiny_datasets(mnist, n_train, n_val, 2000)


def test_group_key_allows_only_seed_and_learning_rate():
  a = resolve(Config(model="conv2_dense64"))
  assert groups.group_key(a) == groups.group_key(a.replace(seed=3, learning_rate=0.01))
  assert groups.group_key(a) != groups.group_key(a.replace(batch_size=32))


# XLA:CPU runs the scan loop slowly, so it gets fewer steps.
@pytest.mark.parametrize("epoch_loop, n_train", [("host", 1024), ("scan", 256)])
def test_group_equals_separate_runs(mnist, tmp_path, epoch_loop, n_train):
  """Two seeds and two learning rates in one vmapped step = two ordinary runs."""
  tiny = _tiny(mnist, n_train=n_train)
  configs = [
    resolve(
      Config(model="conv2_dense128_dropout", epochs=2, batch_size=64, seed=s, learning_rate=lr)
    )
    for s, lr in ((0, 1e-3), (1, 3e-3))
  ]
  configs = [c.replace(epoch_loop=epoch_loop) for c in configs]
  # No plots: the numbers are what is compared, and the plots cost more than the training.
  group = sweep.run_sweep(configs, tmp_path / "g", load=lambda c: tiny, vmap=True, plots=False)
  for i, config in enumerate(configs):
    alone = runs.train_and_evaluate(config, tmp_path / f"s{i}", datasets=tiny, plots=False)
    assert group[i]["group_size"] == 2
    for key in COMPARED:
      assert group[i][key] == pytest.approx(alone[key], rel=1e-4, abs=1e-6), key
    rows = files.read_jsonl(tmp_path / "g" / group[i]["run"] / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]


def test_group_refuses_configs_that_differ_in_more(mnist, tmp_path):
  configs = [resolve(Config(model="conv2_dense64")), resolve(Config(model="conv2_dense100"))]
  with pytest.raises(ValueError, match="may differ only in"):
    groups.train_group(configs, [tmp_path / "a", tmp_path / "b"], datasets=_tiny(mnist))


SHARDED_RUN = """
import json, sys, jax
from digits_jax import data, runs, sweep
from digits_jax.config import Config, resolve
d = data.load_datasets("mnist", manual_dir=sys.argv[1], backend="idx", validation_size=500)
tiny = data.Datasets(data.Split(d.train.images[:512], d.train.labels[:512]), d.validation,
                     data.Split(d.test.images[:1000], d.test.labels[:1000]), "mnist", "idx")
# No plots: the numbers are what is compared, and the plots cost more than the training.
single = runs.train_and_evaluate(Config(model="conv2_dense64", epochs=1, batch_size=64),
                                  sys.argv[2] + "/single", datasets=tiny, plots=False)
configs = [resolve(Config(model="conv2_dense64", epochs=1, batch_size=64, seed=s))
           for s in range(4)]
group = sweep.run_sweep(configs, sys.argv[2] + "/group", load=lambda c: tiny, vmap=True,
                        plots=False)
print(json.dumps({"devices": jax.device_count(), "single": single, "group": group}))
"""


def _sharded(mnist_dir, tmp_path, devices):
  out = cli.run(
    "",
    argv=[sys.executable, "-c", SHARDED_RUN, str(mnist_dir), str(tmp_path)],
    devices=devices,
    timeout_s=600,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.splitlines()[-1])


def test_several_devices_match_one(mnist_dir, tmp_path):
  """A single run on a 2-device host, and 4 vmapped models split over the 2 devices.

  Their collectives get the threads they need from ``import digits_jax`` (see
  :func:`test_two_cpu_devices_do_not_deadlock_when_python_runs_ahead`).
  """
  one = _sharded(mnist_dir, tmp_path / "one", 1)
  two = _sharded(mnist_dir, tmp_path / "two", 2)
  assert (one["devices"], two["devices"]) == (1, 2)
  for key in COMPARED:
    assert two["single"][key] == pytest.approx(one["single"][key], rel=1e-4, abs=1e-6), key
    for a, b in zip(two["group"], one["group"], strict=True):
      assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


# 200 programs with an all-reduce, dispatched without waiting: Python gets more than the 32
# programs XLA:CPU lets a device have in flight ahead of the devices.
RUN_AHEAD = """
import digits_jax
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, PartitionSpec as P
mesh = Mesh(np.array(jax.devices()), ("d",))
def step(x):
  x = jax.lax.fori_loop(0, 20, lambda i, x: jnp.tanh(x @ x), x)
  return jax.lax.pmean(x, "d")
f = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=P(), out_specs=P()))
x = jnp.full((128, 128), 0.01, jnp.float32)
for _ in range(200):
  x = f(x)
print(jax.device_count(), float(x.sum()))
"""


def test_two_cpu_devices_do_not_deadlock_when_python_runs_ahead():
  """Without ``import digits_jax`` first, this aborts after XLA's 40 s rendezvous timeout.

  XLA:CPU's 2-thread client pool (2 processors, 2 devices) then holds one device's part of
  a program waiting in the all-reduce and a later launch waiting for a device with 32
  programs in flight, and the other device's part has no thread to run on.
  """
  env = {k: v for k, v in cli.env(devices=2).items() if k not in digits_jax.POOL_SIZE_VARS}
  out = subprocess.run(
    [sys.executable, "-c", RUN_AHEAD],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.split()[0] == "2"


def test_cpu_devices_get_two_client_threads_each(caplog):
  flags = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=2"}
  env = dict(flags)
  assert digits_jax.reserve_cpu_collective_threads(env, processors=2) == 4
  assert env["PJRT_NPROC"] == "4"
  env = {"JAX_NUM_CPU_DEVICES": "3", **flags}  # JAX's own setting wins over XLA_FLAGS
  assert digits_jax.reserve_cpu_collective_threads(env, processors=2) == 6
  for unchanged in ({}, {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}):
    assert digits_jax.reserve_cpu_collective_threads(unchanged, processors=1) is None
    assert "PJRT_NPROC" not in unchanged
  assert digits_jax.reserve_cpu_collective_threads(dict(flags), processors=4) is None
  env = {"NPROC": "2", **flags}  # the user's setting is kept, with a warning
  assert digits_jax.reserve_cpu_collective_threads(env, processors=2) is None
  assert "PJRT_NPROC" not in env
  assert "NPROC=2 gives XLA:CPU's 2 CPU devices fewer than 4 client threads" in caplog.text


class _Stop(Exception):
  pass


def test_interrupted_group_resumes_with_the_numbers_of_an_uninterrupted_one(
  mnist, tmp_path, monkeypatch
):
  """Stopped after epoch 1 and started again, a vmapped group continues from epoch 2."""
  tiny = _tiny(mnist, n_train=512, n_val=256)
  configs = [
    resolve(Config(model="conv2_dense64", epochs=2, batch_size=64, seed=s, epoch_loop="host"))
    for s in (0, 1)
  ]
  run = functools.partial(sweep.run_sweep, load=lambda c: tiny, vmap=True, plots=False)
  whole = run(configs, tmp_path / "whole")

  check_finite = groups.history.check_finite

  def stop_at_epoch_2(loss, epoch):
    if epoch == 2:
      raise _Stop
    check_finite(loss, epoch)

  monkeypatch.setattr(groups.history, "check_finite", stop_at_epoch_2)
  with pytest.raises(_Stop):
    run(configs, tmp_path / "cut")
  monkeypatch.setattr(groups.history, "check_finite", check_finite)
  name = whole[0]["run"]
  (first,) = files.read_jsonl(tmp_path / "cut" / name / "metrics.jsonl")
  resumed = run(configs, tmp_path / "cut")
  rows = files.read_jsonl(tmp_path / "cut" / name / "metrics.jsonl")
  assert rows[0] == first  # epoch 1 kept, not trained again (its timing is unchanged)
  assert [r["epoch"] for r in rows] == [1, 2]
  for a, b in zip(whole, resumed):
    assert b["group_size"] == 2
    for key in COMPARED:
      assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
