"""The data flags every entry point that loads MNIST shares, and the loader they describe.

Kept apart from :mod:`experiments.common` so that an entry point which reads several runs
(``--workdir`` repeated, e.g. :mod:`experiments.robustness`) can have them without
common's single ``--workdir``.
"""

from __future__ import annotations

from absl import flags

from digits_jax import data
from digits_jax.config import Config

flags.DEFINE_string(
  "manual_dir",
  None,
  "Folder with the four original MNIST IDX files (gzipped or not); nothing "
  f"then touches the network. Default: the environment variable "
  f"{data.MANUAL_DIR_ENV}.",
)
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data_dir (default: tfds' own).")
flags.DEFINE_enum(
  "data_backend",
  "auto",
  list(data.BACKENDS),
  "tfds, idx (reads the IDX files directly; no TensorFlow needed), or auto: "
  "tfds when TensorFlow is installed.",
)
FLAGS = flags.FLAGS


def load_data(config: Config) -> data.Datasets:
  """The datasets of ``config`` from where the data flags say."""
  return data.load_datasets(
    config.dataset,
    manual_dir=FLAGS.manual_dir,
    data_dir=FLAGS.data_dir,
    validation_size=config.validation_size,
    backend=FLAGS.data_backend,
  )
