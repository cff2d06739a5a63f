"""Bad input, end to end: one ``error:`` line naming the problem, exit status 1, nothing lost.

Each test runs ``python -m experiments.train`` (or ``experiments.sweep``) in a subprocess,
as a user would, and checks the message, the exit status and that no traceback is printed.
Where a work directory already holds results, the test checks that they are unchanged,
with ``--overwrite`` too: the checks come before anything is deleted. The data checks
themselves are unit-tested in test_data.py; here they are seen from the command line.
Every file is written under pytest's temporary directories.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
import shutil
import struct
import sys
import time

import jax
import numpy as np
import pytest

from digits_jax import sweep
from digits_jax.config import Config, ConfigError, resolve
from digits_jax.training import checkpoints, step
from experiments import common
from tests import cli
from tests.conftest import MNIST_FILES

TRAIN = "experiments.train"
UNREACHABLE = "http://192.0.2.1/mnist/"  # TEST-NET-1 (RFC 5737): never routed


def _copy(run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(run, workdir)
  return workdir


# ------------------------------------------------------------------------------------------
# Data

# Runs experiments.train (argv[3:]) after registering the files in the folder argv[1] as
# mnist's official ones (their sizes and SHA-256) and argv[2] as its download URL, so that
# the checks behind the checksum see a corrupt file; registered digests stay for missing files.
TRUSTING_TRAIN = """
import hashlib, pathlib, sys
from absl import app
from digits_jax import data
folder, url = pathlib.Path(sys.argv[1]), sys.argv[2]
files = {}
for role, f in data._SOURCES["mnist"].files.items():
  if (folder / f.name).is_file():
    blob = (folder / f.name).read_bytes()
    f = data._File(f.name, len(blob), hashlib.sha256(blob).hexdigest())
  files[role] = f
