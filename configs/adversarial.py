"""Adversarial training against standard training: the Madry et al. MNIST network and
conv3_dense100, each at its recipe without an attack and with fast adversarial training
(FGSM from a random start, eps 0.3, warmed up over two epochs), three seeds.

Command: ``python -m experiments.sweep --config=configs/adversarial.py``, then the strong
evaluation of every run: ``python -m experiments.robustness --workdir=runs/adversarial
--steps=100 --restarts=10 --eps=0.1,0.2,0.3 --overwrite`` and the comparison
``python -m experiments.compare --workdir=runs/adversarial``.
Cost: on the reference machine (2-core x86 VM, no GPU, 2026-12-06, shared with other work),
a conv3_dense100 FGSM training took 8 minutes (about 1.6 times its standard epoch), the
madry_mnist trainings 2 to 3 times longer (docs/adversarial.md has the figures).
Results: results/adversarial-2026-12-06/ and docs/adversarial.md.
"""

import ml_collections

ENTRY_POINT = "experiments.sweep"


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.preset = "source"
  config.models = "conv3_dense100,madry_mnist"
  config.adversarial = "none,fgsm"
  config.adversarial_eps = "0.3"
  config.adversarial_warmup = "2"
  config.seeds = "0,1,2"
  config.plots = False
  config.workdir = "runs/adversarial"
  return config
