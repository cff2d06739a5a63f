"""The project's C++ kernels for XLA:CPU: built on first use, then loaded from a cache.

:mod:`digits_jax.models.ops` computes convolutions on the CPU as im2col matrix products. XLA:CPU
builds the patches matrix (and sums its gradient back) from slices, pads and
concatenations several times slower than two plain loops do, so those two loops are
C++ (``csrc/im2col.cc``), called through XLA's FFI (``jax.ffi``) on XLA's own thread pool.
A network's first layer on one-channel images (convolution, bias, ReLU, max-pool) is one
fused C++ kernel with its gradients (``csrc/conv_relu_pool.cc``, :func:`conv_relu_pool`).

The sources are compiled once per machine with the C++ compiler (``$CXX``, else ``c++``)
against the FFI headers that ship with jaxlib, into ``$DIGITS_JAX_CACHE`` (default
``~/.cache/digits_jax``), under a name that hashes the source, the jax version, the
compiler and the processor, so a changed source or another machine sharing the home
directory rebuilds. Without a compiler, or with ``DIGITS_NATIVE=0``, :func:`available`
returns False and the ops fall back to XLA's own convolution: the same numbers, slower.

:func:`tune_allocator` is the other CPU lever: glibc returns large freed blocks to the
kernel and maps them again on the next step, and the page faults of re-touching tens of
MB of fresh memory cost more than some of the arithmetic. It changes a process-wide
setting, so nothing here calls it: the entry points do, at start-up (``--tune_malloc``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

log = logging.getLogger(__name__)

CSRC = Path(__file__).parent / "csrc"
SOURCES = (CSRC / "im2col.cc", CSRC / "conv_relu_pool.cc")
HEADERS = (CSRC / "parallel.h",)
MAX_FUSED_CHANNELS = 512  # conv_relu_pool.cc's kMaxChannels
TARGETS = {
  "digits_im2col": "DigitsIm2col",
  "digits_col2im": "DigitsCol2im",
  "digits_conv_relu_pool": "DigitsConvReluPool",
  "digits_conv_relu_pool_param_grad": "DigitsConvReluPoolParamGrad",
  "digits_conv_relu_pool_input_grad": "DigitsConvReluPoolInputGrad",
}
CXX_FLAGS = ("-O3", "-march=native", "-std=c++20", "-shared", "-fPIC", "-DNDEBUG", "-w")


class NativeBuildError(RuntimeError):
  pass


def cache_dir() -> Path:
  return Path(os.environ.get("DIGITS_JAX_CACHE", Path.home() / ".cache" / "digits_jax"))


def _cpu_signature() -> str:
  """Processor model and flags: a library built with -march=native runs only there."""
  try:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))
  except OSError:
    return platform.processor() + platform.machine()


def _compiler() -> str | None:
  return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")


def library_path(compiler: str) -> Path:
  """Where the build for this source, jax, compiler and processor lives."""
  key = hashlib.sha256()
  for part in (
    *(path.read_bytes() for path in (*SOURCES, *HEADERS)),
    jax.__version__.encode(),
    compiler.encode(),
    " ".join(CXX_FLAGS).encode(),
    _cpu_signature().encode(),
  ):
    key.update(part + b"\0")
  return cache_dir() / f"kernels-{key.hexdigest()[:16]}.so"


def build(compiler: str) -> Path:
  """Compiles the kernels unless this exact build is cached; returns the library path.

  Raises:
    NativeBuildError: the compiler failed (its output is in the message).
  """
  target = library_path(compiler)
  if target.exists():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  # Build under a temporary name and rename: concurrent processes never load half a file.
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
  os.close(fd)
  cmd = [compiler, *CXX_FLAGS, "-isystem", jax.ffi.include_dir(), *map(str, SOURCES), "-o", tmp]
  result = subprocess.run(cmd, capture_output=True, text=True)
  if result.returncode:
    os.unlink(tmp)
    raise NativeBuildError(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
  os.replace(tmp, target)
  log.info("built %s", target)
  return target


@functools.cache
def available() -> bool:
  """Whether the C++ kernels are built and registered with XLA for the CPU.

  False (with one warning saying why) when ``DIGITS_NATIVE=0``, off Linux/macOS, with no
  C++ compiler, or when the build fails; the callers then use XLA's own ops.
  """
  if os.environ.get("DIGITS_NATIVE", "1") == "0":
    return False
  if sys.platform not in ("linux", "darwin"):
    log.warning("digits_jax native kernels: unsupported platform %s; using XLA ops", sys.platform)
    return False
  compiler = _compiler()
  if compiler is None:
    log.warning(
      "digits_jax native kernels: no C++ compiler ($CXX, c++, g++) found; "
      "using XLA's convolutions, which train several times slower on CPU"
    )
    return False
  if _LOADED:  # registered earlier in this process (the cache was cleared)
    return True
  try:
    lib = ctypes.CDLL(str(build(compiler)))
  except (NativeBuildError, OSError) as e:
    log.warning("digits_jax native kernels unavailable, using XLA ops: %s", e)
    return False
  for name, symbol in TARGETS.items():
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  _LOADED.append(lib)  # keeps the library loaded for as long as XLA may call it
  return True


_LOADED: list[ctypes.CDLL] = []


def _registered() -> None:
  """Builds and registers the kernels if needed; a call site traced without them fails here."""
  if not available():
    raise NativeBuildError(
      "the digits_jax C++ kernels are not available (see the logged warning; DIGITS_NATIVE=0 "
      "turns them off): use digits_jax.models.ops, which falls back to XLA's ops"
    )


def use_native() -> bool:
  """Whether ops traced now should call the C++ kernels: on the CPU backend only."""
  return jax.default_backend() == "cpu" and available()


def im2col(x: jax.Array, kh: int, kw: int, pads: tuple[tuple[int, int], ...]) -> jax.Array:
  """Patches ``(..., Ho, Wo, kh*kw*C)`` of an NHWC array, taps in (row, column) order."""
  *lead, h, w, c = x.shape
  (top, bottom), (left, right) = pads
  shape = (*lead, h + top + bottom - kh + 1, w + left + right - kw + 1, kh * kw * c)
  _registered()
  call = jax.ffi.ffi_call(
    "digits_im2col", jax.ShapeDtypeStruct(shape, x.dtype), vmap_method="broadcast_all"
  )
  return call(x, kh=kh, kw=kw, pad_top=top, pad_left=left)


def col2im(
  patches: jax.Array,
  image_shape: tuple[int, ...],
  kh: int,
  kw: int,
  pads: tuple[tuple[int, int], ...],
) -> jax.Array:
  """The transpose of :func:`im2col`: sums each patches entry back onto its pixel."""
  shape = (*patches.shape[:-3], *image_shape[-3:])
  _registered()
  call = jax.ffi.ffi_call(
    "digits_col2im", jax.ShapeDtypeStruct(shape, patches.dtype), vmap_method="broadcast_all"
  )
  return call(patches, kh=kh, kw=kw, pad_top=pads[0][0], pad_left=pads[1][0])


def conv_relu_pool(
  x: jax.Array, kernel: jax.Array, bias: jax.Array, pads: tuple[tuple[int, int], ...]
) -> tuple[jax.Array, jax.Array]:
  """``max_pool_2x2(relu(conv(x, kernel) + bias))`` for one-channel ``x``, fused.

  Args:
    x: ``(..., H, W, 1)`` images.
    kernel: ``(kh, kw, 1, C)``.
    bias: ``(C,)``.
    pads: ((top, bottom), (left, right)) zero padding.

  Returns:
    The pooled ``(..., Hp, Wp, C)`` float32 values and, per pooled value, the int8 corner
    of its window (0-3, row-major) whose value won, or -1 where the maximum is <= 0 and
    no gradient flows back.
  """
  kh, kw, _, c = kernel.shape
  (top, bottom), (left, right) = pads
  shape = (*x.shape[:-3], (x.shape[-3] + top + bottom - kh + 1) // 2,
           (x.shape[-2] + left + right - kw + 1) // 2, c)  # fmt: skip
  _registered()
  call = jax.ffi.ffi_call(
    "digits_conv_relu_pool",
    (jax.ShapeDtypeStruct(shape, x.dtype), jax.ShapeDtypeStruct(shape, jnp.int8)),
    vmap_method="sequential",
  )
  return call(x, kernel, bias, pad_top=top, pad_left=left)


def conv_relu_pool_param_grad(
  x: jax.Array, corner: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...], pads
) -> tuple[jax.Array, jax.Array]:
  """The kernel and bias gradients of :func:`conv_relu_pool` for the pooled cotangent ``g``."""
  _registered()
  call = jax.ffi.ffi_call(
    "digits_conv_relu_pool_param_grad",
    (jax.ShapeDtypeStruct(kernel_shape, g.dtype), jax.ShapeDtypeStruct(kernel_shape[-1:], g.dtype)),
    vmap_method="sequential",
  )
  return call(x, corner, g, pad_top=pads[0][0], pad_left=pads[1][0])


def conv_relu_pool_input_grad(
  kernel: jax.Array, corner: jax.Array, g: jax.Array, x_shape: tuple[int, ...], pads
) -> jax.Array:
  """The image gradient of :func:`conv_relu_pool` for the pooled cotangent ``g``."""
  _registered()
  call = jax.ffi.ffi_call(
    "digits_conv_relu_pool_input_grad",
    jax.ShapeDtypeStruct(x_shape, g.dtype),
    vmap_method="sequential",
  )
  return call(kernel, corner, g, pad_top=pads[0][0], pad_left=pads[1][0])


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
ALLOCATOR_THRESHOLD = 1 << 30


@functools.cache
def tune_allocator() -> bool:
  """Keeps freed memory in the process (glibc ``mallopt``), so steps reuse warm pages.

  By default glibc serves blocks above a few MB with ``mmap`` and unmaps them when they
  are freed; XLA:CPU allocates each step's activations and temporaries anew, so every
  step page-faults its whole working set in again. Raising the mmap and trim thresholds
  to 1 GiB keeps that memory mapped (docs/speed.md has what it saved). The cost is that
  the process keeps its peak heap. A no-op off glibc or with ``DIGITS_TUNE_MALLOC=0``.

  Returns:
    Whether the thresholds were set.
  """
  if os.environ.get("DIGITS_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
    ok = all(
      libc.mallopt(param, ctypes.c_int(ALLOCATOR_THRESHOLD)) == 1
      for param in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD)
    )
  except (OSError, AttributeError):
    return False
  return ok
