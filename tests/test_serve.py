"""The drawing page: its JSON endpoint over HTTP, and the page in a real headless browser.

The browser test starts ``python -m experiments.serve`` as a user would, opens the page in
Debian's Chromium through Selenium, draws a '1' with mouse events, reads the predicted
digit and the probability bars from the page, checks them against the library's answer
for the very pixels drawn, and saves a screenshot (``serve_page.png`` in the test's
temporary directory; its path is printed). Without Chromium and chromedriver the browser
test is skipped with a message, except under ``CI=true``, where it fails: CI installs them.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from digits_jax.app import predict
from digits_jax.app import server as serve
from tests import cli
from tests.conftest import requires

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def run(tiny_run):
  return predict.load_predictor(tiny_run[0])


@pytest.fixture(scope="module")
def server(run):
  """The server in a thread on a free port; yields its base URL."""
  httpd = serve.make_server([run], "127.0.0.1", 0, max_bytes=200_000)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}"
  httpd.shutdown()
  httpd.server_close()


def request(url: str, data: bytes | None = None) -> tuple[int, bytes]:
  req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
  try:
    with urllib.request.urlopen(req, timeout=60) as response:
      return response.status, response.read()
  except urllib.error.HTTPError as e:
    return e.code, e.read()


def png(array: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(np.uint8(array)).save(out, "PNG")
  return out.getvalue()


def drawn_one() -> np.ndarray:
  page = np.full((200, 200), 255)
  page[30:170, 92:108] = 0  # a black vertical stroke on white
  return page


def test_page_and_endpoint(server, run):
  status, body = request(server + "/")
  assert status == 200 and b'<canvas id="pad"' in body
  status, body = request(server + "/api/models")
  assert status == 200 and json.loads(body) == {"models": [run.name]}

  status, body = request(server + "/api/predict", png(drawn_one()))
  assert status == 200
  answer = json.loads(body)
  probs = np.array(answer["models"][run.name])
  assert probs.shape == (10,) and abs(probs.sum() - 1) < 1e-5
  expected = predict.predict_bytes([run], png(drawn_one()))
  np.testing.assert_allclose(probs, expected["models"][run.name], atol=1e-6)
  assert answer["prediction"] == expected["prediction"]
  assert np.array(answer["input"]).shape == (28, 28)


@pytest.mark.parametrize(
  "data,status,message",
  [
    (b"hello, this is text", 400, "not an image"),
    (b"\x00" * 300_000, 413, "more than the limit of 200,000"),
    (b"", 400, "no body"),
  ],
)
def test_bad_requests_get_a_4xx_with_a_message(server, data, status, message):
  code, body = request(server + "/api/predict", data)
  assert code == status
  assert message in json.loads(body)["error"]


def test_an_empty_drawing_gets_a_hint_not_an_error(server):
  code, body = request(server + "/api/predict", png(np.full((280, 280), 255)))
  answer = json.loads(body)
  assert code == 422 and answer["empty"] is True
  assert answer["hint"] == serve.EMPTY_HINT == "Draw a digit first"
  assert "no ink" in answer["error"]  # for clients that only read errors
  code, body = request(server + "/api/predict", b"hello, this is text")
  assert code == 400 and "empty" not in json.loads(body)


def pen_stroke(size: int, width: int, x: int, top: int, bottom: int) -> np.ndarray:
  """A vertical round-pen stroke, black on white, as the page draws it."""
  y, xs = np.mgrid[0:size, 0:size]
  nearest = np.clip(y, top, bottom)
  page = np.full((size, size), 255)
  page[np.hypot(xs - x, y - nearest) <= width / 2] = 0
  return page


@pytest.mark.parametrize(
  "page",
  [
    pen_stroke(280, 18, 140, 80, 200),  # the page's canvas and pen, 120 px long, centred
    pen_stroke(200, 3, 100, 0, 199),  # a thin line from edge to edge
    pen_stroke(200, 14, 100, 20, 180),
  ],
  ids=["canvas-pen-120px", "line-3px", "line-14px"],
)
def test_a_plain_stroke_is_read_as_a_one(server, run, page):
  code, body = request(server + "/api/predict", png(page))
  assert code == 200, body
  assert json.loads(body)["prediction"] == 1


def test_unknown_paths_are_404(server):
  assert request(server + "/etc/passwd")[0] == 404
  assert request(server + "/nothing", b"x")[0] == 404


def _browser():
  missing = [
    name for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if path is None
  ]
  message = None
  if missing:
    message = (
      f"{' and '.join(missing)} not found: apt-get install -y --no-install-recommends "
      "chromium chromium-driver to run the browser test"
    )
  if message:
    if os.environ.get("CI", "").lower() == "true":
      pytest.fail(message)
    pytest.skip(message)
  requires("selenium")
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service

  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for argument in (
    "--headless=new",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--window-size=1100,760",
  ):
    options.add_argument(argument)
  return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def test_draw_in_a_real_browser(tiny_run, run, tmp_path):
  driver = _browser()
  proc = subprocess.Popen(
    cli.command("experiments.serve", f"--workdir={tiny_run[0]}", "--port=0"),
    cwd=cli.REPO,
    env=cli.env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    line = proc.stdout.readline()  # "serving NAME on http://127.0.0.1:PORT/ ..."
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    assert match, line + proc.stderr.read() if proc.poll() is not None else line
    url = match.group(0)
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    pad = driver.find_element(By.ID, "pad")
    # A '1': press near the top of the pad, move down in small steps, release.
    actions = ActionChains(driver, duration=20)
    actions.move_to_element_with_offset(pad, 5, -100).click_and_hold()
    for _ in range(20):
      actions.move_by_offset(0, 10)
    actions.release().perform()
    WebDriverWait(driver, 60).until(
      lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done"
    )
    time.sleep(0.5)  # let a request sent while drawing be followed by the final one
    WebDriverWait(driver, 60).until(
      lambda d: d.execute_script("return !inFlight && !pending && timer === null")
    )

    shown = int(driver.find_element(By.ID, "prediction").text)
    bars = driver.find_elements(By.CSS_SELECTOR, f'.model[data-model="{run.name}"] .bar')
    probs = np.array([float(b.get_attribute("data-p")) for b in bars])
    assert len(bars) == 10 and abs(probs.sum() - 1) < 1e-5
    widths = [b.value_of_css_property("width") for b in bars]
    assert float(widths[shown].rstrip("px")) > 0

    # The page shows what the library says about the very pixels on the pad.
    data_url = driver.execute_script("return document.getElementById('pad').toDataURL()")
    drawn = base64.b64decode(data_url.split(",", 1)[1])
    expected = predict.predict_bytes([run], drawn)
    np.testing.assert_allclose(probs, expected["models"][run.name], atol=1e-5)
    assert shown == expected["prediction"] == int(np.argmax(probs))
    assert shown == 1
    seen = driver.execute_script(
      "return Array.from(document.getElementById('input').getContext('2d')"
      ".getImageData(0, 0, 28, 28).data)"
    )
    seen = np.array(seen).reshape(28, 28, 4)[..., 0] / 255
    np.testing.assert_allclose(seen, expected["input"], atol=1 / 255 + 1e-6)

    screenshot = tmp_path / "serve_page.png"
    assert driver.save_screenshot(str(screenshot))
    assert Image.open(screenshot).size[0] > 500
    print(f"screenshot: {screenshot}")

    # An empty pad: the page shows a grey hint, not an error, and no answer.
    driver.find_element(By.ID, "clear").click()
    driver.execute_script("sendCanvas()")
    WebDriverWait(driver, 60).until(
      lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "hint"
    )
    status = driver.find_element(By.ID, "status")
    assert status.text == serve.EMPTY_HINT
    red, green, blue = map(int, re.findall(r"\d+", status.value_of_css_property("color"))[:3])
    assert red == green == blue  # grey, not the red of an error
    assert driver.find_element(By.ID, "prediction").text == ""
  finally:
    driver.quit()
    proc.terminate()
    proc.communicate(timeout=30)
