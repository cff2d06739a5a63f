"""Shared fixtures: the real MNIST folder beside the repo, loaded once per session."""

from __future__ import annotations

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "datasets" / "mnist"
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def real_mnist_dir() -> pathlib.Path:
  """The shared MNIST folder; skip without it, but fail under CI=true (CI has it)."""
  if all((MNIST_DIR / f).is_file() for f in MNIST_FILES):
    return MNIST_DIR
  msg = (f"real MNIST files not found in {MNIST_DIR}: clone the repo next to "
         "shared/datasets/mnist to run this test")
  if os.environ.get("CI", "").lower() == "true":
    pytest.fail(msg)
  pytest.skip(msg)


@pytest.fixture(scope="session")
def mnist_dir() -> pathlib.Path:
  return real_mnist_dir()


@pytest.fixture(scope="session")
def mnist(mnist_dir):
  """Real MNIST through the idx backend (about a second), default 5,000 validation."""
  from digits_jax import data

  return data.load_datasets("mnist", manual_dir=str(mnist_dir), backend="idx")
