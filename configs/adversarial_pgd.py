"""PGD-7 adversarial training of conv3_dense100 and of the Madry et al. MNIST network
(Madry et al. 2018's recipe with 7 attack steps instead of 40, as a 2-core CPU allows):
eps 0.3, step 2.5 eps / 7, a random start, eps warmed up over two epochs, each network's
source recipe otherwise (10 epochs), three seeds. The companion of configs/adversarial.py
(standard and fast training of the same two networks).

Command: ``python -m experiments.sweep --config=configs/adversarial_pgd.py``, then the strong
evaluation of every run: ``python -m experiments.robustness --workdir=runs/adversarial-pgd
--steps=100 --restarts=10 --eps=0.1,0.2,0.3 --overwrite``.
Cost: on the reference machine (2-core x86 VM, no GPU, 2026-12-07), conv3_dense100 about 8
minutes per run with nothing else running, its strong evaluation 6.5 minutes; madry_mnist
130-140 s per epoch with the machine nearly to itself (about 23 minutes per run), its strong
evaluation 28-34 minutes sharing the machine.
Results: results/adversarial-2026-12-06/ and docs/adversarial.md (conv3_dense100: 92.5% ± 1.9
under PGD-100 with 10 restarts at eps 0.3, 98.90% clean; madry_mnist after 10 epochs: 82.2%
± 1.2 and 98.38% clean; three seeds each).
"""

import ml_collections

ENTRY_POINT = "experiments.sweep"


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.preset = "source"
  config.models = "conv3_dense100,madry_mnist"
  config.adversarial = "pgd"
  config.adversarial_eps = "0.3"
  config.adversarial_steps = "7"
  config.adversarial_warmup = "2"
  config.seeds = "0,1,2"
  config.plots = False
  config.workdir = "runs/adversarial-pgd"
  return config
