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
import logging
import os
import pathlib

import numpy as np

# The pieces, re-exported: ``digits_jax.data`` stays the one public entry.
from digits_jax.data.idx import (  # noqa: F401
  _GZIP_MAGIC,
  _IDX_IMAGES_MAGIC,
  _IDX_LABELS_MAGIC,
  _IDX_NDIM,
  DataError,
  _parse_idx,
  read_idx,
)
from digits_jax.data.sources import (  # noqa: F401
  _SOURCES,
  MANUAL_DIR_ENV,
  NETWORK_TIMEOUT_S,
  _candidate_names,
  _check_file,
  _Checked,
  _default_dir,
  _download,
  _ensure_default_files,
  _File,
  _file_list,
  _forms_note,
  _has_any_file,
  _locate,
  _missing_data_error,
  _network_reachable,
  _RawSplits,
  _read_checked,
  _Source,
)
from digits_jax.data.tfds_backend import (  # noqa: F401
  _hide_gpus,
  _import_tfds,
  _load_tfds_raw,
  _tfds_available,
)

_log = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("mnist", "fashion_mnist", "kmnist")
BACKENDS: tuple[str, ...] = ("auto", "tfds", "idx")

# Number of label values in every dataset here; the one definition other modules import.
NUM_CLASSES = 10
IMAGE_SIZE = 28


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
# Array checks


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
