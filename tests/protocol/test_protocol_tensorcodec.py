"""Tensor codecs: lossless round trips, documented error bounds, and hostile tensor maps."""

from __future__ import annotations

import math
import tracemalloc
from typing import Any

import lz4.frame
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from simultrain.shared.errors import (
    DecompressedTooLarge,
    EncodeError,
    InvalidTensor,
    MalformedFrame,
    NonFiniteTensor,
    ProtocolError,
)
from simultrain.shared.protocol import (
    FLOAT_DTYPES,
    SUPPORTED_DTYPES,
    Codec,
    Limits,
    WireTensor,
    decode_tensor,
    encode_tensor,
)

SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)
FLOATS = ("float16", "float32", "float64")


def roundtrip(tensor: WireTensor, limits: Limits | None = None) -> WireTensor:
    return decode_tensor(encode_tensor(tensor), limits=limits or Limits())


def finite_arrays(dtype: str, *, max_abs: float | None = None) -> st.SearchStrategy[np.ndarray]:
    bound = max_abs if max_abs is not None else float(np.finfo(dtype).max)
    elements = st.floats(
        min_value=-bound,
        max_value=bound,
        allow_nan=False,
        allow_infinity=False,
        width=np.dtype(dtype).itemsize * 8,
    )
    return hnp.arrays(dtype, SHAPES, elements=elements)


def any_arrays() -> st.SearchStrategy[np.ndarray]:
    return st.sampled_from(SUPPORTED_DTYPES).flatmap(
        lambda dtype: finite_arrays(dtype) if dtype in FLOAT_DTYPES else hnp.arrays(dtype, SHAPES)
    )


# -- lossless codecs ----------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(array=any_arrays(), codec=st.sampled_from(["raw", "lz4"]))
def test_lossless_codecs_round_trip_bit_for_bit(array: np.ndarray, codec: str) -> None:
    decoded = roundtrip(WireTensor(array, codec))  # type: ignore[arg-type]
    assert decoded.codec == codec
    assert decoded.array.dtype == array.dtype
    assert decoded.array.shape == array.shape
    assert decoded.array.tobytes() == np.ascontiguousarray(array).tobytes()


@pytest.mark.parametrize("codec", ["raw", "lz4", "fp16", "int8", "topk"])
def test_decoded_arrays_are_fresh_writable_native_arrays(codec: str) -> None:
    params = {"k": 3} if codec == "topk" else {}
    wire = encode_tensor(WireTensor(np.ones((2, 3), dtype=np.float32), codec, params))  # type: ignore[arg-type]
    decoded = decode_tensor(wire).array
    assert decoded.flags.writeable and decoded.flags.c_contiguous
    root = decoded
    while isinstance(root.base, np.ndarray):
        root = root.base
    assert root.base is None  # owns its memory: no view into the frame's bytes
    assert decoded.dtype.isnative
    decoded[...] = 7  # must not touch the wire bytes
    assert decode_tensor(wire).array.max() <= 1


def test_big_endian_and_strided_arrays_are_sent_little_endian_and_contiguous() -> None:
    array = np.arange(12, dtype=">f4").reshape(3, 4)[:, ::2]
    wire = encode_tensor(WireTensor(array))
    assert wire["data"] == np.ascontiguousarray(array, dtype="<f4").tobytes()
    np.testing.assert_array_equal(decode_tensor(wire).array, array)


# -- lossy codecs stay within their documented bounds ---------------------------------------


@settings(max_examples=150, deadline=None)
@given(array=st.sampled_from(FLOATS).flatmap(lambda d: finite_arrays(d, max_abs=65504.0)))
def test_fp16_relative_error_at_most_2_pow_minus_11(array: np.ndarray) -> None:
    decoded = roundtrip(WireTensor(array, "fp16")).array
    x = array.astype(np.float64)
    error = np.abs(x - decoded.astype(np.float64))
    normal = np.abs(x) >= 2.0**-14
    assert np.all(error[normal] <= 2.0**-11 * np.abs(x[normal]))
    assert np.all(error[~normal] <= 2.0**-25)


