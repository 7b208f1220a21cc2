"""Whole typed records for the bench tests: every field a plausible value, the ones a test
is about given."""

from __future__ import annotations

from typing import Any

from simultrain.bench.records import FleetRecord, RateSummary
from simultrain.shared.contracts import StalenessSummary


def fleet_record(**given: Any) -> FleetRecord:
    """A clean 8-edge SimulTrain case, changed by ``given``."""
    fields: dict[str, Any] = {
        "edges": 8,
        "label": "",
        "processes": 1,
        "mode": "simultrain",
        "dataset": "imu",
        "edge_slowdown": 1.0,
        "edge_nice": 0,
        "window_s": 10.0,
        "step_rate_per_edge": RateSummary(min=1.0, median=1.0, max=1.0, mean=1.0),
        "steps_per_s": 8.0,
        "fast_edge_step_rate_median": 1.0,
        "straggler_step_rates": [],
        "stragglers": {},
        "round_deadline_s": None,
        "seconds_per_update": 0.0625,
        "partial_rounds": 0,
        "gradient_coding_s": 0,
        "coded_rounds": 0,
        "late_uploads_dropped": 0,
        "late_samples": 0,
        "accuracy": None,
        "eval_samples_applied": None,
        "cloud_updates": 160,
        "cloud_busy_fraction": 0.5,
        "cloud_ms_per_update": 5.0,
        "cloud_ms_per_batch": 10.0,
        "cloud_cpu_fraction": 0.6,
        "cloud_cpu_ms_per_update": 6.0,
        "cloud_compute_cpu_ms_per_update": 4.0,
        "cloud_loop_cpu_ms_per_update": 2.0,
        "cloud_bytes_up_per_update": 60_000,
        "cloud_bytes_down_per_update": 80_000,
        "rss_mib": [(0.0, 400.0), (10.0, 400.0)],
        "rss_start_mib": 400.0,
        "rss_end_mib": 400.0,
        "rss_max_mib": 400.0,
        "rss_slope_mib_per_min": 0.0,
        "errors": 0,
        "error_details": [],
        "agents_failed": 0,
        "connection_errors": 0,
        "reconnects": 0,
        "session_end_reasons": {},
        "undelivered_batches": 0,
        "samples_sent": 2560,
        "samples_applied": 2560,
        "lost_samples": 0,
        "duplicates_dropped": 0,
        "staleness": StalenessSummary(batches=80, max=30, mean=20.0, dropped=0, histogram={}),
        "cloud_involuntary_switches_per_update": 0.1,
        "load_average": [1.0, 1.0, 1.0],
    }
    return FleetRecord(**{**fields, **given})
