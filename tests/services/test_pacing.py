"""Pacing: the cloud holds the ACKs of an edge that runs ahead of the fleet's slowest
(services/cloud/flow.py, `Pacer`; docs/FLEET.md, "Pacing").

The rules on their own, then through the real cloud app and edge agents: a fleet with one
slow edge stays within the lead where without pacing its fast edges finish far ahead, and
every batch is still applied exactly once.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from simultrain.cloud.flow import Pacer
from simultrain.edge.agent import EdgeAgent
from simultrain.edge.inprocess import ASGITransport
from simultrain.shared.data import load_dataset
from simultrain.shared.protocol import Ack
from simultrain.shared.training.assembly import build_cloud
from simultrain.shared.training.config import RunConfig
from tests.services.test_credits import AGENT_TIMEOUT_S, cloud_app, edge_settings
from tests.services.test_edge_inprocess import service_of


def ack(seq: int) -> Ack:
    return Ack(seq=seq, master_version=0)


def test_an_edge_ahead_by_more_than_the_lead_waits_for_the_slowest() -> None:
    pacer: Pacer[str] = Pacer(lead=2)
    pacer.open("a", None)
    pacer.open("b", None)
    assert not pacer.hold("a", "conn-a", ack(0))
    assert not pacer.hold("a", "conn-a", ack(1))
    assert pacer.hold("a", "conn-a", ack(2))  # 3 acknowledged, b none: 3 ahead
    assert pacer.hold("a", "conn-a", ack(3))  # behind a held ACK: in order, held too
    assert pacer.due() == []
    assert not pacer.hold("b", "conn-b", ack(0))  # the slowest is never held
    assert pacer.due() == []  # a is 4 ahead of 1
    assert not pacer.hold("b", "conn-b", ack(1))
    assert pacer.due() == [("a", "conn-a", [ack(2), ack(3)])]  # 4 − 2 ≤ 2: both, in order
    assert pacer.held_acks == 2


def test_without_a_lead_nothing_is_held() -> None:
    pacer: Pacer[str] = Pacer(lead=None)
    pacer.open("a", None)
    pacer.open("b", None)
    assert not any(pacer.hold("a", "conn", ack(seq)) for seq in range(100))
    assert pacer.due() == []


def test_the_slowest_edge_leaving_lets_the_others_go_slowest_first() -> None:
    pacer: Pacer[str] = Pacer(lead=0)
    for edge in ("a", "b", "c"):
        pacer.open(edge, None)
    pacer.hold("a", "conn-a", ack(0))
    pacer.hold("a", "conn-a", ack(1))
    assert pacer.hold("b", "conn-b", ack(0))  # c has none: b waits too
    pacer.close("c")  # gone: b is the slowest now, a is 1 ahead of it
    assert pacer.due() == [("b", "conn-b", [ack(0)])]
    assert pacer.hold("b", "conn-b", ack(1)) is False
    assert pacer.due() == [("a", "conn-a", [ack(0), ack(1)])]


def test_a_late_edge_joins_where_the_fleet_is() -> None:
    """The fleet does not wait for a newcomer (or an edge back after a long absence) to redo
    its batches: it joins at the slowest edge's progress."""
    pacer: Pacer[str] = Pacer(lead=1)
    pacer.open("a", None)
    for seq in range(50):
        assert not pacer.hold("a", "conn-a", ack(seq))  # alone: the slowest
    pacer.open("late", None)
    assert pacer.progress["late"] == 50
    assert not pacer.hold("a", "conn-a", ack(50))  # 51 against 50
    assert pacer.hold("a", "conn-a", ack(51))
    pacer.hold("late", "conn-late", ack(0))
    assert [edge for edge, _, _ in pacer.due()] == ["a"]
    # A reconnect: the edge comes back at the fleet's level (a's 52 now), and WELCOME's
    # acked_seq counts no batch twice.
    pacer.close("late")
    pacer.open("late", 0)
    assert pacer.progress["late"] == 52
    assert not pacer.hold("late", "conn-late", ack(0))  # acknowledged before: no progress
    assert pacer.progress["late"] == 52
    assert not pacer.hold("late", "conn-late", ack(1))
    assert pacer.progress["late"] == 53


