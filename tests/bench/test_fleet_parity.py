"""``simultrain fleet-parity``: the demo run of each case, the table of the records, resume,
and the runner's one-at-a-time large fleets."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simultrain.bench import fleet_parity
from simultrain.bench.fleet_parity import Case, FleetParity, render_table
from simultrain.bench.harness import run
from simultrain.bench.records import FleetParityFile, FleetParityMeta, FleetParityRecord
from simultrain.cli import app
from simultrain.shared.training.config import RunConfig


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


def test_pooled_and_mixed_steps_train_the_fleets_samples() -> None:
    """pooled: the demo runs one edge for steps × edges batches (docs/FLEET.md, "The
    yardstick"); mix4: four edges' micro-batches of 32 / 4 per step, four times as many."""
    from simultrain.demo import edge_processes

    pooled = Case("imu", 8, 4, "pooled", 0)
    command = pooled.command()
    assert command[command.index("--mode") + 1] == "centralized" and "--pooled" in command
    run = RunConfig.from_mapping(pooled.run_keys())
    assert edge_processes(run, pooled.steps) == (1, 1600)
    mixed = Case("imu", 8, 4, "mix4", 0)
    command = mixed.command()
    assert command[command.index("--mix-edges") + 1] == "4"
    assert command[command.index("--steps") + 1] == "800"  # 8 × 800 × 8 samples = 51 200
    assert edge_processes(RunConfig.from_mapping(mixed.run_keys()), mixed.steps) == (8, 800)


def test_an_epoch_covers_the_training_split_whatever_the_fleet() -> None:
    """``--epoch``: at least one epoch of the split, each edge's share rounded up (MNIST's
    60 000 images are 1 875 batches: 235 an edge of 8, 59 of 32); IMU's study budget is
    already 18 epochs and stays as it is."""
    from simultrain.shared.data import load_dataset

    for dataset, batches in fleet_parity.EPOCH_BATCHES.items():
        assert batches == -(-len(load_dataset(dataset).y_train) // 32)
    assert Case("mnist", 8, 4, "default", 0, epoch=True).steps == 235
    assert Case("mnist", 32, 4, "default", 0, epoch=True).steps == 59
    assert Case("mnist", 8, 4, "mix4+credits4", 0, epoch=True).steps == 4 * 235
    assert Case("imu", 8, 4, "default", 0, epoch=True).steps == 200
    assert Case("mnist", 8, 4, "default", 0).steps == 75  # the study budget without it


def test_fixed_credits_hold_the_same_samples_in_flight_when_steps_mix() -> None:
    """credits4: 4 batches in flight fleet-wide; mixed in split micro-batches of 32 / 4, the
    same samples are 16 of them."""
    plain = Case("imu", 8, 4, "credits4", 0).command()
    assert plain[plain.index("--fleet-in-flight") + 1] == "4"
    mixed = Case("imu", 8, 4, "mix4+credits4", 0).command()
    assert mixed[mixed.index("--fleet-in-flight") + 1] == "16"
    assert mixed[mixed.index("--mix-edges") + 1] == "4"


def test_the_gap_is_to_pooled_where_the_cell_has_it() -> None:
    records = [
        record("pooled", 0, 0.85, mode="centralized"),
        record("centralized", 0, 0.80),
        record("x", 0, 0.83),
    ]
    table = render_table(records)
    row = next(line for line in table.splitlines() if line.startswith("| x "))
    assert "| -2.0 |" in row  # against pooled, not the per-edge order (+3.0)
    central = next(line for line in table.splitlines() if line.startswith("| centralized "))
    assert "| -5.0 |" in central  # the diagnostic gets its gap too
    cell = table[table.index("## imu · 8 edges × W 4") :]
    assert cell.index("| pooled ") < cell.index("| centralized ") < cell.index("| x ")


@pytest.mark.parametrize(
    "case",
    [
        Case("imu", 8, 4, "delay-beta1+fleet-batch", 0),
        Case("mnist", 8, 4, "centralized", 1),
        Case("imu", 1, 16, "default", 2),
        Case("imu", 8, 4, "pooled", 0),
        Case("imu", 8, 4, "mix4", 1),
        Case("imu", 8, 4, "credits4", 0),
        Case("mnist", 8, 4, "mix4+credits4", 2, epoch=True),
        Case("imu", 8, 4, "auto+pace", 1),
    ],
)
def test_the_recorded_command_trains_what_the_case_trains(
    case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record's ``command`` (what a reader runs by hand) is the run the harness calls the
    demo's function with, key for key."""
    import simultrain.demo

    seen = []
    monkeypatch.setattr(simultrain.demo, "run_demo", lambda options: seen.append(options))
    assert CliRunner().invoke(app, case.command()).exit_code == 0
    [options] = seen
    assert options.run == RunConfig.from_mapping(case.run_keys())
    assert (options.steps, options.edges, options.eval_every_s) == (case.steps, case.edges, 0.0)


def record(method: str, seed: int, accuracy: float, **cell: object) -> FleetParityRecord:
    fields: dict[str, object] = {
        "dataset": "imu",
        "partition": "groups",
        "edges": 8,
        "window": 4,
        "steps": 200,
        "method": method,
        "mode": "centralized" if method == "centralized" else "simultrain",
        "compensation": "delay-beta1" if method != "x" else "x",
        "seed": seed,
        "accuracy": accuracy,
        "test_loss": 1.0,
        "mean_staleness": 3.0,
        "max_staleness": 5,
        "master_version": 3200,
        "samples": 51200,
        "seconds": 100.0,
        "command": "simultrain demo",
        **cell,
    }
    return FleetParityRecord.model_validate(fields)


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


def test_throughput_is_against_the_best_fixed_window_on_the_same_seed() -> None:
    records = [
        record("default", 0, 0.8, window=1, samples_per_s=900.0),
        record("default", 0, 0.8, window=4, samples_per_s=1000.0),  # the best on seed 0
        record("default", 1, 0.8, window=1, samples_per_s=1200.0),  # the best on seed 1
        record("default", 1, 0.8, window=4, samples_per_s=1100.0),
        record("auto+pace", 0, 0.8, samples_per_s=950.0),  # −5 %
        record("auto+pace", 1, 0.8, samples_per_s=1140.0),  # −5 %
        record("auto+pace", 2, 0.8, samples_per_s=10.0),  # no fixed window on seed 2
        record("old", 0, 0.8),  # recorded before samples_per_s
    ]
    table = render_table(records)
    section = table[table.index("## Throughput") :].split("\n## ")[0]
    assert "| imu | 8 | auto+pace | 2 | -5.0% |" in section
    assert "| imu | 8 | window 1 | 2 | 1050/s |" in section
    assert "| imu | 8 | window 4 | 2 | 1050/s |" in section
    assert "old" not in section
    assert "## Throughput" not in render_table([record("x", 0, 0.8)])  # nothing to compare


def test_resume_skips_the_runs_the_json_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = FleetParityFile(
        meta=FleetParityMeta(command="x"), records=[record("centralized", 0, 0.8)]
    )
    done.write(tmp_path / "fleet_parity.json")
    ran: list[Case] = []

    def fake_run(self: FleetParity, case: Case) -> FleetParityRecord:
        ran.append(case)
        return record(case.method, case.seed, 0.5)

    monkeypatch.setattr(FleetParity, "run_one", fake_run)
    argv = ["fleet-parity", "--out-dir", str(tmp_path), "--datasets", "imu"]
    argv += ["--methods", "centralized,x", "--seeds", "0", "--workers", "1", "--resume"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert [(c.method, c.seed) for c in ran] == [("x", 0)]
    saved = json.loads((tmp_path / "fleet_parity.json").read_text())["records"]
    assert len(saved) == 2 and (tmp_path / "fleet_parity.md").exists()
    assert saved[0] == done.records[0].to_json()  # the kept run, as it was


def test_a_failed_run_is_reported_and_the_command_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from simultrain.shared.errors import SimulTrainError

    def failing(self: FleetParity, case: Case) -> FleetParityRecord:
        if case.method == "x":
            raise SimulTrainError("edge-3 exited with status 1")
        return record(case.method, case.seed, 0.5)

    monkeypatch.setattr(FleetParity, "run_one", failing)
    argv = ["fleet-parity", "--out-dir", str(tmp_path), "--datasets", "imu"]
    result = CliRunner().invoke(app, [*argv, "--methods", "centralized,x", "--workers", "1"])
    assert result.exit_code == 1
    assert "FAILED: SimulTrainError: edge-3 exited with status 1" in result.output
    saved = FleetParityFile.read(tmp_path / "fleet_parity.json").records
    assert {(r.method, r.seed) for r in saved} == {("centralized", s) for s in (0, 1, 2)}


def test_targets_runs_the_committed_grid_and_large_fleets_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    running: list[int] = []
    overlap: list[int] = []
    lock = threading.Lock()
    ran: list[Case] = []
    both = threading.Barrier(2, timeout=5)  # two small runs do overlap with --workers 4

    def fake_run(self: FleetParity, case: Case) -> FleetParityRecord:
        with lock:
            running.append(case.edges)
            if case.edges > fleet_parity.LARGE_FLEET and len(running) > 1:
                overlap.append(case.edges)
            ran.append(case)
            mine = len(ran)
        if mine <= 2:
            both.wait()
        with lock:
            running.remove(case.edges)
        return record(
            case.method,
            case.seed,
            0.5,
            dataset=case.dataset,
            edges=case.edges,
            window=case.window,
            partition="x",
        )

    monkeypatch.setattr(FleetParity, "run_one", fake_run)
    experiment = FleetParity(tmp_path, fleet_parity.TARGET_GRID)
    experiment.pool = "thread"  # the fake runs here, not in a spawned process
    outcome = run(experiment, workers=4)
    expected = {
        (dataset, edges, window, method, seed)
        for datasets, edges, window, methods, seeds in fleet_parity.TARGET_GRID
        for dataset in datasets
        for method in methods
        for seed in seeds
    }
    assert {c.key for c in ran} == expected and len(ran) == len(expected)
    assert outcome.failed == 0 and len(outcome.records) == len(expected)
    assert not overlap
    # Every fleet with a target has its centralized reference in the grid.
    cells = {
        (d, e, w) for ds, e, w, ms, _ in fleet_parity.TARGET_GRID for d in ds if "centralized" in ms
    }
    assert {(e, w) for _, e, w in cells} == set(fleet_parity.TARGETS)
