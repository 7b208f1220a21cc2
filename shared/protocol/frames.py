"""The messages of a SimulTrain session, one frozen dataclass each (docs/DESIGN.md §3).

Every frame carries the sequence number of the batch it is about (``seq``, the edge's batch
counter k) and/or the version it was computed at: ``edge_version`` (v_e, the master version
the edge replica reflects) or ``master_version`` (v_c, the cloud's counter, incremented by
every applied update). PROTOCOL.md gives the wire form of each field.

Direction: the edge sends HELLO, ACT, EGRAD; the cloud sends WELCOME, GRAD, DELTA, SNAP, ACK;
either side sends ERROR and BYE.

Piggybacking (docs/DESIGN.md §3.7): an ACT may carry the EGRAD of an earlier batch and a GRAD
may carry a DELTA, saving a message and its latency. They remain separate messages
semantically: a session's ``receive_data`` returns them as separate events.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar, TypeAlias

from simultrain.shared.errors import ProtocolError
from simultrain.shared.protocol.tensorcodec import WireTensor

__all__ = [
    "FRAME_TYPES",
    "Ack",
    "Act",
    "Bye",
    "ConfigValue",
    "Delta",
    "EGrad",
    "Error",
    "Frame",
    "Grad",
    "Hello",
    "Snap",
    "Welcome",
]

ConfigValue: TypeAlias = bool | int | float | str | None
"""A run configuration value: mode, alpha, beta, reconcile_every (may be inf), codecs, ..."""

TensorSet: TypeAlias = Mapping[str, WireTensor]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """Edge → cloud, first frame of a session: who the edge is and what it wants to run.

    ``cut_shape`` is the per-sample shape of the edge stage's output (without the batch
    dimension). ``resume`` is the highest sequence number the edge saw acknowledged in an
    earlier session, or None on a fresh start. ``token`` authenticates the edge
    (PROTOCOL.md §1). The major version is the WebSocket subprotocol and every frame's
    envelope ``v``; ``capabilities`` offers the optional extensions the edge speaks (name →
    a value the capability defines; PROTOCOL.md §10.2).
    """

    type: ClassVar[str] = "hello"
    edge_id: str
    model_id: str
    cut_shape: tuple[int, ...]
    config: Mapping[str, ConfigValue] = dataclasses.field(default_factory=dict)
    token: str | None = None
    resume: int | None = None
    model_fingerprint: str | None = None
    """sha256 (hex) of the model's canonical architecture text (PROTOCOL.md §3.3); the
    cloud refuses one that differs from its own with ``model_mismatch``. None: not checked."""
    capabilities: Mapping[str, ConfigValue] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Welcome:
    """Cloud → edge, answers HELLO: the session is open.

    ``cut_shape`` must equal the HELLO's. ``window`` is the in-flight window both sides
    enforce (None: unbounded). ``acked_seq`` is the highest sequence number the cloud has
    fully applied for this edge (None: none): the edge continues with larger numbers and
    re-sends any batch above it it still holds (PROTOCOL.md §6.5). ``capabilities`` are the
    ones HELLO offered that the cloud turned on for this session, with their values.
    """

    type: ClassVar[str] = "welcome"
    session_id: str
    master_version: int
    cut_shape: tuple[int, ...]
    window: int | None
    acked_seq: int | None = None
    config: Mapping[str, ConfigValue] = dataclasses.field(default_factory=dict)
    capabilities: Mapping[str, ConfigValue] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EGrad:
    """Edge → cloud: the edge-stage gradient of batch ``seq`` (docs/DESIGN.md §3.3).

    Computed at ``edge_version``, the version the batch's forward used; the cloud forecasts it
    to the current master (docs/DESIGN.md §3.4). Also the upload of whole-model gradients (syncsgd)
    or of a local update (fedavg), which have no ACT before them.
    """

    type: ClassVar[str] = "egrad"
    seq: int
    edge_version: int
    grads: TensorSet
    samples: int = 0
    """Training samples behind the upload; 0 when the cloud knows them from the batch's ACT."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Act:
    """Edge → cloud: the cut activations of batch ``seq`` and its labels (docs/DESIGN.md §3.1).

    ``activations`` has shape (batch, *cut_shape) and ``labels`` shape (batch,), int64.
    ``edge_version`` is the version of the edge weights used for the forward. In the
    centralized mode the cut sits at the input: ``activations`` is the raw batch.
    ``egrad`` piggybacks the gradient of an earlier batch.
    """

    type: ClassVar[str] = "act"
    seq: int
    edge_version: int
    activations: WireTensor
    labels: WireTensor
    egrad: EGrad | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Delta:
    """Cloud → edge: ``to_version`` minus ``from_version`` of the edge stage (docs/DESIGN.md §3.5).

    The edge applies deltas in version order; ``from_version < to_version``. ``kind`` says how:
    ``"add"``: w_e ← w_e + Δ (float tensors, any codec); ``"xor"``: the int32 bit patterns of
    the float32 weights are XOR-ed with Δ (lossless: the replica becomes the master bit for bit,
    valid only on the exact replica the cloud mirrors — PROTOCOL.md, "Deltas").
    """

    type: ClassVar[str] = "delta"
    from_version: int
    to_version: int
    tensors: TensorSet
    kind: str = "add"
    checksum: int  # CRC-32 of the replica after applying this DELTA (PROTOCOL.md §3.1)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Grad:
    """Cloud → edge: the cut-layer gradient of batch ``seq`` (docs/DESIGN.md §3.2).

    ``master_version`` is the master version after the cloud-stage update of this batch;
    ``cut_grad`` has the shape of the batch's activations; ``loss`` is the batch loss.
    ``delta`` piggybacks a DELTA.
    """

    type: ClassVar[str] = "grad"
    seq: int
    master_version: int
    cut_grad: WireTensor
    loss: float
    delta: Delta | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Snap:
    """Cloud → edge: the full edge-stage master at ``master_version``.

    ``reconcile`` True: soft reconciliation, w_e ← β·w_e + (1−β)·w_c (docs/DESIGN.md §3.6).
    False: replace the replica (first sync, resync after a delta gap, fedavg's average).
    """

    type: ClassVar[str] = "snap"
    master_version: int
    tensors: TensorSet
    reconcile: bool
    checksum: int  # CRC-32 of the replica after applying this SNAP (PROTOCOL.md §3.1)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """Cloud → edge: every batch with sequence number ≤ ``seq`` is fully applied.

    Cumulative, like a TCP acknowledgement. Batches with sequence numbers below
    ``durable_until`` (≤ ``seq + 1``) are also in a checkpoint on disk: the edge keeps every
    batch from ``durable_until`` on, so a cloud that crashes and resumes from its checkpoint
    gets them again (its WELCOME's ``acked_seq`` is the checkpoint's) and applies each
    exactly once. None: the cloud keeps no checkpoints; applied is as durable as it gets.
    """

    type: ClassVar[str] = "ack"
    seq: int
    master_version: int
    durable_until: int | None = None
    credits: int | None = None
    """Capability ``credits`` only (PROTOCOL.md §6.7): the batches this edge may have in
    flight from now on, ACT sent to ACK received. None: absent from the wire, the grant in
    force stays."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Error:
    """Either side: the session ends because of ``code`` (an ``ErrorCode`` value).

    ``reason`` is human-readable, at most 123 UTF-8 bytes so that it can also be the
    WebSocket close reason. The sender closes the connection with the code's close code.
    """

    type: ClassVar[str] = "error"
    code: str
    reason: str = ""

    @classmethod
    def from_exception(cls, exc: ProtocolError) -> Error:
        return cls(code=exc.code.value, reason=exc.reason)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Bye:
    """Either side: a clean end of the session (close code 1000, or 1001/1012 on shutdown)."""

    type: ClassVar[str] = "bye"
    reason: str = ""


Frame: TypeAlias = Hello | Welcome | Act | Grad | EGrad | Delta | Snap | Ack | Error | Bye

FRAME_TYPES: Mapping[str, type[Frame]] = {
    cls.type: cls for cls in (Hello, Welcome, Act, Grad, EGrad, Delta, Snap, Ack, Error, Bye)
}
