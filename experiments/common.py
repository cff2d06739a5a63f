"""Flags shared by the entry points, so that scripts and notes agree.

Training flags left unset take the value of each model's source recipe
(``digits_jax.models.Recipe``).
"""

from __future__ import annotations

import logging
import sys

import absl.logging
from absl import flags

from digits_jax import checkpoints, data
from digits_jax.config import Config, ConfigError
from digits_jax.models import UnknownModelError
from digits_jax.train import TrainingDivergedError

flags.DEFINE_string("dataset", "mnist", f"One of {', '.join(data.DATASETS)}.")
flags.DEFINE_string("manual_dir", None,
                    "Folder with the four original IDX .gz files; nothing then touches "
                    f"the network. Default: the environment variable {data.MANUAL_DIR_ENV}.")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data_dir (default: tfds' own).")
flags.DEFINE_enum("data_backend", "auto", list(data.BACKENDS),
                  "tfds, idx (reads the .gz files directly; no TensorFlow needed), or auto: "
                  "tfds when TensorFlow is installed.")
flags.DEFINE_string("workdir", None,
                    "Directory for the results (created). Started again on the same directory, "
                    "a run resumes from its last checkpoint, or reports its results if finished.")
flags.DEFINE_bool("overwrite", False,
                  "Delete the results already in --workdir (of any config) and start from "
                  "scratch. Without it, a --workdir holding another config's run is refused.")
flags.DEFINE_integer("epochs", None, "Epochs (default: the model's recipe).")
flags.DEFINE_integer("batch_size", None, "Batch size (default: the model's recipe).")
flags.DEFINE_float("learning_rate", None, "Peak learning rate (default: the recipe's).")
flags.DEFINE_enum("schedule", None, ["constant", "cosine", "onecycle"],
                  "Learning-rate schedule (default: the recipe's).")
flags.DEFINE_float("momentum", None, "SGD momentum (default: the recipe's, 0.9).")
flags.DEFINE_float("weight_decay", None, "Weight decay for adamw and sgd.")
flags.DEFINE_enum("loss", None, ["sparse", "onehot"],
                  "Cross-entropy on integer labels or one-hot targets.")
flags.DEFINE_float("label_smoothing", None, "Label smoothing in [0, 1).")
flags.DEFINE_bool("augment", None, "Random rotations (+-10 deg) and shifts (+-2 px).")
flags.DEFINE_integer("validation_size", 5000,
                     "Training images held out for validation (model selection).")
flags.DEFINE_integer("train_subset", 0,
                     "Train on only the first N training images (0: all). For smoke "
                     "tests, never for reported numbers.")
flags.DEFINE_bool("fast_ops", True, "Use digits_jax.ops' conv and pool (same maths).")
flags.DEFINE_enum("epoch_loop", "auto", ["auto", "scan", "host"],
                  "One compiled scan per epoch, or one compiled step per batch.")

FLAGS = flags.FLAGS

# The errors a user's input can cause; each message names the problem and the fix.
USER_ERRORS = (ConfigError, UnknownModelError, data.DataError, checkpoints.CheckpointError,
               TrainingDivergedError)


def base_config(**overrides) -> Config:
  """The Config the common flags describe (model, optimizer and seed come separately)."""
  values = dict(
      dataset=FLAGS.dataset,
      epochs=FLAGS.epochs,
      batch_size=FLAGS.batch_size,
      learning_rate=FLAGS.learning_rate,
      schedule=FLAGS.schedule,
      momentum=FLAGS.momentum,
      weight_decay=FLAGS.weight_decay,
      loss=FLAGS.loss,
      label_smoothing=FLAGS.label_smoothing,
      augment=FLAGS.augment,
      validation_size=FLAGS.validation_size,
      train_subset=FLAGS.train_subset,
      fast_ops=FLAGS.fast_ops,
  )
  return Config(**(values | overrides))


def load_data(config: Config) -> data.Datasets:
  return data.load_datasets(config.dataset, manual_dir=FLAGS.manual_dir,
                            data_dir=FLAGS.data_dir,
                            validation_size=config.validation_size,
                            backend=FLAGS.data_backend)


def setup_logging() -> None:
  # Our progress lines on stderr; orbax's per-checkpoint chatter only when asked for.
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                      datefmt="%H:%M:%S", stream=sys.stderr, force=True)
  absl.logging.set_verbosity(absl.logging.WARNING)


def fail(error: Exception) -> None:
  """Exits non-zero with the error's message and no traceback."""
  sys.exit(f"error: {error}")
