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
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest
from fastapi import FastAPI

from simultrain.cloud.app import create_app
from simultrain.cloud.service import CloudService
from simultrain.cloud.settings import CloudSettings
from simultrain.edge.agent import EdgeAgent, EdgeReport
from simultrain.edge.inprocess import ASGITransport
from simultrain.edge.settings import EdgeSettings
from simultrain.edge.transport import StreamConnection
from simultrain.shared.protocol import Ack, Act, Frame, Hello, Welcome, decode_frame, encode_frame
from simultrain.shared.training.config import RunConfig

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
    def __init__(self, inner: ASGITransport, *, old_edge: bool = False) -> None:
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


def service_of(app: FastAPI) -> CloudService:
    service: CloudService = app.state.service
    return service


def edge_settings(**overrides: Any) -> EdgeSettings:
    values: dict[str, Any] = {
        "cloud_url": "http://cloud.test",
        "steps": STEPS,
        "watchdog": False,
        "compute_threads": 1,
        "reconnect_initial_s": 0.01,
        "reconnect_max_s": 0.05,
        **overrides,
    }
    return EdgeSettings(**values)


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
