"""Shared fixtures: the real MNIST folder ($DIGITS_MANUAL_DIR), loaded once per test session."""

from __future__ import annotations

import importlib
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Callable

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# The folder of the four MNIST files: $DIGITS_MANUAL_DIR (the Makefile sets it).
MNIST_DIR = pathlib.Path(os.environ.get("DIGITS_MANUAL_DIR", REPO / "data" / "mnist"))
MNIST_FILES = (
  "train-images-idx3-ubyte.gz",
  "train-labels-idx1-ubyte.gz",
  "t10k-images-idx3-ubyte.gz",
  "t10k-labels-idx1-ubyte.gz",
)


# Set by the first pytest process of a session (the xdist controller, or a plain run): the
# compilation cache every worker and every subprocess of this session shares.
_SESSION_CACHE = "DIGITS_TEST_COMPILATION_CACHE"
# Set the same way: the folder of the runs several test files read (:func:`once_per_session`).
_SESSION_SHARED = "DIGITS_TEST_SHARED"


def pytest_configure(config):
  """One persistent XLA compilation cache per test session, in a fresh temporary folder.

  The tests train the same tiny networks in many processes (xdist workers, the entry
  points they start), and most of such a test's time is XLA compiling the same steps;
  a shared cache compiles each once per session. It starts empty every session, so no
  executable outlives the code that compiled it. A ``JAX_COMPILATION_CACHE_DIR`` set
  beforehand is left alone.

  Also one folder per session for the runs that are trained once and read by the tests of
  every worker (:func:`once_per_session`).
  """
  if _SESSION_SHARED not in os.environ:
    os.environ[_SESSION_SHARED] = tempfile.mkdtemp(prefix="digits_jax-test-shared-")
    config._digits_shared_owner = os.environ[_SESSION_SHARED]
  if "JAX_COMPILATION_CACHE_DIR" in os.environ and _SESSION_CACHE not in os.environ:
    return
  if _SESSION_CACHE not in os.environ:
    os.environ[_SESSION_CACHE] = tempfile.mkdtemp(prefix="digits_jax-test-xla-cache-")
    config._digits_cache_owner = os.environ[_SESSION_CACHE]
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ[_SESSION_CACHE]
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  if "jax" in sys.modules:  # imported already: its config read the environment before
    import jax

    jax.config.update("jax_compilation_cache_dir", os.environ[_SESSION_CACHE])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


# The files that take longest (a minute or more each on 2 cores), in that order, run first:
# with --dist loadfile --no-loadscope-reorder (make test), pytest-xdist hands out whole files
# in collection order, and a long file handed out last would leave one worker running it
# alone at the end. (Its default order, most tests first, put the slowest files last.)
SLOW_FILES = (
  "test_errors.py",
  "test_workers.py",
  "test_ops.py",
  "test_distributed.py",
  "test_robustness.py",
  "test_sweep.py",
  "test_groups.py",
  "test_models.py",
  "test_adversarial.py",
  "test_peer_death.py",
)


def pytest_collection_modifyitems(config, items):
  """The files of :data:`SLOW_FILES` first; each file's tests keep their order."""
  rank = {name: i for i, name in enumerate(SLOW_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))


def pytest_unconfigure(config):
  for owner in ("_digits_cache_owner", "_digits_shared_owner"):
    folder = getattr(config, owner, None)
    if folder:
      shutil.rmtree(folder, ignore_errors=True)


def once_per_session(name: str, build: Callable[[pathlib.Path], None]) -> pathlib.Path:
  """The folder ``name`` of this session's shared folder, made by ``build(folder)`` once.

  The first process of the session (an xdist worker, or a plain run) that asks builds it;
  the others wait for it and read the same folder, so a run used by test files on several
  workers is trained once, not once per worker. Tests must not change what it holds (they
  work on a copy). A build that failed is tried again by the next process that asks.
  """
  from digits_jax import files

  root = pathlib.Path(os.environ[_SESSION_SHARED])
  folder, done = root / name, root / f"{name}.done"
  with files.exclusive_lock(root / f"{name}.lock", wait_s=1800):
    if not done.exists():
      shutil.rmtree(folder, ignore_errors=True)
      build(folder)
      done.touch()
  return folder


