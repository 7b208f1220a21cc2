"""Every benchmark metric on synthetic timelines whose answers are known by construction."""

from __future__ import annotations

import math

import pytest

from simultrain.bench import metrics


def _timeline(n: int, *, interval: float, latency: float, up: int, down: int, edge: float):
    """A lockstep-like timeline: batch i taken at i·interval, acked ``latency`` later."""
    starts = [i * interval for i in range(n)]
    acks = [
        [starts[i] + latency, i, (i + 1) * up, (i + 1) * down, (i + 1) * edge] for i in range(n)
    ]
    return {"batch_start": starts, "batch_frame": list(range(n)), "acks": acks}


def test_steady_window_trims_head_and_tail() -> None:
    assert metrics.steady_window(100) == (20, 89)
    assert metrics.steady_window(10) == (2, 8)
    assert metrics.steady_window(2) == (0, 1)
    with pytest.raises(ValueError):
        metrics.steady_window(1)


def test_ack_times_are_cumulative_and_cover_fedavg_rounds() -> None:
    # Five batches in one FedAvg upload (frame 0), five in the next (frame 1).
    frames = [0] * 5 + [1] * 5
    acks = [[10.0, 0], [20.0, 1]]
    assert metrics.ack_times(frames, acks) == [10.0] * 5 + [20.0] * 5
    # A cumulative ACK of 3 covers frames 2 and 3; an unsent batch (-1) and one never
    # acknowledged get None.
    assert metrics.ack_times([0, 2, 3, 4, -1], [[1.0, 0], [5.0, 3]]) == [1.0, 5.0, 5.0, None, None]


def test_step_interval_removes_evaluation_pauses() -> None:
    acked = [float(i) for i in range(11)]  # one step per second
    assert metrics.step_interval_s(acked, (0, 10)) == pytest.approx(1.0)
    # A 2 s evaluation inside the window, and one outside it, do not count.
    pauses = [[3.0, 5.0], [20.0, 30.0]]
    assert metrics.step_interval_s(acked, (0, 10), pauses) == pytest.approx(0.8)
    assert metrics.pause_overlap_s(4.0, 25.0, pauses) == pytest.approx(6.0)
    with pytest.raises(ValueError):
        metrics.step_interval_s([0.0, None], (0, 1))


def test_step_latencies_and_distribution() -> None:
    starts = [0.0, 1.0, 2.0, 3.0]
    acked = [0.5, 1.5, None, 4.0]
    assert metrics.step_latencies_s(starts, acked, (0, 3)) == [0.5, 0.5, 1.0]
    d = metrics.distribution([1.0, 2.0, 3.0, 4.0, 100.0])
    assert d["mean"] == pytest.approx(22.0)
    assert d["p50"] == 3.0
    assert d["p95"] == 100.0
    assert (d["min"], d["max"]) == (1.0, 100.0)
    with pytest.raises(ValueError):
        metrics.distribution([])


def test_transfer_time_bound_and_products() -> None:
    assert metrics.transfer_time_s(6_250_000, 50e6) == pytest.approx(1.0)  # 50 Mbit in 1 s
    assert metrics.transfer_time_s(10**9, None) == 0.0
    with pytest.raises(ValueError):
        metrics.transfer_time_s(1, 0)
    assert metrics.pipeline_bound_s(0.01, 0.02, 0.005, 0.03) == 0.03
    stages = metrics.StageTimes(0.01, 0.02, 0.005, 0.03, rtt_s=0.03)
    assert stages.bottleneck == "downlink"
    assert stages.sequential_bound_s == pytest.approx(0.095)
    assert metrics.bandwidth_time_product(1000, 3000, 0.5) == 2000.0
    assert metrics.busy_fraction(0.5, 2.0) == 0.25
    assert metrics.busy_fraction(3.0, 2.0) == 1.0
    assert metrics.busy_fraction(1.0, 0.0) == 0.0
    assert metrics.reduction(22.0, 100.0) == pytest.approx(0.78)
    with pytest.raises(ValueError):
        metrics.reduction(1.0, 0.0)


def test_time_to_accuracy_and_training_time() -> None:
    curve = [[1.0, 32, 0.2], [2.0, 64, 0.55], [3.0, 96, 0.9]]
    assert metrics.time_to_accuracy(curve, 0.5) == 2.0
    assert metrics.time_to_accuracy(curve, 0.95) is None
    assert metrics.training_time_s(10.0, 2.0, [[4.0, 5.0], [11.0, 12.0]]) == pytest.approx(7.0)


def test_staleness_percentile() -> None:
    histogram = {"0": 10, "3": 80, "4": 10}
    assert metrics.staleness_percentile(histogram, 0.5) == 3
    assert metrics.staleness_percentile(histogram, 0.95) == 4
    assert metrics.staleness_percentile(histogram, 0.05) == 0
    assert metrics.staleness_percentile({}, 0.95) == 0


def test_cloud_compute_uses_the_span_after_the_window_start() -> None:
    acked = [float(i) for i in range(1, 11)]  # batch i acked at i+1 s
    # Busy: 5 s of start-up by t=0.5, then 0.1 s per step.
    polls = [[0.5, 5.0], [4.5, 5.4], [11.0, 6.0]]
    # From the poll at 4.5 s (4 batches acked) to the end: 0.6 s over 6 steps.
    assert metrics.cloud_compute_s(polls, acked, 4.0) == pytest.approx(0.1)
    # An evaluation inside the span is taken off at its cost.
    assert metrics.cloud_compute_s(
        [[4.5, 5.4], [11.0, 8.0]], acked, 4.0, [[6.0, 8.0]], 2.0
    ) == pytest.approx(0.1)
    # No poll inside the run: the whole run.
    assert metrics.cloud_compute_s([[11.0, 6.0]], acked, 4.0) == pytest.approx(0.6)
    assert metrics.cloud_compute_s([], acked, 4.0) == 0.0


def test_step_metrics_on_a_known_timeline() -> None:
    n = 50
    timeline = _timeline(n, interval=0.1, latency=0.3, up=10_000, down=20_000, edge=0.04)
    busy = [[0.0, 0.0], [n * 0.1 + 1, n * 0.02]]  # 20 ms per step, whole run
    m = metrics.step_metrics(timeline, busy, uplink_rate_bps=8e6, downlink_rate_bps=8e6, rtt_s=0.03)
    assert m.window == (10, 44)
    assert m.step_interval_ms == pytest.approx(100.0)
    assert m.step_latency_ms == pytest.approx(300.0)
    assert m.bytes_up_per_step == pytest.approx(10_000)
    assert m.bytes_down_per_step == pytest.approx(20_000)
    assert m.edge_compute_ms == pytest.approx(40.0)
    assert m.cloud_compute_ms == pytest.approx(20.0)
    assert m.uplink_ms == pytest.approx(10.0)  # 10 kB at 1 MB/s
    assert m.downlink_ms == pytest.approx(20.0)
    assert m.pipeline_bound_ms == pytest.approx(40.0)
    assert m.bottleneck == "edge"
    assert m.sequential_bound_ms == pytest.approx(40 + 10 + 20 + 20 + 30)
    assert m.edge_busy == pytest.approx(0.4)
    assert m.cloud_busy == pytest.approx(0.2)
    assert m.btp_byte_s == pytest.approx(30_000 * 0.1)
    record = m.to_json()
    assert record["window"] == [10, 44]
    assert all(not isinstance(v, float) or math.isfinite(v) for v in record.values())
