"""The coordinator's decisions, free of HTTP: registration, assignment, health, versions.

The coordinator's role (docs/DESIGN.md §2, §8.2): a registry of clouds and edges, the version
counters as last reported, the run configuration, the reconciliation schedule, and health — a cloud
or edge that stops heartbeating is marked down, and the edges of a down cloud move to a live one.

Every public method runs under one lock, so a decision (read records, choose, write) is
atomic with respect to the others; the coordinator handles a few heartbeats per second, far
below what one lock serializes. The clock is injected (seconds since the epoch, because
heartbeat times are stored and must mean the same after a restart), so tests move time
instead of sleeping.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from . import schedule
from .errors import NoCloudAvailable, UnknownCloud, UnknownEdge
from .records import CloudRecord, EdgeRecord, RunConfig, Status
from .settings import CoordinatorSettings
from .store import CoordinatorStore

__all__ = ["Assignment", "Clock", "Coordinator", "SweepResult", "VersionsReport"]

logger = logging.getLogger("simultrain.coordinator")

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Assignment:
    """An edge and the cloud it is assigned to (which may be down if none is live)."""

    edge: EdgeRecord
    cloud: CloudRecord


@dataclass(frozen=True, slots=True)
class Reassignment:
    edge_id: str
    from_cloud_id: str
    to_cloud_id: str


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What one health sweep changed."""

    clouds_down: tuple[str, ...] = ()
    edges_down: tuple[str, ...] = ()
    reassigned: tuple[Reassignment, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.clouds_down or self.edges_down or self.reassigned)


@dataclass(frozen=True, slots=True)
class EdgeLag:
    edge: EdgeRecord
    master_version: int | None
    # master version of the edge's cloud minus the edge's replica version, as last reported.
    lag: int | None


@dataclass(frozen=True, slots=True)
class VersionsReport:
    clouds: list[CloudRecord] = field(default_factory=list)
    edges: list[EdgeLag] = field(default_factory=list)


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


