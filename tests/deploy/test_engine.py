"""The deployment under a real container engine: `make engine-test` (CI runs it after
`make test`; tests/deploy/engine.sh provides the engine, compose, and stops what it started).

The images are built the air-gapped way (docker/build-images.sh): a base made from Debian
packages and every Python package from a wheelhouse served as an index on 127.0.0.1, whose
request counts show that nothing came from anywhere else. Then docker-compose.yml trains
through a killed edge container and a `down`/`up` in the middle of the run, and
docker-compose.replicas.yml runs two cloud replicas as one group. Every check is a count: the
cloud's ``/v1/status`` and ``/v1/eval`` through the published port, ``docker inspect`` for
restarts, exit codes and health. The figures go to build/engine/results.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from deploy_checks import REPO_ROOT

# The first test also pays for the images fixture: two full builds on a shared 2-core machine.
pytestmark = [pytest.mark.engine, pytest.mark.timeout(2400)]

TAG = "enginetest"
STEPS = 1500  # per edge: long enough to kill an edge and restart the stack mid-run
REPLICA_STEPS = 300
BATCH = 32  # SIMULTRAIN_COORDINATOR_BATCH_SIZE in docker-compose.yml
STATE = REPO_ROOT / "build" / "engine"
RESULTS = STATE / "results.json"
COMPOSE = REPO_ROOT / "docker-compose.yml"
REPLICAS = REPO_ROOT / "docker-compose.replicas.yml"
CLOUD = "http://127.0.0.1:8800"  # the documented URL: docs/DEPLOY.md, `curl localhost:8800`


def _record(**figures: Any) -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.update(figures)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


def _run(args: list[str], *, timeout_s: float = 600, **kwargs: Any) -> str:
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout_s, check=False, **kwargs
    )
    if result.returncode != 0:
        pytest.fail(f"{' '.join(args[:4])} … exited {result.returncode}\n{result.stderr[-3000:]}")
    return result.stdout


def _wait(condition: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.5) -> Any:
    """Poll ``condition`` (a count read from an API) until it is truthy, within a bound."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout_s:.0f} s")
        time.sleep(poll_s)


