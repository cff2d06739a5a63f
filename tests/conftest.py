"""Shared fixtures: the real MNIST folder ($DIGITS_MANUAL_DIR), loaded once per test session."""

from __future__ import annotations

import importlib
import os
import pathlib
import shutil
import sys
import tempfile

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


def pytest_configure(config):
  """One persistent XLA compilation cache per test session, in a fresh temporary folder.

  The tests train the same tiny networks in many processes (xdist workers, the entry
  points they start), and most of such a test's time is XLA compiling the same steps;
  a shared cache compiles each once per session. It starts empty every session, so no
  executable outlives the code that compiled it. A ``JAX_COMPILATION_CACHE_DIR`` set
  beforehand is left alone.
  """
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


def pytest_unconfigure(config):
  owner = getattr(config, "_digits_cache_owner", None)
  if owner:
    shutil.rmtree(owner, ignore_errors=True)


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
def tiny_run(mnist, tmp_path_factory):
  """A finished tiny run (512 training images, 2 epochs) tested on the full test split.

  Returns ``(workdir, results)``. Shared by the report, evaluate and notebook tests: a test
  that writes into a run directory works on a copy.
  """
  from digits_jax import data, runs
  from digits_jax.config import Config

  datasets = data.Datasets(
    train=mnist.train,
    validation=data.Split(mnist.validation.images[:500], mnist.validation.labels[:500]),
    test=mnist.test,
    name=mnist.name,
    backend=mnist.backend,
  )
  workdir = tmp_path_factory.mktemp("tiny_run")
  results = runs.train_and_evaluate(
    Config(model="conv2_dense64", epochs=2, train_subset=512), workdir, datasets=datasets
  )
  return workdir, results


@pytest.fixture(scope="session")
def cli_run(mnist_dir, tmp_path_factory) -> pathlib.Path:
  """A finished ``python -m experiments.train`` run with the flags of ``tests.cli.TINY``.

  Never interrupted: the reference of the resume tests. Tests that change a run
  directory work on a copy.
  """
  from tests import cli

  workdir = tmp_path_factory.mktemp("cli_run") / "run"
  out = cli.run("experiments.train", *cli.TINY, f"--manual_dir={mnist_dir}", f"--workdir={workdir}")
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir


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
