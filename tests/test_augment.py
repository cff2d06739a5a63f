"""On-device augmentation: exact on known transforms, seeded, shape-preserving."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from digits_jax import augment


def _image(seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), (28, 28, 1))


def test_zero_transform_is_identity():
  x = _image()
  np.testing.assert_allclose(augment._warp(x, jnp.float32(0), jnp.zeros(2)), x, atol=1e-6)


def test_integer_shift_moves_pixels_and_fills_with_background():
  x = _image()
  out = augment._warp(x, jnp.float32(0), jnp.array([1.0, -2.0]))  # down 1, left 2
  expected = np.zeros_like(x)
  expected[1:, :-2] = np.asarray(x)[:-1, 2:]
  np.testing.assert_allclose(out, expected, atol=1e-6)


def test_quarter_turn_is_a_transpose_flip():
  x = _image()
  out = augment._warp(x, jnp.float32(np.pi / 2), jnp.zeros(2))
  # Rotating the sampling grid by +90 degrees about the centre is np.rot90 (k=-1 here).
  np.testing.assert_allclose(out, np.rot90(np.asarray(x), k=-1, axes=(0, 1)), atol=1e-5)


def test_batch_is_seeded_and_bounded():
  batch = jax.random.uniform(jax.random.PRNGKey(0), (8, 28, 28, 1))
  a = augment.random_warp(jax.random.PRNGKey(1), batch)
  b = augment.random_warp(jax.random.PRNGKey(1), batch)
  c = augment.random_warp(jax.random.PRNGKey(2), batch)
  assert a.shape == batch.shape and a.dtype == batch.dtype
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_zoom_scales_about_the_centre():
  x = jax.random.uniform(jax.random.PRNGKey(3), (9, 9, 1))  # centre pixel (4, 4)
  out = augment._warp(x, jnp.float32(0), jnp.zeros(2), jnp.float32(2.0))
  # Twice as large: the output pixel 2k from the centre shows the input pixel k from it.
  for k in (-2, -1, 1, 2):
    np.testing.assert_allclose(out[4 + 2 * k, 4], x[4 + k, 4], atol=1e-6)
    np.testing.assert_allclose(out[4, 4 + 2 * k], x[4, 4 + k], atol=1e-6)


def test_strengths_are_settings_and_no_zoom_keeps_the_earlier_draws():
  batch = jax.random.uniform(jax.random.PRNGKey(0), (8, 28, 28, 1))
  key = jax.random.PRNGKey(1)
  default = augment.random_warp(key, batch)
  np.testing.assert_array_equal(augment.random_warp(key, batch, 10.0, 2.0, 0.0), default)
  zoomed = augment.random_warp(key, batch, 10.0, 2.0, 0.15)
  assert not np.allclose(zoomed, default)
  # No rotation, shift or zoom: the identity.
  np.testing.assert_allclose(augment.random_warp(key, batch, 0.0, 0.0, 0.0), batch, atol=1e-6)


def test_elastic_field_is_smooth_and_bounded():
  alpha, sigma = 34.0, 4.0
  field = np.asarray(augment.elastic_field(jax.random.PRNGKey(0), (28, 28), alpha, sigma))
  assert field.shape == (2, 28, 28)
  # Bounded: the Gaussian's weights are >= 0 and sum to <= 1, so |d| <= alpha per axis.
  assert np.abs(field).max() <= alpha
  # Smooth: neighbouring displacements differ by far less than the displacements themselves
  # (unsmoothed noise would differ by about sqrt(2) times its spread).
  spread = field.std()
  assert spread > 0.1
  step_rows = np.abs(np.diff(field, axis=1)).mean()
  step_cols = np.abs(np.diff(field, axis=2)).mean()
  assert max(step_rows, step_cols) < 0.35 * spread
  # A different key gives a different field.
  other = np.asarray(augment.elastic_field(jax.random.PRNGKey(1), (28, 28), alpha, sigma))
  assert not np.allclose(field, other)


def test_elastic_zero_alpha_is_identity_and_keeps_the_other_draws():
  batch = jax.random.uniform(jax.random.PRNGKey(0), (4, 28, 28, 1))
  key = jax.random.PRNGKey(1)
  np.testing.assert_array_equal(
    augment.random_warp(key, batch, 10.0, 2.0, 0.1, 0.0, 4.0),
    augment.random_warp(key, batch, 10.0, 2.0, 0.1),
  )
  # No rotation, shift or zoom and a zero field: the images themselves.
  out = augment.random_warp(key, batch, 0.0, 0.0, 0.0, 0.0)
  np.testing.assert_allclose(out, batch, atol=1e-6)
  zero = jnp.zeros((2, 28, 28))
  np.testing.assert_allclose(
    augment._warp(batch[0], jnp.float32(0), jnp.zeros(2), 1.0, zero), batch[0], atol=1e-6
  )


def test_elastic_batch_is_per_image_seeded_jitted_and_in_range():
  one = jax.random.uniform(jax.random.PRNGKey(0), (1, 28, 28, 1))
  batch = jnp.repeat(one, 4, axis=0)
  fn = jax.jit(lambda k, x: augment.random_warp(k, x, 0.0, 0.0, 0.0, 20.0, 4.0))
  a, b = fn(jax.random.PRNGKey(1), batch), fn(jax.random.PRNGKey(1), batch)
  assert a.shape == batch.shape and a.dtype == batch.dtype
  np.testing.assert_array_equal(a, b)
  assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
  # The same image, four different fields: four different outputs, none the input.
  assert not np.allclose(a[0], a[1]) and not np.allclose(a[0], one[0])


def test_shift_pixels_moves_whole_pixels_with_background():
  x = jax.random.uniform(jax.random.PRNGKey(4), (2, 28, 28, 1))
  out = np.asarray(augment.shift_pixels(x, 1, -1))  # down 1, left 1
  expected = np.zeros_like(x)
  expected[:, 1:, :-1] = np.asarray(x)[:, :-1, 1:]
  np.testing.assert_array_equal(out, expected)
  np.testing.assert_array_equal(augment.shift_pixels(x, 0, 0), x)
  copies = augment.shifted_copies(x)
  assert len(copies) == len(augment.TTA_SHIFTS)
  np.testing.assert_array_equal(copies[0], x)
