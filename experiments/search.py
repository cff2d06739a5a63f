"""Searches training recipes with Optuna: pruned trials, shared by workers, confirmed.

    python -m experiments.search --models=conv2_dense64 --trials=40 --workdir=runs/search
    python -m experiments.search --config=configs/search_conv2_dense64.py \\
        --config.trials=12 --config.base.train_subset=10000 --workdir=runs/search
    python -m experiments.search --config=configs/search_conv2_dense64.py \\
        --workdir=runs/search --confirm_top=3 --confirm_seeds=3

Each model's study lives in <workdir>/<model>/ (Optuna's journal file storage): a TPE
sampler over the space, a pruner on the validation accuracy after each epoch, every
trial an ordinary run directory under trials/. Started again, the command continues the
study up to --trials; several workers (--num_workers, --worker_index, defaulting to a
SLURM job array's like the sweep) share it, and a killed worker's trial is queued again
and resumes from its checkpoint. Writes search.csv, search.md and Optuna's plots; with
--confirm_top=K, retrains the K best trials and the registered recipe on
--confirm_seeds fresh seeds and compares them (confirm/confirm.md). The test accuracy
is never used by the search. The logic lives in :mod:`digits_jax.search`; docs/search.md.
``--dry_run`` prints each study's settings, the settings every trial shares and the search
space, each with its origin, and exits.
"""

import jax
from absl import app, flags
from ml_collections import config_flags

from digits_jax.config import COMMAND_LINE, CONFIG_FILE, ConfigError
from digits_jax.search import space
from experiments import common, workers

config_flags.DEFINE_config_file(
  "config",
  None,
  "A search config file (configs/search_*.py, get_config() -> ConfigDict); fields may be "
  "overridden with --config.FIELD=VALUE (--config.space.learning_rate.high=0.003). "
  "Default: each model's default space.",
  lock_config=False,
)
flags.DEFINE_list("models", None, "Models to search, one study each (default: the config's).")
flags.DEFINE_integer("trials", None, "Trials per study, pruned ones included (config: trials).")
flags.DEFINE_integer("confirm_top", None, "Retrain the K best trials on fresh seeds (0: none).")
flags.DEFINE_integer("confirm_seeds", None, "Fresh seeds per confirmed recipe (default 3).")
flags.adopt_module_key_flags(workers)
flags.DEFINE_bool("report_only", False, "Run no trial: write the tables and plots of the study.")
flags.declare_key_flag("dry_run")  # listed by --help: this entry point uses it
flags.declare_key_flag("plots")  # the confirmation runs' figures
FLAGS = flags.FLAGS


def settings() -> tuple[list[str], dict]:
  """The models and the study settings from --config, then the plain flags."""
  config = FLAGS.config.to_dict() if FLAGS.config is not None else {}
  models = FLAGS.models or config.pop("models", None)
  config.pop("models", None)
  if not models:
    raise ConfigError("no model to search: pass --models=NAME[,NAME] or a --config with models")
  if isinstance(models, str):
    models = models.split(",")
  for name in ("trials", "confirm_top", "confirm_seeds"):
    if FLAGS[name].value is not None:
      config[name] = FLAGS[name].value
  return [m.strip() for m in models], config


def origins() -> dict[str, str]:
  """Where the study settings came from (:func:`digits_jax.search.space.describe_spec`):
  the config file, or the command line (a flag, or a ``--config.FIELD`` override)."""
  out = {}
  if FLAGS.config is not None:
    for key, value in FLAGS.config.to_dict().items():
      nested = key in ("base", "space") and isinstance(value, dict)
      out |= {f"{key}.{n}": CONFIG_FILE for n in value} if nested else {key: CONFIG_FILE}
    for path in config_flags.get_override_values(FLAGS["config"]):
      parts = path.split(".")
      out[".".join(parts[:2]) if parts[0] in ("base", "space") else parts[0]] = COMMAND_LINE
  for name in ("models", "trials", "confirm_top", "confirm_seeds"):
    if FLAGS[name].present:
      out[name] = COMMAND_LINE
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  workdir = FLAGS.workdir or "runs/search"
  try:
    num_workers, worker_index = workers.split()
    models, config = settings()
    # Every study is checked before anything is written, or a backend starts.
    specs = [space.parse(config, m) for m in models]
  except (*common.USER_ERRORS, ConfigError) as e:
    common.fail(e)
  if FLAGS.dry_run:
    for spec in specs:
      common.print_dry_run(space.describe_spec(spec, origins()))
    common.print_dry_run({"search": common.flag_lines(["workdir"], {"workdir": workdir})})
    return
  common.setup()
  # Optuna, SciPy and the training stack load only now: a dry run needs none of them.
  from digits_jax.analysis import comparison
  from digits_jax.search import confirm, report, study

  try:
    for spec in specs:
      directory = study.study_dir(workdir, spec)
      if FLAGS.report_only:
        opened = study.open_study(workdir, spec, write=False)
      else:
        opened = study.run_worker(
          workdir,
          spec,
          load=common.load_data,
          num_workers=num_workers,
          worker_index=worker_index,
        )
      if jax.process_index() != 0:
        continue
      print(report.write(opened, spec, directory))
      print(f"tables in {directory}/search.md and search.csv")
      if spec.confirm_top and not FLAGS.report_only:
        if study.finished(opened) < spec.trials:
          print(f"confirmation waits for the study to finish ({study.finished(opened)} done)")
          continue
        confirmed = confirm.confirm(
          opened,
          spec,
          directory,
          load=common.load_data,
          num_workers=num_workers,
          worker_index=worker_index,
          plots=FLAGS.plots,
        )
        if confirmed is None:
          print("confirmation: runs of other workers have not finished yet")
        else:
          print(confirmed["markdown"])
          print(f"confirmation in {directory}/confirm/confirm.md and compare.md")
  except (*common.USER_ERRORS, ConfigError, comparison.ComparisonError) as e:
    common.fail(e)


if __name__ == "__main__":
  app.run(main)
