"""Rebuilds a run's reports and plots from its checkpoint, without training.

    python -m experiments.evaluate --workdir=runs/sweep-quick/conv2_dense64-adam-ep1-seed0

Reads the run's config.json, restores its best-by-validation checkpoint, predicts the
test split and writes the classification report, confusion matrix, calibration, plots
and TensorBoard scalars again (see :mod:`digits_jax.analysis.report`). Prints the test accuracy
and whether it equals the one results.json saved. A directory without a config or a
checkpoint exits with status 1 and one ``error:`` line. ``--plots=false`` re-tests the
checkpoint and writes the text reports only. The logic lives in
:func:`digits_jax.runs.rebuild`.
"""

from absl import app, flags

from digits_jax import runs
from experiments import common

for _name in ("workdir", "manual_dir", "data_dir", "data_backend", "plots", "tune_malloc"):
  flags.declare_key_flag(_name)  # listed by --help: this entry point uses it
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.setup()
  try:
    out = runs.rebuild(
      FLAGS.workdir,
      manual_dir=FLAGS.manual_dir,
      data_dir=FLAGS.data_dir,
      backend=FLAGS.data_backend,
      plots=FLAGS.plots,
    )
  except common.USER_ERRORS as e:
    common.fail(e)
  summary = out["report"]
  print(
    f"{FLAGS.workdir}: test accuracy {100 * out['test_accuracy']:.2f}% "
    f"(checkpoint of epoch {out['best_epoch']}), macro F1 {100 * summary['macro_f1']:.2f}%, "
    f"ECE {100 * summary['ece']:.2f}%"
  )
  if out["reproduced"] is None:
    print("no results.json to compare with (the run did not finish)")
  elif out["reproduced"]:
    print(f"reproduced exactly: results.json has test accuracy {out['saved_test_accuracy']!r}")
  else:
    print(
      f"warning: results.json has test accuracy {out['saved_test_accuracy']!r}, the "
      f"checkpoint gives {out['test_accuracy']!r} now (other data, device or library "
      "versions?)"
    )
  print(
    f"wrote {len(summary['files'])} reports and plots into {FLAGS.workdir}: "
    + ", ".join(summary["files"])
  )


if __name__ == "__main__":
  app.run(main)
