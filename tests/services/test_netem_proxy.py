"""The link emulator as a real TCP proxy on 127.0.0.1, port 0, in front of an echo server.

Timing is only ever checked from below (the emulator may never be faster than the link it
emulates); a loaded machine may always be slower. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator

import pytest

from simultrain.netem.profiles import PROFILES, LinkProfile, parse_profile
from simultrain.netem.proxy import IllegalState, LinkEmulator

pytestmark = pytest.mark.integration

BOUND_S = 10.0  # generous bound on any single wait; the suite never gets near it


class EchoServer:
    """Echoes every byte; relays a half-close; notes when a connection ends and how."""

    def __init__(self) -> None:
        self.port = 0
        self.endings: asyncio.Queue[str] = asyncio.Queue()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> EchoServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        if self._handlers:
            await asyncio.wait(self._handlers)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        ending = "eof"
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
        except ConnectionResetError:
            ending = "reset"
        finally:
            self.endings.put_nowait(ending)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self._handlers.discard(task)


@contextlib.asynccontextmanager
async def emulated(
    profile: LinkProfile, *, seed: int = 0, max_inflight_bytes: int = 4 * 1024 * 1024
) -> AsyncIterator[tuple[LinkEmulator, EchoServer]]:
    """An echo server behind an emulator of ``profile``, both on 127.0.0.1, port 0."""
    async with EchoServer() as echo:
        emulator = LinkEmulator(
            "127.0.0.1",
            0,
            "127.0.0.1",
            echo.port,
            profile,
            seed=seed,
            max_inflight_bytes=max_inflight_bytes,
        )
        async with emulator:
            yield emulator, echo


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), BOUND_S)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await asyncio.wait_for(writer.wait_closed(), BOUND_S)


async def exchange(port: int, payload: bytes) -> bytes:
    """Send ``payload`` and a FIN through the emulator; return what comes back before EOF."""
    reader, writer = await connect(port)

    async def send() -> None:
        view = memoryview(payload)
        for offset in range(0, len(payload), 100_000):
            writer.write(view[offset : offset + 100_000])
            await writer.drain()
        writer.write_eof()

    try:
        sending = asyncio.create_task(send())
        received = await asyncio.wait_for(reader.read(), BOUND_S)
        await asyncio.wait_for(sending, BOUND_S)
    finally:
        await close(writer)
    return received


async def assert_severed(reader: asyncio.StreamReader) -> None:
    """The connection was reset or closed by the emulator (an RST reads as either)."""
    try:
        data = await asyncio.wait_for(reader.read(1), BOUND_S)
    except ConnectionResetError:
        return
    assert data == b""


async def ping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"p")
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(1), BOUND_S) == b"p"


@pytest.mark.parametrize("spec", ["none", "lan", "rate=400mbit,delay=1ms,jitter=1ms,loss=0.001"])
async def test_bytes_pass_unchanged_both_ways(spec: str) -> None:
    rng = random.Random(spec)
    payloads = [b"", b"x", rng.randbytes(100_000), rng.randbytes(3_000_000)]
    async with emulated(parse_profile(spec), seed=1) as (emulator, _):
        echoed = await asyncio.gather(*(exchange(emulator.port, p) for p in payloads))
        assert echoed == payloads  # concurrently, over a shared link, in order, complete
        stats = emulator.stats
        total = sum(len(p) for p in payloads)
        assert (stats.bytes_up, stats.bytes_down) == (total, total)
        assert stats.connections_accepted == len(payloads)
    assert emulator.stats.connections_active == 0


async def test_transfer_is_never_faster_than_the_link() -> None:
    rate_bps, rtt_s, nbytes = 10e6, 0.010, 1_000_000
    profile = LinkProfile.symmetric("10mbit", rate_bps=rate_bps, rtt_s=rtt_s)
    payload = random.Random(0).randbytes(nbytes)
    async with emulated(profile) as (emulator, _):
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await exchange(emulator.port, payload) == payload
        elapsed = loop.time() - started
    # Handshake (1 RTT), every byte serialized once up, then one-way delays up and down.
    assert elapsed >= nbytes * 8 / rate_bps + 2 * rtt_s


async def test_round_trip_is_at_least_twice_the_delay() -> None:
    delay_s = 0.020
    profile = parse_profile(f"delay={delay_s * 1000:g}ms")
    async with emulated(profile) as (emulator, _):
        reader, writer = await connect(emulator.port)
        loop = asyncio.get_running_loop()
        try:
            for _ in range(4):
                started = loop.time()
                await ping(reader, writer)
                assert loop.time() - started >= 2 * delay_s
        finally:
            await close(writer)


async def test_inflight_bytes_are_bounded() -> None:
    limit = 64 * 1024
    profile = parse_profile("rate=100mbit")
    payload = random.Random(1).randbytes(2_000_000)
    async with emulated(profile, max_inflight_bytes=limit) as (emulator, _):
        assert await exchange(emulator.port, payload) == payload
        peak = emulator.stats.peak_inflight_bytes
    # The reader stops at the limit, so it holds at most one read beyond it.
    assert limit <= peak < limit + 16384


async def test_cut_resets_both_sides_and_the_link_stays_usable() -> None:
    async with emulated(PROFILES["lan"]) as (emulator, echo):
        reader, writer = await connect(emulator.port)
        try:
            await ping(reader, writer)
            assert emulator.cut() == 1
            await assert_severed(reader)
            assert await asyncio.wait_for(echo.endings.get(), BOUND_S) in {"reset", "eof"}
        finally:
            await close(writer)
        stats = emulator.stats
        assert (stats.disconnects, stats.connections_cut) == (1, 1)
        assert emulator.link_up
        assert await exchange(emulator.port, b"after the cut") == b"after the cut"


async def test_cut_with_an_outage_refuses_then_recovers() -> None:
    async with emulated(PROFILES["lan"]) as (emulator, _):
        emulator.cut(refuse_for_s=0.5)
        assert not emulator.link_up
        reader, writer = await connect(emulator.port)  # the kernel accepts …
        try:
            await assert_severed(reader)  # … and the emulator resets it at once
        finally:
            await close(writer)
        assert emulator.stats.connections_refused == 1
        await asyncio.wait_for(emulator.wait_link_up(), BOUND_S)
        assert await exchange(emulator.port, b"back") == b"back"


async def test_scheduled_disconnects_cut_refuse_and_recover() -> None:
    profile = parse_profile("lan,disconnect_every=1s,disconnect_for=600ms")
    async with emulated(profile) as (emulator, _):
        reader, writer = await connect(emulator.port)
        try:
            await ping(reader, writer)
            await assert_severed(reader)  # the first outage, one second in
        finally:
            await close(writer)
        assert emulator.stats.connections_cut == 1
        if not emulator.link_up:  # a very slow machine may already be past the outage
            reader, writer = await connect(emulator.port)
            try:
                await assert_severed(reader)
            finally:
                await close(writer)
            assert emulator.stats.connections_refused == 1
        await asyncio.wait_for(emulator.wait_link_up(), BOUND_S)
        reader, writer = await connect(emulator.port)
        try:
            await ping(reader, writer)
        finally:
            await close(writer)
        assert emulator.stats.disconnects >= 1


async def test_unreachable_upstream_resets_the_client() -> None:
    with socket.socket() as placeholder:  # a port that nothing listens on
        placeholder.bind(("127.0.0.1", 0))
        dead_port = placeholder.getsockname()[1]
    async with LinkEmulator("127.0.0.1", 0, "127.0.0.1", dead_port, PROFILES["none"]) as emulator:
        reader, writer = await connect(emulator.port)
        try:
            await assert_severed(reader)
        finally:
            await close(writer)
        assert emulator.stats.upstream_failures == 1


async def test_stop_leaves_no_task_behind() -> None:
    before = asyncio.all_tasks()
    async with emulated(parse_profile("rate=1mbit,delay=50ms")) as (emulator, _):
        reader, writer = await connect(emulator.port)
        writer.write(b"z" * 200_000)  # still in flight when the emulator stops
        await writer.drain()
        await emulator.stop()
        await assert_severed(reader)
        await close(writer)
    assert asyncio.all_tasks() == before


async def test_lifecycle_is_enforced() -> None:
    emulator = LinkEmulator("127.0.0.1", 0, "127.0.0.1", 9, PROFILES["none"])
    with pytest.raises(IllegalState):
        emulator.cut()
    with pytest.raises(IllegalState):
        _ = emulator.port
    await emulator.start()
    try:
        with pytest.raises(IllegalState):
            await emulator.start()
    finally:
        await emulator.stop()
    await emulator.stop()  # idempotent
    with pytest.raises(IllegalState):
        emulator.cut()
