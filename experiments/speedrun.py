"""Time to 99% test accuracy: ``python -m experiments.speedrun [--seeds=0-9] [--torch] [--keras]``.

``--config=configs/speedrun.py`` runs the committed experiment; flags override it.

Trains the speedrun recipe (:mod:`digits_jax.speedrun`) for every seed, compiled
once, and tests each seed's final model once. With ``--torch`` (the default when PyTorch
is installed) the same recipe also runs in PyTorch (:mod:`benchmarks.speedrun`), seed by
seed in turns with ours, so the ratio of training times is measured side by side; with
``--keras`` it runs in Keras 3 on TensorFlow as well.
Prints a table (training seconds per seed, the same plus the one compilation, test
accuracy mean with a 95% interval, seeds at or above 99%) and writes ``speedrun.json``
and ``speedrun.md`` into --output_dir (default runs/speedrun). Recipe flags (``--epochs``,
``--learning_rate``, ...) change the recipe; ``--validation_size`` holds images out for
comparing recipes without looking at the test set. ``--dry_run`` prints the recipe and the
run's settings, each with its origin, and exits.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
import typing

import jax
from absl import app, flags

from digits_jax import files
from digits_jax import speedrun as sr
from digits_jax.config import DEFAULT, RECIPE, describe
from digits_jax.environment import environment
from experiments import common

common.define_config_file()
_DEFAULT = sr.Recipe()
_HINTS = typing.get_type_hints(sr.Recipe)
for _field in dataclasses.fields(sr.Recipe):
  _define = {int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string}
  _define[_HINTS[_field.name]](
    _field.name, getattr(_DEFAULT, _field.name), f"Recipe: {_field.name} (see Recipe)."
  )
flags.DEFINE_list("seeds", ["0-9"], "Seeds: integers and ranges, e.g. 0,1,2 or 0-9.")
flags.DEFINE_bool(
  "torch",
  importlib.util.find_spec("torch") is not None,
  "Also train the recipe in PyTorch, seed by seed in turns with ours (default: when "
  "PyTorch is installed).",
)
flags.DEFINE_bool(
  "keras",
  False,
  "Also train the recipe in Keras 3 on TensorFlow (model.fit), in turns with the others.",
)
flags.DEFINE_integer(
  "vmap_seeds", 0, "Train this many seeds together under jax.vmap (0: one at a time)."
)
flags.DEFINE_string(
  "output_dir", "runs/speedrun", "Where speedrun.json and speedrun.md are written (created)."
)
for _name in ("config", "dry_run", "manual_dir", "tune_malloc"):
  flags.declare_key_flag(_name)  # listed by --help: this entry point uses it
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    common.apply_config_file()
  except common.ConfigError as e:
    common.fail(e)
  try:
    seeds = common.parse_seeds(FLAGS.seeds)
  except common.ConfigError as e:
    common.fail(e)
  if FLAGS["workdir"].present:
    raise app.UsageError("speedrun writes no run directory: give its output folder as --output_dir")
  output_dir = FLAGS.output_dir
  if FLAGS.vmap_seeds and (FLAGS.torch or FLAGS.keras or len(seeds) % FLAGS.vmap_seeds):
    raise app.UsageError(
      "--vmap_seeds needs --torch=false, --keras=false and a --seeds that is a multiple of it"
    )
  if FLAGS.keras and not (
    importlib.util.find_spec("keras") and importlib.util.find_spec("tensorflow")
  ):
    raise app.UsageError("--keras needs Keras 3 and TensorFlow: pip install -e .[tfds,bench]")
  recipe = sr.Recipe(**{f.name: FLAGS[f.name].value for f in dataclasses.fields(sr.Recipe)})
  try:
    recipe.validate()
  except (ValueError, *common.USER_ERRORS) as e:
    common.fail(e)
  if FLAGS.dry_run:
    # The speedrun's recipe is its own (sr.Recipe), not a model's: its defaults are the recipe.
    names = [f.name for f in dataclasses.fields(sr.Recipe)]
    origins = {n: common.flag_origin(n) for n in names}
    origins = {n: RECIPE if o == DEFAULT else o for n, o in origins.items()}
    run_flags = ["seeds", "output_dir", "torch", "keras", "vmap_seeds"]
    common.print_dry_run(
      {
        "recipe": describe(dataclasses.asdict(recipe), origins),
        "run": common.flag_lines(run_flags, {"output_dir": output_dir, "seeds": seeds}),
      }
    )
    return
  common.setup()
  try:
    data = sr.load_speedrun_data(recipe, manual_dir=FLAGS.manual_dir)
    recipe.steps(len(data.train_labels))
  except (ValueError, *common.USER_ERRORS) as e:
    common.fail(e)
  env = environment()
  print(f"# {env['cpu']} ({env['cpu_count']} cores), {env['devices']}, jax {env['jax']}")
  if FLAGS.torch or FLAGS.keras:
    from benchmarks import speedrun as side_by_side

    result = side_by_side.run_side_by_side(
      recipe, data, seeds, torch_recipe=sr.REFERENCE, torch=FLAGS.torch, keras=FLAGS.keras
    )
    table = sr.markdown(result)
  else:
    result = sr.run_speedrun(recipe, data, seeds, vmap_seeds=FLAGS.vmap_seeds)
    table = sr.markdown(result)
  result["environment"] = env | {
    "date": time.strftime("%Y-%m-%d %H:%M"),
    "backend": jax.default_backend(),
  }
  print(table)
  files.write_json(f"{output_dir}/speedrun.json", result)
  files.write_text(f"{output_dir}/speedrun.md", table)
  print(f"written to {output_dir}/speedrun.json and speedrun.md")


if __name__ == "__main__":
  app.run(main)
