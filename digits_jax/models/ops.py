"""Convolution and max-pooling whose backward passes are fast on XLA:CPU.

Plain Flax trains the small MNIST CNNs of this project slower than PyTorch on a CPU
(google/flax#3551): XLA:CPU runs ``reduce_window``'s gradient and its own
convolutions slowly at these shapes, while it runs matrix products fast. So here:

* :func:`max_pool_2x2` differentiates the maximum of the four strided quarters of the
  input, with a gradient of four compares and one interleave, instead of a
  select-and-scatter.
* :func:`conv2d_im2col` computes the convolution and both its gradients as matrix
  products of the im2col patches matrix, whose two data-movement loops (build the
  patches, sum their gradient back) are C++ kernels (:mod:`digits_jax.models.native`).
* Where the C++ kernels are not available (another backend, no compiler),
  :func:`conv2d_xla` keeps XLA's forward convolution and computes the kernel gradient as
  per-tap matrix products.

All compute the same functions as their plain counterparts (:func:`max_pool_2x2_reference`,
:func:`conv2d_reference`, kept for tests and for switching back): the max-pool forward
pass is bitwise equal and its gradient exactly equal, ties included; the convolutions
agree to float32 rounding. They work under ``jax.jit`` and ``jax.vmap``. What each
choice measured is in docs/speed.md; ``benchmarks/ops_timing.py`` times them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from digits_jax.models import native

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
Pads = tuple[tuple[int, int], ...]  # (low, high) zero padding per spatial dimension

# With fewer input channels than this, the kernel gradient is one im2col matrix product
# (its patches matrix is narrow and cheap to build); with more, it is one product per
# kernel tap, which avoids XLA:CPU's slow concatenation of wide patches (docs/speed.md).
_PER_TAP_MIN_CHANNELS = 4


def max_pool_2x2_reference(x: jax.Array) -> jax.Array:
  """Plain 2x2 max-pool with stride 2 (``nn.max_pool``, a ``lax.reduce_window``).

  Args:
    x: NHWC input.

  Returns:
    The pooled NHWC array; odd heights and widths are floored (``VALID``).
  """
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def _quarters(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """The four corners of every 2x2 window, in row-major window order."""
  h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
  x = x[:, :h, :w]
  return x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pool with stride 2, equal to :func:`max_pool_2x2_reference`.

  Undifferentiated, this is the plain ``lax.reduce_window`` (XLA:CPU fuses it with the
  convolution before it). Differentiated, the forward pass takes the maximum of the four
  strided quarters of ``x`` and the backward pass routes each window's cotangent to its
  first maximum in row-major order, found by comparing the corners with each other, as
  the reference's select-and-scatter does (ties included). It never compares ``x`` with
  the saved maximum: XLA may recompute ``x`` in the backward pass with other rounding, and
  an equality test would then drop windows' gradients. Rows and columns cut off by an odd
  size get zero gradient; a window holding a NaN passes none.

  Args:
    x: NHWC input.

  Returns:
    The pooled NHWC array; odd heights and widths are floored (``VALID``).
  """
  return max_pool_2x2_reference(x)


def _max_pool_2x2_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  a, b, c, d = _quarters(x)
  return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d)), x


def _max_pool_2x2_bwd(x: jax.Array, g: jax.Array) -> tuple[jax.Array]:
  a, b, c, d = _quarters(x)
  # A later corner wins only if strictly greater than every earlier one: the first maximum
  # in row-major order, found by comparing corners with each other, never with a maximum
  # computed elsewhere (see max_pool_2x2).
  later_b = b > a
  best = jnp.where(later_b, b, a)
  later_c = c > best
  later_d = d > jnp.where(later_c, c, best)
  g = jnp.where(jnp.isnan(a) | jnp.isnan(b) | jnp.isnan(c) | jnp.isnan(d), 0, g)
  # Each corner's share is peeled off what is left, last corner first, so the four shares
  # sum to g in every window whatever the comparisons saw.
  gd, g = jnp.where(later_d, g, 0), jnp.where(later_d, 0, g)
  gc, g = jnp.where(later_c, g, 0), jnp.where(later_c, 0, g)
  gb, ga = jnp.where(later_b, g, 0), jnp.where(later_b, 0, g)
  n, h, w, ch = g.shape
  # (n, h, 2, w, 2, ch) -> (n, 2h, 2w, ch) puts each corner back in its place.
  gx = jnp.stack([jnp.stack([ga, gb], 3), jnp.stack([gc, gd], 3)], 2).reshape(n, 2 * h, 2 * w, ch)
  gx = jnp.pad(gx, ((0, 0), (0, x.shape[1] - 2 * h), (0, x.shape[2] - 2 * w), (0, 0)))
  return (gx,)


