"""The robustness study: every registered model at its source's settings, three seeds, each
run evaluated under MNIST-C's corruptions, FGSM and PGD, for calibration and cost right after
its test evaluation.

Command: ``python -m experiments.sweep --config=configs/robustness_source.py``, then
``python -m experiments.compare --workdir=runs/robustness-source
--workdir=runs/data-efficiency`` for the comparison with the learning curves
(configs/data_efficiency.py trains those runs).
Cost: on the reference machine (2-core x86 VM, no GPU), 2026-12-06: the 27 trainings took
4 to 14 minutes each; each robustness evaluation (15 corruptions of 10,000 images, FGSM and
PGD-40 at four eps on 1,000 images, calibration, cost) took the time docs/robustness.md gives.
Results: results/robustness-2026-12-06/ (robustness.md, compare.md, figures and the runs'
small files; no checkpoints).
"""

import ml_collections

ENTRY_POINT = "experiments.sweep"


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.preset = "source"
  config.seeds = "0,1,2"
  config.robustness = True
  config.plots = False  # each run's figures: python -m experiments.evaluate --workdir=RUN
  config.workdir = "runs/robustness-source"
  return config
