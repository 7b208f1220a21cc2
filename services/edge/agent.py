"""The edge agent: registers, then streams its data to the assigned cloud (docs/DESIGN.md §2).

Three tasks, all on one event loop:

- the **sessions**: one session with the cloud at a time (:mod:`.streaming`: the handshake,
  then a producer and a receiver), each over a connection the agent's transport opens
  (:mod:`.transport`: ``websockets`` on a real link, an ASGI application in-process);
- the **heartbeat** to the coordinator, independent of compute, so a long step never looks
  like a dead edge;
- the **watchdog** pings to systemd.

A lost connection is retried with exponential backoff and full jitter. Batches stay with the
edge until the cloud acknowledges applying them and are re-sent on the next session, so no
sample is lost (WELCOME's ``acked_seq`` says what the cloud already has). With a state
directory (:mod:`.state`) they, the edge's identity and its data position also survive the
process: a restarted agent is the same edge and continues where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import torch

from simultrain.shared.data import load_dataset, release_caches
from simultrain.shared.errors import ConfigError, SimulTrainError, Unauthorized
from simultrain.shared.protocol import Act, EGrad, offered_subprotocols
from simultrain.shared.training.assembly import Shard, build_edge
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.gradcoding import GradientCode
from simultrain.shared.training.runtime import EdgeRuntime

from .coordinator_client import Assignment, CoordinatorClient, EdgeRemoved, ForeignRun
from .notify import SystemdNotifier
from .settings import EdgeSettings
from .state import (
    Cursor,
    EdgeIdentity,
    EdgeState,
    ForeignEdgeState,
    KeptBatch,
    open_edge_state,
)
from .streaming import SessionEnded, StreamingSession, raise_if_final, worth_reconnecting
from .transport import LinkError, StreamTransport, UpgradeRefused, WebSocketsTransport

__all__ = ["EdgeAgent", "EdgeObserver", "EdgeReport"]

log = logging.getLogger("simultrain.edge")
T = TypeVar("T")

ENDED_REASONS_KEPT = 20


@dataclass
class EdgeReport:
    """What the edge did; printed as its last stdout line (``DONE {json}``)."""

    edge_id: str = ""
    steps: int = 0  # batches produced (new ones, re-sends not counted)
    samples_sent: int = 0
    batches_acked: int = 0
    resent: int = 0
    reconnects: int = 0
    sessions: int = 0
    reconciliations: int = 0
    resyncs: int = 0
    checksum_failures: int = 0  # DELTA or SNAP checksums that did not match (PROTOCOL §3.1)
    local_steps: int = 0  # synthetic mode: local updates of the edge stage (docs/SYNTHETIC.md)
    bytes_up: int = 0
    bytes_down: int = 0
    edge_version: int = 0
    last_loss: float | None = None
    seconds: float = 0.0
    compute_seconds: float = 0.0
    longest_compute_s: float = 0.0  # the longest single compute section, dilated
    heartbeats: int = 0
    heartbeat_failures: int = 0
    errors: list[str] = field(default_factory=list)
    # Why each session that was followed by a reconnect ended (the close code and reason,
    # or the connection error): the first ENDED_REASONS_KEPT, the rest only counted.
    session_ends: list[str] = field(default_factory=list)
    # Batches still unacknowledged when the drain timed out: without a state directory
    # they are gone, with one the next start re-sends them.
    undelivered: int = 0


class EdgeObserver:
    """Instrumentation hooks of the agent; this base class does nothing.

    The benchmark's step timeline (:mod:`simultrain.bench.probe`) is one. Times are
    ``time.monotonic()`` seconds. Hooks run inside the agent and must be quick and must not
    raise: ``batch_taken`` on the compute thread, inside the section that takes the batch;
    the others on the event loop.
    """

    def batch_taken(self) -> None:
        """A new batch left the data stream (a re-sent batch takes none)."""

    def compute_section(self, kind: str, started: float, ended: float, result: object) -> None:
        """A compute section ended. ``kind`` is the function's name; ``ended − started``
        includes waiting for the compute slot and the CPU emulation's sleep; ``result`` is what
        it returned (the frame it produced, if any)."""

    def acked(self, acked_seq: int, report: EdgeReport) -> None:
        """An ACK was applied: every batch up to ``acked_seq`` is in the master."""

    def session_ended(self, reason: str, report: EdgeReport) -> None:
        """A session ended (or could not open) and the agent will try another."""


class EdgeAgent:
    """One edge: set-up, the sessions with its cloud, liveness, durable progress.

    ``transport`` opens the connections to the cloud (:mod:`.transport`); by default the
    real one on ``websockets``, trusting ``settings.ca_file`` for ``wss://``.
    """

    def __init__(
        self,
        settings: EdgeSettings,
        *,
        run: RunConfig | None = None,
        observer: EdgeObserver | None = None,
        transport: StreamTransport | None = None,
    ) -> None:
        self.settings = settings
        self._run_override = run
        self.observer = observer or EdgeObserver()
        self.transport = transport or WebSocketsTransport(ca_file=settings.ca_file)
        self.report = EdgeReport()
        self.coordinator = CoordinatorClient(settings) if settings.coordinator_url else None
        self.notifier = SystemdNotifier.from_environment() if settings.watchdog else None
        self._compute = asyncio.Semaphore(1)  # one compute section at a time, like one CPU budget
        self._changed = asyncio.Event()  # something the producer may be waiting on happened
        self._stop = asyncio.Event()
        self._stop_deadline = float("inf")
        self.assignment: Assignment | None = None
        self.runtime: EdgeRuntime | None = None
        self.state: EdgeState | None = None
        self._durable_from = 0  # kept batches below this are gone from the state too
        # Gradient coding (RunConfig.gradient_coding_s): the code HELLO names.
        self.code: GradientCode | None = None

    # --- set-up -------------------------------------------------------------------------

    async def _assign(self) -> RunConfig:
        """Open the state directory and learn this edge's assignment and run: from the
        coordinator (enrolling, or resuming the stored identity), or from the settings."""
        settings = self.settings
        self.state = await asyncio.to_thread(
            open_edge_state,
            settings.state_dir,
            _state_binding(settings),
            max_bytes=settings.state_max_bytes,
        )
        if self.coordinator is not None:
            stored = self.state.identity()
            if stored is not None:
                # A restarted edge is the same edge: never enroll again (docs/DESIGN.md §7.2).
                try:
                    self.assignment = await self.coordinator.resume(stored)
                except (EdgeRemoved, ForeignRun) as exc:
                    raise ForeignEdgeState(f"{settings.state_dir}: {exc}") from exc
                log.info("resuming as edge %s from %s", stored.edge_id, settings.state_dir)
            else:
                self.assignment = await self.coordinator.register()
            await asyncio.to_thread(self._remember_identity)
            run = RunConfig.from_mapping(self.assignment.run_config)
        else:
            if not settings.cloud_url:
                raise SimulTrainError("give coordinator_url or cloud_url")
            run = settings.run
            self.assignment = Assignment(
                edge_id=settings.edge_id or f"edge-{settings.shard_index}",
                cloud_url=settings.cloud_url,
                run_config=run.to_mapping(),
                reconcile_offset=0,
                heartbeat_interval_s=settings.heartbeat_interval_s or 2.0,
                token=settings.token.get_secret_value() if settings.token else None,
            )
        return run

    async def _prepare(self) -> None:
        settings = self.settings
        run = await self._assign()
        assert self.assignment is not None
        if self._run_override is not None:
            run = self._run_override
        if settings.dataset:
            run = RunConfig.from_mapping({"dataset": settings.dataset}, base=run)
        self.run_config = run
        self.report.edge_id = self.assignment.edge_id
        torch.set_num_threads(settings.compute_threads)
        dataset = await asyncio.to_thread(load_dataset, run.dataset, seed=run.seed)
        self.spec = dataset.model_spec(run.model_id)
        # The run's one assembly (shared/training/assembly.py): the runtime of the run's role,
        # this edge's batches (shard_index of shard_count) and, with gradient coding, its
        # code row's partitions. The streams hold copies of the samples: the data set goes.
        edge = build_edge(
            run, self.spec, Shard(dataset, settings.shard_index, settings.shard_count)
        )
        del dataset
        release_caches()
        samples = edge.samples
        self.schedule = edge.schedule
        self.stream = edge.stream
        self.runtime = edge.runtime
        self.code = edge.runtime.code
        await asyncio.to_thread(self._restore_progress)
        self.cut_shape = edge.cut_shape
        self.limits = edge.limits  # one meaning of the window: PROTOCOL.md §6.3
        log.info(
            "edge %s: %s on %s shard %d/%d (%d train samples), cloud %s",
            self.assignment.edge_id,
            self.schedule.mode,
            run.dataset,
            settings.shard_index,
            settings.shard_count,
            samples,
            self.assignment.cloud_url,
        )

    # --- the whole life ---------------------------------------------------------------

    async def run(self) -> EdgeReport:
        started = time.perf_counter()
        await self._prepare()
        heartbeat = asyncio.create_task(self._heartbeat_loop(), name="edge-heartbeat")
        watchdog = asyncio.create_task(self._watchdog_loop(), name="edge-watchdog")
        sessions = asyncio.create_task(self._session_loop(), name="edge-sessions")
        try:
            # The heartbeat ends only when the coordinator says this edge was removed
            # (EdgeRemoved); then the agent stops at once instead of retrying a revoked token.
            await asyncio.wait({sessions, heartbeat}, return_when=asyncio.FIRST_COMPLETED)
            if heartbeat.done() and not sessions.done():
                heartbeat.result()  # raises EdgeRemoved; without a coordinator it just returns
            await sessions
            await self._say_finished()
        finally:
            if self.notifier is not None:
                self.notifier.stopping()  # done with its steps (or stopped): leaving
            tasks = (sessions, heartbeat, watchdog)
            for task in tasks:
                task.cancel()
            # Their outcome was taken above; here they only have to be finished.
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.coordinator is not None:
                await self.coordinator.close()
            if self.state is not None:
                self.state.close()
            self.report.seconds = time.perf_counter() - started
        return self.report

    def stop(self) -> None:
        """Stop producing, drain what is in flight, leave (SIGTERM).

        Bounded: after ``drain_timeout_s`` the agent leaves even if the cloud cannot be
        reached, and says how many batches it could not deliver (without a state directory
        they are lost; with one, the next start re-sends them).
        """
        if self._stop.is_set():
            return
        if self.notifier is not None:
            self.notifier.stopping()  # systemd: deactivating while the drain runs
        self._stop.set()
        self._stop_deadline = time.monotonic() + self.settings.drain_timeout_s
        asyncio.get_running_loop().call_later(self.settings.drain_timeout_s, self._changed.set)
        self._changed.set()

    def _drain_expired(self) -> bool:
        return self._stop.is_set() and time.monotonic() >= self._stop_deadline

    def _finished(self) -> bool:
        runtime = self.runtime
        assert runtime is not None
        if self._drain_expired():
            # Not yet applied: the kept batches above the acknowledged one (the others are
            # applied and only wait to become durable).
            self.report.undelivered = sum(s > runtime.highest_acked for s in runtime.unacked)
            if self.report.undelivered:
                log.error(
                    "leaving with %d batch(es) not delivered: drain timed out",
                    self.report.undelivered,
                )
            return True
        steps = self.settings.steps
        done_producing = self._stop.is_set() or (steps and self._produced() >= steps)
        # Done when everything produced is applied. Batches applied but not yet in a
        # checkpoint are made durable by the cloud when it gets our BYE.
        return bool(done_producing) and runtime.highest_acked >= runtime.next_seq - 1

    async def _session_loop(self) -> None:
        delay = self.settings.reconnect_initial_s
        while not self._finished():
            try:
                await self._one_session()
                delay = self.settings.reconnect_initial_s
            except SessionEnded as ended:
                if not ended.reconnect:
                    raise SimulTrainError(str(ended)) from None
                log.warning("session ended (%s); reconnecting", ended)
                self._session_ended(str(ended))
            except UpgradeRefused as exc:
                if exc.status_code in (401, 403) and self.coordinator is None:
                    # The cloud refused the token before the upgrade. With a coordinator the
                    # next heartbeat brings a fresh one; without, retrying cannot succeed
                    # (PROTOCOL.md §7, "What an edge does after each close").
                    raise Unauthorized(
                        f"the cloud refused this edge's token (HTTP {exc.status_code})"
                    ) from exc
                await self._backoff(exc, delay)
                delay = min(delay * 2, self.settings.reconnect_max_s)
            except LinkError as exc:
                await self._backoff(exc, delay)
                delay = min(delay * 2, self.settings.reconnect_max_s)
            if self._finished():
                break
            self.report.reconnects += 1

    async def _backoff(self, exc: Exception, delay: float) -> None:
        log.warning("connection to the cloud failed (%s); retrying in ≤%.1fs", exc, delay)
        self.report.errors.append(type(exc).__name__)
        self._session_ended(f"{type(exc).__name__}: {exc}")
        # Full jitter (AWS architecture blog): spreads reconnecting edges apart.
        with contextlib.suppress(TimeoutError):
            # Wakes early on SIGTERM, so a stopping edge never sleeps out a backoff.
            await asyncio.wait_for(self._stop.wait(), random.uniform(0, delay))

    def _session_ended(self, reason: str) -> None:
        if len(self.report.session_ends) < ENDED_REASONS_KEPT:
            self.report.session_ends.append(reason)
        self.observer.session_ended(reason, self.report)

    def _stream_url(self) -> str:
        assert self.assignment is not None
        base = self.settings.cloud_url_override or self.assignment.cloud_url
        base = base.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        return base.rstrip("/") + "/v1/stream"

    async def _one_session(self) -> None:
        """Connect through the transport and run one session until it ends."""
        assert self.assignment is not None
        url = self._stream_url()
        headers = {}
        if self.assignment.token:
            headers["Authorization"] = f"Bearer {self.assignment.token}"
        # PROTOCOL.md §1.1: the versions this agent speaks, newest first.
        offered = offered_subprotocols()
        async with self.transport.connect(url, subprotocols=offered, headers=headers) as conn:
            await StreamingSession(self, conn, url).run()

    async def _in_compute(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on a worker thread, then stretch it by the CPU emulation factor.

        The sleep happens inside the compute slot, so an emulated slow edge is busy for the
        whole emulated time (docs/BENCH.md, "Edge CPU emulation": time dilation).
        """
        slowdown = self.settings.slowdown

        def timed() -> tuple[T, float]:
            started = time.perf_counter()
            result = fn(*args)
            elapsed = time.perf_counter() - started
            if slowdown > 1.0:
                time.sleep((slowdown - 1.0) * elapsed)
            return result, elapsed

        started = time.monotonic()
        async with self._compute:
            result, elapsed = await asyncio.to_thread(timed)
        self.report.compute_seconds += elapsed * slowdown
        self.report.longest_compute_s = max(self.report.longest_compute_s, elapsed * slowdown)
        self.observer.compute_section(
            getattr(fn, "__name__", "?"), started, time.monotonic(), result
        )
        return result

    def _produce_next(self) -> Act | EGrad | None:
        """Take the next batch and produce its frame, as one step on the compute thread.

        One step, so a session that ends meanwhile cannot separate the two: a batch taken
        is a batch kept (and re-sent on the next session), and one not taken stays in the
        stream. What a batch is — one from this edge's stream, or with gradient coding the
        round's batch of each partition the edge holds — is the runtime's role.
        """
        runtime = self.runtime
        assert runtime is not None
        frame = runtime.produce_next(self.stream, taken=self.observer.batch_taken)
        self._keep()
        self.report.steps = runtime.batches_produced
        self.report.samples_sent = runtime.samples_produced
        self.report.local_steps = runtime.local_steps
        return frame

    def _produced(self) -> int:
        return self.runtime.batches_produced if self.runtime is not None else 0

    def _no_more_acts(self) -> bool:
        return bool(
            self._stop.is_set() or (self.settings.steps and self._produced() >= self.settings.steps)
        )

    # --- liveness -----------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        if self.coordinator is None or self.assignment is None:
            return
        while True:
            await asyncio.sleep(self.assignment.heartbeat_interval_s)
            runtime = self.runtime
            version = runtime.version if runtime is not None and runtime.version >= 0 else 0
            try:
                update = await self.coordinator.heartbeat(version, self.report.batches_acked)
            except EdgeRemoved:
                raise
            except SimulTrainError as exc:
                self.report.heartbeat_failures += 1
                log.warning("heartbeat failed: %s", exc)
                continue
            self.report.heartbeats += 1
            if update.cloud_url != self.assignment.cloud_url:
                log.warning("reassigned to cloud %s", update.cloud_url)
            self.assignment = update
            # The token is refreshed by every heartbeat: store the newest for a restart.
            await asyncio.to_thread(self._remember_identity)

    async def _say_finished(self) -> None:
        """Its steps done, the edge tells the coordinator it leaves on purpose (finished, not
        down). Best effort: a coordinator that misses it marks the edge down later."""
        steps = self.settings.steps
        if self.coordinator is None or self._stop.is_set() or not steps:
            return
        if self.report.batches_acked < steps:
            return
        runtime = self.runtime
        version = runtime.version if runtime is not None and runtime.version >= 0 else 0
        try:
            await self.coordinator.heartbeat(version, self.report.batches_acked, finished=True)
        except SimulTrainError as exc:
            log.warning("could not tell the coordinator this edge finished: %s", exc)

    async def _watchdog_loop(self) -> None:
        if self.notifier is None or self.notifier.watchdog_interval_s is None:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(self.notifier.watchdog_interval_s / 2)

    # --- durable state (services/edge/state.py) -----------------------------------------

    def _remember_identity(self) -> None:
        assert self.state is not None and self.assignment is not None
        identity: EdgeIdentity = self.assignment
        if identity != self.state.identity():
            self.state.save_identity(identity)

    def _restore_progress(self) -> None:
        """Continue the data where the last process stopped; take back its kept batches."""
        state, runtime = self.state, self.runtime
        assert state is not None and runtime is not None
        cursor = state.cursor()
        kept = state.kept()
        if cursor == Cursor() and not kept:
            return
        self.stream.seek(cursor.stream_index)
        runtime.next_seq = cursor.next_seq
        runtime.batches_produced = cursor.batches_produced
        runtime.samples_produced = cursor.samples_produced
        runtime.unacked.update({b.seq: (b.inputs, b.labels) for b in kept})
        self._durable_from = kept[0].seq if kept else cursor.next_seq
        self.report.steps = cursor.batches_produced
        self.report.samples_sent = cursor.samples_produced
        log.info(
            "resuming at batch %d of the data (seq %d), %d batch(es) kept for the cloud",
            cursor.batches_produced,
            cursor.next_seq,
            len(kept),
        )

    def _keep(self) -> None:
        """Commit the batch just taken, and the cursor past it, before its frame is sent.

        Roles that keep upload frames (FedAvg, gradient coding) keep no batch: only their
        identity is durable.
        """
        runtime, state = self.runtime, self.state
        assert runtime is not None and state is not None
        seq = runtime.next_seq - 1
        kept = runtime.unacked.get(seq)
        if seq < 0 or not isinstance(kept, tuple):
            return
        inputs, labels = kept
        cursor = Cursor(
            next_seq=runtime.next_seq,
            stream_index=self.stream.batch_index,
            batches_produced=runtime.batches_produced,
            samples_produced=runtime.samples_produced,
        )
        state.keep(KeptBatch(seq, inputs, labels), cursor)

    def _forget_durable(self) -> None:
        """Drop from the state what the cloud made durable (the ACK's ``durable_until``)."""
        runtime, state = self.runtime, self.state
        assert runtime is not None and state is not None
        until = min(runtime.unacked, default=runtime.next_seq)
        if until > self._durable_from:
            # One fsync per checkpoint of the cloud, not per batch.
            state.forget_below(until)
            self._durable_from = until

    def _write_status(self) -> None:
        path = self.settings.status_file
        if path is None:
            return
        tmp = path.with_suffix(path.suffix + ".tmp")
        try:
            tmp.write_text(json.dumps(asdict(self.report)) + "\n")
            tmp.replace(path)
        except OSError as exc:
            raise ConfigError(f"cannot write the status file {path}: {exc}") from exc


# The close-code policy lives with the session (PROTOCOL.md §7); its earlier names stay here.
_raise_if_final = raise_if_final
_worth_reconnecting = worth_reconnecting


def _state_binding(settings: EdgeSettings) -> dict[str, Any]:
    """What a state directory belongs to: one coordinator (or cloud), one shard, one data."""
    return {
        "coordinator_url": settings.coordinator_url,
        "cloud_url": None if settings.coordinator_url else settings.cloud_url,
        "edge_id": settings.edge_id,
        "shard_index": settings.shard_index,
        "shard_count": settings.shard_count,
        "dataset": settings.dataset,
    }
