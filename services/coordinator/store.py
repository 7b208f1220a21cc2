"""Where the coordinator keeps its state: one small interface, two implementations.

:class:`CoordinatorStore` is a record store (latest value per id), not a place for logic:
the :class:`~simultrain.coordinator.registry.Coordinator` decides, the store remembers.
:class:`InMemoryStore` and :class:`SQLiteStore` pass one shared test suite
(``tests/services/test_coordinator_store.py``); only the SQLite one survives a restart.

Calls are synchronous and short (one indexed statement, no network). The HTTP layer calls
them from FastAPI's worker threads (plain ``def`` endpoints) and the health monitor through
``asyncio.to_thread``, so the event loop never waits on a disk write. Both stores are
thread-safe: every method holds the store's lock, and SQLite uses one connection shared
under that lock.

SQLite: WAL journal (readers never block the writer), ``synchronous=NORMAL`` (a committed
write survives a crash of the process; only an OS crash or power loss may drop the last
transactions), schema version in ``PRAGMA user_version`` with forward-only migrations; a
database written by a newer coordinator is refused instead of guessed at.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self

from simultrain.shared.errors import ConfigError, StoreError

from .records import CloudRecord, EdgeRecord, RunConfig, Status

__all__ = ["SCHEMA_VERSION", "CoordinatorStore", "InMemoryStore", "SQLiteStore", "open_store"]

MEMORY = ":memory:"


class CoordinatorStore(ABC):
    """Latest record per id for clouds and edges, plus the run configuration.

    ``put_*`` inserts a record, or replaces the one with the same id in place.
    ``list_clouds`` and ``list_edges`` return records in the order their ids were first
    put (registration order; replacing keeps the position, deleting then putting again
    moves it to the end), so ties are broken the same way in every implementation.
    """

    @abstractmethod
    def get_run_config(self) -> RunConfig | None: ...

    @abstractmethod
    def put_run_config(self, config: RunConfig) -> None: ...

    @abstractmethod
    def put_cloud(self, cloud: CloudRecord) -> None: ...

    @abstractmethod
    def get_cloud(self, cloud_id: str) -> CloudRecord | None: ...

    @abstractmethod
    def list_clouds(self) -> list[CloudRecord]: ...

    @abstractmethod
    def put_edge(self, edge: EdgeRecord) -> None: ...

    @abstractmethod
    def get_edge(self, edge_id: str) -> EdgeRecord | None: ...

    @abstractmethod
    def list_edges(self) -> list[EdgeRecord]: ...

    @abstractmethod
    def delete_edge(self, edge_id: str) -> bool:
        """Remove an edge; ``False`` if there was none with that id."""

    @abstractmethod
    def put_revocation(self, edge_id: str, revoked_at: float) -> None:
        """Tokens of ``edge_id`` issued at or before ``revoked_at`` are no longer valid."""

    @abstractmethod
    def list_revocations(self) -> dict[str, float]: ...

    @abstractmethod
    def prune_revocations(self, before: float) -> None:
        """Forget revocations made before ``before`` (every token they cover has expired)."""

    def ping(self) -> None:  # noqa: B027 - optional hook, nothing to check in memory
        """Raise :class:`StoreError` if the store cannot serve requests (readiness)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources. Idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class InMemoryStore(CoordinatorStore):
    """Dictionaries behind a lock; state ends with the process (``db_path=":memory:"``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._run_config: RunConfig | None = None
        self._clouds: dict[str, CloudRecord] = {}
        self._edges: dict[str, EdgeRecord] = {}
        self._revocations: dict[str, float] = {}

    def get_run_config(self) -> RunConfig | None:
        with self._lock:
            return self._run_config

    def put_run_config(self, config: RunConfig) -> None:
        with self._lock:
            self._run_config = config

    def put_cloud(self, cloud: CloudRecord) -> None:
        with self._lock:
            self._clouds[cloud.cloud_id] = cloud

    def get_cloud(self, cloud_id: str) -> CloudRecord | None:
        with self._lock:
            return self._clouds.get(cloud_id)

    def list_clouds(self) -> list[CloudRecord]:
        with self._lock:
            return list(self._clouds.values())  # dicts keep first-insertion order

    def put_edge(self, edge: EdgeRecord) -> None:
        with self._lock:
            self._edges[edge.edge_id] = edge

    def get_edge(self, edge_id: str) -> EdgeRecord | None:
        with self._lock:
            return self._edges.get(edge_id)

    def list_edges(self) -> list[EdgeRecord]:
        with self._lock:
            return list(self._edges.values())

    def delete_edge(self, edge_id: str) -> bool:
        with self._lock:
            return self._edges.pop(edge_id, None) is not None

    def put_revocation(self, edge_id: str, revoked_at: float) -> None:
        with self._lock:
            self._revocations[edge_id] = revoked_at

    def list_revocations(self) -> dict[str, float]:
        with self._lock:
            return dict(self._revocations)

    def prune_revocations(self, before: float) -> None:
        with self._lock:
            self._revocations = {e: t for e, t in self._revocations.items() if t >= before}


# Forward-only migrations: _MIGRATIONS[n] takes the schema from version n to n + 1.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE run_config (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            config TEXT NOT NULL
        )""",
        """CREATE TABLE clouds (
            cloud_id TEXT PRIMARY KEY,
            url TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('up', 'down')),
            last_heartbeat REAL NOT NULL,
            registered_at REAL NOT NULL,
            master_version INTEGER NOT NULL,
            connected_edges TEXT NOT NULL
        )""",
        """CREATE TABLE edges (
            edge_id TEXT PRIMARY KEY,
            cloud_id TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('up', 'down')),
            last_heartbeat REAL NOT NULL,
            registered_at REAL NOT NULL,
            ordinal INTEGER NOT NULL,
            reconcile_offset INTEGER NOT NULL,
            name TEXT,
            shard_index INTEGER,
            shard_count INTEGER,
            edge_version INTEGER NOT NULL,
            step INTEGER NOT NULL
        )""",
    ),
    (
        """CREATE TABLE revocations (
            edge_id TEXT PRIMARY KEY,
            revoked_at REAL NOT NULL
        )""",
    ),
    # An edge may be 'finished' (records.Status). SQLite cannot change a CHECK in place:
    # the table is copied, keeping each rowid (registration order).
    (
        """CREATE TABLE edges_v3 (
            edge_id TEXT PRIMARY KEY,
            cloud_id TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('up', 'down', 'finished')),
            last_heartbeat REAL NOT NULL,
            registered_at REAL NOT NULL,
            ordinal INTEGER NOT NULL,
            reconcile_offset INTEGER NOT NULL,
            name TEXT,
            shard_index INTEGER,
            shard_count INTEGER,
            edge_version INTEGER NOT NULL,
            step INTEGER NOT NULL
        )""",
        "INSERT INTO edges_v3 (rowid, "
        + "edge_id, cloud_id, status, last_heartbeat, registered_at, ordinal, "
        + "reconcile_offset, name, shard_index, shard_count, edge_version, step) "
        + "SELECT rowid, edge_id, cloud_id, status, last_heartbeat, registered_at, ordinal, "
        + "reconcile_offset, name, shard_index, shard_count, edge_version, step FROM edges",
        "DROP TABLE edges",
        "ALTER TABLE edges_v3 RENAME TO edges",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_CLOUD_COLUMNS = (
    "cloud_id, url, status, last_heartbeat, registered_at, master_version, connected_edges"
)
_EDGE_COLUMNS = (
    "edge_id, cloud_id, status, last_heartbeat, registered_at, ordinal, reconcile_offset, "
    "name, shard_index, shard_count, edge_version, step"
)

# An upsert, not INSERT OR REPLACE: replacing deletes the row and gives it a new rowid,
# which would move an updated record to the end of the rowid (registration) order.
_CLOUD_UPDATE = ", ".join(f"{c} = excluded.{c}" for c in _CLOUD_COLUMNS.split(", ")[1:])
_EDGE_UPDATE = ", ".join(f"{c} = excluded.{c}" for c in _EDGE_COLUMNS.split(", ")[1:])


def _cloud_from_row(row: tuple[Any, ...]) -> CloudRecord:
    cloud_id, url, status, last_heartbeat, registered_at, master_version, connected = row
    return CloudRecord(
        cloud_id=cloud_id,
        url=url,
        status=Status(status),
        last_heartbeat=last_heartbeat,
        registered_at=registered_at,
        master_version=master_version,
        connected_edges=tuple(json.loads(connected)),
    )


def _edge_from_row(row: tuple[Any, ...]) -> EdgeRecord:
    (edge_id, cloud_id, status, last_heartbeat, registered_at, ordinal, offset) = row[:7]
    (name, shard_index, shard_count, edge_version, step) = row[7:]
    return EdgeRecord(
        edge_id=edge_id,
        cloud_id=cloud_id,
        status=Status(status),
        last_heartbeat=last_heartbeat,
        registered_at=registered_at,
        ordinal=ordinal,
        reconcile_offset=offset,
        name=name,
        shard_index=shard_index,
        shard_count=shard_count,
        edge_version=edge_version,
        step=step,
    )


class SQLiteStore(CoordinatorStore):
    """An embedded SQLite database file; the state survives a restart of the coordinator."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._closed = False
        try:
            # One connection shared by the worker threads, serialized by self._lock;
            # autocommit mode, explicit BEGIN for the multi-statement migration.
            self._conn = sqlite3.connect(
                self.path, timeout=5.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open coordinator database {self.path!r}: {exc}") from exc
        try:
            with self._guard():
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._migrate()
        except BaseException:
            self._conn.close()
            raise

    @contextmanager
    def _guard(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise StoreError("the coordinator store is closed")
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StoreError(f"coordinator database error: {exc}") from exc

    def _migrate(self) -> None:
        (version,) = self._conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database {self.path!r} has schema version {version}, newer than the "
                f"{SCHEMA_VERSION} this coordinator understands; upgrade the coordinator"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _MIGRATIONS[target - 1]:
                    self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version = {target:d}")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        with self._guard() as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def get_run_config(self) -> RunConfig | None:
        with self._guard() as conn:
            row = conn.execute("SELECT config FROM run_config WHERE id = 1").fetchone()
        if row is None:
            return None
        try:
            stored = json.loads(row[0])
            if not isinstance(stored, dict):
                raise ConfigError(f"expected a JSON object, got {type(stored).__name__}")
            return RunConfig.from_mapping(stored, driver=False)
        except (ValueError, ConfigError) as exc:  # JSON, or a key this version does not know
            raise StoreError(f"the stored run configuration is unreadable: {exc}") from exc

    def put_run_config(self, config: RunConfig) -> None:
        with self._guard() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO run_config (id, config) VALUES (1, ?)",
                (json.dumps(config.to_mapping()),),
            )

    def put_cloud(self, cloud: CloudRecord) -> None:
        with self._guard() as conn:
            conn.execute(
                f"INSERT INTO clouds ({_CLOUD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
                f"ON CONFLICT (cloud_id) DO UPDATE SET {_CLOUD_UPDATE}",
                (
                    cloud.cloud_id,
                    cloud.url,
                    cloud.status.value,
                    cloud.last_heartbeat,
                    cloud.registered_at,
                    cloud.master_version,
                    json.dumps(list(cloud.connected_edges)),
                ),
            )

    def get_cloud(self, cloud_id: str) -> CloudRecord | None:
        with self._guard() as conn:
            row = conn.execute(
                f"SELECT {_CLOUD_COLUMNS} FROM clouds WHERE cloud_id = ?", (cloud_id,)
            ).fetchone()
        return None if row is None else _cloud_from_row(row)

    def list_clouds(self) -> list[CloudRecord]:
        with self._guard() as conn:
            rows = conn.execute(f"SELECT {_CLOUD_COLUMNS} FROM clouds ORDER BY rowid").fetchall()
        return [_cloud_from_row(row) for row in rows]

    def put_edge(self, edge: EdgeRecord) -> None:
        with self._guard() as conn:
            conn.execute(
                f"INSERT INTO edges ({_EDGE_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                f"ON CONFLICT (edge_id) DO UPDATE SET {_EDGE_UPDATE}",
                (
                    edge.edge_id,
                    edge.cloud_id,
                    edge.status.value,
                    edge.last_heartbeat,
                    edge.registered_at,
                    edge.ordinal,
                    edge.reconcile_offset,
                    edge.name,
                    edge.shard_index,
                    edge.shard_count,
                    edge.edge_version,
                    edge.step,
                ),
            )

    def get_edge(self, edge_id: str) -> EdgeRecord | None:
        with self._guard() as conn:
            row = conn.execute(
                f"SELECT {_EDGE_COLUMNS} FROM edges WHERE edge_id = ?", (edge_id,)
            ).fetchone()
        return None if row is None else _edge_from_row(row)

    def list_edges(self) -> list[EdgeRecord]:
        with self._guard() as conn:
            rows = conn.execute(f"SELECT {_EDGE_COLUMNS} FROM edges ORDER BY rowid").fetchall()
        return [_edge_from_row(row) for row in rows]

    def delete_edge(self, edge_id: str) -> bool:
        with self._guard() as conn:
            return conn.execute("DELETE FROM edges WHERE edge_id = ?", (edge_id,)).rowcount > 0

    def put_revocation(self, edge_id: str, revoked_at: float) -> None:
        with self._guard() as conn:
            conn.execute(
                "INSERT INTO revocations (edge_id, revoked_at) VALUES (?, ?) "
                "ON CONFLICT (edge_id) DO UPDATE SET revoked_at = excluded.revoked_at",
                (edge_id, revoked_at),
            )

    def list_revocations(self) -> dict[str, float]:
        with self._guard() as conn:
            rows = conn.execute("SELECT edge_id, revoked_at FROM revocations").fetchall()
        return {str(edge_id): float(at) for edge_id, at in rows}

    def prune_revocations(self, before: float) -> None:
        with self._guard() as conn:
            conn.execute("DELETE FROM revocations WHERE revoked_at < ?", (before,))

    def ping(self) -> None:
        with self._guard() as conn:
            conn.execute("SELECT 1").fetchone()

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()


def open_store(db_path: str | os.PathLike[str]) -> CoordinatorStore:
    """The store a ``db_path`` setting names: ``":memory:"`` is in memory, else SQLite."""
    if os.fspath(db_path) == MEMORY:
        return InMemoryStore()
    return SQLiteStore(db_path)
