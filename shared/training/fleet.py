"""The fleet-scheduling options of a run, as plain data, and the checks that hold them together.

docs/FLEET.md. Four mechanisms let the cloud schedule a fleet: the pooled reference
(shared/training/pooled.py), mixed-edge cloud steps (mixing.py), fleet-wide credits
(flow.py) and per-edge edge-stage copies (edge_copies.py). Their run keys are declared with
the others (shared/training/config.py); this module holds what validating them needs and,
like the configuration, imports no torch. The run's assembly (assembly.py) builds each part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from simultrain.shared.errors import ConfigError
from simultrain.shared.training.compensation import Compensation, Current, Dana, FleetBatch
from simultrain.shared.training.schedule import EdgeRole, Schedule

__all__ = ["Credits", "Mixing", "check_fleet_keys"]

MixBatch = Literal["split", "stack"]
MixLR = Literal["auto", "sqrt", "linear", "none"]


@dataclass(frozen=True, slots=True)
class Mixing:
    """How the cloud mixes edges: ``edges`` per step, the step's size rule, its wait bound."""

    edges: int
    batch: MixBatch = "split"
    lr_rule: MixLR = "auto"
    wait_s: float = 0.05

    def __post_init__(self) -> None:
        if self.edges < 1:
            raise ConfigError(f"mix_edges must be ≥ 1, got {self.edges}")
        if self.batch not in ("split", "stack"):
            raise ConfigError(f"mix_batch must be split or stack, not {self.batch!r}")
        if self.lr_rule not in ("auto", "sqrt", "linear", "none"):
            raise ConfigError(f"mix_lr must be auto, sqrt, linear or none, not {self.lr_rule!r}")
        if not (math.isfinite(self.wait_s) and self.wait_s > 0):
            raise ConfigError(f"mix_wait_s must be > 0, got {self.wait_s}")

    def size(self, edges_in_session: int) -> int:
        """Edges one step mixes: ``mix_edges``, or fewer while fewer are in session."""
        return max(1, min(self.edges, edges_in_session))

    def edge_batch_size(self, batch_size: int, fleet: int) -> int:
        """Samples per edge batch in a fleet of ``fleet`` edges: ``batch_size / m`` (split),
        ``batch_size`` (stack, or a mix of one). Refuses a batch that does not divide."""
        mixed = self.size(fleet)
        if self.batch == "stack" or mixed == 1:
            return batch_size
        if batch_size % mixed:
            raise ConfigError(
                f"mix_batch split: batch_size {batch_size} does not divide among {mixed} edges"
            )
        return batch_size // mixed

    def lr_factor(self, members: int, optimizer: str) -> float:
        """The learning-rate multiplier of a step that mixes ``members`` edges: 1 for split;
        for stack the square-root rule for Adam (Malladi et al., NeurIPS 2022) and the linear
        rule for SGD (Goyal et al., 2017) unless ``lr_rule`` names one."""
        if self.batch == "split" or members <= 1:
            return 1.0
        rule = self.lr_rule
        if rule == "auto":
            rule = "sqrt" if optimizer == "adam" else "linear"
        if rule == "sqrt":
            return math.sqrt(members)
        return float(members) if rule == "linear" else 1.0


@dataclass(frozen=True, slots=True)
class Credits:
    """Fleet-wide in-flight credits with a fixed grant (docs/FLEET.md, "Credits").

    At most ``total`` batches are in flight across the fleet, ACT to ACK, and at most
    ``per_edge_cap`` (the run's window, at least 1) of one edge. `FlowController`
    (shared/training/flow.py) sizes the grant from measured round trips where there is a
    clock; the in-process driver has none, so it runs the grant the controller settles at.
    """

    total: int
    per_edge_cap: int

    def __post_init__(self) -> None:
        if self.total < 1 or self.per_edge_cap < 1:
            raise ConfigError("credits: a grant and a per-edge cap of at least 1 batch")

    def room(self, edge_in_flight: int, fleet_in_flight: int) -> int:
        """How many more batches an edge with ``edge_in_flight`` may send now, the fleet
        holding ``fleet_in_flight``: never beyond the grant, never beyond the cap."""
        return max(0, min(self.per_edge_cap - edge_in_flight, self.total - fleet_in_flight))


def check_fleet_keys(
    *,
    pooled: bool,
    mixing: Mixing,
    edge_copies: bool,
    fleet_in_flight: int | None,
    batch_size: int,
    edges: int,
    schedule: Schedule,
    compensation: Compensation,
) -> None:
    """Refuse fleet options that would act on nothing or on something else than asked."""
    role = schedule.edge_role
    if pooled and role is not EdgeRole.RAW:
        raise ConfigError(
            "run configuration 'pooled': only centralized training pools the data "
            f"(mode {schedule.mode!r} trains a fleet)"
        )
    splits = role is EdgeRole.SPLIT
    if mixing.edges > 1 and not splits:
        raise ConfigError(
            f"run configuration 'mix_edges': mixed steps mix cut-layer activations, which "
            f"mode {schedule.mode!r} does not send"
        )
    if edge_copies and not splits:
        raise ConfigError(
            f"run configuration 'edge_copies': mode {schedule.mode!r} has no edge stage to copy"
        )
    if fleet_in_flight is not None and role not in (EdgeRole.SPLIT, EdgeRole.RAW):
        raise ConfigError(
            f"run configuration 'fleet_in_flight': mode {schedule.mode!r} runs lockstep rounds"
        )
    if mixing.edges > 1:
        mixing.edge_batch_size(batch_size, edges)  # divides, or ConfigError
    per_edge = isinstance(compensation.edge_step, Dana)
    if (mixing.edges > 1 or edge_copies) and per_edge:
        raise ConfigError(
            "per-edge momenta (dana) step one edge's gradient at a time: a mixed step has "
            "no one edge, and edge copies keep each edge's optimizer already"
        )
    if edge_copies and (
        isinstance(compensation.edge_step, FleetBatch)
        or not isinstance(compensation.position, Current)
    ):
        raise ConfigError(
            "edge_copies steps each edge's copy with its own gradients: fleet-batch, predict "
            "and lookahead act on the shared edge stage and would do nothing"
        )
