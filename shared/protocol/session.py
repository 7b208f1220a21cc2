"""Sans-I/O session state machines for the two ends of a stream: ``EdgeSession``, ``CloudSession``.

Shaped like python-websockets' ``protocol.py``: bytes in (:meth:`receive_data` returns the
frames they carry), frames out (:meth:`send` returns the bytes to write); no sockets, no
asyncio. A service's WebSocket handler is a thin loop around one session::

    session = CloudSession(limits=Limits(window=4))
    async for message in websocket:
        try:
            frames = session.receive_data(message)
        except ProtocolError as exc:
            await websocket.send(session.send(Error.from_exception(exc)))
            await websocket.close(session.close_code, session.close_reason)
            break
        for frame in frames:
            ...  # Hello → send(Welcome(...)), Act → send(Grad(...)), ...

States (``SessionState``)::

    CONNECTING ──HELLO, WELCOME──▶ OPEN ──ERROR, BYE or a refused frame──▶ CLOSING
         │                          │                                        │
         └─────────────── connection_closed() ───────────────────────────────┴──▶ CLOSED

Rules both sides enforce (PROTOCOL.md, "Session rules"), on frames received and on frames
sent alike:

- Every frame is of the session's major version (``version``, from the WebSocket
  subprotocol; a cloud offered none takes the ``v`` of the HELLO, PROTOCOL.md §1.1). An
  ERROR is read whatever its version, and the ERROR refusing a version is written in the
  peer's, so that either side can always tell the other why it ends the session.
- HELLO is the edge's first frame, WELCOME the cloud's answer; nothing else before them.
  WELCOME grants only capabilities HELLO offered; a message type of a capability that was
  not granted is refused (``illegal_transition``).
- ACT sequence numbers strictly increase and exceed WELCOME's ``acked_seq``; an ACT may not
  leave more than ``window`` batches in flight (docs/DESIGN.md §3.1). A batch is in flight from its
  ACT until an ACK covers it: the slot frees when its update is applied, not at its GRAD.
- A GRAD answers an unanswered ACT, with that ACT's batch size.
- EGRAD sequence numbers strictly increase, exceed ``acked_seq``, and name a batch whose
  GRAD arrived in this session and whose EGRAD has not (``egrad_needs_grad``; the modes that
  upload EGRADs without ACTs turn it off).
- ACK numbers strictly increase and never exceed the highest batch uploaded.

A frame received that breaks a rule raises the matching :class:`ProtocolError` and moves the
session to CLOSING with ``close_code`` and ``close_reason`` set; nothing else changes: the
bookkeeping (``ledger``) is computed in full before it replaces the old one, so a refused
frame never leaves a half-applied update. A frame the local side tries to *send* against a
rule raises the same error and changes nothing at all (the caller may wait and retry, e.g.
when the window is full). Frames arriving while CLOSING are discarded unread.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import ClassVar, Final

from simultrain.shared.errors import (
    CloseCode,
    EncodeError,
    FrameTooLarge,
    HandshakeRejected,
    IllegalTransition,
    InvalidTensor,
    MalformedFrame,
    ProtocolError,
    ProtocolVersionMismatch,
    UnexpectedSequence,
    WindowExceeded,
    close_code_for,
)
from simultrain.shared.protocol.codec import check_cut_shape, decode_message, encode_frame
from simultrain.shared.protocol.frames import (
    FRAME_TYPES,
    Ack,
    Act,
    Bye,
    ConfigValue,
    Delta,
    EGrad,
    Error,
    Frame,
    Grad,
    Hello,
    Snap,
    Welcome,
)
from simultrain.shared.protocol.limits import DEFAULT_LIMITS, Limits
from simultrain.shared.protocol.versions import (
    CAPABILITIES,
    CREDITS,
    PROTOCOL_VERSION,
    Capability,
    capability_of_frame,
    version_mismatch,
)

__all__ = ["CloudSession", "EdgeSession", "Ledger", "SessionState", "Side"]


class SessionState(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Side(enum.Enum):
    EDGE = "edge"
    CLOUD = "cloud"


_FRAME_CLASSES: Final = frozenset(FRAME_TYPES.values())
_SENT_BY: Final[dict[Side, frozenset[type[Frame]]]] = {
    Side.EDGE: frozenset({Hello, Act, EGrad, Error, Bye}),
    Side.CLOUD: frozenset({Welcome, Grad, Delta, Snap, Ack, Error, Bye}),
}


@dataclasses.dataclass(frozen=True, slots=True)
class Ledger:
    """The sequence bookkeeping of a session; replaced whole, never patched.

    ``unanswered`` holds (seq, batch size) of ACTs with neither GRAD nor covering ACK,
    ascending. ``in_flight`` holds the ACTs no ACK covers yet: they occupy the window
    (PROTOCOL.md §6.3). ``awaiting_egrad`` holds the ACTs answered by a GRAD whose EGRAD has
    not come (and no ACK covers them): the only batches an EGRAD may name in a split mode.
    The other fields are the highest ACT, EGRAD and ACK numbers seen (None: none), and
    ``credits``, the grant in force in a session with capability ``credits`` (PROTOCOL.md
    §6.7: WELCOME's value, then each ACK's that carries one; None without the capability).
    """

    unanswered: tuple[tuple[int, int], ...] = ()
    in_flight: tuple[int, ...] = ()
    awaiting_egrad: tuple[int, ...] = ()
    last_act_seq: int | None = None
    last_egrad_seq: int | None = None
    acked_seq: int | None = None
    credits: int | None = None

    @property
    def outstanding(self) -> tuple[int, ...]:
        return tuple(seq for seq, _ in self.unanswered)


def _highest(*values: int | None) -> int | None:
    present = [value for value in values if value is not None]
    return max(present) if present else None


def _after_act(ledger: Ledger, act: Act, window: int | None) -> Ledger:
    floor = _highest(ledger.last_act_seq, ledger.acked_seq)
    if floor is not None and act.seq <= floor:
        raise UnexpectedSequence(f"ACT {act.seq}: sequence numbers must exceed {floor}")
    # docs/DESIGN.md §3.1: wait when k − oldest_unacknowledged ≥ window, i.e. at most `window`
    # batches in flight from their ACT to the ACK that covers them; window 0 (split-sync)
    # still lets one through (Limits docstring).
    if window is not None and len(ledger.in_flight) >= max(window, 1):
        raise WindowExceeded(
            f"ACT {act.seq}: {len(ledger.in_flight)} batches not yet acknowledged, "
            f"window is {window}"
        )
    batch = act.activations.shape[0]
    return dataclasses.replace(
        ledger,
        unanswered=(*ledger.unanswered, (act.seq, batch)),
        in_flight=(*ledger.in_flight, act.seq),
        last_act_seq=act.seq,
    )


def _after_egrad(ledger: Ledger, egrad: EGrad, *, egrad_needs_grad: bool) -> Ledger:
    floor = _highest(ledger.last_egrad_seq, ledger.acked_seq)
    if floor is not None and egrad.seq <= floor:
        raise UnexpectedSequence(f"EGRAD {egrad.seq}: sequence numbers must exceed {floor}")
    if egrad.seq in ledger.outstanding:
        raise UnexpectedSequence(f"EGRAD {egrad.seq}: its batch has no GRAD yet")
    if egrad_needs_grad and egrad.seq not in ledger.awaiting_egrad:
        # docs/DESIGN.md §3.3: an edge-stage gradient comes from a cut gradient the cloud sent in
        # this session; one for any other batch would be applied to the master unasked.
        raise UnexpectedSequence(
            f"EGRAD {egrad.seq}: no ACT of this session was answered with that sequence "
            f"number (awaiting EGRAD: {list(ledger.awaiting_egrad)})"
        )
    return dataclasses.replace(
        ledger,
        last_egrad_seq=egrad.seq,
        awaiting_egrad=tuple(seq for seq in ledger.awaiting_egrad if seq != egrad.seq),
    )


def _after_grad(ledger: Ledger, grad: Grad) -> Ledger:
    batches = dict(ledger.unanswered)
    if grad.seq not in batches:
        raise UnexpectedSequence(
            f"GRAD {grad.seq}: no such ACT unanswered (outstanding: {list(ledger.outstanding)})"
        )
    if grad.cut_grad.shape[0] != batches[grad.seq]:
        raise InvalidTensor(
            f"grad.cut_grad: batch {grad.cut_grad.shape[0]}, its ACT had {batches[grad.seq]}"
        )
    remaining = tuple(item for item in ledger.unanswered if item[0] != grad.seq)
    return dataclasses.replace(
        ledger, unanswered=remaining, awaiting_egrad=(*ledger.awaiting_egrad, grad.seq)
    )


def _after_ack(ledger: Ledger, ack: Ack) -> Ledger:
    credits = ledger.credits
    if ack.credits is not None:
        # PROTOCOL.md §6.7: only in a session that granted `credits`, and at least one batch
        # (an edge with nothing in flight gets no ACK to learn a larger grant from).
        if credits is None:
            raise IllegalTransition("ACK carries credits, capability 'credits' not granted")
        if ack.credits < 1:
            raise MalformedFrame(f"ACK credits {ack.credits}: a grant is at least 1 batch")
        credits = ack.credits
    if ledger.acked_seq is not None and ack.seq <= ledger.acked_seq:
        raise UnexpectedSequence(f"ACK {ack.seq}: already acknowledged up to {ledger.acked_seq}")
    highest = _highest(ledger.last_act_seq, ledger.last_egrad_seq)
    if highest is None or ack.seq > highest:
        raise UnexpectedSequence(f"ACK {ack.seq}: no batch that high was uploaded ({highest})")
    return dataclasses.replace(
        ledger,
        unanswered=tuple(item for item in ledger.unanswered if item[0] > ack.seq),
        in_flight=tuple(seq for seq in ledger.in_flight if seq > ack.seq),
        awaiting_egrad=tuple(seq for seq in ledger.awaiting_egrad if seq > ack.seq),
        acked_seq=ack.seq,
        credits=credits,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _Update:
    """Everything one frame changes, computed before any of it is applied."""

    events: list[Frame]
    state: SessionState
    ledger: Ledger
    hello: Hello | None
    welcome: Welcome | None
    close: tuple[int, str] | None


class _Session:
    """What both ends share; :class:`EdgeSession` and :class:`CloudSession` pick a side."""

    side: ClassVar[Side]

    def __init__(
        self,
        *,
        limits: Limits = DEFAULT_LIMITS,
        egrad_needs_grad: bool = True,
        version: int | None = PROTOCOL_VERSION,
        registry: Mapping[str, Capability] = CAPABILITIES,
    ) -> None:
        self.limits = limits
        # False for the modes that upload EGRADs without ACTs (syncsgd, fedavg: PROTOCOL.md
        # §6.3); in every other mode an EGRAD must answer a GRAD of this session.
        self.egrad_needs_grad = egrad_needs_grad
        # The major version negotiated as the WebSocket subprotocol (PROTOCOL.md §1.1).
        # None only on a cloud whose edge offered none: its HELLO's `v` decides.
        self.version = version
        self.registry = registry
        self._error_version: int | None = None  # a refused peer's version: its ERROR's `v`
        self.state = SessionState.CONNECTING
        self.ledger = Ledger()
        self.hello: Hello | None = None
        self.welcome: Welcome | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None

    # -- read-only views ------------------------------------------------------------------

    @property
    def cut_shape(self) -> tuple[int, ...] | None:
        """The session's per-sample cut shape, once WELCOME has fixed it."""
        return self.welcome.cut_shape if self.welcome is not None else None

    @property
    def window(self) -> int | None:
        """Most ACTs this side lets be unanswered (None: unbounded, before WELCOME too)."""
        return self.welcome.window if self.welcome is not None else None

    @property
    def capabilities(self) -> Mapping[str, ConfigValue]:
        """The capabilities WELCOME granted, with their values (none before WELCOME)."""
        return self.welcome.capabilities if self.welcome is not None else {}

    @property
    def outstanding(self) -> tuple[int, ...]:
        """Sequence numbers of unanswered ACTs, ascending."""
        return self.ledger.outstanding

    @property
    def in_flight(self) -> tuple[int, ...]:
        """Sequence numbers of ACTs no ACK covers yet (they hold the window), ascending."""
        return self.ledger.in_flight

    @property
    def oldest_unanswered(self) -> int | None:
        return self.ledger.unanswered[0][0] if self.ledger.unanswered else None

    @property
    def acked_seq(self) -> int | None:
        """Every batch up to this sequence number is fully applied (WELCOME, then ACKs)."""
        return self.ledger.acked_seq

    # -- bytes in, frames out -------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview | str) -> list[Frame]:
        """Decode one WebSocket message and check it against the session.

        Returns its frames in the order the peer produced them: a piggybacked EGRAD before
        the ACT that carried it, a piggybacked DELTA before its GRAD (both returned without
        the piggyback). Returns ``[]`` while CLOSING. Raises a :class:`ProtocolError` after
        moving to CLOSING with ``close_code`` and ``close_reason`` set.
        """
        if self.state is SessionState.CLOSED:
            raise IllegalTransition("data received after the connection closed")
        if self.state is SessionState.CLOSING:
            return []
        try:
            try:
                written, frame = decode_message(
                    data, limits=self.limits, cut_shape=self.cut_shape, version=self.version
                )
            except ProtocolVersionMismatch as exc:
                self._error_version = exc.peer_version
                if self.version is None and self.side is Side.CLOUD:
                    # An edge that offered no subprotocol and writes another version: the
                    # first release did (PROTOCOL.md §1.1). Tell it what to do, in its `v`.
                    versions = [] if exc.peer_version is None else [exc.peer_version]
                    raise version_mismatch(versions) from exc
                raise
            update = self._plan(frame, outgoing=False)
        except ProtocolError as exc:
            self.state = SessionState.CLOSING
            self.close_code, self.close_reason = exc.close_code, exc.reason
            raise
        if self.version is None and not isinstance(frame, Error):
            self.version = written  # the HELLO's `v`, a version this side speaks
        self._commit(update)
        return update.events

    def send(self, frame: Frame) -> bytes:
        """Check ``frame`` against the session, encode it and account for it.

        Returns the bytes of one binary WebSocket message. Raises the error the peer would
        raise (e.g. :class:`WindowExceeded`), or :class:`EncodeError`, and then changes
        nothing. ERROR and BYE move the session to CLOSING; they are allowed while closing.
        """
        if type(frame) not in _FRAME_CLASSES:
            raise EncodeError(f"not a frame: {type(frame).__name__}")
        if self.state is SessionState.CLOSED:
            raise IllegalTransition(f"cannot send {frame.type.upper()}: the connection closed")
        update = self._plan(frame, outgoing=True)
        if self.state is SessionState.OPEN and self.cut_shape is not None:
            check_cut_shape(frame, self.cut_shape)
        version = self.version or PROTOCOL_VERSION
        if isinstance(frame, Error) and self._error_version is not None:
            version = self._error_version
        data: bytes = encode_frame(frame, version=version)
        limit = self.limits.max_frame_bytes
        if limit is not None and len(data) > limit:
            raise FrameTooLarge(
                f"{frame.type.upper()} of {len(data)} bytes exceeds max_frame_bytes {limit}"
            )
        self._commit(update)
        return data

    def refuse(self, exc: ProtocolError) -> bytes:
        """The ERROR that ends the session because of ``exc``: the bytes to send before
        closing the WebSocket with ``close_code``.

        A refused version is answered in the version the peer wrote or offered, so that a
        peer of another version can read why (PROTOCOL.md §1.1).
        """
        if isinstance(exc, ProtocolVersionMismatch) and exc.peer_version is not None:
            self._error_version = exc.peer_version
        data = self.send(Error.from_exception(exc))
        if self.close_code is None:
            self.close_code, self.close_reason = exc.close_code, exc.reason
        return data

    def connection_closed(self) -> None:
        """The transport is gone (after a close handshake or not): the session is CLOSED.

        Idempotent, so a transport adapter may call it from a ``finally`` block.
        """
        self.state = SessionState.CLOSED

    # -- rules ----------------------------------------------------------------------------

    def _plan(self, frame: Frame, *, outgoing: bool) -> _Update:
        sender = self.side if outgoing else _peer(self.side)
        name = frame.type.upper()
        if type(frame) not in _SENT_BY[sender]:
            raise IllegalTransition(f"{name} is never sent by the {sender.value}")
        capability = capability_of_frame(frame.type, registry=self.registry)
        if capability is not None and capability not in self.capabilities:
            raise IllegalTransition(
                f"{name} belongs to capability {capability!r}, not granted in this session"
            )
        update = _Update(
            events=[frame],
            state=self.state,
            ledger=self.ledger,
            hello=self.hello,
            welcome=self.welcome,
            close=None,
        )
        if isinstance(frame, Error | Bye):
            if self.state is SessionState.CLOSING:
                return update
            close = (
                (close_code_for(frame.code), frame.reason)
                if isinstance(frame, Error)
                else (int(CloseCode.NORMAL_CLOSURE), frame.reason)
            )
            return dataclasses.replace(update, state=SessionState.CLOSING, close=close)
        if self.state is SessionState.CLOSING:
            raise IllegalTransition(f"cannot send {name}: the session is closing")
        if self.state is SessionState.CONNECTING:
            return self._plan_handshake(frame, update, outgoing=outgoing)
        if isinstance(frame, Hello | Welcome):
            raise IllegalTransition(f"{name} after the handshake")
        return self._plan_open(frame, update, outgoing=outgoing)

    def _plan_handshake(self, frame: Frame, update: _Update, *, outgoing: bool) -> _Update:
        if isinstance(frame, Hello):
            if self.hello is not None:
                raise IllegalTransition("a second HELLO")
            return dataclasses.replace(update, hello=frame)
        if not isinstance(frame, Welcome):
            raise IllegalTransition(f"{frame.type.upper()} before the handshake completed")
        if self.hello is None:
            raise IllegalTransition("WELCOME before HELLO")
        if frame.cut_shape != self.hello.cut_shape:
            raise HandshakeRejected(
                f"WELCOME cut_shape {list(frame.cut_shape)} differs from HELLO's "
                f"{list(self.hello.cut_shape)}"
            )
        unoffered = sorted(set(frame.capabilities) - set(self.hello.capabilities))
        if unoffered:
            raise HandshakeRejected(
                f"WELCOME grants capabilities HELLO did not offer: {', '.join(unoffered)}"
            )
        limit = self.limits.window
        if outgoing and limit is not None and (frame.window is None or frame.window > limit):
            raise WindowExceeded(f"WELCOME window {frame.window} exceeds limits.window {limit}")
        credits = frame.capabilities.get(CREDITS)
        if CREDITS in frame.capabilities and (
            isinstance(credits, bool) or not isinstance(credits, int) or credits < 1
        ):
            raise HandshakeRejected(f"WELCOME credits {credits!r}: a grant is a uint ≥ 1 (§6.7)")
        return dataclasses.replace(
            update,
            state=SessionState.OPEN,
            welcome=frame,
            ledger=Ledger(
                acked_seq=frame.acked_seq, credits=credits if isinstance(credits, int) else None
            ),
        )

    def _plan_open(self, frame: Frame, update: _Update, *, outgoing: bool) -> _Update:
        ledger = self.ledger
        events: list[Frame] = [frame]
        if isinstance(frame, Act):
            if frame.egrad is not None:
                ledger = _after_egrad(ledger, frame.egrad, egrad_needs_grad=self.egrad_needs_grad)
                events = [frame.egrad, dataclasses.replace(frame, egrad=None)]
            ledger = _after_act(ledger, frame, self.window)
        elif isinstance(frame, EGrad):
            ledger = _after_egrad(ledger, frame, egrad_needs_grad=self.egrad_needs_grad)
        elif isinstance(frame, Grad):
            ledger = _after_grad(ledger, frame)
            if frame.delta is not None:
                events = [frame.delta, dataclasses.replace(frame, delta=None)]
        elif isinstance(frame, Ack):
            ledger = _after_ack(ledger, frame)
        # DELTA and SNAP change no bookkeeping: deltas are reordered by the training layer
        # (docs/DESIGN.md §3.5), snapshots may be taken at any version.
        return dataclasses.replace(update, events=events, ledger=ledger)

    def _commit(self, update: _Update) -> None:
        self.state = update.state
        self.ledger = update.ledger
        self.hello = update.hello
        self.welcome = update.welcome
        if update.close is not None and self.close_code is None:
            self.close_code, self.close_reason = update.close


def _peer(side: Side) -> Side:
    return Side.CLOUD if side is Side.EDGE else Side.EDGE


class EdgeSession(_Session):
    """The edge's end: sends HELLO, ACT, EGRAD; receives WELCOME, GRAD, DELTA, SNAP, ACK.

    The window it keeps to is the smallest of WELCOME's, its own ``limits.window`` and,
    with capability ``credits``, the grant in force (PROTOCOL.md §6.7).
    """

    side = Side.EDGE

    @property
    def window(self) -> int | None:
        granted = super().window
        if self.welcome is None:
            return granted
        bounds = [b for b in (granted, self.limits.window, self.ledger.credits) if b is not None]
        return min(bounds) if bounds else None

    def can_send_act(self) -> bool:
        """Whether the window lets one more ACT go now (docs/DESIGN.md §3.1)."""
        if self.state is not SessionState.OPEN:
            return False
        window = self.window
        return window is None or len(self.ledger.in_flight) < max(window, 1)


class CloudSession(_Session):
    """The cloud's end: receives HELLO, ACT, EGRAD; sends WELCOME, GRAD, DELTA, SNAP, ACK.

    The window it enforces is the one its WELCOME granted, at most ``limits.window``.
    """

    side = Side.CLOUD
