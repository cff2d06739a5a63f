"""The ``tfds`` backend: tensorflow-datasets prepares and reads the dataset, kept off the GPUs."""

from __future__ import annotations

import logging
import os
import pathlib
import urllib.parse
from typing import Any

import numpy as np

from digits_jax.data.idx import DataError
from digits_jax.data.sources import (
  _SOURCES,
  MANUAL_DIR_ENV,
  _default_dir,
  _file_list,
  _missing_data_error,
  _network_reachable,
  _RawSplits,
  _read_checked,
)

_log = logging.getLogger(__name__)


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
