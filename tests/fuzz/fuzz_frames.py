"""Seeded frame generator and mutator shared by the fuzz targets (PROTOCOL.md §4.2, §5).

Every hostile message starts as a *valid* frame of some type, built at random and encoded
by :func:`encode_frame`, and is then broken by a stack of one to four mutations:

- byte level: bit flips, "interesting" bytes (msgpack type markers, 0x00/0xff), inserted,
  deleted and duplicated ranges, truncation, trailing junk, splices with another frame,
  length headers of str/bin/array/map rewritten to huge or tiny values;
- structure level (on the unpacked msgpack tree, then packed again): a field replaced by a
  value of the wrong type or an edge value (2^64 - 1, -2^63, NaN, ext types, ...), keys
  removed, added or renamed, ``v``/``t`` changed (type confusion), deep nesting, oversized
  containers and strings;
- tensor level: huge, negative, empty or high-rank declared shapes, unknown or mismatched
  dtype/codec, payloads one byte off, NaN/Inf bit patterns, int8 scales and top-k indices
  out of range, and lz4 payloads that are bombs, truncated, skippable, concatenated or
  declare the wrong content size.

A small share of messages is generated from scratch (random msgpack trees, random bytes).

Reproducibility: message ``index`` of a campaign with seed ``seed`` is drawn from
``random.Random(f"{seed}:{index}")`` alone, so ``hostile_message(seed, index, ...)`` rebuilds
any failing message without replaying the campaign. Failure reports print both numbers and
the message's hex.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import string
import traceback
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import lz4.frame
import msgpack
import numpy as np

from simultrain.shared.protocol import (
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
    encode_frame,
)

__all__ = [
    "FrameFacts",
    "Message",
    "hex_report",
    "hostile_message",
    "lz4_bomb",
    "seed_frame",
]

FLOAT_DTYPES = ("float32", "float16", "float64")
INT_DTYPES = ("int64", "int32", "uint8")
FLOAT_CODECS = ("raw", "lz4", "fp16", "int8", "topk")
LOSSLESS = ("raw", "lz4")
SEED_KINDS = ("hello", "welcome", "act", "act", "grad", "egrad", "egrad", "delta", "snap")
SEED_KINDS += ("ack", "error", "bye")
_WIRE_WORDS = ("", "act", "egrad", "add", "xor", "raw", "lz4", "float32", "int64")
ERROR_CODES = ("malformed_frame", "invalid_tensor", "window_exceeded", "a_future_code")


@dataclasses.dataclass(frozen=True)
class FrameFacts:
    """What a seed frame must agree with to get past the session rules, not just the decoder.

    ``cut_shape`` is the session's per-sample cut shape; ``next_seq`` the first sequence number
    a new ACT may use; ``answerable`` the ACTs a GRAD may answer (all of batch ``batch``);
    ``weights`` the parameter names and shapes of the edge stage (EGRAD, DELTA, SNAP).
    """

    cut_shape: tuple[int, ...]
    model_id: str = "imu-cnn1d"
    edge_id: str = "fuzz-edge"
    batch: int = 2
    next_seq: int = 3
    answerable: tuple[int, ...] = (2,)
    egrad_seq: int = 1
    version: int = 5
    weights: tuple[tuple[str, tuple[int, ...]], ...] = (("0.weight", (3, 2, 2)), ("0.bias", (3,)))
    num_classes: int = 7


@dataclasses.dataclass(frozen=True)
class Message:
    """One hostile WebSocket message and how it was made (for the failure report)."""

    data: bytes | str
    seed_type: str
    recipe: tuple[str, ...]


# --------------------------------------------------------------------------------------
# Valid seed frames
# --------------------------------------------------------------------------------------


def _values(rng: random.Random, size: int, *, scale: float = 1.0) -> np.ndarray:
    gen = np.random.default_rng(rng.getrandbits(32))
    return gen.standard_normal(size) * scale


def _tensor(
    rng: random.Random,
    shape: tuple[int, ...],
    *,
    dtype: str | None = None,
    codec: str | None = None,
) -> WireTensor:
    dtype = dtype or rng.choice(("float32",) * 4 + FLOAT_DTYPES)
    size = math.prod(shape)
    if dtype in FLOAT_DTYPES:
        codec = codec or rng.choice(FLOAT_CODECS)
        array = _values(rng, size).astype(dtype).reshape(shape)
    else:
        codec = codec if codec in LOSSLESS else rng.choice(LOSSLESS)
        info = np.iinfo(dtype)
        gen = np.random.default_rng(rng.getrandbits(32))
        array = gen.integers(max(info.min, -1000), min(info.max, 1000), size, dtype=dtype)
        array = array.reshape(shape)
    params: dict[str, int | float] = {}
    if codec == "topk":
        params = {"k": rng.randint(0, size)} if rng.random() < 0.5 else {"ratio": 0.5}
    return WireTensor(array, codec, params)  # type: ignore[arg-type]


def _labels(rng: random.Random, batch: int, facts: FrameFacts) -> WireTensor:
    gen = np.random.default_rng(rng.getrandbits(32))
    array = gen.integers(0, facts.num_classes, batch, dtype=np.int64)
    return WireTensor(array, rng.choice(LOSSLESS))  # type: ignore[arg-type]


def _tensor_set(
    rng: random.Random, facts: FrameFacts, *, xor: bool = False
) -> dict[str, WireTensor]:
    out = {}
    for name, shape in facts.weights:
        if xor:
            out[name] = _tensor(rng, shape, dtype=rng.choice(("int32", "int64")))
        else:
            out[name] = _tensor(rng, shape, dtype=rng.choice(("float32", "float32", "float64")))
    return out


def _config(rng: random.Random) -> dict[str, Any]:
    config: dict[str, Any] = {"mode": "simultrain"}
    pool: list[tuple[str, Any]] = [
        ("alpha", 0.5),
        ("beta", 0.9),
        ("window", 4),
        ("reconcile_every", math.inf),
        ("reconcile_offset", rng.randint(0, 9)),
        ("act_codec", "lz4"),
        ("note", None),
        ("flag", True),
    ]
    for key, value in rng.sample(pool, rng.randint(0, len(pool))):
        config[key] = value
    return config


def _egrad(rng: random.Random, facts: FrameFacts, seq: int) -> EGrad:
    return EGrad(
        seq=seq,
        edge_version=rng.choice((0, facts.version, max(facts.version - 1, 0))),
        grads=_tensor_set(rng, facts),
        samples=rng.choice((0, 0, facts.batch, 32)),
    )


def _delta(rng: random.Random, facts: FrameFacts) -> Delta:
    xor = rng.random() < 0.5
    return Delta(
        from_version=facts.version,
        to_version=facts.version + rng.randint(1, 3),
        tensors=_tensor_set(rng, facts, xor=xor),
        kind="xor" if xor else "add",
        checksum=rng.randrange(1 << 32),
    )


def seed_frame(rng: random.Random, facts: FrameFacts, kind: str | None = None) -> Frame:
    """A valid frame of type ``kind`` (random when None) consistent with ``facts``."""
    kind = kind or rng.choice(SEED_KINDS)
    cut = facts.cut_shape
    if kind == "hello":
        return Hello(
            edge_id=facts.edge_id,
            model_id=facts.model_id,
            cut_shape=cut,
            config=_config(rng),
            token=rng.choice((None, "t0k3n", "x" * 200)),
            resume=rng.choice((None, None, max(facts.next_seq - 2, 0))),
        )
    if kind == "welcome":
        return Welcome(
            session_id="fuzz-session",
            master_version=facts.version,
            cut_shape=cut,
            window=rng.choice((1, 2, 4)),
            acked_seq=rng.choice((None, 0)),
            config=_config(rng),
        )
    if kind == "act":
        with_egrad = rng.random() < 0.4 and facts.egrad_seq < facts.next_seq
        return Act(
            seq=facts.next_seq,
            edge_version=facts.version,
            activations=_tensor(
                rng,
                (facts.batch, *cut),
                dtype=rng.choice(("float32",) * 6 + ("float16", "float64", "uint8")),
            ),
            labels=_labels(rng, facts.batch, facts),
            egrad=_egrad(rng, facts, facts.egrad_seq) if with_egrad else None,
        )
    if kind == "grad":
        return Grad(
            seq=rng.choice(facts.answerable),
            master_version=facts.version + 1,
            cut_grad=_tensor(rng, (facts.batch, *cut), dtype=rng.choice(("float32", "float16"))),
            loss=rng.choice((0.0, 1.25, 3)),
            delta=_delta(rng, facts) if rng.random() < 0.4 else None,
        )
    if kind == "egrad":
        return _egrad(rng, facts, facts.egrad_seq)
    if kind == "delta":
        return _delta(rng, facts)
    if kind == "snap":
        return Snap(
            master_version=facts.version,
            tensors=_tensor_set(rng, facts),
            reconcile=rng.random() < 0.5,
            checksum=rng.randrange(1 << 32),
        )
    if kind == "ack":
        return Ack(seq=max(facts.answerable), master_version=facts.version)
    if kind == "error":
        return Error(code=rng.choice(ERROR_CODES), reason="fuzz: " + "é" * rng.randint(0, 50))
    if kind == "bye":
        return Bye(reason=rng.choice(("", "done", "ü" * 61)))
    raise ValueError(f"unknown frame kind {kind!r}")


# --------------------------------------------------------------------------------------
# lz4 payloads
# --------------------------------------------------------------------------------------


@cache
def lz4_bomb(nbytes: int) -> bytes:
    """An lz4 frame of ``nbytes`` zeros (a few KB per MiB), content size not recorded."""
    compressor = lz4.frame.LZ4FrameCompressor()
    chunk = bytes(min(nbytes, 4 << 20))
    parts = [compressor.begin()]
    left = nbytes
    while left > 0:
        parts.append(compressor.compress(chunk[: min(left, len(chunk))]))
        left -= len(chunk)
    parts.append(compressor.flush())
    return b"".join(parts)


def _lz4_payload(rng: random.Random, expected: int) -> bytes:
    """A hostile lz4 payload for a tensor that should inflate to ``expected`` bytes."""
    honest = lz4.frame.compress(bytes(rng.getrandbits(8) for _ in range(min(expected, 64))))
    choice = rng.randrange(9)
    if choice == 0:  # inflates far past what the shape declares
        return lz4_bomb(rng.choice((1 << 16, 1 << 20, 8 << 20)))
    if choice == 1:  # truncated
        return honest[: rng.randrange(len(honest))]
    if choice == 2:  # two frames back to back
        return honest + honest
    if choice == 3:  # a skippable frame (magic 0x184D2A50..5F) with a payload
        return b"\x50\x2a\x4d\x18" + (8).to_bytes(4, "little") + bytes(8)
    if choice == 4:  # header declares a content size other than the shape's
        return lz4.frame.compress(bytes(expected + rng.choice((-1, 1, 4096))), store_size=True)
    if choice == 5:  # block checksums and content checksum on, then corrupted
        data = bytearray(
            lz4.frame.compress(bytes(expected), block_checksum=True, content_checksum=True)
        )
        data[-1] ^= 0xFF
        return bytes(data)
    if choice == 6:  # not lz4 at all
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 32)))
    if choice == 7:  # magic only / header only
        return honest[: rng.choice((4, 6, 7))]
    return lz4.frame.compress(bytes(expected), store_size=False)  # valid, size unrecorded


# --------------------------------------------------------------------------------------
# Structure-aware mutations (on the unpacked msgpack tree)
# --------------------------------------------------------------------------------------

_HUGE_SHAPES: tuple[list[Any], ...] = (
    [1 << 31, 1 << 31],
    [1 << 62],
    [(1 << 63) - 1],
    [(1 << 64) - 1],
    [10**9, 10**9, 10**9],
    [65536, 65536],
    [8192, 8192],
    [0],
    [],
    [0, 1 << 40],
    [1 << 21],
    [1 << 20, 2],
    [1000, 1000],
    [-1],
    [1] * 9,
    [1] * 64,
    [1.5],
    ["2"],
    [True],
    [None],
    [[2]],
)
_DTYPES = (*FLOAT_DTYPES, *INT_DTYPES, "float128", "bool", "object", "<f4", ">f4", "complex64", "")
_CODECS = (*FLOAT_CODECS, "zstd", "RAW", "", "lz4 ")


def _hostile_value(rng: random.Random) -> Any:
    pool: list[Callable[[], Any]] = [
        lambda: None,
        lambda: True,
        lambda: False,
        lambda: 0,
        lambda: -1,
        lambda: (1 << 64) - 1,
        lambda: 1 << 63,
        lambda: -(1 << 63),
        lambda: (1 << 63) - 1,
        lambda: 1.5,
        lambda: float("nan"),
        lambda: float("inf"),
        lambda: -float("inf"),
        lambda: 1e308,
        lambda: "",
        lambda: "x" * rng.choice((1, 123, 124, 257, 4097, 8193, 65537)),
        lambda: "\u0000\uffff",
        lambda: b"",
        lambda: bytes(rng.randint(1, 64)),
        lambda: [],
        lambda: [1] * rng.choice((1, 63, 64, 65)),
        lambda: {},
        lambda: {"a": 1},
        lambda: msgpack.ExtType(rng.randint(0, 127), b"\x00" * rng.randint(0, 16)),
        lambda: msgpack.Timestamp(0, 0),
    ]
    return rng.choice(pool)()


def _paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield path, node
    if len(path) > 12:  # frames are shallow; deeper trees are our own nesting mutations
        return
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*path, i))


def _set_at(root: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    node = root
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return root


def _tensor_maps(root: Any) -> list[dict[str, Any]]:
    return [node for _, node in _paths(root) if isinstance(node, dict) and "codec" in node]


def _mutate_tensor(rng: random.Random, wire: dict[str, Any]) -> str:
    op = rng.randrange(15)
    if op == 0:
        wire["shape"] = list(rng.choice(_HUGE_SHAPES))
        return f"tensor.shape={wire['shape']!r:.40}"
    if op == 1:
        wire["dtype"] = rng.choice(_DTYPES)
        return f"tensor.dtype={wire['dtype']}"
    if op == 2:
        wire["codec"] = rng.choice(_CODECS)
        return f"tensor.codec={wire['codec']}"
    if op == 3:  # payload one element or one byte off
        data = wire.get("data")
        if isinstance(data, bytes):
            wire["data"] = data + b"\x00" if rng.random() < 0.5 else data[:-1]
        return "tensor.data off by one"
    if op == 4:  # NaN / Inf bit patterns into the payload
        data = wire.get("data")
        if isinstance(data, bytes) and data:
            pattern = rng.choice(
                (
                    b"\x00\x00\xc0\x7f",  # float32 NaN
                    b"\x00\x00\x80\x7f",  # float32 +inf
                    b"\x00\x00\x80\xff",  # float32 -inf
                    b"\x00\x7e",  # float16 NaN
                    b"\x00\x7c",  # float16 +inf
                    b"\x00\x00\x00\x00\x00\x00\xf8\x7f",  # float64 NaN
                    b"\xff\xff\x7f\x7f",  # float32 max (finite)
                    b"\xff\xff\xff\xff\xff\xff\xef\x7f",  # float64 max (finite)
                )
            )
            at = rng.randrange(len(data))
            wire["data"] = (data[:at] + pattern + data[at + len(pattern) :])[: len(data)]
        return "tensor.data non-finite/extreme"
    if op == 5:
        shape = wire.get("shape")
        size = (
            math.prod(shape)
            if isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
            else 64
        )
        wire["codec"] = "lz4"
        for extra in ("scale", "k", "index_dtype", "indices"):
            wire.pop(extra, None)
        itemsize = 8 if wire.get("dtype") in ("float64", "int64") else 4
        wire["data"] = _lz4_payload(rng, min(size * itemsize, 1 << 16))
        return "tensor.data=lz4 hostile"
    if op == 6:
        wire["codec"] = "int8"
        for extra in ("k", "index_dtype", "indices"):
            wire.pop(extra, None)
        wire["scale"] = rng.choice((float("nan"), float("inf"), -1.0, 1e308, 0.0, 1, "1", None))
        return f"tensor.scale={wire['scale']!r}"
    if op == 7:
        wire["codec"] = "topk"
        wire.pop("scale", None)
        k = rng.choice((-1, 0, 1, 2, 3, 1 << 40))
        index_dtype = rng.choice(("int32", "int64", "int16", "uint32"))
        indices = rng.choice(([1, 0], [0, 0], [0, 1 << 40], [-1, 0], [0, 1], [5, 6, 7]))
        wire["k"], wire["index_dtype"] = k, index_dtype
        dt = "<i8" if index_dtype == "int64" else "<i4"
        wire["indices"] = np.array(indices, dtype=np.int64).astype(dt).tobytes()
        wire["data"] = bytes(4 * max(len(indices), 0))
        return f"tensor.topk k={k} idx={indices} {index_dtype}"
    if op == 8:
        wire["data"] = rng.choice(("text, not bin", None, [1, 2], 7))
        return "tensor.data wrong type"
    if op == 9:
        key = rng.choice(list(wire))
        del wire[key]
        return f"tensor drop {key}"
    if op == 10:
        wire[rng.choice(("extra", "scale", "k", "Data"))] = 1
        return "tensor extra key"
    if op in (11, 12, 13):  # flip bits inside the payload: the structure stays valid
        key = "indices" if "indices" in wire and rng.random() < 0.3 else "data"
        payload = wire.get(key)
        if isinstance(payload, bytes) and payload:
            flipped = bytearray(payload)
            for _ in range(rng.choice((1, 1, 2, 8))):
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            wire[key] = bytes(flipped)
        return f"tensor.{key} bit flips"
    # a declared shape far larger than the payload, with a matching lz4 bomb
    wire["codec"], wire["dtype"] = "lz4", "float32"
    for extra in ("scale", "k", "index_dtype", "indices"):
        wire.pop(extra, None)
    nbytes = rng.choice((1 << 20, 4 << 20, 16 << 20))
    wire["shape"] = [nbytes // 4]
    wire["data"] = lz4_bomb(nbytes)
    return f"tensor lz4 bomb of {nbytes} bytes, shape matching"


def _same_type_value(rng: random.Random, node: Any) -> Any:
    """A value of the same msgpack type as ``node``: reaches the checks behind the type check."""
    if isinstance(node, bool):
        return not node
    if isinstance(node, int):
        return rng.choice((0, 1, 2, 3, node - 1, node + 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1))
    if isinstance(node, float):
        return rng.choice((0.0, -1.0, 1e308, -1e308, 5e-324, float("nan"), float("inf")))
    if isinstance(node, str):
        long = "x" * rng.choice((123, 124, 256, 257, 4097, 8193))
        return rng.choice((*_WIRE_WORDS, node + node, node[:-1], "é" * 62, long))
    if isinstance(node, bytes):
        return node[: rng.randrange(len(node) + 1)] if node else b"\x00"
    if isinstance(node, list):
        out = list(node)
        if out and rng.random() < 0.7:
            out[rng.randrange(len(out))] = rng.choice((0, 1, 2, 3, 4, 7, 1 << 31, 1 << 62))
        elif rng.random() < 0.5:
            out.append(rng.choice((1, 2)))
        else:
            out = out[:-1]
        return out
    return _hostile_value(rng)


def _mutate_structure(
    rng: random.Random, root: dict[str, Any], splices: list[tuple[bytes, bytes]]
) -> str:
    op = rng.randrange(16)
    tensors = _tensor_maps(root)
    if op <= 4 and tensors:
        return _mutate_tensor(rng, rng.choice(tensors))
    paths = [(p, n) for p, n in _paths(root) if p]  # never the root itself
    path, node = rng.choice(paths)
    if op <= 8:
        _set_at(root, path, _same_type_value(rng, node))
        return f"same-type value at {path!r:.60}"
    if op == 9:
        _set_at(root, path, _hostile_value(rng))
        return f"hostile value at {path!r:.60}"
    if op == 10:
        maps = [(p, n) for p, n in [((), root), *paths] if isinstance(n, dict) and n]
        p, n = rng.choice(maps)
        key = rng.choice(list(n))
        del n[key]
        return f"drop {(*p, key)!r:.60}"
    if op == 11:
        maps = [n for _, n in [((), root), *paths] if isinstance(n, dict)]
        target = rng.choice(maps)
        key = rng.choice(("extra", "v", "t", "", "é" * 100, "x" * 300))
        target[key] = _hostile_value(rng)
        return f"add key {key!r:.20}"
    if op == 12:  # envelope: protocol version or type confusion
        if rng.random() < 0.5:
            root["v"] = rng.choice((0, 2, -1, (1 << 64) - 1, "1", 1.0, True, None, 255))
            return f"v={root['v']!r}"
        root["t"] = rng.choice((*SEED_KINDS, "ACT", "", "x" * 1000, 1, None, b"act"))
        return f"t={root['t']!r:.20}"
    if op == 13:  # deep nesting around one node, spliced in after packing (packb stops at 512)
        depth = rng.choice((10, 100, 500, 2000, 20000))
        header = rng.choice((b"\x91", b"\x81\xa1n", b"\xdc\x00\x01"))
        marker = f"\x00nest-{rng.getrandbits(32)}\x00"
        _set_at(root, path, marker)
        try:
            inner = msgpack.packb(node, use_bin_type=True)
        except (OverflowError, ValueError, TypeError):
            inner = b"\xc0"
        splices.append((msgpack.packb(marker), header * depth + inner))
        return f"nest {depth}x{header.hex()} at {path!r:.40}"
    if op == 14:  # oversized containers, strings and tensor sets
        sets = [n for _, n in paths if isinstance(n, dict) and n and all(
            isinstance(v, dict) and "codec" in v for v in n.values())]  # fmt: skip
        if sets and rng.random() < 0.5:
            target = rng.choice(sets)
            first = next(iter(target.values()))
            for i in range(rng.choice((65, 100, 300))):
                target[f"extra.{i}"] = first
            return "tensor set enlarged"
        big = rng.choice(
            (
                lambda: list(range(65)),
                lambda: {str(i): i for i in range(rng.choice((65, 100, 257, 4097, 5000)))},
                lambda: "s" * 65537,
                lambda: bytes(1 << rng.choice((10, 16, 20))),
            )
        )()
        _set_at(root, path, big)
        return f"oversize at {path!r:.40}"
    # nested frame confusion: a piggyback holding a full frame with envelope, or itself
    key = rng.choice(("egrad", "delta"))
    root[key] = dict(root) if rng.random() < 0.5 else {"v": PROTOCOL_VERSION, "t": key, "seq": 1}
    return f"piggyback confusion {key}"


# --------------------------------------------------------------------------------------
# Byte-level mutations
# --------------------------------------------------------------------------------------

_INTERESTING_BYTES = (
    0x00, 0xFF, 0x7F, 0x80, 0xC0, 0xC1, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9,
    0xCA, 0xCB, 0xCC, 0xCF, 0xD0, 0xD3, 0xD4, 0xD8, 0xD9, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF,
    0x90, 0x9F, 0x80, 0x8F, 0xA0, 0xBF,
)  # fmt: skip
_LENGTH_HEADERS = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4, 0xDC: 2, 0xDD: 4}
_LENGTH_HEADERS.update({0xDE: 2, 0xDF: 4})


def _mutate_bytes(rng: random.Random, data: bytearray, other: bytes) -> str:
    op = rng.randrange(11)
    n = len(data)
    at = rng.randrange(n) if n else 0
    if op == 0 and n:
        data[at] ^= 1 << rng.randrange(8)
        return f"flip bit @{at}"
    if op == 1 and n:
        data[at] = rng.choice(_INTERESTING_BYTES)
        return f"byte @{at}={data[at]:#x}"
    if op == 2:
        chunk = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 16)))
        data[at:at] = chunk
        return f"insert {len(chunk)} @{at}"
    if op == 3 and n:
        stop = min(n, at + rng.randint(1, 32))
        del data[at:stop]
        return f"delete [{at}:{stop}]"
    if op == 4:
        del data[at:]
        return f"truncate @{at}"
    if op == 5 and n:
        stop = min(n, at + rng.randint(1, 64))
        where = rng.randrange(n)
        data[where:where] = data[at:stop]
        return f"duplicate [{at}:{stop}] @{where}"
    if op == 6:
        junk = rng.choice((b"\xc0", b"\x00", other[:16], msgpack.packb({"v": PROTOCOL_VERSION})))
        data.extend(junk)
        return "trailing junk"
    if op == 7:
        cut = rng.randrange(len(other) + 1)
        data[at:] = other[cut:]
        return f"splice @{at} with other[{cut}:]"
    if op == 8 and n >= 8:
        width = rng.choice((2, 4, 8))
        at = rng.randrange(max(n - width, 1))
        value = rng.choice((0, (1 << (8 * width)) - 1, 1 << (8 * width - 1), 0x7F))
        data[at : at + width] = value.to_bytes(width, "big")
        return f"int{8 * width} @{at}"
    if op == 9:
        headers = [i for i, b in enumerate(data) if b in _LENGTH_HEADERS]
        if headers:
            i = rng.choice(headers)
            width = _LENGTH_HEADERS[data[i]]
            value = rng.choice((0, 1, (1 << (8 * width)) - 1, 1 << (8 * width - 1)))
            data[i + 1 : i + 1 + width] = value.to_bytes(width, "big")
            return f"length @{i}={value}"
        return "noop"
    for _ in range(rng.randint(2, 16)):  # a burst of random bytes
        if data:
            data[rng.randrange(len(data))] = rng.getrandbits(8)
    return "random burst"


# --------------------------------------------------------------------------------------
# Generated from scratch
# --------------------------------------------------------------------------------------


def _random_tree(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.choice((None, True, False))
    if kind == 1:
        return rng.randint(-(1 << 63), (1 << 64) - 1)
    if kind == 2:
        return rng.choice((0.0, -0.0, 1.5, float("nan"), float("inf"), 1e300))
    if kind == 3:
        return "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 12)))
    if kind == 4:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 12)))
    if kind == 5:
        return rng.choice(("act", "hello", "float32", "raw", "lz4", "seq", "shape"))
    if kind in (6, 7):
        keys = ("v", "t", "seq", "edge_version", "activations", "labels", "dtype", "shape")
        keys += ("codec", "data", "grads", "tensors", "cut_shape", "edge_id", "x")
        return {rng.choice(keys): _random_tree(rng, depth + 1) for _ in range(rng.randint(0, 6))}
    return [_random_tree(rng, depth + 1) for _ in range(rng.randint(0, 5))]


def _generated(rng: random.Random) -> tuple[bytes | str, str]:
    choice = rng.randrange(4)
    if choice == 0:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 256))), "random bytes"
    if choice == 1:
        tree = _random_tree(rng)
        if isinstance(tree, dict) and rng.random() < 0.7:
            kind = rng.choice(("act", "egrad", "hello", "grad"))
            tree = {"v": PROTOCOL_VERSION, "t": kind, **tree}
        return msgpack.packb(tree, use_bin_type=True), "random msgpack tree"
    if choice == 2:
        return "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 64))), "text"
    return msgpack.packb(rng.randint(0, 1 << 32)), "msgpack scalar"


# --------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------


def hostile_message(
    seed: int | str, index: int, facts: FrameFacts, *, kinds: tuple[str, ...] | None = None
) -> Message:
    """Message ``index`` of campaign ``seed``: a mutated valid frame, or a generated one.

    ``kinds`` restricts the seed frame types (e.g. the frames a cloud accepts after HELLO).
    """
    rng = random.Random(f"{seed}:{index}")
    if rng.random() < 0.05:
        data, recipe = _generated(rng)
        return Message(data, "generated", (recipe,))
    kind = rng.choice(kinds) if kinds else None
    frame = seed_frame(rng, facts, kind)
    valid = encode_frame(frame)
    recipe: list[str] = []
    mix = rng.random()
    if mix < 0.55:  # structure-aware, sometimes followed by a byte-level mutation
        root = msgpack.unpackb(valid, raw=False)
        splices: list[tuple[bytes, bytes]] = []
        for _ in range(rng.randint(1, 2)):
            recipe.append(_mutate_structure(rng, root, splices))
        try:
            packed = msgpack.packb(root, use_bin_type=True)
        except (OverflowError, ValueError, TypeError):
            recipe.append("unpackable: bytes only")
        else:
            for marker, replacement in splices:
                packed = packed.replace(marker, replacement, 1)
            valid = packed
    data = bytearray(valid)
    if not recipe or rng.random() < 0.25:
        other = encode_frame(seed_frame(rng, facts))
        for _ in range(rng.choice((1, 1, 1, 2, 3, 4))):
            recipe.append(_mutate_bytes(rng, data, other))
    return Message(bytes(data), frame.type, tuple(recipe))


def hex_report(data: bytes | str, *, limit: int = 4096) -> str:
    """The message as hex (or repr for text), cut at ``limit`` bytes with its full length."""
    if isinstance(data, str):
        return f"text {data[:limit]!r}"
    shown = data[:limit].hex()
    more = f"... ({len(data)} bytes in all)" if len(data) > limit else f" ({len(data)} bytes)"
    return shown + more


@dataclasses.dataclass
class Finding:
    """One kind of failure: the first message that showed it, and how often it recurred."""

    oracle: str
    detail: str
    seed: int | str
    index: int
    message: Message
    trace: str
    count: int = 1


class Findings:
    """Failures of a campaign, grouped by oracle and where they were raised.

    A campaign keeps going after a failure so that one report lists every distinct problem
    with a reproducer each, instead of stopping at the first.
    """

    def __init__(self, seed: int | str) -> None:
        self.seed = seed
        self.by_signature: dict[tuple[str, str], Finding] = {}

    def add(self, oracle: str, signature: str, detail: str, index: int, message: Message,
            trace: str = "") -> None:  # fmt: skip
        key = (oracle, signature)
        found = self.by_signature.get(key)
        if found is not None:
            found.count += 1
            return
        self.by_signature[key] = Finding(oracle, detail, self.seed, index, message, trace)

    def __bool__(self) -> bool:
        return bool(self.by_signature)

    def report(self, *, replay: str) -> str:
        """Every finding with its reproducer.

        With ``SIMULTRAIN_FUZZ_ARTIFACTS`` set to a folder, each finding's whole message is
        also written there (``finding-<n>.bin``, or ``.txt`` for a text message).
        """
        folder = os.environ.get("SIMULTRAIN_FUZZ_ARTIFACTS")
        lines = [f"{len(self.by_signature)} distinct finding(s), seed {self.seed!r}:"]
        for n, ((oracle, signature), found) in enumerate(self.by_signature.items()):
            lines += [
                "",
                f"[{oracle}] {found.detail}  (x{found.count}; at {signature})",
                f"  reproduce: {replay.format(seed=found.seed, index=found.index)}",
                f"  seed frame: {found.message.seed_type}; mutations: {list(found.message.recipe)}",
                f"  bytes: {hex_report(found.message.data, limit=1024)}",
            ]
            if folder:
                data = found.message.data
                path = Path(folder) / f"finding-{n}.{'txt' if isinstance(data, str) else 'bin'}"
                path.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(data, str):
                    path.write_text(data)
                else:
                    path.write_bytes(data)
                lines.append(f"  whole message: {path}")
            if found.trace:
                lines.append("  " + found.trace.strip().replace("\n", "\n  "))
        return "\n".join(lines)


def signature_of(exc: BaseException) -> str:
    """Exception type and the innermost project frame that raised it (groups findings)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/simultrain/" in f.filename or "/services/" in f.filename
            or "/shared/" in f.filename] or frames  # fmt: skip
    where = f"{ours[-1].filename.rsplit('/', 2)[-1]}:{ours[-1].lineno}" if ours else "?"
    return f"{type(exc).__name__} @ {where}"


def trace_of(exc: BaseException, *, lines: int = 8) -> str:
    text = "".join(traceback.format_exception(exc)).rstrip().splitlines()
    return "\n".join(text[-lines:])