data._SOURCES["mnist"] = data._Source(base_url=url, files=files)
from experiments import train
sys.argv = ["experiments.train", *sys.argv[3:]]
app.run(train.main)
"""


def _idx(arr: np.ndarray, magic: int | None = None, count: int | None = None) -> bytes:
  magic = magic or (2051 if arr.ndim == 3 else 2049)
  dims = (count or arr.shape[0], *arr.shape[1:])
  return struct.pack(f">I{arr.ndim}I", magic, *dims) + arr.astype(np.uint8).tobytes()


def _fake_mnist(folder, **raw: bytes):
  """Four small gzipped IDX files (300 train, 50 test); ``raw`` replaces whole files."""
  rng = np.random.default_rng(0)
  arrays = [
    rng.integers(0, 256, (300, 28, 28)),
    rng.integers(0, 10, 300),
    rng.integers(0, 256, (50, 28, 28)),
    rng.integers(0, 10, 50),
  ]
  folder.mkdir()
  for name, arr in zip(MNIST_FILES, arrays, strict=True):
    (folder / name).write_bytes(raw.get(name, gzip.compress(_idx(arr), mtime=0)))
  return folder


def _gz(raw: bytes) -> bytes:
  return gzip.compress(raw, mtime=0)


def _bad_crc(blob: bytes) -> bytes:
  return blob[:-8] + bytes(b ^ 0xFF for b in blob[-8:-4]) + blob[-4:]


_RNG = np.random.default_rng(1)
_IMAGES, _LABELS = _RNG.integers(0, 256, (50, 28, 28)), _RNG.integers(0, 10, 300)
# name of the case: (file, its contents, what the message says about it)
CORRUPT_FILES = {
  "truncated_gz": (
    "t10k-images-idx3-ubyte.gz",
    _gz(_idx(_IMAGES))[:5000],
    "is a truncated gzip file",
  ),
  "corrupt_gz": (
    "train-labels-idx1-ubyte.gz",
    _bad_crc(_gz(_idx(_LABELS))),
    "is not a valid gzip file (CRC check failed",
  ),
  "wrong_magic": (
    "t10k-images-idx3-ubyte.gz",
    _gz(_idx(_IMAGES, magic=2050)),
    "has IDX magic number 2050 (0x00000802), expected 2051 (images) or 2049",
  ),
  "wrong_sizes": (
    "t10k-images-idx3-ubyte.gz",
    _gz(_idx(_IMAGES, count=51)),
    "is truncated: its header (51, 28, 28) needs 39984 data bytes, found 39200",
  ),
  "labels_out_of_range": (
    "train-labels-idx1-ubyte.gz",
    _gz(_idx(np.r_[_LABELS[:-1], 10])),
    "labels range over [0, 10], expected [0, 10); the labels file",
  ),
}


@pytest.mark.parametrize("case", list(CORRUPT_FILES))
def test_corrupt_data_file(case, tmp_path):
  name, blob, message = CORRUPT_FILES[case]
  folder = _fake_mnist(tmp_path / "data", **{name: blob})
  out = cli.run(
    TRAIN,
    argv=[
      sys.executable,
      "-c",
      TRUSTING_TRAIN,
      str(folder),
      UNREACHABLE,
      "--validation_size=10",
      f"--manual_dir={folder}",
      "--data_backend=idx",
      f"--workdir={tmp_path / 'run'}",
    ],
  )
  assert out.returncode == 1
  line = cli.error_line(out)
  assert message in line and str(folder / name) in line, line
  assert not (tmp_path / "run").exists()


def test_missing_data_file(mnist_dir, tmp_path):
  folder = tmp_path / "data"
  shutil.copytree(mnist_dir, folder)
  (folder / "t10k-labels-idx1-ubyte.gz").unlink()
  out = cli.run(
    TRAIN, f"--manual_dir={folder}", "--data_backend=idx", f"--workdir={tmp_path / 'run'}"
  )
  assert out.returncode == 1
  line = cli.error_line(out)
  assert f"data folder {folder} lacks t10k-labels-idx1-ubyte.gz" in line, line
  assert "needs the four files train-images-idx3-ubyte.gz" in line
  assert not (tmp_path / "run").exists()


def test_checksum_mismatch(mnist_dir, tmp_path):
  folder = tmp_path / "data"
  shutil.copytree(mnist_dir, folder)
  target = folder / "train-labels-idx1-ubyte.gz"
  target.chmod(0o644)
  blob = bytearray(target.read_bytes())
  blob[100] ^= 0x01
  target.write_bytes(bytes(blob))
  out = cli.run(
    TRAIN, f"--manual_dir={folder}", "--data_backend=idx", f"--workdir={tmp_path / 'run'}"
  )
  assert out.returncode == 1
  line = cli.error_line(out)
  assert f"checksum mismatch for {target}: expected sha256 3552534a0a558bbe" in line, line
  assert hashlib.sha256(bytes(blob)).hexdigest() in line and "download it again" in line


def test_no_data_and_no_network_fails_fast_with_instructions(tmp_path):
  home = tmp_path / "home"
  home.mkdir()
  start = time.monotonic()
  out = cli.run(
    TRAIN,
    home=home,
    argv=[
      sys.executable,
      "-c",
      TRUSTING_TRAIN,
      str(tmp_path / "nowhere"),
      UNREACHABLE,
      "--data_backend=idx",
      f"--workdir={tmp_path / 'run'}",
    ],
  )
  assert time.monotonic() - start < 60  # a hang check: the probe gives up after seconds
  assert out.returncode == 1
  line = cli.error_line(out)
  assert "192.0.2.1 is unreachable (no network?)" in line, line
  assert "--manual_dir=FOLDER" in line and "DIGITS_MANUAL_DIR=FOLDER" in line
  assert str(home / ".digits_jax" / "mnist") in line


# ------------------------------------------------------------------------------------------
# Flags: each refused before anything in the work directory changes, even with --overwrite.

BAD_FLAGS = {
  "unknown_model": (
    ["--model=lenet"],
    "unknown model 'lenet'; registered models are: conv3_dense128_64, "
    "conv3_dense100, conv2_dense64",
  ),
  "unknown_optimizer": (
    ["--optimizer=rmsprop"],
    "unknown optimizer 'rmsprop'; valid values are: adam, adamw, sgd",
  ),
  "unknown_dataset": (
    ["--dataset=cifar10"],
    "unknown dataset 'cifar10'; valid values are: mnist, fashion_mnist, kmnist",
  ),
  "zero_learning_rate": (["--learning_rate=0"], "learning_rate must be a positive number, got 0.0"),
  "negative_learning_rate": (
    ["--learning_rate=-0.1"],
    "learning_rate must be a positive number, got -0.1",
  ),
  "zoom_out_of_range": (["--augment", "--zoom=1.5"], "zoom must be in [0, 1), got 1.5"),
  "zero_batch_size": (["--batch_size=0"], "batch_size must be a positive number, got 0"),
  "negative_batch_size": (["--batch_size=-32"], "batch_size must be a positive number, got -32"),
  "batch_larger_than_training_set": (
    ["--train_subset=100", "--batch_size=128"],
    "batch_size 128 is larger than the 100 training images (after the validation split "
    "and any train_subset); lower --batch_size",
  ),
  "train_subset_larger_than_training_set": (
    ["--validation_size=59000", "--train_subset=2000"],
    "train_subset 2000 is larger than the 1000 training images left after the validation split",
  ),
  "validation_split_larger_than_data": (
    ["--validation_size=60000"],
    "validation_size 60000 leaves no training examples: mnist has 60000 training "
    "examples; use a validation_size below 60000",
  ),
}


@pytest.mark.parametrize("case", list(BAD_FLAGS))
def test_bad_flag(case, cli_run, mnist_dir, tmp_path):
  flags, message = BAD_FLAGS[case]
  workdir = _copy(cli_run, tmp_path)
  before = cli.snapshot(workdir)
  out = cli.run(
    TRAIN, *cli.TINY, *flags, "--overwrite", f"--manual_dir={mnist_dir}", f"--workdir={workdir}"
  )
  assert out.returncode == 1
  assert message in cli.error_line(out)
  assert cli.snapshot(workdir) == before


def test_workdir_of_another_config_then_overwrite_then_divergence(cli_run, mnist_dir, tmp_path):
  """Refused without --overwrite; with it, the old files go; a NaN loss then stops the run."""
  workdir = _copy(cli_run, tmp_path)
  (workdir / "plots").mkdir(exist_ok=True)  # a report's figures, as a run with plots has
  (workdir / "plots" / "confusion_matrix.png").write_bytes(b"figure")
  before = cli.snapshot(workdir)
  # sgd at a learning rate of 70 on this BatchNorm network: NaN after an epoch or two.
  diverging = (
    *cli.TINY,
    "--model=bn_conv3_wide",
    "--optimizer=sgd",
    "--learning_rate=70",
    "--batch_size=64",
    "--train_subset=512",
    f"--manual_dir={mnist_dir}",
    f"--workdir={workdir}",
  )

  out = cli.run(TRAIN, *diverging)
  assert out.returncode == 1
  line = cli.error_line(out)
  assert f"error: {workdir} holds the results of a different config (" in line, line
  assert "learning_rate: 0.001 there, 70.0 here" in line
  assert "model: 'conv2_dense64' there, 'bn_conv3_wide' here" in line
  assert f"pass --overwrite to delete the results in {workdir}" in line
  assert cli.snapshot(workdir) == before

  out = cli.run(TRAIN, *diverging, "--overwrite")
  assert out.returncode == 1
  line = cli.error_line(out)
  assert "error: training diverged: the loss became nan at epoch " in line, line
  epoch = int(line.split("at epoch ")[1].split(",")[0])
  step = int(line.split(", step ")[1].split(" of 8")[0])
  assert 1 <= step <= 8
  assert "Lower --learning_rate" in line and "--overwrite" in line
  assert not (workdir / "results.json").exists()
  for old in ("plots", "classification_report.txt", "test_outputs.npz"):
    assert not (workdir / old).exists(), old  # the old run's report went with --overwrite
  assert json.loads((workdir / "config.json").read_text())["config"]["model"] == "bn_conv3_wide"
  # Everything of the last good epoch is kept, nothing of the one that diverged.
  rows = [json.loads(r) for r in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in rows] == list(range(1, epoch))
  if epoch == 1:
    assert "no epoch finished, so nothing was saved" in line
  else:
    assert f"metrics.jsonl of epoch {epoch - 1}, the last good one, are kept" in line
    assert sorted(p.name for p in (workdir / "checkpoints/latest").iterdir()) == [str(epoch - 1)]
    assert (workdir / "checkpoints/best").is_dir()


def test_sweep_refuses_a_run_directory_of_another_config(mnist_dir, tmp_path):
  tiny = resolve(
    Config(model="conv2_dense64", epochs=4, batch_size=32, train_subset=1024, validation_size=256)
  )
  run_dir = tmp_path / sweep.run_name(tiny)  # where the sweep below puts that run
  run_dir.mkdir()
  other = resolve(Config(model="conv2_dense64", learning_rate=0.5)).to_dict()
  (run_dir / "config.json").write_text(json.dumps({"config": other}))
  flags = [f for f in cli.TINY if not f.startswith("--model=")]
  out = cli.run(
    "experiments.sweep",
    *flags,
    "--models=conv2_dense100,conv2_dense64",
    f"--manual_dir={mnist_dir}",
    f"--workdir={tmp_path}",
  )
  assert out.returncode == 1
  line = cli.error_line(out)
  assert f"{run_dir} holds the results of a different config (" in line, line
  assert sorted(p.name for p in tmp_path.iterdir()) == [run_dir.name]  # nothing ran


# ------------------------------------------------------------------------------------------
# Checkpoints


class _Marker:
  """Unpickling this creates a file: proof that something was unpickled."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (str(self.path), "w"))