max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


def conv2d_reference(x: jax.Array, kernel: jax.Array, padding: str) -> jax.Array:
  """Plain stride-1 2-D convolution (``lax.conv_general_dilated``), as in ``nn.Conv``.

  Args:
    x: NHWC input.
    kernel: HWIO kernel (the layout of ``nn.Conv``'s ``kernel`` parameter).
    padding: ``"SAME"`` or ``"VALID"`` (or another padding string ``lax`` accepts).

  Returns:
    The NHWC output, without bias.
  """
  return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_DIMENSION_NUMBERS)


def conv2d(x: jax.Array, kernel: jax.Array, padding: str) -> jax.Array:
  """Stride-1 2-D convolution equal to :func:`conv2d_reference`, fast to differentiate.

  On the CPU backend with the C++ kernels available (:func:`digits_jax.models.native.available`)
  this is :func:`conv2d_im2col`; elsewhere (GPU, TPU, no compiler) :func:`conv2d_xla`.
  The choice is made when the function is traced.

  Args:
    x: NHWC input.
    kernel: HWIO kernel (the layout of ``nn.Conv``'s ``kernel`` parameter).
    padding: ``"SAME"`` or ``"VALID"`` (or another padding string ``lax`` accepts).

  Returns:
    The NHWC output, without bias.
  """
  if native.use_native():
    return conv2d_im2col(x, kernel, padding)
  return conv2d_xla(x, kernel, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d_im2col(x: jax.Array, kernel: jax.Array, padding: str) -> jax.Array:
  """Stride-1 2-D convolution as one im2col matrix product, forward and backward.

  The patches matrix ``P`` (batch x positions rows, ``kh*kw*Cin`` columns) is built by
  the C++ kernel :func:`digits_jax.models.native.im2col`; the output is ``P @ K`` for the
  kernel ``K`` reshaped to ``(kh*kw*Cin, Cout)``. The backward pass reuses ``P``: the
  kernel gradient is ``P.T @ G`` and the input gradient the columns of ``G @ K.T``
  summed back onto their pixels (:func:`digits_jax.models.native.col2im`), for the output
  cotangent ``G``. All three are plain matrix products, which XLA:CPU runs faster than
  its own convolution at these shapes (docs/speed.md). The sums are those of the
  reference convolution, rounded in another order (relative differences around 1e-7).

  Under ``jax.vmap`` (several models) the kernels treat the models axis as more batch
  and the products become batched products. CPU only: the C++ kernels are registered
  for the CPU platform.

  Args:
    x: NHWC input.
    kernel: HWIO kernel.
    padding: ``"SAME"`` or ``"VALID"`` (or another padding string ``lax`` accepts).

  Returns:
    The NHWC output, without bias.
  """
  return _im2col_fwd(x, kernel, padding)[0]


def _im2col_fwd(x: jax.Array, kernel: jax.Array, padding: str):
  kh, kw, cin, cout = kernel.shape
  pads = _pads(x, kernel, padding)
  patches = native.im2col(x, kh, kw, pads)
  y = lax.dot_general(
    patches, kernel.reshape(kh * kw * cin, cout), (((patches.ndim - 1,), (0,)), ((), ()))
  )
  return y, (patches, kernel, x.shape, pads)


def _im2col_bwd(padding: str, res, g: jax.Array) -> tuple[jax.Array, jax.Array]:
  del padding  # the forward pass saved the pads it resolved from it
  patches, kernel, x_shape, pads = res
  kh, kw, cin, cout = kernel.shape
  flat_kernel = kernel.reshape(kh * kw * cin, cout)
  rows = (((0,), (0,)), ((), ()))  # contract the (batch, position) rows
  d_kernel = lax.dot_general(patches.reshape(-1, kh * kw * cin), g.reshape(-1, cout), rows)
  d_patches = lax.dot_general(g, flat_kernel, (((g.ndim - 1,), (1,)), ((), ())))
  return native.col2im(d_patches, x_shape, kh, kw, pads), d_kernel.reshape(kernel.shape)


conv2d_im2col.defvjp(_im2col_fwd, _im2col_bwd)


def conv_relu_pool_reference(
  x: jax.Array, kernel: jax.Array, bias: jax.Array, padding: str
) -> jax.Array:
  """Plain conv, bias, ReLU and 2x2 max-pool: what :func:`conv_relu_pool` computes."""
  return max_pool_2x2_reference(jax.nn.relu(conv2d_reference(x, kernel, padding) + bias))


# XLA:CPU's convolution of a one-channel image into at most this many channels runs 3-4x
# slower than into 24 or 32 (36-52k against 78-140k images a second for the layer with its
# ReLU and pool, 2026-12-07, docs/speed.md), where the fused kernel is fastest: inference takes
# the fused kernel for such a first layer (models.inference_apply), XLA's for wider ones.
XLA_SLOW_CHANNELS = 16


def is_one_kernel(in_channels: int, out_channels: int) -> bool:
  """Whether :func:`conv_relu_pool` of such a layer, traced now, is one C++ kernel: one input
  channel, at most ``native.MAX_FUSED_CHANNELS`` outputs, the CPU backend with the kernels."""
  return in_channels == 1 and out_channels <= native.MAX_FUSED_CHANNELS and native.use_native()


def conv_relu_pool(x: jax.Array, kernel: jax.Array, bias: jax.Array, padding: str) -> jax.Array:
  """A first layer: stride-1 conv plus bias, ReLU, 2x2 max-pool; fused on one-channel CPU input.

  Equal to :func:`conv_relu_pool_reference`, and to pooling before the ReLU (both are
  monotone). With one input channel on the CPU backend with the C++ kernels, the layer is
  one C++ kernel (:func:`conv_relu_pool_fused`): a convolution with one input channel does
  few multiply-adds per value, and the unfused layer's time goes into writing and reading
  the full-size activation. Otherwise (more channels, GPU, TPU, no compiler) it is
  :func:`conv2d`, the bias, ReLU and :func:`max_pool_2x2`.

  Args:
    x: NHWC input.
    kernel: HWIO kernel.
    bias: ``(C_out,)``.
    padding: ``"SAME"`` or ``"VALID"`` (or another padding string ``lax`` accepts).

  Returns:
    The pooled NHWC output; odd sizes are floored.
  """
  if is_one_kernel(x.shape[-1], kernel.shape[-1]):
    return conv_relu_pool_fused(x, kernel, bias, padding)
  return max_pool_2x2(jax.nn.relu(conv2d(x, kernel, padding) + bias))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv_relu_pool_fused(x: jax.Array, kernel: jax.Array, bias: jax.Array, padding: str):
  """:func:`conv_relu_pool_reference` for one-channel ``x`` as C++ kernels (CPU only).

  The forward pass keeps, per pooled value, which corner of its window won; the backward
  pass sends each window's cotangent to that corner only, as ``jax.grad`` of the reference
  does: to the first maximum in row-major order (ties included), and nowhere when the
  maximum is <= 0 (ReLU's gradient at 0 is 0). The image gradient is a separate kernel,
  which XLA drops when nothing uses it (a network's input needs none). Sums agree with the
  reference to float32 rounding; the parameter gradients are summed in a fixed order, so
  they do not depend on the number of threads.
  """
  return _crp_fwd(x, kernel, bias, padding)[0]


def _crp_fwd(x, kernel, bias, padding):
  pads = _pads(x, kernel, padding)
  pooled, corner = native.conv_relu_pool(x, kernel, bias, pads)
  return pooled, (x, kernel, corner, pads)


def _crp_bwd(padding, res, g):
  del padding  # the forward pass saved the pads it resolved from it
  x, kernel, corner, pads = res
  d_kernel, d_bias = native.conv_relu_pool_param_grad(x, corner, g, kernel.shape, pads)
  d_x = native.conv_relu_pool_input_grad(kernel, corner, g, x.shape, pads)
  return d_x, d_kernel, d_bias


conv_relu_pool_fused.defvjp(_crp_fwd, _crp_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d_xla(x: jax.Array, kernel: jax.Array, padding: str) -> jax.Array:
  """Stride-1 2-D convolution equal to :func:`conv2d_reference`, with a fast backward.

  The forward pass is XLA's own convolution; the backward pass computes

  * the kernel gradient as the matrix product of the input patches with the output
    cotangent, contracted over batch and positions: one product of the whole patches
    matrix when there are few input channels, one product per kernel tap otherwise;
  * the input gradient as a forward convolution of the cotangent with the spatially
    flipped, in/out-transposed kernel, padded so the result has the input's size.

  Under ``jax.vmap`` over models (kernel batched, input batched or not), the forward
  pass and the input gradient run one convolution per model (a ``lax.map``) rather than
  one grouped convolution, which XLA:CPU runs slower; the kernel-gradient
  products become batched matrix products. Only first-order reverse mode is supported
  (``jax.grad``, ``jax.vjp``), not ``jax.jvp`` or second derivatives.

  Args:
    x: NHWC input.
    kernel: HWIO kernel (the layout of ``nn.Conv``'s ``kernel`` parameter).
    padding: ``"SAME"`` or ``"VALID"`` (or another padding string ``lax`` accepts).

  Returns:
    The NHWC output, without bias.
  """
  return _conv(_pads(x, kernel, padding))(x, kernel)


def _conv2d_fwd(
  x: jax.Array, kernel: jax.Array, padding: str
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  return conv2d_xla(x, kernel, padding), (x, kernel)


def _conv2d_bwd(
  padding: str, res: tuple[jax.Array, jax.Array], g: jax.Array
) -> tuple[jax.Array, jax.Array]:
  x, kernel = res
  pads = _pads(x, kernel, padding)
  return _input_grad(g, kernel, pads), _kernel_grad(x, g, kernel.shape, pads)


conv2d_xla.defvjp(_conv2d_fwd, _conv2d_bwd)


def _pads(x: jax.Array, kernel: jax.Array, padding: str) -> Pads:
  return tuple(lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], (1, 1), padding))


@functools.cache
def _conv(pads: Pads) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """The plain convolution with explicit ``pads``, with a vmap rule that avoids grouped convs.

  Plain ``jax.vmap`` over a batched kernel makes one grouped convolution
  (``feature_group_count`` = number of models), which XLA:CPU runs slower than the same
  convolutions one model after the other (docs/speed.md).
  """

  @jax.custom_batching.custom_vmap
  def conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=_DIMENSION_NUMBERS)

  @conv.def_vmap
  def conv_vmap(
    axis_size: int, in_batched: tuple[bool, bool], x: jax.Array, kernel: jax.Array
  ) -> tuple[jax.Array, bool]:
    x_batched, kernel_batched = in_batched
    if not kernel_batched:  # one kernel: fold the vmapped axis into the batch
      y = conv(x.reshape(-1, *x.shape[2:]), kernel)
      return y.reshape(axis_size, -1, *y.shape[1:]), True
    if not x_batched:
      return lax.map(lambda k: conv(x, k), kernel), True
    return lax.map(lambda xk: conv(*xk), (x, kernel)), True

  return conv


