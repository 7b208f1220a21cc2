"""A request costs the same in a fleet of 100 edges and of 5 000: its database work, counted.

The work of a request is the statements it runs and the SQLite virtual-machine steps they
take: a scan of N edges is at least N steps, an index lookup a few dozen. Each request is
made through the HTTP app, authentication on, against a fleet of each size seeded straight
into the store; its work must grow by less than 20 % (the target of docs/DEPLOY.md "The
coordinator on PostgreSQL"). On PostgreSQL the same statements are checked by their plans:
none reads the edges table sequentially.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from simultrain.coordinator import CoordinatorSettings, SQLiteStore, create_app
from simultrain.coordinator.postgres import PostgresStore
from simultrain.coordinator.records import EdgeRecord, Status
from simultrain.coordinator.registry import Coordinator
from simultrain.coordinator.sql import SQLTransaction
from simultrain.coordinator.sqlite import WorkCounter
from simultrain.coordinator.store import CoordinatorStore
from simultrain.shared import auth

SMALL, LARGE = 100, 5_000
ENROLL = "enrollment-secret-for-scale"
KEY = "k" * 40
ADMIN = "admin-token-for-scale"
NOW = 1_800_000_000.0


@dataclass
class Fleet:
    client: TestClient
    store: CoordinatorStore
    coordinator: Coordinator
    clouds: list[str]
    edges: list[str]

    def token(self, edge_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {auth.issue_token(edge_id, KEY, 600, now=NOW)}"}


def seeded(store: CoordinatorStore, edges: int) -> Fleet:
    """A coordinator over ``store`` with 4 clouds and ``edges`` edges, half of them held by
    their cloud's session, the rest heartbeating on their own."""
    settings = CoordinatorSettings(
        db_path=":memory:",
        enrollment_secret=ENROLL,
        token_key=KEY,
        admin_token=ADMIN,
        token_ttl_s=600,
    )
    app = create_app(settings, store, clock=lambda: NOW)
    coordinator: Coordinator = app.state.coordinator
    coordinator.fleet_size_max_age_s = 0.0  # the same statements on every request
    client = TestClient(app)  # no lifespan: no background sweep between the counts
    admin = {"Authorization": f"Bearer {ADMIN}"}
    clouds = [
        client.post("/v1/clouds", json={"url": f"ws://cloud-{i}.test"}, headers=admin).json()[
            "cloud_id"
        ]
        for i in range(4)
    ]
    records = []
    for i in range(edges):
        held = i % 2 == 0
        records.append(
            EdgeRecord(
                edge_id=f"edge-{i:05d}",
                cloud_id=clouds[i % 4],
                status=Status.UP,
                last_heartbeat=NOW,
                registered_at=NOW,
                ordinal=i,
                reconcile_offset=0,
                session_cloud_id=clouds[i % 4] if held else None,
                expires_at=None if held else NOW + 1000 + i,
                enrollment_id=f"key-{i}",
            )
        )
    store.put_edges(records)
    return Fleet(client, store, coordinator, clouds, [r.edge_id for r in records])


REQUESTS: dict[str, Callable[[Fleet], Any]] = {
    "enroll": lambda f: f.client.post(
        "/v1/edges", json={"name": "new"}, headers={"X-Enrollment-Secret": ENROLL}
    ),
    "enroll again (same enrollment_id)": lambda f: f.client.post(
        "/v1/edges",
        json={"enrollment_id": "key-77"},
        headers={"X-Enrollment-Secret": ENROLL},
    ),
    "edge heartbeat": lambda f: f.client.post(
        f"/v1/edges/{f.edges[1]}/heartbeat",
        json={"edge_version": 3, "step": 4},
        headers=f.token(f.edges[1]),
    ),
    "edge heartbeat, not streaming": lambda f: f.client.post(
        f"/v1/edges/{f.edges[2]}/heartbeat",
        json={"edge_version": 3, "step": 4, "streaming": False},
        headers=f.token(f.edges[2]),
    ),
    "cloud heartbeat with session changes": lambda f: f.client.post(
        f"/v1/clouds/{f.clouds[1]}/heartbeat",
        json={
            "master_version": 9,
            "session_changes": {"opened": [f.edges[5]], "closed": [f.edges[1]]},
            "list_assigned_edges": False,
        },
        headers={"Authorization": f"Bearer {ADMIN}"},
    ),
    "readyz": lambda f: f.client.get("/readyz"),
    "get one edge": lambda f: f.client.get(f"/v1/edges/{f.edges[3]}"),
    "health sweep, nothing silent": lambda f: f.coordinator.sweep(),
}


