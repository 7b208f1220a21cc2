"""The staleness study on a tiny configuration: the JSON, the table and the plot agree."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

from typer.testing import CliRunner

from simultrain.bench.records import StudyFile
from simultrain.bench.study import StudyConfig, run_study, summarize
from simultrain.cli import app
from simultrain.shared.training.config import RunConfig


def main(args: list[str]) -> int:
    """``simultrain study ARGS``; its exit code."""
    result = CliRunner().invoke(app, ["study", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code


def test_tiny_study_writes_json_table_and_plot_that_agree(tmp_path: Path) -> None:
    study = StudyConfig.tiny()
    payload = run_study(study, tmp_path)
    saved = json.loads((tmp_path / "staleness.json").read_text())
    assert saved["records"] == [r.to_json() for r in payload.records]
    records = saved["records"]
    # Window 0 once per (optimizer, seed), every other window once per compensation.
    assert len(records) == len(study.seeds) * (1 + len(study.compensations))
    for r in records:
        for key in (
            "compensation",
            "optimizer",
            "window",
            "dataset",
            "seed",
            "accuracy",
            "final_loss",
        ):
            assert key in r, key
        assert r["max_staleness"] == max(r["window"] - 1, 0)  # W in flight: W − 1 missed
    # Every table cell is the mean ± std of its records, and the gap is to window 0.
    table = (tmp_path / "staleness.md").read_text()
    base_accs = [100 * r["accuracy"] for r in records if r["window"] == 0]
    base, base_std = statistics.fmean(base_accs), statistics.stdev(base_accs)
    for comp in study.compensations:
        accs = [
            100 * r["accuracy"] for r in records if r["compensation"] == comp and r["window"] == 2
        ]
        mean, std = statistics.fmean(accs), statistics.stdev(accs)
        row = next(line for line in table.splitlines() if line.startswith(f"| {comp} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == f"{base:.1f} ± {base_std:.1f}"
        assert cells[2] == f"{mean:.1f} ± {std:.1f} ({mean - base:+.1f})"
    typed = StudyFile.read(tmp_path / "staleness.json").records
    assert summarize(typed)[("imu", "momentum", "forecast", 0, 1)]["mean"] == base
    assert saved["default"] == RunConfig().compensation
    # The ablations ran and are in the report.
    kinds = {a["ablation"] for a in saved["ablations"]}
    assert kinds == {"forecast", "reconcile"}
    assert "R = ∞" in table and "α = 0" in table
    lost = [a for a in saved["ablations"] if a["ablation"] == "reconcile" and a["delta_loss"]]
    assert lost and all(a["deltas_lost"] > 0 for a in lost)
    assert (tmp_path / "staleness.png").stat().st_size > 1000


def test_study_resumes_without_running_anything_twice(tmp_path: Path) -> None:
    args = ["--tiny", "--out-dir", str(tmp_path), "--no-ablations", "--seeds", "0"]
    assert main(args) == 0
    first = json.loads((tmp_path / "staleness.json").read_text())["records"]
    assert main([*args, "--resume"]) == 0
    second = json.loads((tmp_path / "staleness.json").read_text())["records"]
    assert second == first
    assert re.search(r"\| forecast \| .* \| .* \|", (tmp_path / "staleness.md").read_text())


def test_edges_axis_trains_the_same_samples_on_a_fleet(tmp_path: Path) -> None:
    """--edges: E edges train steps/E batches each, and the report compares each fleet with
    its own window 0."""
    args = ["--tiny", "--out-dir", str(tmp_path), "--no-ablations", "--seeds", "0"]
    assert main([*args, "--edges", "1,2", "--compensations", "none", "--steps", "imu=8"]) == 0
    saved = json.loads((tmp_path / "staleness.json").read_text())
    fleet = [r for r in saved["records"] if r["edges"] == 2]
    assert {(r["window"], r["steps"], r["partition"]) for r in fleet} == {
        (0, 4, "groups"),
        (2, 4, "groups"),
    }
    # Window 2 is two batches in flight: alone, an edge's gradient misses at most its own other
    # batch's update; with two edges it misses the other edge's updates as well.
    stale = next(r for r in fleet if r["window"] == 2)
    solo = next(r for r in saved["records"] if r["edges"] == 1 and r["window"] == 2)
    assert solo["steps"] == 8 and solo["max_staleness"] == 1
    assert stale["max_staleness"] > solo["max_staleness"]
    table = (tmp_path / "staleness.md").read_text()
    assert "## imu · momentum · 2 edges" in table
    gap = 100 * stale["accuracy"] - 100 * next(r["accuracy"] for r in fleet if r["window"] == 0)
    row = table.split("## imu · momentum · 2 edges")[1].split("| none |")[1].splitlines()[0]
    assert f"({gap:+.1f})" in row
