"""The edge's transport: how the agent reaches the cloud's stream endpoint (``/v1/stream``).

One small seam, so that the agent does not care what carries its bytes. A
:class:`StreamTransport` opens a connection to a URL, offering subprotocols and sending
headers; the :class:`StreamConnection` it yields sends and receives whole WebSocket messages
and, once closed, reports the close code and reason it received. Two implementations:

- :class:`WebSocketsTransport`: the real one, on the ``websockets`` library (TLS with the
  edge's CA bundle, keepalive pings, no per-message compression: tensors are lz4 already);
- :class:`~simultrain.edge.inprocess.ASGITransport`: straight into an ASGI application in
  the same process and event loop, no socket — what the in-process tests drive the whole
  agent with (the idea of httpx's ``MockTransport`` and starlette's
  ``TestClient.websocket_connect``).

A transport translates its library's errors into these, with ``raise … from exc``; in the
project's one tree (:mod:`simultrain.shared.errors`)::

    SimulTrainError
    └── LinkError               the link to the cloud failed; a new session may succeed
        ├── ConnectFailed       no connection: refused, unreachable, timed out, bad handshake
        │   └── UpgradeRefused  the server answered the upgrade with an HTTP status (403 …)
        └── StreamClosed        the connection closed: the close code and reason received
                                (1006 when none was: the link dropped)
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from simultrain.shared.errors import SimulTrainError

__all__ = [
    "ABNORMAL_CLOSURE",
    "ConnectFailed",
    "LinkError",
    "StreamClosed",
    "StreamConnection",
    "StreamTransport",
    "UpgradeRefused",
    "WebSocketsTransport",
]

# RFC 6455 §7.1.5: the close code a peer reports when no close frame was received.
ABNORMAL_CLOSURE = 1006


class LinkError(SimulTrainError):
    """The link to the cloud failed; the agent backs off and tries a new session."""


class ConnectFailed(LinkError):
    """No connection could be opened (refused, unreachable, timed out, bad handshake)."""


class UpgradeRefused(ConnectFailed):
    """The server refused the WebSocket upgrade with an HTTP status, e.g. 403 for a token
    it does not accept."""

    def __init__(self, status_code: int, url: str) -> None:
        super().__init__(f"the server at {url} refused the upgrade: HTTP {status_code}")
        self.status_code = status_code


class StreamClosed(LinkError):
    """The connection closed: ``code`` and ``reason`` of the close frame received, or
    1006 and ``""`` when the link dropped without one."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"connection closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


class StreamConnection(Protocol):
    """One open WebSocket connection to the cloud, as the agent uses it."""

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server selected, or ``None`` (PROTOCOL.md §1.1)."""
        ...

    @property
    def close_code(self) -> int | None:
        """``None`` while open; then the close code received (1006: none was)."""
        ...

    @property
    def close_reason(self) -> str | None:
        """``None`` while open; then the close reason received."""
        ...

    async def send(self, data: bytes) -> None:
        """Send one binary message; raises :class:`StreamClosed` once closed."""
        ...

    async def recv(self) -> bytes | str:
        """The next message (``str`` for a text message); raises :class:`StreamClosed`
        once closed, after the messages that arrived before the close."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake with ``code`` and wait for it (bounded); never raises
        on a connection that is closed already."""
        ...

    async def wait_closed(self) -> None:
        """Return once the connection is closed."""
        ...


class StreamTransport(Protocol):
    """Opens connections to the cloud's stream endpoint."""

    def connect(
        self, url: str, *, subprotocols: Sequence[str], headers: Mapping[str, str]
    ) -> AbstractAsyncContextManager[StreamConnection]:
        """A connection to ``url`` (``ws://`` or ``wss://``) offering ``subprotocols`` (newest
        first) with the extra request ``headers``; closed when the context exits. Raises
        :class:`ConnectFailed` (or :class:`UpgradeRefused`) when none can be opened."""
        ...


class WebSocketsTransport:
    """The real transport, on the ``websockets`` library."""

    def __init__(
        self,
        *,
        ca_file: Path | None = None,
        open_timeout_s: float = 10.0,
        ping_interval_s: float = 20.0,
        ping_timeout_s: float = 60.0,
    ) -> None:
        self.ca_file = ca_file
        self.open_timeout_s = open_timeout_s
        self.ping_interval_s = ping_interval_s
        # A long cloud step must not look like a dead link: pings wait long for their pong.
        self.ping_timeout_s = ping_timeout_s

    def ssl_context(self, url: str) -> ssl.SSLContext | None:
        """For ``wss://``: the system's trust store, or the edge's CA bundle when given."""
        if not url.startswith("wss://"):
            return None
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)

    @contextlib.asynccontextmanager
    async def connect(
        self, url: str, *, subprotocols: Sequence[str], headers: Mapping[str, str]
    ) -> AsyncIterator[StreamConnection]:
        try:
            ws = await connect(
                url,
                additional_headers=dict(headers),
                # None, not []: an empty offer would send an empty header, which is refused.
                subprotocols=[Subprotocol(name) for name in subprotocols] or None,
                ssl=self.ssl_context(url),
                max_size=None,  # the protocol's Limits bound frames, per message type
                open_timeout=self.open_timeout_s,
                ping_interval=self.ping_interval_s,
                ping_timeout=self.ping_timeout_s,
                compression=None,  # tensors are lz4-compressed already
            )
        except InvalidStatus as exc:
            raise UpgradeRefused(exc.response.status_code, url) from exc
        except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed) as exc:
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from exc
        async with ws:
            yield _WebSocketsConnection(ws)


class _WebSocketsConnection:
    """A ``websockets`` client connection behind the :class:`StreamConnection` seam."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws

    @property
    def subprotocol(self) -> str | None:
        return self._ws.subprotocol

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    @property
    def close_reason(self) -> str | None:
        return self._ws.close_reason

    async def send(self, data: bytes) -> None:
        try:
            await self._ws.send(data)
        except ConnectionClosed as exc:
            raise _closed(exc) from exc

    async def recv(self) -> bytes | str:
        try:
            return await self._ws.recv()
        except ConnectionClosed as exc:
            raise _closed(exc) from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._ws.close(code=code, reason=reason)

    async def wait_closed(self) -> None:
        await self._ws.wait_closed()


def _closed(exc: ConnectionClosed) -> StreamClosed:
    received = exc.rcvd
    if received is None:
        return StreamClosed(ABNORMAL_CLOSURE)
    return StreamClosed(received.code, received.reason)
