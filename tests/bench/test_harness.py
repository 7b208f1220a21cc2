"""The experiment harness on a toy experiment: cases → run_one → a typed record → render;
resume, append and replace; failures; a pool; and a suite that joins ``simultrain bench``."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simultrain.bench import suites
from simultrain.bench.harness import Experiment, SuiteOptions, run, suite
from simultrain.bench.records import CaseFailure, Record, ResultsFile
from simultrain.cli import app
from simultrain.shared.errors import SimulTrainError


class Square(Record):
    n: int
    square: int
    note: str | None = None  # a field older files lack


class SquareFailure(CaseFailure):
    n: int


class Squares(ResultsFile):
    command: str
    records: list[Square | SquareFailure]


@dataclass
class SquaresExperiment(Experiment[int, Square | SquareFailure]):
    """n → n²; ``bad`` cases raise a SimulTrainError, ``broken`` ones a ValueError."""

    out_dir: Path
    numbers: Sequence[int] = (1, 2, 3)
    bad: frozenset[int] = frozenset()
    broken: frozenset[int] = frozenset()
    ran: list[int] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    finished: int = 0

    def cases(self) -> list[int]:
        return list(self.numbers)

    def record_key(self, record: Square | SquareFailure) -> int:
        return record.n

    def run_one(self, case: int) -> Square | SquareFailure:
        self.ran.append(case)
        if case in self.bad:
            raise SimulTrainError(f"{case} is bad")
        if case in self.broken:
            raise ValueError(f"{case} is broken")
        return Square(n=case, square=case * case)

    def failed(self, case: int, exc: BaseException) -> SquareFailure:
        return SquareFailure(n=case, error=str(exc))

    def load(self) -> list[Square | SquareFailure]:
        path = self.out_dir / "squares.json"
        return Squares.read(path).records if path.exists() else []

    def save(self, records: Sequence[Square | SquareFailure]) -> None:
        Squares(command="squares", records=list(records)).write(self.out_dir / "squares.json")
        table = render(records)
        (self.out_dir / "squares.md").write_text(table)
        self.tables.append(table)

    def finish(self, records: Sequence[Square | SquareFailure]) -> None:
        self.save(records)
        self.finished += 1


def render(records: Sequence[Square | SquareFailure]) -> str:
    return "".join(
        f"| {r.n} | {r.error if isinstance(r, SquareFailure) else r.square} |\n" for r in records
    )


def saved(out: Path) -> list[dict[str, object]]:
    records: list[dict[str, object]] = json.loads((out / "squares.json").read_text())["records"]
    return records


def test_every_case_becomes_a_record_saved_and_rendered_after_each(tmp_path: Path) -> None:
    experiment = SquaresExperiment(tmp_path)
    outcome = run(experiment)
    assert [r.to_json() for r in outcome.records] == [
        {"n": 1, "square": 1},
        {"n": 2, "square": 4},
        {"n": 3, "square": 9},
    ]
    assert (outcome.ran, outcome.failed, outcome.skipped) == (3, 0, 0)
    # Saved after every case (the table grows), then once more at the end.
    assert experiment.tables[:3] == [
        "| 1 | 1 |\n",
        "| 1 | 1 |\n| 2 | 4 |\n",
        render(outcome.records),
    ]
    assert experiment.finished == 1
    assert (tmp_path / "squares.md").read_text() == render(outcome.records)
    assert Squares.read(tmp_path / "squares.json").records == outcome.records


def test_resume_skips_what_the_results_file_holds_and_keeps_it_as_written(tmp_path: Path) -> None:
    # An older file: its record has no "note", and is written back without one.
    older = {"command": "squares", "records": [{"n": 2, "square": 4}]}
    (tmp_path / "squares.json").write_text(json.dumps(older))
    experiment = SquaresExperiment(tmp_path)
    outcome = run(experiment, earlier="resume")
    assert experiment.ran == [1, 3] and outcome.skipped == 1
    assert saved(tmp_path) == [{"n": 2, "square": 4}, {"n": 1, "square": 1}, {"n": 3, "square": 9}]
    again = SquaresExperiment(tmp_path)
    assert run(again, earlier="resume").ran == 0 and again.ran == []


def test_append_keeps_the_earlier_records_and_runs_every_case(tmp_path: Path) -> None:
    run(SquaresExperiment(tmp_path, numbers=(5,)))
    experiment = SquaresExperiment(tmp_path, numbers=(5, 6))
    run(experiment, earlier="append")
    assert experiment.ran == [5, 6]
    assert [r["n"] for r in saved(tmp_path)] == [5, 5, 6]


def test_replace_starts_the_results_file_anew(tmp_path: Path) -> None:
    run(SquaresExperiment(tmp_path, numbers=(7,)))
    run(SquaresExperiment(tmp_path, numbers=(8,)))
    assert [r["n"] for r in saved(tmp_path)] == [8]


def test_an_experiment_without_keys_cannot_resume(tmp_path: Path) -> None:
    class NoKeys(SquaresExperiment):
        def record_key(self, record: Square | SquareFailure) -> None:
            return None

    run(SquaresExperiment(tmp_path, numbers=(1,)))
    with pytest.raises(SimulTrainError, match="cannot resume"):
        run(NoKeys(tmp_path), earlier="resume")


def test_a_failed_case_is_its_failure_record_and_counted(tmp_path: Path) -> None:
    outcome = run(SquaresExperiment(tmp_path, bad=frozenset({2})))
    assert outcome.failed == 1
    assert saved(tmp_path)[1] == {"error": "2 is bad", "n": 2}
    assert (tmp_path / "squares.md").read_text().splitlines()[1] == "| 2 | 2 is bad |"


def test_an_unexpected_error_stops_the_run_and_keeps_what_was_saved(tmp_path: Path) -> None:
    experiment = SquaresExperiment(tmp_path, broken=frozenset({2}))
    with pytest.raises(ValueError, match="2 is broken"):
        run(experiment)
    assert experiment.ran == [1, 2] and saved(tmp_path) == [{"n": 1, "square": 1}]
    assert experiment.finished == 0


def test_on_a_pool_records_are_saved_in_case_order(tmp_path: Path) -> None:
    """Case 1 finishes only once another case's record was saved; the file still lists the
    cases in order, and the save before it held the others in order too."""
    saved_one = threading.Event()

    class Slow(SquaresExperiment):
        pool = "thread"

        def run_one(self, case: int) -> Square | SquareFailure:
            if case == 1:
                assert saved_one.wait(10)
            return super().run_one(case)

        def save(self, records: Sequence[Square | SquareFailure]) -> None:
            super().save(records)
            saved_one.set()

    experiment = Slow(tmp_path, numbers=(1, 2, 3, 4))
    outcome = run(experiment, workers=4)
    assert experiment.ran[-1] == 1 and not experiment.tables[0].startswith("| 1 |")
    assert [r["n"] for r in saved(tmp_path)] == [1, 2, 3, 4] == [r.n for r in outcome.records]


TOY_BAD: frozenset[int] = frozenset()


def toy_suite(options: SuiteOptions) -> SquaresExperiment:
    """A suite of its own, as a new module would add one: the fleet sizes squared."""
    return SquaresExperiment(options.out_dir, numbers=options.edge_counts or (1,), bad=TOY_BAD)


def test_a_suite_joins_simultrain_bench_with_one_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(suites.SUITES, "squares", (f"{__name__}:toy_suite", "n²"))
    assert suite("fleet").__name__ == "fleet_suite"
    result = CliRunner().invoke(
        app, ["bench", "--suite", "squares", "--fleet-edges", "3,4", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert [r["square"] for r in saved(tmp_path)] == [9, 16]
    assert "2/2 cases clean" in result.output
    # A failed case makes the command exit 1.
    monkeypatch.setattr(sys.modules[__name__], "TOY_BAD", frozenset({4}))
    result = CliRunner().invoke(
        app, ["bench", "--suite", "squares", "--fleet-edges", "3,4", "--out", str(tmp_path)]
    )
    assert result.exit_code == 1 and "1/2 cases clean" in result.output
    with pytest.raises(SimulTrainError, match="no suite 'nope'"):
        suite("nope")
