"""Liveness through the data plane (PROTOCOL.md §9.4), in-process on a fake clock.

A real cloud app holds a real WebSocket session; the cloud's own
:class:`~simultrain.cloud.coordinator_client.CoordinatorLink` reports it to an in-process
coordinator (``httpx.ASGITransport``); the test moves the coordinator's clock and sweeps by
hand. A streaming edge stays up on its cloud's word alone, and only as long as its session.
Then the cadence the coordinator states: an interval that grows with the fleet, a long one
while streaming, a short one for an edge whose cloud may have died.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from simultrain.cloud.app import create_app as create_cloud_app
from simultrain.cloud.coordinator_client import CoordinatorLink
from simultrain.cloud.settings import CloudSettings
from simultrain.coordinator import CoordinatorSettings, InMemoryStore, create_app
from simultrain.coordinator.registry import Cadence, cadence_for
from simultrain.shared.models import get_model_spec
from simultrain.shared.protocol import EdgeSession, Hello, Limits, Snap, Welcome
from simultrain.shared.training.config import RunConfig

RUN = RunConfig(mode="simultrain", dataset="imu", window=2)
SPEC = get_model_spec("imu-cnn1d")
TIMEOUT = 5.0  # coordinator_settings: heartbeat every 1 s, silent after 5 s


@pytest.fixture(scope="module")
def cloud() -> Iterator[TestClient]:
    with TestClient(create_cloud_app(CloudSettings(eval_interval_s=0), run=RUN)) as client:
        yield client


@pytest.fixture
def link(cloud: TestClient, coordinator_app: FastAPI) -> Iterator[CoordinatorLink]:
    """The cloud's own coordinator link, to the in-process coordinator."""
    settings = CloudSettings(
        coordinator_url="http://coordinator.test", public_url="ws://cloud-a.test:8000"
    )
    service = cloud.app.state.service  # type: ignore[attr-defined]
    service.cloud_id = None
    link = CoordinatorLink(settings, service, transport=httpx.ASGITransport(app=coordinator_app))
    yield link
    cloud.portal.call(link.client.aclose)  # type: ignore[union-attr]


def beat(cloud: TestClient, link: CoordinatorLink) -> dict[str, Any]:
    return cloud.portal.call(link.beat)  # type: ignore[union-attr, no-any-return]


def open_session(ws: Any, edge_id: str) -> None:
    """HELLO, then wait for WELCOME and the first SNAP: the session is open."""
    session = EdgeSession(limits=Limits(window=RUN.window))
    ws.send_bytes(
        session.send(Hello(edge_id=edge_id, model_id=SPEC.model_id, cut_shape=SPEC.cut_shape))
    )
    seen: set[type] = set()
    while not {Welcome, Snap} <= seen:
        seen |= {type(frame) for frame in session.receive_data(ws.receive_bytes())}


