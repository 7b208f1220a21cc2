"""In-flight credits through the real cloud and edge agent (PROTOCOL.md §6.7, docs/FLEET.md).

The agent runs against the cloud's ASGI app in one event loop (services/edge/inprocess.py),
behind a transport that reads every message both ways, as the wire carries it: the grant in
force (WELCOME's capability value, then each ACK's ``credits``) and the batches in flight
(ACT sent → ACK received) are counted from the bytes, not from either side's bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest
import torch
import uvicorn
from fastapi import FastAPI

from simultrain.cloud.app import create_app
from simultrain.cloud.flow import with_replica_refresh
from simultrain.cloud.settings import CloudSettings
from simultrain.edge.agent import EdgeAgent, EdgeReport
from simultrain.edge.inprocess import ASGITransport
from simultrain.edge.settings import EdgeSettings
from simultrain.edge.transport import StreamConnection, StreamTransport, WebSocketsTransport
from simultrain.netem.profiles import parse_profile
from simultrain.netem.proxy import LinkEmulator
from simultrain.shared.data import load_dataset
from simultrain.shared.protocol import (
    Ack,
    Act,
    Delta,
    EGrad,
    Frame,
    Grad,
    Hello,
    Welcome,
    decode_frame,
    encode_frame,
)
from simultrain.shared.training.assembly import Shard, build_cloud, build_edge
from simultrain.shared.training.config import RunConfig
from tests.services.test_edge_inprocess import edge_settings as inprocess_edge_settings
from tests.services.test_edge_inprocess import service_of

STEPS = 24
EDGE = "edge-0"
AGENT_TIMEOUT_S = 120  # a bound on a run that takes seconds


@dataclasses.dataclass
class WireLog:
    """What the wire carried: the grant in force and the batches in flight at each ACT."""

    welcome: Welcome | None = None
    grant: int | None = None
    in_flight: set[int] = dataclasses.field(default_factory=set)
    at_act: list[tuple[int, int | None]] = dataclasses.field(default_factory=list)
    ack_grants: list[int | None] = dataclasses.field(default_factory=list)

    def sent(self, frame: Frame) -> None:
        if isinstance(frame, Act):
            self.in_flight.add(frame.seq)
            self.at_act.append((len(self.in_flight), self.grant))

    def received(self, frame: Frame) -> None:
        if isinstance(frame, Welcome):
            self.welcome = frame
            value = frame.capabilities.get("credits")
            self.grant = value if isinstance(value, int) else None
            self.in_flight.clear()
        elif isinstance(frame, Ack):
            self.in_flight = {seq for seq in self.in_flight if seq > frame.seq}
            self.ack_grants.append(frame.credits)
            if frame.credits is not None:
                self.grant = frame.credits


class _Recording:
    """A StreamConnection that logs each message's frame, and may rewrite the HELLO."""

    def __init__(self, inner: StreamConnection, log: WireLog, *, old_edge: bool) -> None:
        self.inner = inner
        self.log = log
        self.old_edge = old_edge

    @property
    def subprotocol(self) -> str | None:
        return self.inner.subprotocol

    @property
    def close_code(self) -> int | None:
        return self.inner.close_code

    @property
    def close_reason(self) -> str | None:
        return self.inner.close_reason

    async def send(self, data: bytes) -> None:
        frame = decode_frame(data)
        if self.old_edge and isinstance(frame, Hello):
            # An edge of before the capability: its HELLO offers none (PROTOCOL.md §10.2).
            frame = dataclasses.replace(frame, capabilities={})
            data = encode_frame(frame)
        self.log.sent(frame)
        await self.inner.send(data)

    async def recv(self) -> bytes | str:
        data = await self.inner.recv()
        if isinstance(data, bytes):
            self.log.received(decode_frame(data))
        return data

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.inner.close(code, reason)

    async def wait_closed(self) -> None:
        await self.inner.wait_closed()


class RecordingTransport:
    def __init__(self, inner: StreamTransport, *, old_edge: bool = False) -> None:
        self.inner = inner
        self.log = WireLog()
        self.old_edge = old_edge

    @contextlib.asynccontextmanager
    async def connect(
        self, url: str, *, subprotocols: Sequence[str], headers: Mapping[str, str]
    ) -> AsyncIterator[StreamConnection]:
        async with self.inner.connect(url, subprotocols=subprotocols, headers=headers) as conn:
            yield _Recording(conn, self.log, old_edge=self.old_edge)


@contextlib.asynccontextmanager
async def cloud_app(run: RunConfig) -> AsyncIterator[FastAPI]:
    app = create_app(CloudSettings(eval_interval_s=0), run=run)
    async with app.router.lifespan_context(app):
        yield app