def _resumable(cli_run, tmp_path):
  """A copy of the finished run without results.json: started again, it restores latest/4."""
  workdir = _copy(cli_run, tmp_path)
  (workdir / "results.json").unlink()
  return workdir


def test_corrupt_checkpoint_is_refused_and_nothing_is_unpickled(cli_run, mnist_dir, tmp_path):
  workdir = _resumable(cli_run, tmp_path)
  marker = tmp_path / "unpickled"
  payload = pickle.dumps(_Marker(marker))
  for path in (workdir / "checkpoints/latest/4").rglob("*"):
    if path.is_file():
      path.write_bytes(payload)
  before = cli.snapshot(workdir)
  out = cli.run(TRAIN, *cli.TINY, f"--manual_dir={mnist_dir}", f"--workdir={workdir}")
  assert out.returncode == 1
  line = cli.error_line(out)
  assert f"error: checkpoint {workdir / 'checkpoints/latest/4'} cannot be " in line, line
  assert "it is corrupt" in line and "pass --overwrite" in line
  assert not marker.exists()
  assert cli.snapshot(workdir) == before


def test_truncated_checkpoint_arrays_are_refused(cli_run, mnist_dir, tmp_path):
  workdir = _resumable(cli_run, tmp_path)
  for path in (workdir / "checkpoints/latest/4/state").rglob("d/*"):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  out = cli.run(TRAIN, *cli.TINY, f"--manual_dir={mnist_dir}", f"--workdir={workdir}")
  assert out.returncode == 1
  line = cli.error_line(out)
  # Refused by the checkpoint's manifest before orbax reads an array (so no abandoned reads).
  assert f"error: checkpoint {workdir / 'checkpoints/latest/4'} cannot be read: its file " in line
  assert " when written; it is corrupt" in line, line
  assert "Event loop is closed" not in out.stderr, out.stderr[-3000:]


