"""Tests for digits_jax.data: the IDX reader, the checks, both backends, the splits.

Most tests use small synthetic IDX files written to ``tmp_path`` and registered in place of
the real MNIST checksums (``_SOURCES`` is monkeypatched), so they are fast and need no data.
Tests that need the real files read the folder named by ``DIGITS_MANUAL_DIR``; they skip
when it is absent, except under ``CI=true``, where a missing copy is a failure.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from digits_jax import data
from tests.conftest import MNIST_FILES, REPO, real_mnist_dir, requires

# Class counts of the official MNIST splits.
MNIST_TRAIN_HIST = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_HIST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
UNREACHABLE = "http://192.0.2.1/mnist/"  # TEST-NET-1 (RFC 5737): never routed


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
  """No test sees the user's ~/.digits_jax, DIGITS_MANUAL_DIR or proxies."""
  home = tmp_path / "home"
  home.mkdir()
  monkeypatch.setenv("HOME", str(home))
  monkeypatch.delenv(data.MANUAL_DIR_ENV, raising=False)
  for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
    monkeypatch.delenv(var, raising=False)


# ------------------------------------------------------------------------------------------
# Helpers for synthetic IDX files


def _idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
  magic = magic if magic is not None else (2051 if arr.ndim == 3 else 2049)
  return struct.pack(f">I{arr.ndim}I", magic, *arr.shape) + arr.astype(np.uint8).tobytes()


def _gz(raw: bytes) -> bytes:
  return gzip.compress(raw, mtime=0)


def _fake_arrays(n_train: int = 300, n_test: int = 50, seed: int = 1):
  rng = np.random.default_rng(seed)
  return {
    "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
    "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
    "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
    "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
  }


def _install_fake(
  folder: pathlib.Path, monkeypatch, arrays: dict[str, np.ndarray], base_url: str = UNREACHABLE
) -> pathlib.Path:
  """Writes arrays as gzipped IDX files and registers their digests as mnist's."""
  folder.mkdir(parents=True, exist_ok=True)
  files = {}
  for role, f in data._SOURCES["mnist"].files.items():
    blob = _gz(_idx_bytes(arrays[role]))
    (folder / f.name).write_bytes(blob)
    files[role] = data._File(f.name, len(blob), hashlib.sha256(blob).hexdigest())
  monkeypatch.setitem(data._SOURCES, "mnist", data._Source(base_url=base_url, files=files))
  return folder


def _rows(images: np.ndarray) -> set[bytes]:
  return {row.tobytes() for row in images.reshape(len(images), -1)}


# ------------------------------------------------------------------------------------------
# read_idx


