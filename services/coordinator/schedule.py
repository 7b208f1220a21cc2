"""The soft-reconciliation schedule (SPEC.md "One SimulTrain step", point 6).

Every edge reconciles with the master every ``every`` (R) of its own steps. Edges are
staggered so the cloud does not send every edge a full ``SNAP`` on the same step: edge ``i``
of ``n`` gets the offset ``i·R/n`` and reconciles on the steps ``s ≥ 1`` with
``s ≡ offset (mod R)``. Step 0 is never due (the replica was just set from the master).

``every`` of ``0`` or ``None`` means "never reconcile" (the R = ∞ ablation).

Pure functions: no clock, no I/O.
"""

from __future__ import annotations

__all__ = ["next_due", "offset_for", "offset_for_ordinal", "reconcile_due"]


def _period(every: int | None) -> int | None:
    if every is None or every == 0:
        return None
    if every < 0:
        raise ValueError(f"every must be >= 0 or None, got {every}")
    return every


def offset_for(index: int, count: int, every: int | None) -> int:
    """Offset of edge ``index`` of ``count`` edges: ``index·every // count``.

    Used when the edges know their shard (index, count), so the ``count`` offsets spread
    evenly over one period.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if not 0 <= index < count:
        raise ValueError(f"index must be in [0, {count}), got {index}")
    period = _period(every)
    if period is None:
        return 0
    return index * period // count


def offset_for_ordinal(ordinal: int, every: int | None) -> int:
    """Offset of the ``ordinal``-th edge when the number of edges is not known in advance.

    Uses the base-2 van der Corput sequence (0, 1/2, 1/4, 3/4, 1/8, …): every prefix of it
    is spread almost evenly over the period, so the offsets stay staggered however many
    edges end up registering. For ``n`` a power of two, the first ``n`` ordinals get exactly
    the offsets ``i·R/n`` of :func:`offset_for`, in a different order.
    """
    if ordinal < 0:
        raise ValueError(f"ordinal must be >= 0, got {ordinal}")
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
    """Whether an edge with ``offset`` reconciles at ``step``."""
    period = _period(every)
    if period is None or step < 1:
        return False
    return (step - offset) % period == 0


def next_due(after_step: int, offset: int, every: int | None, count: int = 1) -> list[int]:
    """The next ``count`` steps strictly after ``after_step`` at which reconciliation is due.

    Empty when reconciliation is off.
    """
    period = _period(every)
    if period is None or count < 1:
        return []
    first = max(after_step, 0) + 1
    first += (offset - first) % period
    return [first + k * period for k in range(count)]
