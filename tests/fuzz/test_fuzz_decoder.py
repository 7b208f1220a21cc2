"""Mutation fuzzing of the sans-I/O decoder and sessions (PROTOCOL.md §4.2, §5).

Each message (``fuzz_frames.hostile_message``) goes through four checks:

1. ``decode_frame`` returns a frame or raises a :class:`ProtocolError` whose close code is the
   one of its code and whose reason fits a close frame; nothing else escapes, and no message
   takes longer than ``HANG_S`` (a hang).
2. A frame it accepts can be sent back: ``encode_frame`` takes it and decoding that gives the
   same frame (lossless codecs); its arrays never alias the message's buffer.
3. A :class:`CloudSession` and an :class:`EdgeSession`, each in a realistic state, either
   return events or refuse; a refusal raises the same error as the decoder when the decoder
   refused, moves the session to CLOSING with that close code and changes nothing else.
4. Memory: the peak resident size of the run grows by less than ``MAX_RSS_GROWTH`` (a bomb
   that got inflated would show here).

``test_decoder_fuzz_smoke`` runs a few thousand messages in the default suite with a fixed
seed; ``test_decoder_fuzz_campaign`` (``make fuzz``) runs ``SIMULTRAIN_FUZZ_FRAMES`` messages
(default 100 000) with ``SIMULTRAIN_FUZZ_SEED`` (default: random, printed).
"""

from __future__ import annotations

import copy
import os
import resource
import secrets
import time
from typing import Any

import numpy as np
import pytest
from fuzz_frames import Findings, FrameFacts, Message, hostile_message, signature_of, trace_of

from simultrain.shared.errors import (
    HandshakeRejected,
    IllegalTransition,
    InvalidTensor,
    ProtocolError,
    UnexpectedSequence,
    WindowExceeded,
    close_code_for,
)
from simultrain.shared.protocol import (
    Act,
    CloudSession,
    EdgeSession,
    Frame,
    Grad,
    Hello,
    Limits,
    SessionState,
    Welcome,
    WireTensor,
    decode_frame,
    encode_frame,
)

CUT_SHAPE = (2, 3)
FACTS = FrameFacts(cut_shape=CUT_SHAPE)
# Small limits make every "too large" path cheap to reach; the lz4 bombs of up to 16 MiB
# in fuzz_frames straddle max_decompressed_bytes.
LIMITS = Limits(
    max_frame_bytes=1 << 20,
    max_decompressed_bytes=8 << 20,
    max_tensor_elements=1 << 21,
    max_weight_tensors=64,
    window=2,
)
HANG_S = 2.0
MAX_RSS_GROWTH = 1 << 30
SESSION_RULES = (IllegalTransition, UnexpectedSequence, WindowExceeded, HandshakeRejected)
REPLAY = (
    "decode_frame(hostile_message({seed!r}, {index}, FACTS).data, limits=LIMITS, "
    "cut_shape=CUT_SHAPE)  # tests/fuzz/test_fuzz_decoder.py"
)


def _tensor(shape: tuple[int, ...]) -> WireTensor:
    return WireTensor(np.arange(np.prod(shape), dtype=np.float32).reshape(shape) / 8)


def _act(seq: int) -> Act:
    return Act(
        seq=seq,
        edge_version=FACTS.version,
        activations=_tensor((FACTS.batch, *CUT_SHAPE)),
        labels=WireTensor(np.arange(FACTS.batch, dtype=np.int64)),
    )


def _grad(seq: int) -> Grad:
    return Grad(seq=seq, master_version=FACTS.version, cut_grad=_tensor((2, *CUT_SHAPE)), loss=1.0)


