"""The ensemble preset: the three strongest networks with stronger augmentation, 20 epochs.

Better on validation than their recipes; three seeds each. The sweep's compare.md gives
their ensemble (one network of each per seed, and all nine runs).

Command: ``python -m experiments.sweep --config=configs/sweep_ensemble.py``
(``make sweep-ensemble``)
Cost: about 3 hours on the reference machine (2-core x86 VM, no GPU): 9 runs of 11-22
minutes (``train_seconds`` in the committed runs' results.json).
Results: results/sweep_ensemble-2026-11-23/ (compare.md with the ensembles, plots and the
runs' small files; the comparison also takes in the source table's runs).
"""

import ml_collections

ENTRY_POINT = "experiments.sweep"


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.preset = "source"
  config.models = "bn_conv3_wide,vgg_small,resnet8"
  config.epochs = 20
  config.rotation = 15.0
  config.shift = 2.8
  config.zoom = 0.15
  config.seeds = "0,1,2"
  config.workdir = "runs/sweep-ensemble"
  return config