def _get(url: str) -> dict[str, Any] | None:
    """A JSON body, or None while the service does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body: dict[str, Any] = json.load(response)
            return body
    except (OSError, ValueError):
        return None


@pytest.fixture(scope="module", autouse=True)
def engine() -> None:
    if shutil.which("docker") is None:
        pytest.fail("no docker CLI: run through `make engine-test` (tests/deploy/engine.sh)")
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if info.returncode != 0:
        pytest.fail("no container engine answers `docker info`: run `make engine-test`")


@pytest.fixture(scope="module")
def images() -> dict[str, Any]:
    """Every image, built twice the air-gapped way: cold, then warm (from the cache)."""
    wheelhouse = STATE / "wheelhouse"
    if not any(wheelhouse.glob("torch-*.whl")):
        # '' takes torch from pip's own configuration (on these machines a local CPU wheel;
        # the PyTorch CPU index cannot be reached from them).
        torch_index = os.environ.get("SIMULTRAIN_ENGINE_TORCH_INDEX_URL", "")
        _run(["bash", "docker/wheelhouse.sh", str(wheelhouse), "--torch-index-url", torch_index],
             cwd=REPO_ROOT)  # fmt: skip
    figures: dict[str, Any] = {}
    for build in ("cold", "warm"):
        stats = STATE / f"index-{build}.json"
        started = time.monotonic()
        # Cold: no layer from an earlier build (an engine that has built before has them).
        cold = ["--no-cache"] if build == "cold" else []
        _run(
            ["bash", "docker/build-images.sh", "--base", "debian", "--tag", TAG, *cold,
             "--wheelhouse", str(wheelhouse), "--index-stats", str(stats)],
            cwd=REPO_ROOT, timeout_s=1800,
        )  # fmt: skip
        figures[f"build_{build}_s"] = round(time.monotonic() - started, 1)
        figures[f"index_{build}"] = json.loads(stats.read_text())
    figures["image_mb"] = {
        target: round(int(_run(["docker", "image", "inspect", "--format", "{{.Size}}",
                                f"simultrain-{target}:{TAG}"])) / 1e6)
        for target in ("coordinator", "cloud", "netem", "edge")
    }  # fmt: skip
    _record(**{k: v for k, v in figures.items() if not k.startswith("index_")})
    return figures


def test_images_build_from_debian_packages_and_the_wheelhouse_alone(
    images: dict[str, Any],
) -> None:
    cold, warm = images["index_cold"], images["index_warm"]
    # Nothing was asked of the index that it lacks, and torch was fetched once for all images.
    assert cold["missing"] == {}, cold["missing"]
    assert cold["downloads"].get("torch") == 1, cold["downloads"]
    assert {"fastapi", "numpy", "seglearn", "setuptools"} <= set(cold["downloads"])
    # The warm build is all cache: not one package fetched again.
    assert warm["downloads"] == {}, warm["downloads"]
    # The base is Debian's Python (bookworm: 3.11.2), not the upstream image's.
    version = _run(["docker", "run", "--rm", f"simultrain-netem:{TAG}", "python", "-c",
                    "import platform; print(platform.python_version())"])  # fmt: skip
    assert version.strip() == "3.11.2"
    # The edge: torch and the datasets' files, none of the servers' or seglearn's packages.
    found = _run(["docker", "run", "--rm", f"simultrain-edge:{TAG}", "python", "-c",
                  "import importlib.util as u; print(' '.join(m for m in ('sklearn', 'scipy',"
                  " 'pandas', 'fastapi', 'uvicorn') if u.find_spec(m)))"])  # fmt: skip
    assert found.split() == []


# --- docker-compose.yml ----------------------------------------------------------------------


class Stack:
    """One compose project, torn down (volumes too) at the end."""

    def __init__(self, name: str, files: list[Path], env: dict[str, str]) -> None:
        self.name = name
        self.files = files
        self.env = env

    def compose(self, *args: str, timeout_s: float = 300) -> str:
        command = ["docker", "compose", "--project-name", self.name]
        for file in self.files:
            command += ["--file", str(file)]
        return _run([*command, *args], timeout_s=timeout_s, cwd=REPO_ROOT, env=self.env)

    def dump_logs(self) -> None:
        """Every container's state and the tail of its log, kept in build/engine/ and printed
        (pytest shows it beside a failure): why a service was unhealthy, not only that it was."""
        command = ["docker", "compose", "--project-name", self.name]
        for file in self.files:
            command += ["--file", str(file)]
        parts = [
            subprocess.run(
                [*command, *args],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                cwd=REPO_ROOT,
                env=self.env,
            )
            for args in (["ps", "--all"], ["logs", "--no-color", "--tail", "60"])
        ]
        text = "\n".join(p.stdout + p.stderr for p in parts)
        STATE.mkdir(parents=True, exist_ok=True)
        (STATE / f"{self.name}.log").write_text(text)
        print(text[-12000:])

    def inspect(self, service: str, template: str, index: int = 1) -> str:
        """``docker inspect`` of a service's container (compose names it project-service-N);
        an empty string while there is none."""
        result = subprocess.run(
            ["docker", "inspect", "--format", template, f"{self.name}-{service}-{index}"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        return result.stdout.strip() if result.returncode == 0 else ""


def _secrets(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "deploy" / "secrets" / "generate.sh", folder / "generate.sh")
    _run(["sh", str(folder / "generate.sh")])
    return folder


@pytest.fixture
def stack_env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SIMULTRAIN_")}
    return {
        **clean,
        "SIMULTRAIN_TAG": TAG,
        "SIMULTRAIN_SECRETS_DIR": str(_secrets(tmp_path / "secrets")),
    }


@pytest.fixture
def stack(images: dict[str, Any], stack_env: dict[str, str]) -> Iterator[Stack]:
    stack = Stack("simultrain-enginetest", [COMPOSE], {**stack_env, "SIMULTRAIN_STEPS": str(STEPS)})
    try:
        yield stack
    finally:
        stack.dump_logs()
        stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "60")


def _edges(status: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {} if status is None else status["edges"]


def _steps(url: str = CLOUD) -> dict[str, int]:
    return {edge: e["steps_applied"] for edge, e in _edges(_get(f"{url}/v1/status")).items()}


def _edge_ids() -> dict[str, str]:
    edges = _get("http://127.0.0.1:8700/v1/edges") or []
    return {e["name"]: e["edge_id"] for e in edges}  # type: ignore[union-attr]


def _kill_the_agent(stack: Stack, service: str) -> None:
    """SIGKILL the agent inside the container, as the kernel's OOM killer would. (`docker
    kill` counts as stopping the container by hand: Docker would not restart it.)"""
    init = int(stack.inspect(service, "{{.State.Pid}}"))
    children = Path(f"/proc/{init}/task/{init}/children").read_text().split()
    assert len(children) == 1, children  # docker-init (init: true) runs the agent alone
    os.kill(int(children[0]), 9)


@pytest.mark.timeout(1200)
def test_compose_trains_every_sample_once_through_a_kill_and_a_restart(stack: Stack) -> None:
    started = time.monotonic()
    stack.compose("up", "--detach", "--no-build")
    _wait(lambda: sum(_steps().values()) > 0, 300, "first step through localhost:8800")
    first_step_s = round(time.monotonic() - started, 1)

    # A killed edge container is restarted by Docker and resumes where it was.
    edge0 = _wait(lambda: _edge_ids().get("edge-0"), 60, "edge-0 registered")
    _wait(lambda: _steps().get(edge0, 0) >= STEPS // 5, 300, "a fifth of edge-0's steps")
    at_kill = _steps()[edge0]
    _kill_the_agent(stack, "edge-0")
    _wait(lambda: stack.inspect("edge-0", "{{.RestartCount}}") == "1", 60, "edge-0 restarted")
    restarts = int(stack.inspect("edge-0", "{{.RestartCount}}"))
    _wait(lambda: _steps().get(edge0, 0) > at_kill + 20, 300, "edge-0 training again")

    # `down` then `up` in the middle of the run: every service stops (the cloud checkpoints
    # on SIGTERM), the volumes stay, and training resumes where it was.
    _wait(lambda: min(_steps().values() or [0]) >= STEPS // 2, 300, "half the run")
    before_down = _steps()
    assert max(before_down.values()) < STEPS, "the run ended before the restart: raise STEPS"
    stack.compose("down", "--timeout", "60")
    assert _get(f"{CLOUD}/v1/status") is None
    stack.compose("up", "--detach", "--no-build")
    for name in ("edge-0", "edge-1"):
        _wait(lambda n=name: stack.inspect(n, "{{.State.Status}} {{.State.ExitCode}}")  # type: ignore[misc]
              == "exited 0", 600, f"{name} finished and exited 0", poll_s=2)  # fmt: skip

    status = _get(f"{CLOUD}/v1/status")
    assert status is not None
    edges = _edges(status)
    assert sorted(edges) == sorted(_edge_ids().values())
    for edge_id, edge in edges.items():
        # Exactly once: every batch of the run applied, no batch twice, none lost.
        assert edge["steps_applied"] == STEPS, (edge_id, edge)
        assert edge["samples_applied"] == STEPS * BATCH, (edge_id, edge)
        assert edge["highest_applied_seq"] == STEPS - 1, (edge_id, edge)
        assert before_down[edge_id] <= edge["steps_applied"]
    assert status["samples_applied"] == 2 * STEPS * BATCH
    coordinator = _get("http://127.0.0.1:8700/v1/edges") or []
    assert [e["status"] for e in coordinator] == ["finished", "finished"]  # type: ignore[index]
    evaluation = _get(f"{CLOUD}/v1/eval")  # the documented URL, on the fixed port
    assert evaluation is not None and 0.0 < evaluation["accuracy"] <= 1.0
    assert evaluation["master_version"] == status["master_version"]
    _record(
        compose={
            "up_to_first_step_s": first_step_s,
            "steps_per_edge": STEPS,
            "edges": {
                e: {k: v[k] for k in ("steps_applied", "samples_applied", "duplicates_dropped")}
                for e, v in edges.items()
            },
            "samples_applied": status["samples_applied"],
            "master_version": status["master_version"],
            "accuracy": evaluation["accuracy"],
            "edge_0_restarts_after_kill": restarts,
            "steps_at_kill": at_kill,
            "steps_at_down": before_down,
        }
    )


# --- docker-compose.replicas.yml -------------------------------------------------------------


@pytest.fixture
def replicas(images: dict[str, Any], stack_env: dict[str, str]) -> Iterator[Stack]:
    env = {**stack_env, "SIMULTRAIN_STEPS": str(REPLICA_STEPS), "SIMULTRAIN_CLOUD_REPLICAS": "2"}
    stack = Stack("simultrain-enginetest-replicas", [COMPOSE, REPLICAS], env)
    try:
        yield stack
    finally:
        stack.dump_logs()
        stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "60")


def _replica(url: str) -> dict[str, Any] | None:
    status = _get(f"{url}/v1/status")
    return None if status is None else {**status["replica"], "master": status["master_version"]}


@pytest.mark.timeout(900)
def test_replicas_form_one_group_in_sync_and_one_without_it_is_not_ready(
    replicas: Stack,
) -> None:
    replicas.compose("up", "--detach", "--no-build", "--scale", "cloud=2")
    # Each replica's API on the port Docker gave it (`docker compose port`, docs/DEPLOY.md).
    urls = [
        "http://" + replicas.compose("port", "--index", str(i), "cloud", "8800").strip()
        for i in (1, 2)
    ]
    _wait(lambda: all((_replica(u) or {}).get("size") == 2 for u in urls), 300, "a group of 2")
    groups = {(_replica(u) or {})["generation"] for u in urls}
    assert len(groups) == 1, groups
    for name in ("edge-0", "edge-1"):
        _wait(lambda n=name: replicas.inspect(n, "{{.State.Status}} {{.State.ExitCode}}")  # type: ignore[misc]
              == "exited 0", 600, f"{name} finished and exited 0", poll_s=2)  # fmt: skip

    # After the training, a sync round leaves both with one master.
    def in_sync() -> list[dict[str, Any]] | None:
        views = [_replica(u) for u in urls]
        if any(v is None for v in views):
            return None
        masters = {v["master"] for v in views if v is not None}
        return views if len(masters) == 1 else None  # type: ignore[return-value]

    views = _wait(in_sync, 120, "equal master versions on both replicas")
    assert all(v["size"] == 2 and v["problem"] is None for v in views), views
    # Every edge's samples, once, counted where they trained (each edge has one replica).
    applied: dict[str, int] = {}
    for url in urls:
        for edge_id, edge in _edges(_get(f"{url}/v1/status")).items():
            applied[edge_id] = max(applied.get(edge_id, 0), edge["steps_applied"])
    assert sorted(applied.values()) == [REPLICA_STEPS, REPLICA_STEPS], applied
    health = {
        f"{name}-{index}": replicas.inspect(name, "{{.State.Health.Status}}", index)
        for name, index in (("cloud-rendezvous", 1), ("cloud", 1), ("cloud", 2))
    }
    assert set(health.values()) == {"healthy"}, health

    # A third replica that cannot reach its group: not ready, and says why in one line.
    lonely = replicas.compose(
        "run", "--detach", "--no-deps", "--env", "MASTER_PORT=29599",
        "--env", "SIMULTRAIN_CLOUD_REPLICA_TIMEOUT_S=2", "cloud",
    ).strip().splitlines()[-1]  # fmt: skip

    def verdict() -> subprocess.CompletedProcess[str] | None:
        check = subprocess.run(
            ["docker", "exec", lonely, "simultrain-healthcheck", "cloud"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        return check if "cannot reach the replica group" in check.stderr else None

    check = _wait(verdict, 240, "the lonely replica's verdict", poll_s=2)
    assert check.returncode == 1 and len(check.stderr.strip().splitlines()) == 1, check.stderr
    _record(
        replicas={
            "master_versions": [v["master"] for v in views],
            "generation": views[0]["generation"],
            "rounds": [v["rounds"] for v in views],
            "steps_per_edge": applied,
            "health": health,
            "unreachable_replica": check.stderr.strip(),
        }
    )
