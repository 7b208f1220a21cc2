"""An in-process transport: the agent's connections go straight into an ASGI application.

No socket and no thread: the application (the cloud's FastAPI app, say) runs as a task on
the agent's own event loop and the two exchange ASGI messages (the ASGI WebSocket spec,
version 2.4). Tests drive the whole agent against the real cloud this way, in seconds —
the idea of httpx's ``MockTransport`` and starlette's ``TestClient.websocket_connect``,
behind the agent's :class:`~simultrain.edge.transport.StreamTransport` seam.

The server half behaves as uvicorn does where a client can tell:

- the application closing before it accepts refuses the upgrade with HTTP 403
  (:class:`~simultrain.edge.transport.UpgradeRefused`);
- its close reaches the client as the close code and reason, after the messages it sent
  before; the client's close reaches it as ``websocket.disconnect`` with the client's code;
- an application that ends without closing, or raises, drops the link (1006); its
  exception is raised again where the connection's context exits, so a test sees it
  (``raise_app_exceptions``, as httpx's ``ASGITransport`` does);
- a send after the link went away raises an ``OSError``, which starlette turns into
  ``WebSocketDisconnect(1006)``.

:meth:`ASGIConnection.drop` cuts the link without a close frame, as a dead mobile link does.
The application's lifespan is the caller's to run (``app.router.lifespan_context(app)``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from .transport import ABNORMAL_CLOSURE, StreamClosed, StreamConnection, UpgradeRefused

__all__ = ["ASGIApp", "ASGIConnection", "ASGITransport"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# uvicorn answers an application that closes before accepting with this status.
_REFUSED_STATUS = 403
# An application that ends or fails before accepting: uvicorn's 500.
_FAILED_STATUS = 500


class _ClientDisconnected(OSError):
    """The application sent on a connection whose client is gone (uvicorn raises the same
    kind of error, and starlette turns it into ``WebSocketDisconnect(1006)``)."""


@dataclass(frozen=True)
class _Close:
    """End of the client's message stream: the close code and reason it received."""

    code: int
    reason: str


class ASGITransport:
    """Connects to ``app``'s WebSocket endpoints in this process.

    ``connections`` lists every connection it opened, in order, so that a test can
    :meth:`~ASGIConnection.drop` the link under a running agent. ``close_timeout_s`` bounds
    how long leaving a connection waits for the application to finish its side.
    """

    def __init__(
        self, app: ASGIApp, *, raise_app_exceptions: bool = True, close_timeout_s: float = 10.0
    ) -> None:
        self.app = app
        self.raise_app_exceptions = raise_app_exceptions
        self.close_timeout_s = close_timeout_s
        self.connections: list[ASGIConnection] = []

    @contextlib.asynccontextmanager
    async def connect(
        self, url: str, *, subprotocols: Sequence[str], headers: Mapping[str, str]
    ) -> AsyncIterator[StreamConnection]:
        conn = ASGIConnection(self.app, _scope(url, subprotocols, headers))
        try:
            await conn.open(url, raise_app_exceptions=self.raise_app_exceptions)
            self.connections.append(conn)
            yield conn
        finally:
            await conn.close()
            await conn.finish(self.close_timeout_s, raise_app_exceptions=self.raise_app_exceptions)


