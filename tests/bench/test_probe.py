"""The benchmark's step timeline, fed through the agent's observer hooks."""

from __future__ import annotations

from types import SimpleNamespace

from simultrain.bench.probe import StepTimeline
from simultrain.edge.agent import EdgeObserver, EdgeReport


def test_each_batch_is_mapped_to_the_frame_that_carried_it() -> None:
    timeline = StepTimeline()
    assert isinstance(timeline, EdgeObserver)
    # Two pipelined batches: each forward returns its own ACT.
    timeline.batch_taken()
    timeline.compute_section("_produce_next", 1.0, 1.5, SimpleNamespace(seq=0))
    timeline.batch_taken()
    timeline.compute_section("_produce_next", 2.0, 2.5, SimpleNamespace(seq=1))
    # A backward returns an EGRAD for batch 0: it carries no new batch.
    timeline.compute_section("on_grad", 2.6, 2.9, SimpleNamespace(seq=0))
    # A FedAvg round: three local steps return nothing, the third's upload carries all three.
    for _ in range(3):
        timeline.batch_taken()
        timeline.compute_section("_produce_next", 3.0, 3.1, None)
    timeline.compute_section("_produce_next", 3.2, 3.3, SimpleNamespace(seq=2))
    assert timeline.batch_frame == [0, 1, 2, 2, 2]
    assert len(timeline.batch_start) == 5 and timeline.pending == []
    assert [s[2] for s in timeline.sections].count("on_grad") == 1


def test_acks_record_the_report_counters_at_that_moment() -> None:
    timeline = StepTimeline()
    report = EdgeReport(bytes_up=100, bytes_down=40, compute_seconds=0.5)
    timeline.acked(3, report)
    report.bytes_up = 250
    timeline.acked(4, report)
    rows = timeline.as_dict()["acks"]
    assert [row[1:] for row in rows] == [[3, 100, 40, 0.5], [4, 250, 40, 0.5]]
    assert rows[0][0] <= rows[1][0]
