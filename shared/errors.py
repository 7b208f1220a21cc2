"""The one exception tree of SimulTrain.

Every error the project raises on purpose derives from :class:`SimulTrainError`, so a caller
can catch "anything SimulTrain refused" without catching programming errors. Foreign errors
(msgpack, lz4, numpy, sqlite, ...) are translated at the boundary with ``raise ... from exc``,
so the original stays attached::

    SimulTrainError
    ├── ConfigError                     a setting or argument is invalid (local, never on the wire)
    ├── EncodeError                     a local value cannot be put on the wire
    ├── ProtocolError                   ends a session: code + WebSocket close code + reason
    │   ├── FrameTooLarge               frame_too_large            1009
    │   ├── DecompressedTooLarge        decompressed_too_large     1009
    │   ├── MalformedFrame              malformed_frame            1002
    │   ├── UnknownMessageType          unknown_message_type       1003
    │   ├── ProtocolVersionMismatch     protocol_version_mismatch  4000
    │   ├── HandshakeRejected           handshake_rejected         4001
    │   ├── ModelMismatch               model_mismatch             4003
    │   ├── InvalidTensor               invalid_tensor             1007
    │   │   └── NonFiniteTensor         non_finite_tensor          1007
    │   ├── IllegalTransition           illegal_transition         1002
    │   ├── UnexpectedSequence          unexpected_sequence        1002
    │   ├── WindowExceeded              window_exceeded            1008
    │   ├── Unauthorized                unauthorized               1008
    │   ├── RateLimited                 rate_limited               1008
    │   └── InternalError               internal_error             1011
    ├── TrainingError                   the step math refused an update
    │   ├── StaleGradientDropped        gradient older than the master history (docs/DESIGN.md §3.4)
    │   └── DeltaGapError               a delta gap did not fill in time (docs/DESIGN.md §4.3)
    └── StoreError                      a state store (coordinator, checkpoints) failed

Close codes follow RFC 6455 section 7.4.1 and the IANA registry; 4000-4999 are reserved by
RFC 6455 section 7.4.2 for private use and hold the cases where a peer must act differently
from a plain protocol error (upgrade, or change its configuration instead of retrying).
The table is :data:`CLOSE_CODES`; ``PROTOCOL.md`` documents it and a test keeps the two equal.

This module imports nothing from the project, so every layer can use it.
"""

from __future__ import annotations

import enum
from typing import ClassVar

__all__ = [
    "CLOSE_CODES",
    "MAX_CLOSE_REASON_BYTES",
    "CloseCode",
    "ConfigError",
    "DecompressedTooLarge",
    "DeltaGapError",
    "EncodeError",
    "ErrorCode",
    "FrameTooLarge",
    "HandshakeRejected",
    "IllegalTransition",
    "InternalError",
    "InvalidTensor",
    "MalformedFrame",
    "ModelMismatch",
    "NonFiniteTensor",
    "ProtocolError",
    "ProtocolVersionMismatch",
    "RateLimited",
    "SimulTrainError",
    "StaleGradientDropped",
    "StoreError",
    "TrainingError",
    "Unauthorized",
    "UnexpectedSequence",
    "UnknownMessageType",
    "WindowExceeded",
    "close_code_for",
    "truncate_reason",
]

# RFC 6455 section 5.5: a control frame's payload is at most 125 bytes, and a close frame
# spends 2 of them on the status code, leaving 123 bytes of UTF-8 for the reason.
MAX_CLOSE_REASON_BYTES = 123


