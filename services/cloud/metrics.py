"""Prometheus metrics of the cloud (``GET /metrics``), on a registry of the app's own, and
the master's progress over time that the coordinator's dashboard draws (``GET /v1/history``).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from simultrain.shared.contracts import HistoryPoint
from simultrain.shared.protocol import Snap
from simultrain.shared.training.master import CloudMaster

__all__ = ["AppliedRate", "CloudMetrics", "TrainingHistory", "json_float"]

# About an hour of points at the default evaluation period (5 s): enough for a dashboard's
# chart, small enough (tens of kB of JSON) to send on every poll.
HISTORY_POINTS = 720


class CloudMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Gauge("simultrain_cloud_sessions", "Open edge sessions.", registry=r)
        self.master_version = Gauge(
            "simultrain_cloud_master_version", "Master version v_c.", registry=r
        )
        self.samples_applied = Gauge(
            "simultrain_cloud_samples_applied",
            "Training samples applied to the master.",
            registry=r,
        )
        self.frames = Counter(
            "simultrain_cloud_frames_total", "Frames received, by type.", ["type"], registry=r
        )
        self.bytes = Counter(
            "simultrain_cloud_bytes_total",
            "Bytes on the wire, by direction.",
            ["direction"],
            registry=r,
        )
        self.step_seconds = Histogram(
            "simultrain_cloud_step_seconds",
            "Compute time of one ACT or EGRAD on the master.",
            ["type"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.rejected = Counter(
            "simultrain_cloud_sessions_rejected_total",
            "Sessions closed for a protocol error, by error code.",
            ["code"],
            registry=r,
        )
        self.dropped = Gauge(
            "simultrain_cloud_stale_gradients_dropped",
            "Edge gradients older than the master history, dropped.",
            registry=r,
        )

        self.reconciliations = Counter(
            "simultrain_cloud_reconciliations_total",
            "Soft reconciliations (SNAP with reconcile set) sent to edges.",
            registry=r,
        )
        self.train_loss = Gauge(
            "simultrain_cloud_train_loss",
            "Master training loss, smoothed over about 50 batches.",
            registry=r,
        )
        self.eval_accuracy = Gauge(
            "simultrain_cloud_eval_accuracy",
            "Held-out accuracy of the master at its last periodic evaluation.",
            registry=r,
        )
        self.eval_loss = Gauge(
            "simultrain_cloud_eval_loss",
            "Held-out mean loss of the master at its last periodic evaluation.",
            registry=r,
        )
        self.eval_seconds = Histogram(
            "simultrain_cloud_eval_seconds",
            "Wall time of one periodic held-out evaluation (it holds the compute thread only "
            "to copy the weights).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        # Per edge, for the dashboard: a label per edge would grow Prometheus' series with
        # the fleet, so the per-edge figures travel as JSON instead.
        self.reconciliations_by_edge: dict[str, int] = {}
        self.history = TrainingHistory()

    def observe_outgoing(self, outgoing: Iterable[tuple[str, object]]) -> None:
        """Count the soft reconciliations among the frames the cloud sends (docs/DESIGN.md §3.6)."""
        for edge_id, frame in outgoing:
            if isinstance(frame, Snap) and frame.reconcile:
                self.reconciliations.inc()
                self.reconciliations_by_edge[edge_id] = (
                    self.reconciliations_by_edge.get(edge_id, 0) + 1
                )

    def observe_evaluation(
        self, result: dict[str, Any], *, train_loss: float | None, seconds: float
    ) -> None:
        """One periodic evaluation of the master: gauges, and a point of the history."""
        self.eval_accuracy.set(result["accuracy"])
        self.eval_loss.set(result["loss"])
        self.eval_seconds.observe(seconds)
        self.history.record(
            master_version=result["master_version"],
            samples_applied=result["samples_applied"],
            train_loss=train_loss,
            accuracy=result["accuracy"],
            eval_loss=result["loss"],
        )

    def observe_step(self, frame_type: str, seconds: float, master: CloudMaster) -> None:
        self.step_seconds.labels(frame_type).observe(seconds)
        self.master_version.set(master.version)
        self.samples_applied.set(master.samples_applied)
        self.dropped.set(master.staleness.dropped)
        if master.loss_ema is not None:
            self.train_loss.set(master.loss_ema)


class AppliedRate:
    """Samples the master applied per second, from the first batch applied to the last: a
    run's throughput, its start-up (processes starting, edges joining) and idle tail left
    out, so runs of one fleet under different windows compare (docs/FLEET.md)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._first: tuple[int, float] | None = None  # (samples applied, when) at the first
        self._last: tuple[int, float] | None = None

    def note(self, samples_applied: int) -> None:
        """After a step: the master's samples applied so far."""
        last = self._last
        if last is not None and samples_applied <= last[0]:
            return
        self._last = (samples_applied, self.clock())
        if self._first is None:
            self._first = self._last

    @property
    def per_s(self) -> float | None:
        """Rounded to 0.01; None until two steps applied samples at different times."""
        if self._first is None or self._last is None or self._last[1] <= self._first[1]:
            return None
        return round((self._last[0] - self._first[0]) / (self._last[1] - self._first[1]), 2)


class TrainingHistory:
    """The master's training loss and held-out accuracy over time, one point per periodic
    evaluation, bounded (the oldest points go first)."""

    def __init__(
        self, *, max_points: int = HISTORY_POINTS, clock: Callable[[], float] = time.time
    ) -> None:
        self.points: deque[HistoryPoint] = deque(maxlen=max_points)
        self.clock = clock

    def record(
        self,
        *,
        master_version: int,
        samples_applied: int,
        train_loss: float | None,
        accuracy: float,
        eval_loss: float,
    ) -> None:
        self.points.append(
            HistoryPoint(
                time=round(self.clock(), 3),
                master_version=master_version,
                samples_applied=samples_applied,
                train_loss=json_float(train_loss),
                accuracy=json_float(accuracy),
                eval_loss=json_float(eval_loss),
            )
        )


def json_float(value: float | None) -> float | None:
    """A float JSON can carry, rounded: it has no NaN or infinity, so a diverged loss (or a
    round trip not measured yet) is reported as missing (null)."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, 6)
