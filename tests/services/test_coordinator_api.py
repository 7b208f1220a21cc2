"""Every coordinator endpoint in-process (httpx.ASGITransport), error paths included.

The client fixtures fail any test that receives a 500 (see ``conftest.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from simultrain.coordinator import CoordinatorSettings, SQLiteStore, create_app
from simultrain.coordinator.records import RunConfigField
from simultrain.shared.auth import issue_token, key_id, verify_token
from simultrain.shared.training.config import RunConfig as SharedRunConfig


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


async def add_cloud(
    client: httpx.AsyncClient,
    url: str = "http://cloud-a.test:9000",
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> str:
    response = await client.post("/v1/clouds", json={"url": url, **extra}, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["cloud_id"])


async def add_edge(
    client: httpx.AsyncClient, *, headers: dict[str, str] | None = None, **body: Any
) -> dict[str, Any]:
    response = await client.post("/v1/edges", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


# --- health and config -----------------------------------------------------------------------


async def test_health_ready_and_config(coordinator_client: httpx.AsyncClient) -> None:
    assert (await coordinator_client.get("/healthz")).json() == {"status": "ok"}
    ready = await coordinator_client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "clouds_up": 0, "edges_up": 0}
    config = (await coordinator_client.get("/v1/config")).json()
    assert config["auth_enabled"] is False
    assert config["heartbeat_interval_s"] == 1.0 and config["heartbeat_timeout_s"] == 5.0
    run_config = config["run_config"]
    expected = {
        "mode": "simultrain",
        "alpha": None,
        "beta": 0.9,
        "reconcile_every": 10,
        "window": "auto",
        "act_codec": "lz4",
        "delta_codec": "lz4",
        "grad_codec": "lz4",
        "dataset": "imu",
        "model_id": None,
        "seed": 0,
        "batch_size": 32,
    }
    assert {k: run_config[k] for k in expected} == expected
    # Every field the coordinator hands out is one the services' RunConfig understands, and
    # the services' defaults are the coordinator's: the two cannot drift apart silently.
    shared = SharedRunConfig().to_mapping()
    assert set(run_config) == set(shared)
    assert SharedRunConfig.from_mapping(run_config) == SharedRunConfig()


def test_the_api_documents_every_run_key_as_declared(coordinator_app: FastAPI) -> None:
    """The OpenAPI schema of run_config is the shared declaration's: every key, with its
    type, bounds, default and meaning, and no other key."""
    schemas = coordinator_app.openapi()["components"]["schemas"]
    for view in ("ConfigView", "EdgeRegistered"):
        served = schemas[view]["properties"]["run_config"]
        assert served["additionalProperties"] is False
        assert list(served["properties"]) == list(SharedRunConfig.keys(driver=False))
        for key in SharedRunConfig.declaration(driver=False):
            assert served["properties"][key.name]["description"] == key.description
    window = schemas["ConfigView"]["properties"]["run_config"]["properties"]["window"]
    number, word = window["anyOf"]
    assert (number["type"], number["minimum"], window["default"]) == ("integer", 0, "auto")
    assert word == {"type": "string", "enum": ["auto"]}


class _RunConfigBody(BaseModel):
    run_config: RunConfigField


async def _echo_run_config(body: _RunConfigBody) -> _RunConfigBody:
    return body


async def test_a_run_configuration_in_a_request_is_checked_key_by_key(
    coordinator_app: FastAPI, coordinator_serve: Any
) -> None:
    """A request carrying a run configuration (here a test route on the coordinator's app,
    with its error handling) is a 422 naming the unknown or ill-typed key."""
    coordinator_app.post("/test/run-config")(_echo_run_config)
    async with coordinator_serve(coordinator_app) as client:
        for bad, named in (
            ({"windw": 4}, "'windw'"),
            ({"steps": 10}, "'steps'"),  # the in-process driver's own: not on the wire
            ({"window": "4"}, "'window': expected int or 'auto', got str"),
            ({"beta": 2}, "'beta': must be ≤ 1"),
            ({"mode": "turbo"}, "'mode': 'turbo' is not one of"),
        ):
            response = await client.post("/test/run-config", json={"run_config": bad})
            error = assert_error(response, 422, "invalid_request")
            assert named in error["message"], error
        good = await client.post("/test/run-config", json={"run_config": {"window": 2}})
        assert good.status_code == 200, good.text
        assert good.json()["run_config"] == SharedRunConfig(window=2).to_mapping()


async def test_store_failure_is_503(
    tmp_path: Path, coordinator_settings: CoordinatorSettings, coordinator_serve: Any
) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    app = create_app(coordinator_settings, store)
    async with coordinator_serve(app) as client:
        store.close()
        assert_error(await client.get("/readyz"), 503, "store_unavailable")
        assert_error(await client.post("/v1/edges"), 503, "store_unavailable")
        assert (await client.get("/healthz")).status_code == 200


# --- clouds ---------------------------------------------------------------------------------


async def test_cloud_register_heartbeat_list(coordinator_client: httpx.AsyncClient) -> None:
    response = await coordinator_client.post(
        "/v1/clouds", json={"url": "http://cloud-a.test:9000/"}
    )
    assert response.status_code == 201
    registered = response.json()
    cloud_id = registered["cloud_id"]
    assert registered["heartbeat_interval_s"] == 1.0
    edge = await add_edge(coordinator_client)

    beat = await coordinator_client.post(
        f"/v1/clouds/{cloud_id}/heartbeat",
        json={"master_version": 12, "connected_edges": [edge["edge_id"]]},
    )
    assert beat.status_code == 200
    assert beat.json() == {
        "cloud_id": cloud_id,
        "status": "up",
        "assigned_edges": [edge["edge_id"]],
        "revoked_edges": {},
    }

    (cloud,) = (await coordinator_client.get("/v1/clouds")).json()
    assert cloud["cloud_id"] == cloud_id
    assert cloud["url"] == "http://cloud-a.test:9000"  # trailing slash dropped
    assert cloud["status"] == "up" and cloud["master_version"] == 12
    assert cloud["connected_edges"] == [edge["edge_id"]] and cloud["live_edges"] == 1


async def test_cloud_registering_again_keeps_its_id(coordinator_client: httpx.AsyncClient) -> None:
    first = await add_cloud(coordinator_client)
    again = await add_cloud(coordinator_client, master_version=30)
    assert again == first
    (cloud,) = (await coordinator_client.get("/v1/clouds")).json()
    assert cloud["master_version"] == 30


async def test_unknown_cloud_heartbeat(coordinator_client: httpx.AsyncClient) -> None:
    response = await coordinator_client.post(
        "/v1/clouds/cloud-nope/heartbeat", json={"master_version": 1}
    )
    assert_error(response, 404, "unknown_cloud")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"url": ""},
        {"url": "not a url"},
        {"url": "ftp://cloud.test"},
        {"url": "http://"},
        {"url": 42},
        {"url": "http://cloud.test", "master_version": -1},
        {"url": "http://cloud.test", "master_version": "3"},
        {"url": "http://cloud.test/" + "x" * 3000},
    ],
)
async def test_cloud_registration_rejects(
    coordinator_client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    assert_error(await coordinator_client.post("/v1/clouds", json=body), 422, "invalid_request")


# --- edges ----------------------------------------------------------------------------------


async def test_edge_registration_without_a_cloud_is_503(
    coordinator_client: httpx.AsyncClient,
) -> None:
    response = await coordinator_client.post("/v1/edges", json={})
    assert_error(response, 503, "no_cloud_available")
    assert response.headers["retry-after"] == "1"


async def test_edge_registration_returns_assignment_config_and_schedule(
    coordinator_client: httpx.AsyncClient,
) -> None:
    cloud_id = await add_cloud(coordinator_client)
    edge = await add_edge(coordinator_client, name="pi-kitchen", shard_index=1, shard_count=4)
    assert edge["edge_id"].startswith("edge-")
    assert edge["cloud_id"] == cloud_id and edge["cloud_url"] == "http://cloud-a.test:9000"
    assert edge["run_config"]["alpha"] is None and edge["run_config"]["window"] == "auto"
    assert edge["reconcile_every"] == 10
    assert edge["reconcile_offset"] == 2  # shard 1 of 4: 1·10 // 4
    assert edge["next_reconciliations"] == [8, 18, 28]  # (step + 2) mod 10 = 0, as the cloud
    assert edge["heartbeat_interval_s"] == 1.0 and edge["heartbeat_timeout_s"] == 5.0
    assert edge["token"] is None and edge["token_expires_at"] is None  # development mode

    view = (await coordinator_client.get(f"/v1/edges/{edge['edge_id']}")).json()
    assert view["name"] == "pi-kitchen" and (view["shard_index"], view["shard_count"]) == (1, 4)
    assert view["status"] == "up" and view["cloud_url"] == edge["cloud_url"]


async def test_edge_registration_body_is_optional(coordinator_client: httpx.AsyncClient) -> None:
    await add_cloud(coordinator_client)
    assert (await coordinator_client.post("/v1/edges")).status_code == 201
    assert (
        await coordinator_client.post("/v1/edges", json={"extra": "ignored"})
    ).status_code == 201


async def test_edges_go_to_the_least_loaded_live_cloud(
    coordinator_client: httpx.AsyncClient,
) -> None:
    a = await add_cloud(coordinator_client, "http://a.test")
    b = await add_cloud(coordinator_client, "http://b.test")
    assigned = [(await add_edge(coordinator_client))["cloud_id"] for _ in range(5)]
    assert assigned == [a, b, a, b, a]
    loads = {
        c["cloud_id"]: c["live_edges"] for c in (await coordinator_client.get("/v1/clouds")).json()
    }
    assert loads == {a: 3, b: 2}


async def test_reconciliation_is_staggered_between_edges(
    coordinator_client: httpx.AsyncClient,
) -> None:
    await add_cloud(coordinator_client)
    by_shard = [
        (await add_edge(coordinator_client, shard_index=i, shard_count=5))["reconcile_offset"]
        for i in range(5)
    ]
    assert by_shard == [0, 2, 4, 6, 8]


async def test_reconciliation_is_staggered_by_registration_order(
    coordinator_client: httpx.AsyncClient,
) -> None:
    # without shards the number of edges is unknown: offsets spread for any prefix
    await add_cloud(coordinator_client)
    by_order = [(await add_edge(coordinator_client))["reconcile_offset"] for _ in range(4)]
    assert by_order == [0, 5, 2, 7]


async def test_edge_heartbeat_versions_and_lag(coordinator_client: httpx.AsyncClient) -> None:
    cloud_id = await add_cloud(coordinator_client)
    edge = await add_edge(coordinator_client)
    edge_id = edge["edge_id"]
    await coordinator_client.post(f"/v1/clouds/{cloud_id}/heartbeat", json={"master_version": 50})
    beat = await coordinator_client.post(
        f"/v1/edges/{edge_id}/heartbeat", json={"edge_version": 46, "step": 23}
    )
    assert beat.status_code == 200
    reply = beat.json()
    assert reply["edge_id"] == edge_id and reply["cloud_id"] == cloud_id
    assert reply["cloud_status"] == "up" and reply["master_version"] == 50
    assert reply["reconcile_offset"] == 0 and reply["next_reconciliations"] == [30, 40, 50]
    assert reply["token"] is None

    view = (await coordinator_client.get(f"/v1/edges/{edge_id}")).json()
    assert (view["edge_version"], view["step"]) == (46, 23)
    versions = (await coordinator_client.get("/v1/versions")).json()
    assert versions["clouds"] == [
        {
            "cloud_id": cloud_id,
            "url": "http://cloud-a.test:9000",
            "status": "up",
            "master_version": 50,
        }
    ]
    assert versions["edges"] == [
        {
            "edge_id": edge_id,
            "cloud_id": cloud_id,
            "status": "up",
            "edge_version": 46,
            "step": 23,
            "master_version": 50,
            "lag": 4,
        }
    ]
    assert versions["max_lag"] == 4


async def test_versions_when_empty(coordinator_client: httpx.AsyncClient) -> None:
    assert (await coordinator_client.get("/v1/versions")).json() == {
        "clouds": [],
        "edges": [],
        "max_lag": None,
    }


async def test_list_and_delete_edges(coordinator_client: httpx.AsyncClient) -> None:
    await add_cloud(coordinator_client)
    first, second = await add_edge(coordinator_client), await add_edge(coordinator_client)
    listed = (await coordinator_client.get("/v1/edges")).json()
    assert [e["edge_id"] for e in listed] == [first["edge_id"], second["edge_id"]]
    assert (await coordinator_client.delete(f"/v1/edges/{first['edge_id']}")).status_code == 204
    listed = (await coordinator_client.get("/v1/edges")).json()
    assert [e["edge_id"] for e in listed] == [second["edge_id"]]
    # the freed registration slot is reused, keeping offsets spread
    third = await add_edge(coordinator_client)
    assert third["reconcile_offset"] == first["reconcile_offset"]


async def test_a_removed_edge_is_revoked_in_every_clouds_heartbeat(
    coordinator_client: httpx.AsyncClient,
) -> None:
    cloud_id = await add_cloud(coordinator_client)
    gone, kept = await add_edge(coordinator_client), await add_edge(coordinator_client)
    assert (await coordinator_client.delete(f"/v1/edges/{gone['edge_id']}")).status_code == 204
    beat = await coordinator_client.post(
        f"/v1/clouds/{cloud_id}/heartbeat", json={"master_version": 0}
    )
    revoked = beat.json()["revoked_edges"]
    assert list(revoked) == [gone["edge_id"]] and kept["edge_id"] not in revoked
    assert isinstance(revoked[gone["edge_id"]], float)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/edges/edge-nope"),
        ("DELETE", "/v1/edges/edge-nope"),
        ("POST", "/v1/edges/edge-nope/heartbeat"),
    ],
)
async def test_unknown_edge_is_404(
    coordinator_client: httpx.AsyncClient, method: str, path: str
) -> None:
    body = {"edge_version": 0, "step": 0} if method == "POST" else None
    response = await coordinator_client.request(method, path, json=body)
    error = assert_error(response, 404, "unknown_edge")
    assert "edge-nope" in error["message"]


# --- malformed input: always a 4xx JSON error, never a 500 ------------------------------------

JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (b"{not json", JSON),
        (b"", JSON),
        (b"[1, 2, 3]", JSON),
        (b'"a string"', JSON),
        (b"null", JSON),
        (b'{"edge_version": 1}', JSON),
        (b'{"edge_version": "1", "step": 2}', JSON),
        (b'{"edge_version": 1.5, "step": 2}', JSON),
        (b'{"edge_version": true, "step": 2}', JSON),
        (b'{"edge_version": -1, "step": 2}', JSON),
        (b'{"edge_version": 1, "step": 99999999999999999999999}', JSON),
        (b'{"edge_version": 1, "step": NaN}', JSON),
        (b"\xff\xfe\x00garbage", JSON),
        (b"edge_version=1&step=2", {"content-type": "application/x-www-form-urlencoded"}),
        (b"edge_version=1", {"content-type": "text/plain"}),
    ],
)
async def test_malformed_heartbeat_bodies_are_422(
    coordinator_client: httpx.AsyncClient, content: bytes, headers: dict[str, str]
) -> None:
    await add_cloud(coordinator_client)
    edge_id = (await add_edge(coordinator_client))["edge_id"]
    response = await coordinator_client.post(
        f"/v1/edges/{edge_id}/heartbeat", content=content, headers=headers
    )
    error = assert_error(response, 422, "invalid_request")
    for detail in error["details"]:
        assert set(detail) == {"loc", "msg", "type"}  # no echo of the input


@pytest.mark.parametrize(
    "body",
    [
        {"name": 5},
        {"name": "x" * 129},
        {"shard_index": 0},
        {"shard_count": 3},
        {"shard_index": 3, "shard_count": 3},
        {"shard_index": -1, "shard_count": 3},
        {"shard_index": 0, "shard_count": 0},
        {"shard_index": "0", "shard_count": 2},
        [],
        "edge",
    ],
)
async def test_malformed_edge_registration_is_422(
    coordinator_client: httpx.AsyncClient, body: Any
) -> None:
    await add_cloud(coordinator_client)
    assert_error(await coordinator_client.post("/v1/edges", json=body), 422, "invalid_request")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"master_version": "1"},
        {"master_version": 1, "connected_edges": "edge-1"},
        {"master_version": 1, "connected_edges": [1]},
        {"master_version": 2**63},
    ],
)
async def test_malformed_cloud_heartbeat_is_422(
    coordinator_client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    cloud_id = await add_cloud(coordinator_client)
    response = await coordinator_client.post(f"/v1/clouds/{cloud_id}/heartbeat", json=body)
    assert_error(response, 422, "invalid_request")


async def test_unknown_route_and_method_are_json(coordinator_client: httpx.AsyncClient) -> None:
    assert_error(await coordinator_client.get("/v1/nothing"), 404, "not_found")
    assert_error(await coordinator_client.put("/v1/edges"), 405, "method_not_allowed")


# --- authentication (SECURITY.md) -------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_auth_edge_enrollment(
    coordinator_auth_client: httpx.AsyncClient, coordinator_credentials: Any
) -> None:
    client, creds = coordinator_auth_client, coordinator_credentials
    await add_cloud(client, headers=creds.admin_headers)
    missing = await client.post("/v1/edges", json={})
    assert_error(missing, 401, "enrollment_secret_required")
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = await client.post("/v1/edges", json={}, headers={"X-Enrollment-Secret": "guess"})
    assert_error(wrong, 403, "enrollment_secret_invalid")
    wrong_in_body = await client.post("/v1/edges", json={"enrollment_secret": "guess"})
    assert_error(wrong_in_body, 403, "enrollment_secret_invalid")
    in_body = await client.post("/v1/edges", json={"enrollment_secret": creds.enrollment_secret})
    assert in_body.status_code == 201
    in_header = await client.post("/v1/edges", headers=creds.enroll_headers)
    assert in_header.status_code == 201
    assert (await client.get("/v1/config")).json()["auth_enabled"] is True


async def test_auth_token_is_bound_to_the_edge(
    coordinator_auth_client: httpx.AsyncClient, coordinator_credentials: Any, coordinator_clock: Any
) -> None:
    client, creds = coordinator_auth_client, coordinator_credentials
    await add_cloud(client, headers=creds.admin_headers)
    edge = await add_edge(client, headers=creds.enroll_headers)
    claims = verify_token(edge["token"], [creds.token_key], now=coordinator_clock.now)
    assert claims.edge_id == edge["edge_id"]
    assert claims.expires_at == edge["token_expires_at"] == int(coordinator_clock.now) + 600
    assert claims.key_id == key_id(creds.token_key)


async def test_auth_edge_heartbeat_needs_its_own_valid_token(
    coordinator_auth_client: httpx.AsyncClient, coordinator_credentials: Any, coordinator_clock: Any
) -> None:
    client, creds = coordinator_auth_client, coordinator_credentials
    await add_cloud(client, headers=creds.admin_headers)
    mine = await add_edge(client, headers=creds.enroll_headers)
    other = await add_edge(client, headers=creds.enroll_headers)
    path, body = f"/v1/edges/{mine['edge_id']}/heartbeat", {"edge_version": 1, "step": 1}

    async def beat(headers: dict[str, str] | None = None) -> httpx.Response:
        return await client.post(path, json=body, headers=headers)

    assert_error(await beat(), 401, "token_missing")
    assert_error(await beat({"Authorization": "Basic eDp5"}), 401, "token_missing")
    assert_error(await beat(bearer("not.a.token")), 401, "token_invalid")
    forged = issue_token(mine["edge_id"], "f" * 32, ttl_s=600, now=coordinator_clock.now)
    assert_error(await beat(bearer(forged)), 401, "token_invalid")
    assert_error(await beat(bearer(other["token"])), 403, "token_wrong_edge")
    assert_error(await beat(creds.admin_headers), 401, "token_invalid")
    assert (await beat(bearer(mine["token"]))).status_code == 200

    # every heartbeat refreshes the token, so a live edge never runs out
    coordinator_clock.advance(500)
    refreshed = await beat(bearer(mine["token"]))
    assert refreshed.status_code == 200
    fresh = refreshed.json()["token"]
    assert refreshed.json()["token_expires_at"] == int(coordinator_clock.now) + 600
    coordinator_clock.advance(200)  # the first token has expired, the fresh one has not
    assert_error(await beat(bearer(mine["token"])), 401, "token_expired")
    assert (await beat(bearer(fresh))).status_code == 200


async def test_auth_admin_endpoint(
    coordinator_auth_client: httpx.AsyncClient, coordinator_credentials: Any
) -> None:
    client, creds = coordinator_auth_client, coordinator_credentials
    await add_cloud(client, headers=creds.admin_headers)
    edge = await add_edge(client, headers=creds.enroll_headers)
    path = f"/v1/edges/{edge['edge_id']}"
    assert_error(await client.delete(path), 401, "admin_token_required")
    assert_error(await client.delete(path, headers=bearer("nope")), 403, "admin_token_invalid")
    # an edge's own token is no admin token
    assert_error(
        await client.delete(path, headers=bearer(edge["token"])), 403, "admin_token_invalid"
    )
    assert (await client.delete(path, headers=creds.admin_headers)).status_code == 204
    assert_error(await client.delete(path, headers=creds.admin_headers), 404, "unknown_edge")


async def test_auth_clouds_need_the_admin_token(
    coordinator_auth_client: httpx.AsyncClient, coordinator_credentials: Any
) -> None:
    client, creds = coordinator_auth_client, coordinator_credentials
    body = {"url": "http://cloud.test"}
    assert_error(await client.post("/v1/clouds", json=body), 401, "admin_token_required")
    assert_error(
        await client.post("/v1/clouds", json=body, headers=bearer("x")), 403, "admin_token_invalid"
    )
    cloud_id = await add_cloud(client, headers=creds.admin_headers)
    path = f"/v1/clouds/{cloud_id}/heartbeat"
    assert_error(await client.post(path, json={"master_version": 1}), 401, "admin_token_required")
    ok = await client.post(path, json={"master_version": 1}, headers=creds.admin_headers)
    assert ok.status_code == 200


async def test_auth_reads_stay_open(coordinator_auth_client: httpx.AsyncClient) -> None:
    for path in ("/v1/edges", "/v1/clouds", "/v1/versions", "/v1/config", "/healthz", "/readyz"):
        assert (await coordinator_auth_client.get(path)).status_code == 200


async def test_auth_refusals_are_logged_without_secrets(
    coordinator_auth_client: httpx.AsyncClient,
    coordinator_credentials: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, creds = coordinator_auth_client, coordinator_credentials
    await add_cloud(client, headers=creds.admin_headers)
    with caplog.at_level(logging.DEBUG, logger="simultrain"):
        await client.post("/v1/edges", headers={"X-Enrollment-Secret": "wrong-secret-123"})
        await client.delete("/v1/edges/x", headers=bearer("wrong-admin-456"))
        edge = await add_edge(client, headers=creds.enroll_headers)
        await client.post(
            f"/v1/edges/{edge['edge_id']}/heartbeat",
            json={"edge_version": 0, "step": 0},
            headers=bearer(edge["token"] + "tampered"),
        )
    text = caplog.text
    assert "enrollment_secret_invalid" in text and "admin_token_invalid" in text
    assert "token_invalid" in text
    for secret in (
        "wrong-secret-123",
        "wrong-admin-456",
        creds.enrollment_secret,
        creds.admin_token,
        creds.token_key,
        edge["token"],
    ):
        assert secret not in text


async def test_auth_key_rotation(
    coordinator_clean_env: None,
    coordinator_credentials: Any,
    coordinator_clock: Any,
    coordinator_serve: Any,
) -> None:
    creds, new_key, old_key = coordinator_credentials, "n" * 32, coordinator_credentials.token_key
    settings = CoordinatorSettings(
        db_path=":memory:",
        enrollment_secret=creds.enrollment_secret,
        admin_token=creds.admin_token,
        token_key=new_key,
        token_previous_keys=(old_key,),
    )
    async with coordinator_serve(create_app(settings, clock=coordinator_clock)) as client:
        await add_cloud(client, headers=creds.admin_headers)
        edge_id = (await add_edge(client, headers=creds.enroll_headers))["edge_id"]
        old_token = issue_token(edge_id, old_key, ttl_s=60, now=coordinator_clock.now)
        reply = await client.post(
            f"/v1/edges/{edge_id}/heartbeat",
            json={"edge_version": 0, "step": 0},
            headers=bearer(old_token),
        )
        assert reply.status_code == 200
        # the refreshed token is signed with the new key
        claims = verify_token(reply.json()["token"], [new_key], now=coordinator_clock.now)
        assert claims.key_id == key_id(new_key)
