"""Where each dataset's IDX files come from and what they must hash to; finding them in a
folder under any accepted name, checking their SHA-256 digests, and downloading them."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import logging
import os
import pathlib
import socket
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Mapping

import numpy as np

from digits_jax.data.idx import _GZIP_MAGIC, DataError

_log = logging.getLogger(__name__)

MANUAL_DIR_ENV = "DIGITS_MANUAL_DIR"

# Seconds to wait for the download host to accept a TCP connection (and for each read of a
# download). Short, because an unreachable host is the usual offline case and must not hang.
NETWORK_TIMEOUT_S = 3.0


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
# fashion_mnist, from the .gz files of Debian's dataset-fashion-mnist package (0.0~git20200523),
# which are the official files with another gzip header: given back the official header (file
# name and modification time) they hash to the digests above. For kmnist they are not
# recorded, so only its official .gz files verify.
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
        47040016,
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
      ),
      "train_labels": _File(
        "train-labels-idx1-ubyte.gz",
        29515,
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        60008,
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
      ),
      "test_images": _File(
        "t10k-images-idx3-ubyte.gz",
        4422102,
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        7840016,
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
      ),
      "test_labels": _File(
        "t10k-labels-idx1-ubyte.gz",
        5148,
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        10008,
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
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
    data: its bytes for :func:`digits_jax.data.idx._parse_idx`: gzipped as read, or the
      verified IDX data.
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
