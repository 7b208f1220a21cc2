"""The model registry: model ids → `ModelSpec`.

A model is registered once as a *family* with a default input shape and class count; its id is
the family name (``imu-cnn1d``). The same family also answers ids that carry another shape or
class count, so data with other dimensions finds a model without new code:

    <name>[-<d1>x<d2>x…][-c<classes>]      e.g.  imu-cnn1d-6x256   video-cnn-16x1x96x96-c5

The dims are the per-sample input shape and are written only when they differ from the
default; ``-cK`` likewise. `canonical_model_id` produces exactly this form, so one model has
one id on the wire. The cut shape is derived by a forward pass on the ``meta`` device (no
memory, no compute), which also rejects an input too small for the architecture.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from simultrain.shared.errors import ConfigError
from simultrain.shared.models.spec import ModelSpec, StageFactory

__all__ = [
    "ModelNotFound",
    "canonical_model_id",
    "derive_spec",
    "find_model_for_input",
    "get_model_spec",
    "list_models",
    "model_spec_for",
    "register_model",
]


class ModelNotFound(ConfigError, KeyError):
    """No registered model answers this id (or takes this input shape / class count).

    A `ConfigError` (a run names a model that does not exist) and a `KeyError` (a failed
    registry lookup), so either ``except`` catches it.
    """

    def __str__(self) -> str:
        # KeyError would repr() its argument, quoting the whole message.
        return str(self.args[0]) if self.args else "model not found"


@dataclass(frozen=True)
class _Family:
    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    make_stages: StageFactory
    description: str


_FAMILIES: dict[str, _Family] = {}
_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z][a-z0-9]*)*")
_SUFFIX = re.compile(r"(?:-(?P<dims>[1-9][0-9]*(?:x[1-9][0-9]*)*))?(?:-c(?P<classes>[1-9][0-9]*))?")


def register_model(
    name: str, *, input_shape: tuple[int, ...], num_classes: int, description: str = ""
) -> Callable[[StageFactory], StageFactory]:
    """Decorator registering a stage factory as the model family ``name``.

    The factory gets ``(input_shape, num_classes)`` and returns ``(edge_stage, cloud_stage)``.
    It runs under ``torch.device("meta")``; `ModelSpec.build` materialises and initialises the
    parameters. The default spec is built at once, so a broken model fails at import.
    """
    if not _NAME.fullmatch(name) or re.search(r"-c[0-9]+(?:-|$)", name):
        raise ValueError(f"invalid model name {name!r}: lowercase words joined by '-'")
    if name in _FAMILIES:
        raise ValueError(f"model {name!r} is already registered")

    def decorate(make_stages: StageFactory) -> StageFactory:
        family = _Family(name, tuple(input_shape), num_classes, make_stages, description)
        _FAMILIES[name] = family
        try:
            _spec(name, family.input_shape, num_classes)
        except Exception:
            del _FAMILIES[name]
            raise
        return make_stages

    return decorate


def list_models() -> list[str]:
    """The registered model ids (each family's default), sorted."""
    return sorted(_FAMILIES)


def get_model_spec(
    model_id: str, *, input_shape: tuple[int, ...] | None = None, num_classes: int | None = None
) -> ModelSpec:
    """The spec for ``model_id``; raises `ModelNotFound` naming the known ids.

    ``package.module:factory`` names a user's model (`custom`); it has no shape of its own,
    so it needs the data's ``input_shape`` and ``num_classes`` (`Dataset.model_spec` passes
    them).
    """
    if ":" in model_id:
        if input_shape is None or num_classes is None:
            raise ModelNotFound(
                f"model {model_id!r} is a custom model: it needs the data's input shape "
                "and class count"
            )
        from simultrain.shared.models.custom import custom_model_spec

        return custom_model_spec(model_id, input_shape=input_shape, num_classes=num_classes)
    for name in sorted(_FAMILIES, key=len, reverse=True):
        if not model_id.startswith(name):
            continue
        suffix = _SUFFIX.fullmatch(model_id[len(name) :])
        if suffix is None:
            continue
        family = _FAMILIES[name]
        dims, classes = suffix["dims"], suffix["classes"]
        shape = tuple(int(d) for d in dims.split("x")) if dims else family.input_shape
        return model_spec_for(
            name, input_shape=shape, num_classes=int(classes) if classes else None
        )
    raise ModelNotFound(
        f"unknown model id {model_id!r}; known: {', '.join(list_models())} "
        "(optionally suffixed -<dims> and/or -c<classes>)"
    )


def model_spec_for(
    name: str, *, input_shape: tuple[int, ...] | None = None, num_classes: int | None = None
) -> ModelSpec:
    """The spec of family ``name`` for another input shape and/or class count."""
    family = _FAMILIES.get(name)
    if family is None:
        raise ModelNotFound(f"unknown model {name!r}; known: {', '.join(list_models())}")
    shape = family.input_shape if input_shape is None else tuple(int(d) for d in input_shape)
    classes = family.num_classes if num_classes is None else int(num_classes)
    return _spec(name, shape, classes)


def canonical_model_id(name: str, input_shape: tuple[int, ...], num_classes: int) -> str:
    """The one id of family ``name`` at this shape and class count."""
    family = _FAMILIES[name]
    model_id = name
    if tuple(input_shape) != family.input_shape:
        model_id += "-" + "x".join(str(d) for d in input_shape)
    if num_classes != family.num_classes:
        model_id += f"-c{num_classes}"
    return model_id


def find_model_for_input(input_shape: tuple[int, ...], num_classes: int) -> ModelSpec:
    """The first registered family that takes per-sample ``input_shape``.

    Families whose default input has the same number of dimensions are tried in registration
    order (an exact default match first); raises `ModelNotFound` when none fits.
    """
    shape = tuple(input_shape)
    candidates = sorted(
        (f for f in _FAMILIES.values() if len(f.input_shape) == len(shape)),
        key=lambda f: f.input_shape != shape,
    )
    reasons = []
    for family in candidates:
        try:
            return model_spec_for(family.name, input_shape=shape, num_classes=num_classes)
        except ModelNotFound as exc:
            reasons.append(str(exc))
    detail = "; ".join(reasons) if reasons else f"no model takes {len(shape)}-d samples"
    raise ModelNotFound(f"no registered model takes input shape {shape}: {detail}")


@functools.lru_cache(maxsize=256)
def _spec(name: str, input_shape: tuple[int, ...], num_classes: int) -> ModelSpec:
    family = _FAMILIES[name]
    model_id = canonical_model_id(name, input_shape, num_classes)
    if len(input_shape) != len(family.input_shape) or min(input_shape) < 1:
        raise ModelNotFound(
            f"model {name!r} takes {len(family.input_shape)}-d samples "
            f"like {family.input_shape}, not {input_shape}"
        )
    return derive_spec(model_id, input_shape, num_classes, family.make_stages, family.description)


def derive_spec(
    model_id: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    make_stages: StageFactory,
    description: str = "",
) -> ModelSpec:
    """The spec of ``make_stages`` at this shape: the cut shape by a meta-device forward.

    Raises `ModelNotFound` when the stages cannot take ``input_shape`` or do not end in
    ``(batch, num_classes)`` logits.
    """
    if num_classes < 2:
        raise ModelNotFound(f"model {model_id!r}: num_classes must be ≥ 2, got {num_classes}")
    # Shapes by a forward pass on the meta device: no storage, no arithmetic, no RNG draws.
    # A user's model (shared/models/custom.py) may signal a misfit with any of these.
    with torch.device("meta"):
        edge_stage, cloud_stage = make_stages(input_shape, num_classes)
        batch = torch.empty((2, *input_shape))
        try:
            cut = edge_stage(batch)
            logits = cloud_stage(cut)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise ModelNotFound(
                f"model {model_id!r} cannot take input shape {input_shape}: {exc}"
            ) from exc
    if not isinstance(cut, torch.Tensor) or not isinstance(logits, torch.Tensor):
        raise ModelNotFound(f"model {model_id!r}: each stage must return one tensor")
    if tuple(logits.shape) != (2, num_classes):
        raise ModelNotFound(
            f"model {model_id!r}: cloud stage returns {tuple(logits.shape)}, "
            f"expected (batch, {num_classes})"
        )
    return ModelSpec(
        model_id=model_id,
        input_shape=input_shape,
        cut_shape=tuple(int(d) for d in cut.shape[1:]),
        num_classes=num_classes,
        make_stages=make_stages,
        description=description,
    )
