"""Every message type round-trips through encode_frame/decode_frame; the encoder is strict."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from simultrain.shared.errors import EncodeError, ErrorCode, MalformedFrame, WindowExceeded
from simultrain.shared.protocol import (
    FRAME_TYPES,
    PROTOCOL_VERSION,
    Ack,
    Act,
    Bye,
    Delta,
    EGrad,
    Error,
    Frame,
    Grad,
    Hello,
    Snap,
    Welcome,
    WireTensor,
    decode_frame,
    encode_frame,
)
from simultrain.shared.protocol.codec import capability_fields, frame_fields

if TYPE_CHECKING:
    from conftest import Builders


def examples(build: Builders) -> list[Frame]:
    t = build.tensor
    return [
        build.hello(),
        build.hello(token=None, resume=41, config={}),
        build.hello(
            config={
                "mode": "simultrain",
                "alpha": 0.5,
                "beta": 0.9,
                "reconcile_every": float("inf"),
                "window": 4,
                "fp16": True,
                "codec": "lz4",
                "seed": -1,
                "note": None,
            }
        ),
        build.welcome(),
        build.welcome(window=None, acked_seq=12, config={"alpha": 0.0}),
        build.act(0),
        build.act(5, batch=3, edge_version=2, egrad=build.egrad(3, edge_version=1)),
        build.grad(0),
        build.grad(
            5,
            batch=3,
            delta=Delta(checksum=0, from_version=3, to_version=5, tensors={"w": t((2,))}),
        ),
        build.egrad(9),
        EGrad(seq=1, edge_version=0, grads={}),
        EGrad(seq=2, edge_version=1, grads={"w": t((2,))}, samples=32),
        Delta(
            checksum=0,
            from_version=2,
            to_version=3,
            tensors={"w": WireTensor(np.array([0, 1 << 30, -5], np.int32), "lz4")},
            kind="xor",
        ),
        Delta(checksum=0, from_version=0, to_version=1, tensors={"w": t((2, 2), codec="fp16")}),
        Delta(
            checksum=0, from_version=7, to_version=9, tensors={"w": t((4, 5), codec="topk", k=3)}
        ),
        Snap(
            checksum=0,
            master_version=4,
            tensors={"w": t((3,)), "steps": WireTensor(np.array(7))},
            reconcile=True,
        ),
        Snap(checksum=0, master_version=0, tensors={"w": t((2, 3), codec="int8")}, reconcile=False),
        Ack(seq=3, master_version=8),
        Error(code="window_exceeded", reason="ACT 9: 4 batches unanswered, window is 4"),
        Error(code="a_code_from_a_newer_peer"),
        Bye(reason="server restart"),
        Bye(),
    ]


def test_examples_cover_every_message_type(build: Builders) -> None:
    assert {type(frame) for frame in examples(build)} == set(FRAME_TYPES.values())


def test_every_message_type_round_trips(build: Builders) -> None:
    for frame in examples(build):
        decoded = decode_frame(encode_frame(frame), cut_shape=build.cut_shape)
        assert type(decoded) is type(frame)
        if isinstance(frame, Delta | Snap) and any(
            tensor.codec in ("fp16", "int8", "topk") for tensor in frame.tensors.values()
        ):
            continue  # lossy payloads: bounds tested in test_protocol_tensorcodec
        assert decoded == frame, frame.type


def test_envelope_is_version_type_then_fields_in_documented_order(build: Builders) -> None:
    for frame in examples(build):
        wire = msgpack.unpackb(encode_frame(frame), raw=False)
        # A field a capability adds is absent while it holds no value (PROTOCOL.md §2).
        absent = {f for f in capability_fields(type(frame)) if getattr(frame, f) is None}
        assert list(wire) == ["v", "t", *(f for f in frame_fields(type(frame)) if f not in absent)]
        assert wire["v"] == PROTOCOL_VERSION == 2
        assert wire["t"] == frame.type


def test_wire_fields_are_the_dataclass_fields() -> None:
    for cls in FRAME_TYPES.values():
        assert frame_fields(cls) == tuple(field.name for field in dataclasses.fields(cls))


def test_decoder_does_not_depend_on_key_order(build: Builders) -> None:
    frame = build.act(4, egrad=build.egrad(1))
    wire = build.wire_of(frame)
    reordered = dict(reversed(list(wire.items())))
    assert decode_frame(build.pack(reordered)) == frame


def test_float_fields_accept_msgpack_ints_as_javascript_writes_them(build: Builders) -> None:
    wire = build.wire_of(build.grad(1))
    wire["loss"] = 2
    decoded = decode_frame(build.pack(wire))
    assert isinstance(decoded, Grad) and decoded.loss == 2.0 and isinstance(decoded.loss, float)


SHAPES = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 5),
    cut_shape=SHAPES,
    dtype=st.sampled_from(["float32", "float16", "float64"]),
    codec=st.sampled_from(["raw", "lz4"]),
    seq=st.integers(1, (1 << 63) - 1),
    version=st.integers(0, (1 << 63) - 1),
    data=st.data(),
)
def test_act_and_grad_round_trip_over_shapes_dtypes_and_codecs(
    batch: int,
    cut_shape: tuple[int, ...],
    dtype: str,
    codec: str,
    seq: int,
    version: int,
    data: st.DataObject,
) -> None:
    elements = st.floats(-1e4, 1e4, width=np.dtype(dtype).itemsize * 8)
    array = data.draw(hnp.arrays(dtype, (batch, *cut_shape), elements=elements))
    labels = data.draw(hnp.arrays(np.int64, (batch,)))
    act = Act(
        seq=seq,
        edge_version=version,
        activations=WireTensor(array, codec),  # type: ignore[arg-type]
        labels=WireTensor(labels),
        egrad=EGrad(seq=seq - 1, edge_version=version, grads={"g": WireTensor(array, codec)}),  # type: ignore[arg-type]
    )
    grad = Grad(seq=seq, master_version=version, cut_grad=WireTensor(array, codec), loss=0.5)  # type: ignore[arg-type]
    for frame in (act, grad):
        assert decode_frame(encode_frame(frame), cut_shape=cut_shape) == frame


CONFIG_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 63), (1 << 63) - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)


@settings(max_examples=60, deadline=None)
@given(config=st.dictionaries(st.text(min_size=1, max_size=20), CONFIG_VALUES, max_size=10))
def test_run_config_round_trips(build: Builders, config: dict[str, Any]) -> None:
    frame = build.hello(config=config)
    assert decode_frame(encode_frame(frame)) == frame


# -- the encoder refuses what a peer would refuse -------------------------------------------


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"seq": -1}, r"act.seq: -1 is outside"),
        ({"seq": 1 << 63}, r"act.seq: .* is outside"),
        ({"seq": True}, r"act.seq: expected int, got bool"),
        ({"seq": 1.0}, r"act.seq: expected int, got float"),
        ({"edge_version": "3"}, r"act.edge_version: expected int"),
        ({"activations": np.zeros((2, 2), np.float32)}, r"act.activations: expected WireTensor"),
        ({"labels": WireTensor(np.zeros(2, np.float32))}, r"act.labels: expected int64\[2\]"),
        ({"labels": WireTensor(np.zeros(3, np.int64))}, r"act.labels: expected int64\[2\]"),
        ({"activations": WireTensor(np.zeros((0, 2), np.float32))}, r"batch ≥ 1"),
        ({"activations": WireTensor(np.array([np.nan, 1.0, 2.0, 3.0]).reshape(2, 2))}, "NaN"),
    ],
)
def test_encoder_refuses_invalid_act_fields(
    build: Builders, changes: dict[str, Any], match: str
) -> None:
    with pytest.raises(EncodeError, match=match):
        encode_frame(dataclasses.replace(build.act(1), **changes))


def test_encoder_refuses_inconsistent_frames(build: Builders) -> None:
    cases: list[tuple[Frame, str]] = [
        (
            Delta(checksum=0, from_version=3, to_version=3, tensors={}),
            "from_version 3 must be below",
        ),
        (
            Delta(checksum=0, from_version=0, to_version=1, tensors={}, kind="sub"),
            "expected one of add, xor",
        ),
        (
            Delta(
                checksum=0,
                from_version=0,
                to_version=1,
                tensors={"w": build.tensor((2,))},
                kind="xor",
            ),
            "xor delta holds int32 or int64 bit patterns, got float32",
        ),
        (dataclasses.replace(build.egrad(1), samples=-1), "egrad.samples: -1 is outside"),
        (build.act(2, egrad=build.egrad(2)), "piggybacked EGRAD 2 must be below the ACT's seq 2"),
        (Error(code="x", reason="é" * 62), "reason: 124 bytes exceed 123"),
        (Error(code="", reason=""), "error.code: must not be empty"),
        (build.hello(cut_shape=()), "1 to 63 dimensions"),
        (build.hello(cut_shape=(2, 0)), "dimensions must be positive"),
        (build.hello(edge_id="x" * 257), "257 bytes exceed 256"),
        (build.hello(config={"alpha": float("nan")}), "NaN is not a configuration value"),
        (build.hello(config={"alpha": [1, 2]}), "expected nil, bool, int, float or str"),
        (build.hello(config={"": 1}), "must not be empty"),
        (
            Snap(checksum=0, master_version=0, tensors={"w": 1.0}, reconcile=True),
            "expected WireTensor",
        ),  # type: ignore[dict-item]
        (Snap(checksum=0, master_version=0, tensors={}, reconcile=1), "expected bool"),  # type: ignore[arg-type]
        (
            build.grad(1, batch=1).__class__(
                seq=1, master_version=0, cut_grad=WireTensor(np.zeros((1, 2), np.int64)), loss=0.0
            ),
            "float dtype",
        ),
        (dataclasses.replace(build.grad(1), loss=float("inf")), "grad.loss: inf is not finite"),
    ]
    for frame, match in cases:
        with pytest.raises(EncodeError, match=match):
            encode_frame(frame)


def test_encoder_accepts_numpy_scalars_for_ints_and_floats(build: Builders) -> None:
    frame = dataclasses.replace(build.grad(3), seq=np.int64(3), loss=np.float32(0.5))
    decoded = decode_frame(encode_frame(frame))
    assert isinstance(decoded, Grad) and decoded.seq == 3 and decoded.loss == 0.5


def test_encoder_refuses_non_frames() -> None:
    with pytest.raises(EncodeError, match="not a frame: dict"):
        encode_frame({"t": "act"})  # type: ignore[arg-type]


def test_error_frame_carries_code_and_a_close_reason_sized_text() -> None:
    exc = WindowExceeded("ACT 12: " + "x" * 300)
    frame = Error.from_exception(exc)
    assert frame.code == ErrorCode.WINDOW_EXCEEDED == "window_exceeded"
    assert len(frame.reason.encode()) <= 123
    assert decode_frame(encode_frame(frame)) == frame


def test_decoded_frames_are_immutable(build: Builders) -> None:
    frame = decode_frame(encode_frame(build.act(1)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        frame.seq = 2  # type: ignore[misc]


def test_hello_and_welcome_shapes_are_tuples(build: Builders) -> None:
    for frame in (build.hello(), build.welcome()):
        decoded = decode_frame(encode_frame(frame))
        assert isinstance(decoded, Hello | Welcome)
        assert decoded.cut_shape == build.cut_shape and isinstance(decoded.cut_shape, tuple)


def test_malformed_frame_names_the_field(build: Builders) -> None:
    wire = build.wire_of(build.act(1, egrad=build.egrad(0)))
    wire["egrad"]["seq"] = "zero"
    with pytest.raises(MalformedFrame) as info:
        decode_frame(build.pack(wire))
    assert info.value.field == "act.egrad.seq"
    assert str(info.value) == "act.egrad.seq: expected int, got str"


@pytest.mark.parametrize(
    ("frame_name", "key", "value", "field"),
    [
        ("grad", "loss", "0.5", "grad.loss"),
        ("grad", "loss", True, "grad.loss"),
        ("grad", "delta", [1], "grad.delta"),
        ("hello", "edge_id", 5, "hello.edge_id"),
        ("hello", "edge_id", "", "hello.edge_id"),
        ("hello", "cut_shape", "2", "hello.cut_shape"),
        ("hello", "cut_shape", [2, 0], "hello.cut_shape"),
        ("hello", "config", [1], "hello.config"),
        ("hello", "config", {f"k{i}": i for i in range(257)}, "hello.config"),
        ("hello", "config", {"seed": 1 << 63}, "hello.config.seed"),
        ("hello", "config", {"alpha": float("nan")}, "hello.config.alpha"),
        ("hello", "config", {"alpha": b"0.5"}, "hello.config.alpha"),
        ("hello", "token", 1, "hello.token"),
        ("welcome", "window", -1, "welcome.window"),
        ("egrad", "grads", [1], "egrad.grads"),
        ("egrad", "grads", {"": 1}, "egrad.grads key"),
        ("act", "egrad", [1], "act.egrad"),
        ("act", "v", "1", "frame.v"),
        ("snap", "reconcile", 1, "snap.reconcile"),
        ("error", "reason", "x" * 124, "error.reason"),
    ],
)
def test_wrongly_typed_fields_are_malformed_and_named(
    build: Builders, frame_name: str, key: str, value: Any, field: str
) -> None:
    frames: dict[str, Frame] = {
        "grad": build.grad(1),
        "hello": build.hello(),
        "welcome": build.welcome(),
        "egrad": build.egrad(1),
        "act": build.act(1),
        "snap": Snap(checksum=0, master_version=1, tensors={}, reconcile=True),
        "error": Error(code="internal_error"),
    }
    wire = build.wire_of(frames[frame_name])
    wire[key] = value
    with pytest.raises(MalformedFrame) as info:
        decode_frame(build.pack(wire))
    assert info.value.field == field
    assert (info.value.code, info.value.close_code) == ("malformed_frame", 1002)


def test_encoder_refuses_strings_that_are_not_utf8(build: Builders) -> None:
    with pytest.raises(EncodeError, match=r"hello\.edge_id: is not valid UTF-8"):
        encode_frame(build.hello(edge_id="\ud800"))
