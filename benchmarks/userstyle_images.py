"""Writes the user-style digit set: handwriting fonts on photographed-looking paper.

    python -m benchmarks.userstyle_images --output_dir=userstyle [--count=500] [--seed=0]

See :mod:`benchmarks.userstyle`. The files are named ``<digit>_<index>.<ext>`` and listed
with their digit in ``labels.csv``; the same flags make the same files. The fonts come from
Debian's packages (``.ci/run`` installs them); a missing one is named with its package.
"""

from __future__ import annotations

import sys

from absl import app, flags

from benchmarks import userstyle

flags.DEFINE_string("output_dir", "userstyle", "Folder for the images and labels.csv.")
flags.DEFINE_integer(
  "count", userstyle.DEFAULT_COUNT, "Number of images (a multiple of 10 keeps the digits balanced)."
)
flags.DEFINE_integer("seed", 0, "Seed of every random choice.")
flags.DEFINE_list("fonts", [], "Font files to use instead of the default handwriting fonts.")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.count <= 0:
    sys.exit(f"error: --count must be positive, got {FLAGS.count}")
  try:
    rows = userstyle.generate(FLAGS.output_dir, FLAGS.count, seed=FLAGS.seed, fonts=FLAGS.fonts)
  except userstyle.FontsMissingError as e:
    sys.exit(f"error: {e}")
  print(f"wrote {len(rows)} images and {userstyle.LABELS_FILE} into {FLAGS.output_dir}")


if __name__ == "__main__":
  app.run(main)