def wait_for(condition: Any, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        pause.wait(0.01)


def statuses(client: TestClient) -> dict[str, str]:
    return {e["name"]: e["status"] for e in client.get("/v1/edges").json()}


def test_a_streaming_edge_stays_up_without_heartbeats_of_its_own(
    cloud: TestClient, link: CoordinatorLink, coordinator_app: FastAPI, coordinator_clock: Any
) -> None:
    coordinator = TestClient(coordinator_app)  # no lifespan: the test sweeps
    registry = coordinator_app.state.coordinator
    beat(cloud, link)  # registers the cloud
    streaming = coordinator.post("/v1/edges", json={"name": "streaming"}).json()["edge_id"]
    coordinator.post("/v1/edges", json={"name": "idle"})
    service = cloud.app.state.service  # type: ignore[attr-defined]
    with cloud.websocket_connect("/v1/stream") as ws:
        open_session(ws, streaming)
        beat(cloud, link)  # reports the session
        (listed,) = coordinator.get("/v1/clouds").json()
        assert listed["connected_edges"] == [streaming]
        for _ in range(4):  # four timeouts: the cloud heartbeats, neither edge does
            coordinator_clock.advance(TIMEOUT / 2)
            beat(cloud, link)
            registry.sweep()
        assert statuses(coordinator) == {"streaming": "up", "idle": "down"}
    wait_for(lambda: streaming not in service.connections, "the session to end")
    # The session ended: the cloud's next heartbeat says so, and from then on the edge must
    # be heard from itself within a timeout.
    beat(cloud, link)
    coordinator_clock.advance(TIMEOUT - 0.5)
    beat(cloud, link)
    registry.sweep()
    assert statuses(coordinator)["streaming"] == "up"
    coordinator_clock.advance(1.0)
    beat(cloud, link)
    registry.sweep()
    assert statuses(coordinator)["streaming"] == "down"
    assert coordinator.get("/v1/clouds").json()[0]["connected_edges"] == []


def test_a_cloud_marked_down_is_asked_for_its_sessions_again(
    cloud: TestClient, link: CoordinatorLink, coordinator_app: FastAPI, coordinator_clock: Any
) -> None:
    """The coordinator drops the sessions of a cloud it marks down (their edges get one
    timeout to be heard from); when the cloud is heard again it is asked for all of them."""
    coordinator = TestClient(coordinator_app)
    registry = coordinator_app.state.coordinator
    beat(cloud, link)
    edge_id = coordinator.post("/v1/edges", json={"name": "streaming"}).json()["edge_id"]
    with cloud.websocket_connect("/v1/stream") as ws:
        open_session(ws, edge_id)
        beat(cloud, link)
        coordinator_clock.advance(TIMEOUT)  # the cloud is silent (a slow network, say)
        assert registry.sweep().clouds_down
        assert coordinator.get("/v1/clouds").json()[0]["connected_edges"] == []
        reply = beat(cloud, link)
        assert reply["sessions_snapshot_wanted"] is True
        beat(cloud, link)  # all its sessions again
        assert coordinator.get("/v1/clouds").json()[0]["connected_edges"] == [edge_id]
        for _ in range(4):
            coordinator_clock.advance(TIMEOUT / 2)
            assert "sessions_snapshot_wanted" not in beat(cloud, link)
            registry.sweep()
        assert statuses(coordinator) == {"streaming": "up"}


def test_cadence_grows_with_the_fleet() -> None:
    settings = CoordinatorSettings(
        heartbeat_interval_s=2.0,
        heartbeat_timeout_s=10.0,
        edge_heartbeats_per_s=200.0,
        streaming_heartbeat_interval_s=60.0,
        token_ttl_s=3600.0,
    )
    assert cadence_for(settings, 100) == Cadence(2.0, 10.0, 60.0)
    assert cadence_for(settings, 400) == Cadence(2.0, 10.0, 60.0)  # 200/s: up to 400 edges
    assert cadence_for(settings, 10_000) == Cadence(50.0, 250.0, 60.0)
    assert cadence_for(settings, 100_000) == Cadence(500.0, 2500.0, 500.0)
    # never past a third of a token's lifetime: an edge must refresh its token in time
    assert cadence_for(settings, 10**7) == Cadence(1200.0, 6000.0, 1200.0)


def test_the_assignment_states_the_cadence(
    coordinator_clean_env: None, coordinator_clock: Any
) -> None:
    settings = CoordinatorSettings(
        db_path=":memory:",
        heartbeat_interval_s=1.0,
        heartbeat_timeout_s=5.0,
        edge_heartbeats_per_s=2.0,
        streaming_heartbeat_interval_s=30.0,
    )
    app = create_app(settings, InMemoryStore(), clock=coordinator_clock)
    app.state.coordinator.fleet_size_max_age_s = 0.0
    client = TestClient(app)
    client.post("/v1/clouds", json={"url": "http://a.test"})
    first = client.post("/v1/edges").json()
    assert (first["heartbeat_interval_s"], first["heartbeat_timeout_s"]) == (1.0, 5.0)
    assert first["streaming_heartbeat_interval_s"] == 30.0
    for _ in range(9):
        client.post("/v1/edges")
    beat = client.post(
        f"/v1/edges/{first['edge_id']}/heartbeat", json={"edge_version": 0, "step": 0}
    ).json()
    # ten edges at two heartbeats a second together: one each every five seconds
    assert (beat["heartbeat_interval_s"], beat["heartbeat_timeout_s"]) == (5.0, 25.0)


def test_an_edge_whose_cloud_may_have_died_is_asked_again_soon(
    coordinator_clean_env: None, coordinator_clock: Any
) -> None:
    """An edge that lost a session its cloud did not report closed is told to ask again
    right after the sweep that would find a dead cloud out, not a fleet-sized interval
    later; one that merely is not streaming keeps the fleet's cadence."""
    settings = CoordinatorSettings(
        db_path=":memory:",
        heartbeat_interval_s=1.0,
        heartbeat_timeout_s=5.0,
        edge_heartbeats_per_s=0.5,  # ten edges: an interval of 20 s
    )
    app = create_app(settings, InMemoryStore(), clock=coordinator_clock)
    app.state.coordinator.fleet_size_max_age_s = 0.0
    client = TestClient(app)
    cloud = client.post("/v1/clouds", json={"url": "http://a.test"}).json()["cloud_id"]
    edges = [client.post("/v1/edges").json()["edge_id"] for _ in range(10)]
    held, idle = edges[0], edges[1]
    client.post(
        f"/v1/clouds/{cloud}/heartbeat",
        json={"master_version": 1, "session_changes": {"opened": [held]}},
    )
    coordinator_clock.advance(1.0)  # the cloud's heartbeat is a second old

    def interval(edge_id: str, streaming: bool | None) -> float:
        body: dict[str, Any] = {"edge_version": 0, "step": 0}
        if streaming is not None:
            body["streaming"] = streaming
        reply = client.post(f"/v1/edges/{edge_id}/heartbeat", json=body).json()
        return float(reply["heartbeat_interval_s"])

    assert interval(held, streaming=True) == 20.0
    assert interval(idle, streaming=False) == 20.0
    assert interval(idle, streaming=None) == 20.0
    # silent for 4 more seconds at most, then one sweep interval
    assert interval(held, streaming=False) == 5.0
