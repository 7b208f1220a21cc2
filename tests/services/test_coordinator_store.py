"""The one store suite: every CoordinatorStore implementation passes it (as Flower's store suites
do): in memory, a SQLite file and a real PostgreSQL server (``coordinator_postgres`` starts
one for the session; it never skips).

Then what only SQLite promises (a file: state survives close and reopen, schema versioning,
errors translated to StoreError) and what only PostgreSQL does (several stores, as several
coordinator replicas, on one database).
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from simultrain.coordinator import CoordinatorStore, InMemoryStore, SQLiteStore, open_store
from simultrain.coordinator.postgres import SCHEMA_VERSION as PG_SCHEMA_VERSION
from simultrain.coordinator.postgres import PostgresStore
from simultrain.coordinator.records import CloudRecord, EdgeRecord, RunConfig, Status
from simultrain.coordinator.sqlite import _MIGRATIONS, SCHEMA_VERSION
from simultrain.coordinator.store import StoreTransaction
from simultrain.shared.errors import StoreError

_ordinals = itertools.count()


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
    """An edge with an ordinal of its own (two edges never share one)."""
    fields: dict[str, object] = {
        "edge_id": edge_id,
        "cloud_id": "cloud-1",
        "status": Status.UP,
        "last_heartbeat": registered_at,
        "registered_at": registered_at,
        "ordinal": next(_ordinals) + 1000,
        "reconcile_offset": 0,
    }
    fields.update(kw)
    return EdgeRecord(**fields)  # type: ignore[arg-type]


def loads(store: CoordinatorStore) -> dict[str, int]:
    return store.read(lambda tx: tx.cloud_loads())


# --- the shared suite (memory, SQLite, PostgreSQL) -------------------------------------------


def test_empty_store(coordinator_store: CoordinatorStore) -> None:
    assert coordinator_store.get_run_config() is None
    assert coordinator_store.list_clouds() == []
    assert coordinator_store.list_edges() == []
    assert coordinator_store.get_cloud("nope") is None
    assert coordinator_store.get_edge("nope") is None
    assert coordinator_store.read(lambda tx: (tx.enrolled(), tx.free_ordinal())) == (0, 0)
    assert coordinator_store.read(lambda tx: tx.least_loaded_cloud()) is None
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
    cloud = make_cloud(master_version=7)
    coordinator_store.put_cloud(cloud)
    assert coordinator_store.get_cloud("cloud-1") == cloud
    assert coordinator_store.read(lambda tx: tx.cloud_by_url(cloud.url)) == cloud
    updated = replace(cloud, status=Status.DOWN, master_version=9, last_heartbeat=5.5)
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
        session_cloud_id="cloud-9",
        expires_at=None,
        enrollment_id="enroll-abc",
    )
    coordinator_store.put_edge(edge)
    assert coordinator_store.get_edge("edge-1") == edge
    assert coordinator_store.read(lambda tx: tx.edge_by_enrollment("enroll-abc")) == edge
    bare = make_edge("edge-2", expires_at=200.25)
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
    coordinator_store.put_edge(replace(coordinator_store.get_edge("e-b"), step=9))  # type: ignore[arg-type]
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
    assert coordinator_store.read(lambda tx: tx.enrolled()) == 1


def test_delete_edge(coordinator_store: CoordinatorStore) -> None:
    coordinator_store.put_edge(make_edge("edge-1"))
    coordinator_store.put_edge(make_edge("edge-2"))
    assert coordinator_store.delete_edge("edge-1") is True
    assert coordinator_store.delete_edge("edge-1") is False
    assert [e.edge_id for e in coordinator_store.list_edges()] == ["edge-2"]
    assert coordinator_store.read(lambda tx: tx.enrolled()) == 1


def test_live_edges_per_cloud_follow_every_change(coordinator_store: CoordinatorStore) -> None:
    """The load assignment balances is kept with each change, never counted."""
    store = coordinator_store
    store.put_cloud(make_cloud("a"))
    store.put_cloud(make_cloud("b"))
    store.put_edge(make_edge("e1", cloud_id="a"))
    store.put_edge(make_edge("e2", cloud_id="a"))
    store.put_edge(make_edge("e3", cloud_id="b", status=Status.DOWN))
    assert loads(store) == {"a": 2, "b": 0}
    store.put_edge(replace(store.get_edge("e3"), status=Status.UP))  # type: ignore[arg-type]
    store.put_edge(replace(store.get_edge("e1"), cloud_id="b"))  # type: ignore[arg-type]
    assert loads(store) == {"a": 1, "b": 2}
    store.put_edge(replace(store.get_edge("e2"), status=Status.DOWN))  # type: ignore[arg-type]
    store.put_edge(replace(store.get_edge("e2"), step=3))  # type: ignore[arg-type] # still down
    assert loads(store) == {"a": 0, "b": 2}
    store.delete_edge("e3")
    assert loads(store) == {"a": 0, "b": 1}
    # a cloud put after its edges counts the live ones assigned to it already
    store.put_edge(make_edge("e4", cloud_id="c"))
    store.put_edge(make_edge("e5", cloud_id="c", status=Status.DOWN))
    store.put_cloud(make_cloud("c"))
    assert loads(store) == {"a": 0, "b": 1, "c": 1}
    store.put_cloud(make_cloud("c", master_version=5))  # replacing keeps the count
    assert loads(store)["c"] == 1


def test_least_loaded_live_cloud(coordinator_store: CoordinatorStore) -> None:
    store = coordinator_store
    for cloud_id in ("a", "b", "c"):
        store.put_cloud(make_cloud(cloud_id))

    def least() -> str | None:
        cloud = store.read(lambda tx: tx.least_loaded_cloud())
        return None if cloud is None else cloud.cloud_id

    assert least() == "a"  # a tie goes to the first registered
    store.put_edge(make_edge("e1", cloud_id="a"))
    assert least() == "b"
    store.put_edge(make_edge("e2", cloud_id="b"))
    store.put_cloud(make_cloud("c", status=Status.DOWN))
    assert least() == "a"  # c is down, whatever its load
    for cloud_id in ("a", "b"):
        store.put_cloud(make_cloud(cloud_id, status=Status.DOWN))
    assert least() is None


def test_lowest_free_ordinal(coordinator_store: CoordinatorStore) -> None:
    store = coordinator_store

    def free() -> int:
        return store.read(lambda tx: tx.free_ordinal())

    for ordinal in range(4):
        assert free() == ordinal
        store.put_edge(make_edge(f"e{ordinal}", ordinal=ordinal))
    store.delete_edge("e1")
    store.delete_edge("e2")
    assert free() == 1
    store.put_edge(make_edge("again", ordinal=1))
    assert free() == 2
    store.put_edge(make_edge("far", ordinal=7))  # the gap below it is free
    assert free() == 2
    store.put_edge(replace(store.get_edge("far"), ordinal=2))  # type: ignore[arg-type]
    assert free() == 4
    assert sorted(e.ordinal for e in store.list_edges()) == [0, 1, 2, 3]
    with pytest.raises(StoreError):  # one ordinal, one edge
        store.put_edge(make_edge("clash", ordinal=3))
    assert store.read(lambda tx: tx.enrolled()) == 4


def test_expired_edges_oldest_first(coordinator_store: CoordinatorStore) -> None:
    store = coordinator_store
    store.put_edge(make_edge("late", expires_at=30.0))
    store.put_edge(make_edge("early", expires_at=10.0))
    store.put_edge(make_edge("future", expires_at=100.0))
    store.put_edge(make_edge("held", expires_at=None, session_cloud_id="cloud-1"))
    store.put_edge(make_edge("down", expires_at=5.0, status=Status.DOWN))

    def expired(now: float, limit: int = 10) -> list[str]:
        return [e.edge_id for e in store.read(lambda tx: tx.expired_edges(now, limit=limit))]

    assert expired(30.0) == ["early", "late"]
    assert expired(30.0, limit=1) == ["early"]
    assert expired(9.0) == []
    assert expired(1e12) == ["early", "late", "future"]  # a held edge never expires


def test_sessions_are_kept_per_cloud(coordinator_store: CoordinatorStore) -> None:
    store = coordinator_store
    store.put_edge(make_edge("e1", session_cloud_id="a"))
    store.put_edge(make_edge("e2", session_cloud_id="b"))
    store.put_edge(make_edge("e3", session_cloud_id="a"))
    store.put_edge(make_edge("e4", expires_at=50.0))
    assert store.read(lambda tx: tx.session_edge_ids("a")) == ["e1", "e3"]
    assert store.read(lambda tx: tx.sessions()) == {"a": ["e1", "e3"], "b": ["e2"]}
    assert store.atomic(lambda tx: tx.release_sessions("a", expires_at=77.0)) == 2
    assert store.read(lambda tx: tx.sessions()) == {"b": ["e2"]}
    released = store.get_edge("e1")
    assert released is not None and (released.session_cloud_id, released.expires_at) == (
        None,
        77.0,
    )
    assert store.get_edge("e4").expires_at == 50.0  # type: ignore[union-attr] # not a's


def test_edges_of_one_cloud(coordinator_store: CoordinatorStore) -> None:
    store = coordinator_store
    store.put_edge(make_edge("e1", cloud_id="a"))
    store.put_edge(make_edge("e2", cloud_id="a", status=Status.DOWN))
    store.put_edge(make_edge("e3", cloud_id="b"))
    store.put_edge(make_edge("e4", cloud_id="a"))
    live = store.read(lambda tx: tx.live_edges_of("a", limit=10))
    assert [e.edge_id for e in live] == ["e1", "e4"]
    assert [e.edge_id for e in store.read(lambda tx: tx.live_edges_of("a", limit=1))] == ["e1"]
    assert store.read(lambda tx: tx.assigned_edge_ids("a")) == ["e1", "e2", "e4"]


def test_one_edge_per_enrollment_id(coordinator_store: CoordinatorStore) -> None:
    coordinator_store.put_edge(make_edge("e1", enrollment_id="same"))
    with pytest.raises(StoreError):
        coordinator_store.put_edge(make_edge("e2", enrollment_id="same"))
    assert [e.edge_id for e in coordinator_store.list_edges()] == ["e1"]
    assert coordinator_store.read(lambda tx: tx.edge_by_enrollment("other")) is None


def test_a_failed_decision_leaves_nothing_behind(coordinator_store: CoordinatorStore) -> None:
    store = coordinator_store
    store.put_cloud(make_cloud("a"))

    def half_done(tx: StoreTransaction) -> None:
        tx.put_edge(make_edge("e1", cloud_id="a", ordinal=0))
        tx.put_revocation("gone", 1.0)
        raise LookupError("changed its mind")

    with pytest.raises(LookupError):
        store.atomic(half_done)
    assert store.list_edges() == [] and store.list_revocations() == {}
    assert loads(store) == {"a": 0}
    assert store.read(lambda tx: (tx.enrolled(), tx.free_ordinal())) == (0, 0)


def test_lease_has_one_holder_until_it_expires(coordinator_store: CoordinatorStore) -> None:
    def take(holder: str, now: float) -> bool:
        return coordinator_store.atomic(lambda tx: tx.acquire_lease("sweep", holder, now, 6.0))

    assert take("one", 100.0)
    assert not take("two", 101.0)
    assert take("one", 104.0)  # renewed: until 110
    assert not take("two", 109.0)
    assert take("two", 110.0)  # expired: taken over
    assert not take("one", 111.0)


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
    coordinator_store.put_cloud(make_cloud("a"))

    def write(worker: int) -> None:
        for i in range(50):
            coordinator_store.put_edge(
                make_edge(f"edge-{worker}-{i}", registered_at=float(i), cloud_id="a")
            )

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(coordinator_store.list_edges()) == 200
    assert loads(coordinator_store) == {"a": 200}
    assert coordinator_store.read(lambda tx: tx.enrolled()) == 200


def test_close_is_idempotent(coordinator_store: CoordinatorStore) -> None:
    coordinator_store.close()
    coordinator_store.close()
    with pytest.raises(StoreError, match="closed"):
        coordinator_store.list_edges()


# --- SQLite only ---------------------------------------------------------------------------


def test_sqlite_restart_keeps_edges_versions_and_config(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    config = RunConfig(alpha=0.1, compensation="forecast", window=8)
    cloud = make_cloud(master_version=41)
    edge = make_edge(edge_version=40, step=99, reconcile_offset=5, name="pi", expires_at=3.0)
    with SQLiteStore(path) as store:
        store.put_run_config(config)
        store.put_cloud(cloud)
        store.put_edge(edge)
    with SQLiteStore(path) as reopened:
        assert reopened.get_run_config() == config
        assert reopened.list_clouds() == [cloud]
        assert reopened.list_edges() == [edge]
        assert loads(reopened) == {"cloud-1": 1}
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
    """A database written before revocations and the counters existed (schema 1) opens,
    gains them — the live edges per cloud counted once, the free ordinals below the highest
    listed — and keeps what it held."""
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    for statement in _MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO clouds VALUES ('cloud-1', 'http://a', 'up', 1.0, 1.0, 3, '[]')")
    for edge_id, status, ordinal in [("edge-1", "up", 0), ("edge-2", "down", 3), ("e3", "up", 4)]:
        conn.execute(
            "INSERT INTO edges VALUES (?, 'cloud-1', ?, 1.0, 1.0, ?, 0, NULL, NULL, NULL, 7, 9)",
            (edge_id, status, ordinal),
        )
    conn.commit()
    conn.close()
    with SQLiteStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 4
        assert [e.edge_id for e in store.list_edges()] == ["edge-1", "edge-2", "e3"]
        assert loads(store) == {"cloud-1": 2}
        assert store.read(lambda tx: (tx.enrolled(), tx.free_ordinal())) == (3, 1)
        assert store.get_edge("edge-1").expires_at == 1.0  # type: ignore[union-attr]
        store.put_revocation("edge-0", 5.0)
        store.put_edge(make_edge("new", ordinal=1))
        assert store.read(lambda tx: tx.free_ordinal()) == 2
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


def test_sqlite_readers_see_the_last_commit_from_any_thread(tmp_path: Path) -> None:
    """Reads use a connection per thread beside the writer (WAL)."""
    with SQLiteStore(tmp_path / "state.db") as store:
        seen: list[int] = []

        def count() -> None:
            seen.append(len(store.list_edges()))

        for n in range(3):
            store.put_edge(make_edge(f"e{n}"))
            reader = threading.Thread(target=count)
            reader.start()
            reader.join(timeout=10)
        assert seen == [1, 2, 3]


def test_open_store_by_setting(tmp_path: Path, coordinator_postgres_url: str) -> None:
    with open_store(":memory:") as memory:
        assert isinstance(memory, InMemoryStore)
    with open_store(tmp_path / "x.db") as sqlite_store:
        assert isinstance(sqlite_store, SQLiteStore)
    with open_store(tmp_path / "y.db", database_url=coordinator_postgres_url) as postgres:
        assert isinstance(postgres, PostgresStore)
    assert not (tmp_path / "y.db").exists()


# --- PostgreSQL only -----------------------------------------------------------------------


def test_postgres_replicas_share_one_database(coordinator_postgres_url: str) -> None:
    """Two stores (two coordinator replicas) on one database: the schema is made once,
    and what one writes the other reads."""
    with (
        PostgresStore(coordinator_postgres_url) as one,
        PostgresStore(coordinator_postgres_url) as two,
    ):
        assert one.schema_version == two.schema_version == PG_SCHEMA_VERSION
        one.put_cloud(make_cloud("a"))
        two.put_edge(make_edge("e1", cloud_id="a"))
        assert [e.edge_id for e in one.list_edges()] == ["e1"]
        assert loads(one) == {"a": 1}


def test_postgres_concurrent_enrollments_never_share_an_ordinal(
    coordinator_postgres_url: str,
) -> None:
    """Enrollment-shaped transactions from two replicas at once: each takes the lowest free
    ordinal under the fleet row's lock, so 100 edges hold 0…99 and the counts are exact."""
    with (
        PostgresStore(coordinator_postgres_url) as one,
        PostgresStore(coordinator_postgres_url) as two,
    ):
        one.put_cloud(make_cloud("a"))

        def enroll(store: PostgresStore, name: str) -> None:
            def decide(tx: StoreTransaction) -> None:
                ordinal = tx.free_ordinal(lock=True)
                tx.put_edge(make_edge(name, cloud_id="a", ordinal=ordinal))

            store.atomic(decide)

        def worker(store: PostgresStore, prefix: str) -> None:
            for i in range(50):
                enroll(store, f"{prefix}-{i}")

        threads = [
            threading.Thread(target=worker, args=(store, prefix))
            for store, prefix in ((one, "one"), (two, "two"), (one, "three"), (two, "four"))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        edges = one.list_edges()
        assert sorted(e.ordinal for e in edges) == list(range(200))
        assert loads(two) == {"a": 200}
        assert two.read(lambda tx: (tx.enrolled(), tx.free_ordinal())) == (200, 200)


def test_postgres_refuses_a_newer_schema(coordinator_postgres_url: str) -> None:
    with PostgresStore(coordinator_postgres_url):
        pass
    with psycopg.connect(coordinator_postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE schema_version SET version = %s", (PG_SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer"):
        PostgresStore(coordinator_postgres_url)


def test_postgres_unreachable_is_a_store_error_without_the_password(tmp_path: Path) -> None:
    url = f"postgresql://fleet:s3cret@/nowhere?host={tmp_path}&port=1"
    with pytest.raises(StoreError, match="cannot connect") as refused:
        PostgresStore(url, timeout_s=0.5)
    assert "s3cret" not in str(refused.value)
