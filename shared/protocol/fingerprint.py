"""The model fingerprint HELLO carries: a canonical text of the architecture, hashed.

PROTOCOL.md §3.3 is the recipe; this is the reference implementation. Everything in it is
what any edge can read from ``GET /v1/session-spec`` (its ``architecture`` object): the
input and cut shapes, the edge stage's tensors (name, dtype, shape), and the cloud stage as
one digest. The text, UTF-8, every line ending in ``\\n`` (the last one too)::

    simultrain-fingerprint 1
    input [6,128]
    cut [32,32]
    edge 0.bias float32 [32]
    edge 0.weight float32 [32,6,5]
    ...
    cloud 3f1c…(64 hex digits)

Edge tensors in ascending order of name compared as UTF-8 bytes (the order of the replica
listing and of the checksum, §3.1); a shape is its decimal dimensions joined by ``,``
inside ``[`` ``]``, no spaces (a scalar is ``[]``); a dtype is spelled as in §4's table.
The cloud digest is the SHA-256 of the same kind of text over the cloud stage
(``simultrain-cloud-stage 1``, then ``cloud NAME DTYPE SHAPE`` lines). The fingerprint is the
lowercase hex SHA-256 of the text.

It guards against a deployment mistake — two machines that loaded different code for one
model id — not against a dishonest client: a client can copy the value from the session
spec, and the cloud still checks every tensor it receives against the spec's shapes.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from simultrain.shared.errors import ConfigError

__all__ = [
    "CLOUD_STAGE_HEADER",
    "FINGERPRINT_HEADER",
    "Architecture",
    "TensorSpec",
    "cloud_stage_digest",
    "cloud_stage_text",
    "fingerprint_text",
]

FINGERPRINT_HEADER: Final = "simultrain-fingerprint 1"
CLOUD_STAGE_HEADER: Final = "simultrain-cloud-stage 1"


@dataclasses.dataclass(frozen=True, slots=True)
class TensorSpec:
    """One tensor of a stage: its name (a state-dict key), dtype (§4's spelling), shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        # A space or a line break inside a name would make the text ambiguous.
        if not self.name or any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in self.name):
            raise ConfigError(f"tensor name {self.name!r}: empty, or holds a space or control")
        if not self.dtype or not self.dtype.isascii() or not self.dtype.isalnum():
            raise ConfigError(f"tensor {self.name}: dtype {self.dtype!r} is not a dtype name")
        if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in self.shape):
            raise ConfigError(f"tensor {self.name}: shape {self.shape!r} is not a shape")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> TensorSpec:
        return cls(str(item["name"]), str(item["dtype"]), tuple(int(d) for d in item["shape"]))


def _shape(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def _by_name(tensors: Iterable[TensorSpec]) -> list[TensorSpec]:
    ordered = sorted(tensors, key=lambda t: t.name.encode("utf-8"))
    names = [t.name for t in ordered]
    if len(set(names)) != len(names):
        raise ConfigError(f"tensor names repeat: {names}")
    return ordered


def _lines_text(lines: Iterable[str]) -> str:
    return "".join(f"{line}\n" for line in lines)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cloud_stage_text(tensors: Iterable[TensorSpec]) -> str:
    """The canonical text of the cloud stage (what its digest hashes)."""
    return _lines_text(
        [CLOUD_STAGE_HEADER]
        + [f"cloud {t.name} {t.dtype} {_shape(t.shape)}" for t in _by_name(tensors)]
    )


def cloud_stage_digest(tensors: Iterable[TensorSpec]) -> str:
    """SHA-256 (lowercase hex) of the cloud stage's canonical text."""
    return _sha256(cloud_stage_text(tensors))


def fingerprint_text(
    *,
    input_shape: Sequence[int],
    cut_shape: Sequence[int],
    edge_stage: Iterable[TensorSpec],
    cloud_digest: str,
) -> str:
    """The canonical text the fingerprint hashes (PROTOCOL.md §3.3)."""
    if len(cloud_digest) != 64 or any(ch not in "0123456789abcdef" for ch in cloud_digest):
        raise ConfigError("the cloud stage digest must be 64 lowercase hex digits")
    return _lines_text(
        [FINGERPRINT_HEADER, f"input {_shape(input_shape)}", f"cut {_shape(cut_shape)}"]
        + [f"edge {t.name} {t.dtype} {_shape(t.shape)}" for t in _by_name(edge_stage)]
        + [f"cloud {cloud_digest}"]
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Architecture:
    """What the fingerprint covers, as the session spec publishes it (``architecture``).

    ``cut_shape`` is the model's cut, where the edge stage ends — also in the centralized
    mode, whose wire cut sits at the input.
    """

    input_shape: tuple[int, ...]
    cut_shape: tuple[int, ...]
    edge_stage: tuple[TensorSpec, ...]
    cloud_stage_digest: str

    @property
    def text(self) -> str:
        return fingerprint_text(
            input_shape=self.input_shape,
            cut_shape=self.cut_shape,
            edge_stage=self.edge_stage,
            cloud_digest=self.cloud_stage_digest,
        )

    @property
    def fingerprint(self) -> str:
        """HELLO's ``model_fingerprint``: SHA-256 (lowercase hex) of :attr:`text`."""
        return _sha256(self.text)

    def to_json(self) -> dict[str, Any]:
        """The session spec's ``architecture`` object (edge tensors in name order)."""
        return {
            "input_shape": list(self.input_shape),
            "cut_shape": list(self.cut_shape),
            "edge_stage": [t.to_json() for t in _by_name(self.edge_stage)],
            "cloud_stage_digest": self.cloud_stage_digest,
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Architecture:
        return cls(
            input_shape=tuple(int(d) for d in body["input_shape"]),
            cut_shape=tuple(int(d) for d in body["cut_shape"]),
            edge_stage=tuple(TensorSpec.from_json(t) for t in body["edge_stage"]),
            cloud_stage_digest=str(body["cloud_stage_digest"]),
        )
