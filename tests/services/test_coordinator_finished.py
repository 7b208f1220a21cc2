"""An edge that trained its steps is finished, not down (docs/DEPLOY.md, "Watch it train").

The edge says so in its last heartbeat (``finished: true``); the health sweep then leaves it
alone: no WARNING, no "down", in every store. Time is a fake clock; nothing sleeps.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from simultrain.coordinator import (
    Coordinator,
    CoordinatorSettings,
    CoordinatorStore,
    SQLiteStore,
    create_app,
)
from simultrain.coordinator.records import Status
from simultrain.coordinator.sqlite import _MIGRATIONS

TIMEOUT = 5.0  # coordinator_settings.heartbeat_timeout_s


@pytest.fixture
def coordinator(
    coordinator_store: CoordinatorStore,
    coordinator_settings: CoordinatorSettings,
    coordinator_clock: Any,
) -> Coordinator:
    return Coordinator(coordinator_store, coordinator_settings, clock=coordinator_clock)


def test_a_finished_edge_is_finished_not_down(
    coordinator: Coordinator, coordinator_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    cloud = coordinator.register_cloud("http://a.test").cloud_id
    done, failed = (coordinator.register_edge().edge.edge_id for _ in range(2))
    coordinator.edge_heartbeat(done, edge_version=40, step=500, finished=True)
    coordinator.edge_heartbeat(failed, edge_version=39, step=480)
    coordinator_clock.advance(TIMEOUT)
    coordinator.cloud_heartbeat(cloud, master_version=41)
    with caplog.at_level(logging.INFO, logger="simultrain.coordinator"):
        result = coordinator.sweep()
    assert result.edges_down == (failed,)  # silent without saying so: a failure
    statuses = {e.edge_id: e.status for e in coordinator.list_edges()}
    assert statuses == {done: Status.FINISHED, failed: Status.DOWN}
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned == [f"edge {failed} missed its heartbeats: down"]


def test_a_finished_edge_that_trains_again_is_up(
    coordinator: Coordinator, coordinator_clock: Any
) -> None:
    coordinator.register_cloud("http://a.test")
    edge = coordinator.register_edge().edge.edge_id
    coordinator.edge_heartbeat(edge, edge_version=40, step=500, finished=True)
    coordinator_clock.advance(3 * TIMEOUT)
    again = coordinator.edge_heartbeat(edge, edge_version=41, step=501)  # more steps
    assert again.edge.status is Status.UP
    coordinator_clock.advance(TIMEOUT)
    assert coordinator.sweep().edges_down == (edge,)


def test_finished_survives_a_restart_of_the_sqlite_store(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.db"
    settings = CoordinatorSettings(db_path=str(path), heartbeat_timeout_s=TIMEOUT)
    with SQLiteStore(path) as store:
        coordinator = Coordinator(store, settings)
        coordinator.register_cloud("http://a.test")
        edge = coordinator.register_edge().edge.edge_id
        coordinator.edge_heartbeat(edge, edge_version=3, step=9, finished=True)
    with SQLiteStore(path) as reopened:
        assert [e.status for e in reopened.list_edges()] == [Status.FINISHED]


def test_sqlite_migrates_a_version_2_database_keeping_the_edges_in_order(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path)
    for migration in _MIGRATIONS[:2]:
        for statement in migration:
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 2")
    for ordinal, edge in enumerate(("edge-b", "edge-a")):  # registration order is not id order
        conn.execute(
            "INSERT INTO edges VALUES (?, 'cloud-1', 'down', 1.0, 1.0, ?, 0, NULL, NULL, "
            "NULL, 7, 9)",
            (edge, ordinal),
        )
    conn.commit()
    conn.close()
    with SQLiteStore(path) as store:
        assert [e.edge_id for e in store.list_edges()] == ["edge-b", "edge-a"]
        edge = store.get_edge("edge-a")
        assert edge is not None
        from dataclasses import replace

        store.put_edge(replace(edge, status=Status.FINISHED))
        assert [e.status for e in store.list_edges()] == [Status.DOWN, Status.FINISHED]


async def test_the_api_takes_finished_and_shows_it(
    coordinator_settings: CoordinatorSettings,
) -> None:
    app = create_app(coordinator_settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://c") as client,
    ):
        cloud = await client.post("/v1/clouds", json={"url": "http://a.test"})
        assert cloud.status_code == 201, cloud.text
        edge = (await client.post("/v1/edges", json={})).json()["edge_id"]
        beat = await client.post(
            f"/v1/edges/{edge}/heartbeat", json={"edge_version": 1, "step": 5, "finished": True}
        )
        assert beat.status_code == 200, beat.text
        (view,) = (await client.get("/v1/edges")).json()
        assert view["status"] == "finished"
