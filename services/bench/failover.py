"""``simultrain bench --suite control-plane --failover``: how fast edges move off a dead cloud.

Real processes, training: a coordinator (SQLite, its default heartbeat interval and timeout),
cloud A, ``edges`` edge agents streaming with A, and cloud B standing by. Then A is killed
with SIGKILL — its sockets break, it says nothing to the coordinator — and the bench polls
(every 0.1 s) until each edge streams with B. Per edge it reports the seconds from the kill to

- **reassigned**: the coordinator lists the edge on another cloud (``GET /v1/edges``);
- **streaming**: cloud B has a live session with it and has applied a batch of it since.

``coordinator_tree``: run all three services from another checkout, to measure before a
change. The same machinery as the control-plane load test (``control_plane.py``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from simultrain.bench.harness import Experiment, SuiteOptions
from simultrain.bench.records import FailoverFailure, FailoverFile, FailoverMeta, FailoverRecord
from simultrain.procs import ServiceGroup, ServiceProcess
from simultrain.shared.errors import SimulTrainError

from .control_plane import _source_root

__all__ = ["FailoverOptions", "FailoverSuite", "failover_suite"]


@dataclass(frozen=True)
class FailoverOptions:
    out_dir: Path = Path("bench/results/control-plane")
    edges: int = 2
    runs: int = 3
    coordinator_tree: Path | None = None
    label: str = ""
    log_dir: Path | None = None
    command: str = ""
    limit_s: float = 120.0


def _get(url: str) -> Any:
    return httpx.get(url, timeout=10).json()


def _wait(condition: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while True:
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError, TypeError):
            if condition():
                return
        if time.monotonic() > deadline:
            raise SimulTrainError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        pause.wait(0.1)


@contextlib.contextmanager
def _cluster(options: FailoverOptions, work: Path) -> Iterator[dict[str, Any]]:
    base: dict[str, str] = {}
    if options.coordinator_tree is not None:
        base["PYTHONPATH"] = str(_source_root(options.coordinator_tree, work / "source"))
    group = ServiceGroup(options.log_dir or work / "logs")
    try:
        coordinator = group.start(
            "coordinator",
            "simultrain.coordinator",
            {
                **base,
                "SIMULTRAIN_COORDINATOR_PORT": "0",
                "SIMULTRAIN_COORDINATOR_DB_PATH": str(work / "coordinator.db"),
                "SIMULTRAIN_COORDINATOR_LOG_LEVEL": "warning",
                "SIMULTRAIN_COORDINATOR_EDGES": str(options.edges),
            },
        )
        coordinator_url = coordinator.wait_listening(timeout_s=120)

        def cloud(name: str) -> ServiceProcess:
            return group.start(
                name,
                "simultrain.cloud",
                {
                    **base,
                    "SIMULTRAIN_CLOUD_PORT": "0",
                    "SIMULTRAIN_CLOUD_COORDINATOR_URL": coordinator_url,
                    "SIMULTRAIN_CLOUD_CHECKPOINT_DIR": str(work / name),
                    "SIMULTRAIN_CLOUD_EVAL_INTERVAL_S": "0",
                    "SIMULTRAIN_CLOUD_LOG_LEVEL": "warning",
                },
            )

        yield {"group": group, "coordinator": coordinator_url, "cloud": cloud, "base": base}
    finally:
        group.stop_all(timeout_s=30)


def _one_run(options: FailoverOptions, run: int) -> FailoverRecord:
    with (
        tempfile.TemporaryDirectory(prefix="simultrain-failover-") as tmp,
        _cluster(options, Path(tmp)) as cluster,
    ):
        coordinator_url: str = cluster["coordinator"]
        cloud_a = cluster["cloud"]("cloud-a")
        a_url = cloud_a.wait_listening(timeout_s=180)
        _wait(lambda: len(_get(f"{coordinator_url}/v1/clouds")) == 1, "cloud A", 60)
        group: ServiceGroup = cluster["group"]
        for index in range(options.edges):
            group.start(
                f"edge-{index}",
                "simultrain.edge",
                {
                    **cluster["base"],
                    "SIMULTRAIN_EDGE_COORDINATOR_URL": coordinator_url,
                    "SIMULTRAIN_EDGE_NAME": f"edge-{index}",
                    "SIMULTRAIN_EDGE_SHARD_INDEX": str(index),
                    "SIMULTRAIN_EDGE_SHARD_COUNT": str(options.edges),
                    "SIMULTRAIN_EDGE_STEPS": "0",
                    "SIMULTRAIN_EDGE_RECONNECT_MAX_S": "1.0",
                    "SIMULTRAIN_EDGE_LOG_LEVEL": "warning",
                },
            )

        def streaming_with(url: str, edge_ids: list[str], after: dict[str, int]) -> bool:
            sessions = _get(f"{url}/v1/status")["edges"]
            return all(
                e in sessions
                and sessions[e]["connected"]
                and sessions[e]["steps_applied"] > after.get(e, 0)
                for e in edge_ids
            )

        _wait(lambda: len(_get(f"{coordinator_url}/v1/edges")) == options.edges, "edges", 300)
        edge_ids = [e["edge_id"] for e in _get(f"{coordinator_url}/v1/edges")]
        _wait(lambda: streaming_with(a_url, edge_ids, {}), "the edges streaming with A", 300)
        cloud_b = cluster["cloud"]("cloud-b")
        b_url = cloud_b.wait_listening(timeout_s=180)
        _wait(lambda: len(_get(f"{coordinator_url}/v1/clouds")) == 2, "cloud B", 60)
        a_id = _get(f"{coordinator_url}/v1/edges")[0]["cloud_id"]
        killed = time.monotonic()
        cloud_a.kill()  # SIGKILL: no drain, no word to the coordinator
        reassigned: dict[str, float] = {}
        streaming: dict[str, float] = {}
        deadline = killed + options.limit_s
        pause = threading.Event()
        while len(streaming) < len(edge_ids) and time.monotonic() < deadline:
            now = time.monotonic()
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                for edge in _get(f"{coordinator_url}/v1/edges"):
                    if edge["cloud_id"] != a_id:
                        reassigned.setdefault(edge["edge_id"], now - killed)
                sessions = _get(f"{b_url}/v1/status")["edges"]
                for edge_id in edge_ids:
                    session = sessions.get(edge_id)
                    if session and session["connected"] and session["steps_applied"] > 0:
                        streaming.setdefault(edge_id, now - killed)
            pause.wait(0.1)
        error = None
        if len(streaming) < len(edge_ids):
            error = f"{len(streaming)} of {len(edge_ids)} edges streaming with B after the limit"
        return FailoverRecord(
            label=options.label,
            run=run,
            edges=len(edge_ids),
            reassigned_s=sorted(round(s, 2) for s in reassigned.values()),
            streaming_s=sorted(round(s, 2) for s in streaming.values()),
            error=error,
        )


class FailoverSuite(Experiment[int, FailoverRecord | FailoverFailure]):
    """``runs`` kills of a cloud in turn; ``failover.json`` is rewritten after each."""

    failures = (SimulTrainError, httpx.HTTPError, OSError)

    def __init__(self, options: FailoverOptions) -> None:
        self.options = options

    def cases(self) -> list[int]:
        return list(range(self.options.runs))

    def run_one(self, case: int) -> FailoverRecord:
        return _one_run(self.options, case)

    def failed(self, case: int, exc: BaseException) -> FailoverFailure:
        return FailoverFailure(
            label=self.options.label, run=case, error=f"{type(exc).__name__}: {exc}"
        )

    def describe(self, case: int) -> str:
        return f"failover: run {case + 1} of {self.options.runs}"

    def summary(self, record: FailoverRecord | FailoverFailure) -> str:
        if isinstance(record, FailoverFailure):
            return f"error: {record.error}"
        return f"reassigned after {record.reassigned_s} s, streaming after {record.streaming_s} s"

    def clean(self, record: FailoverRecord | FailoverFailure) -> bool:
        return isinstance(record, FailoverRecord) and record.error is None

    def save(self, records: Sequence[FailoverRecord | FailoverFailure]) -> None:
        options = self.options
        tree = str(options.coordinator_tree) if options.coordinator_tree else None
        FailoverFile(
            meta=FailoverMeta(
                command=options.command,
                label=options.label,
                cpus=os.cpu_count(),
                coordinator_tree=tree,
            ),
            records=list(records),
        ).write(options.out_dir / "failover.json")


def failover_suite(options: SuiteOptions) -> FailoverSuite:
    """``simultrain bench --suite control-plane --failover`` (or ``--suite
    control-plane-failover``): ``--coordinator-tree``, ``--label``; the results go to
    ``bench/results/control-plane`` unless ``--out`` says otherwise."""
    defaults = FailoverOptions()
    return FailoverSuite(
        FailoverOptions(
            out_dir=defaults.out_dir
            if options.out_dir == Path("bench/results")
            else options.out_dir,
            coordinator_tree=options.coordinator_tree,
            label=options.label,
            log_dir=options.log_dir,
            command=options.command,
        )
    )
