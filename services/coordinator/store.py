"""Where the coordinator keeps its state: one interface, three implementations.

The :class:`~simultrain.coordinator.registry.Coordinator` decides; the store remembers, and
makes each decision atomic. A decision is a function of one :class:`StoreTransaction`, run
by :meth:`CoordinatorStore.atomic` (or :meth:`~CoordinatorStore.read` when it only reads):
everything it reads and writes commits together or not at all, and a transaction that lost a
race with another coordinator replica is rolled back and run again. So two or more
coordinator processes may share one database (PostgreSQL) without a process-wide lock.

Every operation of a transaction is one or two indexed statements: the cost of a request
does not grow with the fleet (docs/DEPLOY.md "The coordinator on PostgreSQL"). What would
otherwise need a scan is kept incrementally by the store itself, in the same transaction
as the change that moves it: the number of live edges per cloud (the load that assignment
balances), the number of enrolled edges, and the free ordinals below the highest one. Only
the listings (``list_edges``, ``sessions``), which a reader asks for on purpose, read the
whole fleet.

- :class:`~simultrain.coordinator.sqlite.SQLiteStore`: an embedded database file, the
  zero-setup default; one writer at a time (SQLite's own rule), readers beside it.
- :class:`~simultrain.coordinator.sqlite.InMemoryStore`: the same on a private in-memory
  SQLite database, so it has the same indexes, transactions and rollback; state ends with
  the process.
- :class:`~simultrain.coordinator.postgres.PostgresStore`: a PostgreSQL database shared by
  any number of coordinator replicas (row locks, a lease for the health sweep).

All three pass one shared test suite (``tests/services/test_coordinator_store.py``).
Calls are synchronous: the HTTP layer calls them from FastAPI's worker threads (plain
``def`` endpoints) and the health monitor through ``asyncio.to_thread``, so the event loop
never waits on the database.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Self, TypeVar

from simultrain.shared.errors import StoreError

from .records import CloudRecord, EdgeRecord, RunConfig

__all__ = [
    "MEMORY",
    "CoordinatorStore",
    "StoreError",
    "StoreTransaction",
    "open_store",
]

MEMORY = ":memory:"
T = TypeVar("T")


class StoreTransaction(ABC):
    """The operations a decision may use, all inside one transaction.

    Edges and clouds come back in the order their ids were first put (registration order;
    replacing keeps the position, deleting then putting again moves it to the end), so ties
    are broken the same way in every implementation. ``lock=True`` reads a row for update:
    another replica deciding about the same row waits until this transaction ends.
    """

    # --- run configuration ---------------------------------------------------------------

    @abstractmethod
    def get_run_config(self) -> RunConfig | None: ...

    @abstractmethod
    def put_run_config(self, config: RunConfig) -> None: ...

    # --- clouds (tens, not thousands) ---------------------------------------------------

    @abstractmethod
    def get_cloud(self, cloud_id: str, *, lock: bool = False) -> CloudRecord | None: ...

    @abstractmethod
    def cloud_by_url(self, url: str, *, lock: bool = False) -> CloudRecord | None: ...

    @abstractmethod
    def list_clouds(self) -> list[CloudRecord]: ...

    @abstractmethod
    def put_cloud(self, cloud: CloudRecord) -> None:
        """Insert a cloud or replace the one with its id (its load is the store's)."""

    @abstractmethod
    def cloud_loads(self) -> dict[str, int]:
        """Cloud id → live edges assigned to it, kept by :meth:`put_edge`."""

    @abstractmethod
    def least_loaded_cloud(self, *, lock: bool = False) -> CloudRecord | None:
        """The live cloud with the fewest live edges (registration order breaks ties)."""

    # --- edges ---------------------------------------------------------------------------

    @abstractmethod
    def get_edge(self, edge_id: str, *, lock: bool = False) -> EdgeRecord | None: ...

    @abstractmethod
    def edge_by_enrollment(self, enrollment_id: str) -> EdgeRecord | None: ...

    @abstractmethod
    def put_edge(self, edge: EdgeRecord) -> None:
        """Insert an edge or replace the one with its id, keeping the live edges per cloud,
        the enrolled count and the free ordinals. Two edges never share an ordinal."""

    @abstractmethod
    def delete_edge(self, edge_id: str) -> EdgeRecord | None:
        """Remove an edge; the removed record, ``None`` if there was none with that id."""

    @abstractmethod
    def free_ordinal(self, *, lock: bool = False) -> int:
        """The lowest ordinal no edge holds. ``lock``: serialize enrollments on it."""

    @abstractmethod
    def enrolled(self) -> int:
        """How many edges are enrolled (kept by :meth:`put_edge` and :meth:`delete_edge`)."""

    @abstractmethod
    def expired_edges(self, now: float, *, limit: int) -> list[EdgeRecord]:
        """Live edges whose ``expires_at`` is at or before ``now``, the oldest first."""

    @abstractmethod
    def live_edges_of(self, cloud_id: str, *, limit: int) -> list[EdgeRecord]:
        """Live edges assigned to ``cloud_id`` (the orphans of a down cloud)."""

    @abstractmethod
    def assigned_edge_ids(self, cloud_id: str) -> list[str]:
        """Every edge assigned to ``cloud_id``, live or not."""

    @abstractmethod
    def session_edge_ids(self, cloud_id: str) -> list[str]:
        """The edges ``cloud_id`` last reported a session with."""

    @abstractmethod
    def release_sessions(self, cloud_id: str, expires_at: float) -> int:
        """Forget every session of ``cloud_id``: its edges must be heard from by
        ``expires_at``. Returns how many edges it held."""

    @abstractmethod
    def list_edges(self) -> list[EdgeRecord]:
        """The whole fleet (listings only: no decision reads every edge)."""

    @abstractmethod
    def sessions(self) -> dict[str, list[str]]:
        """Cloud id → the edges it reports sessions with (listings only)."""

    # --- revocations and leases ----------------------------------------------------------

    @abstractmethod
    def put_revocation(self, edge_id: str, revoked_at: float) -> None:
        """Tokens of ``edge_id`` issued at or before ``revoked_at`` are no longer valid."""

    @abstractmethod
    def list_revocations(self) -> dict[str, float]: ...

    @abstractmethod
    def prune_revocations(self, before: float) -> None:
        """Forget revocations made before ``before`` (every token they cover has expired)."""

    @abstractmethod
    def acquire_lease(self, name: str, holder: str, now: float, ttl_s: float) -> bool:
        """Take or renew the lease ``name`` for ``holder`` until ``now + ttl_s``; ``False``
        while another holder's lease has not expired."""


class CoordinatorStore(ABC):
    """A store of the coordinator's state: transactions, and one-call conveniences.

    The conveniences (``get_edge``, ``put_cloud``, …) each run one operation in a
    transaction of its own, for tests and tools; decisions use :meth:`atomic`.
    """

    @abstractmethod
    def atomic(self, decide: Callable[[StoreTransaction], T]) -> T:
        """Run ``decide`` in one read-write transaction and commit; roll back if it raises.

        ``decide`` may run more than once (a transaction that lost a race is retried), so it
        must have no effect outside the transaction. Database errors are :class:`StoreError`.
        """

    def read(self, look: Callable[[StoreTransaction], T]) -> T:
        """Run ``look`` in one read-only transaction (a consistent snapshot)."""
        return self.atomic(look)

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

    # --- one operation, one transaction -------------------------------------------------

    def get_run_config(self) -> RunConfig | None:
        return self.read(lambda tx: tx.get_run_config())

    def put_run_config(self, config: RunConfig) -> None:
        self.atomic(lambda tx: tx.put_run_config(config))

    def put_cloud(self, cloud: CloudRecord) -> None:
        self.atomic(lambda tx: tx.put_cloud(cloud))

    def get_cloud(self, cloud_id: str) -> CloudRecord | None:
        return self.read(lambda tx: tx.get_cloud(cloud_id))

    def list_clouds(self) -> list[CloudRecord]:
        return self.read(lambda tx: tx.list_clouds())

    def put_edge(self, edge: EdgeRecord) -> None:
        self.atomic(lambda tx: tx.put_edge(edge))

    def put_edges(self, edges: Iterable[EdgeRecord]) -> None:
        """Many edges in one transaction (seeding a store for a test or a bench)."""
        batch = list(edges)

        def write(tx: StoreTransaction) -> None:
            for edge in batch:
                tx.put_edge(edge)

        self.atomic(write)

    def get_edge(self, edge_id: str) -> EdgeRecord | None:
        return self.read(lambda tx: tx.get_edge(edge_id))

    def list_edges(self) -> list[EdgeRecord]:
        return self.read(lambda tx: tx.list_edges())

    def delete_edge(self, edge_id: str) -> bool:
        """Remove an edge; ``False`` if there was none with that id."""
        return self.atomic(lambda tx: tx.delete_edge(edge_id)) is not None

    def put_revocation(self, edge_id: str, revoked_at: float) -> None:
        self.atomic(lambda tx: tx.put_revocation(edge_id, revoked_at))

    def list_revocations(self) -> dict[str, float]:
        return self.read(lambda tx: tx.list_revocations())

    def prune_revocations(self, before: float) -> None:
        self.atomic(lambda tx: tx.prune_revocations(before))


def open_store(
    db_path: str | os.PathLike[str],
    *,
    database_url: str | None = None,
    database_password: str | None = None,
    pool_size: int = 16,
) -> CoordinatorStore:
    """The store the settings name: a PostgreSQL ``database_url`` (``pool_size``
    connections at most) if given, else ``db_path``: ``":memory:"`` in memory, anything else
    a SQLite file."""
    if database_url:
        from .postgres import PostgresStore

        return PostgresStore(database_url, password=database_password, pool_size=pool_size)
    from .sqlite import InMemoryStore, SQLiteStore

    if os.fspath(db_path) == MEMORY:
        return InMemoryStore()
    return SQLiteStore(db_path)
