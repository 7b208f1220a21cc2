"""The three services as real OS processes on 127.0.0.1, port 0, with real WebSocket edges."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from simultrain.cloud.flow import AUTO_MAX_IN_FLIGHT
from simultrain.demo import _coordinator_env
from simultrain.procs import ServiceGroup, ServiceProcess
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.driver import run_in_process

pytestmark = pytest.mark.integration


@dataclass
class Topology:
    group: ServiceGroup
    coordinator_url: str
    cloud_url: str
    cloud: ServiceProcess
    tmp: Path

    def edge(self, index: int, count: int, steps: int, **env: str) -> ServiceProcess:
        return self.group.start(
            f"edge-{index}",
            "simultrain.edge",
            {
                "SIMULTRAIN_EDGE_COORDINATOR_URL": self.coordinator_url,
                "SIMULTRAIN_EDGE_SHARD_INDEX": str(index),
                "SIMULTRAIN_EDGE_SHARD_COUNT": str(count),
                "SIMULTRAIN_EDGE_STEPS": str(steps),
                "SIMULTRAIN_EDGE_LOG_LEVEL": "info",
                **env,
            },
        )

    def status(self) -> dict[str, Any]:
        return httpx.get(f"{self.cloud_url}/v1/status", timeout=30).json()

    def evaluate(self) -> dict[str, Any]:
        return httpx.get(f"{self.cloud_url}/v1/eval", timeout=60).json()


def start_topology(tmp: Path, run: RunConfig, **cloud_env: str) -> Iterator[Topology]:
    group = ServiceGroup(tmp / "logs")
    try:
        coordinator = group.start(
            "coordinator", "simultrain.coordinator", _coordinator_env(run, tmp / "coordinator.db")
        )
        coordinator_url = coordinator.wait_listening()
        cloud = group.start(
            "cloud",
            "simultrain.cloud",
            {
                "SIMULTRAIN_CLOUD_HOST": "127.0.0.1",
                "SIMULTRAIN_CLOUD_PORT": "0",
                "SIMULTRAIN_CLOUD_COORDINATOR_URL": coordinator_url,
                "SIMULTRAIN_CLOUD_HEARTBEAT_INTERVAL_S": "0.5",
                **cloud_env,
            },
        )
        cloud_url = cloud.wait_listening(timeout_s=120)
        yield Topology(group, coordinator_url, cloud_url, cloud, tmp)
    finally:
        codes = group.stop_all()
        # Every service stops cleanly on SIGTERM (edges have exited by then).
        assert all(code == 0 for name, code in codes.items() if not name.startswith("edge")), codes


def done_report(edge: ServiceProcess, timeout_s: float = 300) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(edge.wait_for_line("DONE ", timeout_s=timeout_s))
    assert edge.popen.wait(timeout=60) == 0
    return report


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    yield from start_topology(tmp_path, RunConfig())


def test_one_edge_trains_and_the_cloud_counts_exactly_what_it_sent(topology: Topology) -> None:
    report = done_report(topology.edge(0, 1, steps=120))
    status = topology.status()
    session = status["edges"][report["edge_id"]]
    assert report["steps"] == 120 and report["samples_sent"] == 120 * 32
    assert session["samples_received"] == session["samples_applied"] == report["samples_sent"]
    assert session["highest_applied_seq"] == 119 and session["duplicates_dropped"] == 0
    assert status["master_version"] == 2 * 120
    # window = auto: the cloud's credits bound the batches in flight (PROTOCOL.md §6.7).
    assert RunConfig().window == "auto"
    assert 0 < status["staleness"]["max"] < AUTO_MAX_IN_FLIGHT
    # The coordinator saw the edge and its version as last reported.
    edges = httpx.get(f"{topology.coordinator_url}/v1/edges", timeout=10).json()
    assert [e["edge_id"] for e in edges] == [report["edge_id"]]


def test_two_edges_train_against_one_cloud_at_once(topology: Topology) -> None:
    edges = [topology.edge(i, 2, steps=80) for i in range(2)]
    reports = [done_report(e) for e in edges]
    status = topology.status()
    assert {r["edge_id"] for r in reports} == set(status["edges"])
    for report in reports:
        session = status["edges"][report["edge_id"]]
        assert session["samples_applied"] == report["samples_sent"] == 80 * 32
        assert session["highest_applied_seq"] == 79
    assert status["master_version"] == 2 * 2 * 80
    assert status["staleness"]["dropped"] == 0


# A three-seed accuracy study (about 3 minutes): outside the default suite, `make long-tests`.
@pytest.mark.bench
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_services_reach_centralized_accuracy_on_the_same_samples(tmp_path: Path) -> None:
    """The real services, pipelined, against centralized training in one process on
    the same batches in the same order and the same initialisation.

    One run's held-out accuracy moves by about ±1.5 points with the seed on these 773
    windows (docs/DESIGN.md §10), and a pipelined run through real processes also with
    timing; so the comparison is of means over three seeds, each pair on the same samples.
    """
    run = RunConfig()
    steps = 1500
    ours, theirs = [], []
    for seed in (0, 1, 2):
        centralized = run_in_process(RunConfig(mode="centralized", steps=steps, seed=seed))
        for topo in start_topology(tmp_path / f"seed{seed}", RunConfig(seed=seed)):
            report = done_report(topo.edge(0, 1, steps=steps), timeout_s=600)
            assert report["samples_sent"] == centralized.samples
            ours.append(topo.evaluate()["accuracy"])
        theirs.append(centralized.accuracy)
    mean_ours, mean_theirs = sum(ours) / 3, sum(theirs) / 3
    print(
        f"services ({run.mode}, W={run.window}): {ours} mean {mean_ours:.4f}; "
        f"centralized: {theirs} mean {mean_theirs:.4f}"
    )
    # "Reach centralized accuracy within 1 point": not more than 1 point below. Being above
    # it is the seed-and-timing noise the mean is there to damp, not a failure.
    assert mean_ours >= mean_theirs - 0.01
