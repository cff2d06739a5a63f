"""Which layers of a network are its features, its classifier and its head.

A network's variables are a tree whose top-level names are its layers (``conv0``,
``BatchNorm_2``, ``block1``, ``Dense_0``, ``logits``). Transfer learning
(:mod:`digits_jax.training.transfer`) copies, freezes and re-initialises by these roles:

* the **classifier**: the top-level dense layers (``Dense_i``, ``logits``) and the batch
  normalisations of their outputs (``BatchNorm_i`` numbered after the last convolution's:
  ``BatchNorm_3`` of bn_conv3_wide, ``BatchNorm_6`` of vgg_small);
* the **head**: the classifier's last dense layer (``logits``, else the highest ``Dense_i``),
  the one whose width is the class count;
* the **features**: every other layer: the convolutions (``conv*``), the batch
  normalisations that follow them, and the residual blocks (``block*``, whose 1x1
  ``projection`` is written as a Dense inside the block but is a convolution).

Every registered network reads this way; :func:`roles` gives the split of one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

_DENSE = re.compile(r"Dense_(\d+)")
_NORM = re.compile(r"BatchNorm_(\d+)")


def _convs(names: Iterable[str]) -> int:
  return sum(1 for n in names if re.fullmatch(r"conv\d+", n))


def classifier_layers(names: Iterable[str]) -> list[str]:
  """The top-level layer names among ``names`` that make up the classifier (module docstring)."""
  names = list(names)
  convs = _convs(names)
  return sorted(
    n
    for n in names
    if n == "logits" or _DENSE.fullmatch(n) or (_NORM.fullmatch(n) and int(n[10:]) >= convs)
  )


def head_layer(names: Iterable[str]) -> str | None:
  """The output layer among the top-level ``names``: ``logits``, else the highest
  ``Dense_i``; ``None`` if there is neither."""
  names = list(names)
  if "logits" in names:
    return "logits"
  dense = [int(m.group(1)) for n in names if (m := _DENSE.fullmatch(n))]
  return f"Dense_{max(dense)}" if dense else None


def feature_layers(names: Iterable[str]) -> list[str]:
  """The top-level layer names among ``names`` that are not the classifier's."""
  names = list(names)
  classifier = set(classifier_layers(names))
  return sorted(n for n in names if n not in classifier)


def roles(params: Mapping[str, Any]) -> dict[str, list[str]]:
  """``{"features": [...], "classifier": [...], "head": [...]}`` of a params tree."""
  head = head_layer(params)
  return {
    "features": feature_layers(params),
    "classifier": classifier_layers(params),
    "head": [head] if head else [],
  }


def keep_features(
  old: Mapping[str, Any], new: Mapping[str, Any], layers: Iterable[str]
) -> dict[str, Any]:
  """``new`` with the feature layers of ``old``: the variables a frozen step leaves as they
  were (batch statistics, moving averages). ``layers``: the network's top-level layer names
  (its params tree's keys), which decide the roles."""
  features = set(feature_layers(layers))
  return {k: old[k] if k in features and k in old else v for k, v in new.items()}
