"""A local page to draw a digit (or drop an image) and watch the networks read it.

    python -m experiments.serve --workdir=RUN [--workdir=RUN2 ...] [--port=8000]

Serves ``digits_jax/app/web/index.html`` on http://127.0.0.1:8000/ (``--host`` to listen
elsewhere; ``--port=0`` picks a free port). The page sends the drawing as a PNG to
``POST /api/predict`` while the person draws; the answer is JSON: the 28x28 input the
networks got (:func:`digits_jax.app.preprocess.preprocess`), and every model's and the
ensemble's ten probabilities. ``GET /api/models`` lists the loaded runs.

Requests larger than ``--max_bytes`` get 413 and a body that is not an image 400, each with
``{"error": message}``. ``--skip``, ``--polarity``, ``--center`` and ``--stroke_width``
change the preprocessing as in ``experiments.predict``. An image without ink (an empty
canvas) is no error of the person drawing: it gets 422 with ``{"empty": true, "hint":
EMPTY_HINT, "error": message}``, and the page shows the hint in grey where the answer would
be. The standard library's :mod:`http.server` serves it (:mod:`digits_jax.app.server`): one
process, no dependencies beyond the project's.
"""

from __future__ import annotations

import logging
import sys

import numpy as np
from absl import app, flags

from digits_jax.app import predict
from digits_jax.app.server import make_server
from digits_jax.runs import RunDirError
from digits_jax.training import checkpoints
from experiments import logs, preprocessing_flags
from experiments.preprocessing_flags import steps_from_flags

flags.DEFINE_multi_string(
  "workdir", None, "A trained run's work directory; repeat the flag for an ensemble."
)
flags.DEFINE_string(
  "host", "127.0.0.1", "Address to listen on; the default is reachable from this machine only."
)
flags.DEFINE_integer("port", 8000, "Port to listen on (0: any free port, printed at start).")
flags.DEFINE_integer("max_bytes", 5_000_000, "Largest request body accepted.")
flags.adopt_module_key_flags(preprocessing_flags)  # --help lists them too
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logs.setup(level=logging.WARNING)
  try:
    steps = steps_from_flags()
    runs = predict.load_predictors(FLAGS.workdir)
  except (ValueError, RunDirError, checkpoints.CheckpointError) as e:
    sys.exit(f"error: {e}")
  for run in runs:  # compile the forward pass before the first person draws
    run.probabilities(np.zeros((1, 28, 28, 1), np.float32))
  try:
    server = make_server(runs, FLAGS.host, FLAGS.port, max_bytes=FLAGS.max_bytes, steps=steps)
  except OSError as e:
    sys.exit(f"error: cannot listen on {FLAGS.host}:{FLAGS.port} ({e}); choose another --port")
  host, port = server.server_address[:2]
  print(
    f"serving {', '.join(r.name for r in runs)} on http://{host}:{port}/ (Ctrl-C stops)", flush=True
  )
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()


if __name__ == "__main__":
  app.run(main)
