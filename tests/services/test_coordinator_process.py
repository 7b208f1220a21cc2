"""The coordinator as a real process: port 0, the LISTENING line, real HTTP, SIGTERM.

Waits on events (the LISTENING line, the process exit), each with a bound; never sleeps.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx
import pytest

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
ENROLLMENT_SECRET = "process-enrollment-secret"
TOKEN_KEY = "process-token-key-" + "x" * 32
ADMIN_TOKEN = "process-admin-token"


def _first_line(stream: IO[str], lines: queue.Queue[str]) -> None:
    lines.put(stream.readline())
    # Keep draining so the child never blocks on a full stdout pipe.
    for _ in stream:
        pass


@contextmanager
def coordinator_process(
    env: dict[str, str], stderr_path: Path
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    with stderr_path.open("a") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "simultrain.coordinator"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
        )
    assert process.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_first_line, args=(process.stdout, lines), daemon=True)
    reader.start()
    try:
        try:
            line = lines.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            pytest.fail(f"no LISTENING line within {START_TIMEOUT_S}s:\n{stderr_path.read_text()}")
        assert line.startswith("LISTENING http://127.0.0.1:"), (line, stderr_path.read_text())
        url = line.split()[1]
        assert not url.endswith(":0")
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)
        reader.join(timeout=STOP_TIMEOUT_S)
        process.stdout.close()


def test_coordinator_process_register_stop_restart(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMULTRAIN_COORDINATOR_")}
    env.update(
        {
            "SIMULTRAIN_COORDINATOR_HOST": "127.0.0.1",
            "SIMULTRAIN_COORDINATOR_PORT": "0",
            "SIMULTRAIN_COORDINATOR_DB_PATH": str(tmp_path / "coordinator.db"),
            "SIMULTRAIN_COORDINATOR_ENROLLMENT_SECRET": ENROLLMENT_SECRET,
            "SIMULTRAIN_COORDINATOR_TOKEN_KEY": TOKEN_KEY,
            "SIMULTRAIN_COORDINATOR_ADMIN_TOKEN": ADMIN_TOKEN,
            "SIMULTRAIN_COORDINATOR_ACCESS_LOG": "true",
        }
    )
    stderr_path = tmp_path / "coordinator.stderr"
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    with coordinator_process(env, stderr_path) as (url, process):
        with httpx.Client(base_url=url, timeout=10) as client:
            cloud = client.post("/v1/clouds", json={"url": "http://127.0.0.1:1"}, headers=admin)
            assert cloud.status_code == 201, cloud.text
            edge = client.post(
                "/v1/edges",
                json={"name": "pi"},
                headers={"X-Enrollment-Secret": ENROLLMENT_SECRET},
            )
            assert edge.status_code == 201, edge.text
            edge_id, token = edge.json()["edge_id"], edge.json()["token"]
            beat = client.post(
                f"/v1/edges/{edge_id}/heartbeat",
                json={"edge_version": 5, "step": 9},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert beat.status_code == 200, beat.text
            assert client.post("/v1/edges", json={}).status_code == 401
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=STOP_TIMEOUT_S) == 0, stderr_path.read_text()

    # A restarted coordinator on the same database still knows the edge and its versions.
    with coordinator_process(env, stderr_path) as (url, process):
        with httpx.Client(base_url=url, timeout=10) as client:
            (listed,) = client.get("/v1/edges").json()
            assert (listed["edge_id"], listed["edge_version"], listed["step"]) == (edge_id, 5, 9)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=STOP_TIMEOUT_S) == 0, stderr_path.read_text()

    logs = stderr_path.read_text()
    assert "POST /v1/edges" in logs  # access log goes to stderr, not stdout
    for secret in (ENROLLMENT_SECRET, TOKEN_KEY, ADMIN_TOKEN, token):
        assert secret not in logs


def test_invalid_settings_exit_2_without_echoing_secrets(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMULTRAIN_COORDINATOR_")}
    env.update(
        {
            "SIMULTRAIN_COORDINATOR_PORT": "0",
            "SIMULTRAIN_COORDINATOR_ENROLLMENT_SECRET": "e",
            "SIMULTRAIN_COORDINATOR_TOKEN_KEY": "short-secret-key",
            "SIMULTRAIN_COORDINATOR_ADMIN_TOKEN": "a",
        }
    )
    result = subprocess.run(
        [sys.executable, "-m", "simultrain.coordinator"],
        capture_output=True,
        text=True,
        env=env,
        timeout=START_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 2
    assert "SIMULTRAIN_COORDINATOR_TOKEN_KEY" in result.stderr
    assert "short-secret-key" not in result.stderr + result.stdout
    assert "LISTENING" not in result.stdout
