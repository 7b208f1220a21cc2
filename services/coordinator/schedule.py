"""The soft-reconciliation schedule (docs/DESIGN.md §3.6, §8.2).

Computed in one place, ``simultrain.shared.training.schedule``, which the cloud's runtime
uses to decide when to send a SNAP: the steps the coordinator reports are exactly the steps
the cloud reconciles. Edge ``i`` of ``n`` gets the offset ``i·R/n`` and reconciles on its
steps ``s ≥ 1`` with ``(s + offset) mod R = 0``; ``every`` of 0 or None means never.
"""

from __future__ import annotations

from simultrain.shared.training.schedule import (
    next_reconciliations,
    offset_for,
    offset_for_ordinal,
    reconcile_due,
)

__all__ = ["next_due", "offset_for", "offset_for_ordinal", "reconcile_due"]


def next_due(after_step: int, offset: int, every: int | None, count: int = 1) -> list[int]:
    """The next ``count`` steps strictly after ``after_step`` at which reconciliation is due."""
    return next_reconciliations(after_step, offset, every, count)
