"""The activation study: conv2_dense64 and bn_conv3_wide at their source recipes with each of
--activation's non-linearities (relu, gelu, silu, elu, leaky_relu, tanh), three seeds.

Command: ``python -m experiments.sweep --config=configs/activations.py``, then
``python -m experiments.compare --workdir=runs/activations`` for the verdicts against ReLU.
Cost: 36 runs. On the reference machine (2-core x86 VM, no GPU, 2026-12-06, shared with other
jobs) the 18 conv2_dense64 runs took 47 minutes (79 s a ReLU run, 121-186 s the others; a
training epoch costs 1.15-1.63 times ReLU's by activation, docs/speed.md, "Activations"), and a
bn_conv3_wide run 5-10 minutes; the robustness evaluation adds about 2 minutes a run.
Results: results/activations-2026-12-06/ (one comparison per network), docs/activations.md.
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
