"""SimulTrain's wire protocol, sans-I/O: frames, tensor codecs, codec, session state machines.

Pure code over bytes: it imports no asyncio, websockets, fastapi or torch (a test enforces
it), so the edge, the cloud and the in-process driver share it unchanged. The wire format
is documented in ``PROTOCOL.md`` at the repository root; errors live in
:mod:`simultrain.shared.errors`.
"""

from simultrain.shared.protocol.checksum import replica_checksum
from simultrain.shared.protocol.codec import (
    PROTOCOL_VERSION,
    check_cut_shape,
    decode_frame,
    encode_frame,
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

__all__ = [
    "DEFAULT_LIMITS",
    "FLOAT_DTYPES",
    "FRAME_TYPES",
    "LOSSLESS_CODECS",
    "PROTOCOL_VERSION",
    "SUPPORTED_DTYPES",
    "Ack",
    "Act",
    "Bye",
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
    "SessionState",
    "Side",
    "Snap",
    "Welcome",
    "WireTensor",
    "check_cut_shape",
    "decode_frame",
    "decode_tensor",
    "encode_frame",
    "encode_tensor",
    "replica_checksum",
]
