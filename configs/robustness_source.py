"""The robustness study: every registered model at its source's settings, three seeds, each
run evaluated under MNIST-C's corruptions, FGSM and PGD, for calibration and cost right after
its test evaluation.

Command: ``python -m experiments.sweep --config=configs/robustness_source.py``, then
``python -m experiments.compare --workdir=runs/robustness-source
--workdir=runs/data-efficiency`` for the comparison with the learning curves
(configs/data_efficiency.py trains those runs).
Cost: on the reference machine (2-core x86 VM, no GPU), 2026-12-06, sharing the machine with
other work: a training took 0.5-7 minutes for the source networks, 8.5 (bn_conv3_wide), 14
(resnet8) and 16 (vgg_small). Each robustness evaluation, measured again on 2026-12-07 with
the machine to itself: 12-25 s for the source and speedrun networks, 43-65 s for
bn_conv3_wide, vgg_small and resnet8 (docs/robustness.md, "What an evaluation costs").
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
