"""Training modes as data: one :class:`Schedule` per row of SPEC's modes table.

The services and the in-process driver never branch on a mode's name. They read the
schedule: what the edge computes (:class:`EdgeRole`), how many batches may be unanswered
(``window``), the forecast coefficient, the reconciliation period and the local steps.
Ablations are the same schedule with one field changed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from simultrain.shared.errors import ConfigError

__all__ = ["MODES", "EdgeRole", "Schedule", "make_schedule"]


class EdgeRole(StrEnum):
    """What the edge computes for one batch, and so what crosses the link."""

    RAW = "raw"  # centralized: uploads the raw batch, computes nothing
    SPLIT = "split"  # split-sync and simultrain: edge stage forward and backward
    FULL_GRADIENT = "full_gradient"  # syncsgd: whole model, uploads its gradient
    LOCAL_STEPS = "local_steps"  # fedavg: whole model, E local steps, uploads weights
    # synthetic (seed 003): edge stage forward, backward from a learned synthetic cut
    # gradient at once; uploads activations and that gradient together, waits for no GRAD
    SYNTHETIC = "synthetic"


@dataclass(frozen=True, slots=True)
class Schedule:
    mode: str
    edge_role: EdgeRole
    window: int  # batches that may be unanswered when the next is produced; 0 = lockstep
    alpha: float = 0.0  # forecast coefficient (0 = no forecast)
    reconcile_every: int | None = None  # R in edge steps; None = never (R = ∞)
    beta: float = 0.9
    local_steps: int = 1  # FedAvg's E
    compensation: str = "forecast"

    def __post_init__(self) -> None:
        if self.window < 0:
            raise ConfigError(f"window must be ≥ 0, got {self.window}")
        if self.reconcile_every is not None and self.reconcile_every < 1:
            raise ConfigError(f"reconcile_every must be ≥ 1 or None, got {self.reconcile_every}")
        if not 0.0 <= self.beta <= 1.0:
            raise ConfigError(f"beta must be in [0, 1], got {self.beta}")
        if self.local_steps < 1:
            raise ConfigError(f"local_steps must be ≥ 1, got {self.local_steps}")

    @property
    def pipelined(self) -> bool:
        return self.edge_role is EdgeRole.SPLIT and self.window > 0

    def reconcile_offset(self, index: int, count: int) -> int:
        """Stagger reconciliations: edge ``index`` of ``count`` is shifted by ``index·R/count``."""
        r = self.reconcile_every
        return 0 if r is None or count <= 0 else (index * r) // count

    def reconcile_due(self, step: int, offset: int = 0) -> bool:
        """Whether edge step ``step`` (1-based count of finished steps) reconciles."""
        r = self.reconcile_every
        return r is not None and step > 0 and (step + offset) % r == 0


def _centralized(window: int, alpha: float, r: int | None, beta: float, e: int) -> Schedule:
    return Schedule("centralized", EdgeRole.RAW, window=max(window, 0))


def _syncsgd(window: int, alpha: float, r: int | None, beta: float, e: int) -> Schedule:
    return Schedule("syncsgd", EdgeRole.FULL_GRADIENT, window=0)


def _split_sync(window: int, alpha: float, r: int | None, beta: float, e: int) -> Schedule:
    return Schedule("split-sync", EdgeRole.SPLIT, window=0, compensation="none")


def _fedavg(window: int, alpha: float, r: int | None, beta: float, e: int) -> Schedule:
    return Schedule("fedavg", EdgeRole.LOCAL_STEPS, window=0, local_steps=e)


def _simultrain(window: int, alpha: float, r: int | None, beta: float, e: int) -> Schedule:
    return Schedule("simultrain", EdgeRole.SPLIT, window, alpha, r, beta)


def _no_forecast(window: int, alpha: float, r: int | None, beta: float, e: int) -> Schedule:
    return replace(_simultrain(window, alpha, r, beta, e), mode="simultrain-noforecast", alpha=0.0)


def _no_reconcile(window: int, alpha: float, r: int | None, beta: float, e: int) -> Schedule:
    base = _simultrain(window, alpha, r, beta, e)
    return replace(base, mode="simultrain-noreconcile", reconcile_every=None)


def _synthetic(window: int, alpha: float, r: int | None, beta: float, e: int) -> Schedule:
    # The window only bounds batches the cloud has not yet applied (back-pressure on a slow
    # link or cloud): no batch waits for its own cut gradient. A batch's edge gradient rides
    # on the next ACT, so at least one batch must be allowed in flight.
    return Schedule("synthetic", EdgeRole.SYNTHETIC, max(window, 1), alpha, r, beta)


MODES = {
    "centralized": _centralized,
    "syncsgd": _syncsgd,
    "split-sync": _split_sync,
    "fedavg": _fedavg,
    "simultrain": _simultrain,
    "simultrain-noforecast": _no_forecast,
    "simultrain-noreconcile": _no_reconcile,
    "synthetic": _synthetic,
}


def make_schedule(
    mode: str,
    *,
    window: int = 4,
    alpha: float = 0.5,
    reconcile_every: int | None = 10,
    beta: float = 0.9,
    local_steps: int = 5,
) -> Schedule:
    try:
        factory = MODES[mode]
    except KeyError:
        raise ConfigError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}") from None
    return factory(window, alpha, reconcile_every, beta, local_steps)


WHOLE_MODEL_ROLES = frozenset({EdgeRole.FULL_GRADIENT, EdgeRole.LOCAL_STEPS})
"""Roles whose edge holds the whole model, so deltas and snapshots cover both stages."""
