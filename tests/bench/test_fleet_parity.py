"""``simultrain fleet-parity``: the demo command of each case and the table of the records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simultrain.bench import fleet_parity
from simultrain.bench.fleet_parity import Case, render_table


def test_every_method_trains_the_same_samples_on_the_fleets_shards() -> None:
    fleet = Case("imu", 8, 4, "delay-beta1+fleet-batch", 0).command()
    assert fleet[fleet.index("--steps") + 1] == "200"  # 8 × 200 = 1 600 batches
    assert fleet[fleet.index("--partition") + 1] == "groups"
    assert fleet[fleet.index("--compensation") + 1] == "delay-beta1+fleet-batch"
    central = Case("mnist", 8, 4, "centralized", 1).command()
    assert central[central.index("--mode") + 1] == "centralized"
    assert central[central.index("--partition") + 1] == "label-skew"
    assert central[central.index("--steps") + 1] == "75"
    assert "--compensation" not in Case("imu", 8, 4, "default", 0).command()
    assert "--partition" not in Case("imu", 1, 16, "default", 0).command()


def record(method: str, seed: int, accuracy: float) -> dict[str, object]:
    return {
        "dataset": "imu",
        "edges": 8,
        "window": 4,
        "method": method,
        "compensation": "delay-beta1" if method != "x" else "x",
        "seed": seed,
        "accuracy": accuracy,
        "mean_staleness": 3.0,
        "max_staleness": 5,
        "seconds": 100.0,
    }


def test_the_table_gives_the_gap_to_centralized_on_the_seeds_both_have() -> None:
    records = [
        record("centralized", 0, 0.80),
        record("centralized", 1, 0.90),
        record("x", 0, 0.78),
        record("x", 1, 0.87),
        record("x", 2, 0.10),  # no centralized run of seed 2: not in the gap
    ]
    table = render_table(records)
    row = next(line for line in table.splitlines() if line.startswith("| x "))
    assert "| -2.5 |" in row  # (−2 − 3) / 2
    assert "58.3 ±" in row  # the mean is over every seed
    cell = table[table.index("## imu · 8 edges × W 4") :]
    assert cell.index("| centralized ") < cell.index("| x ")
    # 8 × W 4 has a target of 0.5 point: a 2.5-point gap does not meet it.
    target = next(line for line in table.splitlines() if line.startswith("| imu | 8 × W 4 | x "))
    assert "| 2 | -2.5 | 0.5 | −0.5 | **no** |" in target


def test_resume_skips_the_runs_the_json_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = {**record("centralized", 0, 0.8), "partition": "groups"}
    (tmp_path / "fleet_parity.json").write_text(json.dumps({"records": [done]}))
    ran: list[Case] = []

    def fake_run(case: Case, timeout_s: float) -> dict[str, object]:
        ran.append(case)
        return {**record(case.method, case.seed, 0.5), "partition": "groups"}

    monkeypatch.setattr(fleet_parity, "_run", fake_run)
    argv = ["--out-dir", str(tmp_path), "--datasets", "imu", "--methods", "centralized,x"]
    assert fleet_parity.main([*argv, "--seeds", "0", "--resume"]) == 0
    assert [(c.method, c.seed) for c in ran] == [("x", 0)]
    saved = json.loads((tmp_path / "fleet_parity.json").read_text())["records"]
    assert len(saved) == 2 and (tmp_path / "fleet_parity.md").exists()


def test_targets_runs_the_committed_grid_and_large_fleets_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    running: list[int] = []
    overlap: list[int] = []
    lock = threading.Lock()
    ran: list[Case] = []

    def fake_run(case: Case, timeout_s: float) -> dict[str, object]:
        with lock:
            running.append(case.edges)
            if case.edges > fleet_parity.LARGE_FLEET and len(running) > 1:
                overlap.append(case.edges)
            ran.append(case)
        with lock:
            running.remove(case.edges)
        return {
            **record(case.method, case.seed, 0.5),
            "dataset": case.dataset,
            "edges": case.edges,
            "window": case.window,
            "partition": "x",
        }

    monkeypatch.setattr(fleet_parity, "_run", fake_run)
    assert fleet_parity.main(["--out-dir", str(tmp_path), "--targets", "--workers", "4"]) == 0
    expected = {
        (dataset, edges, window, method, seed)
        for datasets, edges, window, methods, seeds in fleet_parity.TARGET_GRID
        for dataset in datasets
        for method in methods
        for seed in seeds
    }
    assert {c.key for c in ran} == expected and len(ran) == len(expected)
    assert not overlap
    # Every fleet with a target has its centralized reference in the grid.
    cells = {
        (d, e, w) for ds, e, w, ms, _ in fleet_parity.TARGET_GRID for d in ds if "centralized" in ms
    }
    assert {(e, w) for _, e, w in cells} == set(fleet_parity.TARGETS)
