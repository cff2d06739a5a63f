"""Result files written atomically: a killed run never leaves a truncated file.

Every writer puts the bytes in a temporary file in the same directory, flushes
and fsyncs it, then ``os.replace``-s it over the target, which is atomic on POSIX.
Processes that share a folder take turns with :func:`exclusive_lock`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import math
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def write_text(path: str | os.PathLike, text: str) -> None:
  write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any) -> None:
  write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
  return json.loads(Path(path).read_text())


def write_jsonl(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
  """Rewrites a whole JSON-lines file (rows are few: one per epoch)."""
  write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  path = Path(path)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class LockError(OSError):
  """A lock that cannot be taken: held by another process, or unsupported by the filesystem."""


class LockBusyError(LockError):
  """Another process holds the lock; ``holder`` is what it wrote into the lock file."""

  def __init__(self, path: Path, holder: str):
    self.path = path
    self.holder = holder or "another process"
    super().__init__(f"{path} is held by {self.holder}")


def lock_holder(path: str | os.PathLike) -> str:
  """What the holder of the lock file ``path`` wrote (``host pid N``); empty if nothing."""
  try:
    return Path(path).read_text().strip()
  except OSError:
    return ""


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, *, wait_s: float = 0.0) -> Iterator[None]:
  """Holds an exclusive ``flock`` on ``path`` (created if absent) for the ``with`` block.

  The kernel drops the lock when its holder exits, however it dies (SIGKILL included), so
  a lock is never stale. While held, the file names the holder's host and pid, for the
  message of another process that finds it busy. The file stays when the lock is released.

  Args:
    path: the lock file.
    wait_s: how long to wait for another holder to let go before giving up.

  Raises:
    LockBusyError: another process still holds it after ``wait_s``.
    LockError: the filesystem of ``path`` does not support ``flock``.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    deadline = time.monotonic() + wait_s
    while True:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
      except BlockingIOError:
        if time.monotonic() >= deadline:
          raise LockBusyError(path, lock_holder(path)) from None
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
      except OSError as e:
        if e.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
          raise LockError(
            f"the filesystem of {path.parent} does not support file locks (flock: "
            f"{os.strerror(e.errno)}); use a folder on a filesystem that does (on Lustre, "
            "one mounted with -o flock)"
          ) from e
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
    try:
      yield
    finally:
      os.ftruncate(fd, 0)
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)


def jsonable(obj: Any) -> Any:
  """``obj`` as plain JSON types: dataclasses as dicts, paths as strings, tuples as lists,
  mapping keys as strings, and NaN or infinite floats as ``None``."""
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    return jsonable(dataclasses.asdict(obj))
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  if isinstance(obj, Path):
    return str(obj)
  if isinstance(obj, Mapping):
    return {str(k): jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [jsonable(v) for v in obj]
  return obj
