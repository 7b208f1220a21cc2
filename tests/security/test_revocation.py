"""Removing an edge cuts it off now, not when its token expires — with real processes.

Coordinator, cloud and an edge agent with authentication on. ``DELETE /v1/edges/{id}`` at
the coordinator revokes the edge's tokens; the cloud learns it from its next heartbeat reply,
closes the edge's live session with 1008 and refuses the token it holds; the agent's own
next heartbeat is answered 404. Either way the agent stops while its token has most of an
hour left.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from simultrain.demo import _coordinator_env
from simultrain.procs import ServiceGroup
from simultrain.shared.training.config import RunConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ENROLL = "enrollment-secret-for-revocation-tests"
KEY = "token-key-for-revocation-tests-0123456789"
ADMIN = "admin-token-for-revocation-tests-012345"


def test_a_removed_edge_is_cut_off_within_a_heartbeat(tmp_path: Path) -> None:
    group = ServiceGroup(tmp_path / "logs")
    try:
        coordinator = group.start(
            "coordinator",
            "simultrain.coordinator",
            {
                **_coordinator_env(RunConfig(), tmp_path / "coordinator.db"),
                "SIMULTRAIN_COORDINATOR_ENROLLMENT_SECRET": ENROLL,
                "SIMULTRAIN_COORDINATOR_TOKEN_KEY": KEY,
                "SIMULTRAIN_COORDINATOR_ADMIN_TOKEN": ADMIN,
                "SIMULTRAIN_COORDINATOR_TOKEN_TTL_S": "3600",
            },
        )
        coordinator_url = coordinator.wait_listening()
        cloud = group.start(
            "cloud",
            "simultrain.cloud",
            {
                "SIMULTRAIN_CLOUD_PORT": "0",
                "SIMULTRAIN_CLOUD_COORDINATOR_URL": coordinator_url,
                "SIMULTRAIN_CLOUD_HEARTBEAT_INTERVAL_S": "0.5",
                "SIMULTRAIN_CLOUD_TOKEN_KEY": KEY,
                "SIMULTRAIN_CLOUD_ADMIN_TOKEN": ADMIN,
            },
        )
        cloud_url = cloud.wait_listening(timeout_s=120)
        edge = group.start(
            "edge",
            "simultrain.edge",
            {
                "SIMULTRAIN_EDGE_COORDINATOR_URL": coordinator_url,
                "SIMULTRAIN_EDGE_ENROLLMENT_SECRET": ENROLL,
                "SIMULTRAIN_EDGE_STEPS": "1000000",  # trains until it is cut off
                "SIMULTRAIN_EDGE_LOG_LEVEL": "info",
            },
        )
        pause = threading.Event()
        deadline = time.monotonic() + 120
        edges: dict[str, dict[str, object]] = {}
        while not any(e.get("samples_applied", 0) for e in edges.values()):  # type: ignore[call-overload]
            assert time.monotonic() < deadline, "the edge never trained"
            pause.wait(0.1)
            edges = httpx.get(f"{cloud_url}/v1/status", timeout=10).json()["edges"]
        (edge_id,) = edges
        removed = httpx.delete(
            f"{coordinator_url}/v1/edges/{edge_id}",
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=10,
        )
        assert removed.status_code == 204
        # Whichever comes first ends the agent at once (exit 1, the reason in its log)
        # instead of retrying a revoked token: the cloud closing the session (its heartbeat
        # reply listed the revocation) or the agent's own heartbeat (404 unknown_edge).
        assert edge.popen.wait(timeout=60) == 1
        assert edge.log_path is not None
        log = edge.log_path.read_text()
        assert (
            "closed by the cloud: 1008 token revoked" in log
            or "it was removed (its tokens are revoked)" in log
        ), log[-2000:]
        status = httpx.get(f"{cloud_url}/v1/status", timeout=10).json()
        assert status["edges"][edge_id]["connected"] is False
    finally:
        codes = group.stop_all()
    assert codes.get("cloud") == 0 and codes.get("coordinator") == 0, codes