class ASGIConnection:
    """One WebSocket connection between a client in this process and an ASGI application."""

    def __init__(self, app: ASGIApp, scope: Scope) -> None:
        self._app = app
        self._scope = scope
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._to_client: asyncio.Queue[bytes | str | _Close] = asyncio.Queue()
        self._handshake: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._closed = asyncio.Event()
        self._close: _Close | None = None  # what the client received, once closed
        self._app_closed = False  # the application sent its close (or refused)
        self._task: asyncio.Task[None] | None = None
        self.subprotocol: str | None = None

    # --- the client's side (StreamConnection) ---------------------------------------------

    @property
    def close_code(self) -> int | None:
        return None if self._close is None else self._close.code

    @property
    def close_reason(self) -> str | None:
        return None if self._close is None else self._close.reason

    async def send(self, data: bytes) -> None:
        if self._close is not None:
            raise StreamClosed(self._close.code, self._close.reason)
        self._to_app.put_nowait({"type": "websocket.receive", "bytes": bytes(data)})
        await asyncio.sleep(0)  # a real send yields to the loop too

    async def recv(self) -> bytes | str:
        message = await self._to_client.get()
        if isinstance(message, _Close):
            self._to_client.put_nowait(message)  # every later recv raises too
            raise StreamClosed(message.code, message.reason)
        return message

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """The client's close: the application receives ``websocket.disconnect`` with
        ``code``, and the client records the code the server echoes (RFC 6455 §5.5.1)."""
        if self._close is not None:
            return
        self._to_app.put_nowait(_disconnect(code, reason))
        self._closed_with(code, reason)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def drop(self) -> None:
        """The link dies without a close frame: both sides see 1006."""
        if self._close is not None:
            return
        self._to_app.put_nowait(_disconnect(ABNORMAL_CLOSURE))
        self._closed_with(ABNORMAL_CLOSURE, "")

    # --- the server's side (the ASGI callables) ------------------------------------------

    async def _receive(self) -> Message:
        return await self._to_app.get()

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if not self._handshake.done():
            if kind == "websocket.accept":
                self._handshake.set_result(message.get("subprotocol"))
            elif kind == "websocket.close":
                self._app_closed = True
                self._to_app.put_nowait(_disconnect(ABNORMAL_CLOSURE))
                self._handshake.set_exception(UpgradeRefused(_REFUSED_STATUS, self._url()))
            else:
                raise RuntimeError(f"expected websocket.accept or websocket.close, not {kind}")
            return
        if self._app_closed:
            raise RuntimeError(f"unexpected {kind} after websocket.close")
        if self._close is not None:
            raise _ClientDisconnected(f"the client is gone ({self._close.code})")
        if kind == "websocket.send":
            data = message.get("bytes")
            self._to_client.put_nowait(data if data is not None else message.get("text") or "")
        elif kind == "websocket.close":
            self._app_closed = True
            code, reason = message.get("code", 1000), message.get("reason") or ""
            self._to_app.put_nowait(_disconnect(code, reason))
            self._closed_with(code, reason)
        else:
            raise RuntimeError(f"expected websocket.send or websocket.close, not {kind}")

    # --- life -----------------------------------------------------------------------------

    async def open(self, url: str, *, raise_app_exceptions: bool) -> None:
        """Start the application and wait until it accepts (or refuses, or fails)."""
        self._to_app.put_nowait({"type": "websocket.connect"})
        self._task = asyncio.create_task(self._run_app(), name=f"asgi {url}")
        self._task.add_done_callback(self._app_ended)
        either: set[asyncio.Future[Any]] = {self._handshake, self._task}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if self._handshake.done():
            self.subprotocol = self._handshake.result()  # raises UpgradeRefused on a refusal
            return
        failure = self._task.exception()
        if failure is not None and raise_app_exceptions:
            raise failure
        raise UpgradeRefused(_FAILED_STATUS, url) from failure

    async def finish(self, timeout_s: float, *, raise_app_exceptions: bool) -> None:
        """Wait (bounded) for the application to finish its side; raise what it raised."""
        task = self._task
        if task is None:
            return
        if not self._handshake.done():
            self._handshake.cancel()
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return
        failure = None if task.cancelled() else task.exception()
        if failure is not None and raise_app_exceptions:
            raise failure

    async def _run_app(self) -> None:
        await self._app(self._scope, self._receive, self._send)

    def _app_ended(self, task: asyncio.Task[None]) -> None:
        # uvicorn drops the TCP connection when the application ends without closing.
        self._closed_with(ABNORMAL_CLOSURE, "")

    def _closed_with(self, code: int, reason: str) -> None:
        if self._close is None:
            self._close = _Close(code, reason)
            self._to_client.put_nowait(self._close)
            self._closed.set()

    def _url(self) -> str:
        scope = self._scope
        return f"{scope['scheme']}://{scope['server'][0]}:{scope['server'][1]}{scope['path']}"


def _disconnect(code: int, reason: str = "") -> Message:
    return {"type": "websocket.disconnect", "code": code, "reason": reason}


def _scope(url: str, subprotocols: Sequence[str], headers: Mapping[str, str]) -> Scope:
    """The ASGI ``websocket`` scope of a client connecting to ``url``."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"not a WebSocket URL: {url}")
    secure = parts.scheme == "wss"
    host = parts.hostname or "localhost"
    port = parts.port or (443 if secure else 80)
    request_headers = [(b"host", parts.netloc.encode())]
    request_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    if subprotocols:
        request_headers.append((b"sec-websocket-protocol", ", ".join(subprotocols).encode()))
    return {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "scheme": parts.scheme,
        "path": unquote(parts.path or "/"),
        "raw_path": (parts.path or "/").encode(),
        "query_string": parts.query.encode(),
        "root_path": "",
        "headers": request_headers,
        "client": ("127.0.0.1", 0),
        "server": (host, port),
        "subprotocols": list(subprotocols),
        "extensions": {},
    }
