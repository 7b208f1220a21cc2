"""The edge's durable state: who it is, where it is in its data, what the cloud may still need.

An edge is a device that loses power; its identity, data position and un-acknowledged
batches must survive a restart, as the cloud's checkpoint already does (docs/DESIGN.md §7.2).
One small store per agent, in ``SIMULTRAIN_EDGE_STATE_DIR``, holds

- the **identity**: the edge id, its token and the assignment the coordinator gave it, and
  the **binding** it was given under (coordinator or cloud URL, shard, run configuration) —
  a state directory of another coordinator or run is refused, never silently re-enrolled;
- the **cursor**: the next sequence number and the data stream's position;
- the **kept batches**: every batch taken from the data and not yet durable in the cloud
  (``Ack.durable_until``, PROTOCOL.md), as the raw inputs and labels.

A batch and the cursor that passes it are written in one transaction, before its ACT goes
out: a crash before the commit leaves the batch in the data stream (it is taken again under
the same sequence number), a crash after it leaves the batch in the store (it is re-sent).

Two implementations behind one base, with one shared test suite
(``tests/services/test_edge_state.py``): :class:`SqliteEdgeState` (the stdlib ``sqlite3``,
WAL with ``synchronous=FULL``, so a commit is on disk when it returns — SQLite's "Atomic
Commit" document) and :class:`MemoryEdgeState` (no state directory: what the agent did before,
everything lost with the process).

Errors::

    StoreError
    └── EdgeStateError          the state directory cannot be used (exit status 78)
        ├── ForeignEdgeState    it belongs to another coordinator, run, shard or program
        └── EdgeStateFull       the bound (``state_max_bytes``) or the disk is full
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simultrain.shared.errors import StoreError

from .coordinator_client import Assignment

__all__ = [
    "EXIT_STATE_ERROR",
    "Cursor",
    "EdgeIdentity",
    "EdgeState",
    "EdgeStateError",
    "EdgeStateFull",
    "ForeignEdgeState",
    "KeptBatch",
    "MemoryEdgeState",
    "SqliteEdgeState",
    "open_edge_state",
]

FORMAT = "simultrain-edge-state/1"
DB_NAME = "edge-state.sqlite3"
LOCK_NAME = "edge-state.lock"
# sysexits.h EX_CONFIG: the unit's RestartPreventExitStatus keeps systemd from restarting an
# agent whose state directory needs an operator (restarting would only fail the same way).
EXIT_STATE_ERROR = 78


class EdgeStateError(StoreError):
    """The state directory cannot be used: unreadable, corrupt, unwritable, or locked."""


class ForeignEdgeState(EdgeStateError):
    """The state directory belongs to another coordinator, run, shard or program."""


class EdgeStateFull(EdgeStateError):
    """No room for one more kept batch: the configured bound or the disk is full."""


# Who this edge is, exactly as the coordinator enrolled it (or as configured without one).
EdgeIdentity = Assignment


@dataclass(frozen=True)
class Cursor:
    """Where the edge is: the next sequence number and the data stream's next batch."""

    next_seq: int = 0
    stream_index: int = 0  # BatchStream.batch_index of the next batch to take
    batches_produced: int = 0
    samples_produced: int = 0


@dataclass(frozen=True)
class KeptBatch:
    seq: int
    inputs: np.ndarray
    labels: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.inputs.nbytes + self.labels.nbytes)


class EdgeState(ABC):
    """The seam: what the agent needs of its durable state, whatever keeps it.

    ``binding`` is what the state was created for (a JSON-able mapping); opening a state made
    for another binding raises :class:`ForeignEdgeState`. ``max_bytes`` bounds the kept
    batches' payload; ``None`` disables the bound.
    """

    def __init__(self, binding: Mapping[str, Any], *, max_bytes: int | None) -> None:
        self.binding = _canonical(binding)
        self.max_bytes = max_bytes

    @property
    @abstractmethod
    def durable(self) -> bool:
        """Whether what is stored survives the process."""

    @abstractmethod
    def identity(self) -> EdgeIdentity | None:
        """The stored identity; None before the first enrollment."""

    @abstractmethod
    def save_identity(self, identity: EdgeIdentity) -> None: ...

    @abstractmethod
    def cursor(self) -> Cursor: ...

    @abstractmethod
    def keep(self, batch: KeptBatch, cursor: Cursor) -> None:
        """Store ``batch`` and advance to ``cursor`` in one commit (before its ACT is sent).

        Raises :class:`EdgeStateFull` when the batch would pass ``max_bytes``; then nothing
        changes.
        """

    @abstractmethod
    def forget_below(self, seq: int) -> int:
        """Drop the kept batches below ``seq`` (the cloud made them durable); how many."""

    @abstractmethod
    def kept(self) -> list[KeptBatch]:
        """Every kept batch, in sequence order."""

    @abstractmethod
    def kept_bytes(self) -> int: ...

    def close(self) -> None:  # noqa: B027 - only the SQLite store holds resources
        """Release what the store holds."""

    def _check_room(self, batch: KeptBatch) -> None:
        if self.max_bytes is not None and self.kept_bytes() + batch.nbytes > self.max_bytes:
            raise EdgeStateFull(
                f"the edge state holds {self.kept_bytes()} bytes of batches the cloud has not "
                f"made durable; batch {batch.seq} ({batch.nbytes} bytes) would pass the bound "
                f"of {self.max_bytes} (state_max_bytes). Is the cloud checkpointing?"
            )