def test_an_edge_that_stops_sending_stops_setting_the_pace() -> None:
    """A camera at night, an edge whose data ran out: after ``idle_s`` without an ACT it is
    not waited for, and what waited for it goes; an ACT makes it count again."""
    now = [0.0]
    pacer: Pacer[str] = Pacer(lead=0, idle_s=5.0, clock=lambda: now[0])
    pacer.open("busy", None)
    pacer.open("quiet", None)
    pacer.on_act("busy")
    assert pacer.hold("busy", "conn", ack(0))  # quiet has sent nothing yet: 1 ahead
    now[0] = 4.0
    assert pacer.due() == []
    now[0] = 5.5  # quiet's last sign (its session's start) is over 5 s old
    assert pacer.due() == [("busy", "conn", [ack(0)])]
    pacer.on_act("busy")
    assert not pacer.hold("busy", "conn", ack(1))  # busy alone sets the pace now
    pacer.on_act("quiet")  # quiet is back: 2 behind, so busy waits for it again
    assert pacer.hold("busy", "conn", ack(2))
    assert pacer.slowest() == 0


FLEET = 3


async def _spread(run: RunConfig) -> tuple[int, int, int, list[int]]:
    """A fleet of FLEET in-process agents, edge-0 eight times slower. Returns: how far ahead
    of the slowest edge an edge was when one of its ACKs went, by the pacer's count (0
    without pacing); the widest gap in batches acknowledged since all three were in
    session; the ACKs held; and each edge's samples applied."""
    async with cloud_app(run) as app:
        service = service_of(app)
        acked = dict.fromkeys((f"edge-{i}" for i in range(FLEET)), 0)
        joined: dict[str, int] = {}
        ahead = widest = 0
        on_ack = service.flow.on_ack

        def counting(edge_id: str, frame: Ack) -> Ack:
            nonlocal ahead, widest
            acked[edge_id] = frame.seq + 1
            pacer = service.pacer
            slowest = pacer.slowest()
            if pacer.lead is not None and slowest is not None:
                ahead = max(ahead, pacer.progress[edge_id] - slowest)
            if len(service.connections) == FLEET:
                if not joined:
                    joined.update(acked)
                since = [acked[e] - joined[e] for e in acked]
                widest = max(widest, max(since) - min(since))
            return on_ack(edge_id, frame)

        service.flow.on_ack = counting  # type: ignore[method-assign]
        agents = [
            EdgeAgent(
                edge_settings(
                    edge_id=f"edge-{i}",
                    steps=30,
                    shard_index=i,
                    shard_count=FLEET,
                    slowdown=8.0 if i == 0 else 1.0,
                ),
                run=run,
                transport=ASGITransport(app),
            )
            for i in range(FLEET)
        ]
        reports = await asyncio.wait_for(
            asyncio.gather(*(a.run() for a in agents)), 4 * AGENT_TIMEOUT_S
        )
        assert all(r.batches_acked == 30 for r in reports)
        pacing = service.status().pacing
        if run.pace_lead == "off":
            assert pacing is None
        else:  # what /v1/status says: nothing held once every edge is done
            assert pacing is not None and pacing.lead == run.pace_lead
            assert pacing.holding == [] and pacing.held_acks == service.pacer.held_acks
        applied = [service.runtime.sessions[f"edge-{i}"].samples_applied for i in range(FLEET)]
        return ahead, widest, service.pacer.held_acks, applied


@pytest.mark.parametrize("window", [2, "auto"])
async def test_a_slow_edge_keeps_the_fleet_within_the_lead(window: int | str) -> None:
    base = RunConfig(mode="simultrain", dataset="imu", edges=FLEET, window=window)
    ahead, paced, held, applied = await _spread(dataclasses.replace(base, pace_lead=2))
    assert ahead <= 2  # no ACK goes to an edge more than the lead ahead
    assert held > 0
    assert applied == [30 * 32] * FLEET  # exactly once, held or not
    _, unpaced, never, _ = await _spread(dataclasses.replace(base, pace_lead="off"))
    assert never == 0
    # Without it the fast edges run away from the slow one.
    assert unpaced > max(paced, 2 * 2 + 1) + 3, (unpaced, paced)


@pytest.mark.parametrize("mode", ["fedavg", "split-sync"])
def test_lockstep_modes_pace_nothing(mode: str) -> None:
    """One batch, or one round, at a time: the edges are in step already, so the cloud holds
    no ACK whatever the lead; ``off`` holds none anywhere."""
    spec = load_dataset("imu").model_spec(None)
    assert build_cloud(RunConfig(mode=mode, pace_lead=2), spec).pace_lead is None
    assert build_cloud(RunConfig(pace_lead="off"), spec).pace_lead is None
    assert build_cloud(RunConfig(), spec).pace_lead == 2  # the default
