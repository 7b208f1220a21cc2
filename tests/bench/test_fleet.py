"""``simultrain bench --suite fleet``: several real agents on one loop against one cloud."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simultrain.bench.fleet import FleetOptions, fleet_markdown, rss_slope_mib_per_min
from simultrain.bench.records import FleetFailure, FleetFile, FleetMeta, RateSummary
from simultrain.shared.contracts import StalenessSummary
from simultrain.shared.errors import SimulTrainError

from .factories import fleet_record


def test_rss_slope_is_least_squares_in_mib_per_minute() -> None:
    assert rss_slope_mib_per_min([[0, 100.0], [30, 101.0], [60, 102.0]]) == pytest.approx(2.0)
    assert rss_slope_mib_per_min([[0, 100.0], [60, 100.0]]) == 0.0
    assert rss_slope_mib_per_min([[0, 100.0]]) == 0.0


def test_options_refuse_an_empty_or_non_positive_fleet() -> None:
    with pytest.raises(SimulTrainError):
        FleetOptions(edge_counts=())
    with pytest.raises(SimulTrainError):
        FleetOptions(edge_counts=(0, 8))
    with pytest.raises(SimulTrainError):
        FleetOptions(duration_s=0)


def test_markdown_shows_a_failed_size_and_a_measured_one() -> None:
    measured = fleet_record(
        edges=2,
        step_rate_per_edge=RateSummary(min=1.0, median=1.5, max=2.0, mean=1.5),
        steps_per_s=3.0,
        cloud_ms_per_update=4.2,
        cloud_cpu_ms_per_update=3.1,
        cloud_busy_fraction=0.5,
        rss_start_mib=400.0,
        rss_end_mib=401.0,
        rss_max_mib=402.0,
        rss_slope_mib_per_min=0.5,
        samples_sent=64,
        samples_applied=64,
        staleness=StalenessSummary(batches=2, mean=3.4, max=5, dropped=0, histogram={"3": 2}),
    )
    results = FleetFile(
        meta=FleetMeta(command="x", duration_s=1.0, cpus=2, wall_seconds=3.0),
        records=[FleetFailure(edges=1, error="boom"), measured],
    )
    text = fleet_markdown(results)
    assert "| 1 | error: boom |" in text
    assert (
        "| 2 | 1.00 / 1.50 / 2.00 | 3.0 | 4.2 | 3.1 | 50% | 400 → 401 (402) | +0.50 | 0 |" in text
    )


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_quick_fleet_three_agents_on_one_loop_lose_nothing(tmp_path: Path) -> None:
    """Three agents share one worker's event loop, each its own WebSocket session: all
    three train, and after the drain the cloud has applied every sample they produced."""
    out = tmp_path / "results"
    command = [
        sys.executable,
        "-m",
        "simultrain.cli",
        "bench",
        "--suite",
        "fleet",
        "--quick",
        "--fleet-edges",
        "3",
        "--duration",
        "2",
        "--out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=220, check=False)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    results = json.loads((out / "fleet.json").read_text())
    (record,) = results["records"]
    assert record["edges"] == 3 and record["processes"] == 1
    assert record["errors"] == 0 and record["lost_samples"] == 0
    assert record["samples_sent"] == record["samples_applied"] > 0
    assert record["step_rate_per_edge"]["min"] > 0  # every session trained in the window
    assert record["cloud_updates"] > 0 and record["cloud_ms_per_update"] > 0
    assert record["cloud_cpu_ms_per_update"] > 0
    assert len(record["rss_mib"]) >= 2 and record["rss_start_mib"] > 0
    assert "| 3 |" in (out / "fleet.md").read_text()