@settings(max_examples=150, deadline=None)
@given(array=st.sampled_from(FLOATS).flatmap(finite_arrays))
def test_int8_error_at_most_half_a_step(array: np.ndarray) -> None:
    x = array.astype(np.float64)
    amax = float(np.max(np.abs(x))) if x.size else 0.0
    assume(amax == 0.0 or amax >= float(np.finfo(array.dtype).tiny))  # documented: normal
    assume(amax < float(np.finfo(array.dtype).max) * (1 - 1e-12))  # refused, tested below
    decoded = roundtrip(WireTensor(array, "int8"))
    scale = amax / 127
    bound = scale / 2 + float(np.finfo(array.dtype).eps) * amax
    assert np.all(np.abs(x - decoded.array.astype(np.float64)) <= bound)
    assert decoded.array.dtype == array.dtype


@settings(max_examples=150, deadline=None)
@given(
    array=st.sampled_from(FLOATS).flatmap(finite_arrays),
    choice=st.one_of(
        st.integers(0, 200).map(lambda k: {"k": k}),
        st.floats(0.001, 1.0).map(lambda r: {"ratio": r}),
    ),
)
def test_topk_error_at_most_the_largest_dropped_entry(
    array: np.ndarray, choice: dict[str, Any]
) -> None:
    decoded = roundtrip(WireTensor(array, "topk", choice))
    k = decoded.params["k"]
    size = array.size
    expected_k = choice["k"] if "k" in choice else math.ceil(choice["ratio"] * size)
    assert k == min(expected_k, size)
    magnitudes = np.sort(np.abs(array.astype(np.float64)).ravel())[::-1]
    bound = magnitudes[k] if k < size else 0.0
    error = np.abs(array.astype(np.float64) - decoded.array.astype(np.float64))
    assert np.all(error <= bound)
    kept = decoded.array != 0
    np.testing.assert_array_equal(decoded.array[kept], array[kept])  # sent entries are exact


def test_topk_indices_use_int32_below_2_pow_31_elements() -> None:
    wire = encode_tensor(WireTensor(np.array([0.0, -3.0, 1.0, 2.0], np.float32), "topk", {"k": 2}))
    assert wire["index_dtype"] == "int32"
    assert np.frombuffer(wire["indices"], "<i4").tolist() == [1, 3]  # ascending
    assert np.frombuffer(wire["data"], "<f4").tolist() == [-3.0, 2.0]


# -- encoder refusals -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "codec", "params", "match"),
    [
        (np.array([70000.0], np.float32), "fp16", {}, "fp16 overflow"),
        (np.array([np.finfo(np.float64).max]), "int8", {}, "too close to the float64 maximum"),
        (np.array([np.nan], np.float32), "raw", {}, "NaN or infinity"),
        (np.array([np.inf], np.float64), "lz4", {}, "NaN or infinity"),
        (np.array([1, 2], np.int64), "int8", {}, "needs a float dtype"),
        (np.array([1 + 2j]), "raw", {}, "dtype complex128"),
        (np.array([True]), "raw", {}, "dtype bool"),
        (np.ones(3, np.float32), "zstd", {}, "unknown codec"),
        (np.ones(3, np.float32), "topk", {}, "exactly one of k and ratio"),
        (np.ones(3, np.float32), "topk", {"ratio": 1.5}, "ratio must be in"),
        (np.ones(3, np.float32), "topk", {"k": -1}, "non-negative int"),
        (np.ones(3, np.float32), "raw", {"k": 1}, "takes no params"),
    ],
)
def test_encoder_refuses_what_a_peer_would_refuse(
    array: np.ndarray, codec: str, params: dict[str, Any], match: str
) -> None:
    with pytest.raises(EncodeError, match=match):
        encode_tensor(WireTensor(array, codec, params))  # type: ignore[arg-type]


