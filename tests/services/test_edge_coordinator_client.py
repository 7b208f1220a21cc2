"""The edge's coordinator client on canned replies (httpx.MockTransport): a removed edge is
told apart from a coordinator that is merely unwell; one enrollment keeps one key across
retries; heartbeats follow the cadence the coordinator states."""

from __future__ import annotations

import json

import httpx
import pytest

from simultrain.edge.coordinator_client import (
    Assignment,
    CoordinatorClient,
    EdgeRemoved,
    heartbeat_interval,
)
from simultrain.edge.settings import EdgeSettings
from simultrain.shared.errors import SimulTrainError


def client_answering(status: int, body: object) -> CoordinatorClient:
    client = CoordinatorClient(EdgeSettings(coordinator_url="http://coordinator.test"))
    client.client = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda request: httpx.Response(status, json=body))
    )
    client.assignment = Assignment(
        edge_id="edge-1",
        cloud_url="ws://cloud.test",
        run_config={},
        reconcile_offset=0,
        heartbeat_interval_s=1.0,
        token="t",
    )
    return client


async def test_unknown_edge_means_removed() -> None:
    client = client_answering(404, {"error": {"code": "unknown_edge", "message": "edge-1"}})
    with pytest.raises(EdgeRemoved, match="edge-1: it was removed"):
        await client.heartbeat(0, 0)
    await client.close()


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (404, {"detail": "Not Found"}),  # a proxy's 404, not the coordinator's answer
        (404, "not json at all"),
        (503, {"error": {"code": "store_unavailable", "message": "down"}}),
    ],
)
async def test_other_failures_are_retried_not_removal(status: int, body: object) -> None:
    client = client_answering(status, body)
    with pytest.raises(SimulTrainError) as info:
        await client.heartbeat(0, 0)
    assert not isinstance(info.value, EdgeRemoved)
    await client.close()


async def test_one_enrollment_id_across_retries() -> None:
    """A registration whose reply was lost (a coordinator replica died after enrolling) is
    retried with the same enrollment_id, so the coordinator returns the same edge."""
    bodies: list[dict[str, object]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        if len(bodies) < 3:
            return httpx.Response(503, json={"error": {"code": "store_unavailable"}})
        return httpx.Response(201, json=ENROLLED)

    client = CoordinatorClient(EdgeSettings(coordinator_url="http://coordinator.test"))
    client.client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    assignment = await client.register()
    keys = {body["enrollment_id"] for body in bodies}
    assert len(bodies) == 3 and len(keys) == 1 and None not in keys
    assert assignment.streaming_heartbeat_interval_s == 60.0
    await client.close()
    again = CoordinatorClient(EdgeSettings(coordinator_url="http://coordinator.test"))
    again.client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    await again.register()
    assert bodies[-1]["enrollment_id"] not in keys  # another enrollment, another key
    await again.close()


async def test_heartbeats_take_the_cadence_the_coordinator_states() -> None:
    sent: list[dict[str, object]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(
            200,
            json={
                "cloud_url": "ws://cloud-b.test",
                "heartbeat_interval_s": 50.0,
                "heartbeat_timeout_s": 250.0,
                "streaming_heartbeat_interval_s": 90.0,
            },
        )

    client = client_answering(200, {})
    client.client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    update = await client.heartbeat(3, 4, streaming=False)
    assert sent[-1] == {"edge_version": 3, "step": 4, "streaming": False}
    assert update.cloud_url == "ws://cloud-b.test"
    assert heartbeat_interval(update, streaming=False) == 50.0
    assert heartbeat_interval(update, streaming=True) == 90.0
    await client.heartbeat(3, 4)
    assert "streaming" not in sent[-1]  # unknown: an older edge says nothing
    await client.close()


def test_an_older_coordinator_states_one_interval() -> None:
    older = Assignment("e", "ws://c", {}, 0, heartbeat_interval_s=2.0, token=None)
    assert heartbeat_interval(older, streaming=True) == 2.0
    # the configured interval overrides what any coordinator says, streaming or not
    client = CoordinatorClient(
        EdgeSettings(coordinator_url="http://coordinator.test", heartbeat_interval_s=0.5)
    )
    assert client._cadence(ENROLLED) == (0.5, 0.5)


ENROLLED = {
    "edge_id": "edge-1",
    "cloud_url": "ws://cloud.test",
    "run_config": {},
    "reconcile_offset": 0,
    "heartbeat_interval_s": 2.0,
    "heartbeat_timeout_s": 10.0,
    "streaming_heartbeat_interval_s": 60.0,
    "token": None,
}
