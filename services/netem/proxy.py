"""The user-space link emulator: an asyncio TCP proxy that shapes the bytes it relays.

It relays bytes, so HTTP and WebSocket traffic pass unchanged. The edge connects to the
emulator; the emulator connects to the cloud ("upstream"). Client → upstream is the uplink,
upstream → client the downlink. For each connection and direction a *reader* takes bytes
from one socket and asks the :class:`~simultrain.netem.shaper.LinkShaper` when each segment
is due, and a *writer* sleeps until then and writes it to the other socket::

    client ──read──▶ [uplink shaper] ──sleep until due──write──▶ upstream
    client ◀──write── sleep until due ◀── [downlink shaper] ◀──read── upstream

Each direction holds at most ``max_inflight_bytes`` that have been read but not yet written;
beyond that the reader stops reading, the socket's buffers fill and TCP flow control slows
the real sender down, instead of the emulator queueing without bound.

Half-close is relayed (a FIN is delivered after the data ahead of it); a reset or a socket
error on either side resets both sides, as it would end to end. :meth:`LinkEmulator.cut`
and the profile's :class:`~simultrain.netem.profiles.DisconnectSchedule` reset every
connection at once (RST both ways) and, during an outage, reset new connections as soon as
they are accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import socket
import struct
from collections import deque
from dataclasses import dataclass

from simultrain.netem.profiles import DisconnectSchedule, LinkProfile
from simultrain.netem.shaper import (
    DEFAULT_SEGMENT_BYTES,
    Clock,
    DirectionShaper,
    LinkShaper,
    StreamOrder,
)

__all__ = ["DEFAULT_MAX_INFLIGHT_BYTES", "EmulatorStats", "IllegalState", "LinkEmulator"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_INFLIGHT_BYTES = 4 * 1024 * 1024
"""Per connection and direction; Linux's default maximum TCP send buffer (``tcp_wmem``). It
covers the bandwidth-delay product of the 4G and 5G profiles many times over."""

_CLOSE_TIMEOUT_S = 5.0


class IllegalState(RuntimeError):
    """The emulator was used out of order (started twice, cut before start, …)."""


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class EmulatorStats:
    """A snapshot of the emulator's counters."""

    bytes_up: int
    """Bytes delivered client → upstream."""
    bytes_down: int
    """Bytes delivered upstream → client."""
    connections_accepted: int
    """Connections relayed to the upstream."""
    connections_active: int
    connections_refused: int
    """Connections reset on arrival because the link was down."""
    connections_cut: int
    """Established connections reset by an outage or by :meth:`LinkEmulator.cut`."""
    disconnects: int
    """Outages injected: scheduled ones plus calls of :meth:`LinkEmulator.cut`."""
    upstream_failures: int
    """Connections reset because the upstream could not be reached."""
    peak_inflight_bytes: int
    """Most bytes one direction of one connection ever held (read, not yet delivered)."""


@dataclass(slots=True)
class _Counters:
    bytes_up: int = 0
    bytes_down: int = 0
    connections_accepted: int = 0
    connections_refused: int = 0
    connections_cut: int = 0
    disconnects: int = 0
    upstream_failures: int = 0
    peak_inflight_bytes: int = 0

    def delivered(self, nbytes: int, *, uplink: bool) -> None:
        if uplink:
            self.bytes_up += nbytes
        else:
            self.bytes_down += nbytes

    def holding(self, inflight_bytes: int) -> None:
        self.peak_inflight_bytes = max(self.peak_inflight_bytes, inflight_bytes)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST rather than a FIN, as a severed link looks to a TCP peer."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER on with a zero timeout: close() discards unsent data and sends RST.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _wait_closed(writer: asyncio.StreamWriter) -> None:
    """Wait until the transport has released its socket; its close error is of no interest."""
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), _CLOSE_TIMEOUT_S)


async def _sleep_until(clock: Clock, when: float) -> None:
    delay = when - clock()
    if delay > 0:
        await asyncio.sleep(delay)


