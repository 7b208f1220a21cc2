"""The SQL that SQLite and PostgreSQL both speak: one :class:`StoreTransaction` over a cursor.

The two databases differ in three words, which :class:`Dialect` names: the parameter
placeholder, the column that keeps registration order (SQLite's ``rowid``, a PostgreSQL
identity column), and row locks (``FOR UPDATE``; SQLite has one writer at a time, so it
needs none). Everything else — the upserts, partial indexes, ``RETURNING`` — is standard
SQL both run as written.

Indexes, one per question a handler asks (schemas in ``sqlite.py`` and ``postgres.py``):

- ``edges(edge_id)``, ``clouds(cloud_id)``, ``clouds(url)``: the records themselves;
- ``edges(enrollment_id)`` (unique): a retried enrollment finds its edge;
- ``edges(ordinal)`` (unique) and ``free_ordinals``: the lowest free ordinal;
- ``edges(cloud_id, status)``: the live edges of one cloud (orphans of a down cloud);
- ``edges(session_cloud_id)``: the sessions one cloud holds;
- ``edges(expires_at) WHERE status = 'up'``: the edges that fell silent, oldest first.

The live edges per cloud (``clouds.live_edges``) and the enrolled count (``fleet``) are
kept by :meth:`SQLTransaction.put_edge` and :meth:`~SQLTransaction.delete_edge` in the
same transaction as the change, so no request counts edges.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from simultrain.shared.errors import ConfigError, StoreError

from .records import CloudRecord, EdgeRecord, RunConfig, Status
from .store import StoreTransaction

__all__ = ["CLOUD_COLUMNS", "EDGE_COLUMNS", "Dialect", "SQLTransaction"]

CLOUD_COLUMNS = "cloud_id, url, status, last_heartbeat, registered_at, master_version"
EDGE_COLUMNS = (
    "edge_id, cloud_id, status, last_heartbeat, registered_at, ordinal, reconcile_offset, "
    "name, shard_index, shard_count, edge_version, step, session_cloud_id, expires_at, "
    "enrollment_id"
)
_EDGE_NAMES = [name.strip() for name in EDGE_COLUMNS.split(",")]
_EDGE_SET = ", ".join(f"{name} = ?" for name in _EDGE_NAMES[1:])


class Cursor(Protocol):
    """What both drivers' cursors offer."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


# A driver's ``execute(sql, params)``: sqlite3's Connection.execute, psycopg's
# Cursor.execute; both return something with the methods of ``Cursor``.
Execute = Callable[[str, Any], Any]


@dataclass(frozen=True)
class Dialect:
    name: str
    placeholder: str  # "?" (sqlite3) or "%s" (psycopg)
    order: str  # the column that keeps registration order
    for_update: str  # appended to a locking read
    _cache: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def sql(self, text: str) -> str:
        """``text`` (written with ``?`` placeholders) in this dialect."""
        converted = self._cache.get(text)
        if converted is None:
            converted = text.replace("?", self.placeholder).replace("{order}", self.order)
            self._cache[text] = converted
        return converted


def cloud_from_row(row: Sequence[Any]) -> CloudRecord:
    cloud_id, url, status, last_heartbeat, registered_at, master_version = row
    return CloudRecord(
        cloud_id=cloud_id,
        url=url,
        status=Status(status),
        last_heartbeat=float(last_heartbeat),
        registered_at=float(registered_at),
        master_version=int(master_version),
    )


def edge_from_row(row: Sequence[Any]) -> EdgeRecord:
    (edge_id, cloud_id, status, last_heartbeat, registered_at, ordinal, offset) = row[:7]
    (name, shard_index, shard_count, edge_version, step) = row[7:12]
    (session_cloud_id, expires_at, enrollment_id) = row[12:]
    return EdgeRecord(
        edge_id=edge_id,
        cloud_id=cloud_id,
        status=Status(status),
        last_heartbeat=float(last_heartbeat),
        registered_at=float(registered_at),
        ordinal=int(ordinal),
        reconcile_offset=int(offset),
        name=name,
        shard_index=shard_index,
        shard_count=shard_count,
        edge_version=int(edge_version),
        step=int(step),
        session_cloud_id=session_cloud_id,
        expires_at=None if expires_at is None else float(expires_at),
        enrollment_id=enrollment_id,
    )


def _edge_values(edge: EdgeRecord) -> tuple[Any, ...]:
    return (
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
        edge.session_cloud_id,
        edge.expires_at,
        edge.enrollment_id,
    )


