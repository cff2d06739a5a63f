"""The quick sweep: every registered model, 2 epochs, seed 0 (``make sweep``).

Command: ``python -m experiments.sweep --config=configs/sweep_quick.py``
Cost: about 15 minutes on the reference machine (2-core x86 VM, no GPU): 9 models at 14-124 s
per epoch (``seconds_per_epoch`` in the source table's results.csv), 2 epochs each.
Results: runs/sweep-quick/ (results.md, compare.md, plots, one folder per run); nothing
committed: it checks that every network trains, not what it reaches.
"""

import ml_collections

ENTRY_POINT = "experiments.sweep"


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.preset = "quick"
  config.epochs = 2
  config.seeds = [0]
  config.workdir = "runs/sweep-quick"
  return config
