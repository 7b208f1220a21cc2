"""The cloud's state and behaviour, apart from HTTP: master, sessions, compute thread, metrics.

Every master operation runs on one compute thread (``ThreadPoolExecutor(max_workers=1)``):
updates stay strictly ordered without a lock, and the event loop stays free, so one slow
step never stalls another session's I/O (docs/DESIGN.md §2).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeGuard, TypeVar

import torch
from starlette.websockets import WebSocket, WebSocketState

from simultrain.shared import auth
from simultrain.shared.contracts import (
    CloudStatus,
    EdgeSessionStatus,
    Evaluation,
    MixingStatus,
    ReplicaTensor,
    SessionArchitecture,
    SessionLimits,
    SessionSpec,
    StalenessSummary,
)
from simultrain.shared.data import load_dataset
from simultrain.shared.errors import (
    EncodeError,
    HandshakeRejected,
    InternalError,
    InvalidTensor,
    ModelMismatch,
    ProtocolError,
    RateLimited,
    TrainingError,
    Unauthorized,
)
from simultrain.shared.models import model_architecture
from simultrain.shared.protocol import (
    CAPABILITIES,
    CREDITS,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Ack,
    Act,
    CloudSession,
    EGrad,
    Frame,
    Hello,
    Limits,
    Snap,
    Welcome,
    grant_capabilities,
    subprotocol_name,
)
from simultrain.shared.training.assembly import build_cloud, resolve_device
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.gradcoding import GradientCode
from simultrain.shared.training.master import StalenessStats
from simultrain.shared.training.runtime import CloudRuntime, CloudSessionState, Outgoing

from .checkpoint import latest_checkpoint, restore, save_checkpoint
from .flow import CloudFlow, Pacer, with_replica_refresh
from .metrics import AppliedRate, CloudMetrics
from .mixing import (
    PARTNER_SEND_FAILURES,
    Addressed,
    close_stale_session,
    mixer_of,
    partner_is_leaving,
    take_refused,
)
from .replicas import Rendezvous, ReplicaGroup
from .settings import CloudSettings

__all__ = ["CloudService", "Connection"]

log = logging.getLogger("simultrain.cloud")
T = TypeVar("T")


@dataclass(eq=False)
class Connection:
    """One edge's WebSocket and its sans-I/O session; sends are serialized by a lock."""

    websocket: WebSocket
    session: CloudSession
    edge_id: str | None = None
    state: CloudSessionState | None = None  # bytes are counted there, across reconnects
    opened_at: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Held from a step's compute to its last frame sent, and by a held ACK's release: the
    # DELTAs computed for this edge go out in the order the compute thread made them
    # (PROTOCOL.md §3.1).
    stepping: asyncio.Lock = field(default_factory=asyncio.Lock)
    bytes_in: int = 0
    bytes_out: int = 0
    token: auth.TokenClaims | None = None  # the handshake's verified token, if any
    bucket: TokenBucket | None = None

    async def send(self, frame: Frame) -> None:
        async with self.lock:
            if self.websocket.application_state is not WebSocketState.CONNECTED:
                return
            try:
                data = self.session.send(frame)
            except EncodeError as exc:
                # Something we computed cannot go on the wire (e.g. not finite): our fault,
                # not the peer's — close with 1011 rather than crash the handler.
                raise InternalError(f"cannot send {frame.type}: {exc}") from exc
            self.bytes_out += len(data)
            if self.state is not None:
                self.state.bytes_out += len(data)
            await self.websocket.send_bytes(data)

    async def fail(self, exc: ProtocolError) -> None:
        """Tell the peer why with an ERROR frame, then close with the matching code."""
        log.warning("closing session of %s: %s (%s)", self.edge_id or "?", exc.reason, exc.code)
        async with self.lock:
            if self.websocket.application_state is not WebSocketState.CONNECTED:
                return
            # A session already closing refuses to send more: the close code says it all.
            with contextlib.suppress(ProtocolError):
                await self.websocket.send_bytes(self.session.refuse(exc))
            await self.websocket.close(code=exc.close_code, reason=exc.reason)


