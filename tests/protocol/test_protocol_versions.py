"""PROTOCOL.md §1.1 and §10: major versions as subprotocols, the refusal, capabilities.

Bytes in, events out: no socket, no event loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgpack
import pytest

from simultrain.shared.errors import (
    EncodeError,
    HandshakeRejected,
    IllegalTransition,
    MalformedFrame,
    ProtocolVersionMismatch,
    WindowExceeded,
)
from simultrain.shared.protocol import (
    CAPABILITIES,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Ack,
    Capability,
    CloudSession,
    EdgeSession,
    Error,
    Limits,
    decode_frame,
    encode_frame,
    grant_capabilities,
    negotiate,
    offered_subprotocols,
)
from simultrain.shared.protocol.versions import version_mismatch

if TYPE_CHECKING:
    from conftest import Builders


def test_this_implementation_speaks_version_2_as_simultrain_v2() -> None:
    assert PROTOCOL_VERSION == 2 and SUPPORTED_VERSIONS == (2,)
    assert offered_subprotocols() == ["simultrain.v2"]
    assert offered_subprotocols([1, 3, 2]) == ["simultrain.v3", "simultrain.v2", "simultrain.v1"]


@pytest.mark.parametrize(
    ("offered", "subprotocol", "version"),
    [
        (["simultrain.v2"], "simultrain.v2", 2),
        (["simultrain.v3", "simultrain.v2", "simultrain.v1"], "simultrain.v2", 2),
        (["chat", "simultrain.v2"], "simultrain.v2", 2),  # other names are ignored
        ([], None, None),  # none offered: the HELLO's `v` decides
        (["chat", "simultrain.vx", "simultrain.v02"], None, None),
    ],
)
def test_negotiation_picks_the_newest_common_version(
    offered: list[str], subprotocol: str | None, version: int | None
) -> None:
    chosen = negotiate(offered)
    assert (chosen.subprotocol, chosen.version, chosen.refusal) == (subprotocol, version, None)


def test_the_newest_common_version_wins_whatever_the_order_offered() -> None:
    chosen = negotiate(["simultrain.v2", "simultrain.v3"], supported=(2, 3))
    assert (chosen.subprotocol, chosen.version) == ("simultrain.v3", 3)


@pytest.mark.parametrize(
    ("offered", "peer", "advice"),
    [
        (["simultrain.v1"], 1, "upgrade the edge"),
        (["simultrain.v3", "simultrain.v4"], 4, "upgrade this cloud or use an older edge"),
    ],
)
def test_no_common_version_is_refused_with_4000_and_the_range(
    offered: list[str], peer: int, advice: str
) -> None:
    refusal = negotiate(offered).refusal
    assert isinstance(refusal, ProtocolVersionMismatch)
    assert refusal.close_code == 4000 and refusal.peer_version == peer
    assert "this cloud speaks simultrain.v2" in refusal.reason and advice in refusal.reason
    assert refusal.reason.endswith("do not retry")
    assert len(refusal.reason.encode()) <= 123  # a WebSocket close reason


def test_the_refusal_is_written_in_the_version_the_edge_offered() -> None:
    refusal = negotiate(["simultrain.v5"]).refusal
    assert refusal is not None
    session = CloudSession(version=None)
    data = session.refuse(refusal)
    wire = msgpack.unpackb(data, raw=False)
    assert wire == {
        "v": 5,
        "t": "error",
        "code": "protocol_version_mismatch",
        "reason": refusal.reason,
    }
    assert session.close_code == 4000 and session.close_reason == refusal.reason


def test_an_error_is_read_whatever_its_version() -> None:
    for version in (1, 2, 7):
        data = encode_frame(Error(code="window_exceeded", reason="x"), version=version)
        assert decode_frame(data) == Error(code="window_exceeded", reason="x")
    # Any other frame of another version is refused before its fields are read.
    act = {"v": 1, "t": "act", "nonsense": True}
    with pytest.raises(ProtocolVersionMismatch) as refused:
        decode_frame(msgpack.packb(act))
    assert refused.value.peer_version == 1
    # A foreign ERROR that is not an ERROR's shape is a version mismatch, not garbage.
    with pytest.raises(ProtocolVersionMismatch):
        decode_frame(msgpack.packb({"v": 1, "t": "error", "code": "x"}))


def test_only_an_error_may_be_written_in_another_version(build: Builders) -> None:
    with pytest.raises(EncodeError, match="protocol version 1"):
        encode_frame(build.act(0), version=1)
    with pytest.raises(EncodeError, match="positive int"):
        encode_frame(Error(code="x"), version=0)


def test_a_cloud_offered_no_subprotocol_takes_the_hello_version(build: Builders) -> None:
    cloud = CloudSession(version=None)
    cloud.receive_data(encode_frame(build.hello()))
    assert cloud.version == 2  # from then on every frame must say 2
    cloud.send(build.welcome())
    with pytest.raises(ProtocolVersionMismatch):
        cloud.receive_data(msgpack.packb({**build.wire_of(build.act(0)), "v": 3}))


def test_a_hello_of_another_version_gets_the_upgrade_answer_in_its_version(
    build: Builders,
) -> None:
    cloud = CloudSession(version=None)
    hello = {**build.wire_of(build.hello()), "v": 1}
    del hello["model_fingerprint"], hello["capabilities"]  # the first release's HELLO
    with pytest.raises(ProtocolVersionMismatch) as refused:
        cloud.receive_data(msgpack.packb(hello, use_bin_type=True))
    assert refused.value.reason == (
        "this cloud speaks simultrain.v2, the edge simultrain.v1: upgrade the edge, do not retry"
    )
    assert msgpack.unpackb(cloud.refuse(refused.value), raw=False)["v"] == 1
    assert cloud.close_code == 4000


def test_a_negotiated_session_refuses_any_other_version(build: Builders) -> None:
    cloud = CloudSession(version=2)
    with pytest.raises(ProtocolVersionMismatch):
        cloud.receive_data(msgpack.packb({**build.wire_of(build.hello()), "v": 1}))
    assert cloud.close_code == 4000
    with pytest.raises(MalformedFrame):  # `v` is checked, but must be an int
        CloudSession().receive_data(msgpack.packb({**build.wire_of(build.hello()), "v": "2"}))


def test_version_mismatch_names_a_range() -> None:
    exc = version_mismatch([1], supported=(2, 3))
    assert "this cloud speaks simultrain.v2 to v3, the edge simultrain.v1" in exc.reason
    assert "named none" in version_mismatch([]).reason


# -- capabilities (§10.2) -------------------------------------------------------------------


def test_version_2_defines_credits_and_the_cloud_answers_with_its_grant() -> None:
    assert sorted(CAPABILITIES) == ["credits"]
    # The registry checks the offer; the cloud's own answer (its first grant) replaces it.
    assert grant_capabilities({"credits": True, "anything": 3}) == {"credits": True}
    assert grant_capabilities({"credits": True}, answers={"credits": 6}) == {"credits": 6}
    assert grant_capabilities({"credits": True}, answers={"credits": None}) == {}
    assert grant_capabilities({"credits": 5}, answers={"credits": 6}) == {}  # not `true`


# -- credits (§6.7) -------------------------------------------------------------------------


def _credit_pair(
    build: Builders, *, grant: int, window: int | None = 8
) -> tuple[EdgeSession, CloudSession]:
    edge, cloud = (
        EdgeSession(limits=Limits(window=None)),
        CloudSession(limits=Limits(window=window)),
    )
    cloud.receive_data(edge.send(build.hello(capabilities={"credits": True})))
    edge.receive_data(cloud.send(build.welcome(window=window, capabilities={"credits": grant})))
    return edge, cloud


def test_an_ack_without_credits_is_the_version_s_own_bytes() -> None:
    plain = encode_frame(Ack(seq=3, master_version=9, durable_until=None))
    assert "credits" not in msgpack.unpackb(plain, raw=False)
    granted = encode_frame(Ack(seq=3, master_version=9, durable_until=None, credits=5))
    assert msgpack.unpackb(granted, raw=False)["credits"] == 5
    assert decode_frame(granted) == Ack(seq=3, master_version=9, durable_until=None, credits=5)
    assert decode_frame(plain) == Ack(seq=3, master_version=9, durable_until=None)


def test_the_edge_keeps_to_the_grant_in_force(build: Builders) -> None:
    edge, cloud = _credit_pair(build, grant=2)
    assert edge.window == 2
    for seq in (0, 1):
        cloud.receive_data(edge.send(build.act(seq)))
    assert not edge.can_send_act()
    with pytest.raises(WindowExceeded):
        edge.send(build.act(2))
    for seq in (0, 1):
        edge.receive_data(cloud.send(build.grad(seq)))
    # A larger grant comes with an ACK: the edge may have 5 in flight (its own limit is none,
    # WELCOME's window 8 bounds it).
    edge.receive_data(cloud.send(Ack(seq=0, master_version=2, credits=5)))
    assert edge.window == 5 and edge.ledger.credits == 5
    for seq in range(2, 6):
        cloud.receive_data(edge.send(build.act(seq)))
    assert not edge.can_send_act()
    # An ACK without credits keeps the grant; a smaller one holds the edge until ACKs come.
    edge.receive_data(cloud.send(Ack(seq=1, master_version=3)))
    assert edge.window == 5 and edge.can_send_act()
    edge.receive_data(cloud.send(Ack(seq=2, master_version=4, credits=1)))
    assert edge.window == 1 and not edge.can_send_act()


def test_the_edge_s_own_window_and_welcome_s_window_cap_the_grant(build: Builders) -> None:
    edge, _ = _credit_pair(build, grant=6, window=3)
    assert edge.window == 3
    capped = EdgeSession(limits=Limits(window=2))
    cloud = CloudSession(limits=Limits(window=8))
    cloud.receive_data(capped.send(build.hello(capabilities={"credits": True})))
    capped.receive_data(cloud.send(build.welcome(window=8, capabilities={"credits": 6})))
    assert capped.window == 2


def test_credits_are_refused_where_not_granted_or_zero(build: Builders) -> None:
    edge, cloud = build.open_pair(window=4)
    cloud.receive_data(edge.send(build.act(0)))
    with pytest.raises(IllegalTransition, match="credits"):
        cloud.send(Ack(seq=0, master_version=1, credits=3))
    wire = build.wire_of(Ack(seq=0, master_version=1))
    wire["credits"] = 3
    with pytest.raises(IllegalTransition, match="credits"):
        edge.receive_data(build.pack(wire))
    granted_edge, granted_cloud = _credit_pair(build, grant=2)
    granted_cloud.receive_data(granted_edge.send(build.act(0)))
    wire = build.wire_of(Ack(seq=0, master_version=1, credits=1))
    wire["credits"] = 0
    with pytest.raises(MalformedFrame, match="at least 1"):
        granted_edge.receive_data(build.pack(wire))
    wire["credits"] = None  # a capability field is absent, never nil
    with pytest.raises(MalformedFrame):
        decode_frame(build.pack({"v": 2, "t": "ack", **wire}))


@pytest.mark.parametrize("value", [0, True, "4", 2.5])
def test_a_welcome_grant_must_be_a_uint_of_at_least_one(build: Builders, value: object) -> None:
    edge = EdgeSession()
    cloud = CloudSession(limits=Limits(window=None))
    cloud.receive_data(edge.send(build.hello(capabilities={"credits": True})))
    data = cloud.send(build.welcome(window=4, capabilities={}))
    wire = msgpack.unpackb(data, raw=False)
    wire["capabilities"] = {"credits": value}
    with pytest.raises(HandshakeRejected, match="credits"):
        edge.receive_data(build.pack(wire))


def test_capabilities_are_granted_from_one_registry_entry_each() -> None:
    registry = {
        "credits": Capability("credits", "flow control", "§10.2", frames=("credit",)),
        "halve": Capability("halve", "a value answer", "§10.2", grant=lambda v: v // 2),  # type: ignore[operator]
    }
    offered = {"credits": True, "halve": 8, "from-the-future": "x"}
    assert grant_capabilities(offered, registry=registry) == {"credits": True, "halve": 4}


def test_hello_and_welcome_carry_capabilities_and_unknown_names_pass(build: Builders) -> None:
    edge, cloud = EdgeSession(), CloudSession()
    hello = build.hello(capabilities={"from-the-future": 1, "credits": True})
    [received] = cloud.receive_data(edge.send(hello))
    assert received.capabilities == {"from-the-future": 1, "credits": True}  # type: ignore[union-attr]
    edge.receive_data(cloud.send(build.welcome(capabilities={"credits": 4})))
    assert edge.capabilities == cloud.capabilities == {"credits": 4}


def test_welcome_may_grant_only_what_hello_offered(build: Builders) -> None:
    edge, cloud = EdgeSession(), CloudSession()
    cloud.receive_data(edge.send(build.hello(capabilities={})))
    with pytest.raises(HandshakeRejected, match="did not offer: credits"):
        cloud.send(build.welcome(capabilities={"credits": 4}))  # the cloud's own check
    other = CloudSession(limits=Limits(window=None))
    other.receive_data(EdgeSession().send(build.hello()))
    data = other.send(build.welcome(capabilities={}))
    fresh = EdgeSession()
    fresh.send(build.hello())
    granted = msgpack.unpackb(data, raw=False)
    granted["capabilities"] = {"credits": 4}
    with pytest.raises(HandshakeRejected):
        fresh.receive_data(msgpack.packb(granted))
    assert fresh.close_code == 4001


def test_a_message_of_a_capability_not_granted_is_refused(build: Builders) -> None:
    # ACK stands in for a capability's message type: the gate is the registry's.
    registry = {"acks": Capability("acks", "test", "§10.2", frames=("ack",))}
    edge, cloud = (
        EdgeSession(registry=registry, limits=Limits(window=2)),
        CloudSession(registry=registry, limits=Limits(window=2)),
    )
    cloud.receive_data(edge.send(build.hello(capabilities={"acks": True})))
    edge.receive_data(cloud.send(build.welcome(capabilities={})))
    cloud.receive_data(edge.send(build.act(0)))
    with pytest.raises(IllegalTransition, match="capability 'acks', not granted"):
        cloud.send(Ack(seq=0, master_version=1))
    # Granted, the same message passes.
    edge, cloud = EdgeSession(registry=registry), CloudSession(registry=registry)
    cloud.receive_data(edge.send(build.hello(capabilities={"acks": True})))
    edge.receive_data(cloud.send(build.welcome(capabilities={"acks": True})))
    cloud.receive_data(edge.send(build.act(0)))
    edge.receive_data(cloud.send(Ack(seq=0, master_version=1)))
    assert edge.acked_seq == 0
