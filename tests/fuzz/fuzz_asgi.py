"""An in-process WebSocket client for an ASGI app, driven one message at a time.

Starlette's ``TestClient.websocket_connect`` is the seam the service tests use; it runs
the app on a portal thread and costs a few milliseconds per connection. The fuzz campaign
opens a hundred thousand sessions, so it speaks ASGI to the app directly on one event loop
(what ``httpx.ASGITransport`` does for HTTP; httpx has no WebSocket transport).

``settle()`` waits on an event, never on time: it returns once the app has consumed every
message given to it and is waiting in ``receive()`` for more, or has finished. The bound is
only there to report a hang.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

__all__ = ["AsgiWebSocket", "Hang"]


class Hang(Exception):
    """The app neither asked for the next message nor finished within the bound."""


@dataclasses.dataclass
class Closed:
    code: int
    reason: str


class AsgiWebSocket:
    """One WebSocket session against ``app`` at ``path``, as a client sees it."""

    def __init__(self, app: Any, path: str, *, headers: list[tuple[bytes, bytes]] | None = None):
        self._app = app
        self._scope = {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "ws",
            "server": ("127.0.0.1", 80),
            "client": ("127.0.0.1", 50000),
            "root_path": "",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [(b"host", b"127.0.0.1"), *(headers or [])],
            "subprotocols": [],
            "state": {},
        }
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.accepted = False
        self.closed: Closed | None = None
        self.received: list[bytes | str] = []  # what the app sent, in order

    # --- the ASGI side ---------------------------------------------------------------

    async def _receive(self) -> dict[str, Any]:
        if self._inbox.empty():
            self._idle.set()
        message = await self._inbox.get()
        return message

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.accept":
            self.accepted = True
        elif kind == "websocket.send":
            data = message.get("bytes")
            self.received.append(data if data is not None else message.get("text", ""))
        elif kind == "websocket.close":
            self.closed = Closed(int(message.get("code", 1000)), message.get("reason") or "")

    # --- the client side -------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self._task is not None and self._task.done()

    def exception(self) -> BaseException | None:
        """What the app raised, if it finished by raising."""
        if self._task is None or not self._task.done() or self._task.cancelled():
            return None
        return self._task.exception()

    async def connect(self, *, timeout_s: float) -> None:
        self._put({"type": "websocket.connect"})
        self._task = asyncio.create_task(self._app(self._scope, self._receive, self._send))
        await self.settle(timeout_s=timeout_s)

    def send(self, data: bytes | str) -> None:
        key = "text" if isinstance(data, str) else "bytes"
        self._put({"type": "websocket.receive", key: data})

    def disconnect(self, code: int = 1000) -> None:
        self._put({"type": "websocket.disconnect", "code": code})

    def _put(self, message: dict[str, Any]) -> None:
        self._idle.clear()
        self._inbox.put_nowait(message)

    async def settle(self, *, timeout_s: float) -> None:
        """Until the app waits for input with nothing left to read, or has finished."""
        assert self._task is not None
        idle = asyncio.ensure_future(self._idle.wait())
        try:
            done, _ = await asyncio.wait(
                {self._task, idle}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            idle.cancel()
        if not done:
            raise Hang(f"no progress within {timeout_s}s")

    async def abort(self) -> None:
        """Cancel the app's task (after a hang), waiting for it to unwind."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
