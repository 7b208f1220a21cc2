"""Mixed steps through the real cloud service (docs/FLEET.md, "Mixed steps").

Two edges on the service's WebSocket (Starlette's test client), ``mix_edges = 2``: one edge's
frame steps the other's batch, so the frames for the partner go to the partner's session; a
partner that went away, or whose ACT a mixed step refuses, loses its session and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from simultrain.cloud.app import create_app
from simultrain.cloud.settings import CloudSettings
from simultrain.shared.data import BatchStream, load_dataset
from simultrain.shared.models import get_model_spec
from simultrain.shared.protocol import (
    Ack,
    Act,
    Delta,
    EdgeSession,
    Error,
    Grad,
    Hello,
    Limits,
    Snap,
    Welcome,
)
from simultrain.shared.protocol.tensorcodec import Codec
from simultrain.shared.tensors import to_wire
from simultrain.shared.training.assembly import Shard, build_edge
from simultrain.shared.training.config import RunConfig
from tests.integration.waiting import wait_until

# Split micro-batches: each edge sends 32 / 2 = 16 samples, a mixed step is one batch of 32.
# The wait bound is long: a mix here steps because its second ACT came, unless a test says.
RUN = RunConfig(mode="simultrain", dataset="imu", window=2, edges=2, mix_edges=2, mix_wait_s=60.0)
# A wait bound a test runs out.
SHORT_WAIT = RunConfig(
    mode="simultrain", dataset="imu", window=2, edges=2, mix_edges=2, mix_wait_s=0.2
)
SPEC = get_model_spec("imu-cnn1d")


class MixEdge:
    """A real edge runtime and session over the test client's WebSocket, one frame at a time."""

    def __init__(self, ws: Any, edge_id: str, run: RunConfig = RUN) -> None:
        self.ws = ws
        self.edge_id = edge_id
        self.session = EdgeSession(limits=Limits(window=run.window))
        data = load_dataset("imu")
        edge = build_edge(run, SPEC, Shard(data))
        self.runtime = edge.runtime
        self.stream = BatchStream(data.x_train, data.y_train, batch_size=16, seed=len(edge_id))

    def send(self, frame: Any) -> None:
        self.ws.send_bytes(self.session.send(frame))

    def hello(self) -> None:
        hello = Hello(edge_id=self.edge_id, model_id=SPEC.model_id, cut_shape=tuple(SPEC.cut_shape))
        self.send(hello)
        while self.runtime.replica is None:
            for frame in self.session.receive_data(self.ws.receive_bytes()):
                if isinstance(frame, Snap):
                    self.runtime.on_snap(frame)
                else:
                    assert isinstance(frame, Welcome)

    def act(self, *, labels: torch.Tensor | None = None) -> Act:
        x, y = next(self.stream)
        act = self.runtime.produce(x, y)
        if labels is not None:  # a hostile edge: labels the model has no class for
            act = Act(
                seq=act.seq,
                edge_version=act.edge_version,
                activations=act.activations,
                labels=to_wire(labels, Codec.RAW.value),
            )
        self.send(act)
        return act

    def until_acked(self) -> list[type]:
        return self.until(Ack)

    def until(self, kind: type) -> list[type]:
        """Answer GRADs with EGRADs (each alone, as the agent does when mixing) until a frame
        of ``kind``: a mixed step's ACKs wait for every member's EGRAD, so a test takes both
        edges to their GRAD first."""
        seen: list[type] = []
        while kind not in seen:
            for frame in self.session.receive_data(self.ws.receive_bytes()):
                seen.append(type(frame))
                if isinstance(frame, Grad):
                    self.send(self.runtime.on_grad(frame))
                elif isinstance(frame, Delta):
                    self.runtime.on_delta(frame)
                elif isinstance(frame, Ack):
                    self.runtime.on_ack(frame)
                elif isinstance(frame, Snap):
                    self.runtime.on_snap(frame)
        return seen


@contextmanager
def two_mixing_edges(run: RunConfig = RUN) -> Iterator[tuple[TestClient, Any, MixEdge, MixEdge]]:
    """The cloud service (its app's state) with edges a and b in session, HELLO answered."""
    with (
        TestClient(create_app(CloudSettings(), run=run)) as client,
        client.websocket_connect("/v1/stream") as a,
        client.websocket_connect("/v1/stream") as b,
    ):
        edge_a, edge_b = MixEdge(a, "edge-a", run), MixEdge(b, "edge-b", run)
        edge_a.hello()
        edge_b.hello()
        yield client, client.app.state.service, edge_a, edge_b  # type: ignore[attr-defined]


