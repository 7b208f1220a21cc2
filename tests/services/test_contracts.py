"""The JSON bodies between processes are shared/contracts.py's models, for the process that
writes each one and for every process that reads it.

The bodies here come from a real cloud app with one real session (an edge's HELLO answered
by WELCOME and SNAP), so a field the cloud renamed, dropped or added without its contract
fails here; the coordinator's dashboard reads them through the same models, and the page's
script reads only fields the models declare.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from simultrain.cloud.app import create_app as create_cloud_app
from simultrain.cloud.settings import CloudSettings
from simultrain.coordinator import CoordinatorSettings, create_app
from simultrain.coordinator.dashboard import DashboardFeed
from simultrain.shared import contracts
from simultrain.shared.contracts import (
    CloudHistory,
    CloudStatus,
    DashboardSnapshot,
    Evaluation,
    SessionSpec,
)
from simultrain.shared.models import get_model_spec
from simultrain.shared.protocol import EdgeSession, Hello, Limits, Snap
from simultrain.shared.training.config import RunConfig

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "services" / "coordinator" / "static" / "dashboard.js"
CLOUD_URL = "ws://cloud.test:8800"
BODIES: dict[str, type[BaseModel]] = {
    "/v1/status": CloudStatus,
    "/v1/session-spec": SessionSpec,
    "/v1/eval": Evaluation,
    "/v1/history": CloudHistory,
}


@pytest.fixture(scope="module")
def cloud_bodies() -> dict[str, Any]:
    """What a real cloud answers on each read endpoint while one edge has a session."""
    run = RunConfig(mode="simultrain", dataset="imu", window=2)
    spec = get_model_spec("imu-cnn1d")
    app = create_cloud_app(CloudSettings(eval_interval_s=0), run=run)
    with TestClient(app) as client, client.websocket_connect("/v1/stream") as ws:
        session = EdgeSession(limits=Limits(window=run.window))
        hello = Hello(edge_id="edge-a", model_id=spec.model_id, cut_shape=tuple(spec.cut_shape))
        ws.send_bytes(session.send(hello))
        frames: list[object] = []
        while not any(isinstance(f, Snap) for f in frames):
            frames += session.receive_data(ws.receive_bytes())
        return {path: client.get(path).json() for path in BODIES}


@pytest.mark.parametrize("path", list(BODIES))
def test_every_body_the_cloud_writes_is_exactly_its_contract(
    cloud_bodies: dict[str, Any], path: str
) -> None:
    """Read and written again, a body is unchanged: no field the contract lacks (it would be
    dropped), none it declares missing (validation fails), none renamed."""
    body = cloud_bodies[path]
    assert BODIES[path].model_validate(body).model_dump(mode="json") == body


def test_status_counts_bytes_up_and_down_and_keeps_the_earlier_names(
    cloud_bodies: dict[str, Any],
) -> None:
    status = CloudStatus.model_validate(cloud_bodies["/v1/status"])
    session = status.edges["edge-a"]
    assert session.bytes_up > 0 and session.bytes_down > session.bytes_up  # HELLO; SNAP
    written = cloud_bodies["/v1/status"]["edges"]["edge-a"]
    assert (written["bytes_in"], written["bytes_out"]) == (session.bytes_up, session.bytes_down)
    assert status.bytes_up == session.bytes_up and status.bytes_down == session.bytes_down


@pytest.fixture
def coordinator(monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    for name in [n for n in os.environ if n.startswith("SIMULTRAIN_COORDINATOR_")]:
        monkeypatch.delenv(name)
    app = create_app(CoordinatorSettings(db_path=":memory:"))
    feed: DashboardFeed = app.state.dashboard
    feed.min_poll_interval_s = 0.0
    with TestClient(app) as client:
        yield client


def serve(coordinator: TestClient, bodies: dict[str, Any]) -> None:
    """The coordinator's feed reads ``bodies`` as the cloud at CLOUD_URL."""

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=bodies[request.url.path])

    feed: DashboardFeed = coordinator.app.state.dashboard  # type: ignore[attr-defined]
    feed.transport = httpx.MockTransport(handle)


