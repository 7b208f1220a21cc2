"""The PostgreSQL store: one database that any number of coordinator replicas share.

Each transaction borrows a connection from a pool (psycopg 3, ``psycopg_pool``); nothing is
locked process-wide. Decisions that must not interleave across replicas lock the rows they
decide about (``SELECT … FOR UPDATE``): an enrollment locks the ``fleet`` row (so ordinals
are handed out one at a time) and the cloud it picks; a heartbeat locks its edge. The
database's unique indexes are the last word — one enrollment per ``enrollment_id``, one
edge per ordinal, one cloud per URL — and a transaction that loses such a race, or a
deadlock or serialization check, is rolled back and run again (:meth:`PostgresStore.atomic`).
The health sweep runs on one replica at a time under a lease (``registry.py``).

The schema is versioned like SQLite's, with its own forward-only migrations; a replica
migrates under an advisory lock, so replicas starting together migrate once. A database
written by a newer coordinator is refused.

Needs psycopg, which the ``server`` extra installs (``pip install 'simultrain[server]'``);
the edge never imports this module.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from simultrain.shared.errors import StoreError

from .sql import Dialect, SQLTransaction
from .store import CoordinatorStore, StoreTransaction

__all__ = ["SCHEMA_VERSION", "PostgresStore"]

T = TypeVar("T")
POSTGRES = Dialect("postgresql", "%s", "position", " FOR UPDATE")
# pg_advisory_xact_lock key of schema migrations (any constant; "simultrain" in ASCII).
_MIGRATION_LOCK = 0x73696D756C747261

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE run_config (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            config TEXT NOT NULL
        )""",
        """CREATE TABLE clouds (
            position BIGINT GENERATED ALWAYS AS IDENTITY,
            cloud_id TEXT PRIMARY KEY,
            url TEXT NOT NULL UNIQUE,
            status TEXT NOT NULL CHECK (status IN ('up', 'down')),
            last_heartbeat DOUBLE PRECISION NOT NULL,
            registered_at DOUBLE PRECISION NOT NULL,
            master_version BIGINT NOT NULL,
            live_edges BIGINT NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE edges (
            position BIGINT GENERATED ALWAYS AS IDENTITY,
            edge_id TEXT PRIMARY KEY,
            cloud_id TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('up', 'down')),
            last_heartbeat DOUBLE PRECISION NOT NULL,
            registered_at DOUBLE PRECISION NOT NULL,
            ordinal BIGINT NOT NULL UNIQUE,
            reconcile_offset BIGINT NOT NULL,
            name TEXT,
            shard_index BIGINT,
            shard_count BIGINT,
            edge_version BIGINT NOT NULL,
            step BIGINT NOT NULL,
            session_cloud_id TEXT,
            expires_at DOUBLE PRECISION,
            enrollment_id TEXT UNIQUE
        )""",
        "CREATE INDEX edges_order ON edges (position)",
        "CREATE INDEX edges_cloud ON edges (cloud_id, status)",
        "CREATE INDEX edges_session ON edges (session_cloud_id) WHERE session_cloud_id IS NOT NULL",
        "CREATE INDEX edges_expiry ON edges (expires_at) WHERE status = 'up'",
        """CREATE TABLE fleet (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            next_ordinal BIGINT NOT NULL,
            enrolled BIGINT NOT NULL
        )""",
        "INSERT INTO fleet VALUES (1, 0, 0)",
        "CREATE TABLE free_ordinals (ordinal BIGINT PRIMARY KEY)",
        """CREATE TABLE revocations (
            edge_id TEXT PRIMARY KEY,
            revoked_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
    ),
    # 2: an edge may be 'finished' (records.Status): it trained its steps and said so.
    (
        "ALTER TABLE edges DROP CONSTRAINT edges_status_check",
        "ALTER TABLE edges ADD CONSTRAINT edges_status_check "
        "CHECK (status IN ('up', 'down', 'finished'))",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)


def _where(url: str) -> str:
    """The database a URL names, without its credentials (for messages and logs)."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(url)
    except Exception:  # noqa: BLE001 - any parse error: say nothing of the URL
        return "the coordinator database"
    host = info.get("host") or "localhost"
    return f"database {info.get('dbname') or '?'!r} on {host}"