def _session_templates() -> dict[str, CloudSession | EdgeSession]:
    """Sessions in the states FACTS describes, reached through real bytes.

    After the handshake (window 2) the edge sent ACT 1 and 2 and the cloud answered ACT 1:
    ACT 3 is next, GRAD 2 answers, EGRAD 1 is due. Sessions hold only immutable values, so
    a shallow copy of a template is an independent session.
    """
    hello = Hello(edge_id=FACTS.edge_id, model_id=FACTS.model_id, cut_shape=CUT_SHAPE)
    welcome = Welcome(session_id="s", master_version=FACTS.version, cut_shape=CUT_SHAPE, window=2)
    cloud_new = CloudSession(limits=LIMITS)
    edge_new = EdgeSession(limits=LIMITS)
    cloud, edge = CloudSession(limits=LIMITS), EdgeSession(limits=LIMITS)
    cloud.receive_data(edge.send(hello))
    edge_hello = copy.copy(edge)
    edge.receive_data(cloud.send(welcome))
    cloud.receive_data(edge.send(_act(1)))
    cloud.receive_data(edge.send(_act(2)))
    edge.receive_data(cloud.send(_grad(1)))
    assert cloud.outstanding == edge.outstanding == (2,)
    return {"cloud_new": cloud_new, "cloud": cloud, "edge_new": edge_new, "edge_hello": edge_hello,
            "edge": edge}  # fmt: skip


TEMPLATES = _session_templates()


def _has_lossy_int8(frame: Frame | None) -> bool:
    if frame is None:
        return False
    for value in vars_of(frame).values():
        if isinstance(value, WireTensor) and value.codec.value == "int8":
            return True
        if isinstance(value, dict) and any(
            isinstance(t, WireTensor) and t.codec.value == "int8" for t in value.values()
        ):
            return True
        if hasattr(value, "type") and _has_lossy_int8(value):
            return True
    return False


def vars_of(frame: Any) -> dict[str, Any]:
    return {name: getattr(frame, name) for name in frame.__dataclass_fields__}


def _arrays(frame: Any) -> list[np.ndarray]:
    out = []
    for value in vars_of(frame).values():
        if isinstance(value, WireTensor):
            out.append(value.array)
        elif isinstance(value, dict):
            out += [t.array for t in value.values() if isinstance(t, WireTensor)]
        elif hasattr(value, "__dataclass_fields__"):
            out += _arrays(value)
    return out


def _check_error(exc: ProtocolError) -> str | None:
    if exc.close_code != close_code_for(exc.code.value):
        return f"close code {exc.close_code} is not the one of {exc.code.value}"
    if len(exc.reason.encode("utf-8")) > 123:
        return "reason longer than a close frame allows"
    return None


def _decode(data: bytes | str, cut_shape: tuple[int, ...] | None) -> Frame | ProtocolError:
    try:
        return decode_frame(data, limits=LIMITS, cut_shape=cut_shape)
    except ProtocolError as exc:
        return exc


