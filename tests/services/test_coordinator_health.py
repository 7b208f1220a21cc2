"""Health: silent clouds and edges are marked down, edges of a down cloud move to a live one.

Time is a fake clock moved by the test; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from simultrain.coordinator import (
    Coordinator,
    CoordinatorSettings,
    CoordinatorStore,
    InMemoryStore,
    SQLiteStore,
    create_app,
)
from simultrain.coordinator.health import HealthMonitor
from simultrain.coordinator.records import RunConfig, Status
from simultrain.coordinator.registry import Reassignment

TIMEOUT = 5.0  # coordinator_settings.heartbeat_timeout_s


@pytest.fixture
def coordinator(
    coordinator_store: CoordinatorStore,
    coordinator_settings: CoordinatorSettings,
    coordinator_clock: Any,
) -> Coordinator:
    """The registry over each store implementation."""
    return Coordinator(coordinator_store, coordinator_settings, clock=coordinator_clock)


def statuses(coordinator: Coordinator) -> dict[str, Status]:
    result = {cloud.cloud_id: cloud.status for cloud, _ in coordinator.list_clouds()}
    result.update({edge.edge_id: edge.status for edge in coordinator.list_edges()})
    return result


def test_silent_cloud_goes_down_and_its_edges_move(
    coordinator: Coordinator, coordinator_clock: Any
) -> None:
    a = coordinator.register_cloud("http://a.test").cloud_id
    b = coordinator.register_cloud("http://b.test").cloud_id
    edges = [coordinator.register_edge().edge.edge_id for _ in range(4)]  # a, b, a, b

    coordinator_clock.advance(TIMEOUT - 0.1)
    coordinator.cloud_heartbeat(b, master_version=3)
    for edge_id in edges:
        coordinator.edge_heartbeat(edge_id, edge_version=1, step=1)
    assert not coordinator.sweep().changed  # nobody silent for the full timeout yet

    coordinator_clock.advance(0.1)  # a's last heartbeat is now exactly TIMEOUT old
    result = coordinator.sweep()
    assert result.clouds_down == (a,) and result.edges_down == ()
    assert set(result.reassigned) == {Reassignment(edges[0], a, b), Reassignment(edges[2], a, b)}
    assert statuses(coordinator)[a] is Status.DOWN
    assert {coordinator.get_edge(e).cloud.cloud_id for e in edges} == {b}
    assert not coordinator.sweep().changed  # idempotent


async def test_next_heartbeat_reports_the_new_cloud(
    coordinator_client: httpx.AsyncClient, coordinator_clock: Any, coordinator_app: Any
) -> None:
    client = coordinator_client
    a = (await client.post("/v1/clouds", json={"url": "http://a.test"})).json()["cloud_id"]
    edge = (await client.post("/v1/edges")).json()
    assert edge["cloud_url"] == "http://a.test"
    b = (await client.post("/v1/clouds", json={"url": "http://b.test"})).json()["cloud_id"]

    coordinator_clock.advance(TIMEOUT)
    await client.post(f"/v1/clouds/{b}/heartbeat", json={"master_version": 7})
    await client.post(f"/v1/edges/{edge['edge_id']}/heartbeat", json={"edge_version": 6, "step": 6})
    coordinator_app.state.coordinator.sweep()

    beat = await client.post(
        f"/v1/edges/{edge['edge_id']}/heartbeat", json={"edge_version": 6, "step": 7}
    )
    reply = beat.json()
    assert (reply["cloud_id"], reply["cloud_url"], reply["cloud_status"]) == (
        b,
        "http://b.test",
        "up",
    )
    assert reply["master_version"] == 7
    clouds = {c["cloud_id"]: c["status"] for c in (await client.get("/v1/clouds")).json()}
    assert clouds == {a: "down", b: "up"}


def test_silent_edge_goes_down_and_comes_back(
    coordinator: Coordinator, coordinator_clock: Any
) -> None:
    cloud = coordinator.register_cloud("http://a.test").cloud_id
    edge = coordinator.register_edge().edge.edge_id
    coordinator_clock.advance(TIMEOUT)
    coordinator.cloud_heartbeat(cloud, master_version=1)
    result = coordinator.sweep()
    assert result.edges_down == (edge,) and result.clouds_down == ()
    ((listed, load),) = coordinator.list_clouds()
    assert listed.status is Status.UP and load == 0  # a down edge is no load
    assignment = coordinator.edge_heartbeat(edge, edge_version=2, step=5)
    assert assignment.edge.status is Status.UP and assignment.cloud.cloud_id == cloud


def test_without_a_live_cloud_edges_wait_then_move_to_the_first_that_registers(
    coordinator: Coordinator, coordinator_clock: Any
) -> None:
    a = coordinator.register_cloud("http://a.test").cloud_id
    edge = coordinator.register_edge().edge.edge_id
    coordinator_clock.advance(TIMEOUT)
    coordinator.edge_heartbeat(edge, edge_version=0, step=0)
    assert coordinator.sweep().clouds_down == (a,)
    stranded = coordinator.edge_heartbeat(edge, edge_version=0, step=1)
    assert stranded.cloud.cloud_id == a and stranded.cloud.status is Status.DOWN

    c = coordinator.register_cloud("http://c.test").cloud_id  # moves orphans at once
    assert coordinator.get_edge(edge).cloud.cloud_id == c


def test_a_cloud_back_up_keeps_nothing_it_lost(
    coordinator: Coordinator, coordinator_clock: Any
) -> None:
    a = coordinator.register_cloud("http://a.test").cloud_id
    b = coordinator.register_cloud("http://b.test").cloud_id
    edge = coordinator.register_edge().edge.edge_id
    assert coordinator.get_edge(edge).cloud.cloud_id == a
    coordinator_clock.advance(TIMEOUT)
    coordinator.cloud_heartbeat(b, master_version=0)
    coordinator.edge_heartbeat(edge, edge_version=0, step=0)
    coordinator.sweep()
    beat = coordinator.cloud_heartbeat(a, master_version=10)
    assert beat.cloud.status is Status.UP and beat.assigned_edges == []
    assert coordinator.get_edge(edge).cloud.cloud_id == b


def test_reassignment_spreads_edges_over_live_clouds(
    coordinator: Coordinator, coordinator_clock: Any
) -> None:
    dead = coordinator.register_cloud("http://dead.test").cloud_id
    edges = [coordinator.register_edge().edge.edge_id for _ in range(4)]
    live = [coordinator.register_cloud(f"http://live{i}.test").cloud_id for i in range(2)]
    coordinator_clock.advance(TIMEOUT)
    for cloud_id in live:
        coordinator.cloud_heartbeat(cloud_id, master_version=0)
    for edge_id in edges:
        coordinator.edge_heartbeat(edge_id, edge_version=0, step=0)
    result = coordinator.sweep()
    assert result.clouds_down == (dead,)
    loads = {cloud.cloud_id: load for cloud, load in coordinator.list_clouds()}
    assert loads == {dead: 0, live[0]: 2, live[1]: 2}


def test_restart_gives_everyone_a_full_timeout(
    tmp_path: Path, coordinator_settings: CoordinatorSettings, coordinator_clock: Any
) -> None:
    path = tmp_path / "state.db"
    with SQLiteStore(path) as store:
        first = Coordinator(store, coordinator_settings, clock=coordinator_clock)
        cloud = first.register_cloud("http://a.test").cloud_id
        edge = first.register_edge().edge.edge_id
        first.edge_heartbeat(edge, edge_version=17, step=40)
        first.cloud_heartbeat(cloud, master_version=21)

    coordinator_clock.advance(3600)  # the coordinator was down for an hour
    with SQLiteStore(path) as store:
        second = Coordinator(store, coordinator_settings, clock=coordinator_clock)
        assert not second.sweep().changed  # old heartbeats do not count against them
        assignment = second.get_edge(edge)
        assert (assignment.edge.edge_version, assignment.edge.step) == (17, 40)
        assert assignment.cloud.master_version == 21
        coordinator_clock.advance(TIMEOUT)
        result = second.sweep()
        assert result.clouds_down == (cloud,) and result.edges_down == (edge,)


def test_changed_run_config_wins_and_reschedules(
    tmp_path: Path,
    coordinator_settings: CoordinatorSettings,
    coordinator_clock: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "state.db"
    with SQLiteStore(path) as store:
        first = Coordinator(store, coordinator_settings, clock=coordinator_clock)
        first.register_cloud("http://a.test")
        edges = [first.register_edge().edge.edge_id for _ in range(2)]
        assert [first.get_edge(e).edge.reconcile_offset for e in edges] == [0, 5]

    run = RunConfig.from_mapping(
        {"reconcile_every": 20, "beta": 0.5}, base=coordinator_settings.run
    )
    changed = coordinator_settings.model_copy(update={"run": run})
    with SQLiteStore(path) as store, caplog.at_level(logging.WARNING, "simultrain"):
        second = Coordinator(store, changed, clock=coordinator_clock)
        assert store.get_run_config() == second.run_config == changed.run_config()
        assert [second.get_edge(e).edge.reconcile_offset for e in edges] == [0, 10]
    assert "['beta', 'reconcile_every']" in caplog.text


async def test_background_monitor_sweeps_in_the_lifespan(
    coordinator_clock: Any, coordinator_serve: Any, coordinator_clean_env: None
) -> None:
    settings = CoordinatorSettings(
        db_path=":memory:", heartbeat_interval_s=0.01, heartbeat_timeout_s=30
    )
    app = create_app(settings, InMemoryStore(), clock=coordinator_clock)
    monitor: HealthMonitor = app.state.health_monitor
    async with coordinator_serve(app) as client:
        cloud_id = (await client.post("/v1/clouds", json={"url": "http://a.test"})).json()[
            "cloud_id"
        ]
        coordinator_clock.advance(31)
        # wait on the event itself (the next sweep), bounded; no sleeping
        result = await asyncio.wait_for(monitor.next_sweep(), timeout=10)
        while not result.changed:  # a sweep may have started before the clock moved
            result = await asyncio.wait_for(monitor.next_sweep(), timeout=10)
        assert result.clouds_down == (cloud_id,)
        clouds = (await client.get("/v1/clouds")).json()
        assert clouds[0]["status"] == "down"
    assert monitor.sweeps >= 1


def test_removing_an_edge_revokes_its_tokens_for_one_token_lifetime(
    coordinator: Coordinator, coordinator_clock: Any
) -> None:
    coordinator.register_cloud("http://a.test")
    gone = coordinator.register_edge().edge.edge_id
    coordinator.remove_edge(gone)
    assert coordinator.revocations() == {gone: coordinator_clock.now}
    # Kept while a token issued before the removal can still be valid (plus a minute of
    # clock skew), then forgotten: every token it covered has expired.
    ttl = coordinator.settings.token_ttl_s
    coordinator_clock.advance(ttl + 59)
    coordinator.sweep()  # the health loop's periodic sweep prunes them
    assert gone in coordinator.revocations()
    coordinator_clock.advance(2)
    coordinator.sweep()
    assert coordinator.revocations() == {}
