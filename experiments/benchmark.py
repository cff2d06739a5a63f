"""Training speed: seconds per 60,000-image epoch, ours against plain Flax,
PyTorch and Keras (when installed), and K vmapped models against K runs.

    python -m experiments.benchmark                       # every registered model
    python -m experiments.benchmark --models=conv2_dense128_dropout --steps=100

Prints a Markdown table and writes it (with a CSV and the environment) to
--output_dir. Timings are medians of --repeats measurements of --steps steps
each, after a warm-up; see digits_jax/benchmark.py for what each column times.
"""

import csv
import io
import platform
import time

from absl import app, flags

from digits_jax import benchmark, files, models, native, train
from digits_jax.config import Config, resolve

flags.DEFINE_list("models", list(models.MODELS), "Models to time.")
flags.DEFINE_list("frameworks", ["ours", "flax", "torch", "keras"],
                  "Which implementations to time (ours is always first).")
flags.DEFINE_integer("steps", 60, "Optimizer steps per measurement.")
flags.DEFINE_integer("repeats", 3, "Measurements per figure (the median is reported).")
flags.DEFINE_integer("batch_size", None, "Batch size (default: each model's recipe).")
flags.DEFINE_integer("vmap_models", 4, "K for the vmapped-sweep measurement (0: skip).")
flags.DEFINE_string("vmap_model", "conv2_dense128_dropout", "Model for the vmap measurement.")
flags.DEFINE_string("output_dir", "benchmark_results", "Where the table is written.")
FLAGS = flags.FLAGS

COLUMNS = ("model", "batch_size", "optimizer", "ours_s_per_epoch", "flax_s_per_epoch",
           "torch_s_per_epoch", "keras_s_per_epoch", "ours_images_per_s", "flax_over_ours",
           "torch_over_ours", "keras_over_ours")


def _fmt(value):
  if value is None:
    return "-"
  return f"{value:.2f}" if isinstance(value, float) else str(value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for name in FLAGS.models + [FLAGS.vmap_model]:
    try:
      models.get_spec(name)
    except models.UnknownModelError as e:
      raise app.UsageError(str(e)) from None
  frameworks = tuple(["ours"] + [f for f in FLAGS.frameworks if f != "ours"])
  env = train.environment()
  print(f"# {platform.node()} {env['cpu']} ({env['cpu_count']} cores), "
        f"{env['devices']}, jax {env['jax']}, {time.strftime('%Y-%m-%d %H:%M')}")
  rows = []
  for name in FLAGS.models:
    row = benchmark.benchmark_model(name, steps=FLAGS.steps, repeats=FLAGS.repeats,
                                    batch_size=FLAGS.batch_size, frameworks=frameworks)
    print(" | ".join(f"{c}={_fmt(row.get(c))}" for c in COLUMNS), flush=True)
    rows.append(row)

  lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  lines += ["| " + " | ".join(_fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
  table = "\n".join(lines) + "\n"
  if FLAGS.vmap_models:
    config = resolve(Config(model=FLAGS.vmap_model, batch_size=FLAGS.batch_size,
                            augment=False))
    k = FLAGS.vmap_models
    together, apart = benchmark.time_vmap(config, k, FLAGS.steps, FLAGS.repeats)
    images = k * FLAGS.steps * config.batch_size
    table += (f"\nvmap, {k} x {config.model} (batch {config.batch_size}): "
              f"{images / together:.0f} images/s together, {images / apart:.0f} images/s "
              f"one after another: {apart / together:.2f}x\n")
  print(table)
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  files.write_text(f"{FLAGS.output_dir}/benchmark.md", table)
  files.write_text(f"{FLAGS.output_dir}/benchmark.csv", out.getvalue())
  files.write_json(f"{FLAGS.output_dir}/environment.json",
                   {**env, **_other_frameworks(), "native_kernels": native.available(),
                    "steps": FLAGS.steps, "repeats": FLAGS.repeats,
                    "date": time.strftime("%Y-%m-%d %H:%M")})


def _other_frameworks() -> dict[str, str]:
  """Versions of the optional frameworks that were timed."""
  versions = {}
  for name in ("torch", "keras", "tensorflow"):
    try:
      versions[name] = __import__(name).__version__
    except ImportError:
      pass
  return versions


if __name__ == "__main__":
  app.run(main)
