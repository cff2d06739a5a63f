"""MNIST-like datasets as NumPy arrays, from tensorflow-datasets or straight from the IDX files.

One function, :func:`load_datasets`, returns train / validation / test splits of MNIST,
Fashion-MNIST or Kuzushiji-MNIST as ``float32`` NHWC images in ``[0, 1]`` and ``int32`` labels.
Two backends produce them:

* ``"tfds"``: ``tensorflow_datasets`` builds and caches the dataset in its ``data_dir``
  (needs TensorFlow, which many GPU/TPU hosts with JAX do not have).
* ``"idx"``: reads the four IDX files directly with NumPy, gzipped or not, after checking
  their SHA-256 digests (see "Accepted files" below).

``"auto"`` (the default) uses ``"tfds"`` when TensorFlow and tensorflow-datasets import and
``"idx"`` otherwise. Both backends return *identical* arrays, so results do not depend on
which one a host happens to have:

Canonical order:
  tensorflow-datasets stores the training split in its own shuffled order, the IDX files in
  the original order. Every split is therefore sorted by a content key: a 64-bit hash of the
  image's pixel bytes (a dot product with fixed random 64-bit integers, wrapping modulo 2**64),
  tie-broken by the label, with a stable sort. Examples with equal keys then have equal
  content, so the order, and hence every array, is a function of the set of examples alone.
  (Should two different images ever share a hash, the order falls back to comparing the
  pixels themselves.)

Validation split:
  carved from the training split by ``numpy.random.default_rng(seed).permutation``: the first
  ``validation_size`` permuted indices become the validation split, the rest the training
  split. Both keep the canonical order (the training loop shuffles anyway). Test images are
  never touched.

Accepted files:
  each of the four files may be the official ``.gz`` (``train-images-idx3-ubyte.gz``), the
  same file uncompressed (``train-images-idx3-ubyte``), or either under the dotted name many
  copies use (``train-images.idx3-ubyte[.gz]``); gzip is recognised by its magic bytes. When
  a folder holds several of these for one file, the first in that order is used (the
  official ``.gz`` first) and the others are named in a debug log. For ``mnist`` the digests
  of the decompressed IDX data are recorded as well as those of the official ``.gz`` files,
  so an uncompressed or re-compressed copy is verified byte for byte. For ``fashion_mnist``
  and ``kmnist`` only the digests of the official ``.gz`` files are recorded: their files
  must be those ``.gz`` files (under either name), and any other form is refused because it
  cannot be verified. The ``tfds`` backend prepares only from the official ``.gz`` files
  under their official names; ``"auto"`` uses ``"idx"`` for a folder holding another form.

Finding the data offline:
  the four files go in a folder named with ``--manual_dir`` or the environment variable
  ``DIGITS_MANUAL_DIR`` (see :func:`resolve_manual_dir`). Without one, the ``idx`` backend
  looks in ``~/.digits_jax/<name>`` and otherwise downloads there; ``tfds`` uses data already
  prepared in its ``data_dir`` and otherwise downloads. Either way, when the download host is
  unreachable the loader fails within seconds with a :class:`DataError` that says where to put
  the files, instead of hanging in retries.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import logging
import os
import pathlib
import socket
import struct
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

_log = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("mnist", "fashion_mnist", "kmnist")
BACKENDS: tuple[str, ...] = ("auto", "tfds", "idx")

MANUAL_DIR_ENV = "DIGITS_MANUAL_DIR"
# Number of label values in every dataset here; the one definition other modules import.
NUM_CLASSES = 10
IMAGE_SIZE = 28

# Seconds to wait for the download host to accept a TCP connection (and for each read of a
# download). Short, because an unreachable host is the usual offline case and must not hang.
NETWORK_TIMEOUT_S = 3.0

_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions (count, rows, cols)
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension (count)
_IDX_NDIM = {_IDX_IMAGES_MAGIC: 3, _IDX_LABELS_MAGIC: 1}
_GZIP_MAGIC = b"\x1f\x8b"


class DataError(Exception):
  """The data cannot be loaded; the message names the file or problem and how to fix it."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a dataset.

  Attributes:
    images: ``(N, 28, 28, 1)`` ``float32`` in ``[0, 1]``, NHWC.
    labels: ``(N,)`` ``int32`` in ``[0, num_classes)``.
  """

  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Datasets:
  """The three splits of one dataset and where they came from.

  Attributes:
    train: training examples (the training split minus the validation examples).
    validation: ``validation_size`` examples held out from the training split.
    test: the official test split, unchanged except for the canonical order.
    name: dataset name, one of :data:`DATASETS`.
    backend: the backend that actually loaded it, ``"tfds"`` or ``"idx"``.
    num_classes: number of label values.
  """

  train: Split
  validation: Split
  test: Split
  name: str
  backend: str
  num_classes: int = NUM_CLASSES


@dataclasses.dataclass(frozen=True)
class _File:
  """One source file: the official ``.gz`` name (the one tensorflow-datasets expects in a
  manual dir), its size and SHA-256, and, where recorded, the size and SHA-256 of the IDX
  data it decompresses to (``None``: only the official ``.gz`` can be verified)."""

  name: str
  size: int
  sha256: str
  raw_size: int | None = None
  raw_sha256: str | None = None


@dataclasses.dataclass(frozen=True)
class _Source:
  """Where a dataset's four IDX files come from and what they must hash to."""

  base_url: str
  files: Mapping[str, _File]  # keys: train_images, train_labels, test_images, test_labels