class CloseCode(enum.IntEnum):
    """WebSocket close codes used by SimulTrain (RFC 6455 section 7.4.1, IANA registry)."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    # Private use (RFC 6455 section 7.4.2).
    PROTOCOL_VERSION_MISMATCH = 4000
    HANDSHAKE_REJECTED = 4001
    MODEL_MISMATCH = 4003


class ErrorCode(enum.StrEnum):
    """Machine-readable error codes, sent in ERROR frames (PROTOCOL.md, "Errors")."""

    FRAME_TOO_LARGE = "frame_too_large"
    DECOMPRESSED_TOO_LARGE = "decompressed_too_large"
    MALFORMED_FRAME = "malformed_frame"
    UNKNOWN_MESSAGE_TYPE = "unknown_message_type"
    PROTOCOL_VERSION_MISMATCH = "protocol_version_mismatch"
    HANDSHAKE_REJECTED = "handshake_rejected"
    MODEL_MISMATCH = "model_mismatch"
    INVALID_TENSOR = "invalid_tensor"
    NON_FINITE_TENSOR = "non_finite_tensor"
    ILLEGAL_TRANSITION = "illegal_transition"
    UNEXPECTED_SEQUENCE = "unexpected_sequence"
    WINDOW_EXCEEDED = "window_exceeded"
    UNAUTHORIZED = "unauthorized"
    RATE_LIMITED = "rate_limited"
    INTERNAL_ERROR = "internal_error"


CLOSE_CODES: dict[ErrorCode, CloseCode] = {
    # 1009 "message too big": the frame as received, or what it would inflate to.
    ErrorCode.FRAME_TOO_LARGE: CloseCode.MESSAGE_TOO_BIG,
    ErrorCode.DECOMPRESSED_TOO_LARGE: CloseCode.MESSAGE_TOO_BIG,
    # 1002 "protocol error": the bytes or their order break the protocol.
    ErrorCode.MALFORMED_FRAME: CloseCode.PROTOCOL_ERROR,
    ErrorCode.ILLEGAL_TRANSITION: CloseCode.PROTOCOL_ERROR,
    ErrorCode.UNEXPECTED_SEQUENCE: CloseCode.PROTOCOL_ERROR,
    # 1003 "unsupported data": a message kind this endpoint cannot accept (text, unknown "t").
    ErrorCode.UNKNOWN_MESSAGE_TYPE: CloseCode.UNSUPPORTED_DATA,
    # 1007 "invalid payload data": well-formed frame, unacceptable tensor content.
    ErrorCode.INVALID_TENSOR: CloseCode.INVALID_PAYLOAD,
    ErrorCode.NON_FINITE_TENSOR: CloseCode.INVALID_PAYLOAD,
    # 1008 "policy violation": auth, the in-flight window, rate limits.
    ErrorCode.WINDOW_EXCEEDED: CloseCode.POLICY_VIOLATION,
    ErrorCode.UNAUTHORIZED: CloseCode.POLICY_VIOLATION,
    ErrorCode.RATE_LIMITED: CloseCode.POLICY_VIOLATION,
    ErrorCode.INTERNAL_ERROR: CloseCode.INTERNAL_ERROR,
    # Private use: a reconnect with the same software or the same HELLO cannot succeed.
    ErrorCode.PROTOCOL_VERSION_MISMATCH: CloseCode.PROTOCOL_VERSION_MISMATCH,
    ErrorCode.HANDSHAKE_REJECTED: CloseCode.HANDSHAKE_REJECTED,
    # Edge and cloud built different architectures for one model id (a user's model whose
    # code differs between the two machines): fix the deployment, do not retry.
    ErrorCode.MODEL_MISMATCH: CloseCode.MODEL_MISMATCH,
}


def close_code_for(code: str) -> int:
    """The WebSocket close code for an error code; 1002 for a code this version does not know.

    A newer peer may send codes we do not know yet; treating them as a generic protocol
    error keeps the session's bookkeeping defined.
    """
    try:
        return int(CLOSE_CODES[ErrorCode(code)])
    except ValueError:
        return int(CloseCode.PROTOCOL_ERROR)


def truncate_reason(text: str, limit: int = MAX_CLOSE_REASON_BYTES) -> str:
    """Cut ``text`` to at most ``limit`` UTF-8 bytes without splitting a character."""
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    ellipsis = "…".encode()
    # errors="ignore" drops only the partial character left at the cut: the prefix of a
    # valid UTF-8 string is valid except possibly for its last, incomplete sequence.
    head = encoded[: max(limit - len(ellipsis), 0)].decode("utf-8", errors="ignore")
    return head + "…" if limit >= len(ellipsis) else head


class SimulTrainError(Exception):
    """Root of every error SimulTrain raises on purpose."""


class ConfigError(SimulTrainError):
    """A setting, argument or run configuration is invalid."""


class EncodeError(SimulTrainError):
    """A local value cannot be put on the wire (unsupported dtype, fp16 overflow, NaN, ...).

    Raised before anything is sent, so the peer never sees a frame it would have to refuse.
    """


class ProtocolError(SimulTrainError):
    """A peer broke the protocol, or a frame would break it; the session must close.

    ``code`` is machine-readable (sent in the ERROR frame), ``close_code`` is the WebSocket
    close code to close with, and ``reason`` is a human-readable text short enough to be a
    WebSocket close reason (at most 123 UTF-8 bytes, RFC 6455 section 5.5); ``str(exc)``
    keeps the full message for logs.
    """

    code: ClassVar[ErrorCode] = ErrorCode.MALFORMED_FRAME

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def close_code(self) -> int:
        return int(CLOSE_CODES[self.code])

    @property
    def reason(self) -> str:
        return truncate_reason(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code.value!r}, message={self.message!r})"


class FrameTooLarge(ProtocolError):
    """The encoded frame exceeds ``Limits.max_frame_bytes``, or holds too many entries."""

    code = ErrorCode.FRAME_TOO_LARGE


class DecompressedTooLarge(ProtocolError):
    """Decoded tensors would exceed ``max_decompressed_bytes`` or ``max_tensor_elements``.

    Checked against the size a tensor declares, before anything is inflated or allocated.
    """

    code = ErrorCode.DECOMPRESSED_TOO_LARGE


class MalformedFrame(ProtocolError):
    """Not a msgpack map of the documented fields: truncated, wrong type, missing or extra.

    ``field`` names the offending field as a dotted path (``"act.egrad.seq"``) when known.
    """

    code = ErrorCode.MALFORMED_FRAME

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class UnknownMessageType(ProtocolError):
    """The frame's ``"t"`` names no message type, or the WebSocket message was text."""

    code = ErrorCode.UNKNOWN_MESSAGE_TYPE


