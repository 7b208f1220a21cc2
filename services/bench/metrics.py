"""The benchmark's metrics: pure functions over timelines (docs/BENCH.md, "Metrics").

Every figure in ``results.json`` and the report is computed here from three recordings of
one run, all in ``time.monotonic()`` seconds of the host:

- the edge's :class:`~simultrain.bench.probe.StepTimeline` — when each batch was taken, which
  frame carried it, and after every ACK the edge's byte and compute counters;
- the benchmark's polls of the cloud's ``/v1/status`` — ``[t, busy_seconds]`` samples of the
  cloud compute thread's cumulative busy time;
- the evaluation pauses — ``[start, end]`` of every ``/v1/eval`` call the benchmark made
  while training ran (the cloud evaluates on its compute thread, so steps wait meanwhile).

Definitions (also in ``docs/BENCH.md``; a *step* is one batch of ``batch_size`` samples, in
every mode — a FedAvg round is E steps):

- **steady-state window**: batches ``[⌊0.2·n⌋, ⌈0.9·n⌉)`` by index — the first 20 % fill the
  pipeline and warm up, the last 10 % drain it.
- **step interval**: (ACK time of the window's last batch − of its first) ÷ batches between,
  evaluation pauses inside the window removed. Its inverse is the training throughput; it is
  what "per-step training latency" means in the paper's comparison with SyncSGD.
- **step latency**: per batch, its ACK time − the time it was taken (edge forward requested);
  mean, median and 95th percentile over the window. In lockstep modes it equals the interval;
  in pipelined modes it is about (in-flight batches) × interval.
- **bytes per step**: wire bytes (WebSocket message payloads, after compression) counted by
  the edge over the window ÷ batches in the window, each direction.
- **stage times per step**: edge compute (dilated, ``compute_seconds``, over the window), cloud
  compute (busy time of the compute thread from the window's start to the end, evaluations
  removed, ÷ the steps acknowledged meanwhile; see :func:`cloud_compute_s`),
  uplink = bytes up × 8 ÷ uplink rate, downlink
  likewise; the **pipeline bound** is their maximum — no schedule can step faster than its
  slowest stage; the **sequential bound** is their sum plus one RTT — what a lockstep step costs.
- **busy fraction**: a stage's time per step ÷ the step interval.
- **bandwidth-time product (BTP)**: (bytes up + bytes down per step) × step interval, in
  byte·seconds per step. A mobile link is shared and metered: bytes cost data volume and radio
  energy, time is how long the link (and the radio in its high-power state) stays occupied.
  The product is small only when a schedule is both frugal and fast, and it is the quantity of
  the paper's argument ("sends activations … higher than gradients; however, it enables
  bidirectional overlap, reducing total bandwidth-time product").
- **time to target accuracy**: training wall time (evaluation pauses removed) at the first
  evaluation whose accuracy reaches the target; ``None`` if none does.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from simultrain.bench.records import StepMetrics

__all__ = [
    "HEAD_FRACTION",
    "TAIL_FRACTION",
    "StageTimes",
    "StepMetrics",
    "ack_times",
    "bandwidth_time_product",
    "busy_fraction",
    "cloud_compute_s",
    "distribution",
    "pause_overlap_s",
    "pipeline_bound_s",
    "reduction",
    "staleness_percentile",
    "steady_window",
    "step_interval_s",
    "step_latencies_s",
    "step_metrics",
    "time_to_accuracy",
    "training_time_s",
    "transfer_time_s",
]

HEAD_FRACTION = 0.2
TAIL_FRACTION = 0.1


def steady_window(
    n_batches: int, *, head: float = HEAD_FRACTION, tail: float = TAIL_FRACTION
) -> tuple[int, int]:
    """Indices ``(first, last)`` of the steady-state batches, ``last`` inclusive.

    At least two batches (an interval needs two ACKs); raises for fewer than two.
    """
    if n_batches < 2:
        raise ValueError(f"a steady-state window needs at least 2 batches, got {n_batches}")
    first = math.floor(head * n_batches)
    last = math.ceil((1.0 - tail) * n_batches) - 1
    first = min(max(first, 0), n_batches - 2)
    last = min(max(last, first + 1), n_batches - 1)
    return first, last


def ack_times(batch_frame: Sequence[int], acks: Sequence[Sequence[float]]) -> list[float | None]:
    """Per batch, the time of the first ACK that covers its frame (ACKs are cumulative).

    ``acks`` rows start ``[t, acked_seq, …]`` in arrival order; a batch whose frame was never
    acknowledged (or never sent, ``-1``) gets ``None``.
    """
    times = [row[0] for row in acks]
    # Highest sequence acknowledged so far, row by row: non-decreasing, so bisect finds the
    # first row that covers a given frame.
    covered: list[float] = []
    highest = -math.inf
    for row in acks:
        highest = max(highest, row[1])
        covered.append(highest)
    out: list[float | None] = []
    for frame in batch_frame:
        if frame < 0:
            out.append(None)
            continue
        index = bisect.bisect_left(covered, frame)
        out.append(times[index] if index < len(times) else None)
    return out


def pause_overlap_s(start: float, end: float, pauses: Sequence[Sequence[float]]) -> float:
    """Seconds of ``[start, end]`` covered by the (non-overlapping) ``pauses``."""
    return sum(max(0.0, min(end, b) - max(start, a)) for a, b in pauses)


def step_interval_s(
    acked_at: Sequence[float | None],
    window: tuple[int, int],
    pauses: Sequence[Sequence[float]] = (),
) -> float:
    """Mean time between steps over the window, evaluation pauses removed."""
    first, last = window
    t0, t1 = acked_at[first], acked_at[last]
    if t0 is None or t1 is None:
        raise ValueError("the steady-state window has unacknowledged batches")
    span = (t1 - t0) - pause_overlap_s(t0, t1, pauses)
    return max(span, 0.0) / (last - first)


def step_latencies_s(
    batch_start: Sequence[float],
    acked_at: Sequence[float | None],
    window: tuple[int, int],
) -> list[float]:
    """Per batch of the window: ACK time − time taken (unacknowledged batches skipped)."""
    first, last = window
    return [
        ack - batch_start[i] for i in range(first, last + 1) if (ack := acked_at[i]) is not None
    ]


def distribution(values: Sequence[float]) -> dict[str, float]:
    """Mean, median, 95th percentile, min and max (nearest-rank percentile)."""
    if not values:
        raise ValueError("no values to summarise")
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return {
        "mean": statistics.fmean(ordered),
        "p50": statistics.median(ordered),
        "p95": p95,
        "min": ordered[0],
        "max": ordered[-1],
    }


def transfer_time_s(n_bytes: float, rate_bps: float | None) -> float:
    """Serialization time of ``n_bytes`` at ``rate_bps`` (no limit: 0)."""
    if rate_bps is None:
        return 0.0
    if rate_bps <= 0:
        raise ValueError(f"rate must be > 0 bit/s, not {rate_bps}")
    return n_bytes * 8.0 / rate_bps


def pipeline_bound_s(edge_s: float, uplink_s: float, cloud_s: float, downlink_s: float) -> float:
    """The slowest stage: no schedule steps faster (docs/DESIGN.md §1: the pipeline bound)."""
    return max(edge_s, uplink_s, cloud_s, downlink_s)


def bandwidth_time_product(bytes_up: float, bytes_down: float, interval_s: float) -> float:
    """Bytes on the wire per step × seconds per step (byte·s per step)."""
    return (bytes_up + bytes_down) * interval_s


def busy_fraction(busy_s: float, elapsed_s: float) -> float:
    """Busy time ÷ elapsed time, clamped to [0, 1]."""
    if elapsed_s <= 0:
        return 0.0
    return min(1.0, max(0.0, busy_s / elapsed_s))


def reduction(measured: float, baseline: float) -> float:
    """Relative reduction ``1 − measured / baseline`` (0.78 = "78 % below the baseline")."""
    if baseline <= 0:
        raise ValueError(f"baseline must be > 0, not {baseline}")
    return 1.0 - measured / baseline


def training_time_s(t: float, origin: float, pauses: Sequence[Sequence[float]]) -> float:
    """Seconds of training from ``origin`` to ``t``, evaluation pauses removed."""
    return (t - origin) - pause_overlap_s(origin, t, pauses)


def time_to_accuracy(curve: Sequence[Sequence[float]], target: float) -> float | None:
    """First time of a ``[time, samples, accuracy, …]`` curve whose accuracy ≥ ``target``."""
    for row in curve:
        if row[2] >= target:
            return row[0]
    return None


def staleness_percentile(histogram: Mapping[str, int] | Mapping[int, int], q: float) -> int:
    """The ``q`` quantile (nearest rank) of a staleness histogram ``{τ: count}``."""
    counts = sorted((int(k), int(v)) for k, v in histogram.items())
    total = sum(v for _, v in counts)
    if total == 0:
        return 0
    rank = max(1, math.ceil(q * total))
    seen = 0
    for tau, count in counts:
        seen += count
        if seen >= rank:
            return tau
    return counts[-1][0]


@dataclass(frozen=True)
class StageTimes:
    """Per-step stage times (seconds) over the steady-state window."""

    edge_s: float
    uplink_s: float
    cloud_s: float
    downlink_s: float
    rtt_s: float = 0.0

    @property
    def pipeline_bound_s(self) -> float:
        return pipeline_bound_s(self.edge_s, self.uplink_s, self.cloud_s, self.downlink_s)

    @property
    def sequential_bound_s(self) -> float:
        return self.edge_s + self.uplink_s + self.cloud_s + self.downlink_s + self.rtt_s

    @property
    def bottleneck(self) -> str:
        stages = {
            "edge": self.edge_s,
            "uplink": self.uplink_s,
            "cloud": self.cloud_s,
            "downlink": self.downlink_s,
        }
        return max(stages, key=lambda name: stages[name])


def step_metrics(
    timeline: Mapping[str, Any],
    cloud_busy: Sequence[Sequence[float]],
    *,
    uplink_rate_bps: float | None,
    downlink_rate_bps: float | None,
    rtt_s: float = 0.0,
    pauses: Sequence[Sequence[float]] = (),
    eval_cost_s: float = 0.0,
) -> StepMetrics:
    """The steady-state metrics of one run from its recordings (see the module docstring).

    ``cloud_busy``: ``[t, busy_seconds]`` polls, the last one after training ended;
    ``pauses``: evaluation calls made while training ran, each costing ``eval_cost_s`` of the
    cloud's busy time.
    """
    batch_start: Sequence[float] = timeline["batch_start"]
    acks: Sequence[Sequence[float]] = timeline["acks"]
    acked_at = ack_times(timeline["batch_frame"], acks)
    n = len(batch_start)
    window = steady_window(n)
    first, last = window
    steps = last - first
    interval = step_interval_s(acked_at, window, pauses)
    latencies = step_latencies_s(batch_start, acked_at, window)
    latency = distribution(latencies)
    t0, t1 = acked_at[first], acked_at[last]
    assert t0 is not None and t1 is not None  # step_interval_s checked
    # Edge counters at the two ACKs that close the window's first and last batch.
    row0 = _row_at(acks, t0)
    row1 = _row_at(acks, t1)
    bytes_up = (row1[2] - row0[2]) / steps
    bytes_down = (row1[3] - row0[3]) / steps
    edge = (row1[4] - row0[4]) / steps
    cloud = cloud_compute_s(cloud_busy, acked_at, t0, pauses, eval_cost_s)
    stages = StageTimes(
        edge_s=edge,
        uplink_s=transfer_time_s(bytes_up, uplink_rate_bps),
        cloud_s=cloud,
        downlink_s=transfer_time_s(bytes_down, downlink_rate_bps),
        rtt_s=rtt_s,
    )
    return StepMetrics(
        batches=n,
        window=window,
        step_interval_ms=_r(interval * 1e3),
        step_latency_ms=_r(latency["mean"] * 1e3),
        step_latency_p50_ms=_r(latency["p50"] * 1e3),
        step_latency_p95_ms=_r(latency["p95"] * 1e3),
        bytes_up_per_step=_r(bytes_up),
        bytes_down_per_step=_r(bytes_down),
        edge_compute_ms=_r(stages.edge_s * 1e3),
        cloud_compute_ms=_r(stages.cloud_s * 1e3),
        uplink_ms=_r(stages.uplink_s * 1e3),
        downlink_ms=_r(stages.downlink_s * 1e3),
        pipeline_bound_ms=_r(stages.pipeline_bound_s * 1e3),
        sequential_bound_ms=_r(stages.sequential_bound_s * 1e3),
        bottleneck=stages.bottleneck,
        edge_busy=_r(busy_fraction(stages.edge_s, interval)),
        cloud_busy=_r(busy_fraction(stages.cloud_s, interval)),
        btp_byte_s=_r(bandwidth_time_product(bytes_up, bytes_down, interval)),
    )


def _r(value: float) -> float:
    """Four decimals: what a record keeps of a figure."""
    return round(value, 4)


def cloud_compute_s(
    cloud_busy: Sequence[Sequence[float]],
    acked_at: Sequence[float | None],
    start: float,
    pauses: Sequence[Sequence[float]] = (),
    eval_cost_s: float = 0.0,
) -> float:
    """Cloud compute per step from polled ``[t, busy_seconds]`` samples.

    The busy counter is polled, not stamped per ACK, so the span runs from the first poll at
    or after ``start`` (the window's first ACK: start-up and first-call costs stay out) to
    the last sample, taken after training ended; the steps are those acknowledged in between,
    and evaluations that began in the span are taken off at ``eval_cost_s`` each. A run too
    short for a poll inside it falls back to the whole run.
    """
    if not cloud_busy:
        return 0.0
    done = sorted(t for t in acked_at if t is not None)
    total = len(done)
    reference: Sequence[float] = [-math.inf, 0.0]
    for row in cloud_busy[:-1]:
        if row[0] >= start and bisect.bisect_right(done, row[0]) < total:
            reference = row
            break
    steps = total - bisect.bisect_right(done, reference[0])
    evals = sum(1 for a, _ in pauses if a >= reference[0])
    busy = cloud_busy[-1][1] - reference[1] - evals * eval_cost_s
    return max(0.0, busy) / max(steps, 1)


def _row_at(acks: Sequence[Sequence[float]], t: float) -> Sequence[float]:
    """The last ACK row at or before ``t``."""
    times = [row[0] for row in acks]
    index = bisect.bisect_right(times, t) - 1
    return acks[max(index, 0)]
