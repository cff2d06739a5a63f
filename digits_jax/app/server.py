"""The drawing page's server: the page, and the JSON API that reads a drawing with trained runs.

``GET /`` is ``web/index.html``; ``POST /api/predict`` takes the drawing as an image and
answers with the 28x28 input the networks got (:func:`digits_jax.app.preprocess.preprocess`)
and every model's and the ensemble's ten probabilities; ``GET /api/models`` lists the loaded
runs. Requests larger than ``max_bytes`` get 413 and a body that is not an image 400, each
with ``{"error": message}``; an image without ink gets 422 with ``{"empty": true, "hint":
EMPTY_HINT, "error": message}``. The standard library's :mod:`http.server` serves it
(``python -m experiments.serve``).
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from digits_jax.app import predict, preprocess
from digits_jax.runs import Predictor

log = logging.getLogger(__name__)

EMPTY_HINT = "Draw a digit first"  # what the page says when there is no ink to read


def page() -> bytes:
  """The drawing page (package data of :mod:`digits_jax`)."""
  return resources.files("digits_jax.app").joinpath("web/index.html").read_bytes()


def make_handler(
  runs: list[Predictor], *, max_bytes: int, steps: preprocess.Steps | None = None
) -> type[BaseHTTPRequestHandler]:
  """A request handler class serving the page and the prediction endpoint for ``runs``."""
  html = page()
  lock = threading.Lock()  # one prediction at a time: the models are not re-entrant
  models = [run.name for run in runs] + ([predict.ENSEMBLE] if len(runs) > 1 else [])

  class Handler(BaseHTTPRequestHandler):
    server_version = "digits_jax"

    def _send(self, status: int, body: bytes, content_type: str) -> None:
      self.send_response(status)
      self.send_header("Content-Type", content_type)
      self.send_header("Content-Length", str(len(body)))
      self.send_header("Cache-Control", "no-store")
      self.send_header("X-Content-Type-Options", "nosniff")
      self.end_headers()
      self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
      self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
      self._json(status, {"error": message})

    def do_GET(self):  # noqa: N802 (http.server's name)
      path = self.path.split("?", 1)[0]
      if path in ("/", "/index.html"):
        self._send(HTTPStatus.OK, html, "text/html; charset=utf-8")
      elif path == "/api/models":
        self._json(HTTPStatus.OK, {"models": models})
      else:
        self._error(HTTPStatus.NOT_FOUND, f"no such page: {path}")

    def do_POST(self):  # noqa: N802
      if self.path.split("?", 1)[0] != "/api/predict":
        self._error(HTTPStatus.NOT_FOUND, f"no such endpoint: {self.path}")
        return
      length = self.headers.get("Content-Length")
      if length is None or not length.isdigit():
        self.close_connection = True
        self._error(
          HTTPStatus.LENGTH_REQUIRED,
          "send the image as the request body with a Content-Length header",
        )
        return
      if int(length) > max_bytes:
        self.close_connection = True  # the body is not read: drop the connection
        self._error(
          HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
          f"the request has {int(length):,} bytes, more than the limit of "
          f"{max_bytes:,}; send a smaller image",
        )
        return
      data = self.rfile.read(int(length))
      if not data:
        self._error(HTTPStatus.BAD_REQUEST, "the request has no body: send an image file")
        return
      try:
        with lock:
          result = predict.predict_bytes(runs, data, steps, name="the uploaded file")
      except predict.ImageError as e:
        self._error(HTTPStatus.BAD_REQUEST, str(e))
        return
      except preprocess.EmptyImageError as e:
        self._json(
          HTTPStatus.UNPROCESSABLE_ENTITY,
          {"empty": True, "hint": EMPTY_HINT, "error": f"the uploaded file: {e}"},
        )
        return
      self._json(HTTPStatus.OK, result)

    def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
      log.info("%s %s", self.address_string(), format % args)

  return Handler


def make_server(
  runs: list[Predictor],
  host: str = "127.0.0.1",
  port: int = 8000,
  *,
  max_bytes: int = 5_000_000,
  steps: preprocess.Steps | None = None,
) -> ThreadingHTTPServer:
  """A threading HTTP server for ``runs``, bound but not yet serving."""
  return ThreadingHTTPServer((host, port), make_handler(runs, max_bytes=max_bytes, steps=steps))
