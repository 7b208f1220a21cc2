"""The straggler suite's plan and table (the measurement itself is `make long-tests` work)."""

from __future__ import annotations

from pathlib import Path

from simultrain.bench.fleet import FleetOptions, straggler_plan, stragglers_markdown


def test_the_plan_sets_every_mitigation_beside_waiting_for_one_and_two_stragglers() -> None:
    plan = straggler_plan(FleetOptions(out_dir=Path("unused")), deadline_s=None)
    labels = [p.label for p in plan]
    assert labels[:2] == ["syncsgd, no straggler", "fedavg, no straggler"]
    for count in (1, 2):
        cases = {p.label: p for p in plan if p.label.endswith(f"({count} slow)")}
        assert set(cases) == {
            f"fedavg, waits ({count} slow)",
            f"fedavg, deadline ({count} slow)",
            f"syncsgd, waits ({count} slow)",
            f"syncsgd, deadline ({count} slow)",
            f"syncsgd, coded s=1 ({count} slow)",
            f"syncsgd, coded s=2 ({count} slow)",
            f"simultrain ({count} slow)",
        }
        for case in cases.values():
            assert case.edge_counts == (8,)
            assert case.slowdowns == tuple((i, 5.0) for i in range(count))
        assert cases[f"syncsgd, coded s=2 ({count} slow)"].gradient_coding_s == 2
        # Each deadline is 1.5× its own mode's straggler-free round.
        assert cases[f"syncsgd, deadline ({count} slow)"].deadline_factor == 1.5
        assert cases[f"syncsgd, waits ({count} slow)"].gradient_coding_s == 0


def test_the_table_shows_decoded_rounds_and_late_uploads() -> None:
    record = {
        "label": "syncsgd, coded s=1 (1 slow)",
        "mode": "syncsgd",
        "round_deadline_s": None,
        "seconds_per_update": 0.5,
        "steps_per_s": 16.0,
        "fast_edge_step_rate_median": 4.0,
        "straggler_step_rates": [0.0],
        "partial_rounds": 0,
        "coded_rounds": 120,
        "late_uploads_dropped": 11,
        "eval_samples_applied": 30720,
        "accuracy": 0.5,
        "errors": 0,
        "lost_samples": 704,
    }
    table = stragglers_markdown([record], {"cpus": 2, "duration_s": 60})
    assert "| syncsgd, coded s=1 (1 slow) | syncsgd | – | 0.5 | 16.0 | 4.00 | 0.00 | 0 " in table
    assert "| 120 (11) | 30720 | 50.0% | 0 | 704 |" in table


def test_modes_keep_only_their_cases() -> None:
    plan = straggler_plan(
        FleetOptions(out_dir=Path("unused")), deadline_s=None, modes=("syncsgd", "simultrain")
    )
    assert {p.mode for p in plan} == {"syncsgd", "simultrain"}
    assert len(plan) == 1 + 2 * 5  # the syncsgd reference, then 5 cases per straggler count
