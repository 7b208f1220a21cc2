"""PROTOCOL.md §9 against the real coordinator app, in-process (httpx.ASGITransport).

What an edge reads from the coordinator is what the document lists; the order in which a
heartbeat is checked is the documented one; the heartbeat's ``step`` is a count.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from simultrain.coordinator import CoordinatorSettings, InMemoryStore, create_app
from simultrain.shared.training.config import RunConfig

DOC = Path(__file__).resolve().parents[2] / "PROTOCOL.md"
SECRET, KEY, ADMIN = "enroll-me-please", "k" * 40, "admin-token-for-tests"


@pytest.fixture
async def coordinator(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    """Authentication on, R = 2, in-memory: one cloud registered."""
    for name in list(os.environ):
        if name.startswith("SIMULTRAIN_COORDINATOR_"):
            monkeypatch.delenv(name)
    settings = CoordinatorSettings(
        db_path=":memory:",
        enrollment_secret=SECRET,
        token_key=KEY,
        admin_token=ADMIN,
        run=RunConfig(reconcile_every=2),
    )
    app = create_app(settings, InMemoryStore())
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://coordinator.test"
        ) as client,
    ):
        admin = {"Authorization": f"Bearer {ADMIN}"}
        reply = await client.post("/v1/clouds", json={"url": "ws://cloud.test:1"}, headers=admin)
        assert reply.status_code == 201, reply.text
        yield client


async def enroll(client: httpx.AsyncClient) -> dict[str, object]:
    reply = await client.post("/v1/edges", json={}, headers={"X-Enrollment-Secret": SECRET})
    assert reply.status_code == 201, reply.text
    body: dict[str, object] = reply.json()
    return body


def bearer(token: object) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_run_config_has_exactly_the_documented_keys(coordinator: httpx.AsyncClient) -> None:
    match = re.search(
        r"<!-- run-config-keys:begin -->(.*?)<!-- run-config-keys:end -->",
        DOC.read_text(encoding="utf-8"),
        re.S,
    )
    assert match, "PROTOCOL.md §9.1 lost its run-config-keys markers"
    documented = re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", match.group(1)))
    edge = await enroll(coordinator)
    served = (await coordinator.get("/v1/config")).json()["run_config"]
    assert sorted(documented) == sorted(served) == sorted(edge["run_config"])  # type: ignore[call-overload]


async def test_a_heartbeat_is_checked_body_then_credentials_then_the_edge(
    coordinator: httpx.AsyncClient,
) -> None:
    mine, other = await enroll(coordinator), await enroll(coordinator)
    gone = f"/v1/edges/{mine['edge_id']}"
    admin = {"Authorization": f"Bearer {ADMIN}"}
    assert (await coordinator.delete(gone, headers=admin)).status_code == 204
    path = f"{gone}/heartbeat"
    body = {"edge_version": 0, "step": 0}

    async def code(json: object, headers: dict[str, str]) -> tuple[int, str]:
        reply = await coordinator.post(path, json=json, headers=headers)
        return reply.status_code, reply.json()["error"]["code"]

    assert await code({"step": "x"}, {}) == (422, "invalid_request")  # before any credential
    assert await code(body, {}) == (401, "token_missing")
    assert await code(body, bearer(other["token"])) == (403, "token_wrong_edge")  # before 404
    assert await code(body, bearer(mine["token"])) == (404, "unknown_edge")


async def test_the_heartbeat_step_is_a_count_of_acknowledged_batches(
    coordinator: httpx.AsyncClient,
) -> None:
    """§9.2: `step` = the highest acknowledged seq + 1. With R = 2 and offset 0 the cloud
    reconciles after its 2nd, 4th, … applied batch (§3, `reconcile_offset`): an edge whose
    batches 0 and 1 are acknowledged reports 2 and is due next at 4."""
    edge = await enroll(coordinator)
    assert edge["reconcile_offset"] == 0
    reply = await coordinator.post(
        f"/v1/edges/{edge['edge_id']}/heartbeat",
        json={"edge_version": 4, "step": 2},
        headers=bearer(edge["token"]),
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["next_reconciliations"][:2] == [4, 6]
    view = (await coordinator.get(f"/v1/edges/{edge['edge_id']}")).json()
    assert view["step"] == 2
