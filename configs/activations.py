"""The activation study: conv2_dense64 and bn_conv3_wide at their source recipes with each of
--activation's non-linearities (relu, gelu, silu, elu, leaky_relu, tanh), three seeds.

Command: ``python -m experiments.sweep --config=configs/activations.py``, then
``python -m experiments.compare --workdir=runs/activations`` for the verdicts against ReLU.
Cost: 36 runs. On the reference machine (2-core x86 VM, no GPU, 2026-12-06) a training epoch
of conv2_dense64 costs 1.15-1.63 times ReLU's by activation (docs/speed.md, "Activations"):
about 2-3 minutes a run for conv2_dense64, and (estimated from bn_conv3_wide's 8.5-minute
ReLU training) 8.5-14 minutes for bn_conv3_wide; about 4 hours in all.
Results: runs/activations (not yet run).
"""

import ml_collections

ENTRY_POINT = "experiments.sweep"


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.preset = "source"
  config.models = "conv2_dense64,bn_conv3_wide"
  config.activation = "relu,gelu,silu,elu,leaky_relu,tanh"
  config.seeds = "0,1,2"
  config.plots = False
  config.workdir = "runs/activations"
  return config
