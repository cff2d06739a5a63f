"""The source table: every registered model at its source's settings, three seeds.

Command: ``python -m experiments.sweep --config=configs/sweep_source.py`` (``make sweep-full``)
Cost: about 6 hours on the reference machine (2-core x86 VM, no GPU): 27 runs, 5-15 minutes
each (the sum of ``seconds_per_run`` times seeds in the committed results.csv).
Results: results/sweep_source-2026-11-23/ (results.md, compare.md, plots and the runs'
small files; no checkpoints).
"""

import ml_collections

ENTRY_POINT = "experiments.sweep"


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.preset = "source"
  config.seeds = "0,1,2"
  config.workdir = "runs/sweep-source"
  return config