def test_read_idx_round_trip(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
  labels = np.arange(7, dtype=np.uint8) % 10
  (tmp_path / "i.gz").write_bytes(_gz(_idx_bytes(images)))
  (tmp_path / "l.gz").write_bytes(_gz(_idx_bytes(labels)))
  (tmp_path / "l.raw").write_bytes(_idx_bytes(labels))  # uncompressed works too
  got = data.read_idx(tmp_path / "i.gz")
  assert got.dtype == np.uint8 and got.shape == (7, 28, 28)
  np.testing.assert_array_equal(got, images)
  np.testing.assert_array_equal(data.read_idx(tmp_path / "l.gz"), labels)
  np.testing.assert_array_equal(data.read_idx(str(tmp_path / "l.raw")), labels)


@pytest.mark.parametrize("cut", [0.5, -8])  # mid-stream, and only the CRC/size trailer lost
def test_read_idx_truncated_gzip(tmp_path, cut):
  blob = _gz(_idx_bytes(np.zeros((5, 28, 28), np.uint8) + 7))
  end = int(len(blob) * cut) if isinstance(cut, float) else len(blob) + cut
  path = tmp_path / "t.gz"
  path.write_bytes(blob[:end])
  with pytest.raises(data.DataError, match=r"truncated gzip.*download it again") as e:
    data.read_idx(path)
  assert str(path) in str(e.value)


def test_read_idx_truncated_payload(tmp_path):
  raw = _idx_bytes(np.ones((5, 28, 28), np.uint8))[:-100]
  path = tmp_path / "p.gz"
  path.write_bytes(_gz(raw))
  with pytest.raises(data.DataError, match=r"truncated: .*needs 3920 data bytes, found 3820"):
    data.read_idx(path)
  path.write_bytes(_gz(raw[:10]))  # cut inside the header
  with pytest.raises(data.DataError, match="truncated inside its IDX header"):
    data.read_idx(path)


def test_read_idx_trailing_bytes(tmp_path):
  path = tmp_path / "x.gz"
  path.write_bytes(_gz(_idx_bytes(np.ones(5, np.uint8)) + b"\0\0"))
  with pytest.raises(data.DataError, match="2 bytes after the 5"):
    data.read_idx(path)


def test_read_idx_wrong_magic(tmp_path):
  path = tmp_path / "m.gz"
  path.write_bytes(_gz(_idx_bytes(np.ones((2, 28, 28), np.uint8), magic=2052)))
  with pytest.raises(data.DataError, match=r"magic number 2052.*expected 2051.*or 2049"):
    data.read_idx(path)
  path.write_bytes(b"PK\x03\x04 a zip file")
  with pytest.raises(data.DataError, match="magic number"):
    data.read_idx(path)


def test_read_idx_bad_gzip(tmp_path):
  path = tmp_path / "b.gz"
  path.write_bytes(b"\x1f\x8b" + b"definitely not deflate data" * 10)
  with pytest.raises(data.DataError, match="not a valid gzip file"):
    data.read_idx(path)
  blob = bytearray(_gz(_idx_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8))))
  blob[len(blob) // 2 : len(blob) // 2 + 16] = b"\xff" * 16  # corrupt the deflate stream / CRC
  path.write_bytes(bytes(blob))
  with pytest.raises(data.DataError, match="gzip"):
    data.read_idx(path)


def test_read_idx_wrong_dims(tmp_path):
  path = tmp_path / "d.gz"
  path.write_bytes(_gz(struct.pack(">IIII", 2051, 3, 0, 28)))
  with pytest.raises(data.DataError, match=r"image dimensions \(0, 28\)"):
    data.read_idx(path)


def test_read_idx_missing_file(tmp_path):
  with pytest.raises(data.DataError, match="cannot read IDX file"):
    data.read_idx(tmp_path / "nope.gz")


# ------------------------------------------------------------------------------------------
# Names, flags, import hygiene


def test_unknown_names_list_valid_ones():
  with pytest.raises(data.DataError, match="mnist, fashion_mnist, kmnist"):
    data.load_datasets("cifar10")
  with pytest.raises(data.DataError, match="auto, tfds, idx"):
    data.load_datasets("mnist", backend="torch")


def test_resolve_manual_dir(monkeypatch):
  assert data.resolve_manual_dir(None) is None
  assert data.resolve_manual_dir("") is None
  monkeypatch.setenv(data.MANUAL_DIR_ENV, "/env/dir")
  assert data.resolve_manual_dir(None) == "/env/dir"
  assert data.resolve_manual_dir("/flag/dir") == "/flag/dir"
  assert data.resolve_manual_dir("~/x") == os.path.expanduser("~/x")


def test_import_does_not_import_tensorflow():
  code = "import sys, digits_jax.data; assert 'tensorflow' not in sys.modules, 'tf imported'"
  subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


# ------------------------------------------------------------------------------------------
# load_datasets on synthetic files (idx backend)


def test_synthetic_load_and_auto_without_tensorflow(tmp_path, monkeypatch):
  arrays = _fake_arrays()
  folder = _install_fake(tmp_path / "m", monkeypatch, arrays)
  monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` now fails
  ds = data.load_datasets(manual_dir=folder, validation_size=40, backend="auto")
  assert ds.backend == "idx" and ds.name == "mnist" and ds.num_classes == 10
  assert ds.train.images.shape == (260, 28, 28, 1) and ds.validation.images.shape[0] == 40
  assert ds.test.images.shape == (50, 28, 28, 1)
  assert ds.train.images.dtype == np.float32 and ds.train.labels.dtype == np.int32
  # Every synthetic example comes back, scaled to [0, 1] and with its own label.
  want = {img.tobytes(): lab for img, lab in zip(arrays["test_images"], arrays["test_labels"])}
  got_u8 = np.rint(ds.test.images[..., 0] * 255).astype(np.uint8)
  assert {img.tobytes(): lab for img, lab in zip(got_u8, ds.test.labels)} == want


def test_manual_dir_from_env(tmp_path, monkeypatch):
  folder = _install_fake(tmp_path / "m", monkeypatch, _fake_arrays())
  monkeypatch.setenv(data.MANUAL_DIR_ENV, str(folder))
  assert len(data.load_datasets(backend="idx", validation_size=10).test) == 50


def test_canonical_order_ignores_file_order(tmp_path, monkeypatch):
  arrays = _fake_arrays()
  perm = np.random.default_rng(5).permutation(300)
  shuffled = dict(
    arrays, train_images=arrays["train_images"][perm], train_labels=arrays["train_labels"][perm]
  )
  a = data.load_datasets(
    manual_dir=_install_fake(tmp_path / "a", monkeypatch, arrays), backend="idx", validation_size=30
  )
  b = data.load_datasets(
    manual_dir=_install_fake(tmp_path / "b", monkeypatch, shuffled),
    backend="idx",
    validation_size=30,
  )
  for split in ("train", "validation", "test"):
    np.testing.assert_array_equal(getattr(a, split).images, getattr(b, split).images)
    np.testing.assert_array_equal(getattr(a, split).labels, getattr(b, split).labels)


def test_canonical_order_survives_hash_collisions(monkeypatch):
  """With every hash equal, ties fall back to the pixels: order still content-only."""
  monkeypatch.setattr(data, "_content_keys", lambda flat: np.zeros(len(flat), np.uint64))
  arrays = _fake_arrays(n_train=50)
  images, labels = arrays["train_images"], arrays["train_labels"]
  perm = np.random.default_rng(3).permutation(50)
  a_img, a_lab = data._canonical(images, labels)
  b_img, b_lab = data._canonical(images[perm], labels[perm])
  np.testing.assert_array_equal(a_img, b_img)
  np.testing.assert_array_equal(a_lab, b_lab)


def test_validation_split(tmp_path, monkeypatch):
  arrays = _fake_arrays()
  folder = _install_fake(tmp_path / "m", monkeypatch, arrays)
  load = functools.partial(data.load_datasets, manual_dir=folder, backend="idx")
  a, again, other = (
    load(validation_size=60, seed=0),
    load(validation_size=60, seed=0),
    load(validation_size=60, seed=1),
  )
  assert (len(a.train), len(a.validation)) == (240, 60)
  train_rows, val_rows = _rows(a.train.images), _rows(a.validation.images)
  assert not train_rows & val_rows  # disjoint
  assert train_rows | val_rows == _rows(arrays["train_images"].astype(np.float32) / 255)
  np.testing.assert_array_equal(a.validation.images, again.validation.images)  # deterministic
  np.testing.assert_array_equal(a.train.labels, again.train.labels)
  assert _rows(other.validation.images) != val_rows  # the seed matters
  np.testing.assert_array_equal(a.test.images, other.test.images)  # test split untouched

  empty = load(validation_size=0)
  assert empty.validation.images.shape == (0, 28, 28, 1) and empty.validation.labels.shape == (0,)
  assert len(empty.train) == 300
  with pytest.raises(data.DataError, match="validation_size 300 .* has 300 training examples"):
    load(validation_size=300)
  with pytest.raises(data.DataError, match="validation_size must be >= 0"):
    load(validation_size=-1)


def test_labels_out_of_range(tmp_path, monkeypatch):
  arrays = _fake_arrays()
  arrays["train_labels"][17] = 10
  folder = _install_fake(tmp_path / "m", monkeypatch, arrays)
  with pytest.raises(data.DataError, match=r"train split: labels range over \[0, 10\]"):
    data.load_datasets(manual_dir=folder, backend="idx")


def test_wrong_image_dims_and_counts(tmp_path, monkeypatch):
  arrays = _fake_arrays()
  small = dict(arrays, test_images=arrays["test_images"][:, :27, :27])
  folder = _install_fake(tmp_path / "a", monkeypatch, small)
  with pytest.raises(data.DataError, match=r"test split: images have shape \(50, 27, 27\)"):
    data.load_datasets(manual_dir=folder, backend="idx")
  uneven = dict(arrays, test_labels=arrays["test_labels"][:49])
  folder = _install_fake(tmp_path / "b", monkeypatch, uneven)
  with pytest.raises(data.DataError, match="50 images but 49 labels"):
    data.load_datasets(manual_dir=folder, backend="idx")


def test_missing_files_are_named(tmp_path):
  folder = tmp_path / "m"
  folder.mkdir()
  (folder / "train-images-idx3-ubyte.gz").write_bytes(b"x")
  with pytest.raises(data.DataError) as e:
    data.load_datasets(manual_dir=folder, backend="idx")
  msg = str(e.value)
  assert "lacks train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels" in msg
  assert "needs the four files train-images-idx3-ubyte.gz" in msg
  with pytest.raises(data.DataError, match=r"does not exist.*--manual_dir"):
    data.load_datasets(manual_dir=tmp_path / "nowhere", backend="idx")


def test_no_data_no_network_fails_fast_idx(monkeypatch):
  source = data._SOURCES["mnist"]
  monkeypatch.setitem(data._SOURCES, "mnist", dataclasses.replace(source, base_url=UNREACHABLE))
  start = time.monotonic()
  with pytest.raises(data.DataError) as e:
    data.load_datasets(backend="idx")
  assert time.monotonic() - start < 30  # a hang check, not a speed test
  msg = str(e.value)
  assert "DIGITS_MANUAL_DIR" in msg and "--manual_dir" in msg and "unreachable" in msg
  assert "train-images-idx3-ubyte.gz" in msg and ".digits_jax" in msg


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
  def log_message(self, *args):  # keep pytest output clean
    pass


@pytest.fixture
def http_dir(tmp_path):
  """A local HTTP server; yields (folder it serves, its base URL)."""
  root = tmp_path / "served"
  root.mkdir()
  server = http.server.ThreadingHTTPServer(
    ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root))
  )
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
  finally:
    server.shutdown()
    server.server_close()


def test_download_to_default_dir(http_dir, monkeypatch):
  root, url = http_dir
  _install_fake(root, monkeypatch, _fake_arrays(), base_url=url)
  ds = data.load_datasets(backend="idx", validation_size=10)
  assert len(ds.test) == 50
  default = pathlib.Path.home() / ".digits_jax" / "mnist"
  assert sorted(p.name for p in default.iterdir()) == sorted(MNIST_FILES)  # no .part left


def test_download_checksum_mismatch(http_dir, monkeypatch):
  root, url = http_dir
  _install_fake(root, monkeypatch, _fake_arrays(), base_url=url)
  (root / "t10k-labels-idx1-ubyte.gz").write_bytes(_gz(_idx_bytes(np.zeros(50, np.uint8))))
  with pytest.raises(data.DataError, match=r"checksum mismatch for the download of .*t10k-lab"):
    data.load_datasets(backend="idx")
  default = pathlib.Path.home() / ".digits_jax" / "mnist"
  assert "t10k-labels-idx1-ubyte.gz" not in {p.name for p in default.iterdir()}
  assert not any(p.name.endswith(".part") for p in default.iterdir())


# ------------------------------------------------------------------------------------------
# Real MNIST


@pytest.fixture(scope="module")
def mnist_idx() -> data.Datasets:
  return data.load_datasets("mnist", manual_dir=real_mnist_dir(), backend="idx")


def test_real_mnist_idx(mnist_idx):
  ds = mnist_idx
  assert ds.backend == "idx"
  for split, n in (("train", 55000), ("validation", 5000), ("test", 10000)):
    s = getattr(ds, split)
    assert s.images.shape == (n, 28, 28, 1) and s.images.dtype == np.float32
    assert s.labels.shape == (n,) and s.labels.dtype == np.int32
    assert s.images.min() == 0.0 and s.images.max() == 1.0
    assert np.bincount(s.labels, minlength=10).sum() == n
  train_hist = np.bincount(ds.train.labels, minlength=10) + np.bincount(
    ds.validation.labels, minlength=10
  )
  assert train_hist.tolist() == MNIST_TRAIN_HIST
  assert np.bincount(ds.test.labels, minlength=10).tolist() == MNIST_TEST_HIST


def test_real_mnist_canonical_order_is_stable(mnist_idx):
  again = data.load_datasets("mnist", manual_dir=real_mnist_dir(), backend="idx")
  for split in ("train", "validation", "test"):
    np.testing.assert_array_equal(getattr(again, split).images, getattr(mnist_idx, split).images)
    np.testing.assert_array_equal(getattr(again, split).labels, getattr(mnist_idx, split).labels)
  # The order really is the content-key order, not the files' order.
  u8 = np.rint(mnist_idx.test.images[..., 0] * 255).astype(np.uint8).reshape(10000, -1)
  assert np.all(np.diff(data._content_keys(u8).astype(np.float64)) >= 0)


def test_real_mnist_checksum_mismatch(tmp_path):
  folder = tmp_path / "m"
  shutil.copytree(real_mnist_dir(), folder, ignore=shutil.ignore_patterns("README*"))
  target = folder / "t10k-labels-idx1-ubyte.gz"
  target.chmod(0o644)
  blob = bytearray(target.read_bytes())
  blob[-20] ^= 0xFF
  target.write_bytes(bytes(blob))
  with pytest.raises(data.DataError) as e:
    data.load_datasets(manual_dir=folder, backend="idx")
  msg = str(e.value)
  assert f"checksum mismatch for {target}" in msg
  assert "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6" in msg
  assert hashlib.sha256(bytes(blob)).hexdigest() in msg and "download it again" in msg


# ------------------------------------------------------------------------------------------
# tfds backend


def _require_tfds() -> None:
  requires("tensorflow")
  requires("tensorflow_datasets")


@pytest.fixture(scope="module")
def mnist_tfds(tmp_path_factory) -> data.Datasets:
  _require_tfds()
  manual = real_mnist_dir()
  # Prepared once per session (~20 s) in a fresh folder, from the offline copy.
  return data.load_datasets(
    "mnist", manual_dir=manual, backend="tfds", data_dir=tmp_path_factory.mktemp("tfds")
  )


def test_tensorflow_is_kept_off_the_gpus(monkeypatch):
  """Whichever way the tfds backend comes in (auto's probe or the backend itself), the GPUs
  are hidden from TensorFlow before it can reserve their memory."""
  _require_tfds()
  tf = requires("tensorflow")
  calls = []
  monkeypatch.setattr(tf.config, "set_visible_devices", lambda *a: calls.append(a))
  assert data._tfds_available()
  assert calls == [([], "GPU")]
  data._import_tfds()
  assert calls == [([], "GPU")] * 2


def test_tfds_and_idx_identical(mnist_tfds, mnist_idx):
  assert mnist_tfds.backend == "tfds"
  for split in ("train", "validation", "test"):
    a, b = getattr(mnist_tfds, split), getattr(mnist_idx, split)
    assert a.images.dtype == b.images.dtype and a.labels.dtype == b.labels.dtype
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_no_data_no_network_fails_fast_tfds(tmp_path, monkeypatch):
  _require_tfds()
  source = data._SOURCES["mnist"]
  monkeypatch.setitem(data._SOURCES, "mnist", dataclasses.replace(source, base_url=UNREACHABLE))
  start = time.monotonic()
  with pytest.raises(data.DataError) as e:
    data.load_datasets(backend="tfds", data_dir=tmp_path / "tfds")
  assert time.monotonic() - start < 30  # includes importing TensorFlow
  msg = str(e.value)
  assert "not prepared" in msg and "DIGITS_MANUAL_DIR" in msg and "--manual_dir" in msg


# ------------------------------------------------------------------------------------------
# MNIST in other forms: uncompressed, dotted names, re-compressed, mixed


DOTTED = {name: name.replace("-idx", ".idx") for name in MNIST_FILES}  # still ending in .gz


@pytest.fixture(scope="module")
def mnist_raw() -> dict[str, bytes]:
  """The decompressed IDX data of the four official files, by official .gz name."""
  return {name: gzip.decompress((real_mnist_dir() / name).read_bytes()) for name in MNIST_FILES}


def _write(folder: pathlib.Path, files: dict[str, bytes]) -> pathlib.Path:
  folder.mkdir(parents=True, exist_ok=True)
  for name, blob in files.items():
    (folder / name).write_bytes(blob)
  return folder


def _flip(blob: bytes, at: int) -> bytes:
  out = bytearray(blob)
  out[at] ^= 0x01
  return bytes(out)


def _assert_same(a: data.Datasets, b: data.Datasets) -> None:
  for split in ("train", "validation", "test"):
    np.testing.assert_array_equal(getattr(a, split).images, getattr(b, split).images)
    np.testing.assert_array_equal(getattr(a, split).labels, getattr(b, split).labels)


def test_recorded_idx_digests_match_the_official_files(mnist_raw):
  for f in data._SOURCES["mnist"].files.values():
    raw = mnist_raw[f.name]
    assert (len(raw), hashlib.sha256(raw).hexdigest()) == (f.raw_size, f.raw_sha256), f.name


@pytest.mark.parametrize(
  "names, where", [("official", "manual"), ("dotted", "manual"), ("dotted", "default")]
)
def test_uncompressed_files_load_identically(
  names, where, mnist_raw, mnist_idx, tmp_path, monkeypatch
):
  renamed = {n: n if names == "official" else DOTTED[n] for n in MNIST_FILES}
  files = {renamed[n].removesuffix(".gz"): raw for n, raw in mnist_raw.items()}
  if where == "manual":
    folder = _write(tmp_path / "m", files)
  else:  # ~/.digits_jax/mnist, with no network: used as it is, nothing downloaded
    folder = _write(pathlib.Path.home() / ".digits_jax" / "mnist", files)
    source = data._SOURCES["mnist"]
    monkeypatch.setitem(data._SOURCES, "mnist", dataclasses.replace(source, base_url=UNREACHABLE))
  ds = data.load_datasets(manual_dir=folder if where == "manual" else None, backend="idx")
  _assert_same(ds, mnist_idx)
  assert sorted(p.name for p in folder.iterdir()) == sorted(files)


def test_recompressed_and_renamed_gz_load_identically(mnist_raw, mnist_idx, tmp_path):
  recompressed = {
    n: gzip.compress(raw, compresslevel=1, mtime=123456789) for n, raw in mnist_raw.items()
  }
  for n, blob in recompressed.items():  # really different files with the same content
    assert blob != (real_mnist_dir() / n).read_bytes()
  _assert_same(
    data.load_datasets(manual_dir=_write(tmp_path / "a", recompressed), backend="idx"), mnist_idx
  )
  renamed = {DOTTED[n]: (real_mnist_dir() / n).read_bytes() for n in MNIST_FILES}
  _assert_same(
    data.load_datasets(manual_dir=_write(tmp_path / "b", renamed), backend="idx"), mnist_idx
  )


@pytest.mark.parametrize("compress", [False, True])
def test_corrupt_copy_is_refused_naming_the_file(compress, mnist_raw, tmp_path):
  target = "t10k-images-idx3-ubyte.gz"
  files = dict(mnist_raw, **{target: _flip(mnist_raw[target], 5000)})  # one pixel
  if compress:
    files = {DOTTED[n]: gzip.compress(raw, compresslevel=1, mtime=1) for n, raw in files.items()}
    path = tmp_path / "m" / DOTTED[target]
  else:
    files = {n.removesuffix(".gz"): raw for n, raw in files.items()}
    path = tmp_path / "m" / target.removesuffix(".gz")
  folder = _write(tmp_path / "m", files)
  with pytest.raises(data.DataError) as e:
    data.load_datasets(manual_dir=folder, backend="idx")
  msg = str(e.value)
  expected = data._SOURCES["mnist"].files["test_images"].raw_sha256
  actual = hashlib.sha256(_flip(mnist_raw[target], 5000)).hexdigest()
  assert msg.startswith(f"checksum mismatch for {path}: expected sha256 {expected}"), msg
  assert f"got {actual}" in msg and "download it again" in msg


def test_official_gz_is_preferred_to_other_copies(mnist_raw, mnist_idx, tmp_path, caplog):
  folder = _write(tmp_path / "m", {n: (real_mnist_dir() / n).read_bytes() for n in MNIST_FILES})
  bad = folder / "t10k-labels.idx1-ubyte"  # a corrupt extra copy, never read
  bad.write_bytes(_flip(mnist_raw["t10k-labels-idx1-ubyte.gz"], 100))
  with caplog.at_level("DEBUG", logger=data.__name__):
    ds = data.load_datasets(manual_dir=folder, backend="idx")
  _assert_same(ds, mnist_idx)
  assert "using t10k-labels-idx1-ubyte.gz, ignoring t10k-labels.idx1-ubyte" in caplog.text


def test_kmnist_verifies_only_the_official_gz(tmp_path):
  """kmnist records no digests of the IDX data: other forms are refused."""
  images = _idx_bytes(np.zeros((3, 28, 28), np.uint8))
  labels = _idx_bytes(np.zeros(3, np.uint8))
  raw = {
    "train-images-idx3-ubyte": images,
    "train-labels-idx1-ubyte": labels,
    "t10k-images-idx3-ubyte": images,
    "t10k-labels-idx1-ubyte": labels,
  }
  folder = _write(tmp_path / "raw", raw)
  with pytest.raises(data.DataError) as e:
    data.load_datasets("kmnist", manual_dir=folder, backend="idx")
  assert str(e.value).startswith(
    f"cannot verify {folder / 'train-images-idx3-ubyte'}: it is not gzipped, and for "
    "kmnist only the SHA-256 digests of the official .gz files are recorded"
  )
  folder = _write(tmp_path / "gz", {n + ".gz": _gz(b) for n, b in raw.items()})
  with pytest.raises(
    data.DataError,
    match=r"checksum mismatch for .*train-images-idx3-ubyte\.gz: "
    r"expected sha256 51467d22.*only the official \.gz files can be verified",
  ):
    data.load_datasets("kmnist", manual_dir=folder, backend="idx")
  folder = tmp_path / "none"
  folder.mkdir()
  with pytest.raises(data.DataError, match=r"lacks .*dotted names \(train-images\.idx3-ubyte\.gz"):
    data.load_datasets("kmnist", manual_dir=folder, backend="idx")


def test_fashion_mnist_checks_uncompressed_copies_by_their_idx_digest(tmp_path):
  """fashion_mnist records the digests of its IDX data: an uncompressed copy whose bytes
  differ is refused by that digest, not for being uncompressed."""
  images = _idx_bytes(np.zeros((3, 28, 28), np.uint8))
  folder = _write(
    tmp_path / "raw",
    {
      "train-images-idx3-ubyte": images,
      "train-labels-idx1-ubyte": _idx_bytes(np.zeros(3, np.uint8)),
      "t10k-images-idx3-ubyte": images,
      "t10k-labels-idx1-ubyte": _idx_bytes(np.zeros(3, np.uint8)),
    },
  )
  expected = data._SOURCES["fashion_mnist"].files["train_images"].raw_sha256
  with pytest.raises(data.DataError, match=f"expected sha256 {expected}"):
    data.load_datasets("fashion_mnist", manual_dir=folder, backend="idx")


def _fashion_dir() -> pathlib.Path:
  """The folder of the four Fashion-MNIST .gz files named by ``DIGITS_FASHION_MNIST_DIR``
  (official or Debian copies); skips without it."""
  folder = os.environ.get("DIGITS_FASHION_MNIST_DIR")
  if not folder:
    pytest.skip("set DIGITS_FASHION_MNIST_DIR to a folder of the Fashion-MNIST files")
  return pathlib.Path(folder)


def test_fashion_mnist_raw_and_gz_copies_load_identically(tmp_path):
  folder = _fashion_dir()
  gz = data.load_datasets("fashion_mnist", manual_dir=folder, backend="idx")
  raw = {n.removesuffix(".gz"): gzip.decompress((folder / n).read_bytes()) for n in MNIST_FILES}
  for f in data._SOURCES["fashion_mnist"].files.values():
    blob = raw[f.name.removesuffix(".gz")]
    assert (len(blob), hashlib.sha256(blob).hexdigest()) == (f.raw_size, f.raw_sha256), f.name
  r = data.load_datasets("fashion_mnist", manual_dir=_write(tmp_path / "r", raw), backend="idx")
  _assert_same(r, gz)
  assert np.bincount(gz.test.labels).tolist() == [1000] * 10


@pytest.fixture(scope="module")
def mixed_dir(mnist_raw, tmp_path_factory) -> pathlib.Path:
  """Each file in another form: official, re-compressed, uncompressed dotted, renamed .gz."""
  official = {n: (real_mnist_dir() / n).read_bytes() for n in MNIST_FILES}
  return _write(
    tmp_path_factory.mktemp("mixed"),
    {
      "train-images-idx3-ubyte.gz": official["train-images-idx3-ubyte.gz"],
      "train-labels-idx1-ubyte.gz": gzip.compress(mnist_raw["train-labels-idx1-ubyte.gz"], 1),
      "t10k-images.idx3-ubyte": mnist_raw["t10k-images-idx3-ubyte.gz"],
      "t10k-labels.idx1-ubyte.gz": official["t10k-labels-idx1-ubyte.gz"],
    },
  )


def test_auto_uses_idx_for_other_forms(mixed_dir, mnist_idx, tmp_path):
  ds = data.load_datasets(manual_dir=mixed_dir, backend="auto", data_dir=tmp_path / "tfds")
  assert ds.backend == "idx"
  _assert_same(ds, mnist_idx)


def test_tfds_refuses_other_forms_clearly(mixed_dir, tmp_path):
  _require_tfds()
  with pytest.raises(data.DataError) as e:
    data.load_datasets(manual_dir=mixed_dir, backend="tfds", data_dir=tmp_path / "tfds")
  msg = str(e.value)
  assert msg.startswith(
    f"the tfds backend prepares mnist only from its official .gz files, but {mixed_dir} holds "
    "train-labels-idx1-ubyte.gz (re-compressed), t10k-images.idx3-ubyte (uncompressed), "
    "t10k-labels.idx1-ubyte.gz (renamed); use --data_backend=idx"
  ), msg
  assert "put the official files (train-images-idx3-ubyte.gz, " in msg
  assert not (tmp_path / "tfds" / "mnist").exists()  # refused before tfds began preparing


def test_auto_keeps_tfds_for_the_official_files():
  _require_tfds()
  assert data._auto_backend("mnist", str(real_mnist_dir()))[0] == "tfds"
