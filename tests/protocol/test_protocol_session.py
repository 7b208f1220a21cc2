"""Session state machines: handshake ordering, the in-flight window, sequences, closing."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simultrain.shared.errors import (
    EncodeError,
    FrameTooLarge,
    HandshakeRejected,
    IllegalTransition,
    InvalidTensor,
    ProtocolError,
    Unauthorized,
    UnexpectedSequence,
    WindowExceeded,
)
from simultrain.shared.protocol import (
    Ack,
    CloudSession,
    Delta,
    EdgeSession,
    EGrad,
    Error,
    Grad,
    Limits,
    SessionState,
    Snap,
    WireTensor,
    encode_frame,
)
from simultrain.shared.protocol import Bye as ByeFrame

if TYPE_CHECKING:
    from conftest import Builders

    from simultrain.shared.protocol.session import _Session


def snapshot(session: _Session) -> tuple[object, ...]:
    return (session.state, session.ledger, session.hello, session.welcome, session.close_code)


def assert_send_refused(session: _Session, frame: object, error: type[Exception]) -> None:
    """Sending against a rule raises and changes nothing at all."""
    before = snapshot(session)
    with pytest.raises(error):
        session.send(frame)  # type: ignore[arg-type]
    assert snapshot(session) == before


# -- handshake ----------------------------------------------------------------------------


def test_handshake_opens_both_sides(build: Builders) -> None:
    edge, cloud = EdgeSession(), CloudSession()
    assert edge.state is cloud.state is SessionState.CONNECTING
    assert not edge.can_send_act()
    [hello] = cloud.receive_data(edge.send(build.hello()))
    assert hello == build.hello() and cloud.hello == hello
    assert cloud.state is SessionState.CONNECTING  # the cloud decides: WELCOME or ERROR
    [welcome] = edge.receive_data(cloud.send(build.welcome(master_version=17, acked_seq=3)))
    assert edge.state is cloud.state is SessionState.OPEN
    assert edge.welcome == cloud.welcome == welcome
    assert edge.cut_shape == cloud.cut_shape == build.cut_shape
    assert edge.window == cloud.window == 2
    assert edge.acked_seq == cloud.acked_seq == 3
    assert edge.can_send_act()


@pytest.mark.parametrize("early", ["act", "egrad", "bye_is_fine"])
def test_cloud_refuses_anything_but_hello_first(build: Builders, early: str) -> None:
    cloud = CloudSession()
    if early == "bye_is_fine":
        assert cloud.receive_data(encode_frame(ByeFrame(reason="changed my mind")))
        assert cloud.state is SessionState.CLOSING and cloud.close_code == 1000
        return
    frame = build.act(0) if early == "act" else build.egrad(0)
    with pytest.raises(IllegalTransition, match="before the handshake completed") as info:
        cloud.receive_data(encode_frame(frame))
    assert info.value.close_code == 1002
    assert cloud.state is SessionState.CLOSING and cloud.hello is None


def test_edge_cannot_send_before_welcome_nor_hello_twice(build: Builders) -> None:
    edge = EdgeSession()
    assert_send_refused(edge, build.act(0), IllegalTransition)
    edge.send(build.hello())
    assert_send_refused(edge, build.hello(), IllegalTransition)
    assert_send_refused(edge, build.act(0), IllegalTransition)


def test_edge_refuses_welcome_it_did_not_ask_for(build: Builders) -> None:
    edge = EdgeSession()
    with pytest.raises(IllegalTransition, match="WELCOME before HELLO"):
        edge.receive_data(encode_frame(build.welcome()))
    assert edge.state is SessionState.CLOSING and edge.welcome is None


def test_cloud_cannot_welcome_before_hello_nor_send_grad_before_welcome(build: Builders) -> None:
    cloud = CloudSession()
    assert_send_refused(cloud, build.welcome(), IllegalTransition)
    cloud.receive_data(encode_frame(build.hello()))
    assert_send_refused(cloud, build.grad(0), IllegalTransition)
    assert_send_refused(cloud, build.hello(), IllegalTransition)  # wrong direction


def test_welcome_must_echo_the_cut_shape(build: Builders) -> None:
    edge, cloud = EdgeSession(), CloudSession()
    cloud.receive_data(edge.send(build.hello()))
    assert_send_refused(cloud, build.welcome(cut_shape=(3,)), HandshakeRejected)
    with pytest.raises(HandshakeRejected) as info:
        edge.receive_data(encode_frame(build.welcome(cut_shape=(3,))))
    assert (info.value.code, info.value.close_code) == ("handshake_rejected", 4001)


def test_cloud_cannot_grant_more_window_than_its_limit(build: Builders) -> None:
    cloud = CloudSession(limits=Limits(window=4))
    cloud.receive_data(encode_frame(build.hello()))
    assert_send_refused(cloud, build.welcome(window=5), WindowExceeded)
    assert_send_refused(cloud, build.welcome(window=None), WindowExceeded)
    cloud.send(build.welcome(window=4))
    assert cloud.window == 4


def test_edge_keeps_to_the_smaller_of_granted_and_own_window(build: Builders) -> None:
    edge, _ = build.open_pair(window=8, edge_limits=Limits(window=3), cloud_limits=Limits(window=8))
    assert edge.window == 3
    edge, _ = build.open_pair(
        window=None, edge_limits=Limits(window=None), cloud_limits=Limits(window=None)
    )
    assert edge.window is None


def test_cloud_rejecting_hello_closes_the_edge_with_the_code(build: Builders) -> None:
    edge, cloud = EdgeSession(), CloudSession()
    cloud.receive_data(edge.send(build.hello(token="forged")))
    data = cloud.send(Error.from_exception(Unauthorized("token signature does not verify")))
    assert cloud.state is SessionState.CLOSING and cloud.close_code == 1008
    [error] = edge.receive_data(data)
    assert isinstance(error, Error) and error.code == "unauthorized"
    assert edge.state is SessionState.CLOSING
    assert (edge.close_code, edge.close_reason) == (1008, "token signature does not verify")


# -- one pipelined step sequence (docs/DESIGN.md §3) ---------------------------------------


def test_pipelined_steps_with_piggybacks_and_versions(build: Builders) -> None:
    # PROTOCOL.md §6.4, message by message.
    edge, cloud = build.open_pair(window=2)
    # Two batches in flight at edge version 0, then the window is full.
    assert cloud.receive_data(edge.send(build.act(0))) == [build.act(0)]
    cloud.receive_data(edge.send(build.act(1)))
    assert edge.outstanding == cloud.outstanding == (0, 1)
    assert edge.oldest_unanswered == 0
    assert not edge.can_send_act()
    assert_send_refused(edge, build.act(2), WindowExceeded)
    # GRAD 0 at master version 1 answers batch 0, but it stays in flight until its ACK:
    # the window slot frees when its updates are applied (§6.3), not at its GRAD.
    [grad0] = edge.receive_data(cloud.send(build.grad(0, master_version=1)))
    assert isinstance(grad0, Grad) and grad0.master_version == 1
    assert edge.outstanding == (1,) and edge.in_flight == (0, 1) and not edge.can_send_act()
    assert_send_refused(edge, build.act(2), WindowExceeded)
    # So EGRAD 0 (computed at version 0) goes alone.
    assert cloud.receive_data(edge.send(build.egrad(0, edge_version=0))) == [build.egrad(0)]
    edge.receive_data(cloud.send(build.grad(1, master_version=2)))
    delta = Delta(
        checksum=0, from_version=0, to_version=3, tensors={"conv.weight": build.tensor((3, 2))}
    )
    assert edge.receive_data(cloud.send(delta)) == [delta]
    edge.receive_data(cloud.send(Ack(seq=0, master_version=3)))
    assert edge.acked_seq == cloud.acked_seq == 0
    assert edge.in_flight == cloud.in_flight == (1,) and edge.can_send_act()
    # ACT 2 carries EGRAD 1; the session hands them over piggyback first.
    events = cloud.receive_data(edge.send(build.act(2, egrad=build.egrad(1, edge_version=0))))
    assert [type(frame).__name__ for frame in events] == ["EGrad", "Act"]
    assert events[0] == build.egrad(1) and events[1] == build.act(2)  # piggyback detached
    # A DELTA may also ride on a GRAD; then soft reconciliation.
    delta = Delta(
        checksum=0, from_version=3, to_version=5, tensors={"conv.weight": build.tensor((3, 2))}
    )
    events = edge.receive_data(cloud.send(build.grad(2, master_version=5, delta=delta)))
    assert [type(frame).__name__ for frame in events] == ["Delta", "Grad"]
    snap = Snap(
        checksum=0, master_version=5, tensors={"conv.weight": build.tensor((3, 2))}, reconcile=True
    )
    assert edge.receive_data(cloud.send(snap)) == [snap]
    assert edge.ledger == cloud.ledger
    assert edge.in_flight == (1, 2) and edge.outstanding == ()


def test_split_sync_window_zero_allows_one_act_at_a_time(build: Builders) -> None:
    edge, cloud = build.open_pair(window=0)
    assert edge.can_send_act()
    cloud.receive_data(edge.send(build.act(0)))
    assert not edge.can_send_act()
    assert_send_refused(edge, build.act(1), WindowExceeded)
    with pytest.raises(WindowExceeded):
        cloud.receive_data(encode_frame(build.act(1)))


def test_unbounded_window(build: Builders) -> None:
    edge, cloud = build.open_pair(window=None)
    for seq in range(50):
        cloud.receive_data(edge.send(build.act(seq)))
    assert len(cloud.outstanding) == 50 and edge.can_send_act()


def test_centralized_mode_acks_answer_acts_without_grads(build: Builders) -> None:
    edge, cloud = build.open_pair(window=2)
    for seq in (0, 1):
        cloud.receive_data(edge.send(build.act(seq)))
    edge.receive_data(cloud.send(Ack(seq=1, master_version=2)))
    assert edge.outstanding == cloud.outstanding == ()
    assert_send_refused(cloud, build.grad(1), UnexpectedSequence)  # answered by the ACK


def test_syncsgd_uploads_egrads_without_acts(build: Builders) -> None:
    edge, cloud = build.open_pair(egrad_needs_grad=False)
    for seq in range(3):
        [frame] = cloud.receive_data(edge.send(build.egrad(seq, edge_version=seq)))
        assert isinstance(frame, EGrad) and frame.seq == seq
        edge.receive_data(
            cloud.send(Snap(checksum=0, master_version=seq + 1, tensors={}, reconcile=False))
        )
        edge.receive_data(cloud.send(Ack(seq=seq, master_version=seq + 1)))
    assert cloud.ledger.last_egrad_seq == 2 and cloud.acked_seq == 2


def test_resume_continues_above_the_acked_sequence(build: Builders) -> None:
    edge, cloud = build.open_pair(acked_seq=10)
    assert_send_refused(edge, build.act(10), UnexpectedSequence)
    assert_send_refused(edge, build.egrad(10), UnexpectedSequence)
    with pytest.raises(UnexpectedSequence, match="must exceed 10"):
        cloud.receive_data(encode_frame(build.act(7)))
    edge, cloud = build.open_pair(acked_seq=10)
    # An EGRAD whose ACT went before the reconnect: its GRAD is not of this session, so the
    # edge must send the batch again (§6.3, §6.5).
    assert_send_refused(edge, build.egrad(11), UnexpectedSequence)
    cloud.receive_data(edge.send(build.act(11)))
    edge.receive_data(cloud.send(build.grad(11)))
    cloud.receive_data(edge.send(build.act(12, egrad=build.egrad(11))))


# -- sequence rules -----------------------------------------------------------------------


def test_act_sequence_numbers_strictly_increase(build: Builders) -> None:
    edge, cloud = build.open_pair(window=None)
    cloud.receive_data(edge.send(build.act(5)))
    assert_send_refused(edge, build.act(5), UnexpectedSequence)
    assert_send_refused(edge, build.act(4), UnexpectedSequence)
    cloud.receive_data(edge.send(build.act(9)))  # gaps are allowed


def test_edge_refuses_grad_for_no_outstanding_act(build: Builders) -> None:
    edge, cloud = build.open_pair()
    cloud.receive_data(edge.send(build.act(0)))
    assert_send_refused(cloud, build.grad(1), UnexpectedSequence)
    before = edge.ledger
    with pytest.raises(UnexpectedSequence, match="GRAD 1: no such ACT") as info:
        edge.receive_data(encode_frame(build.grad(1)))
    assert info.value.close_code == 1002
    assert edge.state is SessionState.CLOSING and edge.ledger == before


def test_grad_batch_must_match_its_act(build: Builders) -> None:
    edge, cloud = build.open_pair()
    cloud.receive_data(edge.send(build.act(0, batch=2)))
    assert_send_refused(cloud, build.grad(0, batch=3), InvalidTensor)
    with pytest.raises(InvalidTensor, match="batch 3, its ACT had 2"):
        edge.receive_data(encode_frame(build.grad(0, batch=3)))


def test_grad_may_answer_out_of_order(build: Builders) -> None:
    edge, cloud = build.open_pair(window=3)
    for seq in range(3):
        cloud.receive_data(edge.send(build.act(seq)))
    edge.receive_data(cloud.send(build.grad(1)))
    assert edge.outstanding == (0, 2) and edge.oldest_unanswered == 0


def test_egrad_rules(build: Builders) -> None:
    edge, cloud = build.open_pair()
    cloud.receive_data(edge.send(build.act(0)))
    assert_send_refused(edge, build.egrad(0), UnexpectedSequence)  # GRAD 0 not yet here
    edge.receive_data(cloud.send(build.grad(0)))
    cloud.receive_data(edge.send(build.egrad(0)))
    assert_send_refused(edge, build.egrad(0), UnexpectedSequence)  # at most once


def test_still_waiting_for_its_grad_binds_the_edge_and_a_cloud_that_reads_ahead(
    build: Builders,
) -> None:
    """PROTOCOL.md §6.3: EGRAD k before GRAD k. The edge may not send it (above); a cloud
    that reads the EGRAD before it has sent GRAD k refuses it, and nothing changes."""
    edge, cloud = build.open_pair()
    cloud.receive_data(edge.send(build.act(0)))
    ledger = cloud.ledger
    # The bytes an edge blind to the rule would send (its own session refuses to).
    with pytest.raises(UnexpectedSequence, match="no GRAD yet"):
        cloud.receive_data(encode_frame(build.egrad(0)))
    assert cloud.close_code == 1002 and cloud.ledger == ledger


def test_ack_rules(build: Builders) -> None:
    edge, cloud = build.open_pair()
    assert_send_refused(cloud, Ack(seq=0, master_version=0), UnexpectedSequence)  # nothing sent
    cloud.receive_data(edge.send(build.act(0)))
    assert_send_refused(cloud, Ack(seq=1, master_version=0), UnexpectedSequence)  # beyond
    edge.receive_data(cloud.send(Ack(seq=0, master_version=1)))
    with pytest.raises(UnexpectedSequence, match="already acknowledged up to 0"):
        edge.receive_data(encode_frame(Ack(seq=0, master_version=1)))


def test_send_checks_the_cut_shape_and_frame_size(build: Builders) -> None:
    edge, _ = build.open_pair()
    wrong = dataclasses.replace(build.act(0), activations=build.tensor((2, 5)))
    assert_send_refused(edge, wrong, InvalidTensor)
    edge, _ = build.open_pair(edge_limits=Limits(max_frame_bytes=256, window=2))
    big = dataclasses.replace(
        build.act(0), activations=build.tensor((40, 2)), labels=WireTensor(np.zeros(40, np.int64))
    )
    assert_send_refused(edge, big, FrameTooLarge)
    nan = dataclasses.replace(build.act(0), activations=WireTensor(np.full((2, 2), np.nan)))
    assert_send_refused(edge, nan, EncodeError)


def test_send_refuses_non_frames(build: Builders) -> None:
    edge, _ = build.open_pair()
    assert_send_refused(edge, {"t": "act"}, EncodeError)


def test_direction_is_enforced_both_ways(build: Builders) -> None:
    edge, cloud = build.open_pair()
    assert_send_refused(edge, build.grad(0), IllegalTransition)
    assert_send_refused(cloud, build.act(0), IllegalTransition)
    with pytest.raises(IllegalTransition, match="DELTA is never sent by the edge"):
        cloud.receive_data(
            encode_frame(Delta(checksum=0, from_version=0, to_version=1, tensors={}))
        )


# -- closing ------------------------------------------------------------------------------


def test_bye_closes_both_sides_cleanly(build: Builders) -> None:
    edge, cloud = build.open_pair()
    cloud.receive_data(edge.send(build.act(0)))
    [bye] = cloud.receive_data(edge.send(ByeFrame(reason="stream ended")))
    assert bye == ByeFrame(reason="stream ended")
    for session in (edge, cloud):
        assert session.state is SessionState.CLOSING
        assert (session.close_code, session.close_reason) == (1000, "stream ended")
    assert_send_refused(cloud, build.grad(0), IllegalTransition)
    cloud.send(ByeFrame(reason="bye"))  # allowed while closing; first close reason stays
    assert cloud.close_reason == "stream ended"
    for session in (edge, cloud):
        session.connection_closed()
        session.connection_closed()  # idempotent
        assert session.state is SessionState.CLOSED


def test_closed_session_refuses_use(build: Builders) -> None:
    edge, _ = build.open_pair()
    edge.connection_closed()
    assert_send_refused(edge, build.act(0), IllegalTransition)
    with pytest.raises(IllegalTransition, match="after the connection closed"):
        edge.receive_data(encode_frame(build.grad(0)))
    assert edge.state is SessionState.CLOSED


def test_abrupt_disconnect_closes_from_open(build: Builders) -> None:
    edge, _ = build.open_pair()
    edge.connection_closed()
    assert edge.state is SessionState.CLOSED and edge.close_code is None


def test_after_a_protocol_error_the_adapter_can_send_the_error_frame(build: Builders) -> None:
    edge, cloud = build.open_pair()
    try:
        cloud.receive_data(b"\xc1")  # never valid msgpack
    except ProtocolError as exc:
        data = cloud.send(Error.from_exception(exc))
    [error] = edge.receive_data(data)
    assert isinstance(error, Error) and error.code == "malformed_frame"
    assert edge.close_code == cloud.close_code == 1002


def test_unknown_error_code_from_a_newer_peer_maps_to_protocol_error(build: Builders) -> None:
    edge, _ = build.open_pair()
    edge.receive_data(encode_frame(Error(code="brand_new_code", reason="?")))
    assert edge.close_code == 1002


# -- both ledgers agree under any legal interleaving ---------------------------------------


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    window=st.integers(0, 4),
    steps=st.lists(st.sampled_from(["act", "grad", "egrad", "ack", "delta"]), max_size=40),
)
def test_ledgers_agree_and_window_holds(build: Builders, window: int, steps: list[str]) -> None:
    edge, cloud = build.open_pair(window=window)
    next_seq, version = 0, 0
    uploaded: list[int] = []
    for step in steps:
        if step == "act" and edge.can_send_act():
            cloud.receive_data(edge.send(build.act(next_seq)))
            next_seq += 1
        elif step == "grad" and cloud.outstanding:
            version += 1
            edge.receive_data(cloud.send(build.grad(cloud.outstanding[0], master_version=version)))
        elif step == "egrad":
            floor = max(
                -1 if edge.ledger.last_egrad_seq is None else edge.ledger.last_egrad_seq,
                -1 if edge.acked_seq is None else edge.acked_seq,
            )
            ready = [s for s in range(floor + 1, next_seq) if s not in edge.outstanding]
            if ready:
                cloud.receive_data(edge.send(build.egrad(ready[0])))
                uploaded.append(ready[0])
        elif (
            step == "ack"
            and uploaded
            and (cloud.acked_seq is None or uploaded[-1] > cloud.acked_seq)
        ):
            edge.receive_data(cloud.send(Ack(seq=uploaded[-1], master_version=version)))
        elif step == "delta":
            version += 1
            edge.receive_data(
                cloud.send(
                    Delta(checksum=0, from_version=version - 1, to_version=version, tensors={})
                )
            )
        assert edge.ledger == cloud.ledger
        assert len(edge.outstanding) <= max(window, 1)
        assert edge.state is cloud.state is SessionState.OPEN
