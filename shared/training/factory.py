"""Building a run's master from its configuration, the same way in the driver and the cloud."""

from __future__ import annotations

from simultrain.shared.models import ModelSpec
from simultrain.shared.training.compensation import compensation_from_name
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.master import CloudMaster
from simultrain.shared.training.schedule import EdgeRole, Schedule

__all__ = ["build_master", "wire_cut_shape"]


def build_master(run: RunConfig, spec: ModelSpec, schedule: Schedule) -> CloudMaster:
    """The master for ``run``: model from the seed, optimizer, compensation, history depth.

    The history must reach back to the oldest batch any edge may still have in flight: a
    window of W batches per edge, two master versions per batch, every edge at once
    (SPEC step 4). Edges do not run at one speed, though: one that starts late, or a slow
    one, has its whole window in flight while the others apply dozens of updates. So the
    floor is generous (512 versions; the edge stages here are tens of kB each) and grows
    with windows and edges.
    """
    model = spec.build(run.seed)
    return CloudMaster(
        model.edge_stage,
        model.cloud_stage,
        optimizer=run.optimizer,
        compensation=compensation_from_name(schedule.compensation, alpha=schedule.alpha),
        history_versions=max(512, 8 * 2 * (schedule.window + 1) * max(run.edges, 1)),
    )


def wire_cut_shape(spec: ModelSpec, schedule: Schedule) -> tuple[int, ...]:
    """The per-sample shape of what an ACT carries: the cut layer, or the input when the
    edge uploads raw data (centralized: the cut sits at the input)."""
    if schedule.edge_role is EdgeRole.RAW:
        return tuple(spec.input_shape)
    return tuple(spec.cut_shape)
