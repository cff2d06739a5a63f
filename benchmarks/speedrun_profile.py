"""Where a speedrun train step spends its time, layer by layer, for Speedrun-family networks.

For each network named on the command line (a registered ``Speedrun`` subclass, e.g.
``speedrun`` and ``speedrun_small``) it times, at the speedrun's batch size, each piece of
a train step jitted on its own: the first convolution forward plus its kernel gradient
(the input needs no gradient), each pool with its ReLU forward and backward, the second
convolution forward plus both gradients, the two dense layers forward and backward, and
Adam's update, and then the whole step (one ``lax.scan`` of the speedrun's own training
function). All pieces of all networks take turns (A B C A B C ...), so load from elsewhere
hits every one of them (``benchmarks.frameworks.interleaved_medians``); each figure is the
median over rounds.

Run from the repository root::

  python benchmarks/speedrun_profile.py speedrun speedrun_small
  python benchmarks/speedrun_profile.py --conv=xla speedrun_small   # XLA's convolutions
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.frameworks import interleaved_medians  # noqa: E402
from digits_jax import models  # noqa: E402
from digits_jax import speedrun as sr  # noqa: E402
from digits_jax.models import native, ops  # noqa: E402

STEP = "whole train step"
CONVS = {"im2col": ops.conv2d_im2col, "xla": ops.conv2d_xla, "plain": ops.conv2d_reference}


def pieces(name: str, batch: int, conv: Callable) -> dict[str, tuple[Callable, tuple]]:
  """The jitted pieces of one train step of network ``name``, with their arguments."""
  spec = models.get_spec(name).module
  key = jax.random.PRNGKey(0)
  size = 28 - 2 * spec.crop
  channels = 1
  out: dict[str, tuple[Callable, tuple]] = {}
  relu_pool = jax.jit(jax.grad(lambda x: jax.nn.relu(ops.max_pool_2x2(x)).sum()))
  for i, (width, k) in enumerate(zip(spec.features, spec.kernel_sizes)):
    x = jax.random.normal(key, (batch, size, size, channels))
    w = jax.random.normal(key, (k, k, channels, width)) * 0.1
    argnums = (1,) if i == 0 else (0, 1)  # the input image needs no gradient
    grads = jax.jit(jax.grad(lambda x, w: conv(x, w, "VALID").sum(), argnums=argnums))
    what = "kernel grad" if i == 0 else "both grads"
    out[f"conv{i} {k}x{k} {channels}->{width} on {size}x{size}: fwd + {what}"] = (grads, (x, w))
    size = size - k + 1
    y = jax.random.normal(key, (batch, size, size, width))
    out[f"pool{i} + ReLU on {size}x{size}x{width}: fwd + bwd"] = (relu_pool, (y,))
    size, channels = size // 2, width
  features = size * size * channels
  w1 = jax.random.normal(key, (features, spec.dense)) * 0.03
  w2 = jax.random.normal(key, (spec.dense, 10)) * 0.1
  h = jax.random.normal(key, (batch, features))
  dense = jax.jit(jax.grad(lambda h, w1, w2: (jax.nn.relu(h @ w1) @ w2).sum(), argnums=(0, 1, 2)))
  out[f"dense {features}->{spec.dense}->10: fwd + bwd"] = (dense, (h, w1, w2))
  recipe = sr.Recipe(model=name, batch_size=batch)
  params = models.init_variables(models.create_model(name), key)["params"]
  tx = recipe.optimizer(100)
  adam = jax.jit(lambda g, s, p: tx.update(g, s, p)[0])
  out["Adam update"] = (adam, (params, tx.init(params), params))
  return out


def whole_step(name: str, batch: int, steps: int) -> tuple[Callable, tuple, int]:
  """The speedrun's compiled training of ``steps`` steps on random data; time it per step."""
  recipe = sr.Recipe(model=name, batch_size=batch, epochs=1.0)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.standard_normal((steps, batch, 28, 28, 1), np.float32))
  labels = jnp.asarray(rng.integers(0, 10, (steps, batch), np.int32))
  fn = jax.jit(sr.make_train_fn(recipe, steps * batch))
  return fn, (jax.random.PRNGKey(0), images, labels), steps


def _calls(fn: Callable, fn_args: tuple, calls: int) -> None:
  for _ in range(calls):
    result = fn(*fn_args)
  jax.block_until_ready(result)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("models", nargs="+", help="registered Speedrun-family networks")
  parser.add_argument("--batch", type=int, default=sr.Recipe().batch_size)
  parser.add_argument("--conv", choices=sorted(CONVS), default="im2col")
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--inner", type=int, default=10)
  args = parser.parse_args()
  if jax.default_backend() == "cpu":
    native.tune_allocator()
  if args.conv == "im2col" and not native.use_native():
    sys.exit("--conv=im2col needs the C++ kernels (a C++ compiler, the CPU backend)")
  # (function, arguments, calls per round, train steps per call)
  timed: dict[tuple[str, str], tuple[Callable, tuple, int, int]] = {}
  for name in args.models:
    for label, (fn, fn_args) in pieces(name, args.batch, CONVS[args.conv]).items():
      timed[name, label] = (fn, fn_args, args.inner, 1)
    fn, fn_args, steps = whole_step(name, args.batch, 20)
    timed[name, STEP] = (fn, fn_args, 1, steps)
  for fn, fn_args, _, _ in timed.values():
    jax.block_until_ready(fn(*fn_args))  # compile outside the timings
  seconds = interleaved_medians(
    {
      k: functools.partial(_calls, fn, fn_args, calls)
      for k, (fn, fn_args, calls, _) in timed.items()
    },
    args.rounds,
  )
  ms = {k: seconds[k] / calls / steps * 1e3 for k, (_, _, calls, steps) in timed.items()}
  head = f"| network | piece (batch {args.batch}, conv {args.conv}) | ms (median) | share of sum |"
  print(head)
  print("|---|---|---|---|")
  for name in args.models:
    rows = {label: v for (n, label), v in ms.items() if n == name}
    step = rows.pop(STEP)
    total = sum(rows.values())
    for label, value in rows.items():
      print(f"| {name} | {label} | {value:.2f} | {value / total:.0%} |")
    print(f"| {name} | sum of the pieces | {total:.2f} | 100% |")
    print(f"| {name} | {STEP} (the speedrun's compiled loop, per step) | {step:.2f} | |")


if __name__ == "__main__":
  main()
