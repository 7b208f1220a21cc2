"""The cloud under fuzz: an in-process cloud, one driven session, and the oracles on it.

Shared by the random campaign (``test_fuzz_cloud_stream.py``) and the fixed reproducers of
its findings (``test_cloud_hostile_frames.py``).

The oracles (:func:`judge`), per session of a valid prefix and one hostile message:

- no crash: the endpoint never raises (uvicorn would turn that into close 1011 and a
  traceback in the log); no hang: the app asks for the next message or finishes within
  ``HANG_S``;
- a message a local :class:`CloudSession` mirror refuses is refused by the cloud with an
  ERROR of the same code and the matching close code; one the mirror accepts is processed
  or refused with a protocol close code, never 1011;
- every reply is a valid frame that the mirror's ``send`` accepts (session rules hold);
- **no state change**: after a refused message the master's version and every weight are
  bit-identical to before it; the master stays finite whatever was accepted.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import torch
from fuzz_asgi import AsgiWebSocket, Hang
from fuzz_frames import FrameFacts, signature_of, trace_of

from simultrain.cloud.app import create_app
from simultrain.cloud.settings import CloudSettings
from simultrain.shared.errors import ProtocolError, close_code_for
from simultrain.shared.protocol import (
    Bye,
    CloudSession,
    Error,
    Frame,
    Limits,
    decode_frame,
    encode_frame,
)
from simultrain.shared.training.config import RunConfig

__all__ = ["HANG_S", "RUN", "Cloud", "Session", "drive", "judge", "running_cloud"]

RUN = RunConfig(dataset="imu", steps=1)
HANG_S = 30.0
# Close codes a refusal may carry (PROTOCOL.md section 7): never 1011, which means the
# cloud failed for its own reasons.
PROTOCOL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1008, 1009, 4000, 4001, 4003})


@dataclasses.dataclass
class Cloud:
    """One in-process cloud with its lifespan running."""

    app: Any
    stack: contextlib.AsyncExitStack

    @property
    def service(self) -> Any:
        return self.app.state.service

    def master_state(self) -> tuple[int, torch.Tensor]:
        master = self.service.master
        flat = [t.detach().reshape(-1).double() for t in master.full_state().values()]
        return int(master.version), torch.cat(flat)

    def facts(self, edge_id: str, *, next_seq: int, batch: int) -> FrameFacts:
        weights = self.service.master.edge_weights()
        return FrameFacts(
            cut_shape=tuple(self.service.cut_shape),
            model_id=self.service.spec.model_id,
            edge_id=edge_id,
            batch=batch,
            next_seq=next_seq,
            answerable=(max(next_seq - 1, 0),),
            egrad_seq=max(next_seq - 1, 0),
            version=int(self.service.master.version),
            weights=tuple((name, tuple(t.shape)) for name, t in weights.items()),
            num_classes=self.service.spec.num_classes,
        )


@contextlib.asynccontextmanager
async def running_cloud() -> AsyncIterator[Cloud]:
    async with contextlib.AsyncExitStack() as stack:
        app = create_app(CloudSettings(), run=RUN)
        await stack.enter_async_context(app.router.lifespan_context(app))
        yield Cloud(app, stack)


@dataclasses.dataclass
class Session:
    """What one fuzz session sent, and what came back after each message."""

    scenario: str
    messages: list[bytes | str]  # valid prefix, then the hostile message
    replies: list[list[bytes | str]] = dataclasses.field(default_factory=list)
    closed_at: int | None = None  # index of the message after which the cloud closed
    close: tuple[int, str] | None = None
    before: tuple[int, torch.Tensor] | None = None  # master just before the hostile message
    after: tuple[int, torch.Tensor] | None = None
    crash: BaseException | None = None
    hang: bool = False
    bye_close: tuple[int, str] | None = None


async def drive(cloud: Cloud, session: Session) -> None:
    """Send the session's messages one by one, then a BYE; record everything."""
    ws = AsgiWebSocket(cloud.app, "/v1/stream")
    hostile_at = len(session.messages) - 1
    try:
        await ws.connect(timeout_s=HANG_S)
        for index, message in enumerate(session.messages):
            if ws.finished:
                break
            if index == hostile_at:
                session.before = cloud.master_state()
            seen = len(ws.received)
            ws.send(message)
            await ws.settle(timeout_s=HANG_S)
            session.replies.append(ws.received[seen:])
            if ws.closed is not None and session.closed_at is None:
                session.closed_at, session.close = index, (ws.closed.code, ws.closed.reason)
        session.after = cloud.master_state()
        if not ws.finished and ws.closed is None:
            ws.send(encode_frame(Bye(reason="fuzz session done")))
            await ws.settle(timeout_s=HANG_S)
            if ws.closed is not None:
                session.bye_close = (ws.closed.code, ws.closed.reason)
        if not ws.finished:
            ws.disconnect()
            await ws.settle(timeout_s=HANG_S)
    except Hang:
        session.hang = True
        await ws.abort()
    session.crash = ws.exception()


