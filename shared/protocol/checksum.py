"""The checksum a DELTA or SNAP carries: CRC-32 of the replica it should produce.

PROTOCOL.md §3.1. The cloud keeps an exact mirror of every edge's replica and sends, with each
DELTA and SNAP, the checksum of the replica the edge must hold once it has applied it. The
edge computes the same checksum over what it actually holds; a mismatch means its base was
not the one the cloud mirrored (a lost or reordered delta, a flipped bit, a client that
rounds differently), and it asks for a resync instead of training on corrupted weights.

Definition, so any language can compute it: CRC-32 as in zlib, gzip and PNG (ISO 3309,
polynomial 0x04C11DB7 reflected, initial value 0xFFFFFFFF, final xor 0xFFFFFFFF; Python's
``zlib.crc32``), over the concatenation, for every tensor in ascending order of its name
(compared as UTF-8 bytes), of its elements in C order as little-endian bytes of its dtype.
Names and shapes are not hashed: the receiver checks them separately (a replica with other
names or shapes is refused before any checksum is taken).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np

__all__ = ["replica_checksum"]


def replica_checksum(arrays: Mapping[str, np.ndarray]) -> int:
    """CRC-32 of ``arrays`` as PROTOCOL.md §3.1 defines it: an int in [0, 2³² − 1]."""
    crc = 0
    for name in sorted(arrays, key=lambda n: n.encode("utf-8")):
        array = np.asarray(arrays[name])
        little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        crc = zlib.crc32(little.tobytes(order="C"), crc)
    return crc
