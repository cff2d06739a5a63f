"""TRADES training (Zhang et al. 2019) of conv3_dense100: the KL term between the clean and
the attacked prediction weighted by beta 6, its attack 7 steps of L-inf PGD on that KL at eps
0.3 (step 2.5 eps / 7 from a random start), eps warmed up over two epochs, the network's
source recipe otherwise (SGD, 10 epochs), three seeds. The companion of configs/adversarial.py
and configs/adversarial_pgd.py.

Command: ``python -m experiments.sweep --config=configs/adversarial_trades.py``, then the strong
evaluation of every run: ``python -m experiments.robustness --workdir=runs/adversarial-trades
--steps=100 --restarts=10 --eps=0.1,0.2,0.3 --overwrite``.
Cost: on the reference machine (2-core x86 VM, no GPU, 2026-12-07), 94-103 s per epoch
sharing the machine with a strong evaluation (about 18 minutes per run); ``python -m
benchmarks.adversarial --models=conv3_dense100 --trades_steps=7`` puts a TRADES-7 epoch at
7.1 standard epochs (PGD-7: 6.2). Its strong evaluation took 11-12 minutes, sharing the machine.
Results: results/adversarial-2026-12-06/ and docs/adversarial.md (92.8% ± 1.7 under PGD-100
with 10 restarts at eps 0.3, as PGD-7 training, but 98.14% ± 0.12 clean, 0.76 points below it).
"""

import ml_collections

ENTRY_POINT = "experiments.sweep"


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.preset = "source"
  config.models = "conv3_dense100"
  config.adversarial = "trades"
  config.adversarial_eps = "0.3"
  config.adversarial_steps = "7"
  config.adversarial_warmup = "2"
  config.trades_beta = "6"
  config.seeds = "0,1,2"
  config.plots = False
  config.workdir = "runs/adversarial-trades"
  return config