def test_a_mixed_step_applies_each_edges_batch_once_and_answers_both() -> None:
    with two_mixing_edges() as (client, service, edge_a, edge_b):
        master, mixer = service.master, service.runtime.mixer
        for rounds in range(1, 4):
            edge_a.act()
            wait_until(lambda: len(mixer.waiting) == 1, timeout_s=30, what="a's ACT waits")
            assert master.samples_applied == 32 * (rounds - 1)  # nothing applied yet
            edge_b.act()  # completes the mix: a's GRAD comes from b's frame
            edge_a.until(Grad)
            edge_b.until(Grad)
            edge_a.until_acked()
            edge_b.until_acked()
            # One cloud-stage step and one edge-stage step per mixed step of 2 × 16.
            assert master.version == 2 * rounds
            assert master.edge_updates == rounds
            assert master.samples_applied == 32 * rounds
            assert mixer.steps == rounds and mixer.members == 2 * rounds
        status = client.get("/v1/status").json()
        for edge_id in ("edge-a", "edge-b"):
            session = status["edges"][edge_id]
            assert session["samples_received"] == session["samples_applied"] == 3 * 16
            assert session["steps_applied"] == 3
            assert session["highest_applied_seq"] == 2
            assert session["duplicates_dropped"] == 0
        assert mixer.empty and mixer.early_steps == 0
        # What /v1/status says of the mixing, and no credits (an explicit window).
        assert status["mixing"] == {
            "mix_edges": 2,
            "steps": 3,
            "mean_members": 2.0,
            "early_steps": 0,
        }
        assert status["credits"] is None
        # One edge gradient applied per mixed step (the members' sum); each member's
        # batch counted in its own session.
        assert status["staleness"]["batches"] == 3
        for edge_id in ("edge-a", "edge-b"):
            assert status["edges"][edge_id]["staleness"]["batches"] == 3


def test_an_act_alone_steps_when_its_wait_bound_runs_out() -> None:
    """The service's timer (`round_due_in`) drives the mixer: a partner that sends nothing
    holds an ACT for at most ``mix_wait_s``."""
    with two_mixing_edges(SHORT_WAIT) as (_client, service, edge_a, _edge_b):
        edge_a.act()
        assert Grad in edge_a.until_acked()  # no frame of b's: the timer stepped it
        mixer = service.runtime.mixer
        assert (mixer.steps, mixer.early_steps) == (1, 1)
        assert service.master.samples_applied == 16


def test_a_partner_whose_connection_fails_loses_its_session_not_the_sender() -> None:
    """b's ACT completes a mix; the send of a's GRAD fails (a's socket is gone): a's session
    is closed and cleaned up, b's goes on — its gradient steps without a's."""
    with two_mixing_edges() as (_client, service, edge_a, edge_b):
        master = service.master
        gone = service.connections["edge-a"].websocket

        async def reset(data: bytes) -> None:
            raise WebSocketDisconnect(code=1006)  # what Starlette raises on a reset socket

        gone.send_bytes = reset
        edge_a.act()
        wait_until(lambda: len(service.runtime.mixer.waiting) == 1, timeout_s=30, what="wait")
        edge_b.act()
        assert Grad in edge_b.until_acked()  # b's session survived a's failure
        assert "edge-a" not in service.connections
        assert "edge-a" not in service.runtime.connected
        # a's batch: its cloud-stage update applied once (the edge sends it again on its
        # next session), its edge gradient never came; b's applied alone.
        assert master.edge_updates == 1
        assert service.runtime.sessions["edge-a"].samples_applied == 0
        assert service.runtime.sessions["edge-b"].samples_applied == 16
        edge_b.act()  # alone in session now: answered at once, as without mixing
        assert Grad in edge_b.until_acked()
        assert service.runtime.sessions["edge-b"].highest_applied_seq == 1


