"""The kit's side of the link: a recording, fault-injecting WebSocket proxy before a real cloud.

A client under test connects here as if to the cloud. Every upgrade request, message and
close is recorded in a :class:`Link`; each message the client sends is checked against the
session rules by a reference :class:`CloudSession` that sees the exchange in the order the
client did (what the proxy forwarded to it, what it sent), so a violation is caught even
where the real cloud, which sees the exchange a little earlier, could not tell. The
:class:`Fault` of the case changes what the client receives — a DELTA that does not give the
replica its checksum, a message over the size limit, a cloud of another protocol version, a
revoked token — once per case, at a point of the session the case names. ``GET`` requests
(the session spec) are passed through to the cloud unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import time
from collections.abc import Mapping
from typing import Any

import httpx
import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.headers import parse_subprotocol
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from simultrain.shared.errors import ProtocolError, Unauthorized
from simultrain.shared.protocol import (
    Ack,
    Act,
    CloudSession,
    Delta,
    Error,
    Frame,
    Grad,
    Hello,
    Limits,
    SessionState,
    Snap,
    WireTensor,
    decode_message,
    encode_frame,
    version_mismatch,
)
from simultrain.shared.protocol.versions import subprotocol_version

__all__ = ["FOREIGN_VERSION", "Fault", "Link", "Proxy"]

log = logging.getLogger("simultrain.conformance")

FOREIGN_VERSION = 99  # the major version the kit's "cloud of another version" speaks
_ACKS_BEFORE_FAULT = 2  # restart and revocation strike after this many ACKs reached the client
_READ_ANY = Limits(window=None)  # what the kit reads for its record, whatever the session
_REFUSAL_DELAY_S = 1.0  # the kit's cloud of another version answers after this


class Fault(enum.Enum):
    """What the proxy does to the client's first session (PROTOCOL.md section in brackets)."""

    NONE = "none"
    DELAY_ACKS = "delay-acks"  # every ACK held back 0.3 s: the window must hold (§6.3)
    RESTART = "restart"  # after the 2nd ACK, closed with 1012 as a restarting cloud (§6.5)
    CORRUPT_DELTA = "corrupt-delta"  # one value of the first DELTA changed (§3.1)
    BAD_SNAP_CHECKSUM = "bad-snap-checksum"  # the session's first SNAP, checksum ^ 1 (§3.1)
    OVERSIZE = "oversize"  # a message of max_frame_bytes + 1 after the first GRAD (§1, §5)
    FOREIGN_VERSION = "foreign-version"  # a cloud that speaks only simultrain.v99 (§1.1)
    REVOKE = "revoke"  # after the 2nd ACK, the token is revoked: 1008, then refused (§7)


@dataclasses.dataclass
class Link:
    """One connection of the client through the proxy, as the kit saw it."""

    index: int
    opened_at: float
    offered: tuple[str, ...]
    authorization: bool
    http_status: int | None = None  # the upgrade was refused with this status
    subprotocol: str | None = None
    from_client: list[Frame] = dataclasses.field(default_factory=list)
    violations: list[str] = dataclasses.field(default_factory=list)
    to_client: list[Frame] = dataclasses.field(default_factory=list)
    cloud_error: Error | None = None  # the ERROR the client was sent, if any
    client_error: Error | None = None  # the ERROR the client sent, if any
    client_close: tuple[int, str] | None = None  # a close the client started
    server_close: tuple[int, str] | None = None  # a close the cloud (or the kit) started
    fault_at: int | None = None  # len(from_client) when the fault struck
    fault_frame: Frame | None = None  # the frame the fault altered
    max_in_flight: int = 0
    acks_forwarded: int = 0
    closed_at: float | None = None

    @property
    def hello(self) -> Hello | None:
        first = self.from_client[0] if self.from_client else None
        return first if isinstance(first, Hello) else None

    def after_fault(self) -> list[Frame]:
        return [] if self.fault_at is None else self.from_client[self.fault_at :]


