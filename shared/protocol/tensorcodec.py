"""Tensors on the wire: ``{dtype, shape, codec, data, ...codec params}`` over numpy arrays.

docs/DESIGN.md §9: ``codec`` is ``raw``, ``lz4`` (an lz4 frame of the raw bytes) or a
lossy codec (``fp16``, ``int8``, ``topk``). PROTOCOL.md §4 gives the byte layouts.

Error bounds (x the array sent, x̂ the array decoded, both of the declared dtype):

- ``raw``, ``lz4``: lossless, bit for bit.
- ``fp16``: for |x| in the fp16 normal range [2⁻¹⁴, 65504], |x − x̂| ≤ 2⁻¹¹·|x| (round to
  nearest, 10 stored mantissa bits); below it |x − x̂| ≤ 2⁻²⁵ (half the subnormal spacing).
  |x| > 65504 would overflow to infinity and is refused at encode time.
- ``int8``: symmetric per-tensor ``scale = max|x| / 127``, q = round(x / scale) in [−127, 127],
  x̂ = q·scale; |x − x̂| ≤ scale/2 + ε·max|x| with ε the machine epsilon of the dtype (the
  second term is the final rounding into the dtype; it assumes max|x| is a normal number).
- ``topk``: the k entries of largest magnitude are sent exactly, the rest decode as zero:
  ‖x − x̂‖∞ ≤ the (k+1)-th largest |x| (zero when k ≥ x.size). Parameter ``k`` or ``ratio``
  (k = ⌈ratio·size⌉).

Decoding validates everything a frame declares before it allocates: dtype and codec known,
shape a short list of non-negative ints, element count and *declared* decoded size within the
limits (so an lz4 or top-k bomb is refused before it is inflated), data lengths exactly as
the shape, dtype and codec imply, lz4 inflation itself bounded by the declared size, and
finiteness of floating-point results.

Decoded arrays are always fresh, writable, C-contiguous arrays in native byte order, owned
by the caller: they never alias the frame's bytes, so a caller may modify them or hand them
to ``torch.from_numpy`` without a copy or a read-only warning.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
from collections.abc import Mapping
from typing import Any, Final

import lz4.frame
import numpy as np
import numpy.typing as npt

from simultrain.shared.errors import (
    DecompressedTooLarge,
    EncodeError,
    InvalidTensor,
    MalformedFrame,
    NonFiniteTensor,
)
from simultrain.shared.protocol.limits import DEFAULT_LIMITS, Limits

__all__ = [
    "FLOAT_DTYPES",
    "LOSSLESS_CODECS",
    "SUPPORTED_DTYPES",
    "Codec",
    "DecodeBudget",
    "WireTensor",
    "decode_tensor",
    "encode_tensor",
]


class Codec(enum.StrEnum):
    """Tensor codecs; the value is the wire name."""

    RAW = "raw"
    LZ4 = "lz4"
    FP16 = "fp16"
    INT8 = "int8"
    TOPK = "topk"


LOSSLESS_CODECS: Final = frozenset({Codec.RAW, Codec.LZ4})
SUPPORTED_DTYPES: Final = ("float32", "float16", "float64", "int64", "int32", "uint8")
FLOAT_DTYPES: Final = frozenset({"float32", "float16", "float64"})

_FP16_MAX: Final = 65504.0  # largest finite IEEE 754 binary16
_INT8_LEVELS: Final = 127  # symmetric: −128 is never produced and refused on decode
_INT32_INDEX_MAX_SIZE: Final = 1 << 31  # indices < 2^31 fit int32
_CHUNK_ELEMENTS: Final = 1 << 20  # bounds temporaries while dequantizing

# Keys of the wire map: the common ones, then those each codec adds (PROTOCOL.md, "Tensors").
_BASE_KEYS: Final = ("dtype", "shape", "codec", "data")
_CODEC_KEYS: Final[Mapping[Codec, tuple[str, ...]]] = {
    Codec.RAW: (),
    Codec.LZ4: (),
    Codec.FP16: (),
    Codec.INT8: ("scale",),
    Codec.TOPK: ("k", "index_dtype", "indices"),
}

Array = npt.NDArray[Any]
Params = Mapping[str, int | float]


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class WireTensor:
    """A numpy array and the codec it travels with.

    Sending: ``array`` is the exact value; ``codec`` and ``params`` say how to encode it
    (``topk`` takes ``{"k": int}`` or ``{"ratio": float}``; the others take none).
    Received: ``array`` is the decoded value (approximate for a lossy codec), ``codec`` how it
    travelled, ``params`` the parameters that reproduce its wire form (``{"k": k}`` for topk).

    Equality compares codec, params, dtype, shape and values.
    """

    array: Array
    codec: Codec = Codec.RAW
    params: Params = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.array, np.ndarray):
            raise EncodeError(f"WireTensor.array must be a numpy array, got {type(self.array)}")
        dtype = self.array.dtype.name
        if dtype not in SUPPORTED_DTYPES or self.array.dtype.fields is not None:
            raise EncodeError(f"dtype {dtype} is not one of {', '.join(SUPPORTED_DTYPES)}")
        try:
            codec = Codec(self.codec)
        except ValueError as exc:
            raise EncodeError(f"unknown codec {self.codec!r}") from exc
        if codec not in LOSSLESS_CODECS and dtype not in FLOAT_DTYPES:
            raise EncodeError(f"lossy codec {codec.value} needs a float dtype, got {dtype}")
        params = dict(self.params)
        _check_encode_params(codec, params)
        object.__setattr__(self, "codec", codec)
        object.__setattr__(self, "params", types.MappingProxyType(params))

    @property
    def dtype(self) -> str:
        return str(self.array.dtype.name)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.array.shape)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WireTensor):
            return NotImplemented
        return (
            self.codec == other.codec
            and dict(self.params) == dict(other.params)
            and self.dtype == other.dtype
            and self.shape == other.shape
            and bool(np.array_equal(self.array, other.array))
        )

    __hash__ = None  # type: ignore[assignment]  # holds a mutable array

    def __repr__(self) -> str:
        params = f", params={dict(self.params)}" if self.params else ""
        dims = ", ".join(str(d) for d in self.shape)
        return f"WireTensor({self.dtype}[{dims}], codec={self.codec.value!r}{params})"


def _check_encode_params(codec: Codec, params: dict[str, int | float]) -> None:
    if codec is not Codec.TOPK:
        if params:
            raise EncodeError(f"codec {codec.value} takes no params, got {sorted(params)}")
        return
    if set(params) == {"k"}:
        k = params["k"]
        if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 0:
            raise EncodeError(f"topk k must be a non-negative int, got {k!r}")
    elif set(params) == {"ratio"}:
        ratio = params["ratio"]
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio <= 1:
            raise EncodeError(f"topk ratio must be in (0, 1], got {ratio!r}")
    else:
        raise EncodeError(f"topk takes exactly one of k and ratio, got {sorted(params)}")


def _little_endian(dtype: str) -> np.dtype[Any]:
    return np.dtype(dtype).newbyteorder("<")


def _raw_bytes(array: Array, dtype: str) -> bytes:
    # tobytes(order="C") copies in C order whatever the strides; astype fixes the byte order.
    return array.astype(_little_endian(dtype), copy=False).tobytes(order="C")


def encode_tensor(tensor: WireTensor) -> dict[str, Any]:
    """The wire map of ``tensor``. Raises :class:`EncodeError` for values the peer would refuse."""
    array, dtype, codec = tensor.array, tensor.dtype, tensor.codec
    if dtype in FLOAT_DTYPES and array.size and not bool(np.isfinite(array).all()):
        raise EncodeError(f"{dtype} tensor of shape {tensor.shape} holds NaN or infinity")
    wire: dict[str, Any] = {"dtype": dtype, "shape": list(tensor.shape), "codec": codec.value}
    if codec is Codec.RAW:
        wire["data"] = _raw_bytes(array, dtype)
    elif codec is Codec.LZ4:
        # store_size=True writes the content size into the lz4 frame header; the decoder
        # cross-checks it, but must not rely on it (other encoders may omit it).
        wire["data"] = lz4.frame.compress(_raw_bytes(array, dtype), store_size=True)
    elif codec is Codec.FP16:
        amax = float(np.max(np.abs(array))) if array.size else 0.0
        if amax > _FP16_MAX:
            raise EncodeError(f"fp16 overflow: max|x| = {amax:g} exceeds {_FP16_MAX:g}")
        wire["data"] = _raw_bytes(array, "float16")
    elif codec is Codec.INT8:
        wire["data"], wire["scale"] = _quantize_int8(array, dtype)
    else:
        wire.update(_encode_topk(array, dtype, tensor.params))
    return wire


def _quantize_int8(array: Array, dtype: str) -> tuple[bytes, float]:
    values = array.astype(np.float64)
    amax = float(np.max(np.abs(values))) if values.size else 0.0
    scale = amax / _INT8_LEVELS
    if amax > 0.0 and scale == 0.0:
        # max|x| is so small (float64 subnormal) that max|x|/127 underflows; the smallest
        # positive double still represents every value exactly enough for the bound.
        scale = float(np.nextafter(0.0, 1.0))
    if scale == 0.0:
        return bytes(array.size), 0.0
    with np.errstate(over="ignore"):
        top = np.array(_INT8_LEVELS * scale).astype(dtype)
    if not np.isfinite(top):
        # 127·scale can round past the largest float64; the decoder would refuse infinity.
        raise EncodeError(f"int8: max|x| = {amax:g} is too close to the {dtype} maximum")
    quantized = np.clip(np.rint(values / scale), -_INT8_LEVELS, _INT8_LEVELS).astype(np.int8)
    return quantized.tobytes(order="C"), scale


def _encode_topk(array: Array, dtype: str, params: Params) -> dict[str, Any]:
    size = int(array.size)
    if "k" in params:
        k = min(int(params["k"]), size)
    else:
        k = min(math.ceil(float(params["ratio"]) * size), size)
    flat = array.reshape(-1)
    if k == size:
        indices = np.arange(size, dtype=np.int64)
    else:
        magnitudes = np.abs(flat)
        indices = np.argpartition(magnitudes, size - k)[size - k :] if k else flat[:0]
        indices = np.sort(indices.astype(np.int64))
    # Indices ascending: a canonical form the decoder checks in O(k), which also rules out
    # duplicates.
    index_dtype = "int32" if size <= _INT32_INDEX_MAX_SIZE else "int64"
    return {
        "data": _raw_bytes(flat[indices], dtype),
        "k": k,
        "index_dtype": index_dtype,
        "indices": _raw_bytes(indices, index_dtype),
    }


class DecodeBudget:
    """What is left of ``Limits.max_decompressed_bytes`` while one frame is decoded."""

    __slots__ = ("remaining",)

    def __init__(self, limits: Limits) -> None:
        self.remaining = limits.max_decompressed_bytes

    def take(self, nbytes: int, path: str) -> None:
        if self.remaining is None:
            return
        if nbytes > self.remaining:
            raise DecompressedTooLarge(
                f"{path}: would decode to {nbytes} bytes, {self.remaining} left of "
                "max_decompressed_bytes"
            )
        self.remaining -= nbytes


def decode_tensor(
    wire: object,
    *,
    limits: Limits = DEFAULT_LIMITS,
    budget: DecodeBudget | None = None,
    path: str = "tensor",
) -> WireTensor:
    """Validate and decode one wire map into a :class:`WireTensor`.

    ``budget`` is shared by all tensors of one frame (a fresh one per call when omitted);
    ``path`` names the tensor in error messages. Raises :class:`MalformedFrame`,
    :class:`InvalidTensor`, :class:`NonFiniteTensor` or :class:`DecompressedTooLarge`; never
    a foreign exception.
    """
    if budget is None:
        budget = DecodeBudget(limits)
    if not isinstance(wire, dict):
        raise MalformedFrame(f"expected a tensor map, got {_kind(wire)}", field=path)
    codec = _decode_codec(wire, path)
    _check_keys(wire, (*_BASE_KEYS, *_CODEC_KEYS[codec]), path)
    dtype = _get(wire, "dtype", str, path)
    if dtype not in SUPPORTED_DTYPES:
        raise InvalidTensor(f"{path}: unsupported dtype {dtype!r}")
    if codec not in LOSSLESS_CODECS and dtype not in FLOAT_DTYPES:
        raise InvalidTensor(f"{path}: codec {codec.value} needs a float dtype, got {dtype}")
    shape = _decode_shape(wire, limits, path)
    data = _get(wire, "data", bytes, path)
    size = math.prod(shape)
    if limits.max_tensor_elements is not None and size > limits.max_tensor_elements:
        raise DecompressedTooLarge(
            f"{path}: {size} elements exceed max_tensor_elements {limits.max_tensor_elements}"
        )
    # The declared size is charged before anything is inflated or allocated: this is what
    # refuses a bomb (a few KB that would inflate to gigabytes).
    itemsize = np.dtype(dtype).itemsize
    budget.take(size * itemsize, path)
    try:
        if codec is Codec.RAW:
            array = _from_bytes(data, dtype, size, shape, path)
        elif codec is Codec.LZ4:
            array = _from_bytes(_inflate_lz4(data, size * itemsize, path), dtype, size, shape, path)
        elif codec is Codec.FP16:
            array = _from_bytes(data, "float16", size, shape, path).astype(dtype)
        elif codec is Codec.INT8:
            array = _decode_int8(wire, data, dtype, size, shape, path)
        else:
            array, k = _decode_topk(wire, data, dtype, size, shape, path)
            return _finite(WireTensor(array, codec, {"k": k}), path)
    except MemoryError as exc:
        # Reachable only with the limits disabled: the declared shape does not fit in memory.
        raise DecompressedTooLarge(f"{path}: cannot allocate {dtype}{list(shape)}") from exc
    except (ValueError, TypeError, OverflowError) as exc:
        # numpy refuses shapes it cannot represent ("array is too big") the same way.
        raise InvalidTensor(f"{path}: cannot decode {dtype}{list(shape)} ({exc})") from exc
    return _finite(WireTensor(array, codec), path)


def _finite(tensor: WireTensor, path: str) -> WireTensor:
    if tensor.dtype in FLOAT_DTYPES and not bool(np.isfinite(tensor.array).all()):
        raise NonFiniteTensor(f"{path}: {tensor.dtype} tensor holds NaN or infinity")
    return tensor


def _kind(value: object) -> str:
    return type(value).__name__


def _check_keys(wire: dict[Any, Any], expected: tuple[str, ...], path: str) -> None:
    missing = [key for key in expected if key not in wire]
    if missing:
        raise MalformedFrame(f"missing field {missing[0]!r}", field=path)
    extra = sorted(str(key) for key in wire if key not in expected)
    if extra:
        raise MalformedFrame(f"unexpected field {extra[0]!r}", field=path)


def _get(wire: dict[Any, Any], key: str, kind: type[Any], path: str) -> Any:
    value = wire[key]
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise MalformedFrame(f"expected {kind.__name__}, got {_kind(value)}", field=f"{path}.{key}")
    return value


def _decode_codec(wire: dict[Any, Any], path: str) -> Codec:
    if "codec" not in wire:
        raise MalformedFrame("missing field 'codec'", field=path)
    name = _get(wire, "codec", str, path)
    try:
        return Codec(name)
    except ValueError as exc:
        raise InvalidTensor(f"{path}: unknown codec {name!r}") from exc


def _decode_shape(wire: dict[Any, Any], limits: Limits, path: str) -> tuple[int, ...]:
    shape = _get(wire, "shape", list, path)
    if len(shape) > limits.max_tensor_rank:
        raise InvalidTensor(f"{path}: rank {len(shape)} exceeds {limits.max_tensor_rank}")
    for dim in shape:
        if not isinstance(dim, int) or isinstance(dim, bool) or not 0 <= dim < 1 << 63:
            raise InvalidTensor(f"{path}: shape must be non-negative ints, got {shape!r}")
    return tuple(shape)


def _check_length(data: bytes, expected: int, what: str, path: str) -> None:
    if len(data) != expected:
        raise InvalidTensor(f"{path}: {what} has {len(data)} bytes, expected {expected}")


def _from_bytes(data: bytes, dtype: str, size: int, shape: tuple[int, ...], path: str) -> Array:
    wire_dtype = _little_endian(dtype)
    _check_length(data, size * wire_dtype.itemsize, "data", path)
    # astype copies into a fresh, writable array in native byte order (module docstring).
    return np.frombuffer(data, dtype=wire_dtype, count=size).astype(dtype).reshape(shape)


def _inflate_lz4(data: bytes, expected: int, path: str) -> bytes:
    try:
        declared = lz4.frame.get_frame_info(data)
        decompressor = lz4.frame.LZ4FrameDecompressor()
        # max_length bounds the inflation itself: a stream that would produce more than the
        # declared size stops here instead of filling memory.
        raw = decompressor.decompress(data, max_length=expected)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise InvalidTensor(f"{path}: invalid lz4 frame ({exc})") from exc
    if declared.get("skippable"):
        raise InvalidTensor(f"{path}: lz4 skippable frames are not allowed")
    content_size = declared.get("content_size", 0)
    if content_size not in (0, expected):  # 0: the encoder did not record the size
        raise InvalidTensor(f"{path}: lz4 header says {content_size} bytes, shape says {expected}")
    if not decompressor.eof:
        if not decompressor.needs_input:
            raise DecompressedTooLarge(
                f"{path}: lz4 data inflates past its declared {expected} bytes"
            )
        raise InvalidTensor(f"{path}: lz4 frame is truncated")
    if len(raw) != expected:
        raise InvalidTensor(f"{path}: lz4 data inflates to {len(raw)} bytes, expected {expected}")
    if decompressor.unused_data:
        raise InvalidTensor(f"{path}: trailing bytes after the lz4 frame")
    return bytes(raw)


def _decode_int8(
    wire: dict[Any, Any], data: bytes, dtype: str, size: int, shape: tuple[int, ...], path: str
) -> Array:
    scale = wire["scale"]
    if isinstance(scale, bool) or not isinstance(scale, int | float):
        raise MalformedFrame(f"expected float, got {_kind(scale)}", field=f"{path}.scale")
    scale = float(scale)
    if not math.isfinite(scale) or scale < 0:
        raise InvalidTensor(f"{path}: int8 scale must be finite and non-negative, got {scale}")
    _check_length(data, size, "data", path)
    quantized = np.frombuffer(data, dtype=np.int8, count=size)
    if size and int(quantized.min()) < -_INT8_LEVELS:
        raise InvalidTensor(f"{path}: int8 value -128 is outside the symmetric range")
    out = np.empty(size, dtype=dtype)
    # Dequantize in float64 and round once into the dtype (the ε·max|x| term of the bound),
    # in chunks so the float64 temporary stays small.
    # A hostile scale may overflow: the result is then infinite and refused as non-finite
    # by the caller, so the overflow needs no warning.
    with np.errstate(over="ignore"):
        for start in range(0, size, _CHUNK_ELEMENTS):
            stop = start + _CHUNK_ELEMENTS
            out[start:stop] = quantized[start:stop].astype(np.float64) * scale
    return out.reshape(shape)


def _decode_topk(
    wire: dict[Any, Any], data: bytes, dtype: str, size: int, shape: tuple[int, ...], path: str
) -> tuple[Array, int]:
    k = _get(wire, "k", int, path)
    index_dtype = _get(wire, "index_dtype", str, path)
    indices_bytes = _get(wire, "indices", bytes, path)
    if not 0 <= k <= size:
        raise InvalidTensor(f"{path}: topk k = {k} is outside [0, {size}]")
    if index_dtype not in ("int32", "int64"):
        raise InvalidTensor(f"{path}: topk index_dtype must be int32 or int64, got {index_dtype!r}")
    index_wire = _little_endian(index_dtype)
    _check_length(indices_bytes, k * index_wire.itemsize, "indices", path)
    _check_length(data, k * np.dtype(dtype).itemsize, "data", path)
    indices = np.frombuffer(indices_bytes, dtype=index_wire, count=k).astype(np.int64)
    if k and (indices[0] < 0 or indices[-1] >= size or not bool(np.all(np.diff(indices) > 0))):
        raise InvalidTensor(f"{path}: topk indices must be strictly increasing within [0, {size})")
    values = np.frombuffer(data, dtype=_little_endian(dtype), count=k)
    out = np.zeros(size, dtype=dtype)
    out[indices] = values
    return out.reshape(shape), k
