"""Training modes as data: one :class:`Schedule` per training mode (docs/DESIGN.md §5).

The services and the in-process driver never branch on a mode's name. A run's schedule is
resolved once from its configuration (:func:`make_schedule`, ``RunConfig.schedule``): what
the edge computes (:class:`EdgeRole`, which picks the runtimes' role when the run is
assembled, shared/training/assembly.py), how many batches may be unanswered (``window``),
the compensation chain and its α, the reconciliation period and the local steps. Ablations
are the same schedule with one field changed. Every value comes from the run configuration:
the schedule has no defaults of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING

from simultrain.shared.errors import ConfigError
from simultrain.shared.training.compensation import forecast_parts, without_forecast

if TYPE_CHECKING:
    from simultrain.shared.training.config import RunConfig

__all__ = [
    "MODES",
    "EdgeRole",
    "Schedule",
    "check_gradient_coding",
    "make_schedule",
    "next_reconciliations",
    "offset_for",
    "offset_for_ordinal",
    "reconcile_due",
]


class EdgeRole(StrEnum):
    """What the edge computes for one batch, and so what crosses the link."""

    RAW = "raw"  # centralized: uploads the raw batch, computes nothing
    SPLIT = "split"  # split-sync and simultrain: edge stage forward and backward
    FULL_GRADIENT = "full_gradient"  # syncsgd: whole model, uploads its gradient
    # syncsgd with gradient coding (Tandon et al. 2017): whole model on the s + 1 partitions of its
    # code row, uploads one coded gradient per round
    CODED_GRADIENT = "coded_gradient"
    LOCAL_STEPS = "local_steps"  # fedavg: whole model, E local steps, uploads weights
    # synthetic (Chen et al. 2019): edge stage forward, backward from a learned synthetic cut
    # gradient at once; uploads activations and that gradient together, waits for no GRAD
    SYNTHETIC = "synthetic"


@dataclass(frozen=True, slots=True)
class Schedule:
    """A mode with the run's values (:func:`make_schedule`); every field is given."""

    mode: str
    edge_role: EdgeRole
    window: int  # batches that may be unanswered when the next is produced; 0 = lockstep
    # The forecast's α when the run gives one; None leaves a ``forecast`` part its own α
    # (0.5, or ``forecast:alpha=…``). Only a chain with a forecast part takes one.
    alpha: float | None
    reconcile_every: int | None  # R in edge steps; None = never (R = ∞)
    beta: float
    local_steps: int  # FedAvg's E
    # The staleness-compensation chain (shared/training/compensation.py), e.g.
    # ``delay-beta1+forecast``; every part is the plain update at staleness 0.
    compensation: str
    # Synthetic mode (docs/SYNTHETIC.md): the edge applies a local optimizer step from each
    # synthetic gradient to its working weights at once, instead of waiting for the master's DELTA
    # (shared/training/synthetic.py, `LocalUpdates`). False is the "no local step" ablation.
    local_step: bool

    def __post_init__(self) -> None:
        if self.local_step and self.edge_role is not EdgeRole.SYNTHETIC:
            raise ConfigError("only the synthetic mode takes local steps on the edge")

    @property
    def egrad_needs_grad(self) -> bool:
        """Whether an EGRAD must answer a GRAD of its session (PROTOCOL §7): only where the cloud
        sends cut gradients, i.e. neither the whole-model modes nor ``synthetic``,
        whose edge never waits for one."""
        return self.edge_role not in WHOLE_MODEL_ROLES and self.edge_role is not EdgeRole.SYNTHETIC

    @property
    def pipelined(self) -> bool:
        return self.edge_role is EdgeRole.SPLIT and self.window > 0

    @property
    def forecasts(self) -> bool:
        """Whether the compensation chain has a gradient-forecast part."""
        return bool(forecast_parts(self.compensation))

    def reconcile_offset(self, index: int, count: int) -> int:
        """Stagger reconciliations: edge ``index`` of ``count`` is shifted by ``index·R/count``."""
        return 0 if count <= 0 else offset_for(index, count, self.reconcile_every)

    def reconcile_due(self, step: int, offset: int = 0) -> bool:
        """Whether edge step ``step`` (1-based count of finished steps) reconciles."""
        return reconcile_due(step, offset, self.reconcile_every)


