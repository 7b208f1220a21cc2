"""One session of the edge agent with its cloud, over one open connection.

The handshake (HELLO, then WELCOME and the SNAP that starts the session from an exact copy of
the master), then two tasks until the session ends:

- the **producer** takes the next batch as soon as the window allows (docs/DESIGN.md §3.1), or
  re-sends a kept batch the cloud has not applied, and sends its frame;
- the **receiver** handles what the cloud sends: backward from cut gradients (compute
  thread), deltas and reconciliation (applied right on the loop: they build new tensors and
  swap one reference, so a forward running meanwhile keeps its weights and never waits —
  docs/DESIGN.md §3.5), acknowledgements (which free kept batches).

Every frame goes through the sans-I/O :class:`EdgeSession` and every message through the
agent's :class:`~simultrain.edge.transport.StreamConnection`. How a session ends decides what
the agent does next (PROTOCOL.md §7, "What an edge does after each close"): a
:class:`SessionEnded` says whether a new session can succeed; another protocol version or
another model raises an error that stops the agent for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from simultrain.shared.errors import (
    ErrorCode,
    ModelMismatch,
    ProtocolError,
    ProtocolVersionMismatch,
)
from simultrain.shared.models import architecture_fingerprint
from simultrain.shared.protocol import (
    CREDITS,
    Ack,
    Act,
    Bye,
    Delta,
    EdgeSession,
    EGrad,
    Error,
    Frame,
    Grad,
    Hello,
    Snap,
    Welcome,
    decode_frame,
    offered_subprotocols,
)
from simultrain.shared.training.runtime import EdgeRuntime

from .transport import StreamClosed, StreamConnection

if TYPE_CHECKING:
    from .agent import EdgeAgent

__all__ = [
    "RESYNC_CLOSE_CODE",
    "SessionEnded",
    "StreamingSession",
    "raise_if_final",
    "worth_reconnecting",
]

log = logging.getLogger("simultrain.edge")

RESYNC_CLOSE_CODE = 4002  # the edge asks for a fresh session: its deltas had a gap
# A cloud that selected none of the offered subprotocols sends its refusal (ERROR, close 4000)
# at once (PROTOCOL.md §1.1); one of the first release sends nothing and waits for a HELLO.
VERSION_REFUSAL_WAIT_S = 5.0
# How long a finished edge waits for the cloud to close after its BYE: the cloud writes a
# checkpoint of what the edge sent first.
BYE_CLOSE_WAIT_S = 60.0


class SessionEnded(Exception):
    """The current session is over; ``reconnect`` says whether to start another."""

    def __init__(self, reason: str, *, reconnect: bool) -> None:
        super().__init__(reason)
        self.reconnect = reconnect


class StreamingSession:
    """One session: handshake, then producer and receiver until it ends (module docstring).

    A part of its :class:`~simultrain.edge.agent.EdgeAgent`: it uses the agent's runtime and
    report, its compute slot, its producer step and its durable progress.
    """

    def __init__(self, agent: EdgeAgent, conn: StreamConnection, url: str) -> None:
        assert agent.runtime is not None and agent.assignment is not None
        self.agent = agent
        self.runtime: EdgeRuntime = agent.runtime
        self.conn = conn
        self.url = url
        # ``window = auto``: no cap of the edge's own; WELCOME's window and, where the cloud
        # grants them, its credits bound it (PROTOCOL.md §6.7; docs/CONFIGURATION.md).
        limits = agent.limits
        if agent.run_config.window == "auto":
            limits = dataclasses.replace(limits, window=None)
        self.session = EdgeSession(limits=limits, egrad_needs_grad=agent.schedule.egrad_needs_grad)
        # The session's ledger and the wire must see frames in one order: sends serialize.
        self._send_lock = asyncio.Lock()
        self.resend: list[tuple[int, Any]] = []  # kept batches the cloud has not applied

    async def run(self) -> None:
        if self.conn.subprotocol is None:
            await self._version_refused()
        self.agent.report.sessions += 1
        await self._handshake()
        await self._stream()

    async def _version_refused(self) -> None:
        """The cloud selected none of the offered versions (PROTOCOL.md §1.1): send nothing,
        read its refusal (bounded), close with 4000 and raise: retrying cannot help."""
        conn = self.conn
        said = "it selected no subprotocol and sent no refusal (a cloud of the first release)"
        with contextlib.suppress(TimeoutError, StreamClosed, ProtocolError):
            async with asyncio.timeout(VERSION_REFUSAL_WAIT_S):
                data = await conn.recv()
                # An ERROR is readable whatever version wrote it.
                frame = decode_frame(data, version=None)
                if isinstance(frame, Error):
                    said = frame.reason
        if conn.close_code is None:
            await conn.close(code=4000, reason="no common protocol version")
        elif conn.close_reason:
            said = conn.close_reason
        raise ProtocolVersionMismatch(_version_line(self.url, said))

    # --- frames in and out ------------------------------------------------------------------

    async def _send(self, frame: Frame) -> None:
        async with self._send_lock:
            data = self.session.send(frame)
            self.agent.report.bytes_up += len(data)
            try:
                await self.conn.send(data)
            except StreamClosed as exc:
                # The cloud's close may reach a send before the receiver: same verdict.
                raise self._ended(exc) from exc

    async def _receive(self) -> list[Frame]:
        try:
            data = await self.conn.recv()
        except StreamClosed as exc:
            raise self._ended(exc) from exc
        self.agent.report.bytes_down += len(data)
        try:
            return self.session.receive_data(data)
        except ProtocolError as exc:
            # The refusing side says why, then closes with the code's close code (§7).
            async with self._send_lock:
                with contextlib.suppress(ProtocolError, StreamClosed):
                    await self.conn.send(self.session.refuse(exc))
                await self.conn.close(code=exc.close_code, reason=exc.reason)
            raise

    def _ended(self, closed: StreamClosed) -> SessionEnded:
        """What a close means for the agent (PROTOCOL.md §7): a new session, or none."""
        raise_if_final(closed.code, closed.reason, self.url)
        return SessionEnded(
            f"closed by the cloud: {closed.code} {closed.reason}",
            reconnect=worth_reconnecting(closed.code, closed.reason),
        )

    def _handle_control(self, frame: Frame) -> None:
        if isinstance(frame, Error):
            raise_if_final(_FINAL_ERRORS.get(frame.code, 0), frame.reason, self.url)
            raise SessionEnded(f"cloud error {frame.code}: {frame.reason}", reconnect=False)
        if isinstance(frame, Bye):
            raise SessionEnded(f"cloud said bye: {frame.reason}", reconnect=True)

    # --- the handshake ----------------------------------------------------------------------

    def _hello(self) -> Hello:
        agent, runtime = self.agent, self.runtime
        assert agent.assignment is not None
        return Hello(
            edge_id=agent.assignment.edge_id,
            model_id=agent.spec.model_id,
            cut_shape=agent.cut_shape,
            config={
                "reconcile_offset": agent.assignment.reconcile_offset,
                "mode": agent.schedule.mode,
                **(
                    {"code_row": runtime.code_row, "gradient_code": agent.code.identity}
                    if agent.code is not None
                    else {}
                ),
            },
            token=agent.assignment.token,
            resume=runtime.highest_acked if runtime.highest_acked >= 0 else None,
            model_fingerprint=architecture_fingerprint(agent.spec),
            # In-flight credits (PROTOCOL.md §6.7): with them the cloud sizes this edge's window.
            capabilities={CREDITS: True},
        )

    async def _handshake(self) -> None:
        runtime = self.runtime
        await self._send(self._hello())
        welcome: Welcome | None = None
        synced = False  # a session starts from an exact copy of the master (SNAP, replace)
        while welcome is None or not synced:
            for frame in await self._receive():
                if isinstance(frame, Welcome):
                    welcome = frame
                elif isinstance(frame, Snap):
                    runtime.on_snap(frame)
                    await self._resync_if_needed()
                    synced = True
                else:
                    self._handle_control(frame)
        self.resend = runtime.resume(welcome.acked_seq)
        self.agent.report.resent += len(self.resend)
        if self.agent.notifier is not None:
            self.agent.notifier.ready()
        log.info(
            "session open: master v%d, acked up to %s, %d batch(es) to re-send",
            welcome.master_version,
            welcome.acked_seq,
            len(self.resend),
        )

    # --- streaming --------------------------------------------------------------------------

    async def _stream(self) -> None:
        producer = asyncio.create_task(self._produce(), name="edge-producer")
        receiver = asyncio.create_task(self._receive_loop(), name="edge-receiver")
        try:
            done, _ = await asyncio.wait({producer, receiver}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raise what ended the session
            if producer in done and self.agent._finished():
                # The cloud checkpoints what we sent before it closes: wait for its close.
                await self._send(Bye(reason="training finished"))
                try:
                    await asyncio.wait_for(self.conn.wait_closed(), timeout=BYE_CLOSE_WAIT_S)
                except TimeoutError:
                    await self.conn.close(code=1000, reason="training finished")
        finally:
            for task in (producer, receiver):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, SessionEnded, StreamClosed):
                    await task

    async def _produce(self) -> None:
        agent, runtime = self.agent, self.runtime
        resend = list(self.resend)
        while True:
            while not self._can_produce() and not agent._finished():
                agent._changed.clear()
                await agent._changed.wait()
            if agent._finished():
                return
            frame: Act | EGrad | None
            if resend:
                seq, kept = resend.pop(0)
                frame = await agent._in_compute(runtime.resend, seq, kept)
            elif agent._no_more_acts():
                # Nothing new to send: wait for the acknowledgements of what is in flight.
                while runtime.pending_egrads:
                    await self._send(runtime.pending_egrads.popleft())
                agent._changed.clear()
                await agent._changed.wait()
                continue
            else:
                frame = await agent._in_compute(agent._produce_next)
            while runtime.leading:  # synthetic mode: a batch's EGRAD precedes its ACT
                await self._send(runtime.leading.popleft())
            if isinstance(frame, Act) and not self.session.can_send_act():
                # A grant that shrank while the batch was computed (PROTOCOL.md §6.7): the
                # batch waits for its credit, and the EGRAD riding on it goes now, ahead of
                # any later one (EGRADs go in order, §6.3).
                if frame.egrad is not None:
                    await self._send(frame.egrad)
                    frame = dataclasses.replace(frame, egrad=None)
                while not self.session.can_send_act():
                    agent._changed.clear()
                    await agent._changed.wait()
            if frame is not None:
                await self._send(frame)

    async def _receive_loop(self) -> None:
        while True:
            for frame in await self._receive():
                if isinstance(frame, Grad):
                    await self._on_grad(frame)
                elif isinstance(frame, Delta):
                    self.runtime.on_delta(frame, now=asyncio.get_running_loop().time())
                    await self._resync_if_needed()
                elif isinstance(frame, Snap):
                    self.runtime.on_snap(frame)
                    await self._resync_if_needed()
                    self.agent.report.reconciliations = self.runtime.reconciliations
                    self.agent.report.resyncs = self.runtime.resyncs
                elif isinstance(frame, Ack):
                    self._on_ack(frame)
                else:
                    self._handle_control(frame)
                self.agent._changed.set()

    async def _on_grad(self, frame: Grad) -> None:
        agent, runtime = self.agent, self.runtime
        egrad = await agent._in_compute(runtime.on_grad, frame)
        if frame.loss is not None:
            agent.report.last_loss = frame.loss
        # Piggyback on the next ACT when one can go now (docs/DESIGN.md §3.3); a window that holds
        # the producer back means this EGRAD must go alone. So must every EGRAD of a run that
        # mixes edges: its mixed step waits for every member's (docs/FLEET.md, "Mixed steps").
        mixing = agent.run_config.mix_edges > 1
        if (
            agent.schedule.window > 0
            and not mixing
            and self._can_produce()
            and not agent._no_more_acts()
        ):
            runtime.pending_egrads.append(egrad)
        else:
            await self._send(egrad)

    def _can_produce(self) -> bool:
        """Whether the next batch may go: the schedule's window, or in a session with
        capability ``credits`` the session's — min(WELCOME's window, the edge's own cap, the
        grant in force; PROTOCOL.md §6.7)."""
        if CREDITS not in self.session.capabilities:
            return self.runtime.can_produce()
        window = self.session.window
        return self.runtime.can_produce(window=window) and (
            window is None or len(self.session.in_flight) < max(window, 1)
        )

    def _on_ack(self, frame: Ack) -> None:
        agent, runtime = self.agent, self.runtime
        runtime.on_ack(frame)
        agent._forget_durable()
        agent.report.batches_acked = runtime.highest_acked + 1
        agent.report.edge_version = runtime.version
        agent._write_status()
        agent.observer.acked(runtime.highest_acked, agent.report)

    async def _resync_if_needed(self) -> None:
        """A delta gap, or a replica whose checksum is not the cloud's (PROTOCOL.md §3.1):
        end the session with 4002; the next one starts from an exact SNAP of the master."""
        runtime = self.runtime
        if not runtime.needs_resync(now=asyncio.get_running_loop().time()):
            return
        self.agent.report.checksum_failures = runtime.checksum_failures
        reason = "replica checksum mismatch: resync" if runtime.replica_corrupt else "delta gap"
        await self.conn.close(code=RESYNC_CLOSE_CODE, reason=reason)
        raise SessionEnded(reason, reconnect=True)


# --- what each close means (PROTOCOL.md §7, "What an edge does after each close") ----------

# Close codes after which a new session can succeed: a normal end, a restart or going away,
# an abnormal drop, a server error, a resync the edge asked for. Protocol errors (1002, 1003,
# 1007, 1009, 4001) would only repeat: the agent gives up loudly on those.
_RECONNECT_CODES = frozenset({1000, 1001, 1006, 1011, 1012, 1013, RESYNC_CLOSE_CODE})


def worth_reconnecting(code: int, reason: str) -> bool:
    return code in _RECONNECT_CODES or (code == 1008 and "superseded" in reason)


# Close codes after which no restart of this agent can succeed either: another protocol
# version (upgrade one side), another model for the same id (fix the deployment). The agent
# stops with exit status 78 (services/edge/main.py), which systemd does not restart.
_FINAL_ERRORS = {
    ErrorCode.PROTOCOL_VERSION_MISMATCH.value: 4000,
    ErrorCode.MODEL_MISMATCH.value: 4003,
}


def raise_if_final(code: int, reason: str, url: str) -> None:
    if code == 4000:
        raise ProtocolVersionMismatch(_version_line(url, reason))
    if code == 4003:
        raise ModelMismatch(f"the cloud at {url} builds another model: {reason} (not retrying)")


def _version_line(url: str, said: str) -> str:
    ours = ", ".join(offered_subprotocols())
    return (
        f"protocol version mismatch: the cloud at {url} speaks none of this agent's versions "
        f"({ours}): {said or 'no reason given'} (not retrying)"
    )