class MemoryEdgeState(EdgeState):
    """Everything in memory: the agent without a state directory."""

    def __init__(
        self, binding: Mapping[str, Any] | None = None, *, max_bytes: int | None = None
    ) -> None:
        super().__init__(binding or {}, max_bytes=max_bytes)
        self._identity: EdgeIdentity | None = None
        self._cursor = Cursor()
        self._batches: dict[int, KeptBatch] = {}
        self._bytes = 0

    @property
    def durable(self) -> bool:
        return False

    def identity(self) -> EdgeIdentity | None:
        return self._identity

    def save_identity(self, identity: EdgeIdentity) -> None:
        self._identity = identity

    def cursor(self) -> Cursor:
        return self._cursor

    def keep(self, batch: KeptBatch, cursor: Cursor) -> None:
        self._check_room(batch)
        old = self._batches.get(batch.seq)
        self._bytes += batch.nbytes - (old.nbytes if old is not None else 0)
        self._batches[batch.seq] = batch
        self._cursor = cursor

    def forget_below(self, seq: int) -> int:
        gone = [s for s in self._batches if s < seq]
        for s in gone:
            self._bytes -= self._batches.pop(s).nbytes
        return len(gone)

    def kept(self) -> list[KeptBatch]:
        return [self._batches[s] for s in sorted(self._batches)]

    def kept_bytes(self) -> int:
        return self._bytes


_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE batches (seq INTEGER PRIMARY KEY, inputs BLOB NOT NULL, "
    "labels BLOB NOT NULL, nbytes INTEGER NOT NULL)",
)


