"""``simultrain bench --quick`` on a tiny configuration, through the real services."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simultrain.bench.bench import ALL_MODES


# `simultrain bench --quick` end to end (about 100 s): `make long-tests`.
@pytest.mark.bench
@pytest.mark.integration
@pytest.mark.timeout(240)
def test_quick_bench_writes_a_consistent_report(tmp_path: Path) -> None:
    out = tmp_path / "results"
    command = [
        sys.executable,
        "-m",
        "simultrain.cli",
        "bench",
        "--quick",
        "--links",
        "lan",
        "--datasets",
        "imu",
        "--steps",
        "30",
        "--seeds",
        "1",
        "--variants",
        "delta-int8",
        "--suites",
        "systems,compression",
        "--slowdown",
        "2",
        "--out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=220, check=False)
    assert done.returncode == 0, done.stderr[-3000:]

    records = json.loads((out / "results.json").read_text())
    assert isinstance(records, list)
    assert not [r for r in records if "error" in r]
    systems = [r for r in records if r["suite"] == "systems"]
    assert {r["mode"] for r in systems} == set(ALL_MODES)
    assert {r["variant"] for r in records if r["suite"] == "compression"} == {"delta-int8"}
    for r in records:
        assert (r["link"], r["dataset"], r["seed"]) == ("lan", "imu", 0)
        assert r["bytes_up_per_step"] > 0 and r["bytes_down_per_step"] > 0
        assert 0.0 <= r["accuracy"] <= 1.0
        assert r["samples"] == 30 * 32
        # The bound is a lower bound on any schedule (with noise: × 0.9).
        assert r["step_interval_ms"] >= r["pipeline_bound_ms"] * 0.9, r["case"]
        assert r["max_staleness"] <= r["window_size"] + 1
        assert r["accuracy_curve"][-1][2] == r["accuracy"]
    by_mode = {r["mode"]: r for r in systems}
    # The flow controller's estimate at the end of the run, where the cloud grants credits
    # (window = auto by default); lockstep modes keep one batch and grant none.
    auto = by_mode["simultrain"]["credits"]
    assert auto["policy"] == "auto" and auto["pipe"] > 0 and auto["min_rtt_s"] > 0
    assert auto["most_in_flight"] >= 1
    assert by_mode["syncsgd"]["credits"] is None
    meta = json.loads((out / "meta.json").read_text())
    assert meta["edge_slowdown"] == 2.0 and meta["cases"] == len(records)

    text = (out / "report.md").read_text()
    lines = text.splitlines()
    for r in systems:
        rows = [line for line in lines if line.startswith(f"| {r['mode']} | ")]
        # The step-time table and the bytes table show this record's figures.
        assert any(f"| {r['step_interval_ms']:.1f} |" in row for row in rows), r["mode"]
        assert any(f"| {r['bytes_up_per_step'] / 1e3:.1f} |" in row for row in rows), r["mode"]
    for name in (
        "step_time.png",
        "bytes_per_step.png",
        "accuracy_vs_time.png",
        "staleness_histogram.png",
        "compression.png",
    ):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
        assert f"({name})" in text
