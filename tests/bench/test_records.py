"""The committed results under bench/results are readable through the typed records, write
back as they were read, and their tables are what the renderers make of them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from simultrain.bench import control_plane, fleet, fleet_parity, replicas_inprocess, report, study
from simultrain.bench.records import (
    RESULTS_FILES,
    BenchMeta,
    BenchResults,
    ControlPlaneFile,
    FleetFile,
    FleetParityFile,
    ReplicaFile,
    ResultsFile,
    StudyFile,
)

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def _canonical(value: Any) -> str:
    """JSON with sorted keys: equal texts are equal values of equal types (1 is not 1.0)."""
    return json.dumps(value, sort_keys=True)


def test_every_results_file_of_the_tree_has_a_model() -> None:
    written = {
        str(p.relative_to(RESULTS))
        for p in RESULTS.rglob("*.json")
        if p.name not in ("meta.json",) and not p.name.startswith("replicas.")
    }
    assert written == set(RESULTS_FILES)


@pytest.mark.parametrize("name", sorted(RESULTS_FILES))
def test_a_committed_results_file_reads_and_writes_back_unchanged(name: str) -> None:
    model: type[ResultsFile] = RESULTS_FILES[name]
    raw = json.loads((RESULTS / name).read_text())
    results = model.read(RESULTS / name)
    if isinstance(results, BenchResults):
        assert _canonical([r.to_json() for r in results.records]) == _canonical(raw)
    else:
        assert _canonical(results.to_json()) == _canonical(raw)


@pytest.mark.parametrize("name", ["meta.json", "ablation/meta.json"])
def test_the_bench_meta_reads_and_writes_back_unchanged(name: str) -> None:
    raw = json.loads((RESULTS / name).read_text())
    assert _canonical(BenchMeta.model_validate(raw).to_json()) == _canonical(raw)


def test_a_field_no_model_declares_is_refused(tmp_path: Path) -> None:
    raw = json.loads((RESULTS / "fleet_parity.json").read_text())
    raw["records"][0]["accuracy_pct"] = raw["records"][0].pop("accuracy")
    (tmp_path / "f.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="accuracy"):
        FleetParityFile.read(tmp_path / "f.json")


def _report(results: str, meta: str) -> str:
    records = BenchResults.read(RESULTS / results).records
    plots = [
        name
        for name in (
            "accuracy_vs_time.png",
            "step_time.png",
            "bytes_per_step.png",
            "staleness_histogram.png",
            "compression.png",
        )
        if (RESULTS / Path(results).parent / name).exists()
    ]
    return report.render_report(
        records, BenchMeta.model_validate_json((RESULTS / meta).read_bytes()), plots
    )


def _replicas() -> str:
    rows = ReplicaFile.read(RESULTS / "replicas-inprocess.json").rows
    order = list(replicas_inprocess.CASES)
    return replicas_inprocess.render_table(
        sorted(rows, key=lambda r: (r.seed, order.index(r.case)))
    )


RENDERED = {
    "fleet.md": lambda: fleet.fleet_markdown(FleetFile.read(RESULTS / "fleet.json")),
    "rss32/fleet.md": lambda: fleet.fleet_markdown(FleetFile.read(RESULTS / "rss32/fleet.json")),
    "stragglers.md": lambda: fleet.stragglers_markdown(FleetFile.read(RESULTS / "stragglers.json")),
    "fleet_parity.md": lambda: (
        fleet_parity.render_table(FleetParityFile.read(RESULTS / "fleet_parity.json").records)
        + "\n"
    ),
    "fleet_pooled/fleet_parity.md": lambda: (
        fleet_parity.render_table(
            FleetParityFile.read(RESULTS / "fleet_pooled/fleet_parity.json").records
        )
        + "\n"
    ),
    **{
        f"{part}/fleet_parity.md": (
            lambda part=part: (
                fleet_parity.render_table(
                    FleetParityFile.read(RESULTS / part / "fleet_parity.json").records
                )
                + "\n"
            )
        )
        for part in (
            "fleet_epoch",
            "fleet_32",
            "fleet_zero",
            "fleet_zero_kept_back",
            "fleet_loop",
            "fleet_throughput",
            "fleet_throughput_loop",
        )
    },
    "staleness.md": lambda: study.render_table(StudyFile.read(RESULTS / "staleness.json")),
    "replicas-inprocess.md": _replicas,
    "report.md": lambda: _report("results.json", "meta.json"),
    "ablation/report.md": lambda: _report("ablation/results.json", "ablation/meta.json"),
    **{
        f"control-plane/{part}/control-plane.md": (
            lambda part=part: control_plane.control_plane_markdown(
                ControlPlaneFile.read(RESULTS / "control-plane" / part / "control-plane.json")
            )
        )
        for part in ("before", "before-10000", "sqlite", "postgres", "soak", "merged")
    },
}


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_a_committed_table_is_what_its_renderer_makes_of_its_records(name: str) -> None:
    assert RENDERED[name]() == (RESULTS / name).read_text()
