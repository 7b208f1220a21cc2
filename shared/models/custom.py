"""Bring your own model: ``package.module:factory`` as a model id.

The factory is any importable callable ``factory(input_shape, num_classes)`` (per-sample input
shape, class count: the data's) that returns one of

- ``(model, "layer")``: an ``nn.Module`` whose forward applies its named children in order
  (``nn.Sequential`` or the like) and the name of the last child on the edge; everything
  after it is the cloud stage;
- ``(edge_stage, cloud_stage)``: the two stages, explicitly.

It runs under ``torch.device("meta")`` like the built-in factories (`registry`), so it must
not read parameter values; `ModelSpec.build` draws the parameters from the run's seed. The cut
shape is derived by the same meta-device forward as for the built-ins, which also refuses an
input the model cannot take. Everything that goes wrong — the module does not import, the
factory is missing, the cut names no layer, the shapes do not fit — raises `ModelNotFound`
(a `ConfigError`) saying which.

Edge and cloud each import the factory themselves. `architecture_fingerprint` condenses what
they built (parameter names, shapes, dtypes) into one hash, carried in HELLO, so two sides
that loaded different code are refused at the handshake (PROTOCOL.md §3.3).
"""

from __future__ import annotations

import functools
import importlib
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from simultrain.shared.models.registry import ModelNotFound, derive_spec
from simultrain.shared.models.spec import ModelSpec
from simultrain.shared.protocol.fingerprint import Architecture, TensorSpec, cloud_stage_digest

__all__ = [
    "architecture_fingerprint",
    "custom_model_spec",
    "is_custom_model_id",
    "model_architecture",
    "split_at",
]

# ``package.module:factory`` (dotted module path, one attribute name).
_CUSTOM_ID = re.compile(
    r"(?P<module>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):(?P<attr>[A-Za-z_][A-Za-z0-9_]*)"
)


def is_custom_model_id(model_id: str) -> bool:
    """Whether ``model_id`` names a user's factory (it has a ``:``) rather than a built-in."""
    return ":" in model_id


def custom_model_spec(
    model_id: str, *, input_shape: tuple[int, ...], num_classes: int
) -> ModelSpec:
    """The spec of the user's model ``package.module:factory`` for this data shape."""
    return _custom_spec(model_id, tuple(int(d) for d in input_shape), int(num_classes))


@functools.lru_cache(maxsize=64)
def _custom_spec(model_id: str, input_shape: tuple[int, ...], num_classes: int) -> ModelSpec:
    factory = _load_factory(model_id)

    def make_stages(shape: tuple[int, ...], classes: int) -> tuple[nn.Module, nn.Module]:
        return _stages(model_id, factory(shape, classes))

    description = (getattr(factory, "__doc__", None) or "").strip().split("\n")[0]
    spec = derive_spec(model_id, input_shape, num_classes, make_stages, description)
    try:
        # Once, now: a layer without a deterministic initialiser, or with buffers
        # (BatchNorm), is refused here rather than when a service builds its master.
        spec.build(seed=0)
    except TypeError as exc:
        raise ModelNotFound(f"model {model_id!r}: {exc}") from exc
    return spec


def _load_factory(model_id: str) -> Callable[..., Any]:
    match = _CUSTOM_ID.fullmatch(model_id)
    if match is None:
        raise ModelNotFound(f"model {model_id!r}: a custom model is written package.module:factory")
    module_name, attr = match["module"], match["attr"]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelNotFound(
            f"model {model_id!r}: cannot import {module_name!r} ({exc}); "
            "is its folder on PYTHONPATH?"
        ) from exc
    factory = getattr(module, attr, None)
    if factory is None:
        raise ModelNotFound(f"model {model_id!r}: module {module_name!r} has no {attr!r}")
    if not callable(factory):
        raise ModelNotFound(f"model {model_id!r}: {module_name}.{attr} is not callable")
    return factory  # type: ignore[no-any-return]


def _stages(model_id: str, made: Any) -> tuple[nn.Module, nn.Module]:
    """The factory's answer as ``(edge_stage, cloud_stage)``; anything else is refused."""
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module):
        model, cut = made
        if isinstance(cut, nn.Module):
            return model, cut
        if isinstance(cut, str):
            try:
                return split_at(model, cut)
            except ValueError as exc:
                raise ModelNotFound(f"model {model_id!r}: {exc}") from exc
    raise ModelNotFound(
        f"model {model_id!r}: the factory must return (module, 'layer name') or "
        f"(edge_stage, cloud_stage), not {type(made).__name__}"
    )


def split_at(model: nn.Module, layer: str) -> tuple[nn.Module, nn.Module]:
    """Cut ``model`` after its child ``layer``: children up to it on the edge, the rest in the
    cloud. Assumes ``model``'s forward applies its children in order, as ``nn.Sequential``
    does; raises `ValueError` naming the children when ``layer`` is not one of them or is
    the last (the cloud stage would be empty)."""
    children = list(model.named_children())
    names = [name for name, _ in children]
    if layer not in names:
        raise ValueError(f"no layer {layer!r} to cut after; its layers are {names}")
    cut = names.index(layer) + 1
    if cut == len(children):
        raise ValueError(f"cutting after {layer!r}, the last layer, leaves the cloud nothing")
    return nn.Sequential(OrderedDict(children[:cut])), nn.Sequential(OrderedDict(children[cut:]))


def model_architecture(spec: ModelSpec) -> Architecture:
    """What the model fingerprint covers (PROTOCOL.md §3.3), built on the meta device.

    The edge stage's parameters by name, dtype and shape; the cloud stage's condensed into
    its digest; the input and cut shapes. The session spec publishes exactly this, so any
    client can recompute the fingerprint from it.
    """
    with torch.device("meta"):
        edge_stage, cloud_stage = spec.make_stages(spec.input_shape, spec.num_classes)
    return Architecture(
        input_shape=tuple(spec.input_shape),
        cut_shape=tuple(spec.cut_shape),
        edge_stage=_tensor_specs(edge_stage),
        cloud_stage_digest=cloud_stage_digest(_tensor_specs(cloud_stage)),
    )


def architecture_fingerprint(spec: ModelSpec) -> str:
    """HELLO's ``model_fingerprint``: SHA-256 of the architecture's canonical text.

    Two processes that import different code for one model id get different fingerprints,
    unless the architectures agree to the last parameter's shape, which is what the split
    protocol needs to agree on (PROTOCOL.md §3.3).
    """
    return model_architecture(spec).fingerprint


def _tensor_specs(module: nn.Module) -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec(name, str(param.dtype).removeprefix("torch."), tuple(param.shape))
        for name, param in module.named_parameters()
    )
