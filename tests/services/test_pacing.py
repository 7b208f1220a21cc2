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

from simultrain.cloud.flow import CloudFlow, Pacer
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


def release(pacer: Pacer[str]) -> list[tuple[str, str, list[Ack]]]:
    """What `Pacer.due` lets go, each edge's ACKs sent at once (nothing came meanwhile)."""
    released = list(pacer.due())
    for edge_id, conn, _ in released:
        assert pacer.sent(edge_id, conn) == []
    return released


def test_an_edge_ahead_by_more_than_the_lead_waits_for_the_slowest() -> None:
    pacer: Pacer[str] = Pacer(lead=2)
    pacer.open("a", None)
    pacer.open("b", None)
    assert not pacer.hold("a", "conn-a", ack(0))
    assert not pacer.hold("a", "conn-a", ack(1))
    assert pacer.hold("a", "conn-a", ack(2))  # 3 acknowledged, b none: 3 ahead
    assert pacer.hold("a", "conn-a", ack(3))  # behind a held ACK: in order, held too
    assert release(pacer) == []
    assert not pacer.hold("b", "conn-b", ack(0))  # the slowest is never held
    assert release(pacer) == []  # a is 4 ahead of 1
    assert not pacer.hold("b", "conn-b", ack(1))
    assert release(pacer) == [("a", "conn-a", [ack(2), ack(3)])]  # 4 − 2 ≤ 2: both, in order
    assert pacer.held_acks == 2


def test_without_a_lead_nothing_is_held() -> None:
    pacer: Pacer[str] = Pacer(lead=None)
    pacer.open("a", None)
    pacer.open("b", None)
    assert not any(pacer.hold("a", "conn", ack(seq)) for seq in range(100))
    assert release(pacer) == []


def test_the_slowest_edge_leaving_lets_the_others_go_slowest_first() -> None:
    pacer: Pacer[str] = Pacer(lead=0)
    for edge in ("a", "b", "c"):
        pacer.open(edge, None)
    pacer.hold("a", "conn-a", ack(0))
    pacer.hold("a", "conn-a", ack(1))
    assert pacer.hold("b", "conn-b", ack(0))  # c has none: b waits too
    pacer.close("c")  # gone: b is the slowest now, a is 1 ahead of it
    assert release(pacer) == [("b", "conn-b", [ack(0)])]
    assert pacer.hold("b", "conn-b", ack(1)) is False
    assert release(pacer) == [("a", "conn-a", [ack(0), ack(1)])]


def test_acks_made_while_a_release_is_on_its_way_go_behind_it() -> None:
    """The cloud sends a released edge's ACKs behind a DELTA it computes first: ACKs its
    steps make meanwhile wait for them, so the edge reads its ACKs in order (§6.3), and they
    go next unless the edge is ahead again by then."""
    pacer: Pacer[str] = Pacer(lead=1)
    pacer.open("a", None)
    pacer.open("b", None)
    assert not pacer.hold("a", "conn-a", ack(0))
    assert pacer.hold("a", "conn-a", ack(1))  # 2 against 0
    assert not pacer.hold("b", "conn-b", ack(0))
    [(edge, _, acks)] = pacer.due()
    assert (edge, acks) == ("a", [ack(1)])
    assert pacer.hold("a", "conn-a", ack(2))  # behind the released one
    assert not pacer.hold("b", "conn-b", ack(1))
    assert not pacer.hold("b", "conn-b", ack(2))  # 3 against 3
    assert pacer.sent("a", "conn-a") == [ack(2)]  # sent next...
    assert pacer.hold("a", "conn-a", ack(3))  # (made while that one goes)
    assert pacer.hold("a", "conn-a", ack(4))  # 5 against 3: ahead again
    assert pacer.sent("a", "conn-a") == []  # ...so these wait, held for the lead
    assert pacer.holding
    assert not pacer.hold("b", "conn-b", ack(3))
    assert release(pacer) == [("a", "conn-a", [ack(3), ack(4)])]


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
    assert [edge for edge, _, _ in release(pacer)] == ["a"]
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
    assert release(pacer) == []
    now[0] = 5.5  # quiet's last sign (its session's start) is over 5 s old
    assert release(pacer) == [("busy", "conn", [ack(0)])]
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
        if run.pace_lead == "off":  # none for the lead; with credits, some for a credit
            assert pacing is None if run.window != "auto" else pacing and pacing.lead is None
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
    _, unpaced, _, _ = await _spread(dataclasses.replace(base, pace_lead="off"))
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


# --- zero grants: fewer batches in flight than edges ----------------------------------------

ZERO_FLEET = 6
ZERO_STEPS = 30