class SqliteEdgeState(EdgeState):
    """SQLite in ``directory``: WAL, ``synchronous=FULL``, one writer (a lock file).

    WAL with ``synchronous=FULL`` syncs the log at every commit, so a committed batch
    survives a power cut, not only a crash of the process (SQLite documentation, "PRAGMA
    synchronous"). The lock file keeps two agents from sharing one directory: the second
    would take the same sequence numbers.
    """

    def __init__(
        self, directory: Path, binding: Mapping[str, Any], *, max_bytes: int | None
    ) -> None:
        super().__init__(binding, max_bytes=max_bytes)
        # The agent writes from its compute thread (keep) and its event loop (forget): one
        # connection, one transaction at a time.
        self._lock = threading.RLock()
        self.directory = directory
        self.path = directory / DB_NAME
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise EdgeStateError(f"cannot use the edge state directory {directory}: {exc}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            raise EdgeStateError(
                f"the edge state directory {directory} is in use by another agent"
            ) from exc
        try:
            self._db = self._open()
        except EdgeStateError:
            self._release_lock()
            raise
        self._bytes = self._sum_bytes()

    def _open(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE … COMMIT).
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise EdgeStateError(f"cannot open the edge state {self.path}: {exc}") from exc
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise EdgeStateError(f"{self.path}: cannot switch to WAL (journal mode {mode})")
            db.execute("PRAGMA synchronous=FULL")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise EdgeStateError(f"{self.path} is corrupt: {check}")
            tables = db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
            if tables == 0:  # new, or made by a crash before its first commit: ours to shape
                with _transaction(db, self.path):
                    for statement in _SCHEMA:
                        db.execute(statement)
                    db.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))
                    db.execute("INSERT INTO meta VALUES ('binding', ?)", (self.binding,))
            self._check_owner(db)
        except sqlite3.Error as exc:
            db.close()
            raise EdgeStateError(
                f"{self.path} is not a readable edge state (corrupt or not SQLite): {exc}"
            ) from exc
        except EdgeStateError:
            db.close()
            raise
        return db

    def _check_owner(self, db: sqlite3.Connection) -> None:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"meta", "batches"} <= tables:
            raise ForeignEdgeState(f"{self.path} is an SQLite file of another program")
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format") != FORMAT:
            raise ForeignEdgeState(
                f"{self.path} has format {meta.get('format')!r}, this agent writes {FORMAT!r}"
            )
        if meta.get("binding") != self.binding:
            raise ForeignEdgeState(
                f"the edge state in {self.directory} was made for {meta.get('binding')}, "
                f"this agent is configured for {self.binding}; point "
                "SIMULTRAIN_EDGE_STATE_DIR elsewhere, or delete the directory to enroll as a "
                "new edge (its batches not yet durable in the cloud are then lost)"
            )

    @property
    def durable(self) -> bool:
        return True

    def _meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def identity(self) -> EdgeIdentity | None:
        raw = self._meta("identity")
        if raw is None:
            return None
        try:
            return EdgeIdentity(**json.loads(raw))
        except (ValueError, TypeError) as exc:
            raise EdgeStateError(f"{self.path}: the stored identity is unreadable: {exc}") from exc

    def save_identity(self, identity: EdgeIdentity) -> None:
        with self._lock, _transaction(self._db, self.path):
            self._db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('identity', ?)",
                (json.dumps(asdict(identity), sort_keys=True),),
            )

    def cursor(self) -> Cursor:
        raw = self._meta("cursor")
        if raw is None:
            return Cursor()
        try:
            return Cursor(**json.loads(raw))
        except (ValueError, TypeError) as exc:
            raise EdgeStateError(f"{self.path}: the stored cursor is unreadable: {exc}") from exc

    def keep(self, batch: KeptBatch, cursor: Cursor) -> None:
        with self._lock, _transaction(self._db, self.path):
            self._check_room(batch)
            old = self._db.execute(
                "SELECT nbytes FROM batches WHERE seq = ?", (batch.seq,)
            ).fetchone()
            self._db.execute(
                "INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?)",
                (batch.seq, _npy(batch.inputs), _npy(batch.labels), batch.nbytes),
            )
            self._db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('cursor', ?)", (json.dumps(asdict(cursor)),)
            )
            kept_before = int(old[0]) if old is not None else 0
        with self._lock:  # committed: count it
            self._bytes += batch.nbytes - kept_before

    def forget_below(self, seq: int) -> int:
        with self._lock, _transaction(self._db, self.path):
            gone = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM batches WHERE seq < ?", (seq,)
            ).fetchone()
            self._db.execute("DELETE FROM batches WHERE seq < ?", (seq,))
        with self._lock:
            self._bytes -= int(gone[1])
        return int(gone[0])

    def kept(self) -> list[KeptBatch]:
        try:
            with self._lock:
                rows = self._db.execute(
                    "SELECT seq, inputs, labels FROM batches ORDER BY seq"
                ).fetchall()
            return [KeptBatch(int(s), _from_npy(x), _from_npy(y)) for s, x, y in rows]
        except (sqlite3.Error, ValueError, OSError) as exc:
            raise EdgeStateError(f"{self.path}: a kept batch is unreadable: {exc}") from exc

    def kept_bytes(self) -> int:
        return self._bytes

    def _sum_bytes(self) -> int:
        return int(self._db.execute("SELECT COALESCE(SUM(nbytes), 0) FROM batches").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self._release_lock()

    def _release_lock(self) -> None:
        os.close(self._lock_fd)  # closing the descriptor releases the flock


class _transaction:
    """``BEGIN IMMEDIATE … COMMIT``, rolled back on error; SQLite errors become ours."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db = db
        self.path = path

    def __enter__(self) -> None:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from exc

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            if exc is None:
                self.db.execute("COMMIT")
                return
            if self.db.in_transaction:  # SQLite rolls back by itself on some errors (FULL)
                self.db.execute("ROLLBACK")
        except sqlite3.Error as commit_exc:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise _translate(commit_exc, self.path) from commit_exc
        if isinstance(exc, sqlite3.Error):
            raise _translate(exc, self.path) from exc


def _translate(exc: sqlite3.Error, path: Path) -> EdgeStateError:
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc):
        return EdgeStateFull(f"the disk holding {path} is full: {exc}")
    return EdgeStateError(f"cannot write the edge state {path}: {exc}")


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _from_npy(data: bytes) -> np.ndarray:
    return np.asarray(np.load(io.BytesIO(data), allow_pickle=False))


def _canonical(binding: Mapping[str, Any]) -> str:
    return json.dumps(dict(binding), sort_keys=True, separators=(",", ":"))


def open_edge_state(
    directory: Path | None, binding: Mapping[str, Any], *, max_bytes: int | None
) -> EdgeState:
    """The SQLite store in ``directory``, or the in-memory one when there is none."""
    if directory is None:
        return MemoryEdgeState(binding, max_bytes=max_bytes)
    return SqliteEdgeState(directory, binding, max_bytes=max_bytes)
