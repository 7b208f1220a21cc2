"""The cloud's state and behaviour, apart from HTTP: master, sessions, compute thread, metrics.

Every master operation runs on one compute thread (``ThreadPoolExecutor(max_workers=1)``):
updates stay strictly ordered without a lock, and the event loop stays free, so one slow
step never stalls another session's I/O (issue 3, item 1).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from starlette.websockets import WebSocket, WebSocketState

from simultrain.shared.data import load_dataset
from simultrain.shared.errors import (
    HandshakeRejected,
    InvalidTensor,
    ProtocolError,
    TrainingError,
)
from simultrain.shared.models import get_model_spec
from simultrain.shared.protocol import CloudSession, Error, Frame, Hello, Limits, Welcome
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.factory import build_master, wire_cut_shape
from simultrain.shared.training.runtime import CloudRuntime, CloudSessionState, Outgoing

from .metrics import CloudMetrics
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
    bytes_in: int = 0
    bytes_out: int = 0

    async def send(self, frame: Frame) -> None:
        async with self.lock:
            if self.websocket.application_state is not WebSocketState.CONNECTED:
                return
            data = self.session.send(frame)
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
            try:
                await self.websocket.send_bytes(self.session.send(Error.from_exception(exc)))
            except ProtocolError:
                pass  # the session is already closing: the close code says it all
            await self.websocket.close(code=exc.close_code, reason=exc.reason)


class CloudService:
    def __init__(self, settings: CloudSettings, run: RunConfig) -> None:
        self.settings = settings
        self.run = run
        self.schedule = run.schedule()
        torch.set_num_threads(settings.compute_threads)
        dataset = load_dataset(settings.eval_dataset or run.dataset, seed=run.seed)
        self.spec = get_model_spec(run.model_id or dataset.model_id)
        self.master = build_master(run, self.spec, self.schedule)
        self.cut_shape = wire_cut_shape(self.spec, self.schedule)
        self.runtime = CloudRuntime(self.master, self.schedule, run.codecs)
        self.x_test = torch.tensor(dataset.x_test)
        self.y_test = torch.tensor(dataset.y_test).long()
        self.limits = Limits(
            max_frame_bytes=settings.max_frame_bytes,
            max_decompressed_bytes=settings.max_decompressed_bytes,
            window=self.schedule.window + 1,
        )
        self.connections: dict[str, Connection] = {}
        self.metrics = CloudMetrics()
        self.cloud_id: str | None = None
        self.ready = False
        # The address the server bound (port 0 → a free port), set once it listens; made on
        # the event loop by the app's lifespan (this constructor runs on a worker thread).
        self.bound_url: asyncio.Future[str]
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cloud-compute")

    async def compute(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the compute thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=False)

    # --- sessions -----------------------------------------------------------------------

    async def open(self, conn: Connection, hello: Hello) -> None:
        """HELLO → WELCOME and the first SNAP (an exact copy of the master)."""
        if hello.model_id != self.spec.model_id:
            raise HandshakeRejected(
                f"this cloud trains {self.spec.model_id}, the edge asked for {hello.model_id}"
            )
        if tuple(hello.cut_shape) != self.cut_shape:
            raise HandshakeRejected(
                f"cut shape {list(hello.cut_shape)} does not match {list(self.cut_shape)}"
            )
        edge_id = hello.edge_id
        previous = self.connections.get(edge_id)
        if previous is not None and previous is not conn:
            # A reconnect whose old TCP connection is not yet known dead: the newest wins.
            await previous.websocket.close(code=1008, reason="superseded by a newer session")
        conn.edge_id = edge_id
        self.connections[edge_id] = conn
        offset = int(hello.config.get("reconcile_offset", 0) or 0)
        state, snap = await self.compute(
            lambda: self.runtime.open_session(edge_id, reconcile_offset=offset)
        )
        conn.state = state
        state.bytes_in += conn.bytes_in  # the HELLO
        acked = state.highest_applied_seq if state.highest_applied_seq >= 0 else None
        welcome = Welcome(
            session_id=uuid.uuid4().hex,
            master_version=snap.master_version,
            cut_shape=self.cut_shape,
            window=self.limits.window,
            acked_seq=acked,
            config={k: v for k, v in self.run.to_mapping().items() if _scalar(v)},
        )
        await conn.send(welcome)
        await conn.send(snap)
        self.metrics.sessions.set(len(self.connections))
        log.info("session opened: %s (acked_seq=%s, master v%d)", edge_id, acked, snap.master_version)

    async def handle(self, conn: Connection, frame: Frame) -> None:
        """ACT or EGRAD: the step on the compute thread, then the replies to their edges."""
        assert conn.edge_id is not None
        started = time.perf_counter()
        handler = self.runtime.on_act if frame.type == "act" else self.runtime.on_egrad
        try:
            outgoing = await self.compute(handler, conn.edge_id, frame)
        except TrainingError as exc:
            # Passed the decoder yet unusable (e.g. gradient names that do not match the
            # model): the master checks before it changes anything, so refusing is enough.
            raise InvalidTensor(str(exc)) from exc
        self.metrics.observe_step(frame.type, time.perf_counter() - started, self.master)
        await self.deliver(outgoing)

    async def deliver(self, outgoing: list[Outgoing]) -> None:
        for edge_id, frame in outgoing:
            conn = self.connections.get(edge_id)
            if conn is not None:
                await conn.send(frame)

    async def close(self, conn: Connection) -> None:
        if conn.edge_id is None or self.connections.get(conn.edge_id) is not conn:
            return
        del self.connections[conn.edge_id]
        self.metrics.sessions.set(len(self.connections))
        outgoing = await self.compute(self.runtime.close_session, conn.edge_id)
        await self.deliver(outgoing)
        log.info("session closed: %s", conn.edge_id)

    # --- reads --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        master = self.master
        return {
            "cloud_id": self.cloud_id,
            "mode": self.schedule.mode,
            "model_id": self.spec.model_id,
            "master_version": master.version,
            "edge_updates": master.edge_updates,
            "samples_applied": master.samples_applied,
            "loss": master.loss_ema,
            "staleness": master.staleness.summary(),
            "edges": {
                edge_id: {
                    **state.summary(),
                    "connected": edge_id in self.connections,
                }
                for edge_id, state in sorted(self.runtime.sessions.items())
            },
        }

    async def evaluate(self) -> dict[str, Any]:
        accuracy, loss = await self.compute(self.master.evaluate, self.x_test, self.y_test)
        return {
            "accuracy": accuracy,
            "loss": loss,
            "samples": int(self.y_test.shape[0]),
            "master_version": self.master.version,
            "samples_applied": self.master.samples_applied,
        }

    async def model_state(self) -> dict[str, torch.Tensor]:
        return await self.compute(
            lambda: {n: t.detach().clone().contiguous() for n, t in self.master.full_state().items()}
        )


def _scalar(value: object) -> bool:
    return value is None or isinstance(value, bool | int | float | str)
