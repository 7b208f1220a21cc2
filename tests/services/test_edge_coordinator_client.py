"""The edge's coordinator client on canned replies (httpx.MockTransport): a removed edge is
told apart from a coordinator that is merely unwell."""

from __future__ import annotations

import httpx
import pytest

from simultrain.edge.coordinator_client import Assignment, CoordinatorClient, EdgeRemoved
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