# --- the soft-reconciliation schedule (docs/DESIGN.md §3.6, §8.2) ---------------
# The one place it is computed: the cloud's runtime decides with `reconcile_due`, the
# coordinator reports `next_reconciliations` — the same steps by construction. Edge ``i`` of
# ``n`` gets the offset ``o = i·R/n`` and reconciles on its steps ``s ≥ 1`` with
# ``(s + o) mod R = 0``, so the edges' full SNAPs do not all fall on one step. Step 0 is
# never due (the replica was just set from the master). R of 0 or None: never (R = ∞).


def _period(every: int | None) -> int | None:
    if every is None or every == 0:
        return None
    if every < 0:
        raise ValueError(f"reconcile_every must be ≥ 0 or None, got {every}")
    return every


def offset_for(index: int, count: int, every: int | None) -> int:
    """Offset of edge ``index`` of ``count`` edges: ``index·R // count``, spread over a period."""
    if count < 1:
        raise ValueError(f"count must be ≥ 1, got {count}")
    if not 0 <= index < count:
        raise ValueError(f"index must be in [0, {count}), got {index}")
    period = _period(every)
    return 0 if period is None else index * period // count


def offset_for_ordinal(ordinal: int, every: int | None) -> int:
    """Offset of the ``ordinal``-th edge when the number of edges is not known in advance.

    Uses the base-2 van der Corput sequence (0, 1/2, 1/4, 3/4, 1/8, …): every prefix of it
    is spread almost evenly over the period, so the offsets stay staggered however many
    edges end up registering. For ``n`` a power of two, the first ``n`` ordinals get exactly
    the offsets ``i·R/n`` of :func:`offset_for`, in a different order.
    """
    if ordinal < 0:
        raise ValueError(f"ordinal must be ≥ 0, got {ordinal}")
    period = _period(every)
    if period is None:
        return 0
    numerator, denominator, rest = 0, 1, ordinal
    while rest:
        numerator = numerator * 2 + (rest & 1)
        denominator *= 2
        rest >>= 1
    return numerator * period // denominator


def reconcile_due(step: int, offset: int, every: int | None) -> bool:
    """Whether an edge with ``offset`` reconciles after its ``step``-th finished step."""
    period = _period(every)
    return period is not None and step >= 1 and (step + offset) % period == 0


def next_reconciliations(after_step: int, offset: int, every: int | None, count: int) -> list[int]:
    """The next ``count`` steps strictly after ``after_step`` at which `reconcile_due` holds.

    Empty when reconciliation is off.
    """
    period = _period(every)
    if period is None or count < 1:
        return []
    first = max(after_step, 0) + 1
    first += (-offset - first) % period
    return [first + k * period for k in range(count)]


def check_gradient_coding(run: RunConfig) -> None:
    """Refuse gradient coding (docs/DESIGN.md §5.3) where it cannot work: it codes whole-model
    gradients of one lockstep round (``syncsgd``), and tolerating ``s`` stragglers takes ``s + 1``
    edges at least (each edge then computes on ``s + 1`` partitions; ``s = edges − 1`` gives every
    edge all the data)."""
    key = "run configuration 'gradient_coding_s'"
    stragglers = run.gradient_coding_s
    if stragglers < 0:
        raise ConfigError(f"{key}: must be ≥ 0 (0: off), got {stragglers}")
    if stragglers == 0:
        return
    if run.mode != "syncsgd":
        raise ConfigError(
            f"{key}: gradient coding codes the whole-model gradients of a lockstep round, "
            f"i.e. mode 'syncsgd', not {run.mode!r}"
        )
    if stragglers >= run.edges:
        raise ConfigError(
            f"{key}: tolerating {stragglers} straggler(s) needs at least {stragglers + 1} "
            f"edges, the run has {run.edges} (set 'edges')"
        )
    if run.round_deadline_s is not None:
        raise ConfigError(
            f"{key} and 'round_deadline_s' are two answers to stragglers: a coded round "
            "closes as soon as it can decode; give one of them"
        )