def response_ok(result: Any) -> None:
    if isinstance(result, httpx.Response):
        assert result.status_code < 300, result.text


@pytest.fixture(scope="module")
def sqlite_fleets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, Fleet]]:
    fleets = {}
    for size in (SMALL, LARGE):
        store = SQLiteStore(tmp_path_factory.mktemp("scale") / f"fleet-{size}.db")
        fleets[size] = seeded(store, size)
    yield fleets
    for fleet in fleets.values():
        fleet.store.close()


@pytest.mark.parametrize("name", list(REQUESTS))
def test_a_request_does_the_same_work_at_100_and_5000_edges(
    sqlite_fleets: dict[int, Fleet], name: str
) -> None:
    counted: dict[int, WorkCounter] = {}
    for size, fleet in sqlite_fleets.items():
        store = fleet.store
        assert isinstance(store, SQLiteStore)
        REQUESTS[name](fleet)  # once to warm up (prepared statements, caches)
        with store.count_work() as work:
            response_ok(REQUESTS[name](fleet))
        counted[size] = work
    small, large = counted[SMALL], counted[LARGE]
    print(f"{name}: {small} at {SMALL} edges, {large} at {LARGE} edges")
    assert large.statements == small.statements, (small, large)
    assert large.vm_steps <= 1.2 * small.vm_steps, (small, large)


def test_the_counter_sees_a_scan(sqlite_fleets: dict[int, Fleet]) -> None:
    """The measure itself: listing every edge is work proportional to the fleet."""
    steps = {}
    for size, fleet in sqlite_fleets.items():
        with fleet.store.count_work() as work:  # type: ignore[attr-defined]
            assert len(fleet.client.get("/v1/edges").json()) >= size
        steps[size] = work.vm_steps
    assert steps[LARGE] > 20 * steps[SMALL]


def test_postgres_plans_read_no_edge_table_sequentially(
    coordinator_postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every statement of every request above, planned by PostgreSQL over 5 000 edges
    (after ANALYZE): no sequential scan of ``edges``."""
    store = PostgresStore(coordinator_postgres_url)
    try:
        fleet = seeded(store, LARGE)
        with psycopg.connect(coordinator_postgres_url, autocommit=True) as conn:
            conn.execute("ANALYZE")
        statements: list[tuple[str, Any]] = []
        run = SQLTransaction._run

        def recording(tx: SQLTransaction, text: str, params: Any = ()) -> Any:
            statements.append((tx._dialect.sql(text), params))
            return run(tx, text, params)

        monkeypatch.setattr(SQLTransaction, "_run", recording)
        for request in REQUESTS.values():
            response_ok(request(fleet))
        monkeypatch.undo()
        assert len(statements) > 20
        scans = []
        with psycopg.connect(coordinator_postgres_url, autocommit=True) as conn:
            for sql, params in statements:
                plan = conn.execute(f"EXPLAIN {sql}", params).fetchall()  # type: ignore[call-overload]
                text = "\n".join(row[0] for row in plan)
                if "Seq Scan on edges" in text:
                    scans.append(f"{sql}\n{text}")
        assert not scans, "\n\n".join(scans)
    finally:
        store.close()
