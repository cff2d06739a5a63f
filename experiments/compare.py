"""Compares finished runs with confidence intervals and significance tests.

    python -m experiments.compare --workdir=runs/sweep-quick
    python -m experiments.compare --workdir=runs/sweep-a --workdir=runs/sweep-b --output_dir=cmp

Searches every --workdir recursively for finished run directories, groups them into
configurations (runs that differ only in seed are seeds of one), and writes compare.md,
compare.csv, compare_pairs.csv, compare.json, compare_forest.png and compare_pairs.png into
--output_dir (default: the first --workdir); prints compare.md. The best --ensemble_top
configurations by validation accuracy are also averaged into an ensemble
(--ensemble_one_per_model: only each model's best configuration, so that the members are
different networks). Runs that cannot be compared (other datasets or test sets, no stored
test outputs) stop it with one ``error:`` line and exit status 1. The logic is in
:mod:`digits_jax.analysis.comparison`, the statistics in :mod:`digits_jax.analysis.stats`,
the files in :mod:`digits_jax.analysis.compare_report`; docs/compare.md explains the verdict.
"""

import sys

from absl import app, flags

from digits_jax import rundir
from digits_jax.analysis import compare_report, comparison
from experiments import logs

flags.DEFINE_multi_string(
  "workdir",
  None,
  "Folder of finished runs (a sweep, a run, or a folder of sweeps), "
  "searched recursively; give it several times to compare runs of "
  "several sweeps.",
)
flags.DEFINE_integer(
  "ensemble_top",
  comparison.DEFAULT_ENSEMBLE_TOP,
  "Average the configurations with the best mean validation accuracy, this many, into an "
  "ensemble of configurations (0: none).",
  lower_bound=0,
)
flags.DEFINE_bool(
  "ensemble_one_per_model",
  False,
  "Let the ensemble take only each model's best configuration by validation accuracy, so "
  "that its members are different networks.",
)
flags.DEFINE_string("output_dir", None, "Where to write the files (default: the first --workdir).")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logs.setup()
  output_dir = FLAGS.output_dir or FLAGS.workdir[0]
  try:
    compared = comparison.compare_runs(
      rundir.find_runs(FLAGS.workdir),
      ensemble_top=FLAGS.ensemble_top,
      one_per_model=FLAGS.ensemble_one_per_model,
    )
    markdown = compare_report.write_comparison(compared, output_dir)
  except rundir.RunDirError as e:
    sys.exit(f"error: {e}")
  except OSError as e:  # an output folder that cannot be written, a file that cannot be read
    sys.exit(f"error: {e}")
  print(markdown)
  print(
    f"wrote compare.md, compare.csv, compare_pairs.csv, compare.json, compare_forest.png "
    f"and compare_pairs.png into {output_dir}"
  )


if __name__ == "__main__":
  app.run(main)
