"""docker-compose.yml as local processes: its commands, environment and ports (docs/DEPLOY.md §1).

No Docker engine runs here, so this starts each compose service as the container would run
it — the service's ``command`` (with this Python), the image's ``SIMULTRAIN_*`` ENV overlaid by
the compose ``environment``, secrets read from the shipped ``*.example`` files — mapped onto
this machine: service host names become 127.0.0.1, every listening port a free one, every
container path a folder under ``tmp_path`` (named volumes shared as compose shares them).
Services start in ``depends_on`` order and each dependency must first pass the compose
healthcheck (docker/healthcheck.py). Then the two edges train a few steps through the link
emulator and must exit 0, and every server must stop cleanly on SIGTERM.

What this cannot show: the images themselves (no build here), Docker's networking and the
containers' users and file permissions (docs/DEPLOY.md says so).
"""

from __future__ import annotations

import graphlib
import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from deploy_checks import (
    REPO_ROOT,
    SERVICES,
    ServiceProcess,
    compose_secret_files,
    free_port,
    load_compose,
    module_of_command,
    parse_dockerfile,
    service_secret_mounts,
)

COMPOSE = REPO_ROOT / "docker-compose.yml"
STEPS = 20
START_TIMEOUT_S = 60.0
TRAIN_TIMEOUT_S = 150.0
STOP_TIMEOUT_S = 30.0


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for service in reversed(started):
        service.reap()


def _image_environment(service: Mapping[str, Any], services: Mapping[str, Any]) -> dict[str, str]:
    """The ``SIMULTRAIN_*`` ENV the service's image sets (the compose environment overrides it).
    A service without ``build`` runs the image another service builds."""
    build = service.get("build") or next(
        s["build"] for s in services.values() if s.get("image") == service["image"] and "build" in s
    )
    dockerfile = parse_dockerfile(REPO_ROOT / build.get("context", ".") / build["dockerfile"])
    env: dict[str, str] = {}
    for command in dockerfile.commands(build["target"], "ENV"):
        pairs = zip(command.value[::2], command.value[1::2], strict=True)
        env.update((key, value) for key, value in pairs if key.startswith("SIMULTRAIN_"))
    return env