def edge_settings(**overrides: Any) -> EdgeSettings:
    """The in-process agent's settings (tests/services/test_edge_inprocess.py), STEPS batches."""
    return inprocess_edge_settings(**{"steps": STEPS, **overrides})


async def train(run: RunConfig, *, old_edge: bool = False) -> tuple[WireLog, EdgeReport, dict]:
    async with cloud_app(run) as app:
        transport = RecordingTransport(ASGITransport(app), old_edge=old_edge)
        agent = EdgeAgent(edge_settings(), run=run, transport=transport)
        report = await asyncio.wait_for(agent.run(), AGENT_TIMEOUT_S)
        # One session, and the replica the cloud's bit for bit throughout: the grant's DELTAs
        # keep the mirror's order (PROTOCOL.md §3.1), a shrunk grant breaks no rule (§6.7).
        assert (report.sessions, report.checksum_failures, report.resyncs) == (1, 0, 0)
        status = service_of(app).status()
        edge = status.edges[EDGE]
        # Exactly once, credits or not: every batch one cloud-stage and one edge-stage update.
        assert edge.highest_applied_seq == STEPS - 1 and edge.steps_applied == STEPS
        assert status.master_version == 2 * STEPS
        flow = service_of(app).flow.summary()
    return transport.log, report, flow


async def test_an_auto_window_edge_keeps_to_the_grant_the_cloud_sends() -> None:
    log, report, flow = await train(RunConfig(mode="simultrain", dataset="imu", window="auto"))
    assert report.steps == report.batches_acked == STEPS
    assert log.welcome is not None
    first = log.welcome.capabilities.get("credits")
    assert isinstance(first, int) and first >= 1
    assert log.welcome.window == 64  # the cloud's hard bound with auto (services/cloud/flow.py)
    # Every ACK carries the grant in force, and no ACT ever went beyond it.
    assert log.ack_grants and all(g is not None and g >= 1 for g in log.ack_grants)
    assert all(grant is not None and in_flight <= grant for in_flight, grant in log.at_act)
    # The controller measured the loop (a round trip and a rate), not just its start value.
    controller = flow["controller"]
    assert isinstance(controller, dict) and controller["min_rtt_s"] is not None
    assert controller["round"] > 0


async def test_an_edge_without_the_capability_trains_with_the_fallback_window() -> None:
    log, report, flow = await train(
        RunConfig(mode="simultrain", dataset="imu", window="auto"), old_edge=True
    )
    assert report.steps == report.batches_acked == STEPS
    assert log.welcome is not None and log.welcome.capabilities == {}
    assert log.welcome.window == 4  # AUTO_FALLBACK_WINDOW
    assert all(grant is None for grant in log.ack_grants)  # no credits field on its wire
    assert max(in_flight for in_flight, _ in log.at_act) <= 4
    assert flow["grants"] == {}


async def test_an_explicit_window_grants_no_credits() -> None:
    log, _, _ = await train(RunConfig(mode="simultrain", dataset="imu", window=2))
    assert log.welcome is not None and log.welcome.capabilities == {}
    assert log.welcome.window == 2
    assert max(in_flight for in_flight, _ in log.at_act) <= 2
    assert all(grant is None for grant in log.ack_grants)


@pytest.mark.parametrize("window", ["auto", 3])
async def test_a_fixed_fleet_grant_bounds_the_edge_under_its_cap(window: int | str) -> None:
    # fleet_in_flight: a fixed total instead of the controller; an explicit window stays
    # each edge's cap (one edge here: min(total, cap)).
    run = RunConfig(mode="simultrain", dataset="imu", window=window, fleet_in_flight=2)
    log, _, flow = await train(run)
    assert log.welcome is not None and log.welcome.capabilities == {"credits": 2}
    assert all(g == 2 for g in log.ack_grants)
    assert max(in_flight for in_flight, _ in log.at_act) <= 2
    assert flow["policy"] == "fixed"


# --- the controller on links: grows on a long round trip, stays small for a busy cloud -----


class _Server(uvicorn.Server):
    """uvicorn, telling the test once it listens (no polling)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.listening.set()


@contextlib.asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[int]:
    """The cloud app on a real socket, 127.0.0.1 port 0; yields the port."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical")
    server = _Server(config)
    serving = asyncio.create_task(server.serve())
    await asyncio.wait_for(server.listening.wait(), 60)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 60)


LONG_LINK = "rate=50mbit,delay=60ms"  # 120 ms round trip: a pipe of many batches
LINK_STEPS = 80