def test_an_act_a_mixed_step_refuses_closes_its_edges_session() -> None:
    with two_mixing_edges() as (_client, service, edge_a, edge_b):
        edge_a.act(labels=torch.full((16,), 99, dtype=torch.int64))
        wait_until(lambda: len(service.runtime.mixer.waiting) == 1, timeout_s=30, what="wait")
        edge_b.act()  # the mix: a's labels fail the cloud step, b's batch steps alone
        assert Grad in edge_b.until_acked()
        refusal = edge_a.session.receive_data(edge_a.ws.receive_bytes())
        assert isinstance(refusal[0], Error) and refusal[0].code == "invalid_tensor"
        wait_until(
            lambda: "edge-a" not in service.runtime.connected,
            timeout_s=30,
            what="a's session closed",
        )
        assert service.runtime.sessions["edge-a"].samples_applied == 0
        assert service.master.samples_applied == 16


def test_a_reconnect_sends_its_waiting_act_again_and_it_is_applied_once() -> None:
    """a's ACT waits; a reconnects before its old connection is known dead and sends the
    batch again on the new session: the old session's waiting ACT is forgotten, the batch is
    mixed once."""
    with two_mixing_edges() as (client, service, edge_a, edge_b):
        act = edge_a.act()
        wait_until(lambda: len(service.runtime.mixer.waiting) == 1, timeout_s=30, what="wait")
        with client.websocket_connect("/v1/stream") as again:
            # The same edge (its runtime keeps the batch's forward) on a new session.
            edge_a.ws, edge_a.session = again, EdgeSession(limits=Limits(window=RUN.window))
            edge_a.send(Hello(edge_id="edge-a", model_id=SPEC.model_id, cut_shape=SPEC.cut_shape))
            opened: list[type] = []
            while Snap not in opened:
                opened += [type(f) for f in edge_a.session.receive_data(again.receive_bytes())]
            edge_a.send(act)  # the batch again, as the agent re-sends what was not acked
            wait_until(
                lambda: [w.edge_id for w in service.runtime.mixer.waiting] == ["edge-a"],
                timeout_s=30,
                what="the re-sent ACT waits",
            )
            edge_b.act()
            edge_a.until(Grad)
            edge_b.until(Grad)
            edge_a.until_acked()
            edge_b.until_acked()
        status = client.get("/v1/status").json()["edges"]
        assert status["edge-a"]["samples_applied"] == 16
        assert status["edge-a"]["duplicates_dropped"] == 0
        assert service.master.samples_applied == 32


def test_an_edges_batches_are_acknowledged_in_order_when_a_later_mix_completes_first() -> None:
    """a's batch 0 is mixed with b's, a's batch 1 alone (its wait ran out); a's EGRADs come,
    b's is late: the step of a's batch 1 is complete first yet waits for batch 0's, so a
    gets ACK 0 before ACK 1 (PROTOCOL.md §6.4)."""
    with two_mixing_edges(SHORT_WAIT) as (_client, service, edge_a, edge_b):
        edge_a.act()
        wait_until(lambda: len(service.runtime.mixer.waiting) == 1, timeout_s=30, what="wait")
        edge_b.act()
        edge_a.until(Grad)  # a's EGRAD 0 goes at once
        held = [f for f in edge_b.session.receive_data(edge_b.ws.receive_bytes())]
        assert isinstance(held[0], Grad)  # b's EGRAD 0: not yet
        edge_a.act()  # batch 1: mixed alone once its wait runs out
        edge_a.until(Grad)  # its EGRAD goes: that step is complete
        wait_until(
            lambda: (
                service.runtime.sessions["edge-a"].highest_cloud_step_seq == 1
                and not any(w.edge_id == "edge-a" for w in service.runtime.mixer.waiting)
            ),
            timeout_s=30,
            what="a's batch 1 stepped",
        )
        assert service.runtime.sessions["edge-a"].highest_applied_seq == -1  # waits
        edge_b.send(edge_b.runtime.on_grad(held[0]))
        acks: list[int] = []
        while len(acks) < 2:
            for frame in edge_a.session.receive_data(edge_a.ws.receive_bytes()):
                if isinstance(frame, Ack):
                    edge_a.runtime.on_ack(frame)
                    acks.append(frame.seq)
                elif isinstance(frame, Delta):
                    edge_a.runtime.on_delta(frame)
        assert acks == [0, 1]
        assert service.master.samples_applied == 3 * 16
