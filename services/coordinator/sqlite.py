"""The SQLite stores: a database file (the zero-setup default) and a private in-memory one.

SQLite allows one writer at a time. Read-write transactions share one connection and queue
for it on a Python lock (``BEGIN IMMEDIATE`` … ``COMMIT``), which hands the database over at
once instead of SQLite's busy handler sleeping and retrying; each transaction is a handful
of indexed statements with no network round trip and, in WAL mode with
``synchronous=NORMAL``, no flush to disk at commit. Read-only transactions use one
connection per thread and never wait for the writer (WAL: readers see the last commit).

Durability: a committed write survives a crash of the process; only an OS crash or power
loss may drop the last transactions. The schema version lives in ``PRAGMA user_version``
with forward-only migrations; a database written by a newer coordinator is refused instead
of guessed at.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from simultrain.shared.errors import StoreError

from .sql import Dialect, SQLTransaction
from .store import MEMORY, CoordinatorStore, StoreTransaction

__all__ = ["SCHEMA_VERSION", "InMemoryStore", "SQLiteStore", "WorkCounter"]

T = TypeVar("T")
SQLITE = Dialect("sqlite", "?", "rowid", "")

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
    # 3: an edge may be 'finished' (records.Status). SQLite cannot change a CHECK in place:
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
    # 4: a flat cost per request (sql.py): indexes for each question, counters kept with
    # every change, sessions reported by the clouds, enrollment keys, the sweep's lease.
    (
        "ALTER TABLE edges ADD COLUMN session_cloud_id TEXT",
        "ALTER TABLE edges ADD COLUMN expires_at REAL",
        "ALTER TABLE edges ADD COLUMN enrollment_id TEXT",
        # A stored heartbeat is as old as the downtime: the coordinator that opens this
        # database gives every edge a full timeout from its own start (registry.py).
        "UPDATE edges SET expires_at = last_heartbeat WHERE status = 'up'",
        "ALTER TABLE clouds ADD COLUMN live_edges INTEGER NOT NULL DEFAULT 0",
        """UPDATE clouds SET live_edges = (
            SELECT COUNT(*) FROM edges
            WHERE edges.cloud_id = clouds.cloud_id AND edges.status = 'up'
        )""",
        # Sessions are the edges' own column now.
        "ALTER TABLE clouds DROP COLUMN connected_edges",
        """CREATE TABLE fleet (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            next_ordinal INTEGER NOT NULL,
            enrolled INTEGER NOT NULL
        )""",
        "INSERT INTO fleet SELECT 1, COALESCE(MAX(ordinal) + 1, 0), COUNT(*) FROM edges",
        "CREATE TABLE free_ordinals (ordinal INTEGER PRIMARY KEY)",
        """INSERT INTO free_ordinals (ordinal)
            WITH RECURSIVE below(n) AS (
                SELECT 0 UNION ALL SELECT n + 1 FROM below
                WHERE n + 1 < (SELECT next_ordinal FROM fleet)
            )
            SELECT n FROM below
            WHERE n < (SELECT next_ordinal FROM fleet)
            AND n NOT IN (SELECT ordinal FROM edges)""",
        """CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            expires_at REAL NOT NULL
        )""",
        "CREATE UNIQUE INDEX clouds_url ON clouds (url)",
        "CREATE UNIQUE INDEX edges_ordinal ON edges (ordinal)",
        "CREATE UNIQUE INDEX edges_enrollment ON edges (enrollment_id)",
        "CREATE INDEX edges_cloud ON edges (cloud_id, status)",
        "CREATE INDEX edges_session ON edges (session_cloud_id) WHERE session_cloud_id IS NOT NULL",
        "CREATE INDEX edges_expiry ON edges (expires_at) WHERE status = 'up'",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)


@dataclass
class WorkCounter:
    """What the database did while counted: statements run and virtual-machine steps (a
    scan of N rows costs at least N steps; an index lookup a few dozen)."""

    statements: int = 0
    vm_steps: int = 0


class SQLiteStore(CoordinatorStore):
    """An embedded SQLite database file; the state survives a restart of the coordinator."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._memory = self.path == MEMORY
        self._write_lock = threading.Lock()
        self._closed = False
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._work: WorkCounter | None = None
        self._writer = self._connect()
        try:
            with self._write_lock, self._translated():
                if not self._memory:
                    self._writer.execute("PRAGMA journal_mode=WAL")
                self._migrate()
        except BaseException:
            self.close()
            raise

    # --- connections ---------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            # Autocommit mode: transactions are the explicit BEGIN … COMMIT of atomic/read.
            conn = sqlite3.connect(
                self.path, timeout=5.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open coordinator database {self.path!r}: {exc}") from exc
        with self._connections_lock:
            self._connections.append(conn)
            if self._work is not None:
                self._count_on(conn, self._work)
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        if self._closed:
            raise StoreError("the coordinator store is closed")
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"coordinator database error: {exc}") from exc

    def _migrate(self) -> None:
        (version,) = self._writer.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database {self.path!r} has schema version {version}, newer than the "
                f"{SCHEMA_VERSION} this coordinator understands; upgrade the coordinator"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                for statement in _MIGRATIONS[target - 1]:
                    self._writer.execute(statement)
                self._writer.execute(f"PRAGMA user_version = {target:d}")
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise
            self._writer.execute("COMMIT")

    # --- transactions --------------------------------------------------------------------

    def atomic(self, decide: Callable[[StoreTransaction], T]) -> T:
        with self._write_lock, self._translated():
            return self._transaction(self._writer, "BEGIN IMMEDIATE", decide)

    def read(self, look: Callable[[StoreTransaction], T]) -> T:
        if self._memory:  # one connection: the writer's
            return self.atomic(look)
        with self._translated():
            return self._transaction(self._reader(), "BEGIN", look)

    @staticmethod
    def _transaction(
        conn: sqlite3.Connection, begin: str, decide: Callable[[StoreTransaction], T]
    ) -> T:
        conn.execute(begin)
        try:
            result = decide(SQLTransaction(conn.execute, SQLITE))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    @property
    def schema_version(self) -> int:
        with self._write_lock, self._translated():
            return int(self._writer.execute("PRAGMA user_version").fetchone()[0])

    def ping(self) -> None:
        self.read(lambda tx: tx.enrolled())

    def close(self) -> None:
        with self._write_lock, self._connections_lock:
            if self._closed:
                return
            self._closed = True
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    # --- measuring the work of a request (tests/services/test_coordinator_scale.py) ------

    @contextlib.contextmanager
    def count_work(self) -> Iterator[WorkCounter]:
        """Count the statements and virtual-machine steps of every connection meanwhile."""
        counter = WorkCounter()
        with self._connections_lock:
            self._work = counter
            for conn in self._connections:
                self._count_on(conn, counter)
        try:
            yield counter
        finally:
            with self._connections_lock:
                self._work = None
                for conn in self._connections:
                    conn.set_trace_callback(None)
                    conn.set_progress_handler(None, 0)

    @staticmethod
    def _count_on(conn: sqlite3.Connection, counter: WorkCounter) -> None:
        def statement(_: str) -> None:
            counter.statements += 1

        def step() -> int:
            counter.vm_steps += 1
            return 0  # go on

        conn.set_trace_callback(statement)
        conn.set_progress_handler(step, 1)


class InMemoryStore(SQLiteStore):
    """A private in-memory SQLite database (``db_path=":memory:"``): the same schema,
    indexes and transactions as the file, and state that ends with the process."""

    def __init__(self) -> None:
        super().__init__(MEMORY)
