"""What a trained network learned: first-layer filters, feature maps and saliency maps.

Three figures, drawn like those of :mod:`digits_jax.analysis.plots` (matplotlib's object API on the
Agg canvas, PNGs written atomically):

* ``filters.png`` (:func:`plot_filters`): the first convolution's kernels, one panel per
  output channel, on a diverging colour scale centred on 0.
* ``activations.png`` (:func:`plot_activations`): for a few digits, the input and a
  selection of channels of every convolution's output.
* ``saliency.png`` (:func:`plot_saliency`): the gradient of the predicted class's logit with
  respect to the input pixels (Simonyan, Vedaldi and Zisserman 2014, "Deep Inside
  Convolutional Networks"), for correctly classified and misclassified digits.

The model is not changed to expose its layers: feature maps come from Flax's
``capture_intermediates``, keeping the output of every submodule named ``conv<N>`` (at any
depth, e.g. ``block1/conv0`` in a ResNet), in the order the layers ran. These are the
convolutions' outputs with bias, before any batch norm or ReLU.

:func:`write_visualizations` writes all three for a model and its variables.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from digits_jax.analysis import figures

if TYPE_CHECKING:  # matplotlib loads when a figure is drawn (figures.new_figure)
  from matplotlib import colors
  from matplotlib.figure import Figure

FILES = {"filters": "filters.png", "activations": "activations.png", "saliency": "saliency.png"}
CONV_NAME = re.compile(r"conv\d+")
DIVERGING = "RdBu_r"  # red positive, blue negative, white 0

ApplyFn = Callable[..., Any]  # ``model.apply``: (variables, images, train=False) -> logits


def feature_maps(
  apply_fn: ApplyFn, variables: Mapping[str, Any], images: jax.Array
) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """The output of every convolution of a network, and its logits, in evaluation mode.

  Args:
    apply_fn: the model's ``apply`` (a Flax module's ``model.apply``).
    variables: the model's variables (``params``, and ``batch_stats`` for BN models).
    images: ``(N, H, W, C)`` inputs.

  Returns:
    ``(maps, logits)``: ``maps`` from each convolution's path (``"conv0"``,
    ``"block1/conv0"``) to its ``(N, h, w, channels)`` output, in the order the layers
    ran; ``logits`` ``(N, classes)``.

  Raises:
    ValueError: the network has no submodule named ``conv<N>``.
  """
  order: list[tuple[str, ...]] = []  # conv paths in the order they ran, seen while tracing

  def is_conv(module: Any, method_name: str) -> bool:
    if method_name != "__call__" or not CONV_NAME.fullmatch(module.name or ""):
      return False
    if module.path not in order:
      order.append(module.path)
    return True

  capture = jax.jit(
    functools.partial(
      apply_fn, train=False, capture_intermediates=is_conv, mutable=["intermediates"]
    )
  )
  logits, state = capture(variables, jnp.asarray(images))
  maps: dict[str, np.ndarray] = {}
  for path in order:
    node = state["intermediates"]
    for name in path:
      node = node[name]
    maps["/".join(path)] = np.asarray(node["__call__"][0])
  if not maps:
    raise ValueError(
      "the network has no submodule named conv0, conv1, ...: give its "
      "convolutions those names (e.g. nn.Conv(..., name='conv0')) to "
      "visualise them"
    )
  return maps, np.asarray(logits)


def first_conv_kernel(
  apply_fn: ApplyFn, variables: Mapping[str, Any], image_shape: Sequence[int]
) -> tuple[str, np.ndarray]:
  """The kernel of the first convolution the network applies to its input.

  Args:
    apply_fn: the model's ``apply``.
    variables: the model's variables.
    image_shape: ``(H, W, C)`` of one input image.

  Returns:
    ``(path, kernel)``: the layer's path (e.g. ``"conv0"``) and its ``(kh, kw, C, out)``
    kernel.
  """
  maps, _ = feature_maps(apply_fn, variables, jnp.zeros((1, *image_shape), jnp.float32))
  path = next(iter(maps))
  params = variables["params"]
  for name in path.split("/"):
    params = params[name]
  return path, np.asarray(params["kernel"])


def saliency(
  apply_fn: ApplyFn, variables: Mapping[str, Any], images: jax.Array
) -> tuple[np.ndarray, np.ndarray]:
  """Gradient of each image's predicted-class logit with respect to its pixels.

  The network runs in evaluation mode (batch norm with its running statistics, no
  dropout), where each image's logits depend on that image alone, so one ``jax.grad`` of
  the sum of the predicted logits over the batch gives every image's own gradient.

  Args:
    apply_fn: the model's ``apply``.
    variables: the model's variables.
    images: ``(N, H, W, C)`` inputs.

  Returns:
    ``(maps, predictions)``: ``maps`` has the shape and dtype of ``images`` (the gradient
    of logit ``predictions[i]`` of image ``i``); ``predictions`` ``(N,)`` the predicted
    classes (argmax of the logits).
  """
  maps, predictions = _saliency(apply_fn, variables, jnp.asarray(images))
  return np.asarray(maps), np.asarray(predictions)


@functools.partial(jax.jit, static_argnums=0)
def _saliency(
  apply_fn: ApplyFn, variables: Mapping[str, Any], images: jax.Array
) -> tuple[jax.Array, jax.Array]:
  predictions = jnp.argmax(apply_fn(variables, images, train=False), axis=-1)

  def predicted_logits(x: jax.Array) -> jax.Array:
    logits = apply_fn(variables, x, train=False)
    return jnp.take_along_axis(logits, predictions[:, None], axis=-1).sum()

  return jax.grad(predicted_logits)(images), predictions


# --------------------------------------------------------------------------------------------
# Figures


def _figure(width: float, height: float) -> Figure:
  """A figure of ``width`` x ``height`` inches."""
  return figures.new_figure(width * figures.DPI, height * figures.DPI)


def _image_panels(fig: Figure) -> int:
  """How many axes of ``fig`` show an image (colour bars excluded)."""
  return sum(1 for ax in fig.axes if ax.images)


def _symmetric(limit: float) -> colors.Normalize:
  from matplotlib import colors

  limit = float(limit) if limit > 0 else 1.0  # an all-zero map still gets a scale
  return colors.Normalize(-limit, limit)


def _bare(ax) -> None:
  ax.set_xticks([])
  ax.set_yticks([])


def plot_filters(
  kernel: np.ndarray, path: str | os.PathLike, *, layer: str = "conv0", title: str = ""
) -> tuple[Path, int]:
  """The first convolution's kernels as images, one panel per output channel.

  All panels share one diverging colour scale, symmetric around 0 (red: the filter responds
  to bright pixels there, blue: to dark ones), shown in a colour bar.

  Args:
    kernel: ``(kh, kw, C, out)`` kernel. With ``C > 1`` input channels each panel shows the
      mean over them (the title says so).
    path: the PNG to write.
    layer: the layer's name, for the title.
    title: prefix of the figure's title, e.g. the run's name.

  Returns:
    ``(path, panels)``: the PNG and the number of kernel panels drawn (``out``).
  """
  kernel = np.asarray(kernel, np.float32)
  kh, kw, cin, cout = kernel.shape
  shown = kernel.mean(axis=2) if cin > 1 else kernel[:, :, 0]
  cols = min(cout, 8)
  rows = math.ceil(cout / cols)
  fig = _figure(1.1 * cols + 1.4, 1.2 * rows + 0.9)
  axes = np.atleast_1d(fig.subplots(rows, cols)).reshape(-1)
  norm = _symmetric(np.abs(shown).max())
  image = None
  for c, ax in enumerate(axes):
    if c >= cout:
      ax.axis("off")
      continue
    image = ax.imshow(shown[:, :, c], cmap=DIVERGING, norm=norm, interpolation="nearest")
    ax.set_title(f"channel {c}", fontsize=8)
    _bare(ax)
  fig.colorbar(image, ax=axes.tolist(), label="kernel weight", shrink=0.9)
  heading = f"First convolution ({layer}): the {cout} {kh}x{kw} kernels, one per output channel"
  if cin > 1:
    heading += f" (mean over {cin} input channels)"
  fig.suptitle(f"{title}\n{heading}" if title else heading)
  return figures.save(fig, path), _image_panels(fig)


def _strongest_channels(maps: np.ndarray, count: int) -> np.ndarray:
  """The ``count`` channels with the largest mean absolute output, in channel order."""
  strength = np.abs(maps).mean(axis=(0, 1, 2))
  return np.sort(np.argsort(-strength, kind="stable")[:count])


def _label_text(names: Sequence[str], label: int, predicted: int, probability: float | None) -> str:
  text = f"true {names[label]}\npred {names[predicted]}"
  if probability is not None:
    text += f" ({100 * probability:.1f}%)"
  return text


def _heading(fig: Figure, cell, text: str, **kwargs) -> None:
  """A text-only axes over a grid cell (or span): headings that take part in the layout."""
  ax = fig.add_subplot(cell)
  ax.axis("off")
  ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, **kwargs)


def plot_activations(
  images: np.ndarray,
  labels: np.ndarray,
  predictions: np.ndarray,
  maps: Mapping[str, np.ndarray],
  path: str | os.PathLike,
  *,
  probabilities: np.ndarray | None = None,
  channels_per_layer: int | None = None,
  class_names: Sequence[str] | None = None,
  title: str = "",
) -> tuple[Path, int]:
  """Feature maps of every convolution for a few digits.

  One row per digit, labelled with its true class and the prediction (green correct, red
  wrong). Columns: the input, then for each convolution, in the order the layers ran, the
  channels with the largest mean absolute output over these digits, under the layer's name
  and map size. Outputs are shown before batch norm and ReLU, so they are signed: each
  layer is divided by its largest absolute value over the digits shown (given above its
  columns), and one diverging colour bar from -1 to 1 serves every layer.

  Args:
    images: ``(N, H, W, 1)`` or ``(N, H, W)`` digits in ``[0, 1]``.
    labels: ``(N,)`` true classes.
    predictions: ``(N,)`` predicted classes.
    maps: layer path to its ``(N, h, w, channels)`` output, as :func:`feature_maps` returns.
    path: the PNG to write.
    probabilities: ``(N,)`` probability of each predicted class, shown when given.
    channels_per_layer: channels shown per layer; default: 6 for up to four layers, fewer
      (down to 2) for deeper nets, so the figure stays about 25 panels wide.
    class_names: names of the classes (default: their numbers).
    title: prefix of the figure's title.

  Returns:
    ``(path, panels)``: the PNG and the number of image panels drawn
    (rows x (1 + channels shown)).
  """
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  rows = len(labels)
  names = figures.class_names(class_names, int(max(labels.max(), predictions.max())) + 1)
  if channels_per_layer is None:
    channels_per_layer = int(np.clip(24 // len(maps), 2, 6))
  chosen = {name: _strongest_channels(m, channels_per_layer) for name, m in maps.items()}
  # Columns: input, then per layer a narrow gap and one column per channel shown.
  ratios, starts = [1.0], []
  for channels in chosen.values():
    ratios.append(0.25)
    starts.append(len(ratios))
    ratios += [1.0] * len(channels)
  panels_wide = 1 + sum(len(c) for c in chosen.values())
  fig = _figure(0.95 * panels_wide + 0.25 * len(chosen) + 2.6, 1.0 * rows + 2.0)
  grid = fig.add_gridspec(
    rows + 1, len(ratios), width_ratios=ratios, height_ratios=[0.55] + [1.0] * rows
  )
  _heading(fig, grid[0, 0], "input", fontsize=10)
  for i in range(rows):
    ax = fig.add_subplot(grid[i + 1, 0])
    figures.show_image(ax, images[i])
    ok = labels[i] == predictions[i]
    ax.set_ylabel(
      _label_text(
        names, labels[i], predictions[i], None if probabilities is None else probabilities[i]
      ),
      fontsize=9,
      color=figures.CORRECT_COLOR if ok else figures.WRONG_COLOR,
    )
  norm = _symmetric(1.0)
  image, map_axes = None, []
  for start, (name, channels) in zip(starts, chosen.items(), strict=True):
    layer_maps = maps[name]
    scale = float(np.abs(layer_maps).max()) or 1.0
    h, w = layer_maps.shape[1:3]
    _heading(
      fig,
      grid[0, start : start + len(channels)],
      f"{name} ({h}x{w}, {layer_maps.shape[3]} channels)\nmax |output| {scale:.3g}",
      fontsize=10,
    )
    for i in range(rows):
      for j, c in enumerate(channels):
        ax = fig.add_subplot(grid[i + 1, start + j])
        image = ax.imshow(
          layer_maps[i, :, :, c] / scale, cmap=DIVERGING, norm=norm, interpolation="nearest"
        )
        _bare(ax)
        map_axes.append(ax)
        if i == 0:
          ax.set_title(f"ch {c}", fontsize=8)
  fig.colorbar(
    image, ax=map_axes, label="output / layer's max |output|", shrink=0.8, fraction=0.02, pad=0.01
  )
  heading = (
    f"Convolution outputs (with bias, before any batch norm and the ReLU) for {rows} "
    "digits: "
    f"the {channels_per_layer} most active channels of each layer"
  )
  fig.suptitle(f"{title}\n{heading}" if title else heading)
  return figures.save(fig, path), _image_panels(fig)


def plot_saliency(
  images: np.ndarray,
  maps: np.ndarray,
  labels: np.ndarray,
  predictions: np.ndarray,
  probabilities: np.ndarray,
  path: str | os.PathLike,
  *,
  class_names: Sequence[str] | None = None,
  columns: int = 4,
  title: str = "",
) -> tuple[Path, int]:
  """Digits next to their saliency maps, correctly classified above, misclassified below.

  Each example is a pair of panels: the digit, framed and titled in green when correctly
  classified and in red when not, with its true class, the prediction and its probability;
  and the gradient of the predicted logit with respect to the pixels (:func:`saliency`).
  Red pixels would raise the predicted logit if brighter, blue ones lower it; each map is
  divided by its own largest absolute value, so one colour bar from -1 to 1 serves all.

  Args:
    images: ``(N, H, W, 1)`` or ``(N, H, W)`` digits in ``[0, 1]``.
    maps: saliency maps of the same shape (summed over channels if there are several).
    labels: ``(N,)`` true classes.
    predictions: ``(N,)`` predicted classes.
    probabilities: ``(N,)`` probability of each predicted class.
    path: the PNG to write.
    class_names: names of the classes (default: their numbers).
    columns: examples per row.
    title: prefix of the figure's title.

  Returns:
    ``(path, panels)``: the PNG and the number of image panels drawn (two per example).
  """
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  height, width = np.shape(images)[1:3]
  maps = np.asarray(maps, np.float32).reshape(len(labels), height, width, -1).sum(-1)
  num_classes = int(max(labels.max(initial=0), predictions.max(initial=0))) + 1
  names = figures.class_names(class_names, num_classes)
  groups = (
    ("Correctly classified", np.flatnonzero(labels == predictions), figures.CORRECT_COLOR),
    ("Misclassified", np.flatnonzero(labels != predictions), figures.WRONG_COLOR),
  )
  group_rows = [max(1, math.ceil(len(idx) / columns)) for _, idx, _ in groups]
  # Rows: per group a heading, then its rows of examples; columns: digit, map, (gap), ...
  heights, ratios = [], []
  for rows in group_rows:
    heights += [0.3] + [1.0] * rows
  for k in range(columns):
    ratios += [1.0, 1.0] + ([0.2] if k < columns - 1 else [])
  fig = _figure(2.3 * columns + 1.3, 1.6 * sum(group_rows) + 0.6 * len(groups) + 1.0)
  grid = fig.add_gridspec(len(heights), len(ratios), height_ratios=heights, width_ratios=ratios)
  norm = _symmetric(1.0)
  image, map_axes = None, []
  top = 0
  for (heading, idx, color), rows in zip(groups, group_rows, strict=True):
    _heading(
      fig, grid[top, :], f"{heading} ({len(idx)})", color=color, fontsize=13, fontweight="bold"
    )
    if not len(idx):
      _heading(
        fig, grid[top + 1, :], f"no {heading.lower()} digits among those chosen", fontsize=11
      )
    for k, i in enumerate(idx[: rows * columns]):
      r, col = top + 1 + k // columns, 3 * (k % columns)
      digit_ax, map_ax = fig.add_subplot(grid[r, col]), fig.add_subplot(grid[r, col + 1])
      figures.show_image(digit_ax, images[i])
      digit_ax.set_title(
        f"true {names[labels[i]]}, pred {names[predictions[i]]}\np = {probabilities[i]:.3f}",
        fontsize=9,
        color=color,
      )
      for spine in digit_ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(3)
      scale = float(np.abs(maps[i]).max()) or 1.0
      image = map_ax.imshow(maps[i] / scale, cmap=DIVERGING, norm=norm, interpolation="nearest")
      map_ax.set_title("saliency", fontsize=9)
      _bare(map_ax)
      map_axes.append(map_ax)
    top += rows + 1
  if image is not None:
    fig.colorbar(
      image,
      ax=map_axes,
      label="d(logit) / d(pixel), divided by the map's max",
      shrink=0.7,
      fraction=0.03,
      pad=0.02,
    )
  heading = "Saliency: gradient of the predicted class's logit with respect to the input pixels"
  fig.suptitle(f"{title}\n{heading}" if title else heading)
  return figures.save(fig, path), _image_panels(fig)


# --------------------------------------------------------------------------------------------
# All three


def _first_of_each_class(labels: np.ndarray, count: int) -> np.ndarray:
  """``count`` indices: the first image of each class in order of first appearance, then
  the following images if there are fewer classes than ``count``."""
  first = np.sort(np.unique(labels, return_index=True)[1])
  rest = np.setdiff1d(np.arange(len(labels)), first)
  return np.concatenate([first, rest])[:count]


def _probabilities(
  model: Any, variables: Mapping[str, Any], images: np.ndarray, batch_size: int = 500
) -> np.ndarray:
  forward = jax.jit(functools.partial(model.apply, train=False))
  out = [
    jax.nn.softmax(forward(variables, jnp.asarray(images[i : i + batch_size])))
    for i in range(0, len(images), batch_size)
  ]
  return np.asarray(jnp.concatenate(out))


def write_visualizations(
  out_dir: str | os.PathLike,
  model: Any,
  variables: Mapping[str, Any],
  images: np.ndarray,
  labels: np.ndarray,
  probabilities: np.ndarray | None = None,
  *,
  num_activations: int = 4,
  num_correct: int = 8,
  num_wrong: int = 8,
  class_names: Sequence[str] | None = None,
  title: str = "",
) -> list[Path]:
  """Writes ``filters.png``, ``activations.png`` and ``saliency.png`` for a trained model.

  The digits are chosen without randomness: for the feature maps, the first image of each
  class, for the first ``num_activations`` classes to appear; for the saliency maps,
  ``num_correct`` correctly classified images picked the same way and the ``num_wrong``
  most confident mistakes (fewer when there are fewer).

  Args:
    out_dir: the folder for the PNGs (created if missing), e.g. a run's ``plots/``.
    model: the Flax module (its ``apply`` is called with ``train=False``).
    variables: its variables (``params``, and ``batch_stats`` for BN models).
    images: ``(N, H, W, C)`` test images in ``[0, 1]``.
    labels: ``(N,)`` their true classes.
    probabilities: ``(N, classes)`` predicted probabilities of ``model`` on ``images``, if
      already computed; otherwise they are computed here.
    num_activations: digits (rows) in ``activations.png``.
    num_correct: correctly classified digits in ``saliency.png``.
    num_wrong: misclassified digits in ``saliency.png``.
    class_names: names of the classes (default: their numbers).
    title: prefix of the figures' titles, e.g. the run's name.

  Returns:
    The paths of the three PNGs.
  """
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels)
  if probabilities is None:
    probabilities = _probabilities(model, variables, images)
  probabilities = np.asarray(probabilities)
  predicted = probabilities.argmax(-1)
  confidence = probabilities.max(-1)

  layer, kernel = first_conv_kernel(model.apply, variables, images.shape[1:])
  filters, _ = plot_filters(kernel, out_dir / FILES["filters"], layer=layer, title=title)

  rows = _first_of_each_class(labels, num_activations)
  maps, _ = feature_maps(model.apply, variables, images[rows])
  activations, _ = plot_activations(
    images[rows],
    labels[rows],
    predicted[rows],
    maps,
    out_dir / FILES["activations"],
    probabilities=confidence[rows],
    class_names=class_names,
    title=title,
  )

  correct = np.flatnonzero(predicted == labels)
  correct = correct[_first_of_each_class(labels[correct], num_correct)]
  wrong = np.flatnonzero(predicted != labels)
  wrong = wrong[np.argsort(-confidence[wrong], kind="stable")][:num_wrong]
  chosen = np.concatenate([correct, wrong])
  grads, grad_predictions = saliency(model.apply, variables, images[chosen])
  saliency_png, _ = plot_saliency(
    images[chosen],
    grads,
    labels[chosen],
    grad_predictions,
    probabilities[chosen, grad_predictions],
    out_dir / FILES["saliency"],
    class_names=class_names,
    title=title,
  )
  return [filters, activations, saliency_png]