def real_mnist_dir() -> pathlib.Path:
  """The shared MNIST folder; skip without it, but fail under CI=true (CI has it)."""
  if all((MNIST_DIR / f).is_file() for f in MNIST_FILES):
    return MNIST_DIR
  msg = (
    f"real MNIST files not found in {MNIST_DIR}: set DIGITS_MANUAL_DIR to a folder "
    "holding them to run this test"
  )
  if os.environ.get("CI", "").lower() == "true":
    pytest.fail(msg)
  pytest.skip(msg)


# The optional layer (requirements/<layer>.txt, pip extra) that brings each optional module.
LAYER_OF = {
  "torch": "bench",
  "keras": "bench",
  "tensorflow": "tfds",
  "tensorflow_datasets": "tfds",
  "selenium": "test",
  "nbclient": "test",
  "nbformat": "test",
  "ipykernel": "test",
  "optuna": "search",
  "hypothesis": "test",
  "sklearn": "test",
}


def in_ci() -> bool:
  return os.environ.get("CI", "").lower() == "true"


def requires(module: str):
  """Imports an optional module; skips the test without it, but fails under CI=true.

  CI installs every layer (make test), so a missing one there is a broken install, not a
  reason to skip.
  """
  layer = LAYER_OF.get(module, "test")
  reason = (
    f"{module} is not installed: it comes with the {layer} layer "
    f"(pip install -r requirements/{layer}.txt, or make test)"
  )
  if in_ci():
    try:
      return importlib.import_module(module)
    except ImportError as e:
      pytest.fail(f"{reason} ({type(e).__name__}: {e})")
  return pytest.importorskip(module, reason=reason)


@pytest.fixture(scope="session")
def mnist_dir() -> pathlib.Path:
  return real_mnist_dir()


@pytest.fixture(scope="session")
def mnist(mnist_dir):
  """Real MNIST through the idx backend (about a second), default 5,000 validation."""
  from digits_jax import data

  return data.load_datasets("mnist", manual_dir=str(mnist_dir), backend="idx")


@pytest.fixture(scope="session")
def tiny_run(mnist):
  """A finished tiny run (512 training images, 2 epochs) tested on the full test split.

  Returns ``(workdir, results)``. Shared by the report, evaluate, predict, serve, robustness
  and notebook tests, trained once per session (:func:`once_per_session`): a test that
  writes into a run directory works on a copy.
  """
  from digits_jax import data, files, runs
  from digits_jax.config import Config

  datasets = data.Datasets(
    train=mnist.train,
    validation=data.Split(mnist.validation.images[:500], mnist.validation.labels[:500]),
    test=mnist.test,
    name=mnist.name,
    backend=mnist.backend,
  )
  config = Config(model="conv2_dense64", epochs=2, train_subset=512)
  workdir = once_per_session(
    "tiny_run", lambda folder: runs.train_and_evaluate(config, folder, datasets=datasets)
  )
  return workdir, files.read_json(workdir / "results.json")


@pytest.fixture(scope="session")
def cli_run(mnist_dir) -> pathlib.Path:
  """A finished ``python -m experiments.train`` run with the flags of ``tests.cli.TINY``.

  Never interrupted: the reference of the resume tests. Trained once per session
  (:func:`once_per_session`); tests that change a run directory work on a copy.
  """
  from tests import cli

  def train(folder: pathlib.Path) -> None:
    workdir = folder / "run"
    out = cli.run(
      "experiments.train", *cli.TINY, f"--manual_dir={mnist_dir}", f"--workdir={workdir}"
    )
    assert out.returncode == 0, out.stderr[-3000:]

  return once_per_session("cli_run", train) / "run"


def tiny_datasets(mnist, n_train: int = 1024, n_val: int = 512, n_test: int = 1000):
  """The first images of each split of ``mnist``: real data, small enough for seconds."""
  from digits_jax import data

  return data.Datasets(
    train=data.Split(mnist.train.images[:n_train], mnist.train.labels[:n_train]),
    validation=data.Split(mnist.validation.images[:n_val], mnist.validation.labels[:n_val]),
    test=data.Split(mnist.test.images[:n_test], mnist.test.labels[:n_test]),
    name=mnist.name,
    backend=mnist.backend,
  )
