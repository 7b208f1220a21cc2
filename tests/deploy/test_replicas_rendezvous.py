"""The replicas' rendezvous as docker-compose.replicas.yml runs it, as local processes.

Compose gives scaled replicas no rank 0 to host the store, so the store runs on its own
(``python -m simultrain.cloud.replicas PORT``) and has its own health check; a replica that
cannot reach it must not report ready (docs/REPLICAS.md). Each defect here once let replicas
train masters of their own while every health check said all was well. The same paths run
under Docker in tests/deploy/test_engine.py (``make engine-test``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from deploy_checks import REPO_ROOT, ServiceProcess, free_port, load_compose

pytestmark = pytest.mark.integration

OVERRIDE = REPO_ROOT / "docker-compose.replicas.yml"
HEALTHCHECK = REPO_ROOT / "docker" / "healthcheck.py"


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for process in reversed(started):
        process.stop(30)
        process.reap()


def _clean_env() -> dict[str, str]:
    drop = ("SIMULTRAIN_", "MASTER_", "RANK", "WORLD_SIZE")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def _rendezvous_service() -> dict[str, Any]:
    service: dict[str, Any] = load_compose(OVERRIDE)["services"]["cloud-rendezvous"]
    return service


def _start_store(tmp_path: Path, port: int, processes: list[ServiceProcess]) -> str:
    command = _rendezvous_service()["command"]
    assert command[:3] == ["python", "-m", "simultrain.cloud.replicas"]
    store = ServiceProcess(
        "rendezvous", [sys.executable, *command[1:-1], str(port)], _clean_env(), tmp_path
    )
    processes.append(store)
    return store.wait_listening(60)


def test_the_rendezvous_service_serves_a_store_replicas_can_use(
    tmp_path: Path, processes: list[ServiceProcess]
) -> None:
    from torch.distributed import TCPStore

    port = free_port()
    assert _start_store(tmp_path, port, processes) == f"tcp://0.0.0.0:{port}"
    client = TCPStore(
        "127.0.0.1", port, is_master=False, wait_for_workers=False, timeout=timedelta(seconds=10)
    )
    client.set("g0/size", "2")
    assert client.get("g0/size") == b"2"
    assert client.add("g0/joined", 1) == 1 and client.add("g0/joined", 1) == 2


def test_the_rendezvous_has_its_own_health_check(
    tmp_path: Path, processes: list[ServiceProcess]
) -> None:
    service = _rendezvous_service()
    test = service.get("healthcheck", {}).get("test")
    # Without one it inherits the cloud image's, which asks port 8800: never healthy.
    assert test == ["CMD", "simultrain-healthcheck", "rendezvous"], test
    port = free_port()
    env = {**_clean_env(), **service["environment"], "MASTER_PORT": str(port)}
    check = [sys.executable, str(HEALTHCHECK), *test[2:]]
    down = subprocess.run(check, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert down.returncode == 1 and f"port {port} unreachable" in down.stderr
    _start_store(tmp_path, port, processes)
    up = subprocess.run(check, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert up.returncode == 0, up.stderr


def _readyz(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _replica_status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/v1/status", timeout=10) as response:
        replica: dict[str, Any] = json.load(response)["replica"]
        return replica


def _wait(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout_s} s")
        time.sleep(0.2)


@pytest.mark.timeout(240)
def test_a_replica_that_cannot_reach_its_group_is_not_ready(
    tmp_path: Path, processes: list[ServiceProcess]
) -> None:
    store_port = free_port()  # nothing listens there yet
    cloud = ServiceProcess(
        "cloud",
        [sys.executable, "-m", "simultrain.cloud"],
        {
            **_clean_env(),
            "SIMULTRAIN_CLOUD_PORT": "0",
            "SIMULTRAIN_CLOUD_REPLICA_TIMEOUT_S": "1",
            "SIMULTRAIN_CLOUD_REPLICA_JOIN_WINDOW_S": "0.2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(store_port),
            "WORLD_SIZE": "2",
        },
        tmp_path,
    )
    processes.append(cloud)
    url = cloud.wait_listening(120)
    _wait(lambda: _replica_status(url)["failures"] >= 3, 60, "three failed attempts to join")
    code, body = _readyz(url)
    assert code == 503 and body["error"]["code"] == "replica_group_unreachable", body
    message = body["error"]["message"]
    assert message.startswith(f"cannot reach the replica group at tcp://127.0.0.1:{store_port}")
    assert "\n" not in message
    # One line in the log for the whole outage, however many attempts failed.
    said = [line for line in cloud.stderr_tail(10_000).splitlines() if "replica group" in line]
    assert len(said) == 1 and "not ready" in said[0], said

    _start_store(tmp_path, store_port, processes)  # the group becomes reachable
    _wait(lambda: _readyz(url)[0] == 200, 90, "readiness once the store answers")
    replica = _replica_status(url)
    assert replica["problem"] is None and replica["size"] >= 1
