"""The networks, in a registry by name.

``create_model("conv2_dense64")`` builds one; :data:`MODELS` lists them with their
recipes and sources. Importing this package registers every network module below.
"""

from digits_jax.models import cnn, resnet, vgg  # noqa: F401  (register the networks)
from digits_jax.models.layers import ACTIVATIONS
from digits_jax.models.registry import (
  FAST_OPS,
  MODELS,
  ModelSpec,
  UnknownModelError,
  attack_logits,
  count_params,
  create_model,
  fast_ops_mode,
  get_spec,
  inference_apply,
  inference_model,
  init_variables,
  register,
  sweep_models,
  use_fast_ops,
  variable_shapes,
)

__all__ = [
  "ACTIVATIONS",
  "FAST_OPS",
  "MODELS",
  "ModelSpec",
  "UnknownModelError",
  "attack_logits",
  "count_params",
  "create_model",
  "get_spec",
  "inference_apply",
  "inference_model",
  "init_variables",
  "register",
  "fast_ops_mode",
  "sweep_models",
  "use_fast_ops",
  "variable_shapes",
]
