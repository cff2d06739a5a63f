"""The fast ops of digits_jax.models.ops against their plain references.

Forward passes must be bitwise equal; gradients of a scalar loss must equal ``jax.grad``
of the plain version to float32 rounding (norm-relative error below 1e-5), under
``jax.jit`` (and once eagerly) and under ``jax.vmap`` over a leading model axis. Each
check runs the fast and the plain op in one jitted function, to keep compilations few.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digits_jax.models import native, ops

TOLERANCE = 1e-5


def rel_err(a: jax.Array, b: jax.Array) -> float:
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def normal(seed: int, shape: tuple[int, ...]) -> jax.Array:
  """Random float32 values: continuous, so a 2x2 window has no tied maxima."""
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def forward_and_grads(op, *args):
  """``op(*args)`` undifferentiated, then as computed under ``jax.vjp``, and the gradients
  of ``sum(op(*args) * w)`` w.r.t. all ``args`` for a fixed random weighting ``w``."""
  y, vjp = jax.vjp(op, *args)
  return op(*args), y, vjp(normal(99, y.shape))


# --- max-pool -----------------------------------------------------------------------

POOLS = (ops.max_pool_2x2, ops.max_pool_2x2_reference)


def check_pool(results):
  (y, y_vjp, (dx,)), (y_ref, _, (dx_ref,)) = results
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_array_equal(y_vjp, y_ref)
  assert rel_err(dx, dx_ref) < TOLERANCE
  np.testing.assert_array_equal(dx, dx_ref)  # one nonzero term per element: exact


@pytest.mark.parametrize("shape", [(1, 2, 2, 1), (2, 8, 8, 3), (3, 7, 9, 4), (2, 26, 26, 8)])
def test_max_pool_matches_reference(shape):
  x = normal(0, shape)
  results = jax.jit(lambda x: [forward_and_grads(op, x) for op in POOLS])(x)
  assert results[0][0].shape == (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
  check_pool(results)


def test_max_pool_ties_go_to_the_first_maximum_like_the_reference():
  # Small integers tie often. Like select-and-scatter, the fast pool gives the whole
  # gradient to the first maximum of a window in row-major order.
  x = jax.random.randint(jax.random.key(0), (2, 9, 8, 3), 0, 3).astype(jnp.float32)
  x = x.at[0, :2, :2, 0].set(1.0)  # an all-tied window
  results = jax.jit(lambda x: [forward_and_grads(op, x) for op in POOLS])(x)
  check_pool(results)
  (dx,) = results[0][2]
  assert dx[0, 0, 0, 0] != 0 and not dx[0, :2, :2, 0].ravel()[1:].any()


def test_max_pool_vmapped_over_models():
  x = normal(0, (3, 2, 7, 8, 4))  # (models, batch, H, W, C)
  check_pool(
    jax.jit(lambda x: [jax.vmap(functools.partial(forward_and_grads, op))(x) for op in POOLS])(x)
  )


# --- conv ---------------------------------------------------------------------------

CONV_CASES = [  # (input NHWC, kernel HWIO, padding)
  ((1, 28, 28, 1), (3, 3, 1, 8), "VALID"),
  ((2, 13, 13, 6), (3, 3, 6, 5), "VALID"),
  ((3, 14, 14, 5), (3, 3, 5, 7), "SAME"),
  ((2, 7, 9, 3), (3, 3, 3, 4), "SAME"),
  ((2, 6, 5, 4), (2, 2, 4, 3), "SAME"),  # even kernel: asymmetric SAME padding
  ((2, 9, 8, 4), (5, 3, 4, 2), "VALID"),
  ((1, 5, 5, 8), (1, 1, 8, 4), "SAME"),
]
CONV_IDS = [f"{x}-{k}-{p}" for x, k, p in CONV_CASES]


def conv_inputs(x_shape, k_shape, leading=()):
  x = normal(0, (*leading, *x_shape))
  kernel = normal(1, (*leading, *k_shape)) / np.sqrt(np.prod(k_shape[:3]))
  return x, kernel


# The fast convolutions: im2col products through the C++ kernels (the CPU default) and
# XLA's forward convolution with per-tap kernel gradients (the fallback elsewhere).
IMPLS = {"im2col": ops.conv2d_im2col, "xla": ops.conv2d_xla}


@pytest.fixture(params=list(IMPLS))
def impl(request):
  if request.param == "im2col" and not native.available():
    pytest.fail("the C++ kernels did not build: see the warning logged by digits_jax.models.native")
  return request.param


def convs(padding, impl):
  return [lambda x, k, op=op: op(x, k, padding) for op in (IMPLS[impl], ops.conv2d_reference)]


def check_conv(results, x, kernel, vmapped=False, impl="xla"):
  (y, y_vjp, (dx, dk)), (y_ref, _, (dx_ref, dk_ref)) = results
  if vmapped or impl == "im2col":
    # A matrix product, or one convolution per model against the vmapped reference's
    # grouped convolution: the same sums, rounded in a different order.
    assert rel_err(y, y_ref) < TOLERANCE
  else:
    np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_array_equal(y_vjp, y)
  assert dx.dtype == dk.dtype == jnp.float32
  assert dx.shape == x.shape and dk.shape == kernel.shape
  assert rel_err(dx, dx_ref) < TOLERANCE
  assert rel_err(dk, dk_ref) < TOLERANCE


@pytest.mark.parametrize("x_shape,k_shape,padding", CONV_CASES, ids=CONV_IDS)
def test_conv_matches_reference(x_shape, k_shape, padding, impl):
  x, kernel = conv_inputs(x_shape, k_shape)
  results = jax.jit(lambda x, k: [forward_and_grads(op, x, k) for op in convs(padding, impl)])(
    x, kernel
  )
  expected = jax.lax.conv_general_dilated(
    x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  np.testing.assert_array_equal(results[1][0], expected)
  check_conv(results, x, kernel, impl=impl)


def test_conv_eager_matches_reference(impl):
  x, kernel = conv_inputs((1, 5, 4, 4), (3, 3, 4, 2))
  check_conv([forward_and_grads(op, x, kernel) for op in convs("SAME", impl)], x, kernel, impl=impl)


def test_conv_dispatches_to_im2col_on_cpu():
  # What the models call: on the CPU backend with the kernels built, the im2col path.
  assert jax.default_backend() == "cpu" and native.use_native()
  x, kernel = conv_inputs((2, 13, 13, 6), (3, 3, 6, 5))
  hlo = jax.jit(lambda x, k: ops.conv2d(x, k, "VALID")).lower(x, kernel).as_text()
  assert "digits_im2col" in hlo and "convolution" not in hlo


@pytest.mark.parametrize(
  "x_shape,k_shape,padding",
  [((2, 28, 28, 1), (3, 3, 1, 4), "SAME"), ((2, 13, 13, 6), (3, 3, 6, 5), "VALID")],
)
def test_conv_vmapped_over_models(x_shape, k_shape, padding, impl):
  # Several models trained side by side: params and inputs both carry the model axis.
  x, kernel = conv_inputs(x_shape, k_shape, leading=(3,))
  results = jax.jit(
    lambda x, k: [
      jax.vmap(functools.partial(forward_and_grads, op))(x, k) for op in convs(padding, impl)
    ]
  )(x, kernel)
  check_conv(results, x, kernel, vmapped=True)


def test_conv_vmapped_over_models_sharing_the_input(impl):
  x, _ = conv_inputs((2, 13, 13, 6), (3, 3, 6, 5))
  _, kernel = conv_inputs((2, 13, 13, 6), (3, 3, 6, 5), leading=(3,))
  per_model = lambda op: jax.vmap(lambda k: forward_and_grads(op, x, k))  # noqa: E731
  check_conv(
    jax.jit(lambda k: [per_model(op)(k) for op in convs("VALID", impl)])(kernel),
    jnp.broadcast_to(x, (3, *x.shape)),
    kernel,
    vmapped=True,
  )


def test_small_cnn_gradients_match_reference():
  """conv-relu-pool twice then a weighted sum: the ops composed as in the models."""
  x = normal(0, (4, 28, 28, 1))
  k1 = normal(1, (3, 3, 1, 8)) / 3.0
  k2 = normal(2, (3, 3, 8, 16)) / np.sqrt(72.0)

  def loss(conv, pool, x, k1, k2):
    h = pool(jax.nn.relu(conv(x, k1, "VALID")))
    h = pool(jax.nn.relu(conv(h, k2, "VALID")))
    return jnp.sum(h * normal(3, h.shape))

  grads = jax.jit(
    lambda *args: [
      jax.grad(loss, (2, 3, 4))(ops.conv2d, ops.max_pool_2x2, *args),
      jax.grad(loss, (2, 3, 4))(ops.conv2d_reference, ops.max_pool_2x2_reference, *args),
    ]
  )
  for fast, plain in zip(*grads(x, k1, k2), strict=True):
    assert rel_err(fast, plain) < TOLERANCE


def test_max_pool_gradient_survives_a_recomputed_input():
  """Batch norm, ReLU, pool, then another layer: the gradient equals the reference's.

  XLA may recompute a cheap pool input (here batch norm and ReLU) inside the backward pass,
  rounded differently from the forward pass; a backward pass that compared that input with
  the saved maximum dropped whole windows' gradients here (errors of the order of the
  gradients themselves in the first layer).
  """
  import flax.linen as nn

  class Net(nn.Module):
    pool: object

    @nn.compact
    def __call__(self, x):
      for width in (16, 32):
        x = nn.Conv(width, (3, 3), padding="SAME")(x)
        x = self.pool(nn.relu(nn.BatchNorm(use_running_average=False)(x)))
      return x

  x = jax.random.uniform(jax.random.key(1), (6, 28, 28, 1))
  w = normal(2, (6, 7, 7, 32))
  variables = Net(ops.max_pool_2x2_reference).init(jax.random.key(0), x)

  def grads(pool):
    def loss(params):
      y, _ = Net(pool).apply({**variables, "params": params}, x, mutable=["batch_stats"])
      return jnp.sum(y * w)

    return jax.jit(jax.grad(loss))(variables["params"])

  # Compiled apart: in one program XLA would share the forward pass between the two.
  fast, plain = (grads(pool) for pool in POOLS)
  for a, b in zip(jax.tree_util.tree_leaves(fast), jax.tree_util.tree_leaves(plain), strict=True):
    assert rel_err(a, b) < TOLERANCE


def test_max_pool_nan_window_passes_no_gradient():
  x = normal(0, (1, 4, 4, 1)).at[0, 1, 1, 0].set(jnp.nan)
  (y, y_vjp, (dx,)), _ = jax.jit(lambda x: [forward_and_grads(op, x) for op in POOLS])(x)
  assert jnp.isnan(y[0, 0, 0, 0]) and jnp.isnan(y_vjp[0, 0, 0, 0])
  assert not dx[0, :2, :2].any()  # the NaN window
  assert jnp.count_nonzero(dx[0, 2:, 2:]) == 1 and jnp.count_nonzero(dx[0, :2, 2:]) == 1


# --- the fused first layer: conv, bias, ReLU, max-pool on one-channel images ----------

FUSED_CASES = [  # (x shape, kernel shape, padding): the networks' first layers and odd ones
  ((4, 28, 28, 1), (3, 3, 1, 32), "VALID"),  # the source networks
  ((3, 24, 24, 1), (5, 5, 1, 16), "VALID"),  # speedrun_small
  ((2, 28, 28, 1), (5, 5, 1, 24), "VALID"),  # speedrun
  ((2, 11, 9, 1), (3, 3, 1, 7), "SAME"),  # odd sizes (a row and a column floored), any width
  ((2, 12, 12, 1), (3, 3, 1, 64), "SAME"),
]
FUSED_IDS = [f"{x[1]}x{x[2]}-{k[0]}x{k[1]}x{k[3]}-{p}" for x, k, p in FUSED_CASES]


def fused_inputs(x_shape, k_shape, seed: int = 0):
  """Images with blank rows (windows whose four corners tie at the bias), kernel, bias."""
  x = normal(seed, x_shape).at[:, : x_shape[1] // 3].set(0.0)
  kernel = normal(seed + 1, k_shape) / k_shape[0]
  bias = normal(seed + 2, k_shape[-1:]) / 2  # about half positive: tied positive maxima
  return x, kernel, bias


@pytest.mark.parametrize("x_shape,k_shape,padding", FUSED_CASES, ids=FUSED_IDS)
def test_conv_relu_pool_fused_matches_jax_grad_of_the_reference(x_shape, k_shape, padding):
  x, kernel, bias = fused_inputs(x_shape, k_shape)
  fused = functools.partial(ops.conv_relu_pool_fused, padding=padding)
  plain = functools.partial(ops.conv_relu_pool_reference, padding=padding)
  (y, y_vjp, grads), (y_ref, _, grads_ref) = jax.jit(
    lambda *a: [forward_and_grads(op, *a) for op in (fused, plain)]
  )(x, kernel, bias)
  assert y.shape == y_ref.shape and y.dtype == jnp.float32
  np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(y_vjp, y)
  assert float(jnp.mean(y == 0)) > 0.1  # windows with no gradient are exercised
  for g, g_ref in zip(grads, grads_ref, strict=True):
    assert g.shape == g_ref.shape
    assert rel_err(g, g_ref) < TOLERANCE


def test_conv_relu_pool_tied_windows_send_the_gradient_to_the_first_corner():
  # A blank image: every window's four corners equal the bias. Where it is positive the
  # reference routes each window's gradient to its top-left corner, so the image gradient
  # is nonzero exactly there (and at the taps around it); a later corner would move it.
  x = jnp.zeros((1, 8, 8, 1))
  kernel = jnp.ones((1, 1, 1, 2))
  bias = jnp.array([0.5, -0.5])
  loss = lambda op: lambda x: jnp.sum(op(x, kernel, bias, "VALID"))  # noqa: E731
  dx = jax.grad(loss(ops.conv_relu_pool_fused))(x)
  expected = np.zeros((1, 8, 8, 1), np.float32)
  expected[0, 0::2, 0::2, 0] = 1.0  # channel 0 only: channel 1's maximum is negative
  np.testing.assert_array_equal(dx, expected)
  np.testing.assert_array_equal(dx, jax.grad(loss(ops.conv_relu_pool_reference))(x))


def test_conv_relu_pool_vmapped_over_models():
  x, kernel, bias = fused_inputs((3, 2, 14, 14, 1), (3, 3, 3, 1, 8))
  bias = normal(5, (3, 8))
  grads = lambda op: jax.vmap(jax.grad(lambda *a: jnp.sum(op(*a, "VALID") ** 2), (0, 1, 2)))  # noqa: E731
  fused, plain = jax.jit(
    lambda *a: [grads(op)(*a) for op in (ops.conv_relu_pool_fused, ops.conv_relu_pool_reference)]
  )(x, kernel, bias)
  for g, g_ref in zip(fused, plain, strict=True):
    assert rel_err(g, g_ref) < TOLERANCE


def test_conv_relu_pool_gradients_are_deterministic():
  x, kernel, bias = fused_inputs((37, 28, 28, 1), (3, 3, 1, 32))  # not a multiple of a chunk
  grad = jax.jit(
    jax.grad(lambda k, b: jnp.sum(ops.conv_relu_pool_fused(x, k, b, "VALID") ** 2), (0, 1))
  )
  first, second = grad(kernel, bias), grad(kernel, bias)
  for a, b in zip(first, second, strict=True):
    np.testing.assert_array_equal(a, b)


def test_conv_relu_pool_dispatch():
  # One input channel on the CPU: the fused kernels, and no image gradient when only the
  # parameters are differentiated; more channels: the im2col convolution and the pool.
  assert jax.default_backend() == "cpu" and native.use_native()
  x, kernel, bias = fused_inputs((2, 28, 28, 1), (3, 3, 1, 8))
  param_grads = jax.grad(lambda k, b: jnp.sum(ops.conv_relu_pool(x, k, b, "VALID")), (0, 1))
  hlo = jax.jit(param_grads).lower(kernel, bias).compile().as_text()
  assert "digits_conv_relu_pool_param_grad" in hlo
  assert "digits_conv_relu_pool_input_grad" not in hlo  # dropped: nothing uses it
  wide = jax.jit(lambda x, k, b: ops.conv_relu_pool(x, k, b, "VALID")).lower(
    jnp.zeros((2, 13, 13, 4)), jnp.zeros((3, 3, 4, 8)), bias
  )
  assert "digits_im2col" in wide.as_text() and "digits_conv_relu_pool" not in wide.as_text()
