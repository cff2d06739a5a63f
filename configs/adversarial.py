"""Adversarial training against standard training: the Madry et al. MNIST network and
conv3_dense100, each at its recipe without an attack and with fast adversarial training
(FGSM from a random start, eps 0.3, warmed up over two epochs), three seeds.

Command: ``python -m experiments.sweep --config=configs/adversarial.py``, then the strong
evaluation of every run: ``python -m experiments.robustness --workdir=runs/adversarial
--steps=100 --restarts=10 --eps=0.1,0.2,0.3 --overwrite`` and the comparison
``python -m experiments.compare --workdir=runs/adversarial``.
Results and cost: docs/adversarial.md, results/adversarial-2026-12-06/.
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
