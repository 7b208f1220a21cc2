"""The one store suite: every CoordinatorStore implementation passes it (as Flower's store suites
do).

Then what only SQLite promises: state survives close and reopen, schema versioning, errors
translated to StoreError.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from simultrain.coordinator import CoordinatorStore, InMemoryStore, SQLiteStore, open_store
from simultrain.coordinator.records import CloudRecord, EdgeRecord, RunConfig, Status
from simultrain.coordinator.store import _MIGRATIONS, SCHEMA_VERSION
from simultrain.shared.errors import StoreError


def make_cloud(
    cloud_id: str = "cloud-1", registered_at: float = 100.0, **kw: object
) -> CloudRecord:
    fields: dict[str, object] = {
        "cloud_id": cloud_id,
        "url": f"http://{cloud_id}.test:9000",
        "status": Status.UP,
        "last_heartbeat": registered_at,
        "registered_at": registered_at,
    }
    fields.update(kw)
    return CloudRecord(**fields)  # type: ignore[arg-type]


def make_edge(edge_id: str = "edge-1", registered_at: float = 100.0, **kw: object) -> EdgeRecord:
    fields: dict[str, object] = {
        "edge_id": edge_id,
        "cloud_id": "cloud-1",
        "status": Status.UP,
        "last_heartbeat": registered_at,
        "registered_at": registered_at,
        "ordinal": 0,
        "reconcile_offset": 0,
    }
    fields.update(kw)
    return EdgeRecord(**fields)  # type: ignore[arg-type]


# --- the shared suite (parametrized over InMemoryStore and SQLiteStore) -------------------


def test_empty_store(coordinator_store: CoordinatorStore) -> None:
    assert coordinator_store.get_run_config() is None
    assert coordinator_store.list_clouds() == []
    assert coordinator_store.list_edges() == []
    assert coordinator_store.get_cloud("nope") is None
    assert coordinator_store.get_edge("nope") is None
    coordinator_store.ping()


def test_run_config_round_trip(coordinator_store: CoordinatorStore) -> None:
    config = RunConfig.from_mapping(
        {
            "alpha": 0.25,
            "compensation": "delay-beta1+forecast",
            "reconcile_every": 0,
            "act_codec": "fp16",
            "dataset": "npz:/x.npz",
        }
    )
    coordinator_store.put_run_config(config)
    assert coordinator_store.get_run_config() == config
    assert coordinator_store.get_run_config().reconcile_every is None  # type: ignore[union-attr]
    coordinator_store.put_run_config(RunConfig())
    assert coordinator_store.get_run_config() == RunConfig()


def test_cloud_round_trip_and_replace(coordinator_store: CoordinatorStore) -> None:
    cloud = make_cloud(master_version=7, connected_edges=("edge-a", "edge-b"))
    coordinator_store.put_cloud(cloud)
    assert coordinator_store.get_cloud("cloud-1") == cloud
    updated = replace(cloud, status=Status.DOWN, master_version=9, connected_edges=())
    coordinator_store.put_cloud(updated)
    assert coordinator_store.get_cloud("cloud-1") == updated
    assert coordinator_store.list_clouds() == [updated]


def test_edge_round_trip_all_fields(coordinator_store: CoordinatorStore) -> None:
    edge = make_edge(
        name="pi-4 ünïcode",
        shard_index=2,
        shard_count=5,
        edge_version=2**62,
        step=12345,
        ordinal=3,
        reconcile_offset=4,
        status=Status.DOWN,
        last_heartbeat=123.5,
    )
    coordinator_store.put_edge(edge)
    assert coordinator_store.get_edge("edge-1") == edge
    bare = make_edge("edge-2")
    coordinator_store.put_edge(bare)
    assert coordinator_store.get_edge("edge-2") == bare


def test_lists_keep_registration_order(coordinator_store: CoordinatorStore) -> None:
    for cloud_id, at in [("c-b", 2.0), ("c-a", 2.0), ("c-z", 1.0)]:
        coordinator_store.put_cloud(make_cloud(cloud_id, registered_at=at))
    for edge_id in ["e-b", "e-c", "e-a"]:
        coordinator_store.put_edge(make_edge(edge_id, registered_at=5.0))
    assert [c.cloud_id for c in coordinator_store.list_clouds()] == ["c-b", "c-a", "c-z"]
    assert [e.edge_id for e in coordinator_store.list_edges()] == ["e-b", "e-c", "e-a"]
    # an update keeps the position; delete and put again moves to the end
    coordinator_store.put_cloud(make_cloud("c-b", status=Status.DOWN, master_version=3))
    coordinator_store.put_edge(make_edge("e-b", step=9))
    assert [c.cloud_id for c in coordinator_store.list_clouds()] == ["c-b", "c-a", "c-z"]
    assert [e.edge_id for e in coordinator_store.list_edges()] == ["e-b", "e-c", "e-a"]
    coordinator_store.delete_edge("e-b")
    coordinator_store.put_edge(make_edge("e-b"))
    assert [e.edge_id for e in coordinator_store.list_edges()] == ["e-c", "e-a", "e-b"]


def test_update_keeps_one_record_per_id(coordinator_store: CoordinatorStore) -> None:
    edge = make_edge()
    for step in range(5):
        coordinator_store.put_edge(replace(edge, step=step, edge_version=step * 2))
    assert len(coordinator_store.list_edges()) == 1
    stored = coordinator_store.get_edge("edge-1")
    assert stored is not None and (stored.step, stored.edge_version) == (4, 8)


def test_delete_edge(coordinator_store: CoordinatorStore) -> None:
    coordinator_store.put_edge(make_edge("edge-1"))
    coordinator_store.put_edge(make_edge("edge-2"))
    assert coordinator_store.delete_edge("edge-1") is True
    assert coordinator_store.delete_edge("edge-1") is False
    assert [e.edge_id for e in coordinator_store.list_edges()] == ["edge-2"]


def test_revocations_round_trip_update_and_prune(coordinator_store: CoordinatorStore) -> None:
    assert coordinator_store.list_revocations() == {}
    coordinator_store.put_revocation("edge-1", 100.0)
    coordinator_store.put_revocation("edge-2", 200.0)
    coordinator_store.put_revocation("edge-1", 150.0)  # removed again: the later instant
    assert coordinator_store.list_revocations() == {"edge-1": 150.0, "edge-2": 200.0}
    coordinator_store.prune_revocations(before=200.0)
    assert coordinator_store.list_revocations() == {"edge-2": 200.0}


def test_returned_records_are_values(coordinator_store: CoordinatorStore) -> None:
    coordinator_store.put_cloud(make_cloud())
    listed = coordinator_store.list_clouds()
    listed.clear()
    assert len(coordinator_store.list_clouds()) == 1
    with pytest.raises(AttributeError):
        coordinator_store.get_cloud("cloud-1").status = Status.DOWN  # type: ignore[misc,union-attr]


def test_concurrent_writers(coordinator_store: CoordinatorStore) -> None:
    def write(worker: int) -> None:
        for i in range(50):
            coordinator_store.put_edge(make_edge(f"edge-{worker}-{i}", registered_at=float(i)))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(coordinator_store.list_edges()) == 200


def test_close_is_idempotent(coordinator_store: CoordinatorStore) -> None:
    coordinator_store.close()
    coordinator_store.close()


# --- SQLite only ---------------------------------------------------------------------------


def test_sqlite_restart_keeps_edges_versions_and_config(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    config = RunConfig(alpha=0.1, compensation="forecast", window=8)
    cloud = make_cloud(master_version=41, connected_edges=("edge-1",))
    edge = make_edge(edge_version=40, step=99, reconcile_offset=5, name="pi")
    with SQLiteStore(path) as store:
        store.put_run_config(config)
        store.put_cloud(cloud)
        store.put_edge(edge)
    with SQLiteStore(path) as reopened:
        assert reopened.get_run_config() == config
        assert reopened.list_clouds() == [cloud]
        assert reopened.list_edges() == [edge]
        assert reopened.schema_version == SCHEMA_VERSION


def test_sqlite_refuses_a_stored_run_configuration_it_cannot_read(tmp_path: Path) -> None:
    """A key this version does not know (a database from another version) is a StoreError
    naming the key, not a run silently trained with something else."""
    path = tmp_path / "state.db"
    with SQLiteStore(path) as store:
        store.put_run_config(RunConfig(window=2))
    conn = sqlite3.connect(path)
    stored = json.loads(conn.execute("SELECT config FROM run_config").fetchone()[0])
    assert stored == RunConfig(window=2).to_mapping()  # the flat wire form
    conn.execute("UPDATE run_config SET config = ?", (json.dumps({**stored, "windw": 3}),))
    conn.commit()
    conn.close()
    with SQLiteStore(path) as reopened, pytest.raises(StoreError, match="'windw'"):
        reopened.get_run_config()


def test_sqlite_migrates_a_version_1_database_and_keeps_its_edges(tmp_path: Path) -> None:
    """A database written before revocations existed (schema 1) opens, gains the table, and
    keeps what it held."""
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    for statement in _MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO edges VALUES ('edge-1', 'cloud-1', 'up', 1.0, 1.0, 0, 0, NULL, NULL, "
        "NULL, 7, 9)"
    )
    conn.commit()
    conn.close()
    with SQLiteStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 3
        assert [e.edge_id for e in store.list_edges()] == ["edge-1"]
        store.put_revocation("edge-0", 5.0)
    with SQLiteStore(path) as reopened:
        assert reopened.list_revocations() == {"edge-0": 5.0}


def test_sqlite_uses_wal(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "state.db"):
        pass
    conn = sqlite3.connect(tmp_path / "state.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_sqlite_refuses_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        SQLiteStore(path)


def test_sqlite_errors_are_store_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open"):
        SQLiteStore(tmp_path / "missing-dir" / "state.db")
    store = SQLiteStore(tmp_path / "state.db")
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.list_edges()
    with pytest.raises(StoreError):
        store.ping()


def test_sqlite_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError):
        SQLiteStore(path)


def test_open_store_by_path(tmp_path: Path) -> None:
    with open_store(":memory:") as memory:
        assert isinstance(memory, InMemoryStore)
    with open_store(tmp_path / "x.db") as sqlite_store:
        assert isinstance(sqlite_store, SQLiteStore)
