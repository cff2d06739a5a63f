"""Longer training: bn_conv3_wide at its recipe for 30 epochs instead of 10, seed 0.

Asks whether more epochs alone help (docs/accuracy.md: they do not beat the stronger
augmentation of configs/sweep_ensemble.py).

Command: ``python -m experiments.sweep --config=configs/sweep_longer.py``
Cost: about 1.4 hours on the reference machine (2-core x86 VM, no GPU; ``train_seconds``
in the committed run's results.json).
Results: results/sweep_ensemble-2026-11-23/runs/bn_conv3_wide-adamw-ep30-seed0/ (compared
there with the ensemble runs).
"""

import ml_collections

ENTRY_POINT = "experiments.sweep"


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.preset = "source"
  config.models = "bn_conv3_wide"
  config.epochs = 30
  config.seeds = "0"
  config.workdir = "runs/sweep-longer"
  return config
