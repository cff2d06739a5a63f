"""Transfer from MNIST to Fashion-MNIST: conv2_dense64 fine-tuned from an MNIST run, the
same with its convolutions frozen (only the dense layers train), and from scratch, on the
first 1,000 and 5,000 Fashion-MNIST training images and on all of them, three seeds each.

Each transfer run starts from the MNIST run of its own seed ({seed} in init_from).
Command: these, in order.

1. the MNIST source runs: ``python -m experiments.sweep --models=conv2_dense64 --seeds=0,1,2
   --preset=source --workdir=runs/transfer-source`` (folders conv2_dense64-adam-seedN);
2. ``make fashion-mnist DIR=data/fashion-mnist`` (or the four official .gz files there);
3. this sweep: ``python -m experiments.sweep --config=configs/transfer.py
   --manual_dir=data/fashion-mnist``;
4. ``python -m experiments.compare --workdir=runs/transfer``.

init_from=none gives the runs from scratch (27 runs in all: freeze means nothing without a
source run, so scratch runs once per seed and subset). docs/transfer.md describes the flags.
Cost: the 27 runs took about 28 minutes on the reference machine (2-core x86 VM, no GPU,
2026-12-06, shared with other jobs): 140 s a full-data run (53 s frozen), 8-17 s on 5,000
images, 3-4 s on 1,000, plus the sources (conv2_dense64's MNIST runs, about 2.5 minutes each).
Results: results/transfer-2026-12-06/ (compare.md, learning_curve.png), docs/transfer.md.
"""

import ml_collections

ENTRY_POINT = "experiments.sweep"


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.preset = "source"
  config.models = "conv2_dense64"
  config.dataset = "fashion_mnist"
  config.init_from = "none,runs/transfer-source/conv2_dense64-adam-seed{seed}"
  config.freeze = "none,features"
  config.train_subset = "1000,5000,0"
  config.seeds = "0,1,2"
  config.plots = False
  config.workdir = "runs/transfer"
  return config