class _Pump:
    """One direction of one connection: read, schedule through the shaper, deliver on time."""

    def __init__(
        self,
        *,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        shaper: DirectionShaper,
        stream: StreamOrder,
        clock: Clock,
        max_inflight_bytes: int,
        counters: _Counters,
        uplink: bool,
    ) -> None:
        self._source = source
        self._sink = sink
        self._shaper = shaper
        self._stream = stream
        self._clock = clock
        self._max_inflight_bytes = max_inflight_bytes
        self._counters = counters
        self._uplink = uplink
        # (deliver_at, data); b"" is the FIN. Ordered by deliver_at (StreamOrder keeps it so).
        self._pending: deque[tuple[float, bytes]] = deque()
        self._inflight_bytes = 0
        self._has_pending = asyncio.Event()
        self._has_room = asyncio.Event()
        self._has_room.set()

    async def read_loop(self) -> None:
        while True:
            while self._inflight_bytes >= self._max_inflight_bytes:
                self._has_room.clear()
                await self._has_room.wait()
            data = await self._source.read(self._shaper.segment_bytes)
            if not data:
                fin = self._shaper.transmit(self._stream, 0)
                self._pending.append((fin.deliver_at, b""))
                self._has_pending.set()
                return
            view = memoryview(data)
            offset = 0
            for transmission in self._shaper.send(self._stream, len(data)):
                end = offset + transmission.nbytes
                self._pending.append((transmission.deliver_at, bytes(view[offset:end])))
                offset = end
            self._inflight_bytes += len(data)
            self._counters.holding(self._inflight_bytes)
            self._has_pending.set()

    async def write_loop(self) -> None:
        while True:
            while not self._pending:
                self._has_pending.clear()
                await self._has_pending.wait()
            head_due = self._pending[0][0]
            await _sleep_until(self._clock, head_due)
            # Everything already due goes out in one write: at high rates many segments fall
            # due within one scheduler tick.
            now = max(self._clock(), head_due)
            batch: list[bytes] = []
            fin = False
            while self._pending and self._pending[0][0] <= now:
                _, data = self._pending.popleft()
                if not data:
                    fin = True
                    break
                batch.append(data)
            if batch:
                payload = b"".join(batch)
                self._sink.write(payload)
                await self._sink.drain()
                self._inflight_bytes -= len(payload)
                if self._inflight_bytes < self._max_inflight_bytes:
                    self._has_room.set()
                self._counters.delivered(len(payload), uplink=self._uplink)
            if fin:
                if self._sink.can_write_eof():
                    self._sink.write_eof()
                return


class _Connection:
    """One relayed connection: the client side, the upstream side and their two pumps."""

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        streams: tuple[StreamOrder, StreamOrder],
        *,
        shaper: LinkShaper,
        clock: Clock,
        max_inflight_bytes: int,
        counters: _Counters,
    ) -> None:
        self.client_writer = client[1]
        self.upstream_writer = upstream[1]
        uplink_stream, downlink_stream = streams
        self._pumps = (
            _Pump(
                source=client[0],
                sink=upstream[1],
                shaper=shaper.uplink,
                stream=uplink_stream,
                clock=clock,
                max_inflight_bytes=max_inflight_bytes,
                counters=counters,
                uplink=True,
            ),
            _Pump(
                source=upstream[0],
                sink=client[1],
                shaper=shaper.downlink,
                stream=downlink_stream,
                clock=clock,
                max_inflight_bytes=max_inflight_bytes,
                counters=counters,
                uplink=False,
            ),
        )

    async def relay(self) -> None:
        """Relay until both sides have closed, either side resets, or the task is cancelled."""
        failed = False
        try:
            async with asyncio.TaskGroup() as pumps:
                for pump in self._pumps:
                    pumps.create_task(pump.read_loop())
                    pumps.create_task(pump.write_loop())
        except* OSError as group:
            # ConnectionResetError, BrokenPipeError, …: a reset on one side reaches the other.
            logger.debug("connection reset: %r", group.exceptions[0])
            failed = True
        if failed:
            self.reset()
        else:
            # Both FINs delivered: an orderly close of both sockets.
            self.client_writer.close()
            self.upstream_writer.close()

    def reset(self) -> None:
        _reset(self.client_writer)
        _reset(self.upstream_writer)

    async def wait_closed(self) -> None:
        await _wait_closed(self.client_writer)
        await _wait_closed(self.upstream_writer)