class ProtocolVersionMismatch(ProtocolError):
    """The peer speaks no major version this side speaks (PROTOCOL.md §1.1): upgrade.

    ``peer_version`` is the version the peer wrote or offered (None: unknown); the ERROR
    that refuses it is written in that version, so that the peer can read it.
    """

    code = ErrorCode.PROTOCOL_VERSION_MISMATCH

    def __init__(self, message: str, *, peer_version: int | None = None) -> None:
        super().__init__(message)
        self.peer_version = peer_version


class HandshakeRejected(ProtocolError):
    """The HELLO cannot be served as asked (model, cut shape or run configuration)."""

    code = ErrorCode.HANDSHAKE_REJECTED


class ModelMismatch(ProtocolError):
    """HELLO's architecture fingerprint differs from the cloud's model (close code 4003)."""

    code = ErrorCode.MODEL_MISMATCH


class InvalidTensor(ProtocolError):
    """A tensor's dtype, shape, codec or data is invalid or does not fit the session."""

    code = ErrorCode.INVALID_TENSOR


class NonFiniteTensor(InvalidTensor):
    """A floating-point tensor holds NaN or infinity; it must never reach the master."""

    code = ErrorCode.NON_FINITE_TENSOR


class IllegalTransition(ProtocolError):
    """A frame is not allowed in the session's state or from this side (e.g. ACT before HELLO)."""

    code = ErrorCode.ILLEGAL_TRANSITION


class UnexpectedSequence(ProtocolError):
    """A sequence number is out of order, repeated, or refers to no outstanding batch."""

    code = ErrorCode.UNEXPECTED_SEQUENCE


class WindowExceeded(ProtocolError):
    """An ACT would leave more batches unanswered than the window (docs/DESIGN.md §3.1)."""

    code = ErrorCode.WINDOW_EXCEEDED


class Unauthorized(ProtocolError):
    """Missing, expired or forged token, or a token for another edge."""

    code = ErrorCode.UNAUTHORIZED


class RateLimited(ProtocolError):
    """The peer sends faster than its session allows."""

    code = ErrorCode.RATE_LIMITED


class InternalError(ProtocolError):
    """This side failed for its own reasons and closes the session (close code 1011)."""

    code = ErrorCode.INTERNAL_ERROR


class TrainingError(SimulTrainError):
    """The step math refused an update."""


class StaleGradientDropped(TrainingError):
    """An edge gradient is older than the master's history (docs/DESIGN.md §3.4, §6.3)."""


class DeltaGapError(TrainingError):
    """Deltas are missing a version range that did not arrive in time (docs/DESIGN.md §4.3)."""


class StoreError(SimulTrainError):
    """A state store (coordinator registry, checkpoints) failed to read or write."""
