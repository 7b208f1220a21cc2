"""One shape for every experiment: cases → ``run_one`` → a typed record → render.

An :class:`Experiment` lists its cases, runs one of them (``run_one``) into a
:class:`~simultrain.bench.records.Record`, and keeps its results file: ``load`` reads what an
earlier run left, ``save`` writes the records and their tables after every case, ``finish``
adds what only a finished run has (plots, a report). :func:`run` does the same for every
experiment: keep or skip what the results file holds, run the other cases one by one or on a
pool, save after each, and count the cases that failed.

The experiments: the benchmark's suites (``bench.py``), the fleet and straggler suites
(``fleet.py``), the fleet parity study (``fleet_parity.py``), the staleness study
(``study.py``) and the in-process replica reproduction (``replicas_inprocess.py``). A suite
that ``simultrain bench --suite NAME`` runs on its own joins
:data:`~simultrain.bench.suites.SUITES` with one entry.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar

from simultrain.bench.records import CaseFailure, Record
from simultrain.bench.suites import SUITES
from simultrain.shared.errors import SimulTrainError

__all__ = [
    "Earlier",
    "Experiment",
    "Lines",
    "Outcome",
    "Progress",
    "SuiteOptions",
    "run",
    "suite",
]

CaseT = TypeVar("CaseT")
RecordT = TypeVar("RecordT", bound=Record)

Earlier = Literal["replace", "append", "resume"]
"""What becomes of the records a results file already holds: ``replace`` starts it anew,
``append`` keeps them and runs every case, ``resume`` keeps them and skips their cases."""


class Experiment(ABC, Generic[CaseT, RecordT]):
    """Cases, how to run one, and the results file that keeps the records."""

    #: Exceptions that fail one case (``failed`` decides its record) and not the run.
    failures: tuple[type[BaseException], ...] = (SimulTrainError,)
    #: With ``workers`` > 1: processes (spawned: a forked child of a process with torch's
    #: threads may deadlock) or threads (a case that is itself processes).
    pool: Literal["process", "thread"] = "process"

    @abstractmethod
    def cases(self) -> Sequence[CaseT]:
        """Every case, in the order they run (and their records are saved)."""

    @abstractmethod
    def run_one(self, case: CaseT) -> RecordT:
        """Run ``case``; its record."""

    def case_key(self, case: CaseT) -> Hashable:
        """What identifies a case across runs (``resume``); the case itself by default."""
        return case

    def record_key(self, record: RecordT) -> Hashable | None:
        """The key of the case ``record`` is of; ``None``: resume is not supported."""
        return None

    def failed(self, case: CaseT, exc: BaseException) -> RecordT | None:
        """The record of a case that raised one of ``failures``; ``None``: no record."""
        return None

    def alone(self, case: CaseT) -> bool:
        """Whether ``case`` runs after the others, one at a time, whatever the workers."""
        return False

    def describe(self, case: CaseT) -> str:
        """The case in a progress line."""
        return str(case)

    def summary(self, record: RecordT) -> str:
        """A finished case in a progress line."""
        return ""

    def clean(self, record: RecordT) -> bool:
        """Whether ``record`` is a case that went as it should (the exit status counts the
        others): not a failure record, no defect the case itself measured."""
        return not isinstance(record, CaseFailure)

    def load(self) -> list[RecordT]:
        """The records the results file holds; none if there is none."""
        return []

    @abstractmethod
    def save(self, records: Sequence[RecordT]) -> None:
        """Write the results file (and its tables) with ``records``; after every case."""

    def finish(self, records: Sequence[RecordT]) -> None:
        """After the last case: what only a whole run writes (plots, a report)."""
        self.save(records)


class Progress(Protocol):
    """What :func:`run` tells about each case."""

    def started(self, description: str, index: int, total: int) -> None: ...

    def finished(self, description: str, summary: str, index: int, total: int) -> None: ...

    def failed(self, description: str, error: BaseException, index: int, total: int) -> None: ...


@dataclass
class Lines:
    """Progress as plain lines, through ``echo`` (``print`` by default)."""

    echo: Callable[[str], None] = print

    def started(self, description: str, index: int, total: int) -> None:
        self.echo(f"[{index}/{total}] {description} …")

    def finished(self, description: str, summary: str, index: int, total: int) -> None:
        self.echo(f"[{index}/{total}] {description}: {summary or 'done'}")

    def failed(self, description: str, error: BaseException, index: int, total: int) -> None:
        self.echo(f"[{index}/{total}] {description} FAILED: {type(error).__name__}: {error}")


@dataclass
class Outcome(Generic[RecordT]):
    records: list[RecordT]  # the results file's: the earlier ones kept, then this run's
    ran: int  # cases run now
    failed: int  # of those, cases that raised one of the experiment's failures
    skipped: int = 0  # cases the results file held (resume)


def run(
    experiment: Experiment[CaseT, RecordT],
    *,
    earlier: Earlier = "replace",
    workers: int = 1,
    progress: Progress | None = None,
) -> Outcome[RecordT]:
    """Run the experiment's cases (those its results file lacks, with ``resume``).

    ``workers`` > 1 runs that many cases at once on the experiment's pool, the cases it
    wants ``alone`` afterwards one at a time; records are saved in case order whatever order
    they finish in. An exception outside ``experiment.failures`` stops the run; what was
    saved stays.
    """
    kept = experiment.load() if earlier != "replace" else []
    done: set[Hashable] = set()
    if earlier == "resume":
        keys = [experiment.record_key(r) for r in kept]
        if any(k is None for k in keys):
            raise SimulTrainError(f"{type(experiment).__name__} cannot resume")
        done = set(keys)
    cases = list(experiment.cases())
    todo = [(i, c) for i, c in enumerate(cases) if experiment.case_key(c) not in done]
    total = len(todo)
    report = progress or Lines()
    new: dict[int, RecordT] = {}
    failed = 0
    begun = iter(range(1, total + 1))

    def started(case: CaseT) -> None:
        report.started(experiment.describe(case), next(begun), total)

    for count, (index, case, outcome) in enumerate(_execute(experiment, todo, workers, started), 1):
        description = experiment.describe(case)
        if isinstance(outcome, BaseException):
            failed += 1
            report.failed(description, outcome, count, total)
            record = experiment.failed(case, outcome)
            if record is None:
                continue
        else:
            record = outcome
            report.finished(description, experiment.summary(record), count, total)
        new[index] = record
        experiment.save([*kept, *(new[i] for i in sorted(new))])
    records = [*kept, *(new[i] for i in sorted(new))]
    experiment.finish(records)
    return Outcome(records, ran=total, failed=failed, skipped=len(cases) - total)


def _execute(
    experiment: Experiment[CaseT, RecordT],
    todo: list[tuple[int, CaseT]],
    workers: int,
    started: Callable[[CaseT], None],
) -> Iterator[tuple[int, CaseT, RecordT | BaseException]]:
    """Each case with its record, or the exception (one of the experiment's ``failures``) it
    raised, as they finish; any other exception ends the run. ``started`` is told of each
    case as it starts (on a pool: as it is handed to the pool)."""
    if workers <= 1:
        for index, case in todo:
            started(case)
            outcome: RecordT | BaseException
            try:
                outcome = experiment.run_one(case)
            except experiment.failures as exc:
                outcome = exc
            yield index, case, outcome
        return
    together = [(i, c) for i, c in todo if not experiment.alone(c)]
    alone = [(i, c) for i, c in todo if experiment.alone(c)]
    for batch, width in ((together, workers), (alone, 1)):
        if not batch:
            continue
        with _pool(experiment.pool, width) as pool:
            futures: dict[Future[RecordT], tuple[int, CaseT]] = {}
            for index, case in batch:
                started(case)
                futures[pool.submit(experiment.run_one, case)] = (index, case)
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in sorted(finished, key=lambda f: futures[f][0]):
                    index, case = futures[future]
                    error = future.exception()
                    if error is not None and not isinstance(error, experiment.failures):
                        raise error
                    yield index, case, error if error is not None else future.result()


def _pool(kind: Literal["process", "thread"], workers: int) -> Executor:
    if kind == "thread":
        return ThreadPoolExecutor(max_workers=workers)
    return ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))


# --- suites that `simultrain bench --suite NAME` runs on their own ---------------------------


@dataclass(frozen=True)
class SuiteOptions:
    """The ``simultrain bench`` options a suite of its own may take (each ``None`` unset)."""

    out_dir: Path = Path("bench/results")
    quick: bool = False
    modes: tuple[str, ...] | None = None
    edge_counts: tuple[int, ...] | None = None  # --fleet-edges
    duration_s: float | None = None
    round_deadline_s: float | None = None
    slowdown: float | None = None
    log_dir: Path | None = None
    stores: tuple[str, ...] | None = None  # --stores (control plane)
    coordinator_tree: Path | None = None  # --coordinator-tree (control plane)
    label: str = ""  # --label (control plane)
    command: str = ""


SuiteFactory = Callable[[SuiteOptions], "Experiment[Any, Any]"]


def suite(name: str) -> SuiteFactory:
    """The factory of the suite ``name`` (:data:`~simultrain.bench.suites.SUITES`)."""
    try:
        target, _ = SUITES[name]
    except KeyError:
        known = ", ".join(sorted(SUITES))
        raise SimulTrainError(f"no suite {name!r} runs alone; choose from {known}") from None
    module, _, function = target.partition(":")
    factory: SuiteFactory = getattr(importlib.import_module(module), function)
    return factory
