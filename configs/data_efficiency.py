"""Accuracy against the number of training images: every registered model at its source's
settings on the first 1,000, 5,000 and 15,000 images of the training split, three seeds each.

Command: ``python -m experiments.sweep --config=configs/data_efficiency.py``; the learning
curves come with ``python -m experiments.compare --workdir=runs/data-efficiency
--workdir=runs/robustness-source`` (the study's own full-data runs give the 55,000-image
point; configs/robustness_source.py). Validation stays the same 5,000 held-out images.
Cost: the 1,000-image runs took 0.5 to 4.5 minutes each on the reference machine (2-core x86
VM, no GPU, 2026-12-06, shared with other work); a run on N images costs about N / 55,000 of
a full run plus its per-epoch validation of 5,000 images.
Results: results/robustness-2026-12-06/data_efficiency/ (learning_curve.png, robustness.md): the
1,000-, 5,000- and 15,000-image points, three seeds each (the 15,000-image runs, 2026-12-07,
trained in 2 s to 5.6 minutes each beside other work).
"""

import ml_collections

ENTRY_POINT = "experiments.sweep"


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.preset = "source"
  config.seeds = "0,1,2"
  config.train_subset = "1000,5000,15000"
  config.plots = False
  config.workdir = "runs/data-efficiency"
  return config
