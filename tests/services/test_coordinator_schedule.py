"""The reconciliation schedule: every R steps per edge, staggered between edges."""

from __future__ import annotations

import pytest

from simultrain.coordinator.schedule import (
    next_due,
    offset_for,
    offset_for_ordinal,
    reconcile_due,
)


def test_offsets_spread_over_one_period() -> None:
    assert [offset_for(i, 4, 10) for i in range(4)] == [0, 2, 5, 7]
    assert [offset_for(i, 5, 10) for i in range(5)] == [0, 2, 4, 6, 8]
    assert [offset_for(i, 1, 10) for i in range(1)] == [0]
    assert [offset_for(i, 3, 2) for i in range(3)] == [0, 0, 1]


@pytest.mark.parametrize("every", [None, 0])
def test_never_reconcile(every: int | None) -> None:
    assert offset_for(3, 4, every) == 0
    assert offset_for_ordinal(3, every) == 0
    assert not any(reconcile_due(step, 0, every) for step in range(100))
    assert next_due(5, 0, every, 3) == []


def test_due_every_r_steps_from_the_offset_and_never_at_step_zero() -> None:
    due = [s for s in range(0, 35) if reconcile_due(s, 0, 10)]
    assert due == [10, 20, 30]
    # The cloud's convention (shared/training/schedule.py): (step + offset) mod R = 0.
    due = [s for s in range(0, 35) if reconcile_due(s, 3, 10)]
    assert due == [7, 17, 27]
    assert [s for s in range(0, 5) if reconcile_due(s, 0, 1)] == [1, 2, 3, 4]


def test_staggered_edges_never_share_a_step_when_n_divides_r() -> None:
    every, count = 12, 4
    offsets = [offset_for(i, count, every) for i in range(count)]
    for step in range(1, 200):
        assert sum(reconcile_due(step, off, every) for off in offsets) <= 1
    # and each edge still reconciles exactly once per period
    for off in offsets:
        assert sum(reconcile_due(s, off, every) for s in range(1, 1 + 10 * every)) == 10


def test_ordinal_offsets_are_van_der_corput() -> None:
    assert [offset_for_ordinal(i, 8) for i in range(8)] == [0, 4, 2, 6, 1, 5, 3, 7]
    # a power-of-two prefix gets exactly the offsets i·R/n
    assert sorted(offset_for_ordinal(i, 16) for i in range(4)) == [
        offset_for(i, 4, 16) for i in range(4)
    ]
    # every prefix stays spread: the largest gap is at most twice the ideal one
    every = 100
    for n in range(2, 40):
        offsets = sorted(offset_for_ordinal(i, every) for i in range(n))
        gaps = [b - a for a, b in zip(offsets, [*offsets[1:], offsets[0] + every], strict=True)]
        assert max(gaps) <= 2 * every / n + 1


def test_next_due_agrees_with_reconcile_due() -> None:
    for every in (1, 3, 10):
        for offset in range(every):
            for after in range(-2, 40):
                window = range(after + 1, after + 2 + 4 * every)
                expected = [s for s in window if reconcile_due(s, offset, every)][:3]
                assert next_due(after, offset, every, 3) == expected


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        offset_for(4, 4, 10)
    with pytest.raises(ValueError):
        offset_for(-1, 4, 10)
    with pytest.raises(ValueError):
        offset_for(0, 0, 10)
    with pytest.raises(ValueError):
        offset_for_ordinal(-1, 10)
    with pytest.raises(ValueError):
        reconcile_due(5, 0, -3)
