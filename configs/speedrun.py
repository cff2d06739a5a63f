"""Time to 99%: the speedrun recipe for 10 seeds, side by side with PyTorch when it is
installed (``make speedrun``).

Command: ``python -m experiments.speedrun --config=configs/speedrun.py``
Cost: about 3 minutes on the reference machine (2-core x86 VM, no GPU): 10 seeds of a few
seconds each for us and for PyTorch, plus one compilation.
Results: runs/speedrun/ (speedrun.json and speedrun.md); the committed ones are in
results/speedrun-2026-11-23/, discussed in docs/speedrun.md.
"""

import ml_collections

ENTRY_POINT = "experiments.speedrun"


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seeds = "0-9"
  return config
