"""SimulTrain's wire protocol, sans-I/O: versions, frames, tensor codecs, sessions, fingerprint.

Pure code over bytes: it imports no asyncio, websockets, fastapi or torch (a test enforces
it), so the edge, the cloud and the in-process driver share it unchanged. The wire format
is documented in ``PROTOCOL.md`` at the repository root; errors live in
:mod:`simultrain.shared.errors`.
"""

from simultrain.shared.protocol.checksum import replica_checksum
from simultrain.shared.protocol.codec import (
    check_cut_shape,
    decode_frame,
    decode_message,
    encode_frame,
)
from simultrain.shared.protocol.fingerprint import (
    Architecture,
    TensorSpec,
    cloud_stage_digest,
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
from simultrain.shared.protocol.session import (
    CloudSession,
    EdgeSession,
    Ledger,
    SessionState,
    Side,
)
from simultrain.shared.protocol.tensorcodec import (
    FLOAT_DTYPES,
    LOSSLESS_CODECS,
    SUPPORTED_DTYPES,
    Codec,
    DecodeBudget,
    WireTensor,
    decode_tensor,
    encode_tensor,
)
from simultrain.shared.protocol.versions import (
    CAPABILITIES,
    CREDITS,
    FIRST_RELEASE_VERSION,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Capability,
    Negotiation,
    grant_capabilities,
    negotiate,
    offered_subprotocols,
    subprotocol_name,
    version_mismatch,
)

__all__ = [
    "CAPABILITIES",
    "CREDITS",
    "DEFAULT_LIMITS",
    "FIRST_RELEASE_VERSION",
    "FLOAT_DTYPES",
    "FRAME_TYPES",
    "LOSSLESS_CODECS",
    "PROTOCOL_VERSION",
    "SUPPORTED_DTYPES",
    "SUPPORTED_VERSIONS",
    "Ack",
    "Act",
    "Architecture",
    "Bye",
    "Capability",
    "CloudSession",
    "Codec",
    "ConfigValue",
    "DecodeBudget",
    "Delta",
    "EGrad",
    "EdgeSession",
    "Error",
    "Frame",
    "Grad",
    "Hello",
    "Ledger",
    "Limits",
    "Negotiation",
    "SessionState",
    "Side",
    "Snap",
    "TensorSpec",
    "Welcome",
    "WireTensor",
    "check_cut_shape",
    "cloud_stage_digest",
    "decode_frame",
    "decode_message",
    "decode_tensor",
    "encode_frame",
    "encode_tensor",
    "grant_capabilities",
    "negotiate",
    "offered_subprotocols",
    "replica_checksum",
    "subprotocol_name",
    "version_mismatch",
]
