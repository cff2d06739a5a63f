"""The final fit: one network of the ensemble preset, trained again on all 60,000 images.

Trains ``vgg_small`` with the ensemble preset's stronger augmentation for 20 epochs on the
55,000-image training part (validation chooses the epoch), then the same recipe on all
60,000 training images for that epoch count, in ``<workdir>-final``, tested once at its last
epoch. ``--config.model`` takes another network at its recipe (``resnet8``,
``bn_conv3_wide``), ``--config.seed`` another seed. Given the folder of a finished run of
``configs/sweep_ensemble.py`` (a copy of a committed one, say), only the final fit trains.

Command: ``python -m experiments.train --config=configs/final_fit.py --config.seed=0
--workdir=runs/final-fit/vgg_small-seed0``
Cost: on the reference machine (2-core x86 VM, no GPU), 15-20 minutes for each of the two
trainings of vgg_small or resnet8 (44-60 s per epoch), so about half an hour per seed;
bn_conv3_wide about 30 s per epoch. The final fit alone: 7-23 minutes (measured 2026-12-04).
Results: results/final_fit-2026-12-04/ (the final fits' small files; docs/accuracy.md).
"""

import ml_collections

ENTRY_POINT = "experiments.train"


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = "vgg_small"
  config.epochs = 20
  config.rotation = 15.0
  config.shift = 2.8
  config.zoom = 0.15
  config.seed = 0
  config.final_fit = True
  return config
