"""Reading users' image files: finding, loading, refusing bad input, predicting end to end.

The end-to-end test runs ``python -m experiments.predict`` on a tiny trained run (the
``tiny_run`` fixture) over MNIST validation digits redrawn as a user would send them:
dark ink on light paper, larger, off-centre, as PNG and JPEG, next to files that must fail.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from digits_jax import runs
from digits_jax.app import predict, preprocess
from digits_jax.training import checkpoints
from tests import cli

NUM_IMAGES = 30


def as_user_image(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
  """An MNIST digit (28x28, light on dark) as dark ink on light paper, larger, off-centre."""
  size = int(rng.integers(90, 200))
  big = np.asarray(
    Image.fromarray(np.float32(digit)).resize((size, size), Image.Resampling.BILINEAR)
  )
  height, width = size + int(rng.integers(20, 120)), size + int(rng.integers(20, 160))
  page = np.full((height, width), rng.uniform(0.8, 0.97))
  top, left = int(rng.integers(0, height - size)), int(rng.integers(0, width - size))
  region = page[top : top + size, left : left + size]
  page[top : top + size, left : left + size] = region * (1 - np.clip(big, 0, 1) * 0.85)
  return Image.fromarray(np.uint8(np.round(255 * np.clip(page, 0, 1))))


@pytest.fixture(scope="module")
def user_folder(mnist, tmp_path_factory):
  """NUM_IMAGES validation digits as user images with a labels.csv, plus four bad files."""
  folder = tmp_path_factory.mktemp("user_images")
  rng = np.random.default_rng(0)
  rows = []
  for i in range(NUM_IMAGES):
    image = as_user_image(mnist.validation.images[i, :, :, 0], rng)
    label = int(mnist.validation.labels[i])
    name = f"{'jpeg' if i % 2 else 'png'}/digit_{i:02d}.{'jpg' if i % 2 else 'png'}"
    (folder / name).parent.mkdir(exist_ok=True)
    image.save(folder / name, quality=90) if i % 2 else image.convert("RGB").save(folder / name)
    rows.append((name, label))
  with open(folder / "labels.csv", "w", newline="") as f:
    csv.writer(f).writerows([("file", "label"), *rows])
  bad = tmp_path_factory.mktemp("bad_images")
  (bad / "notes.png").write_text("not an image\n")
  good = io.BytesIO()
  as_user_image(mnist.validation.images[0, :, :, 0], rng).save(good, "PNG")
  (bad / "truncated.png").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
  Image.new("L", (300, 200), 230).save(bad / "empty.png")
  Image.new("1", (20000, 20000), 0).save(bad / "bomb.png")  # 400 megapixels, 48 kB
  return folder, bad, rows


def test_find_images(tmp_path):
  (tmp_path / "a" / "sub").mkdir(parents=True)
  for name in ("a/x.png", "a/sub/y.JPG", "a/sub/z.webp", "a/notes.txt", "b.gif"):
    (tmp_path / name).write_bytes(b"")
  (tmp_path / "empty").mkdir()
  found, problems = predict.find_images(
    [
      tmp_path / "a",
      str(tmp_path / "b.gif"),
      str(tmp_path / "a" / "x.png"),
      str(tmp_path / "**" / "*.webp"),
      str(tmp_path / "missing.png"),
      tmp_path / "empty",
      str(tmp_path / "*.bmp"),
    ]
  )
  assert [f.name for f in found] == [
    "sub/y.JPG",
    "sub/z.webp",
    "x.png",
    str(tmp_path / "b.gif"),
  ]  # each file once
  assert len(problems) == 3
  assert "missing.png: no such file or folder" in problems[0]
  assert "no image files" in problems[1] and "matches no image" in problems[2]


def test_bad_files_are_refused_naming_the_file(user_folder):
  _, bad, _ = user_folder
  cases = {
    "notes.png": "not an image",
    "truncated.png": "truncated or corrupt",
    "bomb.png": "decompression bomb",
  }
  for name, message in cases.items():
    with pytest.raises(predict.ImageError, match=message) as info:
      predict.load_image(bad / name)
    assert str(bad / name) in str(info.value)
  with pytest.raises(predict.ImageError, match="more than the limit of 1,000"):
    predict.load_image(bad / "empty.png", max_pixels=1000)
  with pytest.raises(preprocess.EmptyImageError, match="no ink"):
    preprocess.preprocess(predict.load_image(bad / "empty.png"))


def test_labels(tmp_path):
  path = tmp_path / "labels.csv"
  path.write_text("File,Label\nsub/a.png,3\nb.png,7\n")
  labels = predict.read_labels(path)
  images = [
    predict.ImageFile(tmp_path / "sub" / "a.png", "sub/a.png"),
    predict.ImageFile(tmp_path / "x" / "b.png", "x/b.png"),
    predict.ImageFile(tmp_path / "c.png", "c.png"),
  ]
  assert predict.find_labels(images, labels) == [3, 7, None]
  path.write_text("file,label\na.png,seven\n")
  with pytest.raises(ValueError, match="line 2: label 'seven' is not a digit"):
    predict.read_labels(path)
  path.write_text("name,digit\na.png,7\n")
  with pytest.raises(ValueError, match="file,label"):
    predict.read_labels(path)
  assert predict.label_from_name("pics/7_mine.jpg") == 7
  assert predict.label_from_name("seven.jpg") is None


def test_unusable_runs_are_refused(tiny_run, tmp_path):
  workdir, _ = tiny_run
  with pytest.raises(runs.RunDirError, match="has no config.json"):
    predict.load_predictor(tmp_path)
  fashion = tmp_path / "fashion"
  shutil.copytree(workdir, fashion)
  saved = json.loads((fashion / "config.json").read_text())
  saved["config"]["dataset"] = "fashion_mnist"
  (fashion / "config.json").write_text(json.dumps(saved))
  with pytest.raises(predict.WrongDatasetError, match="fashion_mnist.*Sneaker.*not of hand"):
    predict.load_predictor(fashion)
  no_checkpoint = tmp_path / "no_checkpoint"
  no_checkpoint.mkdir()
  shutil.copy(workdir / "config.json", no_checkpoint)
  with pytest.raises(checkpoints.CheckpointError, match="has no checkpoint"):
    predict.load_predictor(no_checkpoint)


def test_predict_bytes(tiny_run, user_folder):
  folder, _, rows = user_folder
  run = predict.load_predictor(tiny_run[0])
  data = (folder / rows[0][0]).read_bytes()
  out = predict.predict_bytes([run], data)
  probs = np.array(out["models"][run.name])
  assert probs.shape == (10,) and abs(probs.sum() - 1) < 1e-6
  assert out["prediction"] == int(np.argmax(probs)) and out["inverted"]
  assert np.array(out["input"]).shape == (28, 28)
  with pytest.raises(predict.ImageError, match="the image: not an image"):
    predict.predict_bytes([run], b"GIF89a but not really")


def test_contact_sheet_pages(tmp_path):
  image = np.zeros((28, 28), np.float32)
  image[5:20, 12:15] = 1
  results = [
    predict.Prediction(
      file=predict.ImageFile(tmp_path / f"{i}.png", f"{i}.png"),
      label=1,
      original=Image.new("RGB", (50, 80), "white"),
      image=image,
      probabilities={"m": np.eye(10)[i % 10]},
    )
    for i in range(130)
  ]
  results.append(
    predict.Prediction(
      file=predict.ImageFile(tmp_path / "bad.png", "bad.png"), error="bad.png: not an image"
    )
  )
  written = predict.write_contact_sheets(tmp_path, results)
  assert [p.name for p in written] == ["contact_sheet.png", "contact_sheet_2.png"]
  first, second = (Image.open(p) for p in written)
  assert first.size[0] == second.size[0] == predict.SHEET_COLUMNS * (2 * predict.CELL + 12)
  assert first.size[1] == 10 * (predict.CELL + 44) and second.size[1] == 4 * (predict.CELL + 44)
  summary = predict.accuracy_report(results)["m"]
  assert summary["count"] == 130 and summary["correct"] == 13  # predicted 1 where i % 10 == 1
  assert summary["confusion"][1].sum() == 130


def test_predict_end_to_end(tiny_run, user_folder, mnist, tmp_path):
  """The command on a folder with labels, two runs (an ensemble) and four bad files."""
  workdir, _ = tiny_run
  twin = tmp_path / "twin"
  shutil.copytree(workdir, twin)
  folder, bad, rows = user_folder
  out = tmp_path / "out"
  proc = cli.run(
    "experiments.predict",
    f"--workdir={workdir}",
    f"--workdir={twin}",
    f"--output_dir={out}",
    str(folder),
    str(bad),
    str(tmp_path / "nothing.png"),
  )
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  for name in ("notes.png", "truncated.png", "empty.png", "bomb.png", "nothing.png"):
    assert any(name in line and line.startswith("error:") for line in proc.stderr.splitlines())
  assert "5 of the 35 inputs failed" in proc.stderr

  with open(out / "predictions.csv", newline="") as f:
    table = list(csv.DictReader(f))
  assert list(table[0])[:9] == [
    "file",
    "prediction",
    "probability",
    "top1",
    "top1_probability",
    "top2",
    "top2_probability",
    "top3",
    "top3_probability",
  ]
  assert len(table) == NUM_IMAGES + 4  # the missing path is no image, the bad files are
  by_file = {row["file"]: row for row in table}
  assert [row["file"] for row in table[:NUM_IMAGES]] == sorted(name for name, _ in rows)
  assert by_file["bomb.png"]["error"] and not by_file["bomb.png"]["prediction"]

  # The command's answers are the library's, and the ensemble of a run with itself is it.
  run = predict.load_predictor(workdir)
  images, _ = predict.find_images([folder])
  expected = predict.predict_files([run], images)
  for result in expected:
    row = by_file[result.file.name]
    digit, prob = result.top(run.name, 1)[0]
    assert int(row["prediction"]) == digit
    assert float(row["probability"]) == pytest.approx(prob, abs=1e-4)
    assert int(row[f"{workdir.name}_prediction"]) == int(row["twin_prediction"]) == digit
    assert int(row["label"]) == dict(rows)[result.file.name]
  lines = [line for line in proc.stdout.splitlines() if "top 3:" in line]
  assert len(lines) == NUM_IMAGES

  # Preprocessing gives back (nearly) the MNIST digit the user image was drawn from, and the
  # run reads them about as well as the originals.
  originals = mnist.validation.images[:NUM_IMAGES, :, :, 0]
  order = sorted(range(NUM_IMAGES), key=lambda i: rows[i][0])
  inputs = np.stack([r.image for r in expected])
  correlation = [
    np.corrcoef(inputs[k].ravel(), originals[i].ravel())[0, 1] for k, i in enumerate(order)
  ]
  assert np.median(correlation) > 0.9, correlation
  labels = np.array([rows[i][1] for i in order])
  ours = np.mean([int(by_file[rows[i][0]]["prediction"]) for i in order] == labels)
  theirs = np.mean(run.probabilities(originals[order][..., None]).argmax(1) == labels)
  assert ours >= theirs - 0.1, (ours, theirs)
  assert f"ensemble: accuracy {100 * ours:.2f}%" in proc.stdout
  assert "true\\pred" in proc.stdout

  sheet = Image.open(out / "contact_sheet.png")
  assert sheet.format == "PNG" and sheet.size[1] == 4 * (predict.CELL + 44)  # 34 images


def test_unusable_workdir_stops_before_writing(tiny_run, user_folder, tmp_path):
  workdir, _ = tiny_run
  folder, _, _ = user_folder
  fashion = tmp_path / "fashion"
  shutil.copytree(workdir, fashion)
  saved = json.loads((fashion / "config.json").read_text())
  saved["config"]["dataset"] = "fashion_mnist"
  (fashion / "config.json").write_text(json.dumps(saved))
  out = tmp_path / "out"
  proc = cli.run(
    "experiments.predict",
    f"--workdir={workdir}",
    f"--workdir={fashion}",
    f"--output_dir={out}",
    str(folder),
  )
  assert proc.returncode == 1
  line = cli.error_line(proc)
  assert str(fashion) in line and "fashion_mnist" in line
  assert not out.exists()


def test_userstyle_set_is_deterministic_and_readable(tmp_path):
  from benchmarks import userstyle

  try:
    userstyle.font_files()
  except userstyle.FontsMissingError as e:
    if os.environ.get("CI", "").lower() == "true":
      pytest.fail(str(e))
    pytest.skip(str(e))
  first = userstyle.generate(tmp_path / "a", 30, seed=3)
  second = userstyle.generate(tmp_path / "b", 30, seed=3)
  assert first == second and [d for _, d in first] == [i % 10 for i in range(30)]
  for name, _ in first:
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
  assert predict.read_labels(tmp_path / "a" / "labels.csv") == dict(first)
  assert {predict.label_from_name(name) for name, _ in first} == set(range(10))
  for name, _ in first:  # every file is an image with ink
    preprocess.preprocess(predict.load_image(tmp_path / "a" / name))
  other = userstyle.generate(tmp_path / "c", 10, seed=4)
  assert (tmp_path / "a" / first[0][0]).read_bytes() != (tmp_path / "c" / other[0][0]).read_bytes()


def test_own_digits_notebook_executes(tiny_run, user_folder, monkeypatch):
  from tests.conftest import REPO, requires

  nbformat = requires("nbformat")
  nbclient = requires("nbclient")
  requires("ipykernel")

  notebook = REPO / "notebooks" / "own_digits.ipynb"
  folder, _, _ = user_folder
  monkeypatch.setenv("DIGITS_WORKDIR", str(tiny_run[0]))  # the kernel inherits them
  monkeypatch.setenv("DIGITS_IMAGES", str(folder))
  nb = nbformat.read(notebook, as_version=4)
  nbclient.NotebookClient(
    nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(notebook.parent)}}
  ).execute()
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  assert len([o for o in outputs if "image/png" in o.get("data", {})]) == 2
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert f"{NUM_IMAGES} images in" in text and "full recipe: accuracy" in text
  assert "true\\pred" in text