def check_message(index: int, message: Message, findings: Findings) -> None:
    """Run every oracle on one message, recording what fails."""
    data = message.data

    def fail(oracle: str, signature: str, detail: str, trace: str = "") -> None:
        findings.add(oracle, signature, detail, index, message, trace)

    # 1. The decoder: a frame or a ProtocolError, in bounded time.
    buffer = bytearray(data) if isinstance(data, bytes) else data
    started = time.perf_counter()
    try:
        decoded: Frame | ProtocolError = decode_frame(buffer, limits=LIMITS, cut_shape=CUT_SHAPE)
    except ProtocolError as exc:
        decoded = exc
    except Exception as exc:  # noqa: BLE001 - the oracle: anything else is a crash
        fail(
            "decoder crash", signature_of(exc), f"{type(exc).__name__}: {exc}"[:200], trace_of(exc)
        )
        return
    elapsed = time.perf_counter() - started
    if elapsed > HANG_S:
        fail("decoder hang", message.seed_type, f"decode took {elapsed:.1f}s")
    if isinstance(decoded, ProtocolError):
        problem = _check_error(decoded)
        if problem:
            fail("error contract", type(decoded).__name__, problem)
    else:
        # 2. Accepted: never aliasing the buffer, and sendable as it is.
        arrays = _arrays(decoded)
        copies = [a.copy() for a in arrays]
        if isinstance(buffer, bytearray):
            buffer[:] = bytes(len(buffer))
        if not all(np.array_equal(a, c) for a, c in zip(arrays, copies, strict=True)):
            fail("aliasing", decoded.type, "a decoded array changed with the message buffer")
        try:
            again = decode_frame(encode_frame(decoded), limits=LIMITS, cut_shape=CUT_SHAPE)
        except Exception as exc:  # noqa: BLE001 - accepted frames must survive a round trip
            fail("round trip", signature_of(exc), f"{decoded.type}: {exc}"[:200], trace_of(exc))
        else:
            if again != decoded and not _has_lossy_int8(decoded):
                fail("round trip", decoded.type, "decode(encode(frame)) != frame")

    # 3. Sessions in realistic states: refusals change nothing but the state.
    for name, template in TEMPLATES.items():
        session = copy.copy(template)
        before = (session.ledger, session.hello, session.welcome)
        expected = decoded if session.cut_shape == CUT_SHAPE else _decode(data, session.cut_shape)
        try:
            events = session.receive_data(data)
        except ProtocolError as exc:
            if isinstance(expected, ProtocolError) and type(exc) is not type(expected):
                fail(
                    "session",
                    name,
                    f"raised {type(exc).__name__}, decoder {type(expected).__name__}",
                )
            if not isinstance(expected, ProtocolError) and not isinstance(
                exc, (*SESSION_RULES, InvalidTensor)
            ):
                fail("session", name, f"refused a decodable frame with {type(exc).__name__}")
            if session.state is not SessionState.CLOSING:
                fail("session", name, f"state {session.state} after a refusal")
            if (session.close_code, session.close_reason) != (exc.close_code, exc.reason):
                fail("session", name, "close code/reason differ from the error's")
            if (session.ledger, session.hello, session.welcome) != before:
                fail("state change", name, f"refused {type(exc).__name__} changed the session")
        except Exception as exc:  # noqa: BLE001 - the oracle: anything else is a crash
            fail("session crash", signature_of(exc), f"{name}: {exc}"[:200], trace_of(exc))
        else:
            if isinstance(expected, ProtocolError):
                fail("session", name, f"accepted what the decoder refused ({expected.code})")
            states = (SessionState.OPEN, SessionState.CLOSING)
            if isinstance(events[0] if events else None, Hello):
                states = (SessionState.CONNECTING,)  # WELCOME, the cloud's answer, opens it
            if not events or session.state not in states:
                fail("session", name, f"accepted with events {events} in state {session.state}")


def run_campaign(seed: int | str, count: int) -> tuple[Findings, float, int]:
    findings = Findings(seed)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    for index in range(count):
        check_message(index, hostile_message(seed, index, FACTS), findings)
    elapsed = time.perf_counter() - started
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    if growth > MAX_RSS_GROWTH:
        findings.add("memory", "rss", f"peak RSS grew by {growth >> 20} MiB", -1,
                     Message(b"", "-", ()))  # fmt: skip
    return findings, elapsed, growth


def test_decoder_fuzz_smoke() -> None:
    """Default suite: 3 000 messages, fixed seed, a few seconds."""
    findings, _, _ = run_campaign("smoke-2026", 3_000)
    assert not findings, findings.report(replay=REPLAY)


@pytest.mark.fuzz
@pytest.mark.timeout(3600)
def test_decoder_fuzz_campaign(capsys: pytest.CaptureFixture[str]) -> None:
    seed = os.environ.get("SIMULTRAIN_FUZZ_SEED") or str(secrets.randbits(32))
    count = int(os.environ.get("SIMULTRAIN_FUZZ_FRAMES", "100000"))
    findings, elapsed, growth = run_campaign(seed, count)
    with capsys.disabled():
        print(
            f"\ndecoder fuzz: {count} messages, seed {seed}, {elapsed:.1f}s "
            f"({count / elapsed:.0f}/s), peak RSS +{growth >> 20} MiB, "
            f"{len(findings.by_signature)} finding(s)"
        )
    assert not findings, findings.report(replay=REPLAY)
