"""The quick sweep: every registered model, seed 0 (``make sweep``).

Command: ``python -m experiments.sweep --config=configs/sweep_quick.py``
Settings: the quick preset's, one epoch per run, the three heavy networks on part of the
training split (``QUICK_SETTINGS`` in ``digits_jax/sweep/grid.py``); ``--epochs=N`` gives every
run N. Each run writes its text reports, not its figures (``plots = False``).
Cost: 3 to 5.5 minutes on the reference machine (2-core x86 VM, no GPU), depending on its
load; docs/install.md has the per-network figures.
Results: runs/sweep-quick/ (compare.md, plots, one folder per run); nothing committed: it
checks that every network trains, not what it reaches.
"""

import ml_collections

ENTRY_POINT = "experiments.sweep"


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.preset = "quick"
  config.seeds = "0"
  config.workdir = "runs/sweep-quick"
  config.plots = False  # each run's figures: python -m experiments.evaluate --workdir=RUN
  return config