def _save_foreign(workdir, model: str, identity: dict):
  """Replaces the run's latest checkpoint by epoch 4 of a fresh ``model``."""
  shutil.rmtree(workdir / "checkpoints/latest")
  state = step.create_train_state(resolve(Config(model=model)), jax.random.PRNGKey(0), 32)
  checkpoints.LatestCheckpoint(workdir / "checkpoints", identity).save(4, state)


def test_checkpoint_of_another_run_is_refused(cli_run, mnist_dir, tmp_path):
  workdir = _resumable(cli_run, tmp_path)
  other = resolve(Config(model="conv3_dense100")).to_dict()
  _save_foreign(workdir, "conv3_dense100", other)
  out = cli.run(TRAIN, *cli.TINY, f"--manual_dir={mnist_dir}", f"--workdir={workdir}")
  assert out.returncode == 1
  line = cli.error_line(out)
  assert (f"error: checkpoint {workdir / 'checkpoints/latest/4'} belongs to another run (") in line
  assert "model: 'conv3_dense100' there, 'conv2_dense64' here" in line, line


def test_checkpoint_of_another_model_is_refused(cli_run, mnist_dir, tmp_path):
  """Even under this run's identity, another network's arrays do not load."""
  workdir = _resumable(cli_run, tmp_path)
  ours = json.loads((workdir / "config.json").read_text())["config"]
  _save_foreign(workdir, "conv3_dense100", ours)
  out = cli.run(TRAIN, *cli.TINY, f"--manual_dir={mnist_dir}", f"--workdir={workdir}")
  assert out.returncode == 1
  line = cli.error_line(out)
  assert (
    f"error: checkpoint {workdir / 'checkpoints/latest/4'} cannot be restored as this "
    "model (ValueError: "
  ) in line, line