class LinkEmulator:
    """A TCP proxy from ``listen_host:listen_port`` to ``upstream_host:upstream_port`` that
    shapes both directions like ``profile``.

    One emulator is one device's link: its connections share the rate of each direction.
    Use it as ``async with LinkEmulator(…) as emulator:`` or call :meth:`start` and
    :meth:`stop`. ``clock`` (default: the event loop's) must count real seconds, because the
    emulator sleeps until the times it computes.
    """

    def __init__(
        self,
        listen_host: str,
        listen_port: int,
        upstream_host: str,
        upstream_port: int,
        profile: LinkProfile,
        *,
        seed: int = 0,
        clock: Clock | None = None,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
        connect_timeout_s: float = 10.0,
    ) -> None:
        if max_inflight_bytes < segment_bytes:
            raise ValueError("max_inflight_bytes must hold at least one segment")
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.profile = profile
        self.seed = seed
        self._clock_override = clock
        self._segment_bytes = segment_bytes
        self._max_inflight_bytes = max_inflight_bytes
        self._connect_timeout_s = connect_timeout_s

        self._state = _State.NEW
        self._counters = _Counters()
        self._server: asyncio.Server | None = None
        self._shaper: LinkShaper | None = None
        self._clock: Clock = clock if clock is not None else _unstarted_clock
        self._port: int | None = None
        # Every task running a client handler, and the connections among them being relayed.
        self._handlers: set[asyncio.Task[None]] = set()
        self._connections: dict[_Connection, asyncio.Task[None]] = {}
        self._schedule_task: asyncio.Task[None] | None = None
        self._link_up_timer: asyncio.TimerHandle | None = None
        self._down_until = -math.inf
        self._link_up = asyncio.Event()
        self._link_up.set()
        self._link_down = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> int:
        """Start accepting; returns the bound port (useful with ``listen_port=0``)."""
        if self._state is not _State.NEW:
            raise IllegalState(f"cannot start an emulator that is {self._state.value}")
        loop = asyncio.get_running_loop()
        self._clock = self._clock_override if self._clock_override is not None else loop.time
        self._shaper = LinkShaper(
            self.profile, seed=self.seed, clock=self._clock, segment_bytes=self._segment_bytes
        )
        self._server = await asyncio.start_server(
            self._on_client, self.listen_host, self.listen_port
        )
        # With a host name that resolves to several addresses and port 0, each socket gets its
        # own port; the first one is reported (bind a numeric address to avoid the ambiguity).
        self._port = self._server.sockets[0].getsockname()[1]
        self._state = _State.RUNNING
        if self.profile.disconnect is not None:
            self._schedule_task = asyncio.create_task(
                self._run_disconnect_schedule(self.profile.disconnect),
                name=f"netem-disconnects-{self._port}",
            )
        logger.info(
            "link emulator on port %d → %s:%d, profile %s (%s)",
            self._port,
            self.upstream_host,
            self.upstream_port,
            self.profile.name,
            self.profile.spec(),
        )
        return self._port

    async def stop(self) -> None:
        """Stop accepting, reset every connection and wait for every task to end."""
        if self._state is _State.STOPPED:
            return
        if self._state is _State.NEW:
            self._state = _State.STOPPED
            return
        self._state = _State.STOPPED
        assert self._server is not None
        self._server.close()
        if self._link_up_timer is not None:
            self._link_up_timer.cancel()
        tasks = set(self._handlers)
        if self._schedule_task is not None:
            tasks.add(self._schedule_task)
        for connection in self._connections:
            connection.reset()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await self._server.wait_closed()
        logger.info("link emulator on port %s stopped", self._port)
        schedule = self._schedule_task
        if schedule is not None and not schedule.cancelled() and schedule.exception() is not None:
            raise RuntimeError("the disconnect schedule failed") from schedule.exception()

    async def __aenter__(self) -> LinkEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- observation ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise IllegalState("the emulator has not been started")
        return self._port

    @property
    def link_up(self) -> bool:
        """False during an outage (scheduled, or requested by ``cut(refuse_for_s=…)``)."""
        return self._link_up.is_set()

    async def wait_link_up(self) -> None:
        """Return once the link is up (at once if it is)."""
        await self._link_up.wait()

    async def wait_link_down(self) -> None:
        """Return once an outage is in progress (at once if one is)."""
        await self._link_down.wait()

    @property
    def stats(self) -> EmulatorStats:
        counters = self._counters
        return EmulatorStats(
            bytes_up=counters.bytes_up,
            bytes_down=counters.bytes_down,
            connections_accepted=counters.connections_accepted,
            connections_active=len(self._connections),
            connections_refused=counters.connections_refused,
            connections_cut=counters.connections_cut,
            disconnects=counters.disconnects,
            upstream_failures=counters.upstream_failures,
            peak_inflight_bytes=counters.peak_inflight_bytes,
        )

    # -- faults ---------------------------------------------------------------------------

    def cut(self, *, refuse_for_s: float = 0.0) -> int:
        """Sever every connection now (RST both ways); returns how many were cut.

        With ``refuse_for_s > 0`` the link also stays down that long: new connections are
        reset as soon as they are accepted.
        """
        if self._state is not _State.RUNNING:
            raise IllegalState(f"cannot cut an emulator that is {self._state.value}")
        if refuse_for_s < 0:
            raise ValueError(f"refuse_for_s must be ≥ 0, not {refuse_for_s}")
        self._counters.disconnects += 1
        if refuse_for_s > 0:
            self._take_link_down(self._clock() + refuse_for_s)
        connections = list(self._connections.items())
        for connection, task in connections:
            connection.reset()
            task.cancel()
        self._counters.connections_cut += len(connections)
        if connections:
            logger.info("link cut: %d connection(s) reset", len(connections))
        return len(connections)

    def _take_link_down(self, until: float) -> None:
        self._down_until = max(self._down_until, until)
        self._link_up.clear()
        self._link_down.set()
        if self._link_up_timer is not None:
            self._link_up_timer.cancel()
        delay = max(0.0, self._down_until - self._clock())
        self._link_up_timer = asyncio.get_running_loop().call_later(delay, self._bring_link_up)

    def _bring_link_up(self) -> None:
        self._link_up_timer = None
        self._link_down.clear()
        self._link_up.set()
        logger.info("link up")

    async def _run_disconnect_schedule(self, schedule: DisconnectSchedule) -> None:
        # Absolute times from the start, so outages do not drift with scheduling latency.
        started_at = self._clock()
        index = 1
        while True:
            outage_at = started_at + schedule.outage_start_s(index)
            await _sleep_until(self._clock, outage_at)
            logger.info("scheduled outage %d for %.3f s", index, schedule.for_s)
            # A loop that woke up late shortens this outage rather than shifting the next one.
            self.cut(refuse_for_s=max(0.0, outage_at + schedule.for_s - self._clock()))
            index += 1

    # -- connections ----------------------------------------------------------------------

    async def _on_client(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._handle_client(client_reader, client_writer, task)
        finally:
            self._handlers.discard(task)

    async def _handle_client(
        self,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        task: asyncio.Task[None],
    ) -> None:
        if self._state is not _State.RUNNING or not self.link_up:
            self._counters.connections_refused += 1
            _reset(client_writer)
            await _wait_closed(client_writer)
            return
        assert self._shaper is not None
        # The emulated handshake counts from the client's connect, not from the upstream's.
        streams = self._shaper.open_connection()
        try:
            upstream = await asyncio.wait_for(
                asyncio.open_connection(self.upstream_host, self.upstream_port),
                self._connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            # The client would have got no connection at all; an RST is the closest we can do
            # after the kernel already accepted it.
            logger.warning(
                "upstream %s:%d unreachable: %s", self.upstream_host, self.upstream_port, exc
            )
            self._counters.upstream_failures += 1
            _reset(client_writer)
            await _wait_closed(client_writer)
            return
        except asyncio.CancelledError:
            _reset(client_writer)
            await _wait_closed(client_writer)
            raise
        if not self.link_up:
            # An outage began while the upstream connection was being made.
            self._counters.connections_refused += 1
            _reset(client_writer)
            _reset(upstream[1])
            await _wait_closed(client_writer)
            await _wait_closed(upstream[1])
            return
        connection = _Connection(
            (client_reader, client_writer),
            upstream,
            streams,
            shaper=self._shaper,
            clock=self._clock,
            max_inflight_bytes=self._max_inflight_bytes,
            counters=self._counters,
        )
        self._counters.connections_accepted += 1
        self._connections[connection] = task
        try:
            await connection.relay()
        except asyncio.CancelledError:
            connection.reset()
            raise
        finally:
            del self._connections[connection]
            await connection.wait_closed()


def _unstarted_clock() -> float:
    raise IllegalState("the emulator has not been started")
