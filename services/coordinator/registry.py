"""The coordinator's decisions, free of HTTP: registration, assignment, health, versions.

The coordinator's role (docs/DESIGN.md §2, §8.2): a registry of clouds and edges, the version
counters as last reported, the run configuration, the reconciliation schedule, and health — a cloud
or edge that stops heartbeating is marked down, and the edges of a down cloud move to a live one.

Each decision is one store transaction (``store.py``): what it reads and writes commits
together, and coordinator replicas sharing one database never decide about the same row at
once. Nothing is locked in this process, and no decision reads every edge: each asks the
store an indexed question (this edge, the least-loaded live cloud, the lowest free
ordinal, the edges that fell silent), so a request costs the same in a fleet of a hundred
edges and of ten thousand.

Liveness (PROTOCOL.md §9.4): an edge is live while it heartbeats on time *or* while a cloud
reports a session with it — a streaming edge is already heard from through the data plane.
The coordinator states the cadence in every assignment (:class:`Cadence`): an edge that is
not streaming heartbeats at an interval that grows with the fleet, so the fleet's own
heartbeats stay under ``edge_heartbeats_per_s``; a streaming edge heartbeats rarely.

The clock is injected (seconds since the epoch, because heartbeat times are stored and must
mean the same after a restart), so tests move time instead of sleeping.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace

from . import schedule
from .errors import NoCloudAvailable, UnknownCloud, UnknownEdge
from .records import CloudRecord, EdgeRecord, RunConfig, Status
from .settings import CoordinatorSettings
from .store import CoordinatorStore, StoreTransaction

__all__ = [
    "Assignment",
    "Cadence",
    "Clock",
    "CloudBeat",
    "Coordinator",
    "FleetCounts",
    "SweepResult",
    "VersionsReport",
    "cadence_for",
]

logger = logging.getLogger("simultrain.coordinator")

Clock = Callable[[], float]
# Edges one transaction of the sweep marks down; the next transaction goes on.
SWEEP_BATCH = 500
# Edges one transaction moves off down clouds. Fewer: each move holds its target cloud's row
# (its load) until the commit, and every enrollment and every other move waits for that row.
MOVE_BATCH = 50
HEALTH_LEASE = "health-sweep"


@dataclass(frozen=True, slots=True)
class Cadence:
    """How often an edge is asked to heartbeat, for the fleet's current size."""

    interval_s: float  # while it is not streaming
    timeout_s: float  # silent this long, and held by no session: down
    streaming_interval_s: float  # while its cloud reports its session


def cadence_for(settings: CoordinatorSettings, enrolled: int) -> Cadence:
    """The cadence for a fleet of ``enrolled`` edges (PROTOCOL.md §9.4).

    Edges that are not streaming are asked for at most ``edge_heartbeats_per_s`` heartbeats
    per second together: beyond ``heartbeat_interval_s × edge_heartbeats_per_s`` edges the
    interval grows with the fleet, and the timeout with it (same ratio). A token must be
    refreshed while it is valid, so no interval exceeds a third of its lifetime.
    """
    base = settings.heartbeat_interval_s
    ratio = settings.heartbeat_timeout_s / base
    ceiling = max(base, settings.token_ttl_s / 3)
    interval = min(max(base, enrolled / settings.edge_heartbeats_per_s), ceiling)
    streaming = min(max(settings.streaming_heartbeat_interval_s, interval), ceiling)
    return Cadence(interval, interval * ratio, streaming)


@dataclass(frozen=True, slots=True)
class Assignment:
    """An edge, the cloud it is assigned to (which may be down if none is live), and the
    cadence it is asked to heartbeat at."""

    edge: EdgeRecord
    cloud: CloudRecord
    cadence: Cadence


@dataclass(frozen=True, slots=True)
class CloudBeat:
    """What a cloud's heartbeat returns: the cloud, the edges assigned to it (when asked
    for), the revoked edges (:meth:`Coordinator.revocations`), and whether the coordinator
    lost its sessions (it had marked it down) and wants the whole set again."""

    cloud: CloudRecord
    assigned_edges: list[str] | None
    revoked_edges: dict[str, float]
    sessions_lost: bool = False


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
class FleetCounts:
    clouds_up: int
    edges_up: int
    enrolled: int


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


