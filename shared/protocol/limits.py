"""Limits one side enforces on what it receives (and, symmetrically, on what it sends).

Like ``max_size`` in python-websockets: keyword-only, the unit in the name, ``None`` disables
the limit. Rate limits and queue depths belong to the services, which see time and sockets.
"""

from __future__ import annotations

import dataclasses

from simultrain.shared.errors import ConfigError

__all__ = ["DEFAULT_LIMITS", "Limits"]

MiB = 1 << 20


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Bounds on frames, tensors and the in-flight window of one session.

    - ``max_frame_bytes``: size of one encoded frame (one WebSocket message), checked before
      it is parsed.
    - ``max_decompressed_bytes``: total size of all decoded tensors of one frame, checked
      against each tensor's *declared* dtype and shape before it is inflated or allocated,
      so an lz4 or top-k "bomb" is refused without spending the memory.
    - ``max_tensor_elements``: elements of any one tensor.
    - ``max_tensor_rank``: dimensions of any one tensor (not disableable: shapes are parsed).
    - ``max_weight_tensors``: entries of one named tensor set (EGRAD, DELTA, SNAP).
    - ``window``: most batches in flight at once (from an ACT to the ACK covering it), the
      run configuration's ``window`` W itself, the bound of docs/DESIGN.md §3.1.
      ``0`` and ``1`` are the same on the wire (one ACT at a time); with ``0`` the edge also
      waits for its replica to catch up, which is the training schedule's business.
    """

    max_frame_bytes: int | None = 64 * MiB
    max_decompressed_bytes: int | None = 256 * MiB
    max_tensor_elements: int | None = 1 << 26
    max_tensor_rank: int = 8
    max_weight_tensors: int | None = 4096
    window: int | None = 4

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None and field.name != "max_tensor_rank":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"Limits.{field.name} must be a non-negative int, got {value!r}")
        if self.max_tensor_rank > 64:
            raise ConfigError("Limits.max_tensor_rank must be at most 64")


DEFAULT_LIMITS = Limits()
