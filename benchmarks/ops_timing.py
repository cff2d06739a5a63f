"""Times the plain and fast ops of :mod:`digits_jax.models.ops` on this machine's CPU.

Prints the median milliseconds of forward+backward for each op at the layer shapes of
the project's CNNs (batch 128), then of a full Adam train step of the source-5 network
(conv32 3x3, max-pool, conv64 3x3, max-pool, dense 128, dropout 0.5, dense 10) built
with ``nn.Conv``/``nn.max_pool`` (plain) or with the fast ops (same parameter tree),
alone and as K=4 models trained side by side under ``jax.vmap``.

Run from the repository root: ``python benchmarks/ops_timing.py``.
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from digits_jax.models import ops  # noqa: E402

BATCH = 128
VMAPPED_MODELS = 4
REPEATS = 15  # timings are the median of this many runs of INNER calls each
INNER = 3


def median_ms(fn: Callable, *args, repeats: int = REPEATS) -> float:
  """Median wall time of ``fn(*args)`` in ms, after two warm-up calls (compilation)."""
  for _ in range(2):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(INNER):
      out = fn(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / INNER * 1e3)
  return statistics.median(times)


def fwd_bwd(op: Callable, ct: jax.Array, argnums: tuple[int, ...]) -> Callable:
  """A jitted ``args -> (op(*args), gradients of sum(op(*args) * ct) w.r.t. argnums)``."""

  def run(*args):
    y, vjp = jax.vjp(op, *args)
    grads = vjp(ct)
    return y, [grads[i] for i in argnums]

  return jax.jit(run)


def time_pools() -> None:
  print(f"max-pool 2x2, forward+backward, batch {BATCH} (ms): plain / fast")
  for shape in [(26, 26, 32), (28, 28, 32), (11, 11, 64), (14, 14, 64)]:
    x = jax.random.normal(jax.random.key(0), (BATCH, *shape))
    ct = jax.random.normal(jax.random.key(1), ops.max_pool_2x2(x).shape)
    plain = median_ms(fwd_bwd(ops.max_pool_2x2_reference, ct, (0,)), x)
    fast = median_ms(fwd_bwd(ops.max_pool_2x2, ct, (0,)), x)
    print(f"  {shape!s:14} {plain:7.2f} / {fast:6.2f}")


def time_convs() -> None:
  print(f"conv 3x3, forward+backward, batch {BATCH} (ms): plain / fast")
  layers = [  # (input HWC, output channels, padding, gradient w.r.t. the input too)
    ((28, 28, 1), 32, "VALID", False),
    ((28, 28, 1), 32, "SAME", False),
    ((13, 13, 32), 64, "VALID", True),
    ((14, 14, 32), 64, "SAME", True),
    ((11, 11, 64), 64, "VALID", True),
  ]
  for shape, cout, padding, input_grad in layers:
    x = jax.random.normal(jax.random.key(0), (BATCH, *shape))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, shape[-1], cout)) * 0.1
    ct = jax.random.normal(jax.random.key(2), ops.conv2d(x, kernel, padding).shape)
    argnums = (0, 1) if input_grad else (1,)
    plain, fast = (
      median_ms(fwd_bwd(functools.partial(op, padding=padding), ct, argnums), x, kernel)
      for op in (ops.conv2d_reference, ops.conv2d)
    )
    wrt = "input+kernel" if input_grad else "kernel only"
    print(f"  {shape!s:12} -> {cout:3} {padding:5} ({wrt:12}) {plain:7.2f} / {fast:6.2f}")


class FastConv(nn.Module):
  """``nn.Conv`` (stride 1, with bias) computed by :func:`ops.conv2d`; same parameters."""

  features: int
  padding: str

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features)
    )
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    return ops.conv2d(x, kernel, self.padding) + bias


class CNN(nn.Module):
  """The source-5 network, with plain or fast convolutions and pools."""

  fast: bool
  padding: str = "VALID"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i, width in enumerate((32, 64)):
      if self.fast:
        x = ops.max_pool_2x2(nn.relu(FastConv(width, self.padding, name=f"conv{i}")(x)))
      else:
        x = nn.relu(nn.Conv(width, (3, 3), padding=self.padding, name=f"conv{i}")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    x = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
    x = nn.Dropout(0.5, deterministic=not train)(x)
    return nn.Dense(10)(x)


def make_train_step(model: CNN, tx: optax.GradientTransformation) -> Callable:
  """One Adam step on one batch: ``(params, opt_state, images, labels, rng) -> same``."""

  def loss_fn(params, images, labels, rng):
    logits = model.apply({"params": params}, images, train=True, rngs={"dropout": rng})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  def step(params, opt_state, images, labels, rng):
    grads = jax.grad(loss_fn)(params, images, labels, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return step


def time_train_steps(padding: str) -> None:
  print(f"train step, {padding} convs, batch {BATCH} (ms): plain / fast")
  tx = optax.adam(1e-3)
  images = jax.random.uniform(jax.random.key(0), (VMAPPED_MODELS, BATCH, 28, 28, 1))
  labels = jax.random.randint(jax.random.key(1), (VMAPPED_MODELS, BATCH), 0, 10)
  rngs = jax.random.split(jax.random.key(2), VMAPPED_MODELS)
  results = {}
  for fast in (False, True):
    model = CNN(fast=fast, padding=padding)
    step = make_train_step(model, tx)
    params = jax.vmap(lambda rng, m=model: m.init(rng, images[0, :1], train=False)["params"])(rngs)
    opt_state = jax.vmap(tx.init)(params)
    one = jax.tree.map(lambda a: a[0], (params, opt_state))
    results[fast] = (
      median_ms(jax.jit(step), *one, images[0], labels[0], rngs[0]),
      median_ms(jax.jit(jax.vmap(step)), params, opt_state, images, labels, rngs, repeats=5),
    )
  (plain, plain_k), (fast, fast_k) = results[False], results[True]
  print(f"  one model            {plain:7.2f} / {fast:6.2f}")
  print(
    f"  {VMAPPED_MODELS} models, vmapped   {plain_k:7.2f} / {fast_k:6.2f}"
    f"   (per model {plain_k / VMAPPED_MODELS:.2f} / {fast_k / VMAPPED_MODELS:.2f})"
  )


if __name__ == "__main__":
  # Other processes on the machine inflate timings: the load average says how much.
  print(f"jax {jax.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
  time_pools()
  time_convs()
  for padding in ("VALID", "SAME"):
    time_train_steps(padding)
  print(f"load average at the end {os.getloadavg()[0]:.1f}")
