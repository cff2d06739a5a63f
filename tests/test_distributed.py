"""Runs split over several devices and several processes, on the CPU.

Several CPU devices come from ``--xla_force_host_platform_device_count`` in a subprocess
(this process has one); several processes join a ``jax.distributed`` runtime on
127.0.0.1 and use gloo's CPU collectives. A split run must give the numbers of one
device up to float rounding, several processes those of one process with as many
devices; a bad setup must fail within seconds with a message.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digits_jax.config import ConfigError
from digits_jax.models import layers
from digits_jax.training import distributed, sharding
from tests import cli
from tests.conftest import REPO

# A small run with dropout-free Adam, augmentation, two epochs of 16 steps.
RUN = (
  "--model=conv2_dense64",
  "--epochs=2",
  "--batch_size=32",
  "--train_subset=512",
  "--validation_size=256",
  "--plots=false",
  "--augment",
  "--data_backend=idx",
)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_dropout_outside_a_split_batch_is_flax_dropout():
  x = jnp.ones((8, 16))
  rngs = {"dropout": jax.random.PRNGKey(3)}
  ours = layers.Dropout(0.5).apply({}, x, deterministic=False, rngs=rngs)
  theirs = nn.Dropout(0.5).apply({}, x, deterministic=False, rngs=rngs)
  np.testing.assert_array_equal(ours, theirs)


def test_batch_size_that_does_not_split_is_refused_with_the_fix():
  with pytest.raises(ConfigError, match=r"--batch_size=30 does not split over 4 devices.*28 or 32"):
    sharding.check_batch_size(30, 4)
  sharding.check_batch_size(32, 4)


@pytest.mark.parametrize(
  ("args", "message"),
  [
    (("127.0.0.1:1234", 2, 2), r"--process_id=2 is out of range for --num_processes=2"),
    (("127.0.0.1:1234", 2, -1), r"--process_id=-1: process ids start at 0"),
    (("localhost", 2, 0), r"is not HOST:PORT"),
    (("127.0.0.1:1234", 0, 0), r"--num_processes=0"),
  ],
)
def test_inconsistent_distributed_arguments_are_refused(args, message):
  with pytest.raises(ConfigError, match=message):
    distributed.initialize(*args)
  assert not jax.distributed.is_initialized()


def test_distributed_arguments_without_a_cluster_need_all_three(monkeypatch):
  monkeypatch.setattr(distributed, "detected_cluster", lambda: None)
  with pytest.raises(ConfigError, match=r"needs --coordinator_address, --process_id as well"):
    distributed.initialize(num_processes=2)
  with pytest.raises(ConfigError, match=r"--num_processes given with --distributed=off"):
    distributed.initialize(num_processes=2, mode="off")
  assert distributed.initialize() is False  # nothing asked for: one process, as before
  assert distributed.is_writer()


# Run with 2 CPU devices: one epoch split over both against the same epoch on one.
SPLIT_CHECK = textwrap.dedent(
  """
  import json, sys
  import jax, jax.numpy as jnp, numpy as np
  from digits_jax import data
  from digits_jax.config import Config, ConfigError, resolve
  from digits_jax.training import sharding, step

  assert jax.device_count() == 2
  mnist = data.load_datasets("mnist", manual_dir=sys.argv[1], backend="idx")
  x, y = mnist.train.images[:128], mnist.train.labels[:128]
  mesh = sharding.data_mesh()
  out = {}
  # BatchNorm, dropout, augmentation, AdamW; a scan epoch. And SGD in a host loop.
  for model, loop in (("bn_conv3_wide", "scan"), ("conv3_dense100", "host")):
    config = resolve(Config(model=model, batch_size=32, augment=True, epoch_loop=loop))
    rng = jax.random.PRNGKey(0)
    init = step.create_train_state(config, rng, 4)
    split_args = sharding.replicate((init, rng, x, y), mesh)  # the epochs donate the state
    one, m1 = step.make_epoch_fn(config)(init, rng, jnp.asarray(x), jnp.asarray(y))
    two, m2 = step.make_epoch_fn(config, mesh=mesh)(*split_args)
    two, m2 = sharding.to_local((two, m2))
    assert len(two.params["Dense_0"]["kernel"].sharding.device_set) == 1
    diff = {}
    for (path, a), b in zip(
      jax.tree_util.tree_leaves_with_path({"params": one.params, "stats": one.batch_stats}),
      jax.tree_util.tree_leaves({"params": two.params, "stats": two.batch_stats}),
    ):
      diff[jax.tree_util.keystr(path)] = float(jnp.max(jnp.abs(a - b)))
    images = mnist.validation.images[:300]
    split_logits = step.predict(sharding.replicate(one, mesh), images, 128)
    out[model] = {
      "loss_one": np.asarray(m1["loss"]).tolist(),
      "loss_two": np.asarray(m2["loss"]).tolist(),
      "accuracy_one": np.asarray(m1["accuracy"]).tolist(),
      "accuracy_two": np.asarray(m2["accuracy"]).tolist(),
      "param_diff": diff,
      "predict_diff": float(jnp.max(jnp.abs(step.predict(one, images, 128) - split_logits))),
      "predict_shape": list(split_logits.shape),
    }
  try:
    step.make_epoch_fn(resolve(Config(model="conv2_dense64", batch_size=33)), mesh=mesh)
  except ConfigError as e:
    out["error"] = str(e)
  print(json.dumps(out))
  """
)


BIASES_BEFORE_BATCH_NORM = {
  f"['params']['{layer}']['bias']" for layer in ("conv0", "conv1", "conv2", "Dense_0")
}


def test_a_batch_split_over_two_devices_gives_the_numbers_of_one(mnist_dir):
  proc = cli.run("", argv=[sys.executable, "-c", SPLIT_CHECK, str(mnist_dir)], devices=2)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  for model in ("bn_conv3_wide", "conv3_dense100"):
    got = out[model]
    # Same batches, same dropout masks and augmentations: the same losses.
    np.testing.assert_allclose(got["loss_two"], got["loss_one"], rtol=1e-5)
    assert got["accuracy_two"] == got["accuracy_one"]
    assert got["predict_shape"] == [300, 10]
    assert got["predict_diff"] < 1e-5
    for name, diff in got["param_diff"].items():
      # The biases of layers followed by BatchNorm have no gradient but rounding noise
      # (BatchNorm takes the mean away), which Adam scales up to whole steps; they do
      # not change what the network computes in training. The running means follow them.
      if model == "bn_conv3_wide" and (
        name in BIASES_BEFORE_BATCH_NORM or name.endswith("['mean']")
      ):
        continue
      assert diff < (1e-4 if model == "bn_conv3_wide" else 1e-6), (model, name, diff)
  assert "--batch_size=33 does not split over 2 devices" in out["error"]


def _start_processes(workdir, port: int, *flags: str) -> list[subprocess.Popen]:
  return [
    subprocess.Popen(
      cli.command(
        "experiments.train",
        *RUN,
        *flags,
        f"--workdir={workdir}",
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
        "--distributed_timeout=120",
      ),
      cwd=REPO,
      env=cli.env(devices=1),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
  out = []
  try:
    for p in procs:
      stdout, stderr = p.communicate(timeout=cli.TIMEOUT_S)
      out.append((p.returncode, stdout, stderr))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  return out


def test_two_processes_killed_and_resumed_end_with_the_numbers_of_one_process(mnist_dir, tmp_path):
  """Two processes with one device each, killed after a checkpoint and started again."""
  workdir = tmp_path / "two"
  data = f"--manual_dir={mnist_dir}"
  procs = _start_processes(workdir, _free_port(), data)
  deadline = time.monotonic() + cli.TIMEOUT_S
  try:
    while not (workdir / "checkpoints" / "latest" / "1").is_dir():
      assert all(p.poll() is None for p in procs), _finish(procs)
      assert time.monotonic() < deadline, "no checkpoint of epoch 1 in time"
      time.sleep(0.05)
  finally:
    for p in procs:
      if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    _finish(procs)
  assert not (workdir / "results.json").exists()

  for code, stdout, stderr in _finish(_start_processes(workdir, _free_port(), data)):
    assert code == 0, stderr[-3000:]
    assert "test accuracy" in stdout

  reference = tmp_path / "one"
  proc = cli.run("experiments.train", *RUN, data, f"--workdir={reference}", devices=2)
  assert proc.returncode == 0, proc.stderr[-3000:]

  results, rows = cli.read_results(workdir)
  want_results, want_rows = cli.read_results(reference)
  assert [r["epoch"] for r in rows] == [1, 2]
  for got, want in zip([results, *rows], [want_results, *want_rows]):
    assert got.keys() == want.keys()
    for key, value in want.items():
      if isinstance(value, float):
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
      else:
        assert got[key] == value, key
  assert list(workdir.rglob("results.json")) == [workdir / "results.json"]
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["config"] == json.loads((reference / "config.json").read_text())["config"]


def test_process_id_out_of_range_fails_at_once(tmp_path):
  start = time.monotonic()
  proc = cli.run(
    "experiments.train",
    "--model=conv2_dense64",
    f"--workdir={tmp_path / 'run'}",
    "--coordinator_address=127.0.0.1:1234",
    "--num_processes=2",
    "--process_id=2",
  )
  assert proc.returncode != 0
  assert "--process_id=2 is out of range for --num_processes=2" in cli.error_line(proc)
  assert time.monotonic() - start < 60
  assert not (tmp_path / "run").exists()


def test_unreachable_coordinator_fails_within_seconds(tmp_path):
  port = _free_port()  # nothing listens there
  start = time.monotonic()
  proc = cli.run(
    "experiments.train",
    "--model=conv2_dense64",
    f"--workdir={tmp_path / 'run'}",
    f"--coordinator_address=127.0.0.1:{port}",
    "--num_processes=2",
    "--process_id=1",
    "--distributed_timeout=2",
  )
  assert proc.returncode != 0
  line = cli.error_line(proc)
  assert f"nothing answers at --coordinator_address=127.0.0.1:{port} after 2 s" in line
  assert "raise --distributed_timeout" in line
  assert time.monotonic() - start < 60
  assert not (tmp_path / "run").exists()


def test_process_zero_alone_stops_when_the_others_never_join(tmp_path):
  """JAX's runtime ends process 0 itself (it aborts): the test is that it does not hang."""
  start = time.monotonic()
  proc = cli.run(
    "experiments.train",
    "--model=conv2_dense64",
    f"--workdir={tmp_path / 'run'}",
    f"--coordinator_address=127.0.0.1:{_free_port()}",
    "--num_processes=2",
    "--process_id=0",
    "--distributed_timeout=2",
  )
  assert proc.returncode != 0
  assert "joining the run's processes" in proc.stderr
  assert time.monotonic() - start < 90
  assert not (tmp_path / "run").exists()
