"""Building a run's master from its configuration, the same way in the driver and the cloud."""

from __future__ import annotations

import torch
from torch import nn

from simultrain.shared.errors import ConfigError
from simultrain.shared.models import ModelSpec, SplitModel
from simultrain.shared.training.compensation import compensation_from_name
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.master import CloudMaster
from simultrain.shared.training.runtime import WholeModel
from simultrain.shared.training.schedule import WHOLE_MODEL_ROLES, EdgeRole, Schedule
from simultrain.shared.training.synthetic import (
    SyntheticEdge,
    SyntheticGradientModel,
    SyntheticGradientTrainer,
)

__all__ = [
    "build_master",
    "build_synthetic",
    "edge_module",
    "resolve_device",
    "wire_cut_shape",
]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → the first CUDA device when torch sees one, else the CPU; any other name
    (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``) as torch spells it, checked to exist here.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device {name!r}: {exc}") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {name!r}: torch {torch.__version__} sees no CUDA device (a CPU build, "
                "no driver, or no GPU given to this container)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r}: MPS is not available")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def build_master(
    run: RunConfig, spec: ModelSpec, schedule: Schedule, *, device: str | torch.device = "cpu"
) -> CloudMaster:
    """The master for ``run``: model from the seed, optimizer, compensation, history depth.

    The history must reach back to the oldest batch any edge may still have in flight: a
    window of W batches per edge, two master versions per batch, every edge at once
    (SPEC step 4). Edges do not run at one speed, though: one that starts late, or a slow
    one, has its whole window in flight while the others apply dozens of updates. So the
    floor is generous (512 versions; the edge stages here are tens of kB each) and grows
    with windows and edges.
    """
    model = spec.build(run.seed)  # drawn on the CPU: the same weights on every device
    model.edge_stage.to(device)
    model.cloud_stage.to(device)
    return CloudMaster(
        model.edge_stage,
        model.cloud_stage,
        optimizer=run.optimizer,
        compensation=compensation_from_name(schedule.compensation, alpha=schedule.alpha),
        # W batches in flight per edge, at least one (W = 0 is lockstep: PROTOCOL.md §6.3).
        history_versions=max(512, 8 * 2 * max(schedule.window, 1) * max(run.edges, 1)),
    )


def wire_cut_shape(spec: ModelSpec, schedule: Schedule) -> tuple[int, ...]:
    """The per-sample shape of what an ACT carries: the cut layer, or the input when the
    edge uploads raw data (centralized: the cut sits at the input)."""
    if schedule.edge_role is EdgeRole.RAW:
        return tuple(spec.input_shape)
    return tuple(spec.cut_shape)


def build_synthetic(
    run: RunConfig, spec: ModelSpec, schedule: Schedule, *, device: str | torch.device = "cpu"
) -> SyntheticGradientTrainer | None:
    """The cloud's synthetic-gradient model M for a schedule that uses one (seed 003)."""
    if schedule.edge_role is not EdgeRole.SYNTHETIC:
        return None
    return SyntheticGradientTrainer(
        spec.cut_shape, spec.num_classes, seed=run.seed, optimizer=run.optimizer, device=device
    )


def edge_module(structure: SplitModel, schedule: Schedule) -> nn.Module:
    """What the edge computes with (its weights come from the cloud): the edge stage, the
    whole model for the whole-model baselines, or the edge stage and M (synthetic mode)."""
    if schedule.edge_role in WHOLE_MODEL_ROLES:
        return WholeModel(structure.edge_stage, structure.cloud_stage)
    if schedule.edge_role is EdgeRole.SYNTHETIC:
        spec = structure.spec
        return SyntheticEdge(
            structure.edge_stage, SyntheticGradientModel(spec.cut_shape, spec.num_classes)
        )
    return structure.edge_stage