def _log_moves(moves: Iterable[Reassignment]) -> None:
    for move in moves:
        logger.warning(
            "edge %s reassigned from cloud %s to cloud %s",
            move.edge_id,
            move.from_cloud_id,
            move.to_cloud_id,
        )


class Coordinator:
    """Registry and health of one training run's clouds and edges (one replica of them)."""

    # How stale the enrolled count behind a cadence may be (seconds of monotonic time): an
    # interval needs no exact count, so most requests do not read it.
    fleet_size_max_age_s = 1.0

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
        # This replica's name for the sweep's lease.
        self.replica_id = _new_id("coordinator")
        # After a restart every stored heartbeat is as old as the downtime; nobody is
        # judged silent until a full timeout has passed since this coordinator started.
        self._started_at = self._clock()
        self._fleet_size = (0, -float("inf"))  # (enrolled, monotonic time it was read)
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
        """Record the configured run; the settings win over what a previous start stored.

        A changed reconciliation period re-staggers every edge: the one decision that reads
        the whole fleet, once, at start-up."""

        def decide(tx: StoreTransaction) -> list[str]:
            stored = tx.get_run_config()
            if stored == wanted:
                return []
            tx.put_run_config(wanted)
            if stored is None:
                return []
            if stored.reconcile_every != wanted.reconcile_every:
                for listed in tx.list_edges():
                    edge = tx.get_edge(listed.edge_id, lock=True)
                    if edge is not None:
                        offset = self._offset(edge, wanted.reconcile_every)
                        tx.put_edge(replace(edge, reconcile_offset=offset))
            before, after = stored.to_mapping(), wanted.to_mapping()
            return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))

        changed = self._store.atomic(decide)
        if changed:
            logger.warning("run configuration changed since the last start: %s", changed)
        return wanted

    @staticmethod
    def _offset(edge: EdgeRecord, every: int | None) -> int:
        if edge.shard_index is not None and edge.shard_count is not None:
            return schedule.offset_for(edge.shard_index, edge.shard_count, every)
        return schedule.offset_for_ordinal(edge.ordinal, every)

    # --- liveness and assignment -------------------------------------------------------

    def _cadence(self, tx: StoreTransaction) -> Cadence:
        """The cadence for the fleet as enrolled a moment ago."""
        enrolled, read_at = self._fleet_size
        if time.monotonic() - read_at > self.fleet_size_max_age_s:
            enrolled = tx.enrolled()
            self._fleet_size = (enrolled, time.monotonic())
        return cadence_for(self._settings, enrolled)

    def _silent(self, last_heartbeat: float, now: float) -> bool:
        seen = max(last_heartbeat, self._started_at)
        return now - seen >= self._settings.heartbeat_timeout_s

    @staticmethod
    def _cloud_of(tx: StoreTransaction, edge: EdgeRecord) -> CloudRecord:
        cloud = tx.get_cloud(edge.cloud_id)
        if cloud is None:  # only if the store was edited by hand
            raise UnknownCloud(edge.cloud_id)
        return cloud

    @staticmethod
    def _reassign_orphans(tx: StoreTransaction, *, limit: int) -> list[Reassignment]:
        """Move live edges of down clouds to the least-loaded live cloud, one at a time.

        The per-cloud live counts tell which down clouds still hold live edges, so this asks
        for nothing while there are no orphans."""
        loads = tx.cloud_loads()
        moves: list[Reassignment] = []
        for cloud in tx.list_clouds():
            if cloud.status is Status.UP or not loads.get(cloud.cloud_id):
                continue
            for candidate in tx.live_edges_of(cloud.cloud_id, limit=limit - len(moves)):
                # Again under its lock: another replica may have moved it, or it went down.
                edge = tx.get_edge(candidate.edge_id, lock=True)
                if edge is None or edge.status is not Status.UP or edge.cloud_id != cloud.cloud_id:
                    continue
                target = tx.least_loaded_cloud(lock=True)
                if target is None:
                    return moves
                tx.put_edge(replace(edge, cloud_id=target.cloud_id))
                moves.append(Reassignment(edge.edge_id, cloud.cloud_id, target.cloud_id))
            if len(moves) >= limit:
                break
        return moves

    # --- clouds -------------------------------------------------------------------------

    def register_cloud(self, url: str, master_version: int = 0) -> CloudRecord:
        """Register a cloud; a cloud registering again with the same URL keeps its id.

        A cloud that registers (again) holds no session yet: the edges it held before must
        be heard from within a timeout, from wherever they reconnect."""
        now = self._clock()

        def decide(tx: StoreTransaction) -> tuple[CloudRecord, bool, list[Reassignment]]:
            existing = tx.cloud_by_url(url, lock=True)
            if existing is None:
                cloud = CloudRecord(
                    cloud_id=_new_id("cloud"),
                    url=url,
                    status=Status.UP,
                    last_heartbeat=now,
                    registered_at=now,
                    master_version=master_version,
                )
            else:
                cloud = replace(
                    existing, status=Status.UP, last_heartbeat=now, master_version=master_version
                )
                tx.release_sessions(cloud.cloud_id, now + self._cadence(tx).timeout_s)
            tx.put_cloud(cloud)
            return cloud, existing is None, self._reassign_orphans(tx, limit=MOVE_BATCH)

        cloud, new, moves = self._store.atomic(decide)
        logger.info(
            "cloud %s registered%s at %s", cloud.cloud_id, "" if new else " again", cloud.url
        )
        _log_moves(moves)
        return cloud

    def cloud_heartbeat(
        self,
        cloud_id: str,
        master_version: int,
        connected_edges: Iterable[str] | None = None,
        *,
        opened: Collection[str] = (),
        closed: Collection[str] = (),
        list_assigned: bool = True,
    ) -> CloudBeat:
        """Record a cloud's heartbeat and the sessions it reports (PROTOCOL.md §9.4).

        ``connected_edges``: every edge the cloud has a session with (the whole set); or
        ``opened`` and ``closed``: the sessions that began and ended since its last
        acknowledged heartbeat. An edge in a session is live through its cloud; one whose
        session ended must heartbeat itself within a timeout. ``list_assigned``: return the
        ids of the edges assigned to this cloud (a list as long as its share of the fleet).
        """
        now = self._clock()
        full = None if connected_edges is None else set(connected_edges)

        def decide(tx: StoreTransaction) -> tuple[CloudBeat, bool, list[Reassignment]]:
            if tx.get_cloud(cloud_id) is None:
                raise UnknownCloud(cloud_id)
            to_open, to_close = set(opened), set(closed) - set(opened)
            if full is not None:
                held = set(tx.session_edge_ids(cloud_id))
                to_open |= full - held
                to_close |= held - full
            expires_at = now + self._cadence(tx).timeout_s
            # Edges before the cloud's own row: the order an edge's heartbeat locks them in.
            for edge_id in sorted(to_close):
                self._close_session(tx, edge_id, cloud_id, expires_at)
            for edge_id in sorted(to_open):
                self._open_session(tx, edge_id, cloud_id)
            cloud = tx.get_cloud(cloud_id, lock=True)
            if cloud is None:
                raise UnknownCloud(cloud_id)
            was_down = cloud.status is Status.DOWN
            cloud = replace(
                cloud, status=Status.UP, last_heartbeat=now, master_version=master_version
            )
            tx.put_cloud(cloud)
            moves = self._reassign_orphans(tx, limit=MOVE_BATCH) if was_down else []
            assigned = tx.assigned_edge_ids(cloud_id) if list_assigned else None
            revoked = tx.list_revocations()
            return CloudBeat(cloud, assigned, revoked, was_down and full is None), was_down, moves

        beat, was_down, moves = self._store.atomic(decide)
        if was_down:
            logger.info("cloud %s is up again", cloud_id)
        _log_moves(moves)
        return beat

    @staticmethod
    def _open_session(tx: StoreTransaction, edge_id: str, cloud_id: str) -> None:
        edge = tx.get_edge(edge_id, lock=True)
        if edge is None:  # removed, or never enrolled here: nothing to keep alive
            return
        if edge.session_cloud_id == cloud_id and edge.status is Status.UP:
            return
        tx.put_edge(replace(edge, status=Status.UP, session_cloud_id=cloud_id, expires_at=None))

    @staticmethod
    def _close_session(
        tx: StoreTransaction, edge_id: str, cloud_id: str, expires_at: float
    ) -> None:
        edge = tx.get_edge(edge_id, lock=True)
        # Only this cloud's session: the edge may have opened one with another cloud since.
        if edge is None or edge.session_cloud_id != cloud_id:
            return
        tx.put_edge(replace(edge, session_cloud_id=None, expires_at=expires_at))

    def list_clouds(self) -> list[tuple[CloudRecord, int]]:
        """Every cloud with the number of live edges assigned to it."""

        def look(tx: StoreTransaction) -> tuple[list[CloudRecord], dict[str, int]]:
            return tx.list_clouds(), tx.cloud_loads()

        clouds, loads = self._store.read(look)
        return [(c, loads.get(c.cloud_id, 0)) for c in clouds]

    def sessions(self) -> dict[str, list[str]]:
        """Cloud id → the edges it last reported sessions with."""
        return self._store.read(lambda tx: tx.sessions())

    # --- edges --------------------------------------------------------------------------

    def register_edge(
        self,
        *,
        name: str | None = None,
        shard_index: int | None = None,
        shard_count: int | None = None,
        enrollment_id: str | None = None,
    ) -> Assignment:
        """Register an edge with the least-loaded live cloud; its reconciliation offset is
        staggered by shard (index of count) if given, else by its ordinal (the lowest no
        edge holds). An ``enrollment_id`` seen before returns the edge it enrolled: a client
        retrying after a lost reply (or a replica that died) enrolls once."""
        if (shard_index is None) != (shard_count is None):
            raise ValueError("give shard_index and shard_count together")
        now = self._clock()

        def decide(tx: StoreTransaction) -> tuple[Assignment, bool]:
            if enrollment_id is not None:
                existing = tx.edge_by_enrollment(enrollment_id)
                if existing is not None:
                    again = self._cloud_of(tx, existing)
                    return Assignment(existing, again, self._cadence(tx)), False
            # The fleet row, then the cloud: every enrollment locks them in this order.
            ordinal = tx.free_ordinal(lock=True)
            cloud = tx.least_loaded_cloud(lock=True)
            if cloud is None:
                raise NoCloudAvailable("no cloud is up; retry once a cloud has registered")
            cadence = self._cadence(tx)
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
                expires_at=now + cadence.timeout_s,
                enrollment_id=enrollment_id,
            )
            edge = replace(
                edge, reconcile_offset=self._offset(edge, self._run_config.reconcile_every)
            )
            tx.put_edge(edge)
            return Assignment(edge, cloud, cadence), True

        assignment, new = self._store.atomic(decide)
        edge_id, cloud_id = assignment.edge.edge_id, assignment.cloud.cloud_id
        if new:
            logger.info("edge %s registered, assigned to cloud %s", edge_id, cloud_id)
        else:
            logger.info("edge %s enrolled again with the same enrollment id", edge_id)
        return assignment

    def edge_heartbeat(
        self,
        edge_id: str,
        edge_version: int,
        step: int,
        *,
        streaming: bool | None = None,
        finished: bool = False,
    ) -> Assignment:
        """Record an edge's heartbeat; moves it to a live cloud if its cloud is down.
        ``finished``: its last one, the steps done; the sweep never marks it down.

        ``streaming=False`` while its cloud still reports the edge's session: the edge lost
        a session its cloud did not report closed, perhaps because the cloud died without a
        word. Its next heartbeat is asked for right after the sweep that would find that
        out, not a fleet-sized interval later, so a reassignment reaches it as fast in a
        fleet of thousands as in a fleet of ten. (An edge that merely is not streaming holds
        no session and keeps the fleet's cadence.)"""
        now = self._clock()

        def decide(tx: StoreTransaction) -> tuple[Assignment, bool, Reassignment | None]:
            edge = tx.get_edge(edge_id, lock=True)
            if edge is None:
                raise UnknownEdge(edge_id)
            cadence = self._cadence(tx)
            came_back = edge.status is not Status.UP and not finished
            beat = replace(
                edge,
                status=Status.FINISHED if finished else Status.UP,
                last_heartbeat=now,
                edge_version=edge_version,
                step=step,
                # A session keeps it live; otherwise it must be heard from again in time.
                expires_at=None if finished or edge.session_cloud_id else now + cadence.timeout_s,
            )
            cloud = self._cloud_of(tx, beat)
            moved = None
            if cloud.status is not Status.UP:
                target = tx.least_loaded_cloud(lock=True)
                if target is not None:
                    moved = Reassignment(edge_id, cloud.cloud_id, target.cloud_id)
                    beat, cloud = replace(beat, cloud_id=target.cloud_id), target
            tx.put_edge(beat)
            if streaming is False and beat.session_cloud_id == cloud.cloud_id:
                # Its cloud still holds a session the edge says it lost: that cloud may have
                # died without a word.
                cadence = self._hurry(cadence, cloud, now)
            return Assignment(beat, cloud, cadence), came_back, moved

        assignment, came_back, moved = self._store.atomic(decide)
        if finished:
            logger.info("edge %s finished at step %d", edge_id, step)
        elif came_back:
            logger.info("edge %s is up again", edge_id)
        _log_moves(() if moved is None else (moved,))
        return assignment

    def _hurry(self, cadence: Cadence, cloud: CloudRecord, now: float) -> Cadence:
        """The cadence for an edge that lost its session with ``cloud`` (still up here)."""
        settings = self._settings
        found_out_in = max(0.0, cloud.last_heartbeat + settings.heartbeat_timeout_s - now)
        soon = max(settings.heartbeat_interval_s, found_out_in + settings.heartbeat_interval_s)
        return replace(cadence, interval_s=min(cadence.interval_s, soon))

    def get_edge(self, edge_id: str) -> Assignment:
        def look(tx: StoreTransaction) -> Assignment:
            edge = tx.get_edge(edge_id)
            if edge is None:
                raise UnknownEdge(edge_id)
            return Assignment(edge, self._cloud_of(tx, edge), self._cadence(tx))

        return self._store.read(look)

    def list_edges(self) -> list[EdgeRecord]:
        return self._store.read(lambda tx: tx.list_edges())

    def remove_edge(self, edge_id: str) -> None:
        """Forget an edge and revoke every token it was issued: clouds learn it with their
        next heartbeat (:meth:`revocations`), refuse those tokens and close its session."""
        now = self._clock()

        def decide(tx: StoreTransaction) -> None:
            if tx.delete_edge(edge_id) is None:
                raise UnknownEdge(edge_id)
            tx.put_revocation(edge_id, now)

        self._store.atomic(decide)
        logger.info("edge %s removed; its tokens are revoked", edge_id)

    def revocations(self) -> dict[str, float]:
        """Edge id → when its tokens were revoked (Unix seconds), for the clouds.

        A revocation is kept while a token it covers can still be valid: for one token
        lifetime (and a minute of clock skew) after it was made; :meth:`sweep` prunes older
        ones.
        """
        return self._store.read(lambda tx: tx.list_revocations())

    def counts(self) -> FleetCounts:
        """Live clouds, live edges and enrolled edges, from the kept counters (no scan)."""

        def look(tx: StoreTransaction) -> FleetCounts:
            clouds = tx.list_clouds()
            return FleetCounts(
                clouds_up=sum(c.status is Status.UP for c in clouds),
                edges_up=sum(tx.cloud_loads().values()),
                enrolled=tx.enrolled(),
            )

        return self._store.read(look)

    # --- health and versions ------------------------------------------------------------

    def sweep(self) -> SweepResult:
        """Mark silent clouds and edges down; move live edges off down clouds.

        With several replicas on one database, one sweeps at a time: the one holding the
        health lease, renewed by every sweep; another takes it over once it has not been
        renewed for three sweep intervals (its holder died). The work is batched, one
        transaction per :data:`SWEEP_BATCH` edges marked down and per :data:`MOVE_BATCH` edges
        moved, so no transaction holds many rows for long."""
        now = self._clock()
        ttl = 3 * self._settings.heartbeat_interval_s

        def lease(tx: StoreTransaction) -> bool:
            return tx.acquire_lease(HEALTH_LEASE, self.replica_id, now, ttl)

        if not self._store.atomic(lease):
            return SweepResult()
        clouds_down = self._sweep_clouds(now)
        edges_down = self._sweep_edges(now)
        moves: list[Reassignment] = []
        while True:
            batch = self._store.atomic(lambda tx: self._reassign_orphans(tx, limit=MOVE_BATCH))
            moves += batch
            if len(batch) < MOVE_BATCH:
                break
        _log_moves(moves)
        prune_before = now - self._settings.token_ttl_s - 60.0
        self._store.atomic(lambda tx: tx.prune_revocations(prune_before))
        return SweepResult(tuple(clouds_down), tuple(edges_down), tuple(moves))

    def _sweep_clouds(self, now: float) -> list[str]:
        def mark_down(tx: StoreTransaction, cloud_id: str) -> bool:
            cloud = tx.get_cloud(cloud_id, lock=True)  # again, under the lock
            if cloud is None or cloud.status is not Status.UP:
                return False
            if not self._silent(cloud.last_heartbeat, now):
                return False
            tx.put_cloud(replace(cloud, status=Status.DOWN))
            # Its sessions end with it: each edge it held must be heard from in time.
            tx.release_sessions(cloud_id, now + self._cadence(tx).timeout_s)
            return True

        silent = [
            cloud.cloud_id
            for cloud in self._store.read(lambda tx: tx.list_clouds())
            if cloud.status is Status.UP and self._silent(cloud.last_heartbeat, now)
        ]
        down = []
        for cloud_id in silent:

            def decide(tx: StoreTransaction, cloud_id: str = cloud_id) -> bool:
                return mark_down(tx, cloud_id)

            if self._store.atomic(decide):
                down.append(cloud_id)
        for cloud_id in down:
            logger.warning("cloud %s missed its heartbeats: down", cloud_id)
        return down

    def _sweep_edges(self, now: float) -> list[str]:
        if now - self._started_at < self._store.read(self._cadence).timeout_s:
            return []  # a full timeout since this coordinator started has not passed

        def mark_down(tx: StoreTransaction) -> tuple[list[str], int]:
            silent = tx.expired_edges(now, limit=SWEEP_BATCH)
            down = []
            for candidate in silent:
                edge = tx.get_edge(candidate.edge_id, lock=True)  # again, under the lock
                if edge is None or edge.status is not Status.UP or edge.expires_at is None:
                    continue
                if edge.expires_at > now:
                    continue
                tx.put_edge(replace(edge, status=Status.DOWN))
                down.append(edge.edge_id)
            return down, len(silent)

        down: list[str] = []
        while True:
            batch, seen = self._store.atomic(mark_down)
            down += batch
            if seen < SWEEP_BATCH:
                break
        for edge_id in down:
            logger.warning("edge %s missed its heartbeats: down", edge_id)
        return down

    def versions(self) -> VersionsReport:
        """Master version per cloud and each edge's replica version and lag behind it."""

        def look(tx: StoreTransaction) -> tuple[list[CloudRecord], list[EdgeRecord]]:
            return tx.list_clouds(), tx.list_edges()

        clouds, edges = self._store.read(look)
        masters = {c.cloud_id: c.master_version for c in clouds}
        lags = []
        for edge in edges:
            master = masters.get(edge.cloud_id)
            lag = None if master is None else master - edge.edge_version
            lags.append(EdgeLag(edge, master, lag))
        return VersionsReport(clouds, lags)
