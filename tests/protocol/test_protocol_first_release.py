"""Frames recorded from the first release (vectors/first_release/README.md) meet today's code.

PROTOCOL.md §1.1: every one of them is refused as another *version* (4000, "upgrade"),
never as a malformed frame, and the refusal is written so that the first release can read
it. The replay against the cloud itself is in tests/conformance.
"""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from simultrain.shared.errors import ProtocolVersionMismatch
from simultrain.shared.protocol import CloudSession, Error, decode_frame

VECTORS = Path(__file__).resolve().parent / "vectors" / "first_release"
FRAMES = [*sorted(VECTORS.glob("[0-9]*.msgpack")), VECTORS / "hello-resume.msgpack"]


def wire(path: Path) -> dict[str, object]:
    value: dict[str, object] = msgpack.unpackb(path.read_bytes(), raw=False)
    return value


def test_the_recording_is_a_first_release_session() -> None:
    kinds = [path.stem.split("-")[-1] for path in FRAMES]
    assert {"hello", "welcome", "act", "grad", "egrad", "delta", "ack", "snap", "bye"} <= set(kinds)
    for path in FRAMES:
        frame = wire(path)
        assert frame["v"] == 1
        if frame["t"] == "hello":
            assert "model_fingerprint" not in frame
        if frame["t"] in ("delta", "snap"):
            assert "checksum" not in frame
    welcomes = [wire(path) for path in FRAMES if path.stem.endswith("welcome")]
    assert [welcome["acked_seq"] for welcome in welcomes] == [None, 0]  # a second session
    assert wire(VECTORS / "hello-resume.msgpack")["resume"] == 0


@pytest.mark.parametrize("path", FRAMES, ids=lambda p: p.stem)
def test_every_recorded_frame_is_refused_as_another_version(path: Path) -> None:
    with pytest.raises(ProtocolVersionMismatch) as refused:
        decode_frame(path.read_bytes())
    assert refused.value.close_code == 4000 and refused.value.peer_version == 1


EDGE_FRAMES = [p for p in FRAMES if "-e2c-" in p.name or p.name.startswith("hello")]


@pytest.mark.parametrize("path", EDGE_FRAMES, ids=lambda p: p.stem)
def test_a_cloud_answers_each_edge_frame_in_the_edge_s_own_version(path: Path) -> None:
    cloud = CloudSession(version=None)  # the first release offered no subprotocol
    with pytest.raises(ProtocolVersionMismatch) as refused:
        cloud.receive_data(path.read_bytes())
    answer = msgpack.unpackb(cloud.refuse(refused.value), raw=False)
    assert answer == {
        "v": 1,
        "t": "error",
        "code": "protocol_version_mismatch",
        "reason": "this cloud speaks simultrain.v2, the edge simultrain.v1: upgrade the edge, "
        "do not retry",
    }
    assert cloud.close_code == 4000


def test_the_refusal_has_the_first_release_s_error_shape() -> None:
    recorded = wire(VECTORS / "error.msgpack")  # written by the first release's encoder
    cloud = CloudSession(version=None)
    with pytest.raises(ProtocolVersionMismatch) as refused:
        cloud.receive_data((VECTORS / "001-s1-e2c-hello.msgpack").read_bytes())
    answer = msgpack.unpackb(cloud.refuse(refused.value), raw=False)
    assert list(answer) == list(recorded)  # the same keys, in the same order
    assert {k: type(v) for k, v in answer.items()} == {k: type(v) for k, v in recorded.items()}
    # And the first release's ERROR still reads today (an ERROR is read in any version).
    assert decode_frame((VECTORS / "error.msgpack").read_bytes()) == Error(
        code="window_exceeded", reason=str(recorded["reason"])
    )