def test_unreadable_checkpoint_metadata_is_refused(cli_run, mnist_dir, tmp_path):
  workdir = _resumable(cli_run, tmp_path)
  metrics = next((workdir / "checkpoints/best").glob("*/metrics/metrics"))
  metrics.write_text('{"score": 0.9')  # cut short
  out = cli.run(TRAIN, *cli.TINY, f"--manual_dir={mnist_dir}", f"--workdir={workdir}")
  assert out.returncode == 1
  line = cli.error_line(out)
  assert (
    f"error: the checkpoint directory {workdir / 'checkpoints/best'} cannot be read "
    "(JSONDecodeError: "
  ) in line, line
  assert "it is corrupt or not an orbax checkpoint directory" in line


@pytest.mark.parametrize(
  "module, listed, unlisted",
  [
    ("experiments.train", ("--model", "--workdir", "--epochs", "--manual_dir"), ()),
    (
      "experiments.sweep",
      ("--seeds", "--models", "--config", "--workdir", "--num_workers", "--worker_index"),
      (),
    ),
    (
      "experiments.search",
      ("--models", "--trials", "--workdir", "--num_workers", "--worker_index", "--[no]plots"),
      (),
    ),
    ("experiments.evaluate", ("--workdir", "--manual_dir"), ("--distributed", "--seeds")),
    (
      "experiments.speedrun",
      ("--seeds", "--output_dir", "--config"),
      ("--distributed", "--workdir"),
    ),
    ("experiments.predict", ("--workdir", "--skip", "--polarity", "--max_pixels"), ()),
    ("experiments.serve", ("--workdir", "--skip", "--polarity", "--center", "--port"), ()),
    (
      "experiments.robustness",
      ("--workdir", "--corruptions", "--mnist_c_dir", "--eps", "--steps", "--restarts"),
      ("--distributed", "--seeds"),
    ),
  ],
)
def test_help_lists_the_entry_points_own_flags(module, listed, unlisted):
  out = cli.run(module, "--help")  # absl exits 1 after the help
  assert "Try --helpfull" in out.stdout, out.stderr[-2000:]
  for name in listed:
    assert f"{name}:" in out.stdout or f"{name}=" in out.stdout, (module, name)
  for name in unlisted:
    assert f"  {name}:" not in out.stdout, (module, name)


def test_seeds_take_integers_and_ranges():
  assert common.parse_seeds(["0-2", "5"]) == [0, 1, 2, 5]
  with pytest.raises(ConfigError, match="is not a seed"):
    common.parse_seeds(["a"])


def test_sweep_takes_a_bare_boolean_flag(tmp_path):
  out = cli.run("experiments.sweep", "--augment", f"--workdir={tmp_path}/x", "--collect_only")
  assert "--augment" not in out.stderr, out.stderr[-2000:]
  assert f"--workdir {tmp_path}/x does not exist" in out.stderr