class SQLTransaction(StoreTransaction):
    """The store's operations as SQL statements on one open transaction."""

    def __init__(self, execute: Execute, dialect: Dialect) -> None:
        self._execute = execute
        self._dialect = dialect

    def _run(self, text: str, params: Sequence[Any] = ()) -> Cursor:
        cursor: Cursor = self._execute(self._dialect.sql(text), params)
        return cursor

    def _one(self, text: str, params: Sequence[Any] = ()) -> Any:
        return self._run(text, params).fetchone()

    def _all(self, text: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._run(text, params).fetchall()

    def _lock(self, lock: bool) -> str:
        return self._dialect.for_update if lock else ""

    # --- run configuration ---------------------------------------------------------------

    def get_run_config(self) -> RunConfig | None:
        row = self._one("SELECT config FROM run_config WHERE id = 1")
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
        self._run(
            "INSERT INTO run_config (id, config) VALUES (1, ?) "
            "ON CONFLICT (id) DO UPDATE SET config = excluded.config",
            (json.dumps(config.to_mapping()),),
        )

    # --- clouds --------------------------------------------------------------------------

    def get_cloud(self, cloud_id: str, *, lock: bool = False) -> CloudRecord | None:
        row = self._one(
            f"SELECT {CLOUD_COLUMNS} FROM clouds WHERE cloud_id = ?{self._lock(lock)}",
            (cloud_id,),
        )
        return None if row is None else cloud_from_row(row)

    def cloud_by_url(self, url: str, *, lock: bool = False) -> CloudRecord | None:
        row = self._one(
            f"SELECT {CLOUD_COLUMNS} FROM clouds WHERE url = ?{self._lock(lock)}", (url,)
        )
        return None if row is None else cloud_from_row(row)

    def list_clouds(self) -> list[CloudRecord]:
        rows = self._all(f"SELECT {CLOUD_COLUMNS} FROM clouds ORDER BY {{order}}")
        return [cloud_from_row(row) for row in rows]

    def put_cloud(self, cloud: CloudRecord) -> None:
        values = (
            cloud.url,
            cloud.status.value,
            cloud.last_heartbeat,
            cloud.registered_at,
            cloud.master_version,
            cloud.cloud_id,
        )
        updated = self._run(
            "UPDATE clouds SET url = ?, status = ?, last_heartbeat = ?, registered_at = ?, "
            "master_version = ? WHERE cloud_id = ?",
            values,
        ).rowcount
        if updated:
            return  # an existing cloud keeps its count
        # A new cloud counts the live edges already assigned to it (only edges put by hand or
        # by a tool can be): once, at insert.
        self._run(
            f"INSERT INTO clouds ({CLOUD_COLUMNS}, live_edges) VALUES (?, ?, ?, ?, ?, ?, "
            "(SELECT COUNT(*) FROM edges WHERE cloud_id = ? AND status = 'up'))",
            (cloud.cloud_id, *values[:-1], cloud.cloud_id),
        )

    def cloud_loads(self) -> dict[str, int]:
        return {
            str(cloud_id): int(load)
            for cloud_id, load in self._all("SELECT cloud_id, live_edges FROM clouds")
        }

    def least_loaded_cloud(self, *, lock: bool = False) -> CloudRecord | None:
        row = self._one(
            f"SELECT {CLOUD_COLUMNS} FROM clouds WHERE status = 'up' "
            f"ORDER BY live_edges, {{order}} LIMIT 1{self._lock(lock)}"
        )
        return None if row is None else cloud_from_row(row)

    # --- edges ---------------------------------------------------------------------------

    def get_edge(self, edge_id: str, *, lock: bool = False) -> EdgeRecord | None:
        row = self._one(
            f"SELECT {EDGE_COLUMNS} FROM edges WHERE edge_id = ?{self._lock(lock)}", (edge_id,)
        )
        return None if row is None else edge_from_row(row)

    def edge_by_enrollment(self, enrollment_id: str) -> EdgeRecord | None:
        row = self._one(
            f"SELECT {EDGE_COLUMNS} FROM edges WHERE enrollment_id = ?", (enrollment_id,)
        )
        return None if row is None else edge_from_row(row)

    def put_edge(self, edge: EdgeRecord) -> None:
        before = self._one(
            f"SELECT status, cloud_id, ordinal FROM edges WHERE edge_id = ?{self._lock(True)}",
            (edge.edge_id,),
        )
        if before is None:
            self._take_ordinal(edge.ordinal)
            self._run(
                f"INSERT INTO edges ({EDGE_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                _edge_values(edge),
            )
            self._run("UPDATE fleet SET enrolled = enrolled + 1 WHERE id = 1")
            was_live_on = None
        else:
            status, cloud_id, ordinal = before
            if int(ordinal) != edge.ordinal:
                self._run("INSERT INTO free_ordinals (ordinal) VALUES (?)", (int(ordinal),))
                self._take_ordinal(edge.ordinal)
            self._run(
                f"UPDATE edges SET {_EDGE_SET} WHERE edge_id = ?",
                (*_edge_values(edge)[1:], edge.edge_id),
            )
            was_live_on = cloud_id if status == Status.UP.value else None
        now_live_on = edge.cloud_id if edge.status is Status.UP else None
        self._move_load(was_live_on, now_live_on)

    def _move_load(self, was_live_on: str | None, now_live_on: str | None) -> None:
        if was_live_on == now_live_on:
            return
        if was_live_on is not None:
            self._run(
                "UPDATE clouds SET live_edges = live_edges - 1 WHERE cloud_id = ?",
                (was_live_on,),
            )
        if now_live_on is not None:
            self._run(
                "UPDATE clouds SET live_edges = live_edges + 1 WHERE cloud_id = ?",
                (now_live_on,),
            )

    def _take_ordinal(self, ordinal: int) -> None:
        """Mark ``ordinal`` held: off the free list, or past the highest so far (the gap
        below it becomes free)."""
        (next_ordinal,) = self._one(
            f"SELECT next_ordinal FROM fleet WHERE id = 1{self._lock(True)}"
        )
        if ordinal < next_ordinal:
            self._run("DELETE FROM free_ordinals WHERE ordinal = ?", (ordinal,))
            return
        for free in range(int(next_ordinal), ordinal):
            self._run("INSERT INTO free_ordinals (ordinal) VALUES (?)", (free,))
        self._run("UPDATE fleet SET next_ordinal = ? WHERE id = 1", (ordinal + 1,))

    def delete_edge(self, edge_id: str) -> EdgeRecord | None:
        edge = self.get_edge(edge_id, lock=True)
        if edge is None:
            return None
        self._run("DELETE FROM edges WHERE edge_id = ?", (edge_id,))
        self._run("INSERT INTO free_ordinals (ordinal) VALUES (?)", (edge.ordinal,))
        self._run("UPDATE fleet SET enrolled = enrolled - 1 WHERE id = 1")
        self._move_load(edge.cloud_id if edge.status is Status.UP else None, None)
        return edge

    def free_ordinal(self, *, lock: bool = False) -> int:
        (next_ordinal,) = self._one(
            f"SELECT next_ordinal FROM fleet WHERE id = 1{self._lock(lock)}"
        )
        (lowest,) = self._one("SELECT MIN(ordinal) FROM free_ordinals")
        return int(next_ordinal if lowest is None else lowest)

    def enrolled(self) -> int:
        (count,) = self._one("SELECT enrolled FROM fleet WHERE id = 1")
        return int(count)

    def expired_edges(self, now: float, *, limit: int) -> list[EdgeRecord]:
        rows = self._all(
            f"SELECT {EDGE_COLUMNS} FROM edges WHERE status = 'up' AND expires_at <= ? "
            "ORDER BY expires_at LIMIT ?",
            (now, limit),
        )
        return [edge_from_row(row) for row in rows]

    def live_edges_of(self, cloud_id: str, *, limit: int) -> list[EdgeRecord]:
        rows = self._all(
            f"SELECT {EDGE_COLUMNS} FROM edges WHERE cloud_id = ? AND status = 'up' "
            "ORDER BY {order} LIMIT ?",
            (cloud_id, limit),
        )
        return [edge_from_row(row) for row in rows]

    def assigned_edge_ids(self, cloud_id: str) -> list[str]:
        rows = self._all(
            "SELECT edge_id FROM edges WHERE cloud_id = ? ORDER BY {order}", (cloud_id,)
        )
        return [str(edge_id) for (edge_id,) in rows]

    def session_edge_ids(self, cloud_id: str) -> list[str]:
        rows = self._all(
            "SELECT edge_id FROM edges WHERE session_cloud_id = ? ORDER BY {order}", (cloud_id,)
        )
        return [str(edge_id) for (edge_id,) in rows]

    def release_sessions(self, cloud_id: str, expires_at: float) -> int:
        return self._run(
            "UPDATE edges SET session_cloud_id = NULL, expires_at = ? WHERE session_cloud_id = ?",
            (expires_at, cloud_id),
        ).rowcount

    def list_edges(self) -> list[EdgeRecord]:
        rows = self._all(f"SELECT {EDGE_COLUMNS} FROM edges ORDER BY {{order}}")
        return [edge_from_row(row) for row in rows]

    def sessions(self) -> dict[str, list[str]]:
        held: dict[str, list[str]] = {}
        rows = self._all(
            "SELECT session_cloud_id, edge_id FROM edges WHERE session_cloud_id IS NOT NULL "
            "ORDER BY {order}"
        )
        for cloud_id, edge_id in rows:
            held.setdefault(str(cloud_id), []).append(str(edge_id))
        return held

    # --- revocations and leases ----------------------------------------------------------

    def put_revocation(self, edge_id: str, revoked_at: float) -> None:
        self._run(
            "INSERT INTO revocations (edge_id, revoked_at) VALUES (?, ?) "
            "ON CONFLICT (edge_id) DO UPDATE SET revoked_at = excluded.revoked_at",
            (edge_id, revoked_at),
        )

    def list_revocations(self) -> dict[str, float]:
        rows = self._all("SELECT edge_id, revoked_at FROM revocations")
        return {str(edge_id): float(at) for edge_id, at in rows}

    def prune_revocations(self, before: float) -> None:
        self._run("DELETE FROM revocations WHERE revoked_at < ?", (before,))

    def acquire_lease(self, name: str, holder: str, now: float, ttl_s: float) -> bool:
        row = self._one(
            "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
            "expires_at = excluded.expires_at "
            "WHERE leases.holder = excluded.holder OR leases.expires_at <= ? "
            "RETURNING holder",
            (name, holder, now + ttl_s, now),
        )
        return row is not None
