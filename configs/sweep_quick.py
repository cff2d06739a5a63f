"""The quick sweep: every registered model, seed 0 (``make sweep``).

Command: ``python -m experiments.sweep --config=configs/sweep_quick.py``
Epochs: the quick preset's (2 per run, 1 for the three heavy networks and the speedruns; see
``experiments/sweep.py``); ``--epochs=N`` gives every run N.
Cost: about 7 minutes on the reference machine (2-core x86 VM, no GPU; docs/install.md has
the per-network figures).
Results: runs/sweep-quick/ (compare.md, plots, one folder per run); nothing committed: it
checks that every network trains, not what it reaches.
"""

import ml_collections

ENTRY_POINT = "experiments.sweep"


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.preset = "quick"
  config.seeds = [0]
  config.workdir = "runs/sweep-quick"
  return config
