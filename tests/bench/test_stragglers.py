"""The straggler suite's plan and table (the measurement itself is `make long-tests` work)."""

from __future__ import annotations

from pathlib import Path

from simultrain.bench import fleet
from simultrain.bench.fleet import FleetOptions, straggler_plan, stragglers_markdown
from simultrain.bench.records import FleetFile, FleetMeta, FleetRecord
from simultrain.edge.agent import EdgeReport
from simultrain.shared.contracts import CloudStatus, EdgeSessionStatus, StalenessSummary

from .factories import fleet_record


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
    record = fleet_record(
        label="syncsgd, coded s=1 (1 slow)",
        mode="syncsgd",
        seconds_per_update=0.5,
        steps_per_s=16.0,
        fast_edge_step_rate_median=4.0,
        straggler_step_rates=[0.0],
        gradient_coding_s=1,
        coded_rounds=120,
        late_uploads_dropped=11,
        late_samples=704,
        eval_samples_applied=30720,
        accuracy=0.5,
        samples_sent=31424,
        samples_applied=30720,
    )
    meta = FleetMeta(command="", duration_s=60, cpus=2, wall_seconds=100.0)
    table = stragglers_markdown(FleetFile(meta=meta, records=[record]))
    assert "| syncsgd, coded s=1 (1 slow) | syncsgd | – | 0.5 | 16.0 | 4.00 | 0.00 | 0 " in table
    assert "| 120 (11) | 30720 | 50.0% | 0 | 0 (late 704) |" in table
    assert "dropped by design" in table


# --- the accounting of one case: what was sent, applied, dropped by design, lost -------------


def _session(applied: int, *, late: int = 0) -> EdgeSessionStatus:
    return EdgeSessionStatus(
        samples_received=applied,
        samples_applied=applied,
        steps_applied=applied // 32,
        highest_applied_seq=applied // 32,
        duplicates_dropped=0,
        last_edge_version=0,
        replica_version=0,
        bytes_up=1000,
        bytes_down=1000,
        staleness=StalenessSummary(batches=0, max=0, mean=0.0, dropped=0, histogram={}),
        code_row=None,
        late_uploads_dropped=late,
        connected=True,
    )


def _status(sessions: dict[str, EdgeSessionStatus], *, version: int) -> CloudStatus:
    return CloudStatus(
        cloud_id=None,
        mode="syncsgd",
        model_id="imu-cnn1d",
        device="cpu",
        master_version=version,
        edge_updates=0,
        samples_applied=sum(e.samples_applied for e in sessions.values()),
        loss=None,
        busy_seconds=float(version),
        compute_cpu_seconds=float(version),
        partial_rounds=0,
        coded_rounds=version,
        late_uploads_dropped=sum(e.late_uploads_dropped for e in sessions.values()),
        uptime_seconds=100.0,
        staleness=StalenessSummary(batches=0, max=0, mean=0.0, dropped=0, histogram={}),
        replica=None,
        edges=sessions,
    )


def _case(sent: dict[str, int], applied: dict[str, int], late: dict[str, int]) -> FleetRecord:
    """A coded s = 1 case of two edges: the edges' reports and the cloud's counts."""
    options = FleetOptions(edge_counts=(2,), mode="syncsgd", gradient_coding_s=1)
    ids = sorted(sent)
    worker = fleet._Worker(proc=None, edge_ids=ids)  # type: ignore[arg-type]
    worker.done = fleet.WorkerDone(
        agents={e: EdgeReport(edge_id=e, samples_sent=sent[e]) for e in ids}
    )
    first = _status({e: _session(0) for e in ids}, version=0)
    final = _status({e: _session(applied[e], late=late[e]) for e in ids}, version=10)
    window = fleet._Window(first, final, [(0.0, 400.0), (1.0, 400.0)], 1.0, 1.0, 0, (1, 1, 1))
    return fleet._record(2, options, [worker], window, final, None)


def test_late_coded_uploads_are_dropped_by_design_not_lost() -> None:
    """Each coded upload carries s + 1 = 2 batches of 32: an edge whose 3 uploads came after
    their rounds decoded sent 192 samples no update applied, and lost none of them."""
    record = _case({"a": 640, "b": 640}, {"a": 640, "b": 448}, {"a": 0, "b": 3})
    assert record.late_samples == 3 * 2 * 32
    assert record.lost_samples == 0 and record.clean


def test_a_sample_neither_applied_nor_late_is_lost() -> None:
    record = _case({"a": 640, "b": 640}, {"a": 576, "b": 448}, {"a": 0, "b": 3})
    assert record.late_samples == 192 and record.lost_samples == 64 and not record.clean


def test_modes_keep_only_their_cases() -> None:
    plan = straggler_plan(
        FleetOptions(out_dir=Path("unused")), deadline_s=None, modes=("syncsgd", "simultrain")
    )
    assert {p.mode for p in plan} == {"syncsgd", "simultrain"}
    assert len(plan) == 1 + 2 * 5  # the syncsgd reference, then 5 cases per straggler count
