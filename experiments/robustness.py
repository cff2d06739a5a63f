"""Evaluates finished runs beyond clean accuracy: corruptions, attacks, calibration and cost.

    python -m experiments.robustness --workdir=runs/sweep-source            # every run of a sweep
    python -m experiments.robustness --workdir=RUN --workdir=RUN2 --steps=100 --restarts=10
    python -m experiments.robustness --workdir=RUN --mnist_c_dir=mnist_c    # published arrays

Each --workdir is a run or any folder of runs (searched recursively). For every finished run it
restores the best-by-validation checkpoint and writes <run>/robustness/: predicted labels under
each of MNIST-C's 15 corruptions and under FGSM and PGD at each eps, calibration before and
after temperature scaling (fitted on the validation split), cost, and summary.json with the
checks against gradient masking. Started again, an interrupted evaluation computes only what
it had not written. `python -m experiments.compare --workdir=...` then compares the runs on
each axis. Bad settings, a run without a checkpoint or a --mnist_c_dir missing a file stop it
before any work with one ``error:`` line. The logic lives in
:mod:`digits_jax.robustness_eval`; docs/robustness.md says what each axis measures.
"""

from __future__ import annotations

import sys
import time

import jax
from absl import app, flags

from digits_jax import data, robustness_eval, rundir
from digits_jax.models import native
from digits_jax.robustness import attacks, corruptions
from digits_jax.training import checkpoints
from experiments import data_flags, logs

flags.adopt_module_key_flags(data_flags)
flags.DEFINE_multi_string(
  "workdir", None, "A finished run, or a folder of runs (a sweep's); give it several times."
)
flags.DEFINE_list(
  "corruptions",
  ["all"],
  f"MNIST-C corruptions to apply (all: the 15; none: skip): {', '.join(corruptions.NAMES)}.",
)
flags.DEFINE_integer("corruption_seed", 0, "Seed of the corruptions' randomness.")
flags.DEFINE_string(
  "mnist_c_dir",
  None,
  "Read the published MNIST-C arrays (<dir>/<corruption>/test_images.npy and "
  "test_labels.npy) instead of generating the corruptions.",
)
flags.DEFINE_list("attacks", list(attacks.ATTACKS), "Attacks (none: skip): fgsm, pgd.")
flags.DEFINE_list(
  "eps", [f"{e:g}" for e in robustness_eval.DEFAULT_EPS], "L-inf radii in (0, 1], pixel scale."
)
flags.DEFINE_integer("steps", 40, "PGD steps (100 for a final table).")
flags.DEFINE_float("step_size", None, "PGD step size (default: 2.5 * eps / steps).")
flags.DEFINE_integer("restarts", 1, "PGD random restarts (several for a final table).")
flags.DEFINE_bool(
  "targeted",
  False,
  "PGD also runs one targeted attack per class (each raising that class's logit over the "
  "true one), keeping whichever breaks an image: stronger, and 10 times the cost.",
)
flags.DEFINE_integer(
  "attack_subset", 1000, "Test images attacked: a fixed class-stratified subset."
)
flags.DEFINE_integer("attack_seed", 0, "Seed of the subset, random starts and restarts.")
flags.DEFINE_integer(
  "attack_batch_size",
  500,
  "Images per block of random starts (a key each); the attacks run 50 images per call.",
)
flags.DEFINE_bool("cost", True, "Measure FLOPs and latency on this machine.")
flags.DEFINE_string(
  "contact_sheet",
  None,
  "Also draw one test digit of each class under every corruption into this PNG file.",
)
flags.DEFINE_bool(
  "overwrite", False, "Delete each run's earlier robustness evaluation (any settings) first."
)
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def settings_from_flags() -> robustness_eval.Settings:
  """The evaluation settings the flags describe (checked by the caller)."""

  def names(values):
    return () if values == ["none"] else tuple(values)

  try:
    eps = tuple(float(e) for e in FLAGS.eps)
  except ValueError as e:
    raise robustness_eval.RobustnessError(f"--eps takes numbers in (0, 1]: {e}") from None
  return robustness_eval.Settings(
    corruptions=names(FLAGS.corruptions),
    corruption_seed=FLAGS.corruption_seed,
    mnist_c_dir=FLAGS.mnist_c_dir,
    attacks=names(FLAGS.attacks),
    eps=eps,
    steps=FLAGS.steps,
    step_size=FLAGS.step_size,
    restarts=FLAGS.restarts,
    targeted=FLAGS.targeted,
    subset=FLAGS.attack_subset,
    attack_seed=FLAGS.attack_seed,
    batch_size=FLAGS.attack_batch_size,
    cost=FLAGS.cost,
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logs.setup()
  checkpoints.quiet_abandoned_reads()
  if jax.default_backend() == "cpu":
    native.tune_allocator()
  start = time.perf_counter()
  try:
    settings = settings_from_flags().check()
    paths = rundir.find_runs(FLAGS.workdir)
    if FLAGS.contact_sheet:
      test = data_flags.load_data(rundir.read_config(paths[0])[0]).test
      corruptions.contact_sheet(
        test.images,
        test.labels,
        FLAGS.contact_sheet,
        settings.corruption_seed,
        settings.corruptions,
      )
      print(f"wrote {FLAGS.contact_sheet}")
    summaries = robustness_eval.evaluate_runs(
      paths,
      settings,
      load=data_flags.load_data,
      overwrite=FLAGS.overwrite,
      progress=lambda line: print(f"[{time.perf_counter() - start:7.1f} s] {line}", flush=True),
    )
  except (
    robustness_eval.RobustnessError,
    rundir.RunDirError,
    checkpoints.CheckpointError,
    data.DataError,
  ) as e:
    sys.exit(f"error: {e}")
  for path, s in zip(paths, summaries, strict=True):
    parts = [f"clean {s['clean_accuracy']:.2%}"]
    if s["corruptions"]:
      c = s["corruptions"]
      parts.append(f"corruptions {c['mean']:.2%} (worst {c['worst']} {c['worst_accuracy']:.2%})")
    if s["attacks"]:
      for attack, by_eps in s["attacks"]["accuracy"].items():
        parts.append(f"{attack} " + ", ".join(f"{e}: {a:.1%}" for e, a in by_eps.items()))
      if not s["attacks"]["checks_passed"]:
        failed = [c["check"] for c in s["attacks"]["checks"] if not c["passed"]]
        parts.append(f"WARNING: masking checks failed: {'; '.join(failed)}")
    parts.append(f"ECE {s['calibration']['ece']:.2%}")
    print(f"{path}: " + "; ".join(parts))
  print(f"wrote robustness/summary.json into {len(summaries)} runs")


if __name__ == "__main__":
  app.run(main)
