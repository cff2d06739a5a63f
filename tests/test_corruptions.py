"""MNIST-C corruptions: shapes, seeds, batch independence, each corruption's own properties,
the helpers against line-by-line ports of the reference code, the published arrays and the
contact sheet."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from digits_jax.robustness import corruptions as C
from digits_jax.robustness import image_ops
from tests.conftest import real_mnist_dir

SIZE = 28


# --------------------------------------------------------------------------------------------
# Synthetic digits


def _stroke(img: np.ndarray, a, b, width: float = 1.6) -> None:
  """Draws an anti-aliased segment from ``a`` to ``b`` ((row, column)) into ``img``."""
  rr, cc = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
  (r0, c0), (r1, c1) = a, b
  dr, dc = r1 - r0, c1 - c0
  t = np.clip(((rr - r0) * dr + (cc - c0) * dc) / (dr * dr + dc * dc), 0, 1)
  d = np.hypot(rr - (r0 + t * dr), cc - (c0 + t * dc))
  np.maximum(img, np.clip(width - d, 0, 1), out=img)


def _ring(img: np.ndarray, centre, radius: float, width: float = 1.6) -> None:
  rr, cc = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
  d = np.abs(np.hypot(rr - centre[0], cc - centre[1]) - radius)
  np.maximum(img, np.clip(width - d, 0, 1), out=img)


def _digits(n: int = 6) -> np.ndarray:
  """``n`` digit-like images (N, 28, 28, 1), multiples of 1/255, ink well inside the frame."""
  out = np.zeros((n, SIZE, SIZE))
  for k in range(n):
    img = out[k]
    kind = k % 3
    if kind == 0:  # a "0"
      _ring(img, (14.0, 13.5 + 0.3 * k), 6.0)
    elif kind == 1:  # a "1"
      _stroke(img, (6.0, 12.0 + 0.2 * k), (21.0, 15.0))
    else:  # a "7"
      _stroke(img, (7.0, 9.0), (7.0, 19.0))
      _stroke(img, (7.0, 19.0), (21.0, 12.0 + 0.2 * k))
  q = np.round(out * 255).astype(np.float32)[..., None]
  return q / np.float32(255.0)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
  return _digits()


def _centre_of_mass(img: np.ndarray) -> np.ndarray:
  img = np.asarray(img).reshape(SIZE, SIZE)
  return np.array(ndi.center_of_mass(img))


# --------------------------------------------------------------------------------------------
# Every corruption


@pytest.mark.parametrize("name", C.NAMES)
def test_shape_dtype_range_and_change(name, digits):
  for images in (digits, digits[..., 0]):
    out = C.corrupt(name, images, seed=0)
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_allclose(out * 255, np.round(out * 255), atol=1e-4)  # published: bytes
    changed = np.any(out != images, axis=tuple(range(1, images.ndim)))
    assert changed.all(), f"{name} left images {np.flatnonzero(~changed)} unchanged"


@pytest.mark.parametrize("name", C.NAMES)
def test_seeded(name, digits):
  a = C.corrupt(name, digits, seed=3)
  np.testing.assert_array_equal(a, C.corrupt(name, digits, seed=3))
  other = C.corrupt(name, digits, seed=4)
  if C.is_random(name):
    differs = np.any(a != other, axis=(1, 2, 3))
    assert differs.any(), f"{name}: seed 4 gives the images of seed 3"
  else:
    np.testing.assert_array_equal(a, other)


@pytest.mark.parametrize("name", C.NAMES)
def test_batch_split_independence(name, digits, monkeypatch):
  whole = C.corrupt(name, digits, seed=1)
  np.testing.assert_array_equal(C.corrupt(name, digits[2:5], seed=1, offset=2), whole[2:5])
  np.testing.assert_array_equal(C.corrupt(name, digits[5:], seed=1, offset=5), whole[5:])
  # The internal chunking does not change the result either.
  monkeypatch.setattr(C, "_CHUNK", 2)
  monkeypatch.setattr(C, "_FOG_CHUNK", 1)
  np.testing.assert_array_equal(C.corrupt(name, digits, seed=1), whole)


def test_image_randomness_is_its_own(digits):
  # The same digit at two indices gets two different corruptions.
  twice = np.concatenate([digits[:1], digits[:1]])
  out = C.corrupt("shot_noise", twice, seed=0)
  assert np.any(out[0] != out[1])


# --------------------------------------------------------------------------------------------
# Names and inputs


def test_names():
  assert C.NAMES == (
    "shot_noise",
    "impulse_noise",
    "glass_blur",
    "motion_blur",
    "shear",
    "scale",
    "rotate",
    "brightness",
    "translate",
    "stripe",
    "fog",
    "spatter",
    "dotted_line",
    "zigzag",
    "canny_edges",
  )
  assert C.check_names(["all"]) == C.NAMES
  assert C.check_names("all") == C.NAMES
  assert C.check_names(["rotate", "fog", "rotate"]) == ("rotate", "fog")
  assert C.check_names(["fog", "all"])[0] == "fog" and len(C.check_names(["fog", "all"])) == 15
  assert C.check_names([]) == ()


def test_unknown_name_lists_the_valid_ones(digits):
  with pytest.raises(C.CorruptionError) as info:
    C.check_names(["rotate", "blur"])
  message = str(info.value)
  assert "'blur'" in message
  for name in C.NAMES:
    assert name in message
  with pytest.raises(C.CorruptionError, match="valid corruptions"):
    C.corrupt("gaussian_noise", digits)
  assert issubclass(C.CorruptionError, ValueError)


def test_bad_inputs(digits):
  with pytest.raises(C.CorruptionError, match="shape"):
    C.corrupt("fog", np.zeros((2, 32, 32, 1), np.float32))
  with pytest.raises(C.CorruptionError, match="NaN"):
    C.corrupt("fog", np.full((1, 28, 28), np.nan, np.float32))
  with pytest.raises(C.CorruptionError, match="non-negative"):
    C.corrupt("fog", digits, seed=-1)
  empty = C.corrupt("rotate", np.zeros((0, 28, 28, 1), np.float32))
  assert empty.shape == (0, 28, 28, 1) and empty.dtype == np.float32


# --------------------------------------------------------------------------------------------
# Each corruption's own properties


def test_stripe_inverts_the_side_columns(digits):
  out = C.corrupt("stripe", digits)
  outer = np.r_[0:7, 21:28]
  np.testing.assert_allclose(out[:, :, outer], 1 - digits[:, :, outer], atol=1e-6)
  np.testing.assert_array_equal(out[:, :, 7:21], digits[:, :, 7:21])


def test_translate_moves_the_centre_of_mass_by_three_pixels(digits):
  out = C.corrupt("translate", digits, seed=0)
  moves = []
  for before, after in zip(digits, out):
    shift = _centre_of_mass(after) - _centre_of_mass(before)
    np.testing.assert_allclose(np.abs(shift), [3.0, 3.0], atol=0.1)
    np.testing.assert_allclose(after.sum(), before.sum(), rtol=1e-6)  # nothing cut off
    moves.append(tuple(np.sign(shift)))
  assert len(set(moves)) > 1  # the directions are random


def test_rotate_keeps_the_ink_and_turns_by_0_4_radians(digits):
  out = C.corrupt("rotate", digits, seed=0)
  np.testing.assert_allclose(out.sum(axis=(1, 2, 3)), digits.sum(axis=(1, 2, 3)), rtol=0.1)
  x = digits[..., 0].astype(np.float64)
  for sign_ok in range(len(digits)):
    warped = [
      image_ops.warp(x[sign_ok : sign_ok + 1], image_ops.centred_affine(rotation=s))
      for s in (0.4, -0.4)
    ]
    candidates = [np.round(np.clip(w, 0, 1) * 255) / 255 for w in warped]
    assert any(np.allclose(out[sign_ok, ..., 0], c[0], atol=1e-6) for c in candidates)


def test_shear_is_the_reference_shear(digits):
  out = C.corrupt("shear", digits, seed=0)
  x = digits[..., 0].astype(np.float64)
  signs = set()
  for i in range(len(digits)):
    for s in (0.4, -0.4):
      w = image_ops.warp(x[i : i + 1], image_ops.centred_affine(shear=s))
      c = np.round(np.clip(w, 0, 1) * 255) / 255
      if np.allclose(out[i, ..., 0], c[0], atol=1e-6):
        signs.add(s)
        break
    else:
      raise AssertionError(f"image {i} is neither shear")
  assert signs == {0.4, -0.4}


def test_scale_shrinks_the_digit_about_the_centre(digits):
  # The reference samples the input at 13.5 + (p - 13.5) / 0.7: the digit shrinks to 70 %.
  out = C.corrupt("scale", digits)
  rr, cc = np.mgrid[0:SIZE, 0:SIZE]
  for before, after in zip(digits[..., 0], out[..., 0]):

    def spread(img):
      w = img / img.sum()
      mr, mc = (w * rr).sum(), (w * cc).sum()
      return math.sqrt((w * ((rr - mr) ** 2 + (cc - mc) ** 2)).sum())

    assert 0.62 < spread(after) / spread(before) < 0.78
    extent_before = np.ptp(np.nonzero(before > 0.5)[0])
    extent_after = np.ptp(np.nonzero(after > 0.5)[0])
    assert extent_after < extent_before


def test_brightness_adds_a_half(digits):
  out = C.corrupt("brightness", digits)
  assert out.mean() > digits.mean() + 0.4
  np.testing.assert_allclose(out, np.minimum(digits + 0.5, 1.0), atol=0.5 / 255 + 1e-6)
  table = C._brightness_table()
  np.testing.assert_array_equal(table[128:], 255)
  assert np.all(np.abs(table[:128] - (np.arange(128) + 127.5)) <= 0.5 + 1e-9)


def test_canny_edges_is_binary_and_outlines_a_square():
  square = np.zeros((1, SIZE, SIZE, 1), np.float32)
  square[0, 8:20, 8:20] = 1.0
  out = C.corrupt("canny_edges", square)
  assert set(np.unique(out)) <= {0.0, 1.0}
  edges = out[0, ..., 0] > 0
  assert edges.any()
  assert not edges[11:17, 11:17].any()  # nothing inside
  assert not edges[:5].any() and not edges[23:].any()  # nothing far outside
  assert edges[6:22, 6:22].sum() == edges.sum()


def test_shot_noise_levels(digits):
  out = C.corrupt("shot_noise", digits)
  assert set(np.round(np.unique(out) * 255).astype(int)) <= {0, 85, 170, 255}


def test_impulse_noise_hits_about_17_percent(digits):
  images = np.repeat(digits[:1], 40, axis=0)
  out = C.corrupt("impulse_noise", images)
  background = images[0, ..., 0] == 0
  salt = out[:, background, 0] == 1.0
  assert 0.085 - 0.01 < salt.mean() < 0.085 + 0.01  # half of the hits are salt
  ink = images[0, ..., 0] == 1.0
  pepper = out[:, ink, 0] == 0.0
  assert 0.085 - 0.03 < pepper.mean() < 0.085 + 0.03


def test_dotted_line_adds_ink_only_in_its_dashes(digits):
  out = C.corrupt("dotted_line", digits)
  cols = np.arange(SIZE)
  gaps = ((cols // 2) % 2 == 0) | (cols == 27)
  np.testing.assert_array_equal(out[:, :, gaps], digits[:, :, gaps])
  assert np.all(out >= digits - 1e-7)


def test_zigzag_and_spatter_and_fog_stay_plausible(digits):
  zig = C.corrupt("zigzag", digits)
  assert np.all(zig >= digits - 1e-7)
  assert np.all(zig[:, :, :2] == digits[:, :, :2])  # the zigzag starts at column 2
  spat = C.corrupt("spatter", digits)
  moved = spat != digits
  # Mud pulls pixels towards grey 63/255: never further from it.
  mud = 63 / 255
  assert np.all(np.abs(spat[moved] - mud) <= np.abs(digits[moved] - mud) + 1 / 255)
  fog = C.corrupt("fog", digits)
  # Rescaled by max / (max + 3) after adding at most 3: the ink gets darker, the background
  # lighter.
  assert fog.max() <= 1.0 and fog[digits == 1].mean() < 1.0 and fog[digits == 0].mean() > 0.1
  blank = C.corrupt("fog", np.zeros((1, 28, 28), np.float32))
  np.testing.assert_array_equal(blank, 0)  # max 0: the reference's fog leaves a blank image


# --------------------------------------------------------------------------------------------
# The warp's direction against hand-computed cases


def _dot(row: int, col: int) -> np.ndarray:
  img = np.zeros((1, SIZE, SIZE))
  img[0, row, col] = 1.0
  return img


def test_warp_translation_direction():
  # scikit-image: output (row r, col c) samples the input at (x, y) = M @ (c, r, 1).
  m = image_ops.skimage_affine(translation=(2.0, -1.0))
  out = image_ops.warp(_dot(10, 12), m)[0]
  assert out[11, 10] == pytest.approx(1.0) and out.sum() == pytest.approx(1.0)


def test_warp_quarter_turn_hand_computed():
  # rotation pi/2 about (13.5, 13.5): x' = 27 - r, y' = c, so output (r, c) = input (c, 27 - r);
  # the input dot at (row 5, col 10) lands on (17, 5).
  m = image_ops.centred_affine(rotation=math.pi / 2)
  np.testing.assert_allclose(m, [[0, -1, 27], [1, 0, 0], [0, 0, 1]], atol=1e-12)
  out = image_ops.warp(_dot(5, 10), m)[0]
  assert out[17, 5] == pytest.approx(1.0) and out.sum() == pytest.approx(1.0)


def test_warp_rotation_and_shear_on_ramps():
  rr, cc = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
  ramps = np.stack([cc / 27, rr / 27])  # bilinear interpolation is exact on ramps
  r, c = 10, 12
  # shear 30 degrees: x' = c - sin(30) (r - 13.5), y' = 13.5 + cos(30) (r - 13.5)
  out = image_ops.warp(ramps, image_ops.centred_affine(shear=math.pi / 6))
  assert out[0, r, c] == pytest.approx((c - 0.5 * (r - 13.5)) / 27)
  assert out[1, r, c] == pytest.approx((13.5 + math.cos(math.pi / 6) * (r - 13.5)) / 27)
  # rotation 0.4: x' = 13.5 + cos (c - 13.5) - sin (r - 13.5), y' = 13.5 + sin (c - 13.5)
  # + cos (r - 13.5)
  a = 0.4
  out = image_ops.warp(ramps, image_ops.centred_affine(rotation=a))
  x = 13.5 + math.cos(a) * (c - 13.5) - math.sin(a) * (r - 13.5)
  y = 13.5 + math.sin(a) * (c - 13.5) + math.cos(a) * (r - 13.5)
  assert out[0, r, c] == pytest.approx(x / 27) and out[1, r, c] == pytest.approx(y / 27)


def test_warp_outside_is_zero_and_bilinear_at_the_border():
  img = np.ones((1, SIZE, SIZE))
  out = image_ops.warp(img, image_ops.skimage_affine(translation=(0.5, 0.0)))[0]
  # Column 27 samples x = 27.5: half of pixel 27, half of the zero beyond.
  np.testing.assert_allclose(out[:, 27], 0.5)
  np.testing.assert_allclose(out[:, :27], 1.0)


# --------------------------------------------------------------------------------------------
# Helpers against line-by-line ports of the reference


def _reference_plasma(u, mapsize, wibbledecay):
  """The reference's plasma_fractal, its np.random.uniform draws replaced by ``u``."""
  maparray = np.empty((mapsize, mapsize), dtype=np.float64)
  maparray[0, 0] = 0
  stepsize = mapsize
  wibble = 100
  used = [0]

  def wibbledmean(array):
    k = array.size
    r = u[used[0] : used[0] + k].reshape(array.shape).astype(np.float64)
    used[0] += k
    return array / 4 + wibble * (wibble * r)

  while stepsize >= 2:
    cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
    squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
    squareaccum += np.roll(squareaccum, shift=-1, axis=1)
    half = stepsize // 2
    maparray[half:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(squareaccum)
    drgrid = maparray[half:mapsize:stepsize, half:mapsize:stepsize]
    ulgrid = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
    ltsum = drgrid + np.roll(drgrid, 1, axis=0) + (ulgrid + np.roll(ulgrid, -1, axis=1))
    maparray[0:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(ltsum)
    ttsum = drgrid + np.roll(drgrid, 1, axis=1) + (ulgrid + np.roll(ulgrid, -1, axis=0))
    maparray[half:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(ttsum)
    stepsize //= 2
    wibble /= wibbledecay
  maparray -= maparray.min()
  return maparray / maparray.max()


@pytest.mark.parametrize(("mapsize", "decay"), [(2, 3.0), (16, 3.0), (256, 1.4)])
def test_plasma_fractal_matches_the_reference(mapsize, decay):
  rng = np.random.default_rng(0)
  u = rng.uniform(-1, 1, size=(2, mapsize * mapsize - 1)).astype(np.float32)
  expected = np.stack([_reference_plasma(row, mapsize, decay) for row in u])
  np.testing.assert_allclose(image_ops.plasma_fractal(u, mapsize, decay), expected, atol=2e-6)
  crop = min(mapsize, 28)
  np.testing.assert_allclose(
    image_ops.plasma_fractal(u, mapsize, decay, crop=crop), expected[:, :crop, :crop], atol=2e-6
  )


def _reference_line(c0, r0, c1, r1):
  """The reference's line_from_points."""
  if c1 == c0:
    return np.zeros((28, 28))
  cc, rr = np.meshgrid(np.linspace(0, 27, 28), np.linspace(0, 27, 28), sparse=True)
  m = (r1 - r0) / (c1 - c0)
  dist = np.clip(np.abs(rr - (m * (cc - c0) + r0)), 0, 2.3 - 1e-10)
  corruption = np.clip(np.log(1 - dist / 2.3) + 1, 0, 1)
  left = int(np.floor(c0))
  right = int(np.ceil(c1))
  corruption[:, :left] = 0
  corruption[:, right:] = 0
  return np.clip(corruption, 0, 1)


@pytest.mark.parametrize(
  "ends",
  [(0, 3, 27, 20), (2, 13.5, 4.2, 11.1), (5.5, 0, 5.5, 9), (-1.5, 4, 30.2, 8), (3, 20, 1.2, 2)],
)
def test_line_from_points_matches_the_reference(ends):
  np.testing.assert_array_equal(image_ops.line_from_points(*ends)[0], _reference_line(*ends))


def _reference_motion_blur(img, angle, radius=10.0, sigma=3.0):
  """ImageMagick's MotionBlurImage, pixel by pixel: edge pixels repeat beyond the border."""
  width = int(2 * math.ceil(radius) + 1)
  kernel = [
    math.exp(-(i * i) / (2 * sigma * sigma)) / (math.sqrt(2 * math.pi) * sigma)
    for i in range(width)
  ]
  total = sum(kernel)
  kernel = [k / total for k in kernel]
  px = width * math.sin(math.radians(angle))
  py = width * math.cos(math.radians(angle))
  hyp = math.hypot(px, py)
  offsets = [(math.ceil(i * py / hyp - 0.5), math.ceil(i * px / hyp - 0.5)) for i in range(width)]
  h, w = img.shape
  out = np.zeros((h, w))
  for y in range(h):
    for x in range(w):
      s = 0.0
      for k, (ox, oy) in zip(kernel, offsets):
        s += k * img[min(max(y + oy, 0), h - 1), min(max(x + ox, 0), w - 1)]
      out[y, x] = s
  return np.round(out)


def test_motion_blur_matches_imagemagicks_loops(digits):
  p = np.round(digits[:3, ..., 0] * 255).astype(np.uint8)
  p[2, :, 0] = 200  # ink on the border: the edge pixels repeat
  angles = np.array([0.0, 31.0, -45.0])
  out = image_ops.motion_blur_images(p, angles)
  for img, angle, got in zip(p, angles, out):
    np.testing.assert_array_equal(got, _reference_motion_blur(img.astype(np.float64), angle))
  assert len(image_ops.motion_kernel(10, 3)) == 21


def test_glass_shuffle_matches_the_reference_loops(digits):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, size=(3, SIZE, SIZE)).astype(np.uint8)
  steps = len(image_ops.glass_positions())
  assert steps == 2 * 26 * 26
  swap = rng.random((3, steps)) < 0.5
  delta = rng.integers(-1, 1, size=(3, steps, 2))
  got = image_ops.glass_shuffle(x, swap, delta)
  for i in range(3):
    ref = x[i].copy()
    t = 0
    for _ in range(2):
      for h in range(27, 1, -1):
        for w in range(27, 1, -1):
          if swap[i, t]:
            dx, dy = delta[i, t]
            hp, wp = h + dy, w + dx
            ref[h, w], ref[hp, wp] = ref[hp, wp], ref[h, w]
          t += 1
    np.testing.assert_array_equal(got[i], ref)
  np.testing.assert_array_equal(np.sort(got.reshape(3, -1)), np.sort(x.reshape(3, -1)))


def _reference_canny(image):
  """scikit-image's feature.canny(image) with its defaults, line by line."""
  sigma, low_threshold, high_threshold = 1.0, 0.1, 0.2
  mask = np.ones(image.shape, dtype=bool)

  def fsmooth(x):
    return ndi.gaussian_filter(x, sigma, mode="constant", cval=0, truncate=4.0)

  bleed_over = fsmooth(mask.astype(float))
  masked_image = np.zeros(image.shape, image.dtype)
  masked_image[mask] = image[mask]
  smoothed = fsmooth(masked_image) / (bleed_over + np.finfo(float).eps)
  jsobel = ndi.sobel(smoothed, axis=1)
  isobel = ndi.sobel(smoothed, axis=0)
  abs_isobel = np.abs(isobel)
  abs_jsobel = np.abs(jsobel)
  magnitude = np.hypot(isobel, jsobel)
  s = ndi.generate_binary_structure(2, 2)
  eroded_mask = ndi.binary_erosion(mask, s, border_value=0)
  eroded_mask = eroded_mask & (magnitude > 0)
  local_maxima = np.zeros(image.shape, bool)
  # 0 to 45 degrees
  pts_plus = (isobel >= 0) & (jsobel >= 0) & (abs_isobel >= abs_jsobel)
  pts_minus = (isobel <= 0) & (jsobel <= 0) & (abs_isobel >= abs_jsobel)
  pts = eroded_mask & (pts_plus | pts_minus)
  c1 = magnitude[1:, :][pts[:-1, :]]
  c2 = magnitude[1:, 1:][pts[:-1, :-1]]
  m = magnitude[pts]
  w = abs_jsobel[pts] / abs_isobel[pts]
  c_plus = c2 * w + c1 * (1 - w) <= m
  c1 = magnitude[:-1, :][pts[1:, :]]
  c2 = magnitude[:-1, :-1][pts[1:, 1:]]
  c_minus = c2 * w + c1 * (1 - w) <= m
  local_maxima[pts] = c_plus & c_minus
  # 45 to 90 degrees
  pts_plus = (isobel >= 0) & (jsobel >= 0) & (abs_isobel <= abs_jsobel)
  pts_minus = (isobel <= 0) & (jsobel <= 0) & (abs_isobel <= abs_jsobel)
  pts = eroded_mask & (pts_plus | pts_minus)
  c1 = magnitude[:, 1:][pts[:, :-1]]
  c2 = magnitude[1:, 1:][pts[:-1, :-1]]
  m = magnitude[pts]
  w = abs_isobel[pts] / abs_jsobel[pts]
  c_plus = c2 * w + c1 * (1 - w) <= m
  c1 = magnitude[:, :-1][pts[:, 1:]]
  c2 = magnitude[:-1, :-1][pts[1:, 1:]]
  c_minus = c2 * w + c1 * (1 - w) <= m
  local_maxima[pts] = c_plus & c_minus
  # 90 to 135 degrees
  pts_plus = (isobel <= 0) & (jsobel >= 0) & (abs_isobel <= abs_jsobel)
  pts_minus = (isobel >= 0) & (jsobel <= 0) & (abs_isobel <= abs_jsobel)
  pts = eroded_mask & (pts_plus | pts_minus)
  c1a = magnitude[:, 1:][pts[:, :-1]]
  c2a = magnitude[:-1, 1:][pts[1:, :-1]]
  m = magnitude[pts]
  w = abs_isobel[pts] / abs_jsobel[pts]
  c_plus = c2a * w + c1a * (1.0 - w) <= m
  c1 = magnitude[:, :-1][pts[:, 1:]]
  c2 = magnitude[1:, :-1][pts[:-1, 1:]]
  c_minus = c2 * w + c1 * (1.0 - w) <= m
  local_maxima[pts] = c_plus & c_minus
  # 135 to 180 degrees
  pts_plus = (isobel <= 0) & (jsobel >= 0) & (abs_isobel >= abs_jsobel)
  pts_minus = (isobel >= 0) & (jsobel <= 0) & (abs_isobel >= abs_jsobel)
  pts = eroded_mask & (pts_plus | pts_minus)
  c1 = magnitude[:-1, :][pts[1:, :]]
  c2 = magnitude[:-1, 1:][pts[1:, :-1]]
  m = magnitude[pts]
  w = abs_jsobel[pts] / abs_isobel[pts]
  c_plus = c2 * w + c1 * (1 - w) <= m
  c1 = magnitude[1:, :][pts[:-1, :]]
  c2 = magnitude[1:, :-1][pts[:-1, 1:]]
  c_minus = c2 * w + c1 * (1 - w) <= m
  local_maxima[pts] = c_plus & c_minus
  high_mask = local_maxima & (magnitude >= high_threshold)
  low_mask = local_maxima & (magnitude >= low_threshold)
  labels, count = ndi.label(low_mask, np.ones((3, 3), bool))
  if count == 0:
    return low_mask
  sums = np.array(ndi.sum(high_mask, labels, np.arange(count, dtype=np.int32) + 1), ndmin=1)
  good_label = np.zeros((count + 1,), bool)
  good_label[1:] = sums > 0
  return good_label[labels]


def test_canny_matches_scikit_images_code(digits):
  rng = np.random.default_rng(0)
  images = np.concatenate(
    [
      digits[..., 0].astype(np.float64),
      rng.random((2, SIZE, SIZE)),  # noise: every sector and many ties
      np.zeros((1, SIZE, SIZE)),  # no edge at all
    ]
  )
  got = image_ops.canny(images)
  for img, edges in zip(images, got):
    np.testing.assert_array_equal(edges, _reference_canny(img))


def test_zigzag_path_spans_columns_2_to_25():
  for delta in range(-5, 5):
    cs, rs = image_ops.zigzag_path(delta)
    assert cs[0] == pytest.approx(2.0) and rs[0] == 0.0
    assert cs[-1] == pytest.approx(25.0, abs=0.5)  # the last corner is rotated too
    assert rs[-1] == pytest.approx(delta, abs=2.5)


# --------------------------------------------------------------------------------------------
# The published arrays


def _publish(folder, names=("stripe", "fog"), n=20):
  rng = np.random.default_rng(0)
  arrays = {}
  for name in names:
    images = rng.integers(0, 256, size=(n, SIZE, SIZE, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    (folder / name).mkdir(parents=True)
    np.save(folder / name / "test_images.npy", images)
    np.save(folder / name / "test_labels.npy", labels)
    arrays[name] = images, labels
  return arrays


def test_load_published(tmp_path):
  arrays = _publish(tmp_path)
  C.check_published(tmp_path, ["stripe", "fog"])
  for name, (images, labels) in arrays.items():
    x, y = C.load_published(tmp_path, name)
    assert x.shape == (20, 28, 28, 1) and x.dtype == np.float32
    assert y.shape == (20,) and y.dtype == np.int32
    np.testing.assert_array_equal(x, images.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(y, labels)
    assert x.min() >= 0 and x.max() <= 1


def test_published_missing_or_malformed(tmp_path):
  _publish(tmp_path)
  with pytest.raises(C.CorruptionError, match=r"rotate.test_images\.npy is missing") as info:
    C.check_published(tmp_path, ["stripe", "rotate"])
  assert "mnist_c" in str(info.value) and "(N, 28, 28, 1)" in str(info.value)
  (tmp_path / "fog" / "test_labels.npy").unlink()
  with pytest.raises(C.CorruptionError, match=r"fog.test_labels\.npy is missing"):
    C.load_published(tmp_path, "fog")
  with pytest.raises(C.CorruptionError, match="does not exist"):
    C.check_published(tmp_path / "nowhere", ["stripe"])
  with pytest.raises(C.CorruptionError, match="valid corruptions"):
    C.check_published(tmp_path, ["blur"])
  np.save(tmp_path / "stripe" / "test_images.npy", np.zeros((20, 28, 28, 3), np.uint8))
  with pytest.raises(C.CorruptionError, match=r"stripe.test_images\.npy holds uint8 of shape"):
    C.check_published(tmp_path, ["stripe"])
  np.save(tmp_path / "stripe" / "test_images.npy", np.zeros((19, 28, 28, 1), np.uint8))
  with pytest.raises(C.CorruptionError, match="19 images but 20 labels"):
    C.load_published(tmp_path, "stripe")
  (tmp_path / "stripe" / "test_images.npy").write_bytes(b"not an array")
  with pytest.raises(C.CorruptionError, match="not a readable"):
    C.load_published(tmp_path, "stripe")


# --------------------------------------------------------------------------------------------
# Contact sheet and real digits


def test_contact_sheet(tmp_path):
  images = np.concatenate([_digits(6), _digits(4)])
  labels = np.arange(10)[::-1]
  path = C.contact_sheet(images, labels, tmp_path / "sheet" / "c.png", seed=0)
  assert isinstance(path, str) and path.endswith("c.png")
  data = (tmp_path / "sheet" / "c.png").read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  from PIL import Image

  with Image.open(path) as sheet:
    width, height = sheet.size
  assert 600 < width < 2000 and 900 < height < 2500  # 16 rows of 10 digits
  small = C.contact_sheet(images[:3], [0, 1, 1], tmp_path / "small.png", names=["stripe"])
  with Image.open(small) as sheet:
    assert sheet.size[1] < height


def test_real_digits():
  from digits_jax.data import idx

  folder = real_mnist_dir()
  raw = idx.read_idx(folder / "t10k-images-idx3-ubyte.gz")[:100]
  x = raw.astype(np.float32)[..., None] / np.float32(255)
  for name in C.NAMES:
    out = C.corrupt(name, x, seed=0)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert np.all(np.any(out != x, axis=(1, 2, 3))), name
  edges = C.corrupt("canny_edges", x)
  assert set(np.unique(edges)) == {0.0, 1.0}
  moved = C.corrupt("translate", x)
  for before, after in zip(x[:20], moved[:20]):
    ink = np.nonzero(before[..., 0])
    if min(ink[0].min(), ink[1].min()) >= 3 and max(ink[0].max(), ink[1].max()) <= 24:
      shift = _centre_of_mass(after) - _centre_of_mass(before)
      np.testing.assert_allclose(np.abs(shift), [3.0, 3.0], atol=0.1)