# URLs, sizes and SHA-256 digests of the .gz files as registered in tensorflow-datasets 4.9.10
# (tensorflow_datasets/url_checksums/{mnist,fashion_mnist,kmnist}.txt). Using tfds' file names
# means one folder serves as manual_dir for both backends. For mnist, the sizes and SHA-256
# digests of the decompressed IDX data were computed from those official .gz files; for
# fashion_mnist and kmnist they are not recorded, so only their official .gz files verify.
_SOURCES: dict[str, _Source] = {
  "mnist": _Source(
    base_url="https://storage.googleapis.com/cvdf-datasets/mnist/",
    files={
      "train_images": _File(
        "train-images-idx3-ubyte.gz",
        9912422,
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        47040016,
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
      ),
      "train_labels": _File(
        "train-labels-idx1-ubyte.gz",
        28881,
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        60008,
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
      ),
      "test_images": _File(
        "t10k-images-idx3-ubyte.gz",
        1648877,
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        7840016,
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
      ),
      "test_labels": _File(
        "t10k-labels-idx1-ubyte.gz",
        4542,
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        10008,
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
      ),
    },
  ),
  "fashion_mnist": _Source(
    base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    files={
      "train_images": _File(
        "train-images-idx3-ubyte.gz",
        26421880,
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
      ),
      "train_labels": _File(
        "train-labels-idx1-ubyte.gz",
        29515,
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
      ),
      "test_images": _File(
        "t10k-images-idx3-ubyte.gz",
        4422102,
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
      ),
      "test_labels": _File(
        "t10k-labels-idx1-ubyte.gz",
        5148,
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
      ),
    },
  ),
  "kmnist": _Source(
    base_url="http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
    files={
      "train_images": _File(
        "train-images-idx3-ubyte.gz",
        18165135,
        "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
      ),
      "train_labels": _File(
        "train-labels-idx1-ubyte.gz",
        29497,
        "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
      ),
      "test_images": _File(
        "t10k-images-idx3-ubyte.gz",
        3041136,
        "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
      ),
      "test_labels": _File(
        "t10k-labels-idx1-ubyte.gz",
        5120,
        "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",
      ),
    },
  ),
}

# Raw splits as decoded from either backend: uint8 images (N, 28, 28) and integer labels (N,).
_RawSplits = dict[str, tuple[np.ndarray, np.ndarray]]


# --------------------------------------------------------------------------------------------
# Public helpers


