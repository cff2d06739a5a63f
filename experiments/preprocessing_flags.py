"""The preprocessing flags that predict and serve share (same names, types and defaults).

Importing this module defines ``--polarity``, ``--skip``, ``--center`` and
``--stroke_width``; :func:`steps_from_flags` turns them into the
:class:`digits_jax.app.preprocess.Steps` both entry points pass on.
"""

from __future__ import annotations

from absl import flags

from digits_jax.app import preprocess

flags.DEFINE_enum(
  "polarity",
  "auto",
  list(preprocess.POLARITIES),
  "auto: invert dark ink on light paper (decided from the image's border); "
  "invert: always; keep: never.",
)
flags.DEFINE_list(
  "skip",
  [],
  "Preprocessing steps to switch off, from: "
  f"{', '.join(preprocess.STEP_NAMES)}; or 'all' for none at all (grayscale, "
  "resized to 28x28).",
)
flags.DEFINE_enum(
  "center",
  "mass",
  list(preprocess.CENTERS),
  "Centre the digit by its centre of mass (as MNIST) or by its bounding box.",
)
flags.DEFINE_float(
  "stroke_width",
  None,
  "Thicken strokes thinner than this many pixels of "
  "the 28x28 input (off by default; MNIST's are about 2-3).",
)
FLAGS = flags.FLAGS


def steps_from_flags() -> preprocess.Steps:
  """The :class:`digits_jax.app.preprocess.Steps` that the flags describe.

  Raises:
    ValueError: ``--skip`` names a step that does not exist.
  """
  if "all" in FLAGS.skip:
    return preprocess.Steps.none()
  steps = preprocess.Steps(
    polarity=FLAGS.polarity, center=FLAGS.center, stroke_width=FLAGS.stroke_width
  )
  return steps.without(*FLAGS.skip)
