"""Saliency against finite differences, feature maps by layer name, and the three figures."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib import image as mpimg

from digits_jax import models
from digits_jax.analysis import visualize
from digits_jax.models import vgg
from digits_jax.models.cnn import ConvNet


def tiny_net(fast: bool = False) -> ConvNet:
  """Two small convolutions, a pool and a dense layer: the registered nets' structure."""
  return ConvNet(layers=(4, "pool", 6), dense=(8,), fast=fast)


def random_images(n: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).random((n, 28, 28, 1), np.float32)


def test_saliency_matches_central_differences():
  """float64 on the plain layers: the network is piecewise linear, so central differences
  with a small step are exact up to rounding (a step that crosses a ReLU or max-pool kink
  is vanishingly unlikely at 1e-6)."""
  with jax.enable_x64(True):
    model = tiny_net()
    variables = jax.tree_util.tree_map(
      lambda a: a.astype(jnp.float64), models.init_variables(model, jax.random.PRNGKey(0))
    )
    images = jnp.asarray(random_images(3), jnp.float64)
    maps, predictions = visualize.saliency(model.apply, variables, images)
    assert maps.shape == images.shape and maps.dtype == np.float64
    logits = model.apply(variables, images)
    np.testing.assert_array_equal(predictions, np.argmax(logits, -1))

    rng = np.random.default_rng(1)
    step = 1e-6
    for i in range(3):
      pixels = [tuple(p) for p in rng.integers(2, 26, (12, 2))]
      pixels.append(np.unravel_index(np.argmax(np.abs(maps[i, ..., 0])), (28, 28)))
      for r, c in pixels:
        bump = jnp.zeros_like(images[i]).at[r, c, 0].set(step)
        up = model.apply(variables, (images[i] + bump)[None])[0, predictions[i]]
        down = model.apply(variables, (images[i] - bump)[None])[0, predictions[i]]
        numeric = float(up - down) / (2 * step)
        assert numeric == pytest.approx(float(maps[i, r, c, 0]), rel=1e-6, abs=1e-8)
    assert np.abs(maps).max() > 0


def test_saliency_is_per_image_in_batch_norm_nets():
  """Evaluation mode: one image's map does not depend on the rest of the batch."""
  model = vgg.VGG(widths=(4, 8), dense=16)
  variables = models.init_variables(model, jax.random.PRNGKey(0))
  images = random_images(5)
  batch, predictions = visualize.saliency(model.apply, variables, images)
  for i in (0, 3):  # the same shape twice: one compilation
    alone, prediction = visualize.saliency(model.apply, variables, images[i : i + 1])
    assert prediction[0] == predictions[i]
    np.testing.assert_allclose(alone[0], batch[i], rtol=1e-5, atol=1e-7)


def test_saliency_fast_and_plain_layers_agree():
  fast, plain = tiny_net(fast=True), tiny_net(fast=False)
  variables = models.init_variables(fast, jax.random.PRNGKey(0))
  images = random_images(4)
  fast_maps, fast_predictions = visualize.saliency(fast.apply, variables, images)
  plain_maps, plain_predictions = visualize.saliency(plain.apply, variables, images)
  np.testing.assert_array_equal(fast_predictions, plain_predictions)
  np.testing.assert_allclose(fast_maps, plain_maps, rtol=1e-4, atol=1e-6)