def resolve_manual_dir(manual_dir: str | os.PathLike[str] | None) -> str | None:
  """Returns the folder holding manually downloaded files, if any.

  Args:
    manual_dir: the ``--manual_dir`` flag value; ``None`` or ``""`` means not given.

  Returns:
    ``manual_dir`` if given, else the environment variable ``DIGITS_MANUAL_DIR`` if set and
    non-empty, else ``None``; with ``~`` expanded.
  """
  for value in (manual_dir, os.environ.get(MANUAL_DIR_ENV)):
    if value is not None and os.fspath(value) != "":
      return os.path.expanduser(os.fspath(value))
  return None


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
  """Reads an IDX file of unsigned bytes (MNIST images or labels), gzipped or raw.

  Args:
    path: the file; it is treated as gzip when it starts with the gzip magic bytes, whatever
      its name.

  Returns:
    A read-only ``uint8`` array: ``(count, rows, cols)`` for images (magic 2051) or
    ``(count,)`` for labels (magic 2049).

  Raises:
    DataError: the file cannot be read, is not valid gzip, is truncated, has trailing bytes,
      a wrong magic number or zero-sized image dimensions.
  """
  path = pathlib.Path(path)
  try:
    data = path.read_bytes()
  except OSError as e:
    raise DataError(f"cannot read IDX file {path}: {e}") from e
  return _parse_idx(data, str(path))


def load_datasets(
  name: str = "mnist",
  *,
  manual_dir: str | os.PathLike[str] | None = None,
  data_dir: str | os.PathLike[str] | None = None,
  validation_size: int = 5000,
  seed: int = 0,
  backend: str = "auto",
) -> Datasets:
  """Loads a dataset as canonically ordered NumPy splits.

  Args:
    name: one of :data:`DATASETS`.
    manual_dir: folder with the four IDX files: the official ``.gz`` files (the names
      tensorflow-datasets uses, e.g. ``train-images-idx3-ubyte.gz``) or, for the ``idx``
      backend, the other forms the module docstring lists; falls back to
      ``DIGITS_MANUAL_DIR``, see :func:`resolve_manual_dir`. When given, nothing is
      downloaded.
    data_dir: tensorflow-datasets' cache folder (``tfds`` backend only); ``None`` uses tfds'
      default, ``~/tensorflow_datasets``.
    validation_size: number of training examples held out as the validation split; 0 gives an
      empty validation split.
    seed: seed of the permutation that chooses the validation examples.
    backend: one of :data:`BACKENDS`; ``"auto"`` picks ``"idx"`` when the data folder holds
      anything but the official ``.gz`` files, which only ``"idx"`` reads.

  Returns:
    The train, validation and test splits; identical arrays whichever backend loaded them.

  Raises:
    DataError: unknown name or backend, bad ``validation_size``, files missing (and no network
      to download them), a checksum mismatch, corrupt data, or (``tfds`` backend) files not
      in the official ``.gz`` form.
  """
  if name not in DATASETS:
    raise DataError(f"unknown dataset {name!r}; valid names are: {', '.join(DATASETS)}")
  if backend not in BACKENDS:
    raise DataError(f"unknown data backend {backend!r}; valid backends are: {', '.join(BACKENDS)}")
  if isinstance(validation_size, bool) or not isinstance(validation_size, (int, np.integer)):
    raise DataError(f"validation_size must be an integer, got {validation_size!r}")
  if validation_size < 0:
    raise DataError(f"validation_size must be >= 0, got {validation_size}")
  manual = resolve_manual_dir(manual_dir)

  checked = None
  if backend == "auto":
    backend, checked = _auto_backend(name, manual)
  if backend == "tfds":
    raw = _load_tfds_raw(name, manual, data_dir)
  else:
    raw = _load_idx_raw(name, manual, checked)

  for split, (images, labels) in raw.items():
    _validate_arrays(name, split, images, labels)
  train_images, train_labels = _canonical(*raw["train"])
  test_images, test_labels = _canonical(*raw["test"])

  num_train = len(train_labels)
  if validation_size >= num_train:
    raise DataError(
      f"validation_size {validation_size} leaves no training examples: {name} has "
      f"{num_train} training examples; use a validation_size below {num_train}"
    )
  perm = np.random.default_rng(seed).permutation(num_train)
  # Sorted so that both splits stay in canonical order.
  val_idx = np.sort(perm[:validation_size])
  train_idx = np.sort(perm[validation_size:])

  return Datasets(
    train=_to_split(train_images[train_idx], train_labels[train_idx]),
    validation=_to_split(train_images[val_idx], train_labels[val_idx]),
    test=_to_split(test_images, test_labels),
    name=name,
    backend=backend,
  )


