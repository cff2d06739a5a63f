"""MNIST-style preprocessing on synthetic images whose right answer is known."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw
from scipy import ndimage

from digits_jax.app import preprocess
from digits_jax.app.preprocess import Steps


def ring(size: int = 20, thickness: float = 0.18) -> np.ndarray:
  """A filled-in ring (a '0') filling a ``size`` x ``size`` box: 1 ink, 0 background."""
  y, x = np.mgrid[0:size, 0:size]
  c = (size - 1) / 2
  r = np.hypot((y - c) / (size / 2), (x - c) / (size / 2))
  return ((r <= 1.0) & (r >= 1.0 - 2 * thickness)).astype(np.float64)


def seven(height: int = 100, width: int = 60, stroke: int = 12) -> np.ndarray:
  """A '7': a bar on top and a diagonal; its centre of mass is far from its box's centre."""
  out = np.zeros((height, width))
  out[:stroke, :] = 1
  for row in range(stroke, height):
    col = int(round((width - stroke) * (1 - (row - stroke) / (height - stroke))))
    out[row, max(col - stroke // 2, 0) : col + stroke // 2 + 1] = 1
  return out


def on_paper(
  ink: np.ndarray,
  shape=(300, 400),
  at=(30, 40),
  *,
  paper=0.92,
  ink_level=0.15,
  gradient=0.0,
  noise=0.0,
  seed=0,
) -> np.ndarray:
  """``ink`` (1 = ink) drawn dark on light paper at ``at``, with lighting and texture."""
  rng = np.random.default_rng(seed)
  h, w = shape
  page = np.full(shape, paper)
  page = page * (1 - gradient * np.linspace(0, 1, w)[None, :])  # darker to the right
  top, left = at
  ih, iw = ink.shape
  region = page[top : top + ih, left : left + iw]
  page[top : top + ih, left : left + iw] = region * (1 - ink) + ink_level * ink
  page = page + rng.normal(0, noise, shape)
  return np.clip(page, 0, 1)


def to_image(gray: np.ndarray) -> Image.Image:
  return Image.fromarray(np.uint8(np.round(255 * gray)))


def ink_box(image: np.ndarray, level: float = 0.05) -> tuple[int, int]:
  rows = np.flatnonzero((image > level).any(axis=1))
  cols = np.flatnonzero((image > level).any(axis=0))
  return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def test_off_centre_inverted_scaled_digit_comes_out_centred_in_20x20():
  page = on_paper(seven(), at=(170, 300))  # bottom right of a 300x400 page
  out = preprocess.preprocess(to_image(page))
  assert out.shape == (28, 28) and out.dtype == np.float32
  assert 0.0 <= out.min() and out.max() <= 1.0 and out.max() > 0.9
  com = ndimage.center_of_mass(out)
  assert abs(com[0] - 14) <= 1 and abs(com[1] - 14) <= 1, com
  h, w = ink_box(out)
  assert max(h, w) <= 20 and h >= 19, (h, w)  # fits the 20x20 box, aspect kept
  assert abs(w / h - 0.6) < 0.1
  # The paper is gone: black corners, as in MNIST.
  assert out[:3, :3].max() == 0 and out[-3:, -3:].max() == 0


def test_known_answer_ring_at_any_scale_and_place():
  """A ring scaled up 10x, inverted and off-centre comes back as the 20x20 ring."""
  small = ring(20)
  big = np.kron(small, np.ones((10, 10)))  # 200x200
  page = on_paper(big, shape=(400, 500), at=(20, 260))
  out = preprocess.preprocess(to_image(page))
  expected = np.zeros((28, 28))
  expected[4:24, 4:24] = small  # a symmetric ring: its mass and box centres agree
  # Centring rounds to whole pixels: the best match within a pixel of the centre.
  best = max(
    np.corrcoef(out.ravel(), np.roll(expected, (dy, dx), (0, 1)).ravel())[0, 1]
    for dy in (-1, 0, 1)
    for dx in (-1, 0, 1)
  )
  assert best > 0.9
  com = ndimage.center_of_mass(out)
  assert np.allclose(com, (14, 14), atol=1.0)


def test_polarity():
  page = on_paper(seven())
  dark_on_light = preprocess.preprocess_steps(to_image(page))
  light_on_dark = preprocess.preprocess_steps(to_image(1 - page))
  assert dark_on_light.inverted and not light_on_dark.inverted
  np.testing.assert_allclose(dark_on_light.image, light_on_dark.image, atol=0.05)
  forced = preprocess.preprocess_steps(to_image(1 - page), Steps(polarity="invert"))
  assert forced.inverted


def test_uneven_lighting_and_paper_texture_are_suppressed():
  clean = preprocess.preprocess(to_image(on_paper(seven())))
  rough = preprocess.preprocess(to_image(on_paper(seven(), gradient=0.45, noise=0.04, seed=1)))
  assert np.corrcoef(clean.ravel(), rough.ravel())[0, 1] > 0.95
  # One blob of ink, nothing scattered over the field.
  _, blobs = ndimage.label(rough > 0, structure=np.ones((3, 3)))
  assert blobs == 1
  # Without flatten and clean the shadow on the right survives as ink.
  raw = preprocess.preprocess(
    to_image(on_paper(seven(), gradient=0.45, noise=0.04, seed=1)),
    Steps().without("flatten", "clean"),
  )
  assert np.corrcoef(clean.ravel(), raw.ravel())[0, 1] < 0.9


def test_specks_are_dropped():
  page = on_paper(seven(), at=(100, 100))
  speckled = page.copy()
  speckled[20:24, 350:354] = 0.1  # a dot of ink far from the digit
  out = preprocess.preprocess(to_image(speckled))
  np.testing.assert_allclose(out, preprocess.preprocess(to_image(page)), atol=0.02)
  kept = preprocess.preprocess(to_image(speckled), Steps().without("despeckle"))
  assert ink_box(kept) != ink_box(out)  # the dot widened the crop


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P", "P-transparent", "1", "I;16", "F"])
def test_every_image_mode_gives_the_same_digit(mode):
  page = on_paper(seven(), shape=(160, 120), at=(20, 20))
  reference = preprocess.preprocess(to_image(page))
  if mode == "RGBA":  # ink on a transparent background: composited on white
    rgba = np.zeros(page.shape + (4,), np.uint8)
    rgba[..., 3] = np.uint8(np.round(255 * (page < 0.5)))
    image = Image.fromarray(rgba, "RGBA")
  elif mode == "LA":
    image = Image.merge("LA", [to_image(page), Image.new("L", page.shape[::-1], 255)])
  elif mode == "P-transparent":
    image = to_image(page).convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)
    buffer = io.BytesIO()
    image.save(buffer, "GIF", transparency=int(np.asarray(image)[0, 0]))
    image = Image.open(io.BytesIO(buffer.getvalue()))
  elif mode == "I;16":
    image = Image.fromarray(np.uint16(np.round(65535 * page)))
  elif mode == "F":
    image = Image.fromarray(page.astype(np.float32))
  else:
    image = to_image(page).convert(mode)
  out = preprocess.preprocess(image)
  assert out.shape == (28, 28)
  tolerance = 0.9 if mode in ("1", "RGBA", "P-transparent") else 0.98
  assert np.corrcoef(out.ravel(), reference.ravel())[0, 1] > tolerance


def test_exif_orientation_is_applied():
  page = on_paper(seven(), shape=(160, 120), at=(20, 20))
  upright = preprocess.preprocess(to_image(page))
  stored = to_image(page).transpose(Image.Transpose.ROTATE_90)  # as a camera stores it
  exif = Image.Exif()
  exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
  buffer = io.BytesIO()
  stored.save(buffer, "JPEG", exif=exif, quality=95)
  out = preprocess.preprocess(Image.open(io.BytesIO(buffer.getvalue())))
  assert np.corrcoef(out.ravel(), upright.ravel())[0, 1] > 0.95


def test_thin_tall_digit_keeps_its_aspect():
  bar = np.ones((200, 16))  # a '1'
  out = preprocess.preprocess(to_image(on_paper(bar, at=(50, 100))))
  h, w = ink_box(out, 0.2)
  assert h == 20 and 1 <= w <= 3, (h, w)


def test_center_by_box_differs_from_mass():
  page = to_image(on_paper(seven()))
  by_mass = preprocess.preprocess(page)
  by_box = preprocess.preprocess(page, Steps(center="box"))
  assert np.allclose(ndimage.center_of_mass(by_mass), (14, 14), atol=0.5)
  rows, cols = np.nonzero(by_box > 0.05)
  assert abs((rows.min() + rows.max()) / 2 - 13.5) <= 1
  assert abs((cols.min() + cols.max()) / 2 - 13.5) <= 1
  assert not np.allclose(by_mass, by_box)


def test_stroke_width_thickens_hairlines():
  thin = on_paper(seven(400, 240, stroke=4), shape=(450, 300), at=(20, 20))
  plain = preprocess.preprocess(to_image(thin))
  thick = preprocess.preprocess(to_image(thin), Steps(stroke_width=3.0))
  assert preprocess.stroke_width(thick) > preprocess.stroke_width(plain) + 0.5
  assert thick.sum() > 1.3 * plain.sum()


def test_no_preprocessing_is_a_plain_resize():
  page = on_paper(seven(), shape=(100, 100), at=(0, 20))
  out = preprocess.preprocess(to_image(page), Steps.none())
  expected = np.asarray(to_image(page).resize((28, 28), Image.Resampling.LANCZOS)) / 255
  np.testing.assert_allclose(out, np.clip(expected, 0, 1), atol=1 / 255 + 1e-6)


@pytest.mark.parametrize("gradient,noise", [(0.0, 0.0), (0.4, 0.03)])
def test_an_empty_page_has_no_ink(gradient, noise):
  page = on_paper(np.zeros((1, 1)), gradient=gradient, noise=noise)
  with pytest.raises(preprocess.EmptyImageError, match="no ink"):
    preprocess.preprocess(to_image(page))


def test_bad_steps_are_refused():
  with pytest.raises(ValueError, match="polarity"):
    Steps(polarity="sideways")
  with pytest.raises(ValueError, match="unknown preprocessing step 'blur'"):
    Steps().without("blur")
  assert Steps().without("polarity", "crop") == Steps(polarity="keep", crop=False)


def test_arrays_are_accepted():
  page = on_paper(seven())
  from_array = preprocess.preprocess(np.uint8(np.round(255 * page)))
  np.testing.assert_allclose(from_array, preprocess.preprocess(to_image(page)))


# Clean drawings: a stroke of any width, length and place is ink, never paper.


def pen_drawing(
  size: tuple[int, int],
  points: list[tuple[float, float]],
  width: int,
  *,
  paper=(255, 255, 255, 255),
  ink=(0, 0, 0, 255),
  mode: str = "RGBA",
) -> Image.Image:
  """A round pen's polyline through ``points`` (x, y), ``width`` pixels wide, on ``paper``."""
  image = Image.new("RGBA", size, paper)
  draw = ImageDraw.Draw(image)
  if len(points) > 1:
    draw.line(points, fill=ink, width=width, joint="curve")
  r = (width - 1) / 2
  for x, y in points[:: max(1, len(points) - 1)]:  # round caps at both ends
    draw.ellipse([x - r, y - r, x + r, y + r], fill=ink)
  return image if mode == "RGBA" else image.convert(mode)


def assert_vertical_bar(out: np.ndarray) -> None:
  """``out`` is a '1': one upright bar, 20 pixels tall, a few wide, in the middle."""
  rows = np.flatnonzero((out > 0.2).any(axis=1))
  cols = np.flatnonzero((out > 0.2).any(axis=0))
  assert rows[-1] - rows[0] + 1 >= 19 and cols[-1] - cols[0] + 1 <= 6, (rows, cols)
  assert abs((cols[0] + cols[-1]) / 2 - 13.5) <= 1.5 and out.max() > 0.9
  assert np.allclose(ndimage.center_of_mass(out), CENTRE, atol=1.0)


CENTRE = (14.0, 14.0)


@pytest.mark.parametrize("x", [140, 100])
@pytest.mark.parametrize("length", [120, 180])
def test_the_drawing_pages_stroke_is_ink(length, x):
  """The page's own canvas and pen: 280x280 white, round, 18 px, a vertical '1'."""
  image = pen_drawing((280, 280), [(x, 140 - length / 2), (x, 140 + length / 2)], 18, mode="RGB")
  assert_vertical_bar(preprocess.preprocess(image))


@pytest.mark.parametrize("length", [200, 160, 100])
@pytest.mark.parametrize("width", [3, 6, 10, 14, 20])
def test_a_plain_line_on_white_is_ink(width, length):
  page = np.full((200, 200), 255, np.uint8)
  top, left = (200 - length) // 2, 100 - width // 2
  page[top : top + length, left : left + width] = 0
  out = preprocess.preprocess(Image.fromarray(page))
  assert_vertical_bar(out)
  # Nothing was flattened away: the bar is solid ink, not two edges.
  assert out[np.nonzero(out > 0.2)].mean() > 0.6


def test_a_flat_paper_is_not_flattened_and_a_lit_one_is():
  page = on_paper(seven())
  ink = 1 - page
  assert preprocess.paper(ink) is None
  lit = 1 - on_paper(seven(), gradient=0.3)
  level = preprocess.paper(lit)
  assert level is not None
  paper_only = on_paper(np.zeros((1, 1)), gradient=0.3)
  np.testing.assert_allclose(level, 1 - paper_only, atol=0.02)  # the stroke left out


def test_otsu_splits_two_levels_in_the_middle():
  values = np.array([0.0] * 90 + [1.0] * 10)
  assert preprocess.otsu_threshold(values) == pytest.approx(0.5, abs=0.01)
  assert preprocess.otsu_threshold(np.full(10, 0.3)) == 0.3


def test_light_ink_on_a_transparent_background_shows():
  rgba = pen_drawing((120, 120), [(60, 20), (60, 100)], 8, paper=(0, 0, 0, 0), ink=(255,) * 4)
  assert_vertical_bar(preprocess.preprocess(rgba))
  dark = pen_drawing((120, 120), [(60, 20), (60, 100)], 8, paper=(255, 255, 255, 0))
  np.testing.assert_allclose(preprocess.preprocess(dark), preprocess.preprocess(rgba), atol=0.02)


# Property-based: random strokes and digit-like polylines on random backgrounds.

BACKGROUNDS = ("white", "transparent", "grey", "dark")


@st.composite
def drawings(draw, min_size: int = 28, max_size: int = 400):
  """``(image, straight)``: a random round-pen drawing, and whether it is one straight stroke."""
  w = draw(st.integers(min_size, max_size))
  h = min(max_size, max(min_size, round(w * draw(st.floats(0.7, 1.4)))))
  pen = max(1, round(draw(st.floats(0.01, 0.15)) * min(w, h)))
  n = draw(st.integers(2, 7))
  point = st.tuples(st.floats(0, w - 1), st.floats(0, h - 1))
  points = draw(st.lists(point, min_size=n, max_size=n))
  background = draw(st.sampled_from(BACKGROUNDS))
  grey = lambda v: (round(255 * v),) * 3 + (255,)  # noqa: E731
  if background == "white":
    paper, ink = grey(1.0), grey(draw(st.floats(0.0, 0.5)))
  elif background == "transparent":
    paper = draw(st.sampled_from([(0, 0, 0, 0), (255, 255, 255, 0), (90, 160, 30, 0)]))
    ink = draw(st.tuples(*[st.integers(0, 255)] * 3)) + (255,)
  elif background == "grey":
    paper, ink = grey(draw(st.floats(0.35, 0.65))), grey(draw(st.sampled_from([0.0, 1.0])))
  else:
    paper, ink = grey(draw(st.floats(0.0, 0.25))), grey(draw(st.floats(0.75, 1.0)))
  mode = "RGBA" if background == "transparent" else "RGB"
  image = pen_drawing((w, h), points, pen, paper=paper, ink=ink, mode=mode)
  note(f"{(w, h)=} {pen=} {points=} {paper=} {ink=}")
  # One straight stroke that the canvas's edge does not cut is symmetric.
  inside = all(
    pen / 2 + 1 <= x <= w - 2 - pen / 2 and pen / 2 + 1 <= y <= h - 2 - pen / 2 for x, y in points
  )
  return image, n == 2 and inside


def check_drawing(image: Image.Image, straight: bool) -> None:
  out = preprocess.preprocess(image)  # never EmptyImageError
  # A 1%-wide pen is a fifth of a pixel wide in the 20x20 box: faint, but there.
  assert out.max() > 0.05
  rows = np.flatnonzero((out > 0).any(axis=1))
  cols = np.flatnonzero((out > 0).any(axis=0))
  assert rows[-1] - rows[0] < 20 and cols[-1] - cols[0] < 20  # the ink fits 20x20
  com = ndimage.center_of_mass(out)
  for axis, (lo, hi) in enumerate(((rows[0], rows[-1]), (cols[0], cols[-1]))):
    # Centred by mass, unless that would push ink out of the field: then it sits at the edge.
    pushed = (com[axis] < 13 and hi >= 26) or (com[axis] > 15 and lo <= 1)
    assert abs(com[axis] - 14) <= 1 or pushed, (com, rows, cols)
    if straight:  # symmetric: centred by mass is centred by box, within the central 20x20
      assert 3 <= lo and hi <= 24, (rows, cols)


@settings(max_examples=60, deadline=None)
@given(drawings())
def test_any_clean_drawing_is_read(drawing):
  check_drawing(*drawing)


@settings(max_examples=5, deadline=None)
@given(drawings(400, 2000))
def test_any_large_clean_drawing_is_read(drawing):
  check_drawing(*drawing)
