"""The edge agent keeps the promises simultrain-edge.service makes for it (Type=notify).

With ``Type=notify`` systemd waits for ``READY=1`` and, with ``WatchdogSec=``, kills the
agent unless ``WATCHDOG=1`` keeps arriving. No systemd runs here, so this test plays its part:
it opens the notification socket, starts the agent with the environment the unit gives it
(its ``Environment=`` lines with ``%S`` and ``%d`` expanded, ``NOTIFY_SOCKET``,
``WATCHDOG_USEC``) against a cloud on 127.0.0.1, and reads the datagrams.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from deploy_checks import REPO_ROOT, ServiceProcess, unit_settings

UNIT = REPO_ROOT / "deploy" / "systemd" / "simultrain-edge.service"
STEPS = 30
WATCHDOG_USEC = 200_000  # the mechanism, faster than the unit's 60 s


def _unit_environment(state: Path, credentials: Path) -> dict[str, str]:
    """The unit's Environment= lines with systemd's %S (state root) and %d (credentials)."""
    env: dict[str, str] = {}
    for assignment in unit_settings(UNIT.read_text())["Environment"]:
        key, _, value = assignment.partition("=")
        env[key] = value.replace("%S", str(state)).replace("%d", str(credentials))
    return env


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_agent_signals_ready_and_feeds_the_watchdog(tmp_path: Path) -> None:
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
        notify_path = tmp_path / "notify.sock"
        messages: list[str] = []
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(notify_path))
            notify.settimeout(0.2)
            finished = threading.Event()

            def receive() -> None:
                while not finished.is_set():
                    try:
                        messages.append(notify.recv(4096).decode())
                    except TimeoutError:
                        continue

            receiver = threading.Thread(target=receive, daemon=True)
            receiver.start()
            env = {
                **clean,
                **_unit_environment(state, credentials),
                "NOTIFY_SOCKET": str(notify_path),
                "WATCHDOG_USEC": str(WATCHDOG_USEC),
                # No coordinator here: the agent goes straight to the cloud.
                "SIMULTRAIN_EDGE_CLOUD_URL": url.replace("http://", "ws://"),
                "SIMULTRAIN_EDGE_EDGE_ID": "edge-under-systemd",
                "SIMULTRAIN_EDGE_STEPS": str(STEPS),
            }
            agent = subprocess.run(
                [sys.executable, "-m", "simultrain.edge"],
                env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            finished.set()
            receiver.join(timeout=5)
        assert agent.returncode == 0, agent.stderr[-3000:]
        ready = [m for m in messages if "READY=1" in m.split("\n")]
        assert ready, f"no READY=1 among {messages[:5]}"
        assert "WATCHDOG=1" in messages, messages[:5]
        # The unit's StateDirectory holds the progress file it points the agent at.
        assert (state / "simultrain-edge" / "status.json").is_file()
    finally:
        cloud.stop(30)
        cloud.reap()