class PostgresStore(CoordinatorStore):
    """A PostgreSQL database (``database_url``) shared by every coordinator replica.

    ``password``: for a URL that carries none. ``pool_size``: connections this replica
    keeps at most (one per concurrent transaction). ``timeout_s``: how long a transaction
    waits for a connection, and the first connect. ``attempts``: how often a transaction
    that lost a race is run again.
    """

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        pool_size: int = 16,
        timeout_s: float = 10.0,
        attempts: int = 10,
    ) -> None:
        try:
            import psycopg
            from psycopg import errors
            from psycopg_pool import ConnectionPool, PoolTimeout
        except ImportError as exc:
            raise StoreError(
                "the PostgreSQL store needs psycopg: pip install 'simultrain[server]'"
            ) from exc
        self._retryable: tuple[type[Exception], ...] = (
            errors.SerializationFailure,
            errors.DeadlockDetected,
            errors.UniqueViolation,
        )
        self._driver_errors: tuple[type[Exception], ...] = (psycopg.Error,)  # pool errors too
        self._where = _where(url)
        self._attempts = attempts
        self._timeout_s = timeout_s
        self._closed = False
        self._close_lock = threading.Lock()
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True, **({} if password is None else {"password": password})},
            open=False,
            timeout=timeout_s,
            name="simultrain-coordinator",
        )
        try:
            self._pool.open(wait=True, timeout=timeout_s)
        except PoolTimeout as exc:
            self._pool.close()
            raise StoreError(f"cannot connect to the coordinator {self._where}: {exc}") from exc
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    def _migrate(self) -> None:
        with self._translated(), self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                conn.execute("INSERT INTO schema_version VALUES (0)")
            version = 0 if row is None else int(row[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the coordinator {self._where} has schema version {version}, newer "
                    f"than the {SCHEMA_VERSION} this coordinator understands; upgrade it"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target - 1]:
                    conn.execute(statement)
                conn.execute("UPDATE schema_version SET version = %s", (target,))

    @contextlib.contextmanager
    def _translated(self, *, retry: bool = False) -> Iterator[None]:
        """Driver and pool errors become :class:`StoreError`; with ``retry``, a lost race
        becomes :class:`_Retry`."""
        if self._closed:
            raise StoreError("the coordinator store is closed")
        try:
            yield
        except self._retryable as exc:
            if retry:
                raise _Retry from exc
            raise StoreError(f"coordinator {self._where}: {exc}") from exc
        except self._driver_errors as exc:
            raise StoreError(f"coordinator {self._where}: {exc}") from exc

    def atomic(self, decide: Callable[[StoreTransaction], T]) -> T:
        for attempt in range(self._attempts):
            try:
                with (
                    self._translated(retry=True),
                    self._pool.connection() as conn,
                    conn.transaction(),
                ):
                    return decide(SQLTransaction(conn.cursor().execute, POSTGRES))
            except _Retry:
                # Lost a race with another transaction: back off a little, run it again.
                time.sleep(random.uniform(0, min(0.05, 0.002 * 2**attempt)))
        raise StoreError(
            f"coordinator {self._where}: a transaction kept conflicting with others "
            f"({self._attempts} attempts)"
        )

    @property
    def schema_version(self) -> int:
        with self._translated(), self._pool.connection() as conn:
            row = conn.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            raise StoreError(f"the coordinator {self._where} has no schema version")
        return int(row[0])

    def ping(self) -> None:
        self.read(lambda tx: tx.enrolled())

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._pool.close()


class _Retry(Exception):
    """A transaction lost a race; :meth:`PostgresStore.atomic` runs it again."""