def _local_environment(
    name: str,
    compose: Mapping[str, Any],
    ports: Mapping[str, int],
    root: Path,
) -> dict[str, str]:
    """The service's container environment, mapped onto 127.0.0.1 and folders under ``root``."""
    services = compose["services"]
    service = services[name]
    module = module_of_command(service["command"])
    assert module is not None
    listen_var = SERVICES[module][2]
    secrets = service_secret_mounts(service, compose_secret_files(compose, COMPOSE.parent))
    volumes: dict[str, Path] = {}
    for volume in service.get("volumes") or []:
        source, target = volume.split(":")[:2]
        volumes[target] = root / "volumes" / source
    env = {**_image_environment(service, services), **service["environment"]}
    local: dict[str, str] = {}
    for key, value in env.items():
        if key == listen_var:
            value = str(ports[name])
        elif key.endswith("_HOST") and value in ("0.0.0.0", "::"):
            value = "127.0.0.1"
        elif key == "SIMULTRAIN_NETEM_UPSTREAM_HOST" and value in services:
            local["SIMULTRAIN_NETEM_UPSTREAM_PORT"] = str(ports[value])
            value = "127.0.0.1"
        elif key == "SIMULTRAIN_NETEM_UPSTREAM_PORT":
            continue  # set with the host above
        elif value in secrets:
            value = str(secrets[value])
        elif value.startswith("/"):
            # A path in the container: under a named volume, or in its own filesystem.
            for target, folder in volumes.items():
                if value == target or value.startswith(target.rstrip("/") + "/"):
                    value = str(folder / value[len(target) :].lstrip("/"))
                    break
            else:
                value = str(root / "containers" / name / value.lstrip("/"))
            Path(value).parent.mkdir(parents=True, exist_ok=True)
        else:
            value = re.sub(
                r"\b(\w+)://([\w.-]+):\d+",
                lambda m: f"{m[1]}://127.0.0.1:{ports[m[2]]}" if m[2] in ports else m[0],
                value,
            )
        local[key] = value
    for folder in volumes.values():
        folder.mkdir(parents=True, exist_ok=True)
    return local


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_compose_topology_trains_as_local_processes(
    tmp_path: Path, processes: list[ServiceProcess]
) -> None:
    compose = load_compose(COMPOSE, {"SIMULTRAIN_STEPS": str(STEPS)})
    services: dict[str, Any] = compose["services"]
    modules = {name: module_of_command(service["command"]) for name, service in services.items()}
    ports = {
        name: free_port() for name, module in modules.items() if module and SERVICES[module][2]
    }
    order = list(
        graphlib.TopologicalSorter(
            {name: set(service.get("depends_on") or {}) for name, service in services.items()}
        ).static_order()
    )
    base_env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SIMULTRAIN_", "NOTIFY_SOCKET", "WATCHDOG_"))
    }
    running: dict[str, ServiceProcess] = {}
    for name in order:
        service = services[name]
        # Compose's depends_on: service_healthy, checked with the compose healthcheck itself.
        for dependency in service.get("depends_on") or {}:
            test = services[dependency]["healthcheck"]["test"]
            running[dependency].wait_healthy(test[2], START_TIMEOUT_S)
        workdir = tmp_path / "work" / name
        workdir.mkdir(parents=True)
        command = [sys.executable if arg == "python" else arg for arg in service["command"]]
        env = {**base_env, **_local_environment(name, compose, ports, tmp_path)}
        running[name] = ServiceProcess(name, command, env, workdir)
        processes.append(running[name])
        if name in ports:
            url = running[name].wait_listening(START_TIMEOUT_S)
            assert url.endswith(f"127.0.0.1:{ports[name]}"), url

    edges = [name for name, module in modules.items() if module == "simultrain.edge"]
    assert len(edges) == 2

    def servers_tail() -> str:
        return "\n".join(
            f"--- {name} (last lines of stderr)\n{service.stderr_tail(8)}"
            for name, service in running.items()
            if name not in edges
        )

    for name in edges:
        edge = running[name]
        try:
            code = edge.process.wait(timeout=TRAIN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"{name} did not finish {STEPS} steps\n{edge.stderr_tail()}\n{servers_tail()}"
            )
        assert code == 0, f"{name} exited {code}\n{edge.stderr_tail(10)}\n{servers_tail()}"
        edge.reap()
        done = [line for line in edge.stdout if line.startswith("DONE ")]
        assert done, f"{name} printed no DONE line\n{edge.stderr_tail()}"
        report = json.loads(done[-1][len("DONE ") :])
        assert report["steps"] == STEPS and report["batches_acked"] == STEPS, report
        assert report["errors"] == [], report
        # It streamed through the link emulator, as the cloud's public URL says.
        assert f"127.0.0.1:{ports['netem']}" in edge.log.read_text(), edge.stderr_tail()
        status = Path(edge.env["SIMULTRAIN_EDGE_STATUS_FILE"])
        assert json.loads(status.read_text())["batches_acked"] == STEPS

    cloud = f"http://127.0.0.1:{ports['cloud']}/readyz"
    with urllib.request.urlopen(cloud, timeout=10) as response:
        assert json.load(response)["master_version"] >= 2 * STEPS
    assert any((tmp_path / "volumes" / "coordinator-db").iterdir()), "no coordinator database"
    # Each edge said it finished its steps: the coordinator will not call it down.
    coordinator = f"http://127.0.0.1:{ports['coordinator']}/v1/edges"
    with urllib.request.urlopen(coordinator, timeout=10) as response:
        assert [edge["status"] for edge in json.load(response)] == ["finished", "finished"]

    for name in reversed(order):
        if name not in edges:
            code = running[name].stop(STOP_TIMEOUT_S)
            assert code == 0, f"{name} exited {code} on SIGTERM\n{running[name].stderr_tail()}"
