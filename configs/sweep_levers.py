"""The levers study: vgg_small with the ensemble preset's augmentation plus elastic
distortion and a moving average of the weights, 20 epochs, three seeds.

Asks what elastic distortion (alpha 34, sigma 4) and weight averaging (decay 0.999) add to
the strongest single configuration (vgg_small in configs/sweep_ensemble.py). Validation
chooses the epoch, of the averaged weights; ``python -m experiments.levers --workdir=RUN``
then compares, on validation only, the last epoch's trained and averaged weights, each with
and without test-time augmentation.

Command: ``python -m experiments.sweep --config=configs/sweep_levers.py``
Cost: about 20 minutes per seed on the reference machine (2-core x86 VM, no GPU) when it
has the machine to itself (51 s per epoch), about an hour for the three seeds.
Results: results/levers-2026-12-03/ (the runs' small files, the levers' validation figures
and the comparison with the ensemble preset's vgg_small runs; docs/accuracy.md).
"""

import ml_collections

ENTRY_POINT = "experiments.sweep"


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.preset = "source"
  config.models = "vgg_small"
  config.epochs = 20
  config.rotation = 15.0
  config.shift = 2.8
  config.zoom = 0.15
  config.elastic_alpha = 34.0
  config.elastic_sigma = 4.0
  config.ema = 0.999
  config.seeds = "0,1,2"
  config.workdir = "runs/sweep-levers"
  return config