def test_the_dashboard_reads_the_clouds_status_through_the_contract(
    coordinator: TestClient, cloud_bodies: dict[str, Any]
) -> None:
    cloud_id = coordinator.post("/v1/clouds", json={"url": CLOUD_URL}).json()["cloud_id"]
    # The coordinator's edge id is what the edge names in HELLO.
    edge_id = coordinator.post("/v1/edges", json={"name": "pi"}).json()["edge_id"]
    bodies = json.loads(json.dumps(cloud_bodies))
    status = bodies["/v1/status"]
    status["edges"] = {edge_id: status["edges"]["edge-a"]}
    serve(coordinator, bodies)

    snapshot = DashboardSnapshot.model_validate(coordinator.get("/v1/dashboard").json())
    [cloud] = snapshot.clouds
    [edge] = snapshot.edges
    session = CloudStatus.model_validate(status).edges[edge_id]
    assert cloud.cloud_id == cloud_id and cloud.reachable and cloud.detail is not None
    assert cloud.detail.master_version == cloud.master_version == status["master_version"]
    assert (edge.bytes_up, edge.bytes_down) == (session.bytes_up, session.bytes_down)
    assert edge.bytes_up is not None and edge.bytes_up > 0
    assert edge.replica_version == session.replica_version and edge.connected is True
    assert edge.staleness == session.staleness


def test_a_field_the_cloud_renamed_is_an_unreachable_cloud_not_a_blank(
    coordinator: TestClient, cloud_bodies: dict[str, Any]
) -> None:
    """A producer that renames a field without its readers: the dashboard says which field
    is missing instead of drawing nothing."""
    coordinator.post("/v1/clouds", json={"url": CLOUD_URL})
    bodies = json.loads(json.dumps(cloud_bodies))
    session = bodies["/v1/status"]["edges"]["edge-a"]
    session["bytes_sent"] = session.pop("bytes_up")
    serve(coordinator, bodies)
    [cloud] = coordinator.get("/v1/dashboard").json()["clouds"]
    assert not cloud["reachable"] and cloud["detail"] is None
    assert "ValidationError" in cloud["error"] and "bytes_up" in cloud["error"]


# The page's script: which variable holds which contract (dashboard.js names them so).
SCRIPT_VARIABLES: dict[str, type[BaseModel]] = {
    "data": contracts.DashboardSnapshot,
    "cloud": contracts.DashboardCloud,
    "d": contracts.CloudStatus,
    "e": contracts.DashboardEdge,
    "p": contracts.HistoryPoint,
    "last": contracts.HistoryPoint,
    "staleness": contracts.StalenessSummary,
}


def _fields(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields) | set(model.model_computed_fields)


def test_the_page_reads_only_fields_its_contracts_declare() -> None:
    script = SCRIPT.read_text()
    reads: dict[str, set[str]] = {}
    for variable, name in re.findall(r"\b(data|cloud|d|e|p|last|staleness)\.([a-z_]+)\b", script):
        reads.setdefault(variable, set()).add(name)
    # Keys read by name: the chart's series, the run configuration's keys.
    reads["p"] |= set(re.findall(r'line\("([a-z_]+)"', script))
    assert reads.keys() == SCRIPT_VARIABLES.keys()
    for variable, names in reads.items():
        unknown = names - _fields(SCRIPT_VARIABLES[variable])
        assert not unknown, f"dashboard.js reads {variable}.{sorted(unknown)}: no such field"
    run_keys = set(re.findall(r"\br\.([a-z_]+)\b", script))
    assert run_keys and run_keys <= set(RunConfig().to_mapping())


def test_the_contracts_load_no_torch() -> None:
    """A coordinator or a reader of the contracts does not pay for torch."""
    code = "import sys, simultrain.shared.contracts; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