async def test_auto_grows_the_grant_beyond_window_4_on_a_long_round_trip() -> None:
    run = RunConfig(mode="simultrain", dataset="imu", window="auto")
    app = create_app(CloudSettings(eval_interval_s=0), run=run)
    async with served(app) as port:
        link = LinkEmulator(
            listen_host="127.0.0.1",
            listen_port=0,
            upstream_host="127.0.0.1",
            upstream_port=port,
            profile=parse_profile(LONG_LINK),
        )
        link_port = await link.start()
        try:
            transport = RecordingTransport(WebSocketsTransport(open_timeout_s=30))
            settings = edge_settings(cloud_url=f"http://127.0.0.1:{link_port}", steps=LINK_STEPS)
            agent = EdgeAgent(settings, run=run, transport=transport)
            report = await asyncio.wait_for(agent.run(), AGENT_TIMEOUT_S)
        finally:
            await link.stop()
        flow = service_of(app).flow.summary()
        status = service_of(app).status().credits
    log = transport.log
    assert report.batches_acked == LINK_STEPS and report.checksum_failures == 0
    # /v1/status carries the controller's estimate.
    assert status is not None and status.policy == "auto" and status.most_in_flight > 4
    assert status.pipe is not None and status.pipe > 4 and status.min_rtt_s is not None
    assert all(grant is not None and in_flight <= grant for in_flight, grant in log.at_act)
    # The round trip is ~120 ms and a batch takes milliseconds: four in flight would idle the
    # link, and the controller grants (and the edge fills) more.
    most = max(in_flight for in_flight, _ in log.at_act)
    assert most > 4, (most, log.ack_grants)
    controller = flow["controller"]
    assert isinstance(controller, dict)
    assert controller["min_rtt_s"] is not None and controller["min_rtt_s"] >= 0.12
    assert controller["pipe"] is not None and controller["pipe"] > 4, flow


FLEET = 4
FLEET_STEPS = 40


async def _fleet_in_flight(run: RunConfig) -> tuple[list[int], dict[str, Any]]:
    """A fleet of FLEET edges on one loopback cloud (in process: the cloud's compute thread
    serves all of them, the bottleneck); the fleet's in flight at each ACT the cloud read."""
    async with cloud_app(run) as app:
        service = service_of(app)
        seen: list[int] = []
        on_act = service.flow.on_act

        def counting(edge_id: str, seq: int) -> None:
            on_act(edge_id, seq)
            seen.append(sum(len(c.session.in_flight) for c in service.connections.values()))

        service.flow.on_act = counting  # type: ignore[method-assign]
        agents = [
            EdgeAgent(
                edge_settings(
                    edge_id=f"edge-{i}", steps=FLEET_STEPS, shard_index=i, shard_count=FLEET
                ),
                run=run,
                transport=ASGITransport(app),
            )
            for i in range(FLEET)
        ]
        reports = await asyncio.wait_for(
            asyncio.gather(*(a.run() for a in agents)), AGENT_TIMEOUT_S
        )
        assert all(r.batches_acked == FLEET_STEPS for r in reports)
        return seen, service.flow.summary()


async def test_auto_keeps_a_cloud_bound_fleet_small_where_window_4_queues() -> None:
    base = RunConfig(mode="simultrain", dataset="imu", edges=FLEET)
    fixed, _ = await _fleet_in_flight(dataclasses.replace(base, window=4))
    auto, flow = await _fleet_in_flight(dataclasses.replace(base, window="auto"))
    # Once started (the second half of the ACTs), the fleet holds what the cloud needs, not
    # 4 per edge: measured 4–5 against 9–10 (a queue at the cloud's compute thread).
    assert _settled(auto) < _settled(fixed), (auto, fixed, flow)