# --------------------------------------------------------------------------------------------
# IDX decoding and array checks


def _parse_idx(data: bytes, where: str) -> np.ndarray:
  """Decodes the bytes of an IDX file (gzipped or raw); ``where`` names it in errors."""
  if data[:2] == _GZIP_MAGIC:
    try:
      data = gzip.decompress(data)
    except EOFError as e:  # the gzip stream stops early: an interrupted download
      raise DataError(
        f"{where} is a truncated gzip file ({e}); delete it and download it again"
      ) from e
    except (OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError: bad header or CRC
      raise DataError(
        f"{where} is not a valid gzip file ({e}); delete it and download it again"
      ) from e
  if len(data) < 4:
    raise DataError(
      f"{where} is too short ({len(data)} bytes) to be an IDX file; delete it and download it again"
    )
  (magic,) = struct.unpack(">I", data[:4])
  if magic not in _IDX_NDIM:
    raise DataError(
      f"{where} has IDX magic number {magic} (0x{magic:08x}), expected {_IDX_IMAGES_MAGIC} "
      f"(images) or {_IDX_LABELS_MAGIC} (labels); it is not an MNIST-style IDX file, or it "
      "is corrupt: download it again"
    )
  ndim = _IDX_NDIM[magic]
  header = 4 + 4 * ndim
  if len(data) < header:
    raise DataError(
      f"{where} is truncated inside its IDX header ({len(data)} of {header} "
      "bytes); delete it and download it again"
    )
  dims = struct.unpack(f">{ndim}I", data[4:header])
  if any(d == 0 for d in dims[1:]):
    raise DataError(
      f"{where} declares image dimensions {dims[1:]}; each must be positive. "
      "The file is corrupt: download it again"
    )
  expected = int(np.prod(dims, dtype=np.int64))
  payload = len(data) - header
  if payload < expected:
    raise DataError(
      f"{where} is truncated: its header {dims} needs {expected} data bytes, "
      f"found {payload}; delete it and download it again"
    )
  if payload > expected:
    raise DataError(
      f"{where} has {payload - expected} bytes after the {expected} its header "
      f"{dims} declares; it is corrupt: download it again"
    )
  return np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(dims)


def _validate_arrays(
  name: str,
  split: str,
  images: np.ndarray,
  labels: np.ndarray,
  paths: tuple[str, str] | None = None,
) -> None:
  """Checks decoded arrays: 28x28 images, one label per image, labels in range.

  ``paths`` (images file, labels file), when the arrays come from files, are named in
  the errors.
  """
  where = f"{name} {split} split"
  images_file, labels_file = (
    (f"the images file {paths[0]}", f"the labels file {paths[1]}")
    if paths
    else ("the images file", "the labels file")
  )
  if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
    raise DataError(
      f"{where}: images have shape {images.shape}, expected "
      f"(N, {IMAGE_SIZE}, {IMAGE_SIZE}); {images_file} is wrong or corrupt"
    )
  if labels.ndim != 1:
    raise DataError(
      f"{where}: labels have shape {labels.shape}, expected (N,); {labels_file} is wrong or corrupt"
    )
  if len(images) != len(labels):
    raise DataError(
      f"{where}: {len(images)} images but {len(labels)} labels; {images_file} "
      f"and {labels_file} do not belong together"
    )
  if len(labels) == 0:
    raise DataError(f"{where} is empty; {images_file} and {labels_file} are wrong or corrupt")
  lo, hi = int(labels.min()), int(labels.max())
  if lo < 0 or hi >= NUM_CLASSES:
    raise DataError(
      f"{where}: labels range over [{lo}, {hi}], expected [0, {NUM_CLASSES}); "
      f"{labels_file} is corrupt: download it again"
    )


# --------------------------------------------------------------------------------------------
# Canonical order and conversion


def _content_keys(flat: np.ndarray) -> np.ndarray:
  """64-bit content hashes of the rows of a ``(N, D)`` uint8 array."""
  # Fixed seed: the key (and so the order) must be the same on every host and every run.
  weights = np.random.default_rng(0x5EED).integers(
    0, np.iinfo(np.uint64).max, size=flat.shape[1], dtype=np.uint64, endpoint=True
  )
  keys = np.empty(len(flat), dtype=np.uint64)
  # Chunks bound the uint64 temporary (8x the uint8 rows); integer matmul wraps modulo 2**64.
  chunk = 8192
  for start in range(0, len(flat), chunk):
    keys[start : start + chunk] = flat[start : start + chunk].astype(np.uint64) @ weights
  return keys


def _canonical_order(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Indices that sort examples by (content hash, label), stable; see the module docstring."""
  flat = images.reshape(len(images), -1)
  keys = _content_keys(flat)
  order = np.lexsort((labels, keys))  # lexsort is stable; its last key is the primary one
  sorted_keys, sorted_labels = keys[order], labels[order]
  tied = np.flatnonzero(
    (sorted_keys[1:] == sorted_keys[:-1]) & (sorted_labels[1:] == sorted_labels[:-1])
  )
  if tied.size and not np.array_equal(flat[order[tied]], flat[order[tied + 1]]):
    # A hash collision between different images (odds ~2**-50 per dataset): break the tie by
    # the pixels themselves so the order still depends on content only.
    order = np.lexsort((*flat.T[::-1], labels, keys))
  return order


def _canonical(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  order = _canonical_order(images, labels)
  return images[order], labels[order].astype(np.int32)


def _to_split(images: np.ndarray, labels: np.ndarray) -> Split:
  """uint8 (N, 28, 28) -> float32 (N, 28, 28, 1) in [0, 1]; the same arithmetic for both
  backends, so their float arrays match bit for bit."""
  out = images.astype(np.float32)[..., None]
  np.divide(out, np.float32(255.0), out=out)
  return Split(images=out, labels=np.ascontiguousarray(labels, dtype=np.int32))


# --------------------------------------------------------------------------------------------
# Locating, checking and downloading the files


def _default_dir(name: str) -> pathlib.Path:
  return pathlib.Path.home() / ".digits_jax" / name


def _file_list(source: _Source) -> str:
  return ", ".join(f.name for f in source.files.values())


def _missing_data_error(name: str, reason: str) -> DataError:
  source = _SOURCES[name]
  return DataError(
    f"{reason}. To use {name} offline, put its four files ({_file_list(source)}, from "
    f"{source.base_url}) in a folder and pass it with --manual_dir=FOLDER (manual_dir= in "
    f"Python) or set the environment variable {MANUAL_DIR_ENV}=FOLDER; or put them in "
    f"{_default_dir(name)}."
  )


def _candidate_names(f: _File) -> tuple[str, ...]:
  """The names accepted for one file, preferred first: the official ``.gz``, the same name
  uncompressed, then the dotted variant (``train-images.idx3-ubyte``) gzipped and not."""
  stem = f.name.removesuffix(".gz")
  dotted = ".idx".join(stem.rsplit("-idx", 1))
  return (f"{stem}.gz", stem, f"{dotted}.gz", dotted)


def _has_any_file(folder: pathlib.Path, name: str) -> bool:
  return any(
    (folder / n).is_file() for f in _SOURCES[name].files.values() for n in _candidate_names(f)
  )


def _forms_note(name: str) -> str:
  f = _SOURCES[name].files["train_images"]
  names = _candidate_names(f)
  if f.raw_sha256 is None:
    return (
      f"the dotted names ({names[2]}) are accepted too; for {name} only the official "
      ".gz files can be verified, so uncompressed or re-compressed copies are not"
    )
  return f"each may also be uncompressed ({names[1]}) or use the dotted name ({names[3]}[.gz])"


def _locate(folder: pathlib.Path, name: str) -> dict[str, pathlib.Path]:
  """Finds the four files of ``name`` in ``folder`` under any accepted name, preferring the
  official ``.gz``; raises a :class:`DataError` naming what is missing."""
  source = _SOURCES[name]
  if not folder.is_dir():
    raise DataError(
      f"data folder {folder} for {name} does not exist (or is not a folder); it must hold "
      f"{_file_list(source)}. Fix --manual_dir / {MANUAL_DIR_ENV}"
    )
  found, missing = {}, []
  for role, f in source.files.items():
    present = [folder / n for n in _candidate_names(f) if (folder / n).is_file()]
    if not present:
      missing.append(f.name)
      continue
    found[role] = present[0]
    if len(present) > 1:
      _log.debug(
        "%s: using %s, ignoring %s", folder, present[0].name, ", ".join(p.name for p in present[1:])
      )
  if missing:
    raise DataError(
      f"data folder {folder} lacks {', '.join(missing)}; {name} needs the four files "
      f"{_file_list(source)} (download them from {source.base_url}); {_forms_note(name)}"
    )
  return found


@dataclasses.dataclass(frozen=True)
class _Checked:
  """One file that passed its checksum.

  Attributes:
    path: the file.
    data: its bytes for :func:`_parse_idx`: gzipped as read, or the verified IDX data.
    form: ``"official"`` (the official ``.gz``, byte for byte, under its official name),
      ``"renamed"`` (the same bytes under the dotted name), ``"re-compressed"`` (another gzip
      of the official IDX data) or ``"uncompressed"``.
  """

  path: pathlib.Path
  data: bytes
  form: str


def _check_file(path: pathlib.Path, f: _File, name: str) -> _Checked:
  """Reads ``path`` and verifies it against ``f``: the ``.gz`` digest, else (when recorded)
  the digest of the IDX data it holds, gzipped or not."""
  url = _SOURCES[name].base_url + f.name
  try:
    data = path.read_bytes()
  except OSError as e:
    raise DataError(f"cannot read {path}: {e}") from e
  gzipped = data[:2] == _GZIP_MAGIC
  digest = hashlib.sha256(data).hexdigest()
  if gzipped and digest == f.sha256:
    return _Checked(path, data, "official" if path.name == f.name else "renamed")
  refetch = (
    f"the file is corrupt, truncated or not the official {name} file: delete it and "
    f"download it again from {url}"
  )
  gz_mismatch = (
    f"checksum mismatch for {path}: expected sha256 {f.sha256}, got {digest} "
    f"({len(data)} bytes, expected {f.size})"
  )
  if f.raw_sha256 is None:
    if not gzipped:
      raise DataError(
        f"cannot verify {path}: it is not gzipped, and for {name} only the SHA-256 digests "
        f"of the official .gz files are recorded; replace it with the official {f.name} "
        f"from {url}"
      )
    raise DataError(
      f"{gz_mismatch}; {refetch} (for {name} only the official .gz files can "
      "be verified, not re-compressed copies)"
    )
  raw = data
  if gzipped:
    try:
      raw = gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as e:  # so not a re-compression of the official data
      raise DataError(f"{gz_mismatch}, and it does not decompress ({e}); {refetch}") from e
  raw_digest = hashlib.sha256(raw).hexdigest()
  if raw_digest != f.raw_sha256:
    what = "its decompressed IDX data" if gzipped else "its IDX data"
    raise DataError(
      f"checksum mismatch for {path}: expected sha256 {f.raw_sha256} for {what}, got "
      f"{raw_digest} ({len(raw)} bytes, expected {f.raw_size}); {refetch}"
    )
  form = "re-compressed" if gzipped else "uncompressed"
  _log.debug(
    "%s: %s copy of the official %s, verified by its IDX data's sha256", path, form, f.name
  )
  return _Checked(path, raw, form)


def _read_checked(folder: pathlib.Path, name: str) -> dict[str, _Checked]:
  """Finds and reads the four files of ``name`` in ``folder`` and checks their SHA-256."""
  located = _locate(folder, name)
  return {role: _check_file(located[role], f, name) for role, f in _SOURCES[name].files.items()}


def _network_reachable(url: str, timeout: float = NETWORK_TIMEOUT_S) -> bool:
  """Whether a TCP connection to the host of ``url`` (or its proxy) opens within ``timeout``."""
  parts = urllib.parse.urlsplit(url)
  # Probe what urllib will actually connect to: the proxy, unless no_proxy exempts the host.
  proxy = urllib.request.getproxies().get(parts.scheme)
  if proxy and "://" in proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
    target = urllib.parse.urlsplit(proxy)
  else:
    target = parts
  host = target.hostname or ""
  port = target.port or (443 if target.scheme == "https" else 80)
  ok: list[bool] = []

  def attempt() -> None:
    try:
      socket.create_connection((host, port), timeout=timeout).close()
      ok.append(True)
    except OSError:
      pass

  # A thread, because the socket timeout does not cover name resolution, which can stall far
  # longer than `timeout` on a host with a broken resolver.
  thread = threading.Thread(target=attempt, daemon=True)
  thread.start()
  thread.join(timeout + 1.0)
  return bool(ok)


def _download(url: str, dest: pathlib.Path, expected: _File) -> None:
  """Downloads ``url`` to ``dest``, verifying size and SHA-256; ``dest`` appears atomically."""
  dest.parent.mkdir(parents=True, exist_ok=True)
  # Temp file in the same folder, then os.replace: an interrupted download never leaves a
  # partial file under the real name.
  fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
  try:
    digest = hashlib.sha256()
    size = 0
    with (
      os.fdopen(fd, "wb") as out,
      urllib.request.urlopen(url, timeout=NETWORK_TIMEOUT_S * 10) as response,
    ):
      while chunk := response.read(1 << 20):
        digest.update(chunk)
        size += len(chunk)
        out.write(chunk)
    if digest.hexdigest() != expected.sha256:
      raise DataError(
        f"checksum mismatch for the download of {url}: expected sha256 {expected.sha256}, "
        f"got {digest.hexdigest()} ({size} bytes, expected {expected.size}); try again, or "
        f"download it by hand into a folder given as --manual_dir / {MANUAL_DIR_ENV}"
      )
    os.replace(tmp, dest)
  except (OSError, http.client.HTTPException) as e:  # URLError and timeouts are OSErrors
    raise DataError(
      f"downloading {url} failed ({e}); download it by hand into a folder given as "
      f"--manual_dir / {MANUAL_DIR_ENV}"
    ) from e
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def _ensure_default_files(name: str) -> pathlib.Path:
  """Makes sure ``~/.digits_jax/<name>`` holds the four files, downloading the missing ones."""
  source = _SOURCES[name]
  folder = _default_dir(name)
  missing = [
    f for f in source.files.values() if not any((folder / n).is_file() for n in _candidate_names(f))
  ]
  if not missing:
    return folder
  if not _network_reachable(source.base_url):
    raise _missing_data_error(
      name,
      f"no {name} data in {folder} and {urllib.parse.urlsplit(source.base_url).hostname} "
      "is unreachable (no network?)",
    )
  for f in missing:
    _log.info("downloading %s%s to %s", source.base_url, f.name, folder)
    _download(source.base_url + f.name, folder / f.name, f)
  return folder


# --------------------------------------------------------------------------------------------
# Backends


def _auto_backend(name: str, manual_dir: str | None) -> tuple[str, dict[str, _Checked] | None]:
  """Picks the backend for ``"auto"``: ``"tfds"`` when it imports and the data folder, if
  there is one, holds exactly the official ``.gz`` files; ``"idx"`` otherwise. Also returns
  the files it checked, when the idx backend can reuse them."""
  folder = pathlib.Path(manual_dir) if manual_dir is not None else _default_dir(name)
  if manual_dir is None and not _has_any_file(folder, name):
    return ("tfds" if _tfds_available() else "idx"), None
  try:
    checked = _read_checked(folder, name)
  except DataError:
    return "idx", None  # the idx backend reports the problem (or downloads what is missing)
  others = sorted(c.path.name for c in checked.values() if c.form != "official")
  if others:
    _log.info(
      "%s holds %s, which tensorflow-datasets cannot prepare from; using the idx "
      "backend (identical arrays)",
      folder,
      ", ".join(others),
    )
    return "idx", checked
  return ("tfds" if _tfds_available() else "idx"), checked


def _load_idx_raw(
  name: str, manual_dir: str | None, checked: dict[str, _Checked] | None = None
) -> _RawSplits:
  """The ``idx`` backend: the four files from the manual dir or the default folder (or
  ``checked``, the files already read and verified from there)."""
  if checked is None:
    folder = pathlib.Path(manual_dir) if manual_dir is not None else _ensure_default_files(name)
    checked = _read_checked(folder, name)
  paths = {role: str(c.path) for role, c in checked.items()}
  arrays = {role: _parse_idx(c.data, paths[role]) for role, c in checked.items()}
  raw = {
    split: (arrays[f"{split}_images"], arrays[f"{split}_labels"]) for split in ("train", "test")
  }
  for split, (images, labels) in raw.items():  # here, where the errors can name the files
    _validate_arrays(
      name, split, images, labels, paths=(paths[f"{split}_images"], paths[f"{split}_labels"])
    )
  return raw


def _tfds_available() -> bool:
  """Whether TensorFlow and tensorflow-datasets import (imports them: several seconds)."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tensorflow_datasets  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

    _hide_gpus(tf)
  except Exception as e:  # noqa: BLE001  pylint: disable=broad-except
    # Not only ImportError: a broken TensorFlow install must not stop the idx path.
    _log.info(
      "tensorflow-datasets unavailable (%s: %s); using the idx backend", type(e).__name__, e
    )
    return False
  return True


def _import_tfds() -> Any:
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(
      f"backend 'tfds' needs tensorflow and tensorflow-datasets, which failed to import "
      f"({type(e).__name__}: {e}); install them or use backend='idx'"
    ) from e
  _hide_gpus(tf)
  return tfds


def _hide_gpus(tf: Any) -> None:
  """Keeps TensorFlow off the GPUs, as soon as it is imported: it would otherwise reserve
  GPU memory JAX needs."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):  # devices already initialised; nothing more to do
    pass


def _load_tfds_raw(
  name: str, manual_dir: str | None, data_dir: str | os.PathLike[str] | None
) -> _RawSplits:
  """The ``tfds`` backend: prepare (if needed) and read the whole dataset into memory."""
  tfds = _import_tfds()
  source = _SOURCES[name]
  builder = tfds.builder(
    name, data_dir=None if data_dir is None else os.fspath(data_dir), try_gcs=False
  )
  if not builder.is_prepared():
    if manual_dir is None and all(
      (_default_dir(name) / f.name).is_file() for f in source.files.values()
    ):
      manual_dir = str(_default_dir(name))  # files a previous idx run downloaded
    if manual_dir is not None:
      # Checked here because tfds silently falls back to downloading a missing or mismatching
      # file, which hangs offline; this also gives the same errors as the idx backend.
      checked = _read_checked(pathlib.Path(manual_dir), name)
      others = [f"{c.path.name} ({c.form})" for c in checked.values() if c.form != "official"]
      if others:
        raise DataError(
          f"the tfds backend prepares {name} only from its official .gz files, but "
          f"{manual_dir} holds {', '.join(others)}; use --data_backend=idx (backend='idx' "
          "in Python), which reads these files and gives identical arrays, or put the "
          f"official files ({_file_list(source)}, from {source.base_url}) in {manual_dir}"
        )
    elif not _network_reachable(source.base_url):
      raise _missing_data_error(
        name,
        f"{name} is not prepared in the tensorflow-datasets folder {builder.data_dir} "
        f"and {urllib.parse.urlsplit(source.base_url).hostname} is unreachable (no network?)",
      )
    try:
      builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
      )
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(
        f"tensorflow-datasets failed to prepare {name} in {builder.data_dir} "
        f"({type(e).__name__}: {e}); put the four files ({_file_list(source)}) in a folder "
        f"given as --manual_dir / {MANUAL_DIR_ENV}, or use backend='idx'"
      ) from e
  raw = {}
  for split in ("train", "test"):
    batch = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, as_supervised=True))
    images, labels = batch
    if images.ndim == 4 and images.shape[-1] == 1:
      images = images[..., 0]
    raw[split] = (np.asarray(images, dtype=np.uint8), np.asarray(labels))
  return raw