async def _staleness(run: RunConfig) -> tuple[float, int, int, int]:
    """ZERO_FLEET in-process agents. Returns the mean staleness of their batches (in
    edge-stage updates), the ACKs the cloud held, the most edges that held credits at one
    time once the fleet settled (the second half of its ACTs), and the widest gap in progress
    (`Pacer.progress`) between two edges in session, once all were."""
    async with cloud_app(run) as app:
        service = service_of(app)
        flow = service.flow
        holders: list[int] = []
        widest = 0
        on_act = flow.on_act

        def counting(edge_id: str, seq: int) -> None:
            nonlocal widest
            on_act(edge_id, seq)
            now = flow.clock()
            holders.append(sum(1 for e in flow.edges if flow.committed_by(e, now)))
            if len(flow.edges) == ZERO_FLEET:  # by the pacer's count (late joiners join level)
                progress = [service.pacer.progress[e] for e in flow.edges]
                widest = max(widest, max(progress) - min(progress))

        flow.on_act = counting  # type: ignore[method-assign]
        agents = [
            EdgeAgent(
                edge_settings(
                    edge_id=f"edge-{i}",
                    steps=ZERO_STEPS,
                    shard_index=i,
                    shard_count=ZERO_FLEET,
                ),
                run=run,
                transport=ASGITransport(app),
            )
            for i in range(ZERO_FLEET)
        ]
        reports = await asyncio.wait_for(
            asyncio.gather(*(a.run() for a in agents)), 4 * AGENT_TIMEOUT_S
        )
        assert all(r.batches_acked == ZERO_STEPS and r.checksum_failures == 0 for r in reports)
        applied = [service.runtime.sessions[f"edge-{i}"].samples_applied for i in range(ZERO_FLEET)]
        assert applied == [ZERO_STEPS * 32] * ZERO_FLEET  # exactly once, held or not
        status = service.status()
        assert status.samples_per_s is not None and status.samples_per_s > 0
        staleness = status.staleness
        settled = max(holders[len(holders) // 2 :])
        return staleness.mean, service.pacer.held_acks, settled, widest


def test_an_edge_waiting_for_a_credit_is_not_starved_by_larger_grants() -> None:
    """Edges with grants above one always have a batch in flight when an ACK comes, so they
    never need a credit: while another edge waits for one, each of their grants keeps one
    back, and the next credit that frees up is the waiting edge's."""
    run = RunConfig(mode="simultrain", dataset="imu", window=2, fleet_in_flight=4)
    flow = CloudFlow(run, run.schedule(), clock=lambda: 0.0)
    grants = {edge: flow.answers(edge, {"credits": True})["credits"] for edge in "abc"}
    assert grants == {"a": 2, "b": 2, "c": 1}  # WELCOME's grant is one whatever is left
    for edge, seqs in (("a", (0, 1)), ("b", (0, 1)), ("c", (0,))):
        for seq in seqs:
            flow.on_act(edge, seq)
    flow.on_applied("c", 0)
    assert flow.room_for("c", ack(0)) == 0  # a and b hold the total: c waits
    flow.on_applied("a", 0)
    assert flow.room_for("a", ack(0)) is None  # a's batch 1 is in flight: its ACK goes...
    assert flow.on_ack("a", ack(0)).credits == 1  # ...with one credit kept back for c
    flow.on_applied("a", 1)  # a needs a credit now too: the two it held are free
    assert flow.room_for("a", ack(1)) == flow.room_for("c", ack(0)) == 2
    assert flow.on_ack("c", ack(0)).credits == 1  # (the pacer asks the slowest first)
    assert flow.on_ack("a", ack(1)).credits == 1
    assert flow.committed_by("b", 0.0) == 2


async def test_a_fleet_total_below_the_fleet_s_size_holds_acks_instead_of_a_floor_of_one() -> None:
    """Two batches in flight for six edges: the cloud holds the ACK that would leave an edge
    with nothing in flight until a credit frees up (a grant of none), gives the credits that
    free up to the slowest edge first, and sends a held ACK behind a DELTA to the master —
    so a batch misses the updates of about two batches, where one batch in flight per edge
    (window 1) misses those of the other five."""
    base = RunConfig(mode="simultrain", dataset="imu", edges=ZERO_FLEET, pace_lead="off")
    zero, held, holders, widest = await _staleness(
        dataclasses.replace(base, window="auto", fleet_in_flight=2)
    )
    floor, never, _, _ = await _staleness(dataclasses.replace(base, window=1))
    assert held > 0 and never == 0
    assert holders <= 2  # at most the total, where a floor of one per edge would keep 6
    assert widest <= 2  # round robin: no edge runs ahead of the others (measured 1)
    assert zero < floor / 2, (zero, floor)  # measured 1.0 against 4.9