class Coordinator:
    """Registry and health of one training run's clouds and edges."""

    def __init__(
        self,
        store: CoordinatorStore,
        settings: CoordinatorSettings,
        *,
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock: Clock = time.time if clock is None else clock
        self._lock = threading.Lock()
        # After a restart every stored heartbeat is as old as the downtime; nobody is
        # judged silent until a full timeout has passed since this coordinator started.
        self._started_at = self._clock()
        with self._lock:
            self._run_config = self._sync_run_config(settings.run_config())

    @property
    def store(self) -> CoordinatorStore:
        return self._store

    @property
    def settings(self) -> CoordinatorSettings:
        return self._settings

    @property
    def run_config(self) -> RunConfig:
        return self._run_config

    def now(self) -> float:
        """The coordinator's clock (seconds since the epoch)."""
        return self._clock()

    # --- run configuration -------------------------------------------------------------

    def _sync_run_config(self, wanted: RunConfig) -> RunConfig:
        """Record the configured run; the settings win over what a previous start stored."""
        stored = self._store.get_run_config()
        if stored == wanted:
            return wanted
        if stored is not None:
            before, after = stored.to_mapping(), wanted.to_mapping()
            changed = sorted(
                name for name in before.keys() | after.keys() if before.get(name) != after.get(name)
            )
            logger.warning("run configuration changed since the last start: %s", changed)
        self._store.put_run_config(wanted)
        if stored is not None and stored.reconcile_every != wanted.reconcile_every:
            for edge in self._store.list_edges():
                self._store.put_edge(
                    replace(edge, reconcile_offset=self._offset(edge, wanted.reconcile_every))
                )
        return wanted

    @staticmethod
    def _offset(edge: EdgeRecord, every: int | None) -> int:
        if edge.shard_index is not None and edge.shard_count is not None:
            return schedule.offset_for(edge.shard_index, edge.shard_count, every)
        return schedule.offset_for_ordinal(edge.ordinal, every)

    # --- liveness and assignment -------------------------------------------------------

    def _silent(self, last_heartbeat: float, now: float) -> bool:
        seen = max(last_heartbeat, self._started_at)
        return now - seen >= self._settings.heartbeat_timeout_s

    @staticmethod
    def _loads(clouds: Iterable[CloudRecord], edges: Iterable[EdgeRecord]) -> dict[str, int]:
        """Live edges per live cloud."""
        loads = {c.cloud_id: 0 for c in clouds if c.status is Status.UP}
        for edge in edges:
            if edge.status is Status.UP and edge.cloud_id in loads:
                loads[edge.cloud_id] += 1
        return loads

    @staticmethod
    def _least_loaded(clouds: list[CloudRecord], loads: dict[str, int]) -> CloudRecord | None:
        live = [c for c in clouds if c.cloud_id in loads]
        if not live:
            return None
        # list order (registration order) breaks ties deterministically.
        return min(live, key=lambda c: loads[c.cloud_id])

    def _reassign_orphans(
        self, clouds: list[CloudRecord], edges: list[EdgeRecord]
    ) -> list[Reassignment]:
        """Move every live edge whose cloud is not live to the least-loaded live cloud."""
        loads = self._loads(clouds, edges)
        moves: list[Reassignment] = []
        for edge in edges:
            if edge.status is not Status.UP or edge.cloud_id in loads:
                continue
            target = self._least_loaded(clouds, loads)
            if target is None:
                break
            self._store.put_edge(replace(edge, cloud_id=target.cloud_id))
            loads[target.cloud_id] += 1
            moves.append(Reassignment(edge.edge_id, edge.cloud_id, target.cloud_id))
            logger.warning(
                "edge %s reassigned from cloud %s to cloud %s",
                edge.edge_id,
                edge.cloud_id,
                target.cloud_id,
            )
        return moves

    def _cloud_of(self, edge: EdgeRecord) -> CloudRecord:
        cloud = self._store.get_cloud(edge.cloud_id)
        if cloud is None:  # only if the store was edited by hand
            raise UnknownCloud(edge.cloud_id)
        return cloud

    # --- clouds -------------------------------------------------------------------------

    def register_cloud(self, url: str, master_version: int = 0) -> CloudRecord:
        """Register a cloud; a cloud registering again with the same URL keeps its id."""
        with self._lock:
            now = self._clock()
            clouds = self._store.list_clouds()
            existing = next((c for c in clouds if c.url == url), None)
            if existing is None:
                cloud = CloudRecord(
                    cloud_id=_new_id("cloud"),
                    url=url,
                    status=Status.UP,
                    last_heartbeat=now,
                    registered_at=now,
                    master_version=master_version,
                )
                logger.info("cloud %s registered at %s", cloud.cloud_id, url)
            else:
                cloud = replace(
                    existing, status=Status.UP, last_heartbeat=now, master_version=master_version
                )
                logger.info("cloud %s registered again at %s", cloud.cloud_id, url)
            self._store.put_cloud(cloud)
            self._reassign_orphans(self._store.list_clouds(), self._store.list_edges())
            return cloud

    def cloud_heartbeat(
        self, cloud_id: str, master_version: int, connected_edges: Iterable[str] = ()
    ) -> tuple[CloudRecord, list[str]]:
        """Record a cloud's heartbeat; returns it and the ids of the edges assigned to it."""
        with self._lock:
            cloud = self._store.get_cloud(cloud_id)
            if cloud is None:
                raise UnknownCloud(cloud_id)
            was_down = cloud.status is Status.DOWN
            cloud = replace(
                cloud,
                status=Status.UP,
                last_heartbeat=self._clock(),
                master_version=master_version,
                connected_edges=tuple(connected_edges),
            )
            self._store.put_cloud(cloud)
            edges = self._store.list_edges()
            if was_down:
                logger.info("cloud %s is up again", cloud_id)
                self._reassign_orphans(self._store.list_clouds(), edges)
                edges = self._store.list_edges()
            return cloud, [e.edge_id for e in edges if e.cloud_id == cloud_id]

    def list_clouds(self) -> list[tuple[CloudRecord, int]]:
        """Every cloud with the number of live edges assigned to it."""
        with self._lock:
            clouds, edges = self._store.list_clouds(), self._store.list_edges()
        counts = {c.cloud_id: 0 for c in clouds}
        for edge in edges:
            if edge.status is Status.UP and edge.cloud_id in counts:
                counts[edge.cloud_id] += 1
        return [(c, counts[c.cloud_id]) for c in clouds]

    # --- edges --------------------------------------------------------------------------

    def register_edge(
        self,
        *,
        name: str | None = None,
        shard_index: int | None = None,
        shard_count: int | None = None,
    ) -> Assignment:
        """Register an edge with the least-loaded live cloud; its reconciliation offset is
        staggered by shard (index of count) if given, else by registration order."""
        if (shard_index is None) != (shard_count is None):
            raise ValueError("give shard_index and shard_count together")
        with self._lock:
            now = self._clock()
            clouds, edges = self._store.list_clouds(), self._store.list_edges()
            cloud = self._least_loaded(clouds, self._loads(clouds, edges))
            if cloud is None:
                raise NoCloudAvailable("no cloud is up; retry once a cloud has registered")
            used = {e.ordinal for e in edges}
            ordinal = next(i for i in range(len(used) + 1) if i not in used)
            edge = EdgeRecord(
                edge_id=_new_id("edge"),
                cloud_id=cloud.cloud_id,
                status=Status.UP,
                last_heartbeat=now,
                registered_at=now,
                ordinal=ordinal,
                reconcile_offset=0,
                name=name,
                shard_index=shard_index,
                shard_count=shard_count,
            )
            edge = replace(
                edge, reconcile_offset=self._offset(edge, self._run_config.reconcile_every)
            )
            self._store.put_edge(edge)
            logger.info("edge %s registered, assigned to cloud %s", edge.edge_id, cloud.cloud_id)
            return Assignment(edge, cloud)

    def edge_heartbeat(
        self, edge_id: str, edge_version: int, step: int, *, finished: bool = False
    ) -> Assignment:
        """Record an edge's heartbeat; moves it to a live cloud if its cloud is down.
        ``finished``: its last one, the steps done; the sweep never marks it down."""
        with self._lock:
            edge = self._store.get_edge(edge_id)
            if edge is None:
                raise UnknownEdge(edge_id)
            if finished:
                logger.info("edge %s finished at step %d", edge_id, step)
            elif edge.status is not Status.UP:
                logger.info("edge %s is up again", edge_id)
            edge = replace(
                edge,
                status=Status.FINISHED if finished else Status.UP,
                last_heartbeat=self._clock(),
                edge_version=edge_version,
                step=step,
            )
            self._store.put_edge(edge)
            cloud = self._cloud_of(edge)
            if cloud.status is not Status.UP:
                self._reassign_orphans(self._store.list_clouds(), self._store.list_edges())
                edge = self._store.get_edge(edge_id) or edge
                cloud = self._cloud_of(edge)
            return Assignment(edge, cloud)

    def get_edge(self, edge_id: str) -> Assignment:
        with self._lock:
            edge = self._store.get_edge(edge_id)
            if edge is None:
                raise UnknownEdge(edge_id)
            return Assignment(edge, self._cloud_of(edge))

    def list_edges(self) -> list[EdgeRecord]:
        with self._lock:
            return self._store.list_edges()

    def remove_edge(self, edge_id: str) -> None:
        """Forget an edge and revoke every token it was issued: clouds learn it with their
        next heartbeat (:meth:`revocations`), refuse those tokens and close its session."""
        with self._lock:
            if not self._store.delete_edge(edge_id):
                raise UnknownEdge(edge_id)
            self._store.put_revocation(edge_id, self._clock())
            logger.info("edge %s removed; its tokens are revoked", edge_id)

    def revocations(self) -> dict[str, float]:
        """Edge id → when its tokens were revoked (Unix seconds), for the clouds.

        A revocation is kept while a token it covers can still be valid: for one token
        lifetime (and a minute of clock skew) after it was made; :meth:`sweep` prunes older
        ones.
        """
        with self._lock:
            return self._store.list_revocations()

    # --- health and versions ------------------------------------------------------------

    def sweep(self) -> SweepResult:
        """Mark silent clouds and edges down; move live edges off down clouds."""
        with self._lock:
            now = self._clock()
            clouds_down: list[str] = []
            for cloud in self._store.list_clouds():
                if cloud.status is Status.UP and self._silent(cloud.last_heartbeat, now):
                    self._store.put_cloud(replace(cloud, status=Status.DOWN))
                    clouds_down.append(cloud.cloud_id)
                    logger.warning("cloud %s missed its heartbeats: down", cloud.cloud_id)
            edges_down: list[str] = []
            for edge in self._store.list_edges():
                if edge.status is Status.UP and self._silent(edge.last_heartbeat, now):
                    self._store.put_edge(replace(edge, status=Status.DOWN))
                    edges_down.append(edge.edge_id)
                    logger.warning("edge %s missed its heartbeats: down", edge.edge_id)
            moves = self._reassign_orphans(self._store.list_clouds(), self._store.list_edges())
            self._store.prune_revocations(now - self.settings.token_ttl_s - 60.0)
            return SweepResult(tuple(clouds_down), tuple(edges_down), tuple(moves))

    def versions(self) -> VersionsReport:
        """Master version per cloud and each edge's replica version and lag behind it."""
        with self._lock:
            clouds, edges = self._store.list_clouds(), self._store.list_edges()
        masters = {c.cloud_id: c.master_version for c in clouds}
        lags = []
        for edge in edges:
            master = masters.get(edge.cloud_id)
            lag = None if master is None else master - edge.edge_version
            lags.append(EdgeLag(edge, master, lag))
        return VersionsReport(clouds, lags)
