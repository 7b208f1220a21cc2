"""Prometheus metrics of the cloud (``GET /metrics``), on a registry of the app's own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from simultrain.shared.training.master import CloudMaster

__all__ = ["CloudMetrics"]


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

    def observe_step(self, frame_type: str, seconds: float, master: CloudMaster) -> None:
        self.step_seconds.labels(frame_type).observe(seconds)
        self.master_version.set(master.version)
        self.samples_applied.set(master.samples_applied)
        self.dropped.set(master.staleness.dropped)