def test_wire_tensor_rejects_non_arrays() -> None:
    with pytest.raises(EncodeError, match="numpy array"):
        WireTensor([1.0, 2.0])  # type: ignore[arg-type]


# -- hostile tensor maps ---------------------------------------------------------------------


def valid_wire(codec: str = "raw", **params: Any) -> dict[str, Any]:
    return encode_tensor(WireTensor(np.arange(6, dtype=np.float32).reshape(2, 3), codec, params))  # type: ignore[arg-type]


def lz4_zeros(nbytes: int, chunk: int = 16 << 20) -> bytes:
    """An lz4 frame of ``nbytes`` zeros, built in chunks so the test never holds them all."""
    compressor = lz4.frame.LZ4FrameCompressor()
    parts, zeros = [compressor.begin()], bytes(chunk)
    for _ in range(nbytes // chunk):
        parts.append(compressor.compress(zeros))
    parts.append(compressor.flush())
    return b"".join(parts)


@pytest.fixture(scope="module")
def gigabyte_bomb() -> bytes:
    bomb = lz4_zeros(1 << 30)
    assert len(bomb) < 8 << 20  # 1 GiB of zeros in a few MB
    return bomb


def test_lz4_bomb_with_small_declared_shape_is_refused_without_inflating(
    gigabyte_bomb: bytes,
) -> None:
    wire = {"dtype": "float32", "shape": [4, 2], "codec": "lz4", "data": gigabyte_bomb}
    tracemalloc.start()
    try:
        with pytest.raises(DecompressedTooLarge, match="inflates past its declared 32 bytes"):
            decode_tensor(wire)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Inflation stopped at the declared 32 bytes; what remains is the decompressor keeping
    # its unread input (bounded by the frame size), not the gigabyte.
    assert peak < len(gigabyte_bomb) + (1 << 20)


@pytest.mark.parametrize(
    "limits",
    [Limits(), Limits(max_tensor_elements=None)],
    ids=["element-limit", "decompressed-limit"],
)
def test_lz4_bomb_declaring_a_huge_shape_is_refused_before_inflating(
    gigabyte_bomb: bytes, limits: Limits
) -> None:
    wire = {"dtype": "float32", "shape": [1 << 28], "codec": "lz4", "data": gigabyte_bomb}
    tracemalloc.start()
    try:
        with pytest.raises(DecompressedTooLarge) as info:
            decode_tensor(wire, limits=limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert info.value.close_code == 1009 and info.value.code == "decompressed_too_large"


def test_topk_bomb_declaring_a_huge_dense_shape_is_refused() -> None:
    wire = valid_wire("topk", k=1)
    wire["shape"] = [1 << 40]
    with pytest.raises(DecompressedTooLarge):
        decode_tensor(wire, limits=Limits(max_tensor_elements=None))


def test_decompressed_budget_is_shared_by_the_tensors_of_a_frame() -> None:
    from simultrain.shared.protocol import DecodeBudget

    limits = Limits(max_decompressed_bytes=40)
    budget = DecodeBudget(limits)
    decode_tensor(valid_wire(), limits=limits, budget=budget)  # 24 bytes
    with pytest.raises(DecompressedTooLarge, match="16 left"):
        decode_tensor(valid_wire(), limits=limits, budget=budget)


def corrupt(key: str, value: Any, codec: str = "raw", **params: Any) -> dict[str, Any]:
    wire = valid_wire(codec, **params)
    if value is DELETE:
        del wire[key]
    else:
        wire[key] = value
    return wire


DELETE = object()
NAN32 = np.array([np.nan], np.float32).tobytes()


@pytest.mark.parametrize(
    ("wire", "error", "match"),
    [
        (corrupt("dtype", "complex64"), InvalidTensor, "unsupported dtype"),
        (corrupt("dtype", 3), MalformedFrame, "tensor.dtype: expected str"),
        (corrupt("codec", "zstd"), InvalidTensor, "unknown codec"),
        (corrupt("codec", DELETE), MalformedFrame, "missing field 'codec'"),
        (corrupt("data", DELETE), MalformedFrame, "missing field 'data'"),
        (corrupt("data", "text"), MalformedFrame, "tensor.data: expected bytes"),
        (corrupt("extra", 1), MalformedFrame, "unexpected field 'extra'"),
        (corrupt("shape", [2, -3]), InvalidTensor, "non-negative ints"),
        (corrupt("shape", [2, True]), InvalidTensor, "non-negative ints"),
        (corrupt("shape", [2, 1 << 64]), InvalidTensor, "non-negative ints"),
        (corrupt("shape", "2x3"), MalformedFrame, "expected list"),
        (corrupt("shape", [1] * 9), InvalidTensor, "rank 9 exceeds 8"),
        (corrupt("shape", [2, 4]), InvalidTensor, "data has 24 bytes, expected 32"),
        (corrupt("data", b"\x00" * 23), InvalidTensor, "expected 24"),
        (corrupt("dtype", "int64", "fp16"), InvalidTensor, "needs a float dtype"),
        (corrupt("data", NAN32 * 6), NonFiniteTensor, "NaN or infinity"),
        (corrupt("data", b"\x00\x7c" * 6, "fp16"), NonFiniteTensor, "NaN or infinity"),
        (corrupt("data", b"garbage!", "lz4"), InvalidTensor, "invalid lz4 frame"),
        (corrupt("data", lz4.frame.compress(bytes(24))[:-4], "lz4"), InvalidTensor, "truncated"),
        (corrupt("data", lz4.frame.compress(bytes(20)), "lz4"), InvalidTensor, "20 bytes"),
        (corrupt("data", lz4.frame.compress(bytes(24)) + b"x", "lz4"), InvalidTensor, "trailing"),
        (corrupt("data", lz4.frame.compress(NAN32 * 6), "lz4"), NonFiniteTensor, "NaN"),
        (corrupt("data", b"\x80" * 6, "int8"), InvalidTensor, "-128"),
        (corrupt("scale", float("inf"), "int8"), InvalidTensor, "scale must be finite"),
        (corrupt("scale", "1", "int8"), MalformedFrame, "expected float"),
        (corrupt("scale", 1e308, "int8"), NonFiniteTensor, "NaN or infinity"),
        (corrupt("k", 7, "topk", k=2), InvalidTensor, r"outside \[0, 6\]"),
        (corrupt("index_dtype", "uint8", "topk", k=2), InvalidTensor, "int32 or int64"),
        (corrupt("indices", b"\x05\0\0\0\x01\0\0\0", "topk", k=2), InvalidTensor, "increasing"),
        (corrupt("indices", b"\x01\0\0\0\x06\0\0\0", "topk", k=2), InvalidTensor, "increasing"),
        (corrupt("indices", b"\x01\0\0\0\x01\0\0\0", "topk", k=2), InvalidTensor, "increasing"),
        (corrupt("indices", b"\x01\0\0\0", "topk", k=2), InvalidTensor, "indices has 4 bytes"),
        (corrupt("scale", 1.0, "topk", k=2), MalformedFrame, "unexpected field 'scale'"),
        ([1, 2], MalformedFrame, "expected a tensor map"),
    ],
)
def test_invalid_tensor_maps_raise_the_documented_error(
    wire: Any, error: type[ProtocolError], match: str
) -> None:
    with pytest.raises(error, match=match) as info:
        decode_tensor(wire)
    assert type(info.value) is error
    assert info.value.close_code in (1002, 1007)


def test_codec_names_are_the_wire_names() -> None:
    assert [codec.value for codec in Codec] == ["raw", "lz4", "fp16", "int8", "topk"]