def _frames(replies: list[bytes | str]) -> list[Frame]:
    return [decode_frame(reply) for reply in replies]


Check = Callable[..., None]
"""``check(oracle, signature, detail, trace='')`` records one failed oracle."""


def judge(session: Session, limits: Limits, check: Check) -> None:
    """Apply the oracles to a driven session; ``check(oracle, signature, detail, trace="")``."""
    if session.hang:
        check("hang", session.scenario, f"no progress within {HANG_S}s")
        return
    if session.crash is not None:
        exc = session.crash
        check("crash", signature_of(exc), f"{type(exc).__name__}: {exc}"[:300], trace_of(exc))
    mirror = CloudSession(limits=limits)
    hostile_at = len(session.messages) - 1
    expected: ProtocolError | None = None
    for index, message in enumerate(session.messages):
        if index >= len(session.replies):
            break
        if index < hostile_at:
            mirror.receive_data(message)  # the valid prefix
        else:
            try:
                mirror.receive_data(message)
            except ProtocolError as exc:
                expected = exc
        try:
            replies = _frames(session.replies[index])
        except ProtocolError as exc:
            check("reply", type(exc).__name__, f"the cloud sent an invalid frame: {exc}")
            return
        refused_here = session.closed_at == index and session.close is not None
        if index < hostile_at and refused_here:
            check("prefix", session.scenario, f"valid prefix refused: {session.close}")
            return
        for frame in replies:
            if isinstance(frame, Error) and (refused_here or expected is not None):
                continue  # the refusal itself: checked below
            try:
                mirror.send(frame)
            except ProtocolError as exc:
                check("reply", f"{frame.type}:{type(exc).__name__}", f"{frame.type}: {exc}"[:200])
    if session.crash is not None:
        return
    assert session.before is not None and session.after is not None
    refused = session.closed_at == hostile_at and session.close is not None
    hostile_replies = session.replies[hostile_at] if len(session.replies) > hostile_at else []
    last = hostile_replies[-1] if hostile_replies else None
    error = decode_frame(last) if refused and last is not None else None
    if expected is not None:
        if not refused:
            check("refusal", expected.code.value, f"the cloud accepted what the protocol refuses: "
                  f"{expected.reason}"[:200])  # fmt: skip
        elif session.close is not None and (
            session.close[0] != expected.close_code
            or not isinstance(error, Error)
            or error.code != expected.code.value
        ):
            check("refusal", expected.code.value, f"expected ERROR {expected.code.value} + close "
                  f"{expected.close_code}, got {error!r:.80} + {session.close}")  # fmt: skip
    elif refused and session.close is not None:
        code = session.close[0]
        bye = isinstance(decode_frame(session.messages[-1]), Bye) if code == 1000 else False
        if code == 1000 and not bye:
            check("refusal", "1000", "closed 1000 without a BYE")
        if code != 1000 and (
            code not in PROTOCOL_CLOSE_CODES
            or not isinstance(error, Error)
            or close_code_for(error.code) != code
        ):
            check("refusal", str(code), f"refused an accepted frame with {session.close}, "
                  f"ERROR {error!r:.80}")  # fmt: skip
    # No state change: a refused message leaves the master bit-identical.
    (v0, w0), (v1, w1) = session.before, session.after
    if refused and (v0 != v1 or not torch.equal(w0, w1)):
        check(
            "state change", session.scenario, f"refused message changed the master: v{v0} -> v{v1}"
        )
    if not bool(torch.isfinite(w1).all()):
        check("corrupted master", session.scenario, f"master not finite after v{v0} -> v{v1}")
    if session.bye_close is not None and session.bye_close[0] != 1000:
        check("bye", str(session.bye_close[0]), f"BYE answered with {session.bye_close}")