class TokenBucket:
    """Per-session message rate limit (PROTOCOL.md §5): ``rate`` per second, burst ``2·rate``.

    One token per ACT or EGRAD message (a piggybacked EGRAD rides on its ACT's); HELLO and
    BYE are not counted. The bucket starts full.
    """

    def __init__(self, rate_per_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate_per_s
        self.capacity = 2.0 * rate_per_s
        self.tokens = self.capacity
        self.clock = clock
        self.updated = clock()

    def take(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1.0:
            raise RateLimited(f"more than {self.rate:g} messages per second")
        self.tokens -= 1.0


class CloudService:
    def __init__(self, settings: CloudSettings, run: RunConfig) -> None:
        self.settings = settings
        self.run = run
        torch.set_num_threads(settings.compute_threads)
        dataset = load_dataset(settings.eval_dataset or run.dataset, seed=run.seed)
        self.spec = dataset.model_spec(run.model_id)
        self.architecture = model_architecture(self.spec)
        self.fingerprint = self.architecture.fingerprint
        self.device = resolve_device(settings.device)
        # The run's one assembly (shared/training/assembly.py): the window of the limits is
        # the run's, the sizes this cloud's settings.
        cloud = build_cloud(
            run,
            self.spec,
            device=self.device,
            limits=Limits(
                max_frame_bytes=settings.max_frame_bytes,
                max_decompressed_bytes=settings.max_decompressed_bytes,
            ),
        )
        self.schedule = cloud.schedule
        self.master = cloud.master
        self.runtime = cloud.runtime
        self.cut_shape = cloud.cut_shape
        self.limits = cloud.limits
        # In-flight credits (PROTOCOL.md §6.7): a credits session's WELCOME window is the
        # flow's bound, which the sessions' limits must allow.
        self.flow = CloudFlow(run, cloud.schedule)
        self.pacer: Pacer[Connection] = Pacer(
            cloud.pace_lead, room_for=self.flow.room_for if self.flow.enabled else None
        )
        if self.flow.enabled:
            window = max(self.flow.window, self.schedule.window)
            self.limits = dataclasses.replace(self.limits, window=window)
        self._round_timer: asyncio.TimerHandle | None = None  # the open round's deadline
        self._pace_timer: asyncio.TimerHandle | None = None  # held ACKs looked at again
        self._timer_tasks: set[asyncio.Task[None]] = set()  # what the timers started
        self.x_test = torch.tensor(dataset.x_test)
        self.y_test = torch.tensor(dataset.y_test).long()
        self.connections: dict[str, Connection] = {}
        # The connection whose session the runtime holds for each edge, as the compute thread
        # sees it: frames a step makes for other edges go there (services/cloud/mixing.py).
        self._session_of: dict[str, Connection] = {}
        self.metrics = CloudMetrics()
        self.applied_rate = AppliedRate()
        self.cloud_id: str | None = None
        self.ready = False
        self.started_at = time.monotonic()
        self.busy_seconds = 0.0  # time the compute thread spent on master operations
        # The same operations' CPU time (the compute thread's own): unlike busy_seconds it
        # does not grow while other processes hold the cores (the fleet benchmark's split).
        self.compute_cpu_seconds = 0.0
        # The address the server bound (port 0 → a free port), set once it listens; made on
        # the event loop by the app's lifespan (this constructor runs on a worker thread).
        self.bound_url: asyncio.Future[str]
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cloud-compute")
        self.token_keys = settings.token_keys()
        self.revoked: dict[str, float] = {}  # edge id → revoked at (from the coordinator)
        rendezvous = Rendezvous.from_env()
        self.checkpoint_dir = settings.checkpoint_dir
        if rendezvous is not None and self.checkpoint_dir is not None:
            # A replica's batches are durable once a sync round carried them to the others; a
            # checkpoint would declare them durable earlier, and a replica restored from one
            # would disagree with the group it rejoins (docs/REPLICAS.md).
            log.warning("checkpoints are off in a replica group: the other replicas hold them")
            self.checkpoint_dir = None
        self.last_checkpoint_version = -1
        if self.checkpoint_dir is not None:
            self.runtime.checkpointing = True
            found = latest_checkpoint(self.checkpoint_dir)
            if found is not None:
                restore(found, self.master, self.runtime)
                self.last_checkpoint_version = self.master.version
        self.replicas = self._replica_group(rendezvous)

    def _replica_group(self, rendezvous: Rendezvous | None) -> ReplicaGroup | None:
        """With a rendezvous, this cloud is one replica of several (docs/REPLICAS.md)."""
        if rendezvous is None:
            return None
        self.runtime.checkpointing = True  # ACKs carry the synchronised watermark
        settings = self.settings
        return ReplicaGroup(
            rendezvous,
            self.master,
            self.runtime.sessions,
            self._on_compute_blocking,
            sync_every=settings.replica_sync_every,
            sync_interval_s=settings.replica_sync_interval_s,
            timeout_s=settings.replica_timeout_s,
            join_window_s=settings.replica_join_window_s,
            backend=settings.replica_backend,
            merge=settings.replica_merge,
        )

    def _on_compute_blocking(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the compute thread from another thread (the replica group's)."""
        return self._executor.submit(self._timed, fn, ()).result()

    async def compute(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the compute thread; its time counts as busy time."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._timed, fn, args)

    def _timed(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        started = time.perf_counter()
        cpu_started = time.thread_time()
        try:
            return fn(*args)
        finally:
            self.busy_seconds += time.perf_counter() - started
            self.compute_cpu_seconds += time.thread_time() - cpu_started

    def shutdown(self) -> None:
        if self.replicas is not None:
            self.replicas.stop()
        self._executor.shutdown(wait=True, cancel_futures=False)

    # --- sessions -----------------------------------------------------------------------

    @property
    def auth_enabled(self) -> bool:
        return bool(self.token_keys)

    def authenticate(self, token: str | None) -> auth.TokenClaims:
        """What a valid token says; raises :class:`Unauthorized` (close 1008) otherwise —
        also for a token the coordinator revoked (its edge was removed)."""
        claims = auth.verify_token(token, self.token_keys)
        if self._revoked(claims):
            raise Unauthorized(f"the token of edge {claims.edge_id} was revoked")
        return claims

    def _revoked(self, claims: auth.TokenClaims) -> bool:
        revoked_at = self.revoked.get(claims.edge_id)
        return revoked_at is not None and claims.issued_at <= revoked_at

    async def revoke(self, revoked: Mapping[str, float]) -> list[str]:
        """The coordinator's revocations (edge id → when it was removed, Unix seconds): tokens
        issued at or before that instant are refused from now on, and the sessions opened
        with one are closed with 1008. Returns the edge ids whose sessions were closed."""
        self.revoked = dict(revoked)
        closed = []
        for edge_id, conn in list(self.connections.items()):
            if conn.token is not None and self._revoked(conn.token):
                log.warning("closing the session of %s: its token was revoked", edge_id)
                await conn.websocket.close(code=1008, reason="token revoked")
                closed.append(edge_id)
        return closed

    async def open(self, conn: Connection, hello: Hello) -> None:
        """HELLO → WELCOME and the first SNAP (an exact copy of the master)."""
        if self.auth_enabled:
            # The session belongs to the edge the token names, and to no other: an edge
            # cannot open or resume another edge's session (SECURITY.md).
            if conn.token is None:
                conn.token = self.authenticate(hello.token)
            token_edge = conn.token.edge_id
            if token_edge != hello.edge_id:
                log.warning("refused: a token for %s asked for edge %s", token_edge, hello.edge_id)
                raise Unauthorized("the token does not name this edge")
        if hello.model_id != self.spec.model_id:
            raise HandshakeRejected(
                f"this cloud trains {self.spec.model_id}, the edge asked for {hello.model_id}"
            )
        if hello.model_fingerprint is not None and hello.model_fingerprint != self.fingerprint:
            raise ModelMismatch(
                f"model {self.spec.model_id}: the edge built another architecture "
                f"(fingerprint {hello.model_fingerprint[:12]}…, this cloud's "
                f"{self.fingerprint[:12]}…)"
            )
        if tuple(hello.cut_shape) != self.cut_shape:
            raise HandshakeRejected(
                f"cut shape {list(hello.cut_shape)} does not match {list(self.cut_shape)}"
            )
        _check_hello_config(hello.config, self.schedule.mode)
        code_row = _code_row(hello.config, self.runtime.code)
        edge_id = hello.edge_id
        previous = self.connections.get(edge_id)
        if previous is not None and previous is not conn:
            # A reconnect whose old TCP connection is not yet known dead: the newest wins.
            await previous.websocket.close(code=1008, reason="superseded by a newer session")
        conn.edge_id = edge_id
        self.connections[edge_id] = conn
        self._size_history_for_fleet()
        offset = _reconcile_offset(hello.config.get("reconcile_offset"))

        def open_session() -> tuple[CloudSessionState, Snap, int, Addressed[Connection]]:
            if self.replicas is not None:
                self.replicas.adopt(edge_id, offset)  # it may come from another replica
            # Mixed steps: what the edge's previous session left waiting goes first.
            stale = self._address(close_stale_session(self.runtime, edge_id))
            try:
                state, snap = self.runtime.open_session(
                    edge_id, reconcile_offset=offset, code_row=code_row
                )
            except TrainingError as exc:
                raise HandshakeRejected(str(exc)) from exc
            self._session_of[edge_id] = conn
            # Read here, with the SNAP: WELCOME's acked_seq and the replica describe one
            # instant of the master, whatever the compute thread does next.
            return state, snap, state.highest_applied_seq, stale

        state, snap, highest_applied, stale = await self.compute(open_session)
        await self._deliver_addressed(stale)
        conn.state = state
        state.bytes_in += conn.bytes_in  # the HELLO
        acked = highest_applied if highest_applied >= 0 else None
        self.pacer.open(edge_id, acked)
        # The offered capabilities this cloud speaks; unknown names are ignored (PROTOCOL.md
        # §10.2). With `credits` the edge's first grant, and the flow's bound as its window.
        capabilities = grant_capabilities(
            hello.capabilities, answers=self.flow.answers(edge_id, hello.capabilities)
        )
        welcome = Welcome(
            session_id=uuid.uuid4().hex,
            master_version=snap.master_version,
            cut_shape=self.cut_shape,
            window=self.flow.window if CREDITS in capabilities else self.schedule.window,
            acked_seq=acked,
            config={k: v for k, v in self.run.to_mapping().items() if _scalar(v)},
            capabilities=capabilities,
        )
        await conn.send(welcome)
        await conn.send(snap)
        self.metrics.sessions.set(len(self.connections))
        log.info(
            "session opened: %s (acked_seq=%s, master v%d)", edge_id, acked, snap.master_version
        )

    async def handle(self, conn: Connection, frame: Frame) -> None:
        """ACT or EGRAD: the step on the compute thread, then the replies to their edges."""
        assert conn.edge_id is not None
        if conn.bucket is not None:
            conn.bucket.take()
        started = time.perf_counter()
        edge_id = conn.edge_id
        log.debug("%s %s %s seq=%s", edge_id, id(conn), frame.type, getattr(frame, "seq", None))
        if isinstance(frame, Act) and self.connections.get(edge_id) is conn:
            self.flow.on_act(edge_id, frame.seq)
            self.pacer.on_act(edge_id)
        credit_edges = self.flow.edges

        def step() -> Addressed[Connection] | None:
            # Checked where updates are ordered (the compute thread): once a newer session
            # of this edge is registered, frames still queued from the old one change
            # nothing. Its WELCOME's acked_seq was read on this thread too, so every batch is
            # either in that acked_seq or sent again on the new session and answered there —
            # never applied behind its back, where the re-sent copy would be dropped as a
            # duplicate with no ACK and the edge would wait for it forever (PROTOCOL.md §6.5).
            if self.connections.get(edge_id) is not conn:
                return None
            if isinstance(frame, Act):
                return self._address(
                    with_replica_refresh(
                        self.runtime, self.runtime.on_act(edge_id, frame), credit_edges
                    )
                )
            if isinstance(frame, EGrad):
                return self._address(
                    with_replica_refresh(
                        self.runtime, self.runtime.on_egrad(edge_id, frame), credit_edges
                    )
                )
            raise InternalError(f"the service steps on ACT and EGRAD, not {frame.type}")

        async with conn.stepping:
            try:
                addressed = await self.compute(step)
            except TrainingError as exc:
                # Passed the decoder yet unusable (e.g. gradient names that do not match the
                # model): the master checks before it changes anything, so refusing is enough.
                raise InvalidTensor(str(exc)) from exc
            if addressed is None:
                log.info("%s: %s of a superseded session not applied", edge_id, frame.type)
                return
            self.metrics.observe_step(frame.type, time.perf_counter() - started, self.master)
            self.applied_rate.note(self.master.samples_applied)
            if self.replicas is not None:
                self.replicas.updated()
            await self._deliver_addressed(addressed, origin=conn)
        await self._send_due_acks()
        self._arm_round_deadline()
        if self._checkpoint_due():
            await self.checkpoint()

    def _pace_timer_due(self) -> None:
        self._pace_timer = None
        self._from_timer(self._send_due_acks())

    def _from_timer(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task a timer started, held until it ends."""
        task = asyncio.ensure_future(work)
        self._timer_tasks.add(task)
        task.add_done_callback(self._timer_tasks.discard)

    def _size_history_for_fleet(self) -> None:
        """Keep enough edge-stage history for the fleet actually connected.

        With E edges each keeping max(W, 1) batches in flight, a gradient returns up to
        about 2·E·max(W, 1) master versions late, more behind a slow edge (docs/DESIGN.md
        §6.2); one older than the history is dropped and counted (§3.4). The assembly sizes
        the history by the run's ``edges`` (``history_versions``: 16·max(W, 1)·E, at least
        512), which a cloud without a coordinator does not know: 64 edges at window 4 lost
        half their edge-stage gradients that way (bench/results/fleet.md). So the cloud
        raises it, never lowers it, to 16·(W + 1) versions per connected edge (§6.3).
        """
        needed = 8 * 2 * (self.schedule.window + 1) * len(self.connections)
        self.master.history_versions = max(self.master.history_versions, needed)

    def _arm_round_deadline(self) -> None:
        """With ``round_deadline_s``, close the open lockstep round when its deadline passes."""
        due = self.runtime.round_due_in()
        if due is None or self._round_timer is not None:
            return
        self._round_timer = asyncio.get_running_loop().call_later(
            max(due, 0.0), self._round_deadline_passed
        )

    def _round_deadline_passed(self) -> None:
        self._round_timer = None
        self._from_timer(self._close_due_round())

    async def _close_due_round(self) -> None:
        # A lockstep round's deadline, or the wait bound of a mixed step (docs/FLEET.md).
        addressed = await self.compute(lambda: self._address(self.runtime.close_round_if_due()))
        self.applied_rate.note(self.master.samples_applied)
        await self._deliver_addressed(addressed)
        await self._send_due_acks()
        self._arm_round_deadline()  # the round that closed may not be the one now open

    def _checkpoint_due(self) -> bool:
        """Every ``checkpoint_every`` updates, preferably at a batch boundary.

        Between a batch's cloud-stage update and its edge-stage update, a resumed cloud
        would compute that batch's cut gradient again at weights that already include its
        cloud-stage update: still applied once, but no longer the computation a run without
        the crash did. At a boundary (no batch half-applied) a lockstep run resumes
        bit for bit; a pipelined one always has batches in flight, so after four periods
        the checkpoint is taken anyway.
        """
        if self.checkpoint_dir is None:
            return False
        behind = self.master.version - self.last_checkpoint_version
        every = self.settings.checkpoint_every
        settled = all(
            s.highest_cloud_step_seq <= s.highest_applied_seq
            for s in self.runtime.sessions.values()
        )
        return behind >= every and (settled or behind >= 4 * every)

    async def checkpoint(self) -> None:
        """Write a checkpoint on the compute thread (between updates: consistent). A replica
        writes none: it waits for the next sync round, which makes its batches durable."""
        if self.replicas is not None:
            await asyncio.to_thread(
                self.replicas.wait_round, 4 * self.settings.replica_sync_interval_s + 5.0
            )
            return
        if self.checkpoint_dir is None or self.master.version == self.last_checkpoint_version:
            return
        directory = self.checkpoint_dir
        path = await self.compute(save_checkpoint, directory, self.master, self.runtime)
        self.last_checkpoint_version = self.master.version
        log.info("checkpoint %s", path.name)

    async def deliver(
        self,
        outgoing: list[Outgoing],
        *,
        origin: Connection | None = None,
        to: list[Connection | None] | None = None,
    ) -> None:
        """Send each frame to its edge. Frames for ``origin``'s edge (the session whose frame
        produced them) go on that session only: a newer session of the same edge started
        from its own SNAP and must not receive the old one's GRAD, DELTA or ACK. Frames for
        other edges go to ``to`` (the connections the compute thread addressed them to,
        `_address`), else to each edge's connection now; a send that fails there closes that
        connection, never ``origin``'s session (services/cloud/mixing.py)."""
        self.metrics.observe_outgoing(outgoing)
        for index, (edge_id, frame) in enumerate(outgoing):
            if origin is not None and edge_id == origin.edge_id:
                conn: Connection | None = origin
            else:
                conn = to[index] if to is not None else self.connections.get(edge_id)
            if conn is None:
                continue
            if isinstance(frame, Ack):
                self.flow.on_applied(edge_id, frame.seq)
                if self.pacer.hold(edge_id, conn, frame):
                    continue  # ahead of the fleet, or no credit for it: it waits (flow.py)
                frame = self.flow.on_ack(edge_id, frame)  # the grant it carries (§6.7)
            if conn is origin:
                await conn.send(frame)
                continue
            try:
                await conn.send(frame)
            except PARTNER_SEND_FAILURES as exc:
                await self._partner_send_failed(conn, frame, exc)

    async def _send_due_acks(self) -> None:
        """The held ACKs that may go now (`Pacer`: the slowest edge caught up, a credit freed
        up), each with the grant in force when it goes, behind the DELTA that brings its
        edge's replica to the master: the edge computes its next batch at the master of
        now, not at the one of when it was held. While some wait, they are looked at again
        every ``idle_s``: an edge that stopped sending stops setting the pace then."""
        if self.pacer.holding and self._pace_timer is None:
            self._pace_timer = asyncio.get_running_loop().call_later(
                self.pacer.idle_s, self._pace_timer_due
            )
        for edge_id, conn, acks in self.pacer.due():
            if self.connections.get(edge_id) is not conn:
                continue  # a session gone meanwhile: the next one's WELCOME says what was applied
            # Granted now, before the next edge is asked about: each grant takes a credit.
            self._from_timer(self._release(conn, self._granted(edge_id, acks)))

    def _granted(self, edge_id: str, acks: list[Ack]) -> list[Frame]:
        return [self.flow.on_ack(edge_id, ack) for ack in acks]

    async def _release(self, conn: Connection, acks: list[Frame]) -> None:
        """Send ``acks``, held ACKs of ``conn``'s edge, behind the DELTA that refreshes its
        replica, and then the ACKs its steps made meanwhile (`Pacer.sent`), in order."""
        edge_id = conn.edge_id
        assert edge_id is not None

        def refresh() -> list[Frame]:
            if self._session_of.get(edge_id) is not conn or len(self.runtime.sessions) < 2:
                return []
            return [frame for _, frame in self.runtime.grant(edge_id)]

        async with conn.stepping:  # behind the DELTAs of the edge's steps (Connection)
            frames = [*await self.compute(refresh), *acks]
            while frames:
                for frame in frames:
                    try:
                        await conn.send(frame)
                    except PARTNER_SEND_FAILURES as exc:
                        await self._partner_send_failed(conn, frame, exc)
                        return
                if self.connections.get(edge_id) is not conn:
                    return  # its next session's WELCOME says what was applied
                frames = self._granted(edge_id, self.pacer.sent(edge_id, conn))

    async def _partner_send_failed(self, conn: Connection, frame: Frame, exc: Exception) -> None:
        """A frame for another edge than the one whose frame made it could not go: that
        edge's connection ends, not the sender's session (services/cloud/mixing.py)."""
        if partner_is_leaving(conn.session):
            # It said BYE or its connection closed: its own handler ends the session.
            log.info("%s is leaving: %s not sent", conn.edge_id, frame.type)
            return
        log.warning("cannot send %s to %s (%r): closing it", frame.type, conn.edge_id, exc)
        with contextlib.suppress(*PARTNER_SEND_FAILURES):
            if isinstance(exc, ProtocolError):  # e.g. a frame too large for its session
                await conn.fail(exc)
            else:
                await conn.websocket.close(code=1011, reason="send failed")
        await self.close(conn)

    def _address(self, outgoing: list[Outgoing]) -> Addressed[Connection]:
        """On the compute thread: each frame with the connection whose session it answers,
        and the ACTs a mixed step refused."""
        return Addressed(
            outgoing,
            [self._session_of.get(edge_id) for edge_id, _ in outgoing],
            take_refused(self.runtime),
        )

    async def _deliver_addressed(
        self, addressed: Addressed[Connection], *, origin: Connection | None = None
    ) -> None:
        """`deliver` a step's frames, then close the sessions of the edges whose ACT a mixed
        step refused (``origin``'s: raised, as for any refused frame)."""
        await self.deliver(addressed.outgoing, origin=origin, to=addressed.connections)
        own: InvalidTensor | None = None
        for edge_id, seq, reason in addressed.refused:
            refusal = InvalidTensor(f"batch {seq}: {reason}")
            conn = self.connections.get(edge_id)
            if origin is not None and conn is origin:
                own = refusal
            elif conn is not None:
                self.metrics.rejected.labels(refusal.code.value).inc()
                await conn.fail(refusal)
                await self.close(conn)
        if own is not None:
            raise own

    async def close(self, conn: Connection) -> None:
        if conn.edge_id is None or self.connections.get(conn.edge_id) is not conn:
            return
        edge_id = conn.edge_id
        del self.connections[edge_id]
        self.flow.close(edge_id)
        self.pacer.close(edge_id)
        self.metrics.sessions.set(len(self.connections))

        def close_session() -> Addressed[Connection]:
            if self._session_of.get(edge_id) is conn:
                del self._session_of[edge_id]
            return self._address(self.runtime.close_session(edge_id))

        addressed = await self.compute(close_session)
        await self._deliver_addressed(addressed)
        await self._send_due_acks()  # its credits are free: held ACKs may go
        self._arm_round_deadline()  # what waited for the edge may wait for its bound now
        log.info("session closed: %s", edge_id)

    # --- reads --------------------------------------------------------------------------

    def status(self) -> CloudStatus:
        master = self.master
        return CloudStatus(
            cloud_id=self.cloud_id,
            mode=self.schedule.mode,
            model_id=self.spec.model_id,
            device=str(self.device),
            master_version=master.version,
            edge_updates=master.edge_updates,
            samples_applied=master.samples_applied,
            loss=master.loss_ema,
            busy_seconds=round(self.busy_seconds, 4),
            compute_cpu_seconds=round(self.compute_cpu_seconds, 4),
            partial_rounds=self.runtime.partial_rounds,
            coded_rounds=self.runtime.coded_rounds,
            late_uploads_dropped=self.runtime.late_uploads_dropped,
            uptime_seconds=round(time.monotonic() - self.started_at, 4),
            staleness=_staleness(master.staleness),
            replica=None if self.replicas is None else self.replicas.status(),
            edges={
                edge_id: _session_status(state, connected=edge_id in self.connections)
                for edge_id, state in sorted(self.runtime.sessions.items())
            },
            mixing=_mixing_status(self.runtime),
            credits=self.flow.status(),
            pacing=self.pacer.status(),
            samples_per_s=self.applied_rate.per_s,
        )

    def session_spec(self) -> SessionSpec:
        """What an edge must send and will receive (PROTOCOL.md §3.2): ``GET /v1/session-spec``.

        The cut shape HELLO must name, the window WELCOME grants, the limits this cloud
        enforces, and the edge-stage tensors a replica holds (SNAP and DELTA carry exactly
        these, an EGRAD a gradient for each) with their shapes and dtypes, in the order the
        checksum of PROTOCOL.md §3.1 runs over them.
        """
        weights = self.runtime.replica_template()
        limits = self.limits
        return SessionSpec(
            protocol_version=PROTOCOL_VERSION,
            protocol_versions=list(SUPPORTED_VERSIONS),
            subprotocols=[subprotocol_name(v) for v in reversed(SUPPORTED_VERSIONS)],
            capabilities=sorted(CAPABILITIES),
            path="/v1/stream",
            mode=self.schedule.mode,
            model_id=self.spec.model_id,
            model_fingerprint=self.fingerprint,
            architecture=SessionArchitecture.model_validate(self.architecture.to_json()),
            input_shape=list(self.spec.input_shape),
            num_classes=self.spec.num_classes,
            cut_shape=list(self.cut_shape),
            window=self.schedule.window,
            egrad_needs_grad=self.schedule.egrad_needs_grad,
            limits=SessionLimits(
                max_frame_bytes=limits.max_frame_bytes,
                max_decompressed_bytes=limits.max_decompressed_bytes,
                max_tensor_elements=limits.max_tensor_elements,
                max_tensor_rank=limits.max_tensor_rank,
                max_weight_tensors=limits.max_weight_tensors,
                max_messages_per_s=self.settings.max_messages_per_s,
                max_message_burst=TokenBucket(self.settings.max_messages_per_s).capacity,
            ),
            replica=[
                ReplicaTensor(
                    name=name, shape=list(t.shape), dtype=str(t.dtype).removeprefix("torch.")
                )
                for name, t in sorted(weights.items(), key=lambda item: item[0].encode())
            ],
            config={k: v for k, v in self.run.to_mapping().items() if _scalar(v)},
        )

    async def evaluate(self) -> Evaluation:
        accuracy, loss = await self.compute(self.master.evaluate, self.x_test, self.y_test)
        return Evaluation(
            accuracy=accuracy,
            loss=loss,
            samples=int(self.y_test.shape[0]),
            master_version=self.master.version,
            samples_applied=self.master.samples_applied,
        )

    async def model_state(self) -> dict[str, torch.Tensor]:
        return await self.compute(
            lambda: {
                n: t.detach().to("cpu", copy=True).contiguous()
                for n, t in self.master.full_state().items()
            }
        )


def _scalar(value: object) -> TypeGuard[str | int | float | bool | None]:
    return value is None or isinstance(value, bool | int | float | str)


def _staleness(stats: StalenessStats) -> StalenessSummary:
    return StalenessSummary(
        batches=stats.total,
        max=stats.max,
        mean=round(stats.mean, 3),
        dropped=stats.dropped,
        histogram={str(k): v for k, v in sorted(stats.counts.items())},
        samples_sum=stats.samples_sum,
        samples_max=stats.samples_max,
        samples_mean=float(stats.in_samples()["mean"]),
    )


def _mixing_status(runtime: CloudRuntime) -> MixingStatus | None:
    """``GET /v1/status``'s ``mixing``: None when the run does not mix edges."""
    mixer = mixer_of(runtime)
    if mixer is None:
        return None
    return MixingStatus(
        mix_edges=mixer.mixing.edges,
        steps=mixer.steps,
        mean_members=round(mixer.members / mixer.steps, 3) if mixer.steps else 0.0,
        early_steps=mixer.early_steps,
    )


def _session_status(state: CloudSessionState, *, connected: bool) -> EdgeSessionStatus:
    """One edge's figures for ``/v1/status``: the session state counts bytes as the cloud
    sees them (in = up from the edge, out = down to it)."""
    return EdgeSessionStatus(
        samples_received=state.samples_received,
        samples_applied=state.samples_applied,
        steps_applied=state.steps_applied,
        highest_applied_seq=state.highest_applied_seq,
        duplicates_dropped=state.duplicates,
        last_edge_version=state.last_edge_version,
        replica_version=state.mirror_version,
        bytes_up=state.bytes_in,
        bytes_down=state.bytes_out,
        staleness=_staleness(state.staleness),
        code_row=state.code_row,
        late_uploads_dropped=state.late_dropped,
        connected=connected,
    )


def _check_hello_config(config: Mapping[str, object], mode: str) -> None:
    """HELLO's ``config`` (PROTOCOL.md §3, "HELLO's config keys"): ``mode``, when given, must
    be the mode this cloud trains; unknown keys are ignored (a newer edge may send more)."""
    asked = config.get("mode")
    if asked is not None and asked != mode:
        raise HandshakeRejected(f"this cloud trains mode {mode}, the edge asked for {asked}")
    window = config.get("window")
    if window is not None and (
        isinstance(window, bool) or not isinstance(window, int) or window < 0
    ):
        raise HandshakeRejected("config.window must be a non-negative integer")


def _code_row(config: Mapping[str, object], code: GradientCode | None) -> int | None:
    """HELLO's ``config.code_row`` and ``config.gradient_code`` (PROTOCOL.md §3): a coded
    edge names its row and the code it encodes with, which must be this cloud's — a coded
    gradient decoded with another ``B`` would be a wrong gradient, silently."""
    row, identity = config.get("code_row"), config.get("gradient_code")
    if row is None and identity is None:
        return None
    if isinstance(row, bool) or not isinstance(row, int):
        raise HandshakeRejected("config.code_row must be an integer")
    if code is None or identity != code.identity:
        mine = code.identity if code is not None else "no gradient code"
        raise HandshakeRejected(f"the edge codes with {identity!r}, this cloud runs {mine!r}")
    return row


def _reconcile_offset(value: object) -> int:
    """HELLO's ``config.reconcile_offset``: a small non-negative int, or absent."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 31:
        raise HandshakeRejected("config.reconcile_offset must be a non-negative integer")
    return value