def test_feature_maps_find_every_convolution_in_order():
  images = random_images(2)
  model = models.create_model("conv2_dense64")
  variables = models.init_variables(model, jax.random.PRNGKey(0))
  maps, logits = visualize.feature_maps(model.apply, variables, images)
  assert {k: v.shape for k, v in maps.items()} == {
    "conv0": (2, 26, 26, 32),
    "conv1": (2, 11, 11, 64),
  }
  assert list(maps) == ["conv0", "conv1"]
  np.testing.assert_allclose(logits, model.apply(variables, images), rtol=1e-6)
  # The first layer's output is the convolution with bias, before the ReLU.
  params = variables["params"]["conv0"]
  expected = jax.lax.conv_general_dilated(
    images, params["kernel"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  np.testing.assert_allclose(maps["conv0"], expected + params["bias"], rtol=1e-5, atol=1e-6)
  assert (maps["conv0"] < 0).any()


def test_feature_maps_inside_residual_blocks():
  model = models.create_model("resnet8")
  variables = models.init_variables(model, jax.random.PRNGKey(0))
  maps, _ = visualize.feature_maps(model.apply, variables, random_images(1))
  assert list(maps) == [
    "conv0",
    "block0/conv0",
    "block0/conv1",
    "block1/conv0",
    "block1/conv1",
    "block2/conv0",
    "block2/conv1",
  ]
  assert [m.shape[1:] for m in maps.values()] == [(28, 28, 16)] * 3 + [(14, 14, 32)] * 2 + [
    (7, 7, 64)
  ] * 2
  path, kernel = visualize.first_conv_kernel(model.apply, variables, (28, 28, 1))
  assert path == "conv0"
  np.testing.assert_array_equal(kernel, variables["params"]["conv0"]["kernel"])


def test_a_net_without_named_convolutions_is_refused():
  class Anonymous(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(10)(nn.Conv(4, (3, 3))(x).reshape(x.shape[0], -1))

  model = Anonymous()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  with pytest.raises(ValueError, match="conv0"):
    visualize.feature_maps(model.apply, variables, random_images(1))


def read_png(path) -> np.ndarray:
  """The PNG as an RGB(A) array; checks that it holds a picture, not a blank page."""
  pixels = mpimg.imread(path)
  assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 200
  rgb = pixels[..., :3]
  assert rgb.std() > 0.05  # not one flat colour
  assert (rgb.min(axis=-1) < 0.9).mean() > 0.05  # a good share of non-white pixels
  assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50  # colour maps, not just text
  return pixels


def test_filters_one_panel_per_output_channel(tmp_path):
  kernel = np.random.default_rng(0).normal(size=(3, 3, 1, 12)).astype(np.float32)
  path, panels = visualize.plot_filters(kernel, tmp_path / "filters.png", title="tiny")
  assert panels == 12
  read_png(path)
  # Several input channels: still one panel per output channel (their mean).
  _, panels = visualize.plot_filters(np.ones((3, 3, 3, 5)), tmp_path / "rgb.png")
  assert panels == 5


def test_activations_panels(tmp_path):
  model = tiny_net()
  variables = models.init_variables(model, jax.random.PRNGKey(0))
  images = random_images(3)
  maps, logits = visualize.feature_maps(model.apply, variables, images)
  predictions = np.argmax(logits, -1)
  labels = np.array([predictions[0], (predictions[1] + 1) % 10, predictions[2]])
  path, panels = visualize.plot_activations(
    images, labels, predictions, maps, tmp_path / "activations.png", probabilities=np.full(3, 0.5)
  )
  # Two layers of 4 and 6 channels, 6 shown per layer at most: 3 rows x (1 + 4 + 6).
  assert panels == 3 * (1 + 4 + 6)
  read_png(path)
  _, panels = visualize.plot_activations(
    images, labels, predictions, maps, tmp_path / "two.png", channels_per_layer=2
  )
  assert panels == 3 * (1 + 2 + 2)


def test_saliency_panels_with_and_without_mistakes(tmp_path):
  images = random_images(7)
  maps = np.random.default_rng(1).normal(size=images.shape)
  labels = np.array([0, 1, 2, 3, 4, 5, 6])
  predictions = np.array([0, 1, 2, 3, 4, 9, 9])  # 5 correct, 2 wrong
  path, panels = visualize.plot_saliency(
    images, maps, labels, predictions, np.linspace(0.3, 0.99, 7), tmp_path / "saliency.png"
  )
  assert panels == 2 * 7
  read_png(path)
  _, panels = visualize.plot_saliency(
    images[:5], maps[:5], labels[:5], predictions[:5], np.full(5, 0.9), tmp_path / "no_mistakes.png"
  )
  assert panels == 2 * 5


def test_write_visualizations_for_a_source_net_on_real_digits(mnist, tmp_path):
  """conv2_dense64, untrained, on real test digits (so some are right and most wrong), with
  variables shaped like a checkpoint's (an empty batch_stats)."""
  images, labels = mnist.test.images[:200], mnist.test.labels[:200]
  model = models.create_model("conv2_dense64")
  variables = {**models.init_variables(model, jax.random.PRNGKey(0)), "batch_stats": {}}
  paths = visualize.write_visualizations(
    tmp_path / "plots",
    model,
    variables,
    images,
    labels,
    num_correct=4,
    num_wrong=4,
    title="untrained",
  )
  assert [p.name for p in paths] == ["filters.png", "activations.png", "saliency.png"]
  for p in paths:
    read_png(p)
  # Probabilities already computed (as a run's evaluation has them) are used as given.
  probabilities = np.asarray(jax.nn.softmax(model.apply(variables, images)))
  again = visualize.write_visualizations(
    tmp_path / "again", model, variables, images, labels, probabilities, num_correct=2, num_wrong=2
  )
  assert all(p.is_file() for p in again)
