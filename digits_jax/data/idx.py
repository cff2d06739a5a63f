"""The IDX file format of MNIST-like datasets, and :class:`DataError`, the one error the data
loader raises."""

from __future__ import annotations

import gzip
import os
import pathlib
import struct
import zlib

import numpy as np

_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions (count, rows, cols)
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension (count)
_IDX_NDIM = {_IDX_IMAGES_MAGIC: 3, _IDX_LABELS_MAGIC: 1}
_GZIP_MAGIC = b"\x1f\x8b"


class DataError(Exception):
  """The data cannot be loaded; the message names the file or problem and how to fix it."""


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
