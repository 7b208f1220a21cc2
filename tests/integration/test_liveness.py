"""Liveness without false deaths: slow edges stay alive, systemd hears from the agent, and a
graceful cloud restart hands edges over at once."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from simultrain.shared.training.config import RunConfig

from .test_faults import Cluster, applied, exactly_once, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(600)
def test_a_long_edge_step_never_looks_like_a_dead_edge(tmp_path: Path) -> None:
    """Each edge step is stretched to seconds, longer than the heartbeat timeout: the
    heartbeat runs beside compute, so the coordinator never marks the edge down."""
    run = RunConfig()
    cluster = Cluster(tmp_path, run)
    try:
        # Restart the coordinator with a 2 s timeout (the fixture's default is 10 s).
        cluster.coordinator.stop()
        cluster.group.processes.remove(cluster.coordinator)
        env_timeout = {"SIMULTRAIN_COORDINATOR_HEARTBEAT_TIMEOUT_S": "2.0"}
        from simultrain.demo import _coordinator_env

        env = _coordinator_env(run, tmp_path / "coordinator.db")
        env["SIMULTRAIN_COORDINATOR_PORT"] = str(cluster.coordinator_port)
        env["SIMULTRAIN_COORDINATOR_HEARTBEAT_INTERVAL_S"] = "0.2"
        cluster.coordinator = cluster.group.start(
            "coordinator-2", "simultrain.coordinator", {**env, **env_timeout}
        )
        cluster.coordinator.wait_listening()
        edge = cluster.group.start(
            "slow-edge",
            "simultrain.edge",
            {
                "SIMULTRAIN_EDGE_COORDINATOR_URL": cluster.coordinator_url,
                "SIMULTRAIN_EDGE_STEPS": "2",
                "SIMULTRAIN_EDGE_SLOWDOWN": "900",  # each compute section 900× longer: seconds
                "SIMULTRAIN_EDGE_HEARTBEAT_INTERVAL_S": "0.2",
            },
        )
        statuses: list[str] = []

        def edge_seen_down() -> bool:
            edges = httpx.get(f"{cluster.coordinator_url}/v1/edges", timeout=10).json()
            statuses.extend(e["status"] for e in edges)
            return edge.popen.poll() is not None

        wait_until(edge_seen_down, timeout_s=500, what="the slow edge to finish")
        report = json.loads(edge.wait_for_line("DONE ", timeout_s=30))
        print(
            f"longest compute section {report['longest_compute_s']:.1f} s, heartbeat timeout 2 s, "
            f"heartbeats {report['heartbeats']} ok / {report['heartbeat_failures']} failed, "
            f"statuses seen {sorted(set(statuses))}"
        )
        assert report["longest_compute_s"] > 2.0  # a step really was longer than the timeout
        assert report["heartbeats"] > 0 and report["heartbeat_failures"] == 0
        # Up throughout, then finished (its two steps done): never down.
        assert statuses and set(statuses) <= {"up", "finished"} and statuses[0] == "up"
    finally:
        cluster.stop()


def test_the_agent_tells_systemd_it_is_ready_and_alive(tmp_path: Path) -> None:
    """Type=notify and WatchdogSec=: READY=1 once streaming, WATCHDOG=1 while running."""
    cluster = Cluster(tmp_path, RunConfig())
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(60)
    try:
        edge = cluster.group.start(
            "edge",
            "simultrain.edge",
            {
                "SIMULTRAIN_EDGE_COORDINATOR_URL": cluster.coordinator_url,
                "SIMULTRAIN_EDGE_STEPS": "50",
                "NOTIFY_SOCKET": address,
                "WATCHDOG_USEC": "400000",
            },
        )
        messages: list[str] = []
        while not ("READY=1" in "\n".join(messages) and "WATCHDOG=1" in messages):
            messages.append(sock.recv(4096).decode())
        edge.wait_for_line("DONE ", timeout_s=120)
    finally:
        sock.close()
        cluster.stop()
    assert any(m.startswith("READY=1") for m in messages)


def test_graceful_cloud_restart_closes_with_1012_and_the_edge_carries_on(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, RunConfig())
    try:
        edge = cluster.start_edge(SIMULTRAIN_EDGE_LOG_LEVEL="info")
        wait_until(lambda: applied(cluster.cloud_url) >= 3200, timeout_s=300, what="progress")
        assert cluster.cloud.stop() == 0  # SIGTERM: drain, checkpoint, close sessions
        cluster.cloud = cluster.start_cloud()
        report, final = cluster.finish(edge)
    finally:
        cluster.stop()
    exactly_once("graceful restart", 1, report, final)
    log = (tmp_path / "logs" / "edge.log").read_text()
    assert "1012" in log  # "service restart": the edge knew to come back at once


def test_sigterm_leaves_within_the_drain_timeout_when_the_cloud_is_gone(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, RunConfig())
    try:
        edge = cluster.start_edge(SIMULTRAIN_EDGE_STEPS="0", SIMULTRAIN_EDGE_DRAIN_TIMEOUT_S="2")
        wait_until(lambda: applied(cluster.cloud_url) >= 640, timeout_s=300, what="progress")
        cluster.cloud.kill()
        started = time.monotonic()
        assert edge.stop(timeout_s=60) == 0  # SIGTERM; a SIGKILL after 60 s would fail this
        report = json.loads(edge.wait_for_line("DONE ", timeout_s=5))
        print(
            f"left {time.monotonic() - started:.1f} s after SIGTERM "
            f"having produced {report['steps']} batches"
        )
    finally:
        cluster.stop()
