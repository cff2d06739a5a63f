"""The C++ kernels of digits_jax.models.native: build, cache, fallback, and exact numerics."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digits_jax.models import native


def reference_im2col(x, kh: int, kw: int, pads, xnp=np):
  """The definition: patches[..., i, j, (di*kw + dj)*C + c] = padded[..., i+di, j+dj, c].

  ``xnp`` is ``np`` (for exact comparisons) or ``jnp`` (differentiable, for the adjoint).
  """
  (top, bottom), (left, right) = pads
  padded = xnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(top, bottom), (left, right), (0, 0)])
  ho, wo = padded.shape[-3] - kh + 1, padded.shape[-2] - kw + 1
  taps = [padded[..., di : di + ho, dj : dj + wo, :] for di in range(kh) for dj in range(kw)]
  return xnp.concatenate(taps, axis=-1)


CASES = [  # (shape, kh, kw, pads)
  ((2, 28, 28, 1), 3, 3, ((0, 0), (0, 0))),
  ((3, 13, 13, 32), 3, 3, ((0, 0), (0, 0))),
  ((2, 7, 9, 3), 3, 3, ((1, 1), (1, 1))),
  ((1, 6, 5, 4), 2, 2, ((0, 1), (0, 1))),
  ((2, 9, 8, 4), 5, 3, ((2, 2), (0, 0))),
  ((4, 2, 5, 6, 2), 3, 3, ((1, 1), (1, 1))),  # a leading models axis
]


@pytest.fixture(scope="module", autouse=True)
def kernels():
  assert native.available(), "the C++ kernels did not build: see the logged warning"


@pytest.mark.parametrize("shape,kh,kw,pads", CASES)
def test_im2col_equals_its_definition_exactly(shape, kh, kw, pads):
  x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  patches = jax.jit(native.im2col, static_argnums=(1, 2, 3))(jnp.asarray(x), kh, kw, pads)
  np.testing.assert_array_equal(np.asarray(patches), reference_im2col(x, kh, kw, pads))


@pytest.mark.parametrize("shape,kh,kw,pads", CASES)
def test_col2im_is_the_transpose_of_im2col(shape, kh, kw, pads):
  # <im2col(x), p> == <x, col2im(p)> for all x, p: col2im is im2col's adjoint, which
  # is what the input gradient of a convolution needs. Checked against jax.vjp of the
  # pure-jnp im2col as well.
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal(shape).astype(np.float32))
  p = jnp.asarray(
    rng.standard_normal(reference_im2col(np.asarray(x), kh, kw, pads).shape).astype(np.float32)
  )
  back = jax.jit(native.col2im, static_argnums=(1, 2, 3, 4))(p, shape, kh, kw, pads)
  assert back.shape == shape
  _, vjp = jax.vjp(lambda x: reference_im2col(x, kh, kw, pads, xnp=jnp), x)
  np.testing.assert_allclose(back, vjp(p)[0], rtol=1e-5, atol=1e-5)
  lhs = jnp.vdot(native.im2col(x, kh, kw, pads), p)
  np.testing.assert_allclose(lhs, jnp.vdot(x, back), rtol=1e-4)


def test_kernels_under_vmap_match_the_unbatched_calls():
  x = jax.random.normal(jax.random.key(0), (3, 2, 9, 9, 4))
  pads = ((1, 1), (1, 1))
  batched = jax.jit(jax.vmap(lambda x: native.im2col(x, 3, 3, pads)))(x)
  for m in range(3):
    np.testing.assert_array_equal(batched[m], native.im2col(x[m], 3, 3, pads))


def test_build_is_cached_per_source_and_machine(tmp_path, monkeypatch):
  monkeypatch.setenv("DIGITS_JAX_CACHE", str(tmp_path))
  compiler = native._compiler()
  first = native.build(compiler)
  assert first.parent == tmp_path and first.exists()
  mtime = first.stat().st_mtime_ns
  assert native.build(compiler) == first and first.stat().st_mtime_ns == mtime  # no rebuild
  assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary files left


def test_a_failing_compiler_names_the_command(tmp_path, monkeypatch):
  monkeypatch.setenv("DIGITS_JAX_CACHE", str(tmp_path))
  with pytest.raises(native.NativeBuildError, match="false"):
    native.build("/bin/false")
  assert not list(tmp_path.iterdir())


def test_no_compiler_falls_back_with_a_warning(monkeypatch, caplog):
  monkeypatch.setattr(native, "_compiler", lambda: None)
  native.available.cache_clear()
  try:
    with caplog.at_level(logging.WARNING, logger="digits_jax.models.native"):
      assert not native.available()
    assert "no C++ compiler" in caplog.text
  finally:
    monkeypatch.undo()
    native.available.cache_clear()
  assert native.available()  # and back, for the tests that follow


def test_disabled_by_environment(monkeypatch):
  monkeypatch.setenv("DIGITS_NATIVE", "0")
  native.available.cache_clear()
  try:
    assert not native.available() and not native.use_native()
  finally:
    monkeypatch.delenv("DIGITS_NATIVE")
    native.available.cache_clear()