# Every mode takes the run's compensation chain; it is the plain update at staleness 0, so
# the lockstep modes train exactly as without it. split-sync is the plain split-learning
# baseline and never compensates. Fields a mode has no use for keep the run's values.
def _schedule(run: RunConfig, mode: str, role: EdgeRole, window: int) -> Schedule:
    return Schedule(
        mode,
        role,
        window,
        alpha=run.alpha,
        reconcile_every=run.reconcile_every,
        beta=run.beta,
        local_steps=run.local_steps,
        compensation=run.compensation,
        local_step=False,
    )


def _centralized(run: RunConfig) -> Schedule:
    return replace(
        _schedule(run, "centralized", EdgeRole.RAW, max(run.fixed_window, 0)), reconcile_every=None
    )


def _syncsgd(run: RunConfig) -> Schedule:
    role = EdgeRole.CODED_GRADIENT if run.gradient_coding_s else EdgeRole.FULL_GRADIENT
    return replace(_schedule(run, "syncsgd", role, 0), reconcile_every=None)


def _split_sync(run: RunConfig) -> Schedule:
    return replace(
        _schedule(run, "split-sync", EdgeRole.SPLIT, 0),
        alpha=None,
        reconcile_every=None,
        compensation="none",
    )


def _fedavg(run: RunConfig) -> Schedule:
    return replace(_schedule(run, "fedavg", EdgeRole.LOCAL_STEPS, 0), reconcile_every=None)


def _simultrain(run: RunConfig) -> Schedule:
    return _schedule(run, "simultrain", EdgeRole.SPLIT, run.fixed_window)


def _no_forecast(run: RunConfig) -> Schedule:
    # The paper's "no forecast" ablation: the run's own chain without its forecast part,
    # whatever else it holds.
    return replace(
        _simultrain(run),
        mode="simultrain-noforecast",
        alpha=None,
        compensation=without_forecast(run.compensation),
    )


def _no_reconcile(run: RunConfig) -> Schedule:
    return replace(_simultrain(run), mode="simultrain-noreconcile", reconcile_every=None)


def _synthetic(run: RunConfig) -> Schedule:
    # The window only bounds batches the cloud has not yet applied (back-pressure on a slow
    # link or cloud): no batch waits for its own cut gradient. A batch's edge gradient rides
    # on the next ACT, so at least one batch must be allowed in flight.
    return replace(
        _schedule(run, "synthetic", EdgeRole.SYNTHETIC, max(run.fixed_window, 1)), local_step=True
    )


def _synthetic_no_local(run: RunConfig) -> Schedule:
    # The ablation: the edge stage moves only when the master's DELTA comes back.
    return replace(_synthetic(run), mode="synthetic-nolocal", local_step=False)


MODES: dict[str, Callable[[RunConfig], Schedule]] = {
    "centralized": _centralized,
    "syncsgd": _syncsgd,
    "split-sync": _split_sync,
    "fedavg": _fedavg,
    "simultrain": _simultrain,
    "simultrain-noforecast": _no_forecast,
    "simultrain-noreconcile": _no_reconcile,
    "synthetic": _synthetic,
    "synthetic-nolocal": _synthetic_no_local,
}


def make_schedule(run: RunConfig) -> Schedule:
    """The schedule of ``run``'s mode with its values (`RunConfig.schedule` calls this)."""
    try:
        factory = MODES[run.mode]
    except KeyError:
        raise ConfigError(f"unknown mode {run.mode!r}; choose one of {', '.join(MODES)}") from None
    check_gradient_coding(run)
    return factory(run)


WHOLE_MODEL_ROLES = frozenset(
    {EdgeRole.FULL_GRADIENT, EdgeRole.CODED_GRADIENT, EdgeRole.LOCAL_STEPS}
)
"""Roles whose edge holds the whole model, so deltas and snapshots cover both stages."""