def _input_grad(g: jax.Array, kernel: jax.Array, pads: Pads) -> jax.Array:
  """d(loss)/d(input): the cotangent convolved with the flipped, transposed kernel."""
  kh, kw = kernel.shape[:2]
  (top, bottom), (left, right) = pads
  flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
  back_pads = ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right))
  return _conv(back_pads)(g, flipped)


def _kernel_grad(
  x: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...], pads: Pads
) -> jax.Array:
  """d(loss)/d(kernel): input patches times output cotangent, over batch and positions."""
  kh, kw, cin, cout = kernel_shape
  n, ho, wo = g.shape[:3]
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  taps = [xp[:, i : i + ho, j : j + wo] for i in range(kh) for j in range(kw)]
  g = g.reshape(n * ho * wo, cout)
  over_rows = (((0,), (0,)), ((), ()))  # contract the (batch, position) rows
  if cin >= _PER_TAP_MIN_CHANNELS:
    grad = jnp.stack([lax.dot_general(t.reshape(n * ho * wo, cin), g, over_rows) for t in taps])
  else:
    patches = jnp.concatenate(taps, axis=-1).reshape(n * ho * wo, kh * kw * cin)
    grad = lax.dot_general(patches, g, over_rows)
  return grad.reshape(kernel_shape)
