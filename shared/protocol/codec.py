"""Frames ↔ bytes: one msgpack map per WebSocket binary message (PROTOCOL.md, "Framing").

``{"v": PROTOCOL_VERSION, "t": "<type>", <field>: <value>, ...}``: every field of the frame
is present (``nil`` for an absent optional one), no other key is — except a field a
capability adds, which is absent unless it holds a value (PROTOCOL.md §2, §10.2). Decoding is
strict and total: it either returns a valid frame or raises a :class:`ProtocolError`
subclass, with any msgpack, lz4 or numpy error chained as its cause; nothing else escapes.

The order of checks matters for what a peer is told: size before parsing (1009), version
before type (a frame of a newer protocol reports a version mismatch, not garbage), type
before fields, declared tensor sizes before inflating (an lz4 bomb is refused unopened).

``v`` is the session's major version (PROTOCOL.md §1.1, :mod:`.versions`). ERROR is the one
message whose form no version may change: it is read whatever ``v`` it carries, so that a
peer of another version can still say why it ends the session.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from collections.abc import Mapping
from typing import Any, Final

import msgpack
import numpy as np

from simultrain.shared.errors import (
    EncodeError,
    FrameTooLarge,
    InvalidTensor,
    MalformedFrame,
    ProtocolError,
    ProtocolVersionMismatch,
    UnexpectedSequence,
    UnknownMessageType,
)
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
from simultrain.shared.protocol.tensorcodec import (
    FLOAT_DTYPES,
    DecodeBudget,
    WireTensor,
    decode_tensor,
    encode_tensor,
)
from simultrain.shared.protocol.versions import PROTOCOL_VERSION, SUPPORTED_VERSIONS

__all__ = [
    "PROTOCOL_VERSION",
    "capability_fields",
    "check_cut_shape",
    "decode_frame",
    "decode_message",
    "encode_frame",
    "frame_fields",
]

# Bounds that need no tuning (PROTOCOL.md, "Limits"). Strings are short by nature; these
# keep a hostile frame from making the decoder build large Python objects.
MAX_STRING_BYTES: Final = 64 * 1024  # any msgpack str
MAX_NAME_BYTES: Final = 256  # ids, tensor names, config keys, error codes
MAX_FINGERPRINT_BYTES: Final = 128  # HELLO's model_fingerprint (a sha256 is 64 hex digits)
MAX_TOKEN_BYTES: Final = 8192
MAX_CONFIG_STRING_BYTES: Final = 4096
MAX_REASON_BYTES: Final = 123  # fits a WebSocket close reason (RFC 6455 section 5.5)
MAX_CONFIG_ENTRIES: Final = 256
MAX_ARRAY_ITEMS: Final = 64  # only shapes are arrays
_INT64_MAX: Final = (1 << 63) - 1
_XOR_DTYPES: Final = frozenset({"int32", "int64"})
_SIZE_BOUND: Final = re.compile(r"exceeds max_(str|bin|array|map)_len")


@dataclasses.dataclass(slots=True)
class _Context:
    limits: Limits
    budget: DecodeBudget


class _Kind:
    """How one field travels: ``encode`` checks a local value, ``decode`` a received one.

    Both raise :class:`MalformedFrame` naming the field; :func:`encode_frame` turns that into
    :class:`EncodeError`, because a local value is at fault. Scalar kinds implement ``check``,
    the same in both directions; containers override ``encode`` and ``decode``.
    """

    def check(self, value: Any, path: str) -> Any:
        raise NotImplementedError

    def encode(self, value: Any, path: str) -> Any:
        return self.check(value, path)

    def decode(self, wire: Any, path: str, ctx: _Context) -> Any:
        return self.check(wire, path)


def _type_error(expected: str, value: object, path: str) -> MalformedFrame:
    return MalformedFrame(f"expected {expected}, got {type(value).__name__}", field=path)


class _UInt(_Kind):
    """Sequence numbers and versions: msgpack int in [0, 2^63 − 1]."""

    def check(self, value: Any, path: str) -> int:
        if isinstance(value, bool | float) or not isinstance(value, int | np.integer):
            raise _type_error("int", value, path)
        number = operator.index(value)
        if not 0 <= number <= _INT64_MAX:
            raise MalformedFrame(f"{number} is outside [0, 2^63 - 1]", field=path)
        return number


class _Float(_Kind):
    """A finite float; msgpack float 32/64, or an int (JavaScript encoders write 1.0 as 1)."""

    def check(self, value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
            raise _type_error("float", value, path)
        number = float(value)
        if not math.isfinite(number):
            raise MalformedFrame(f"{number} is not finite", field=path)
        return number


class _Bool(_Kind):
    def check(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool | np.bool_):
            raise _type_error("bool", value, path)
        return bool(value)


class _Str(_Kind):
    def __init__(self, max_bytes: int, *, allow_empty: bool = True) -> None:
        self.max_bytes = max_bytes
        self.allow_empty = allow_empty

    def check(self, value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise _type_error("str", value, path)
        if not value and not self.allow_empty:
            raise MalformedFrame("must not be empty", field=path)
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError as exc:  # lone surrogates cannot be sent
            raise MalformedFrame("is not valid UTF-8", field=path) from exc
        if size > self.max_bytes:
            raise MalformedFrame(f"{size} bytes exceed {self.max_bytes}", field=path)
        return value


class _Shape(_Kind):
    """A per-sample shape: 1 to MAX_ARRAY_ITEMS − 1 positive ints (the batch takes one)."""

    def check(self, value: Any, path: str) -> tuple[int, ...]:
        if not isinstance(value, list | tuple):
            raise _type_error("array of int", value, path)
        if not 1 <= len(value) < MAX_ARRAY_ITEMS:
            raise MalformedFrame(f"must have 1 to {MAX_ARRAY_ITEMS - 1} dimensions", field=path)
        dims = tuple(_UInt().check(dim, f"{path}[{i}]") for i, dim in enumerate(value))
        if min(dims) < 1:
            raise MalformedFrame(f"dimensions must be positive, got {list(dims)}", field=path)
        return dims

    def encode(self, value: Any, path: str) -> Any:
        return list(self.check(value, path))


_NAME = _Str(MAX_NAME_BYTES, allow_empty=False)
_CONFIG_STRING = _Str(MAX_CONFIG_STRING_BYTES)


class _Config(_Kind):
    """Run configuration: str → nil | bool | int | float | str (docs/DESIGN.md §2: α, β, R, ...).

    Floats may be infinite (R = ∞ is the no-reconciliation ablation) but not NaN.
    """

    def _value(self, value: Any, path: str) -> ConfigValue:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int | np.integer):
            number = operator.index(value)
            if not -_INT64_MAX - 1 <= number <= _INT64_MAX:
                raise MalformedFrame(f"{number} does not fit int64", field=path)
            return number
        if isinstance(value, float | np.floating):
            if math.isnan(value):
                raise MalformedFrame("NaN is not a configuration value", field=path)
            return float(value)
        if isinstance(value, str):
            return str(_CONFIG_STRING.check(value, path))
        raise _type_error("nil, bool, int, float or str", value, path)

    def check(self, value: Any, path: str) -> dict[str, ConfigValue]:
        if not isinstance(value, Mapping):
            raise _type_error("map", value, path)
        if len(value) > MAX_CONFIG_ENTRIES:
            raise MalformedFrame(f"more than {MAX_CONFIG_ENTRIES} entries", field=path)
        return {
            _NAME.check(key, f"{path} key"): self._value(item, f"{path}.{key}")
            for key, item in value.items()
        }


class _Tensor(_Kind):
    def encode(self, value: Any, path: str) -> Any:
        if not isinstance(value, WireTensor):
            raise _type_error("WireTensor", value, path)
        try:
            return encode_tensor(value)
        except EncodeError as exc:
            raise EncodeError(f"{path}: {exc}") from exc

    def decode(self, wire: Any, path: str, ctx: _Context) -> Any:
        return decode_tensor(wire, limits=ctx.limits, budget=ctx.budget, path=path)


class _TensorSet(_Kind):
    """Named tensors (a state-dict subset): str → tensor, at most ``max_weight_tensors``."""

    def _check_count(self, value: Mapping[Any, Any], path: str, limits: Limits) -> None:
        limit = limits.max_weight_tensors
        if limit is not None and len(value) > limit:
            raise FrameTooLarge(f"{path}: {len(value)} tensors exceed max_weight_tensors {limit}")

    def encode(self, value: Any, path: str) -> Any:
        if not isinstance(value, Mapping):
            raise _type_error("map of WireTensor", value, path)
        return {
            _NAME.check(name, f"{path} key"): _Tensor().encode(tensor, f"{path}.{name}")
            for name, tensor in value.items()
        }

    def decode(self, wire: Any, path: str, ctx: _Context) -> Any:
        if not isinstance(wire, dict):
            raise _type_error("map", wire, path)
        self._check_count(wire, path, ctx.limits)
        return {
            _NAME.check(name, f"{path} key"): _Tensor().decode(tensor, f"{path}.{name}", ctx)
            for name, tensor in wire.items()
        }


class _Optional(_Kind):
    """``nil`` stands for None; the key itself is always present."""

    def __init__(self, kind: _Kind) -> None:
        self.kind = kind

    def encode(self, value: Any, path: str) -> Any:
        return None if value is None else self.kind.encode(value, path)

    def decode(self, wire: Any, path: str, ctx: _Context) -> Any:
        return None if wire is None else self.kind.decode(wire, path, ctx)


class _CapabilityField(_Kind):
    """A field a capability adds (PROTOCOL.md §10.2): written only when it has a value.

    Absent, it is None, so a frame without it is byte for byte the major version's own form
    and a peer that does not speak the capability never sees the key; present, it must hold
    a value (not nil). Whether the session granted the capability is the session's check.
    """

    def __init__(self, kind: _Kind) -> None:
        self.kind = kind

    def encode(self, value: Any, path: str) -> Any:
        return self.kind.encode(value, path)

    def decode(self, wire: Any, path: str, ctx: _Context) -> Any:
        return self.kind.decode(wire, path, ctx)


class _Nested(_Kind):
    """A piggybacked frame: a map of its fields, without ``v`` and ``t`` (the key says which)."""

    def __init__(self, cls: type[Frame]) -> None:
        self.cls = cls

    def encode(self, value: Any, path: str) -> Any:
        if not isinstance(value, self.cls):
            raise _type_error(self.cls.__name__, value, path)
        return _encode_fields(value, path)

    def decode(self, wire: Any, path: str, ctx: _Context) -> Any:
        if not isinstance(wire, dict):
            raise _type_error("map", wire, path)
        return _decode_fields(self.cls, wire, path, ctx)


class _DeltaKind(_Str):
    """``add`` or ``xor`` (PROTOCOL.md, "Deltas")."""

    KINDS: Final = ("add", "xor")

    def __init__(self) -> None:
        super().__init__(8, allow_empty=False)

    def check(self, value: Any, path: str) -> str:
        text = super().check(value, path)
        if text not in self.KINDS:
            raise MalformedFrame(
                f"expected one of {', '.join(self.KINDS)}, got {text!r}", field=path
            )
        return text


class _Checksum(_UInt):
    """A CRC-32 (PROTOCOL.md §3.1): msgpack int in [0, 2^32 − 1]."""

    def check(self, value: Any, path: str) -> int:
        number = super().check(value, path)
        if number > 0xFFFF_FFFF:
            raise MalformedFrame(f"{number} is outside [0, 2^32 - 1]", field=path)
        return number


_SEQ = _UInt()
_VERSION = _UInt()
_CHECKSUM = _Checksum()
_TENSOR = _Tensor()
_TENSORS = _TensorSet()

# The wire fields of each frame, in the order the encoder writes them (decoders must not
# depend on the order). PROTOCOL.md, "Messages", documents this table; a test keeps the
# two in step with the dataclasses.
_SPECS: Final[Mapping[type[Frame], tuple[tuple[str, _Kind], ...]]] = {
    Hello: (
        ("edge_id", _NAME),
        ("model_id", _NAME),
        ("cut_shape", _Shape()),
        ("config", _Config()),
        ("token", _Optional(_Str(MAX_TOKEN_BYTES))),
        ("resume", _Optional(_SEQ)),
        ("model_fingerprint", _Optional(_Str(MAX_FINGERPRINT_BYTES, allow_empty=False))),
        ("capabilities", _Config()),
    ),
    Welcome: (
        ("session_id", _NAME),
        ("master_version", _VERSION),
        ("cut_shape", _Shape()),
        ("window", _Optional(_UInt())),
        ("acked_seq", _Optional(_SEQ)),
        ("config", _Config()),
        ("capabilities", _Config()),
    ),
    Act: (
        ("seq", _SEQ),
        ("edge_version", _VERSION),
        ("activations", _TENSOR),
        ("labels", _TENSOR),
        ("egrad", _Optional(_Nested(EGrad))),
    ),
    Grad: (
        ("seq", _SEQ),
        ("master_version", _VERSION),
        ("cut_grad", _TENSOR),
        ("loss", _Float()),
        ("delta", _Optional(_Nested(Delta))),
    ),
    EGrad: (("seq", _SEQ), ("edge_version", _VERSION), ("grads", _TENSORS), ("samples", _UInt())),
    Delta: (
        ("from_version", _VERSION),
        ("to_version", _VERSION),
        ("tensors", _TENSORS),
        ("kind", _DeltaKind()),
        ("checksum", _CHECKSUM),
    ),
    Snap: (
        ("master_version", _VERSION),
        ("tensors", _TENSORS),
        ("reconcile", _Bool()),
        ("checksum", _CHECKSUM),
    ),
    Ack: (
        ("seq", _SEQ),
        ("master_version", _VERSION),
        ("durable_until", _Optional(_SEQ)),
        ("credits", _CapabilityField(_UInt())),  # capability `credits` (PROTOCOL.md §6.7)
    ),
    Error: (("code", _NAME), ("reason", _Str(MAX_REASON_BYTES))),
    Bye: (("reason", _Str(MAX_REASON_BYTES)),),
}


def _encode_fields(frame: Frame, path: str) -> dict[str, Any]:
    return {
        name: kind.encode(getattr(frame, name), f"{path}.{name}")
        for name, kind in _SPECS[type(frame)]
        if not (isinstance(kind, _CapabilityField) and getattr(frame, name) is None)
    }


def _decode_fields(cls: type[Frame], wire: dict[Any, Any], path: str, ctx: _Context) -> Frame:
    spec = _SPECS[cls]
    names = [name for name, _ in spec]
    for name, kind in spec:
        if name not in wire and not isinstance(kind, _CapabilityField):
            raise MalformedFrame(f"missing field {name!r}", field=path)
    for key in wire:
        if key not in names:
            raise MalformedFrame(f"unexpected field {str(key)[:40]!r}", field=path)
    values = {
        name: kind.decode(wire[name], f"{path}.{name}", ctx) for name, kind in spec if name in wire
    }
    return cls(**values)


def _check_structure(frame: Frame) -> None:
    """Rules that tie fields of one frame together, whatever the session (docs/DESIGN.md §3)."""
    if isinstance(frame, Act):
        batch = _batch_size(frame.activations, "act.activations")
        labels = frame.labels
        if labels.dtype != "int64" or labels.shape != (batch,):
            raise InvalidTensor(
                f"act.labels: expected int64[{batch}], got {labels.dtype}{list(labels.shape)}"
            )
        if frame.egrad is not None and frame.egrad.seq >= frame.seq:
            # A sequence rule (PROTOCOL.md §3, ACT's `egrad`), refused like the others of §6.3.
            raise UnexpectedSequence(
                f"act.egrad.seq: piggybacked EGRAD {frame.egrad.seq} must be below "
                f"the ACT's seq {frame.seq}"
            )
    elif isinstance(frame, Grad):
        _batch_size(frame.cut_grad, "grad.cut_grad")
        if frame.cut_grad.dtype not in FLOAT_DTYPES:
            raise InvalidTensor(
                f"grad.cut_grad: expected a float dtype, got {frame.cut_grad.dtype}"
            )
        if frame.delta is not None:
            _check_structure(frame.delta)
    elif isinstance(frame, Delta):
        if frame.from_version >= frame.to_version:
            raise MalformedFrame(
                f"from_version {frame.from_version} must be below to_version {frame.to_version}",
                field="delta",
            )
        if frame.kind == "xor":
            # XOR deltas are bit patterns of the weights (PROTOCOL.md, "Deltas"): integers.
            for name, tensor in frame.tensors.items():
                if tensor.dtype not in _XOR_DTYPES:
                    raise InvalidTensor(
                        f"delta.tensors.{name}: an xor delta holds int32 or int64 bit "
                        f"patterns, got {tensor.dtype}"
                    )


def _batch_size(tensor: WireTensor, path: str) -> int:
    if not tensor.shape or tensor.shape[0] < 1:
        raise InvalidTensor(f"{path}: expected shape (batch ≥ 1, ...), got {list(tensor.shape)}")
    return int(tensor.shape[0])


def check_cut_shape(frame: Frame, cut_shape: tuple[int, ...]) -> None:
    """Check ACT activations and GRAD cut_grad against (batch, *cut_shape) of the session.

    Raises :class:`InvalidTensor` (PROTOCOL.md §4.2: shape against the session's cut
    shape). Frames without cut-layer tensors pass.
    """
    if isinstance(frame, Act):
        tensor, path = frame.activations, "act.activations"
    elif isinstance(frame, Grad):
        tensor, path = frame.cut_grad, "grad.cut_grad"
    else:
        return
    if tensor.shape[1:] != tuple(cut_shape):
        raise InvalidTensor(
            f"{path}: expected shape (batch, {', '.join(map(str, cut_shape))}), "
            f"got {list(tensor.shape)}"
        )


def encode_frame(frame: Frame, *, version: int = PROTOCOL_VERSION) -> bytes:
    """The bytes of one WebSocket binary message carrying ``frame``.

    ``version`` is the envelope's ``v``: the session's major version. An ERROR may be
    written in any version ≥ 1 (its form is the same in all of them: the refusal of a
    peer's version is written in that peer's version, PROTOCOL.md §1.1); every other frame
    only in a version this implementation speaks.

    Raises :class:`EncodeError` for a frame a peer would refuse on its own terms (wrong field
    types, non-finite or unencodable tensors, inconsistent fields). Session rules (order,
    window, cut shape) are checked by the sessions' ``send``.
    """
    if type(frame) not in _SPECS:
        raise EncodeError(f"not a frame: {type(frame).__name__}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise EncodeError(f"protocol version must be a positive int, got {version!r}")
    if not isinstance(frame, Error) and version not in SUPPORTED_VERSIONS:
        raise EncodeError(f"cannot write a {frame.type.upper()} in protocol version {version}")
    try:
        # Field types first: the structure check reads fields as the types they must be.
        wire = {"v": version, "t": frame.type, **_encode_fields(frame, frame.type)}
        _check_structure(frame)
    except ProtocolError as exc:
        raise EncodeError(str(exc)) from exc
    try:
        return bytes(msgpack.packb(wire, use_bin_type=True))
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"{frame.type}: cannot pack ({exc})") from exc


def _unpack(data: bytes, limits: Limits) -> object:
    map_limit = limits.max_weight_tensors
    max_map_len = len(data) if map_limit is None else max(MAX_CONFIG_ENTRIES, map_limit)
    try:
        return msgpack.unpackb(
            data,
            raw=False,  # str is UTF-8 text, bin is bytes
            use_list=True,
            strict_map_key=True,  # keys are str (or bytes, refused later)
            max_str_len=MAX_STRING_BYTES,
            max_bin_len=len(data),
            max_array_len=MAX_ARRAY_ITEMS,
            max_map_len=max_map_len,
            max_ext_len=0,  # no ext types (timestamps included)
        )
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException) as exc:
        # msgpack reports its size bounds as "N exceeds max_map_len(M)"; those are sizes
        # (an ext type, which we refuse by allowing none, is malformed instead).
        if _SIZE_BOUND.search(str(exc)):
            raise FrameTooLarge(f"msgpack container too large: {exc}") from exc
        raise MalformedFrame(f"not a single msgpack value: {exc}") from exc


def decode_frame(
    data: bytes | bytearray | memoryview | str,
    *,
    limits: Limits = DEFAULT_LIMITS,
    cut_shape: tuple[int, ...] | None = None,
    version: int | None = PROTOCOL_VERSION,
) -> Frame:
    """Validate and decode one WebSocket binary message.

    With ``cut_shape`` (known once the handshake is done), ACT activations and GRAD cut_grad
    must have shape (batch, *cut_shape). ``version`` is the session's major version (None:
    any this implementation speaks); another ``v`` is refused with
    :class:`ProtocolVersionMismatch`, except on an ERROR, which is read whatever its ``v``.
    A ``str`` (a WebSocket text message) is refused with :class:`UnknownMessageType`.
    Raises a :class:`ProtocolError` subclass for anything else than a valid frame; never a
    foreign exception.
    """
    return decode_message(data, limits=limits, cut_shape=cut_shape, version=version)[1]


def decode_message(
    data: bytes | bytearray | memoryview | str,
    *,
    limits: Limits = DEFAULT_LIMITS,
    cut_shape: tuple[int, ...] | None = None,
    version: int | None = PROTOCOL_VERSION,
) -> tuple[int, Frame]:
    """:func:`decode_frame`, returning the envelope's ``v`` beside the frame."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise UnknownMessageType(
            f"expected a binary message, got {type(data).__name__}: the protocol has no text"
        )
    size = memoryview(data).nbytes
    if limits.max_frame_bytes is not None and size > limits.max_frame_bytes:
        raise FrameTooLarge(
            f"frame of {size} bytes exceeds max_frame_bytes {limits.max_frame_bytes}"
        )
    wire = _unpack(bytes(data), limits)
    if not isinstance(wire, dict):
        raise MalformedFrame(f"expected a msgpack map, got {type(wire).__name__}")
    for key in ("v", "t"):
        if key not in wire:
            raise MalformedFrame(f"missing field {key!r}", field="frame")
    written = wire["v"]
    if isinstance(written, bool) or not isinstance(written, int):
        raise _type_error("int", written, "frame.v")
    accepted = SUPPORTED_VERSIONS if version is None else (version,)
    if written not in accepted:
        error = _foreign_error(wire, limits)
        if error is not None:
            return written, error
        speaks = ", ".join(f"v{v}" for v in accepted)
        raise ProtocolVersionMismatch(
            f"peer wrote protocol version {written}, this side speaks {speaks}: "
            "upgrade the older side, do not retry",
            peer_version=written if written >= 1 else None,
        )
    type_name = wire["t"]
    if not isinstance(type_name, str):
        raise _type_error("str", type_name, "frame.t")
    cls = FRAME_TYPES.get(type_name)
    if cls is None:
        raise UnknownMessageType(f"unknown message type {type_name[:40]!r}")
    fields = {key: value for key, value in wire.items() if key not in ("v", "t")}
    frame = _decode_fields(cls, fields, type_name, _Context(limits, DecodeBudget(limits)))
    _check_structure(frame)
    if cut_shape is not None:
        check_cut_shape(frame, cut_shape)
    return written, frame


def _foreign_error(wire: dict[Any, Any], limits: Limits) -> Error | None:
    """An ERROR written in another version (its form is fixed for all of them), or None."""
    if wire.get("t") != "error":
        return None
    fields = {key: value for key, value in wire.items() if key not in ("v", "t")}
    try:
        frame = _decode_fields(Error, fields, "error", _Context(limits, DecodeBudget(limits)))
    except ProtocolError:
        return None
    assert isinstance(frame, Error)
    return frame


def frame_fields(cls: type[Frame]) -> tuple[str, ...]:
    """The wire field names of a frame type, in encoding order (for docs and tests)."""
    return tuple(name for name, _ in _SPECS[cls])


def capability_fields(cls: type[Frame]) -> tuple[str, ...]:
    """The fields of a frame type that a capability adds: absent unless they hold a value."""
    return tuple(name for name, kind in _SPECS[cls] if isinstance(kind, _CapabilityField))
