"""Split models: an edge stage and a cloud stage with a declared cut shape (docs/DESIGN.md §1).

    spec = get_model_spec("imu-cnn1d")      # shapes, class count
    model = spec.build(seed=0)              # SplitModel(edge_stage, cloud_stage, spec)
    logits = model.cloud_stage(model.edge_stage(x))   # == model.full()(x)

A user's own model is the id ``package.module:factory`` (see `custom`).

Built-in ids: ``imu-cnn1d`` (6×128), ``mnist-cnn`` (1×28×28), ``video-cnn`` (8×1×64×64);
each also answers other shapes / class counts as ``<id>-<dims>[-c<K>]`` (see `registry`).
"""

from simultrain.shared.models import zoo as _zoo  # noqa: F401  (registers the built-ins)
from simultrain.shared.models.custom import (
    architecture_fingerprint,
    custom_model_spec,
    is_custom_model_id,
    model_architecture,
)
from simultrain.shared.models.registry import (
    ModelNotFound,
    canonical_model_id,
    find_model_for_input,
    get_model_spec,
    list_models,
    model_spec_for,
    register_model,
)
from simultrain.shared.models.spec import ModelSpec, SplitModel, StageFactory, init_parameters

__all__ = [
    "ModelNotFound",
    "ModelSpec",
    "SplitModel",
    "StageFactory",
    "architecture_fingerprint",
    "canonical_model_id",
    "custom_model_spec",
    "find_model_for_input",
    "get_model_spec",
    "init_parameters",
    "is_custom_model_id",
    "list_models",
    "model_architecture",
    "model_spec_for",
    "register_model",
]
