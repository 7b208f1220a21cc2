"""Hostile input: each refusal has its documented class, code and close code, and changes nothing.

PROTOCOL.md §4.2 and §7: truncated msgpack, wrong field types, unknown type, oversized frame,
lz4 bomb, wrong shape or dtype, NaN/Inf, protocol version mismatch each raise the documented
error and code, none crashes or changes any state. PROTOCOL.md §5: limits on frame size and
decompressed size; a small fuzz run here (the large campaign lives with the services).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import lz4.frame
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simultrain.shared.errors import (
    DecompressedTooLarge,
    FrameTooLarge,
    IllegalTransition,
    InvalidTensor,
    MalformedFrame,
    NonFiniteTensor,
    ProtocolError,
    ProtocolVersionMismatch,
    UnexpectedSequence,
    UnknownMessageType,
    WindowExceeded,
)
from simultrain.shared.protocol import (
    CloudSession,
    EdgeSession,
    Limits,
    SessionState,
    WireTensor,
    decode_frame,
    encode_frame,
)

if TYPE_CHECKING:
    from conftest import Builders

# A small frame limit and tensor set limit make "too large" cheap to show.
LIMITS = Limits(max_frame_bytes=64 << 10, max_weight_tensors=8, window=2)


def _mutated_act(mutate: Callable[[dict[str, Any]], None]) -> Callable[[Builders], bytes]:
    def make(build: Builders) -> bytes:
        wire = build.wire_of(build.act(1, egrad=build.egrad(0)))
        mutate(wire)
        return build.pack(wire)

    return make


def _set(*path_and_value: Any) -> Callable[[dict[str, Any]], None]:
    *path, value = path_and_value

    def mutate(wire: dict[str, Any]) -> None:
        for key in path[:-1]:
            wire = wire[key]
        if value is _DELETE:
            del wire[path[-1]]
        else:
            wire[path[-1]] = value

    return mutate


_DELETE = object()
NAN = np.array([[np.nan, 1.0], [2.0, 3.0]], np.float32).tobytes()
INF16 = np.array([[np.inf, 1.0], [2.0, 3.0]], np.float16).tobytes()


def _lz4_bomb(nbytes: int) -> bytes:
    compressor = lz4.frame.LZ4FrameCompressor()
    chunk = bytes(16 << 20)
    parts = [compressor.begin(), *(compressor.compress(chunk) for _ in range(nbytes // len(chunk)))]
    return b"".join([*parts, compressor.flush()])


BOMB = _lz4_bomb(1 << 30)  # 1 GiB of zeros in ~4 MB; fits 64 MiB frames, not LIMITS' 64 KiB

# (id, bytes builder, limits, expected class, code, close code)
CASES: list[tuple[str, Callable[[Builders], Any], Limits, type[ProtocolError], str, int]] = [
    (
        "truncated msgpack",
        lambda b: encode_frame(b.act(1))[:-7],
        LIMITS,
        MalformedFrame,
        "malformed_frame",
        1002,
    ),
    ("empty message", lambda b: b"", LIMITS, MalformedFrame, "malformed_frame", 1002),
    (
        "trailing bytes",
        lambda b: encode_frame(b.act(1)) + b"\xc0",
        LIMITS,
        MalformedFrame,
        "malformed_frame",
        1002,
    ),
    ("not a map", lambda b: b.pack([1, "act"]), LIMITS, MalformedFrame, "malformed_frame", 1002),
    (
        "invalid utf-8",
        lambda b: b"\x81\xa1v\xa2\xff\xfe",
        LIMITS,
        MalformedFrame,
        "malformed_frame",
        1002,
    ),
    (
        "ext type",
        lambda b: b"\x81\xa1v\xd4\x01\x00",
        LIMITS,
        MalformedFrame,
        "malformed_frame",
        1002,
    ),
    ("int map key", lambda b: b"\x81\x01\x01", LIMITS, MalformedFrame, "malformed_frame", 1002),
    ("deep nesting", lambda b: b"\x91" * 60_000, LIMITS, MalformedFrame, "malformed_frame", 1002),
    (
        "seq is a string",
        _mutated_act(_set("seq", "1")),
        LIMITS,
        MalformedFrame,
        "malformed_frame",
        1002,
    ),
    (
        "seq is a bool",
        _mutated_act(_set("seq", True)),
        LIMITS,
        MalformedFrame,
        "malformed_frame",
        1002,
    ),
    (
        "seq is negative",
        _mutated_act(_set("seq", -1)),
        LIMITS,
        MalformedFrame,
        "malformed_frame",
        1002,
    ),
    (
        "seq beyond int64",
        _mutated_act(_set("seq", (1 << 64) - 1)),
        LIMITS,
        MalformedFrame,
        "malformed_frame",
        1002,
    ),
    (
        "labels is a list",
        _mutated_act(_set("labels", [1, 0])),
        LIMITS,
        MalformedFrame,
        "malformed_frame",
        1002,
    ),
    (
        "missing field",
        _mutated_act(_set("edge_version", _DELETE)),
        LIMITS,
        MalformedFrame,
        "malformed_frame",
        1002,
    ),
    (
        "extra field",
        _mutated_act(_set("raw", b"x")),
        LIMITS,
        MalformedFrame,
        "malformed_frame",
        1002,
    ),
    (
        "missing type",
        _mutated_act(_set("t", _DELETE)),
        LIMITS,
        MalformedFrame,
        "malformed_frame",
        1002,
    ),
    (
        "type not a string",
        _mutated_act(_set("t", 7)),
        LIMITS,
        MalformedFrame,
        "malformed_frame",
        1002,
    ),
    (
        "unknown type",
        _mutated_act(_set("t", "activations")),
        LIMITS,
        UnknownMessageType,
        "unknown_message_type",
        1003,
    ),
    (
        "text message",
        lambda b: '{"t": "act"}',
        LIMITS,
        UnknownMessageType,
        "unknown_message_type",
        1003,
    ),
    (
        "version mismatch",
        _mutated_act(_set("v", 1)),
        LIMITS,
        ProtocolVersionMismatch,
        "protocol_version_mismatch",
        4000,
    ),
    (
        "version missing",
        _mutated_act(_set("v", _DELETE)),
        LIMITS,
        MalformedFrame,
        "malformed_frame",
        1002,
    ),
    (
        "oversized frame",
        lambda b: encode_frame(
            dataclasses.replace(
                b.act(1),
                activations=b.tensor((9000, 2)),
                labels=WireTensor(np.zeros(9000, np.int64)),
            )
        ),
        LIMITS,
        FrameTooLarge,
        "frame_too_large",
        1009,
    ),
    (
        "too many tensors",
        lambda b: encode_frame(
            dataclasses.replace(b.egrad(0), grads={f"w{i}": b.tensor((1,)) for i in range(9)})
        ),
        LIMITS,
        FrameTooLarge,
        "frame_too_large",
        1009,
    ),
    (
        "huge msgpack map",
        lambda b: b.pack(
            {
                "v": 1,
                "t": "egrad",
                "seq": 0,
                "edge_version": 0,
                "grads": {f"w{i}": 0 for i in range(300)},
            }
        ),
        LIMITS,
        FrameTooLarge,
        "frame_too_large",
        1009,
    ),
    (
        "lz4 bomb, small shape",
        _mutated_act(
            _set("activations", {"dtype": "float32", "shape": [2, 2], "codec": "lz4", "data": BOMB})
        ),
        Limits(window=2),
        DecompressedTooLarge,
        "decompressed_too_large",
        1009,
    ),
    (
        "lz4 bomb, huge shape",
        _mutated_act(
            _set(
                "activations",
                {"dtype": "float32", "shape": [1 << 27, 2], "codec": "lz4", "data": BOMB},
            )
        ),
        Limits(window=2),
        DecompressedTooLarge,
        "decompressed_too_large",
        1009,
    ),
    (
        "bomb in piggyback",
        _mutated_act(
            _set(
                "egrad",
                "grads",
                "conv.bias",
                {"dtype": "float32", "shape": [3], "codec": "lz4", "data": BOMB},
            )
        ),
        Limits(window=2),
        DecompressedTooLarge,
        "decompressed_too_large",
        1009,
    ),
    (
        "wrong cut shape",
        lambda b: encode_frame(dataclasses.replace(b.act(1), activations=b.tensor((2, 3)))),
        LIMITS,
        InvalidTensor,
        "invalid_tensor",
        1007,
    ),
    (
        "activations rank 1",
        _mutated_act(_set("activations", "shape", [4])),
        LIMITS,
        InvalidTensor,
        "invalid_tensor",
        1007,
    ),
    (
        "labels wrong dtype",
        _mutated_act(_set("labels", "dtype", "float64")),
        LIMITS,
        InvalidTensor,
        "invalid_tensor",
        1007,
    ),
    (
        "labels wrong batch",
        _mutated_act(_set("labels", "shape", [1])),
        LIMITS,
        InvalidTensor,
        "invalid_tensor",
        1007,
    ),
    (
        "unknown dtype",
        _mutated_act(_set("activations", "dtype", "bfloat16")),
        LIMITS,
        InvalidTensor,
        "invalid_tensor",
        1007,
    ),
    (
        "data too short",
        _mutated_act(_set("activations", "data", b"\0" * 15)),
        LIMITS,
        InvalidTensor,
        "invalid_tensor",
        1007,
    ),
    (
        "NaN activations",
        _mutated_act(_set("activations", "data", NAN)),
        LIMITS,
        NonFiniteTensor,
        "non_finite_tensor",
        1007,
    ),
    (
        "Inf in fp16",
        _mutated_act(
            _set(
                "activations", {"dtype": "float32", "shape": [2, 2], "codec": "fp16", "data": INF16}
            )
        ),
        LIMITS,
        NonFiniteTensor,
        "non_finite_tensor",
        1007,
    ),
    (
        "NaN in piggyback",
        _mutated_act(_set("egrad", "grads", "conv.weight", "data", NAN + NAN[:8])),
        LIMITS,
        NonFiniteTensor,
        "non_finite_tensor",
        1007,
    ),
    (
        "GRAD from an edge",
        lambda b: encode_frame(b.grad(1)),
        LIMITS,
        IllegalTransition,
        "illegal_transition",
        1002,
    ),
    (
        "second HELLO",
        lambda b: encode_frame(b.hello()),
        LIMITS,
        IllegalTransition,
        "illegal_transition",
        1002,
    ),
    (
        "repeated ACT seq",
        lambda b: encode_frame(b.act(0)),
        LIMITS,
        UnexpectedSequence,
        "unexpected_sequence",
        1002,
    ),
    (
        "EGRAD before its GRAD",
        lambda b: encode_frame(b.egrad(1)),
        LIMITS,
        UnexpectedSequence,
        "unexpected_sequence",
        1002,
    ),
    (
        "window exceeded",
        lambda b: encode_frame(b.act(9)),
        Limits(window=2),
        WindowExceeded,
        "window_exceeded",
        1008,
    ),
]


def _open_cloud(build: Builders, limits: Limits) -> CloudSession:
    """A cloud session mid-stream: ACT 0 and ACT 1 seen, GRAD 0 sent, ACT 1 unanswered; no
    ACK yet, so both batches are in flight (a window of 2 is full)."""
    edge = EdgeSession(limits=limits)
    cloud = CloudSession(limits=limits)
    cloud.receive_data(edge.send(build.hello()))
    edge.receive_data(cloud.send(build.welcome(window=limits.window)))
    cloud.receive_data(edge.send(build.act(0)))
    edge.receive_data(cloud.send(build.grad(0)))
    cloud.receive_data(edge.send(build.act(1)))
    return cloud


@pytest.mark.parametrize(
    ("name", "make", "limits", "error", "code", "close_code"), CASES, ids=[c[0] for c in CASES]
)
def test_hostile_frame_is_refused_with_its_code_and_changes_no_state(
    build: Builders,
    name: str,
    make: Callable[[Builders], Any],
    limits: Limits,
    error: type[ProtocolError],
    code: str,
    close_code: int,
) -> None:
    data = make(build)
    session_rule = error in (IllegalTransition, UnexpectedSequence, WindowExceeded)
    if not session_rule:
        with pytest.raises(error) as info:
            decode_frame(data, limits=limits, cut_shape=build.cut_shape)
        assert type(info.value) is error
        assert (info.value.code, info.value.close_code) == (code, close_code)

    cloud = _open_cloud(build, limits)
    before = (cloud.ledger, cloud.hello, cloud.welcome)
    with pytest.raises(error) as info:
        cloud.receive_data(data)
    assert type(info.value) is error
    assert (info.value.code, info.value.close_code) == (code, close_code)
    assert len(info.value.reason.encode()) <= 123
    # Refused: the session closes with the code, and nothing else about it changed.
    assert cloud.state is SessionState.CLOSING
    assert (cloud.close_code, cloud.close_reason) == (close_code, info.value.reason)
    assert (cloud.ledger, cloud.hello, cloud.welcome) == before
    assert cloud.receive_data(encode_frame(build.act(5))) == []  # closing: input discarded


def test_refused_act_does_not_apply_its_valid_piggybacked_egrad(build: Builders) -> None:
    cloud = _open_cloud(build, Limits(window=2))  # ACTs 0 and 1 in flight fill window 2
    before = cloud.ledger
    # EGRAD 0 alone would be fine; the ACT carrying it breaks the window.
    with pytest.raises(WindowExceeded):
        cloud.receive_data(encode_frame(build.act(2, egrad=build.egrad(0))))
    assert cloud.ledger == before and cloud.ledger.last_egrad_seq is None


MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "cut", "insert", "delete"]),
        st.integers(0, 10_000),
        st.integers(0, 255),
    ),
    min_size=1,
    max_size=6,
)


def _mutate(data: bytes, steps: list[tuple[str, int, int]]) -> bytes:
    buffer = bytearray(data)
    for op, position, value in steps:
        index = position % max(len(buffer), 1)
        if op == "flip" and buffer:
            buffer[index] ^= value or 1
        elif op == "cut":
            del buffer[index:]
        elif op == "insert":
            buffer.insert(index, value)
        elif op == "delete" and buffer:
            del buffer[index]
    return bytes(buffer)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    which=st.integers(0, 5),
    codec=st.sampled_from(["raw", "lz4", "fp16", "int8", "topk"]),
    steps=MUTATIONS,
)
def test_fuzzed_frames_raise_only_protocol_errors(
    build: Builders, which: int, codec: str, steps: list[tuple[str, int, int]]
) -> None:
    params = {"k": 2} if codec == "topk" else {}
    weights = {"w": build.tensor((2, 3), codec=codec, **params)}
    frames = [
        build.act(3, egrad=dataclasses.replace(build.egrad(1), grads=weights)),
        build.grad(3),
        build.hello(),
        build.welcome(acked_seq=4),
        dataclasses.replace(build.egrad(2), grads=weights),
        build.grad(2, delta=None).__class__(
            seq=2, master_version=3, cut_grad=build.tensor((2, 2), codec=codec, **params), loss=1.0
        ),
    ]
    data = _mutate(encode_frame(frames[which]), steps)
    with contextlib.suppress(ProtocolError):
        decode_frame(data, limits=LIMITS, cut_shape=build.cut_shape)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=512))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_frame(data, limits=LIMITS)
