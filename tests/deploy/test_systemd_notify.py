"""The edge agent keeps the promises simultrain-edge.service makes for it (Type=notify).

With ``Type=notify`` systemd waits for ``READY=1`` and, with ``WatchdogSec=``, kills the
agent unless ``WATCHDOG=1`` keeps arriving; ``STOPPING=1`` tells it the agent is draining.
No systemd runs here, so this test plays its part: it opens the notification socket, starts
the agent with the environment the unit gives it (its ``Environment=`` lines with ``%S`` and
``%d`` expanded, ``NOTIFY_SOCKET``, ``WATCHDOG_USEC``) against a cloud on 127.0.0.1, reads
the datagrams, and stops the agent as ``systemctl stop`` would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_checks import REPO_ROOT, ServiceProcess, unit_settings

UNIT = REPO_ROOT / "deploy" / "systemd" / "simultrain-edge.service"
WATCHDOG_USEC = 200_000  # the mechanism, faster than the unit's 60 s


def _unit_environment(state: Path, credentials: Path) -> dict[str, str]:
    """The unit's Environment= lines with systemd's %S (state root) and %d (credentials)."""
    env: dict[str, str] = {}
    for assignment in unit_settings(UNIT.read_text())["Environment"]:
        key, _, value = assignment.partition("=")
        env[key] = value.replace("%S", str(state)).replace("%d", str(credentials))
    return env


class _NotifySocket:
    """systemd's end of NOTIFY_SOCKET: the datagrams the agent sends, as they arrive."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[str] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._done.is_set():
            try:
                self.messages.append(self._sock.recv(4096).decode())
            except TimeoutError:
                continue

    def wait_for(self, line: str, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for i, message in enumerate(list(self.messages)):
                if line in message.split("\n"):
                    return i
            time.sleep(0.05)
        pytest.fail(f"no {line} within {timeout_s} s: {self.messages[:5]}")

    def close(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)
        self._sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[_NotifySocket]:
    receiver = _NotifySocket(tmp_path / "notify.sock")
    yield receiver
    receiver.close()


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_agent_signals_ready_feeds_the_watchdog_and_says_when_it_stops(
    tmp_path: Path, notify_socket: _NotifySocket
) -> None:
    """READY=1 once streaming, WATCHDOG=1 while alive; `systemctl stop` sends SIGTERM: the
    agent says STOPPING=1 at once, drains, and exits 0."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SIMULTRAIN_")}
    cloud_dir = tmp_path / "cloud"
    cloud_dir.mkdir()
    cloud = ServiceProcess(
        "cloud",
        [sys.executable, "-m", "simultrain.cloud"],
        {**clean, "SIMULTRAIN_CLOUD_PORT": "0"},
        cloud_dir,
    )
    try:
        url = cloud.wait_listening(60)
        state, credentials = tmp_path / "state", tmp_path / "credentials"
        (state / "simultrain-edge").mkdir(parents=True)  # StateDirectory=
        credentials.mkdir()  # LoadCredential=enrollment_secret:…
        (credentials / "enrollment_secret").write_text(
            (REPO_ROOT / "deploy" / "secrets" / "enrollment_secret.example").read_text()
        )
        env = {
            **clean,
            **_unit_environment(state, credentials),
            "NOTIFY_SOCKET": str(notify_socket.path),
            "WATCHDOG_USEC": str(WATCHDOG_USEC),
            # No coordinator here: the agent goes straight to the cloud.
            "SIMULTRAIN_EDGE_CLOUD_URL": url.replace("http://", "ws://"),
            "SIMULTRAIN_EDGE_EDGE_ID": "edge-under-systemd",
            "SIMULTRAIN_EDGE_STEPS": "0",  # until stopped, as the unit runs it by default
        }
        agent = subprocess.Popen(
            [sys.executable, "-m", "simultrain.edge"],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        status = state / "simultrain-edge" / "status.json"
        try:
            ready = notify_socket.wait_for("READY=1", 120)
            notify_socket.wait_for("WATCHDOG=1", 30)
            # The unit's StateDirectory holds the progress file it points the agent at.
            deadline = time.monotonic() + 60
            while not status.is_file() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert status.is_file(), "no batch acknowledged within 60 s"
            assert not any("STOPPING=1" in m.split("\n") for m in notify_socket.messages)
            agent.send_signal(signal.SIGTERM)
            stopping = notify_socket.wait_for("STOPPING=1", 30)
            _, stderr = agent.communicate(timeout=60)
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait(timeout=10)
        assert agent.returncode == 0, stderr[-3000:]
        assert stopping > ready
        assert sum("STOPPING=1" in m.split("\n") for m in notify_socket.messages) == 1
    finally:
        cloud.stop(30)
        cloud.reap()