def _settled(in_flight: list[int]) -> int:
    """The median of the second half of the samples."""
    late = sorted(in_flight[len(in_flight) // 2 :])
    return late[len(late) // 2]


def test_a_grant_brings_the_edge_s_replica_to_the_master() -> None:
    """The grant's DELTA (docs/FLEET.md, "Credits"), frame by frame in a fixed order: an ACT
    that carries its edge's EGRAD is answered by the DELTA and ACK of that update and then by
    the ACT's own cloud-stage step, so the master moves after the ACK. The grant's DELTA,
    behind the step's frames, brings the replica to the master's version, holding the
    master's edge stage bit for bit (the other edge's update included)."""
    run = RunConfig(mode="simultrain", dataset="imu", edges=2, window="auto")
    dataset = load_dataset(run.dataset, seed=run.seed)
    spec = dataset.model_spec(run.model_id)
    cloud = build_cloud(run, spec).runtime
    assemblies = {f"edge-{i}": build_edge(run, spec, Shard(dataset, i, 2)) for i in range(2)}
    edges = {edge_id: assembly.runtime for edge_id, assembly in assemblies.items()}
    credit_edges = frozenset(edges)

    def step(edge_id: str, frame: Act | EGrad) -> list[Frame]:
        """The cloud's step on ``frame`` as the service takes it; every frame it sends, as the
        wire carries it, to its edge. A GRAD's EGRAD waits to ride on the edge's next ACT."""
        out = (
            cloud.on_act(edge_id, frame)
            if isinstance(frame, Act)
            else cloud.on_egrad(edge_id, frame)
        )
        sent: list[Frame] = []
        for to, outgoing in with_replica_refresh(cloud, out, credit_edges):
            received = decode_frame(encode_frame(outgoing))
            edge = edges[to]
            if isinstance(received, Grad):
                edge.pending_egrads.append(edge.on_grad(received))
            elif isinstance(received, Delta):
                edge.on_delta(received)
            elif isinstance(received, Ack):
                edge.on_ack(received)
            else:
                raise AssertionError(f"unexpected {received.type} for {to}")
            if to == edge_id:
                sent.append(received)
        return sent

    def act(edge_id: str) -> Act:
        frame = edges[edge_id].produce_next(assemblies[edge_id].stream)
        assert isinstance(frame, Act)
        return frame

    for edge_id, edge in edges.items():
        edge.on_snap(cloud.open_session(edge_id)[1])
    step("edge-0", act("edge-0"))  # batch 0 of edge-0: its GRAD, its EGRAD held
    step("edge-1", act("edge-1"))  # batch 0 of edge-1, and its EGRAD alone: the edge stage
    step("edge-1", edges["edge-1"].pending_egrads.popleft())  # moves by edge-1's update
    second = act("edge-0")
    assert second.egrad is not None and second.egrad.seq == 0
    sent = step("edge-0", second)
    kinds = [frame.type for frame in sent]
    ack = next(frame for frame in sent if isinstance(frame, Ack))
    # The EGRAD's DELTA and ACK, the ACT's GRAD, then the grant's DELTA: the cloud-stage
    # step moved the master after the ACK.
    assert kinds == ["delta", "ack", "grad", "delta"], kinds
    assert ack.seq == 0 and ack.master_version < cloud.master.version
    replica = edges["edge-0"].replica
    assert replica is not None and not edges["edge-0"].replica_corrupt
    assert replica.version == cloud.sessions["edge-0"].mirror_version == cloud.master.version
    master = cloud.replica_template()
    assert all(torch.equal(replica.current.tensors[n], t) for n, t in master.items())


async def test_a_grant_refreshes_every_replica_a_step_left_behind_its_master(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the real cloud and agents: after each step, every credits edge it acknowledged
    holds the master's version, and a grant added a DELTA exactly where the step had left the
    replica behind (whether a step does depends on the edges' timing: an EGRAD rides on an
    ACT only when a credit is free as its GRAD arrives)."""
    import simultrain.cloud.service as cloud_service

    refresh = cloud_service.with_replica_refresh
    steps: list[tuple[int, int, bool]] = []  # (replicas behind, DELTAs added, all at master)

    def checked(runtime: Any, outgoing: Any, edges: frozenset[str]) -> list[Any]:
        before = list(outgoing)
        if len(runtime.sessions) < 2:  # the fleet's first edge alone: no grant DELTA is due
            return refresh(runtime, before, edges)
        acked = {edge_id for edge_id, frame in before if isinstance(frame, Ack)} & edges
        behind = sum(runtime.sessions[e].mirror_version != runtime.master.version for e in acked)
        frames = refresh(runtime, before, edges)
        at_master = all(runtime.sessions[e].mirror_version == runtime.master.version for e in acked)
        steps.append((behind, len(frames) - len(before), at_master))
        return frames

    monkeypatch.setattr(cloud_service, "with_replica_refresh", checked)
    await _fleet_in_flight(RunConfig(mode="simultrain", dataset="imu", edges=2, window="auto"))
    assert steps and all(at_master for _, _, at_master in steps)
    assert all(added == behind for behind, added, _ in steps), steps


@pytest.mark.parametrize("mode", ["split-sync", "syncsgd", "fedavg"])
def test_lockstep_modes_grant_no_credits_under_auto(mode: str) -> None:
    from simultrain.cloud.flow import CloudFlow

    run = RunConfig(mode=mode, dataset="imu", window="auto")
    assert not CloudFlow(run, run.schedule()).enabled
    assert CloudFlow(RunConfig(dataset="imu", window="auto"), RunConfig().schedule()).enabled
