"""``simultrain bench --suite control-plane``: the suite joins the harness with its options,
its records are typed and a case that marks live edges down is not clean; one small case
runs end to end against a real coordinator process (``bench`` tier)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from simultrain.bench.control_plane import (
    ControlPlaneOptions,
    ControlPlaneSuite,
    control_plane_markdown,
)
from simultrain.bench.failover import FailoverSuite
from simultrain.bench.harness import SuiteOptions, run, suite
from simultrain.bench.records import ControlPlaneFailure, ControlPlaneFile, ControlPlaneRecord
from simultrain.shared.errors import SimulTrainError

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "control-plane"


def test_the_suite_takes_the_bench_options(tmp_path: Path) -> None:
    experiment = suite("control-plane")(
        SuiteOptions(
            out_dir=tmp_path,
            edge_counts=(10, 20),
            duration_s=5.0,
            stores=("sqlite", "postgres-2"),
            coordinator_tree=tmp_path / "tree",
            label="before",
        )
    )
    assert isinstance(experiment, ControlPlaneSuite)
    options = experiment.options
    assert (options.out_dir, options.steady_s, options.label) == (tmp_path, 5.0, "before")
    assert options.coordinator_tree == tmp_path / "tree"
    assert experiment.cases() == [
        ("sqlite", 10),
        ("sqlite", 20),
        ("postgres-2", 10),
        ("postgres-2", 20),
    ]
    # Without --out the results go to their own directory, as committed.
    default = suite("control-plane")(SuiteOptions())
    assert isinstance(default, ControlPlaneSuite)
    assert default.options.out_dir == Path("bench/results/control-plane")
    assert default.options.edge_counts == (100, 1_000, 10_000)
    assert isinstance(suite("control-plane-failover")(SuiteOptions()), FailoverSuite)
    with pytest.raises(SimulTrainError, match="unknown stores"):
        suite("control-plane")(SuiteOptions(stores=("mysql",)))


def test_a_case_with_live_edges_marked_down_is_not_clean() -> None:
    committed = ControlPlaneFile.read(RESULTS / "before" / "control-plane.json")
    experiment = ControlPlaneSuite(ControlPlaneOptions())
    by_edges = {r.edges: r for r in committed.records if isinstance(r, ControlPlaneRecord)}
    assert experiment.clean(by_edges[500])
    assert by_edges[1000].steady is not None and by_edges[1000].steady.false_down > 0
    assert not experiment.clean(by_edges[1000])
    failure = ControlPlaneFailure(label="", backend="sqlite", edges=3, error="OSError: x")
    assert not experiment.clean(failure)
    # A failed case is a row of the table, not a crash of the renderer.
    table = control_plane_markdown(replace_records(committed, [failure]))
    assert "error: OSError: x" in table


def replace_records(
    results: ControlPlaneFile, records: list[ControlPlaneRecord | ControlPlaneFailure]
) -> ControlPlaneFile:
    return results.model_copy(update={"records": records})


@pytest.mark.bench
def test_a_small_fleet_end_to_end_on_sqlite(tmp_path: Path) -> None:
    """Real coordinator process, 24 edges, every phase short: each enrolled once, none of the
    live ones marked down, the streaming edges of the killed cloud moved."""
    options = replace(
        ControlPlaneOptions(),
        out_dir=tmp_path,
        edge_counts=(24,),
        backends=("sqlite",),
        burst_s=1.0,
        cloud_beats=8,
        steady_s=3.0,
        command="test",
    )
    experiment = ControlPlaneSuite(options)
    outcome = run(experiment)
    assert outcome.failed == 0
    (record,) = outcome.records
    assert isinstance(record, ControlPlaneRecord)
    assert record.enrolled_once and record.enroll.requests == 24
    assert record.steady is not None and record.steady.false_down == 0
    assert record.steady.failover is not None
    assert record.steady.failover.moved == record.steady.failover.edges > 0
    saved = json.loads((tmp_path / "control-plane.json").read_text())
    assert saved["records"][0]["edges"] == 24
    assert (tmp_path / "control-plane.md").read_text() == control_plane_markdown(
        ControlPlaneFile.read(tmp_path / "control-plane.json")
    )