class Proxy:
    """A WebSocket server on 127.0.0.1 (port 0) in front of the cloud at ``cloud_url``."""

    def __init__(
        self,
        cloud_url: str,
        fault: Fault,
        spec: Mapping[str, Any],
        *,
        ack_delay_s: float = 0.3,
    ) -> None:
        self.cloud_url = cloud_url.rstrip("/")
        self.cloud_ws = self.cloud_url.replace("http://", "ws://", 1) + "/v1/stream"
        self.fault = fault
        self.spec = spec
        self.ack_delay_s = ack_delay_s
        self.links: list[Link] = []
        self.changed = asyncio.Event()
        self.revoked: set[str] = set()  # tokens refused from now on (Fault.REVOKE)
        self._server: Server | None = None
        self._links: dict[ServerConnection, Link] = {}
        self._upstream: dict[ServerConnection, ClientConnection] = {}
        self._http = httpx.AsyncClient(timeout=30)
        self._struck = False  # the fault strikes once, on the first session it can

    async def start(self) -> str:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            max_size=None,
            compression=None,
            ping_interval=None,
        )
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for upstream in self._upstream.values():
            await upstream.close()
        await self._http.aclose()

    # -- the opening handshake ------------------------------------------------------------

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return await self._pass_http(request)
        if request.path != "/v1/stream":
            return connection.respond(404, "no such stream\n")
        offered = tuple(
            name
            for value in request.headers.get_all("Sec-WebSocket-Protocol")
            for name in parse_subprotocol(value)
        )
        authorization = request.headers.get("Authorization")
        link = Link(len(self.links), time.monotonic(), offered, authorization is not None)
        self.links.append(link)
        self._links[connection] = link
        self.changed.set()
        if authorization is not None and authorization.partition(" ")[2] in self.revoked:
            # A revoked token in the header: refused before the upgrade, as the cloud does.
            link.http_status = 403
            link.closed_at = time.monotonic()
            return connection.respond(403, "token revoked\n")
        if self.fault is Fault.FOREIGN_VERSION:
            return None  # accepted without a subprotocol, refused in _handle
        try:
            upstream = await connect(
                self.cloud_ws,
                subprotocols=[Subprotocol(name) for name in offered] or None,
                additional_headers={"Authorization": authorization} if authorization else None,
                max_size=None,
                compression=None,
                open_timeout=10,
                ping_interval=None,
            )
        except InvalidStatus as exc:
            link.http_status = exc.response.status_code
            link.closed_at = time.monotonic()
            self.changed.set()
            body = bytes(exc.response.body).decode("utf-8", "replace") or "refused\n"
            return connection.respond(exc.response.status_code, body)
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            link.http_status = 502
            link.closed_at = time.monotonic()
            return connection.respond(502, f"the kit could not reach the cloud: {exc}\n")
        self._upstream[connection] = upstream
        link.subprotocol = upstream.subprotocol
        return None

    def _select_subprotocol(
        self, connection: ServerConnection, offered: object
    ) -> Subprotocol | None:
        link = self._links.get(connection)
        return None if link is None or link.subprotocol is None else Subprotocol(link.subprotocol)

    async def _pass_http(self, request: Request) -> Response:
        try:
            reply = await self._http.get(self.cloud_url + request.path)
        except httpx.HTTPError as exc:
            return Response(502, "Bad Gateway", Headers(), f"{exc}\n".encode())
        headers = Headers()
        if "content-type" in reply.headers:
            headers["Content-Type"] = reply.headers["content-type"]
        return Response(reply.status_code, reply.reason_phrase, headers, reply.content)

    # -- the session ------------------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        link = self._links[connection]
        try:
            if self.fault is Fault.FOREIGN_VERSION:
                await self._refuse_version(connection, link)
                return
            upstream = self._upstream.pop(connection)
            mirror = CloudSession(
                limits=Limits(
                    max_frame_bytes=None,
                    max_decompressed_bytes=None,
                    window=self.spec.get("window"),
                ),
                egrad_needs_grad=bool(self.spec.get("egrad_needs_grad", True)),
                version=subprotocol_version(link.subprotocol or ""),
            )
            async with upstream:
                tasks = {
                    asyncio.create_task(self._from_client(connection, upstream, link, mirror)),
                    asyncio.create_task(self._to_client(connection, upstream, link, mirror)),
                }
                _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            self._record_close(connection, link)
            self.changed.set()

    async def _refuse_version(self, connection: ServerConnection, link: Link) -> None:
        offered = [v for name in link.offered if (v := subprotocol_version(name)) is not None]
        refusal = version_mismatch(offered, supported=(FOREIGN_VERSION,))
        session = CloudSession(version=None)
        self._strike(link)
        # A second before the refusal (a cloud may take its time): a client that sends a
        # HELLO without looking at the selected subprotocol shows it here (PROTOCOL.md §1.1).
        with contextlib.suppress(TimeoutError, ConnectionClosed):
            async with asyncio.timeout(_REFUSAL_DELAY_S):
                async for message in connection:
                    self._observe_client(link, None, message)
        link.cloud_error = Error.from_exception(refusal)
        with contextlib.suppress(ConnectionClosed):
            await connection.send(session.refuse(refusal))
            await connection.close(refusal.close_code, refusal.reason)
        # What the client sent before it read the refusal (nothing, when it checks the
        # subprotocol first) is still recorded.
        with contextlib.suppress(ConnectionClosed):
            async for message in connection:
                self._observe_client(link, None, message)

    async def _from_client(
        self,
        connection: ServerConnection,
        upstream: ClientConnection,
        link: Link,
        mirror: CloudSession,
    ) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in connection:
                frame = self._observe_client(link, mirror, message)
                if isinstance(frame, Hello) and frame.token in self.revoked:
                    refusal = Unauthorized("the token of this edge was revoked")
                    link.cloud_error = Error.from_exception(refusal)
                    await connection.send(CloudSession(version=mirror.version).refuse(refusal))
                    await connection.close(refusal.close_code, refusal.reason)
                    return
                await upstream.send(message)
        # The client closed (or dropped): pass its close code on to the cloud.
        code, reason = (1000, "")
        rcvd = connection.protocol.close_rcvd
        if rcvd is not None and rcvd.code not in (1005, 1006, 1015):
            code, reason = rcvd.code, rcvd.reason
        with contextlib.suppress(ConnectionClosed):
            await upstream.close(code, reason)

    def _observe_client(
        self, link: Link, mirror: CloudSession | None, message: bytes | str
    ) -> Frame | None:
        frame: Frame | None = None
        if mirror is not None and mirror.state is not SessionState.CLOSING:
            try:
                frame = _whole(mirror.receive_data(message))
                link.max_in_flight = max(link.max_in_flight, len(mirror.ledger.in_flight))
            except ProtocolError as exc:
                link.violations.append(f"{exc.code.value}: {exc}")
        if frame is None:
            with contextlib.suppress(ProtocolError):
                frame = decode_message(message, version=None, limits=_READ_ANY)[1]
        if frame is not None:
            link.from_client.append(frame)
            if isinstance(frame, Error):
                link.client_error = frame
        return frame

    async def _to_client(
        self,
        connection: ServerConnection,
        upstream: ClientConnection,
        link: Link,
        mirror: CloudSession,
    ) -> None:
        version = mirror.version
        with contextlib.suppress(ConnectionClosed):
            async for message in upstream:
                try:
                    written, frame = decode_message(message, version=None, limits=_READ_ANY)
                except ProtocolError as exc:
                    link.violations.append(f"the cloud sent what the kit cannot read: {exc}")
                    await connection.send(message)
                    continue
                version = version or written
                if isinstance(frame, Error):
                    link.cloud_error = frame
                altered = self._alter(link, frame)
                if altered is not frame:
                    frame = altered
                    message = encode_frame(frame, version=written)
                if isinstance(frame, Ack) and self.fault is Fault.DELAY_ACKS:
                    await asyncio.sleep(self.ack_delay_s)
                with contextlib.suppress(ProtocolError):
                    mirror.send(frame)
                link.to_client.append(frame)
                await connection.send(message)
                if await self._after_forward(connection, upstream, link, frame):
                    return
        # The cloud closed: pass its close code on to the client.
        rcvd = upstream.protocol.close_rcvd
        if rcvd is not None and rcvd.code not in (1005, 1006, 1015):
            with contextlib.suppress(ConnectionClosed):
                await connection.close(rcvd.code, rcvd.reason)
        else:
            with contextlib.suppress(ConnectionClosed):
                await connection.close(1011, "the cloud went away")

    # -- faults ----------------------------------------------------------------------------

    def _first_session(self, link: Link) -> bool:
        """Whether the fault may still strike: once per case, on the first session it can."""
        return not self._struck

    def _strike(self, link: Link, frame: Frame | None = None) -> None:
        self._struck = True
        link.fault_at = len(link.from_client)
        link.fault_frame = frame

    def _alter(self, link: Link, frame: Frame) -> Frame:
        """The frame the client receives instead of ``frame`` (the same one, mostly)."""
        if not self._first_session(link):
            return frame
        if self.fault is Fault.CORRUPT_DELTA:
            delta = frame.delta if isinstance(frame, Grad) else frame
            if isinstance(delta, Delta) and delta.tensors:
                corrupted = _corrupt(delta)
                self._strike(link, corrupted)
                if isinstance(frame, Grad):
                    return dataclasses.replace(frame, delta=corrupted)
                return corrupted
        if self.fault is Fault.BAD_SNAP_CHECKSUM and isinstance(frame, Snap):
            wrong = dataclasses.replace(
                frame, tensors=_raw(frame.tensors), checksum=frame.checksum ^ 1
            )
            self._strike(link, wrong)
            return wrong
        return frame

    async def _after_forward(
        self,
        connection: ServerConnection,
        upstream: ClientConnection,
        link: Link,
        frame: Frame,
    ) -> bool:
        """Faults that strike after a frame reached the client; True: the link is over."""
        if isinstance(frame, Ack):
            link.acks_forwarded += 1
        if not self._first_session(link):
            return False
        if self.fault is Fault.OVERSIZE and isinstance(frame, Grad):
            self._strike(link)
            limit = int(self.spec["limits"]["max_frame_bytes"])
            await connection.send(bytes(limit + 1))
            return False
        ready = isinstance(frame, Ack) and link.acks_forwarded >= _ACKS_BEFORE_FAULT
        if ready and self.fault is Fault.RESTART:
            self._strike(link)
            await connection.close(1012, "service restart")
            await upstream.close(1001, "the edge's link went away")
            return True
        if ready and self.fault is Fault.REVOKE:
            self._strike(link)
            hello = link.hello
            if hello is not None and hello.token is not None:
                self.revoked.add(hello.token)
            await connection.close(1008, "token revoked")
            await upstream.close(1000, "token revoked")
            return True
        return False

    def _record_close(self, connection: ServerConnection, link: Link) -> None:
        protocol = connection.protocol
        rcvd, sent = protocol.close_rcvd, protocol.close_sent
        if rcvd is not None and (sent is None or protocol.close_rcvd_then_sent):
            link.client_close = (rcvd.code, rcvd.reason)
        elif sent is not None:
            link.server_close = (sent.code, sent.reason)
        link.closed_at = time.monotonic()


def _whole(frames: list[Frame]) -> Frame | None:
    """The one message a list of session events came from (a piggyback rides on its host)."""
    if not frames:
        return None
    if len(frames) == 2 and isinstance(frames[1], Act):
        return dataclasses.replace(frames[1], egrad=frames[0])  # type: ignore[arg-type]
    return frames[-1]


def _raw(tensors: Mapping[str, WireTensor]) -> dict[str, WireTensor]:
    """The decoded values as ``raw`` tensors: re-encoding a lossy codec is not exact."""
    return {name: WireTensor(t.array.copy()) for name, t in tensors.items()}


def _corrupt(delta: Delta) -> Delta:
    """The DELTA with one value changed and its checksum kept: a replica that applies it is
    not the one the cloud mirrors (the checksum of §3.1 must catch it)."""
    tensors = _raw(delta.tensors)
    name = min(tensors, key=lambda n: n.encode("utf-8"))
    values = tensors[name].array.reshape(-1)
    if delta.kind == "xor":
        values[0] ^= 1  # one mantissa bit of one weight
    else:
        values[0] += np.asarray(0.5, dtype=values.dtype)  # far above any rounding
    return dataclasses.replace(delta, tensors=tensors)
