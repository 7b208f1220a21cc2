"""Where torch tensors meet wire tensors: the one place for ``detach().cpu()``, dtype and codec.

The protocol sees numpy arrays in :class:`WireTensor`; the training code sees
torch tensors. Nothing else in the project converts between the two (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from simultrain.shared.errors import EncodeError
from simultrain.shared.protocol.tensorcodec import Codec, WireTensor, decode_tensor, encode_tensor

__all__ = [
    "LOSSLESS_CODECS",
    "as_received",
    "from_wire",
    "state_from_wire",
    "state_to_wire",
    "to_wire",
    "xor_apply",
    "xor_delta",
]

LOSSLESS_CODECS = frozenset({Codec.RAW.value, Codec.LZ4.value})


def to_wire(tensor: Tensor, codec: str, *, topk_ratio: float = 0.1) -> WireTensor:
    """A CPU copy of ``tensor`` ready to encode with ``codec``."""
    array = tensor.detach().cpu().contiguous().numpy()
    params: dict[str, int | float] = {}
    if codec == Codec.TOPK.value:
        if array.dtype.kind != "f":
            raise EncodeError("topk needs a floating-point tensor")
        params = {"ratio": topk_ratio}
    elif codec not in LOSSLESS_CODECS and array.dtype.kind != "f":
        codec = Codec.LZ4.value  # labels and XOR patterns are integers: lossless only
    return WireTensor(array, Codec(codec), params)


def from_wire(wire: WireTensor) -> Tensor:
    """The decoded array as a tensor (no copy: decoded arrays are fresh and writable)."""
    array = wire.array
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(array))


def state_to_wire(
    tensors: Mapping[str, Tensor], codec: str, *, topk_ratio: float = 0.1
) -> dict[str, WireTensor]:
    return {name: to_wire(t, codec, topk_ratio=topk_ratio) for name, t in tensors.items()}


def state_from_wire(wire: Mapping[str, WireTensor]) -> dict[str, Tensor]:
    return {name: from_wire(w) for name, w in wire.items()}


def xor_delta(new: Tensor, old: Tensor) -> Tensor:
    """Bitwise XOR of two float32 tensors' bit patterns, as int32.

    A lossless delta: ``xor_apply(old, xor_delta(new, old)) == new`` bit for bit. Versions a
    few updates apart share sign, exponent and the high mantissa bits, so the pattern is
    mostly zero bytes and compresses well under lz4.
    """
    if new.dtype != torch.float32 or old.dtype != torch.float32:
        raise EncodeError(f"XOR deltas need float32 tensors, got {new.dtype} and {old.dtype}")
    return torch.bitwise_xor(new.contiguous().view(torch.int32), old.contiguous().view(torch.int32))


def xor_apply(base: Tensor, patterns: Tensor) -> Tensor:
    """Inverse of :func:`xor_delta` given the old tensor."""
    if patterns.dtype != torch.int32 or patterns.shape != base.shape:
        raise EncodeError(
            f"XOR pattern {patterns.dtype}{tuple(patterns.shape)} does not fit "
            f"{base.dtype}{tuple(base.shape)}"
        )
    out = torch.bitwise_xor(base.detach().contiguous().view(torch.int32), patterns)
    return out.view(torch.float32)


def as_received(wire: Mapping[str, WireTensor]) -> dict[str, WireTensor]:
    """What the peer will decode from ``wire``: the lossy codecs' error included.

    The cloud mirrors each edge's replica exactly (see ``training.runtime``), so it must add
    the delta the edge will *receive*, not the one it meant to send.
    """
    return {name: decode_tensor(encode_tensor(w), path=name) for name, w in wire.items()}
