"""Recipe search for conv2_dense64: up to 40 trials of up to 10 epochs, then confirmation.

Command: ``python -m experiments.search --config=configs/search_conv2_dense64.py
--workdir=runs/search-conv2_dense64 --confirm_top=3 --confirm_seeds=3``
Cost: not measured at this size; a reduced study (10 trials of at most 4 epochs on 10,000
training images, one trial confirmed on 3 seeds) took about 38 minutes on the reference
machine (2-core x86 VM, no GPU).
Results: the workdir's search.md/csv, plots and confirm/ (the reduced study's are committed in
results/search_conv2_dense64-2026-12-03/).

    python -m experiments.search --config=configs/search_conv2_dense64.py \\
        --workdir=runs/search-conv2_dense64
    python -m experiments.search --config=configs/search_conv2_dense64.py \\
        --config.trials=12 --config.space.learning_rate.high=0.003 --confirm_top=2

Each ``space`` entry is a Config recipe field: ``log`` (log-uniform), ``float``, ``int``
(both ends included) or ``choice``; weight decay is searched only with adamw or sgd, the
augmentation's strengths only with ``augment``. ``base`` fixes Config fields for every
trial and the confirmation (a training subset, the validation size). See docs/search.md.
"""

import ml_collections

ENTRY_POINT = "experiments.search"


def _range(kind, low, high):
  return ml_collections.ConfigDict({"kind": kind, "low": low, "high": high})


def _choice(*choices):
  return ml_collections.ConfigDict({"kind": "choice", "choices": tuple(choices)})


def get_config():
  config = ml_collections.ConfigDict()
  config.models = "conv2_dense64"
  config.trials = 40
  config.max_epochs = 10
  config.sampler_seed = 0
  config.startup_trials = 10
  config.pruner = "successive_halving"  # or hyperband, median, none
  config.min_resource = 1
  config.reduction_factor = 3
  config.confirm_top = 3
  config.confirm_seeds = 3
  config.confirm_first_seed = 1000
  config.base = ml_collections.ConfigDict({"train_subset": 0, "validation_size": 5000})
  config.space = ml_collections.ConfigDict(
    {
      "optimizer": _choice("adam", "adamw", "sgd"),
      "learning_rate": _range("log", 1e-4, 1e-2),
      "weight_decay": _range("log", 1e-6, 1e-2),
      "momentum": _range("float", 0.8, 0.99),
      "schedule": _choice("constant", "cosine", "onecycle"),
      "batch_size": _choice(32, 64, 128, 256),
      "epochs": _range("int", 5, 10),
      "label_smoothing": _range("float", 0.0, 0.2),
      "augment": _choice(False, True),
      "rotation": _range("float", 0.0, 15.0),
      "shift": _range("float", 0.0, 3.0),
      "zoom": _range("float", 0.0, 0.15),
    }
  )
  return config
