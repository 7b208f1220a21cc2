"""The edge's transport seam (services/edge/transport.py): one suite, both transports.

Every behaviour the agent relies on is checked against the real transport (``websockets``
to uvicorn on port 0 of 127.0.0.1) and the in-process one (services/edge/inprocess.py), with
the same small ASGI application behind them, so that what the in-process agent tests prove
holds for the real link too.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn

from simultrain.edge.inprocess import ASGITransport
from simultrain.edge.transport import (
    ConnectFailed,
    StreamClosed,
    StreamTransport,
    UpgradeRefused,
    WebSocketsTransport,
)

BOUND_S = 10.0  # every wait here is on an event, bounded by this


@dataclass
class Probe:
    """An ASGI application with one behaviour per path; it records what it was told."""

    disconnects: list[tuple[int, str]] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    sends_after_drop: list[BaseException] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        assert (await receive())["type"] == "websocket.connect"
        if scope["path"] == "/refuse":
            await send({"type": "websocket.close", "code": 1008})
            return
        offered = scope["subprotocols"]
        await send({"type": "websocket.accept", "subprotocol": offered[0] if offered else None})
        if scope["path"] == "/crash":
            raise RuntimeError("the application failed")
        headers = dict(scope["headers"])
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.disconnects.append((message["code"], message.get("reason") or ""))
                self.disconnected.set()
                if scope["path"] == "/send-after-close":
                    try:
                        await send({"type": "websocket.send", "bytes": b"too late"})
                    except OSError as exc:
                        self.sends_after_drop.append(exc)
                return
            data = message["bytes"]
            if data == b"authorization":
                await send({"type": "websocket.send", "bytes": headers[b"authorization"]})
            elif data == b"close":
                await send({"type": "websocket.send", "bytes": b"last"})
                await send({"type": "websocket.close", "code": 4003, "reason": "another model"})
            else:
                await send({"type": "websocket.send", "bytes": data})


class _Server(uvicorn.Server):
    """uvicorn, telling the test once it listens (no polling)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.listening.set()


@dataclass
class Under:
    transport: StreamTransport
    base: str
    probe: Probe


@pytest.fixture(params=["websockets", "inprocess"])
async def under(request: pytest.FixtureRequest) -> AsyncIterator[Under]:
    probe = Probe()
    if request.param == "inprocess":
        yield Under(ASGITransport(probe, raise_app_exceptions=False), "ws://probe.test", probe)
        return
    config = uvicorn.Config(probe, host="127.0.0.1", port=0, lifespan="off", log_level="critical")
    server = _Server(config)
    serving = asyncio.create_task(server.serve())
    await asyncio.wait_for(server.listening.wait(), BOUND_S)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Under(WebSocketsTransport(open_timeout_s=BOUND_S), f"ws://127.0.0.1:{port}", probe)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, BOUND_S)


async def test_subprotocol_headers_and_messages_pass_through(under: Under) -> None:
    async with under.transport.connect(
        under.base + "/echo",
        subprotocols=["simultrain.v9", "simultrain.v2"],
        headers={"Authorization": "Bearer edge-token"},
    ) as conn:
        assert conn.subprotocol == "simultrain.v9"  # the probe takes the first offered
        assert conn.close_code is None and conn.close_reason is None
        await conn.send(b"\x00binary\xff")
        assert await conn.recv() == b"\x00binary\xff"
        await conn.send(b"authorization")
        assert await conn.recv() == b"Bearer edge-token"


async def test_no_subprotocol_offered_none_selected(under: Under) -> None:
    async with under.transport.connect(under.base + "/echo", subprotocols=[], headers={}) as conn:
        assert conn.subprotocol is None


async def test_the_servers_close_arrives_after_the_messages_before_it(under: Under) -> None:
    async with under.transport.connect(under.base + "/echo", subprotocols=[], headers={}) as conn:
        await conn.send(b"close")
        assert await conn.recv() == b"last"
        with pytest.raises(StreamClosed) as closed:
            await conn.recv()
        assert (closed.value.code, closed.value.reason) == (4003, "another model")
        await asyncio.wait_for(conn.wait_closed(), BOUND_S)
        assert (conn.close_code, conn.close_reason) == (4003, "another model")
        with pytest.raises(StreamClosed):
            await conn.send(b"after the close")


async def test_the_clients_close_reaches_the_application_with_its_code(under: Under) -> None:
    async with under.transport.connect(under.base + "/echo", subprotocols=[], headers={}) as conn:
        await conn.send(b"ping")
        assert await conn.recv() == b"ping"
        await conn.close(code=4002, reason="delta gap")
        assert conn.close_code == 4002  # the code the server echoes
        await conn.close(code=1000)  # closing again changes nothing
    await asyncio.wait_for(under.probe.disconnected.wait(), BOUND_S)
    assert under.probe.disconnects == [(4002, "delta gap")]


async def test_a_close_before_accepting_refuses_the_upgrade_with_403(under: Under) -> None:
    with pytest.raises(UpgradeRefused) as refused:
        async with under.transport.connect(under.base + "/refuse", subprotocols=[], headers={}):
            pytest.fail("a refused upgrade opened a connection")
    assert refused.value.status_code == 403


async def test_an_application_that_fails_drops_the_link(under: Under) -> None:
    async with under.transport.connect(under.base + "/crash", subprotocols=[], headers={}) as conn:
        with pytest.raises(StreamClosed) as closed:
            await conn.recv()
        assert closed.value.code == 1006


async def test_nothing_listening_is_a_connect_failure() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    transport = WebSocketsTransport(open_timeout_s=BOUND_S)
    with pytest.raises(ConnectFailed, match=r"ConnectionRefused|Errno"):
        async with transport.connect(f"ws://127.0.0.1:{port}/", subprotocols=[], headers={}):
            pytest.fail("connected to nothing")


async def test_in_process_a_dropped_link_is_1006_on_both_sides() -> None:
    probe = Probe()
    transport = ASGITransport(probe)
    async with transport.connect("ws://probe.test/send-after-close", subprotocols=[], headers={}):
        (conn,) = transport.connections
        conn.drop()
        with pytest.raises(StreamClosed) as closed:
            await conn.recv()
        assert closed.value.code == conn.close_code == 1006
        await asyncio.wait_for(probe.disconnected.wait(), BOUND_S)
    assert probe.disconnects == [(1006, "")]
    # What the application sends after the drop fails as a send to a gone client does
    # under uvicorn (an OSError, which starlette turns into WebSocketDisconnect(1006)).
    assert len(probe.sends_after_drop) == 1


async def test_in_process_the_applications_exception_is_raised_at_the_end() -> None:
    transport = ASGITransport(Probe())
    with pytest.raises(RuntimeError, match="the application failed"):
        async with transport.connect("ws://probe.test/crash", subprotocols=[], headers={}) as conn:
            with pytest.raises(StreamClosed):
                await conn.recv()


async def test_in_process_an_application_that_fails_before_accepting() -> None:
    async def fails(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise LookupError("no such route")

    with pytest.raises(LookupError, match="no such route"):
        async with ASGITransport(fails).connect("ws://probe.test/", subprotocols=[], headers={}):
            pytest.fail("a failed application opened a connection")
    with pytest.raises(UpgradeRefused) as refused:
        transport = ASGITransport(fails, raise_app_exceptions=False)
        async with transport.connect("ws://probe.test/", subprotocols=[], headers={}):
            pytest.fail("a failed application opened a connection")
    assert refused.value.status_code == 500  # what uvicorn answers
