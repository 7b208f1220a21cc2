"""A discrete-event model of a fleet's pipeline, to try flow control without services.

docs/FLEET.md, "Credits". Each batch of each edge takes the path of one SimulTrain step
(docs/DESIGN.md §3; shared/training/window.py's cycle)::

    edge forward → ACT up → cloud step → GRAD down → edge backward → EGRAD up
                 → cloud apply → ACK down

Every edge has its own processor (a backward goes before a waiting forward) and its own link
(uplink and downlink, each a serialising queue at its bandwidth, then half the round-trip
time); the cloud is one queue shared by the fleet. ``overhead_s`` is the per-message work
outside any stage (encoding, compression, the socket), paid by every message on arrival.

A *policy* decides when an edge may start a batch: the `FlowController` (credits), or a
fixed window per edge (`FixedWindow`), through the same four calls. `simulate` runs one and
reports what a benchmark would: batches per second, the mean in flight, staleness (edge-stage
updates the cloud applied between a batch's forward and its own update) and where the
controller settled. Deterministic: no clock, no randomness.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from simultrain.shared.errors import ConfigError
from simultrain.shared.training.flow import FlowController

__all__ = ["FixedWindow", "Pipe", "Policy", "SimResult", "simulate"]


class Policy(Protocol):
    def add_edge(self, edge_id: str) -> None: ...

    def credits(self, edge_id: str) -> int: ...

    def on_send(self, edge_id: str, seq: int, now: float) -> None: ...

    def on_ack(self, edge_id: str, seq: int, now: float) -> None: ...


class FixedWindow:
    """Today's flow control: each edge keeps up to ``window`` batches in flight."""

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ConfigError(f"a window of at least 1 batch, got {window}")
        self.window = window
        self._in_flight: dict[str, set[int]] = {}

    def add_edge(self, edge_id: str) -> None:
        self._in_flight.setdefault(edge_id, set())

    def credits(self, edge_id: str) -> int:
        return self.window - len(self._in_flight[edge_id])

    def on_send(self, edge_id: str, seq: int, now: float) -> None:
        self._in_flight[edge_id].add(seq)

    def on_ack(self, edge_id: str, seq: int, now: float) -> None:
        self._in_flight[edge_id] = {s for s in self._in_flight[edge_id] if s > seq}


@dataclass(frozen=True, slots=True)
class Pipe:
    """One fleet's pipeline: per-batch times in seconds, per-message bytes, each edge's link."""

    edge_forward_s: float
    edge_backward_s: float
    cloud_step_s: float
    cloud_apply_s: float
    act_bytes: float
    grad_bytes: float
    egrad_bytes: float
    ack_bytes: float  # the ACK with the DELTA before it
    up_bits_per_s: float
    down_bits_per_s: float
    rtt_s: float
    overhead_s: float = 0.0

    def __post_init__(self) -> None:
        values = (
            self.edge_forward_s,
            self.edge_backward_s,
            self.cloud_step_s,
            self.cloud_apply_s,
            self.act_bytes,
            self.grad_bytes,
            self.egrad_bytes,
            self.ack_bytes,
            self.rtt_s,
            self.overhead_s,
        )
        if min(values) < 0 or self.up_bits_per_s <= 0 or self.down_bits_per_s <= 0:
            raise ConfigError("pipe times and sizes must be ≥ 0 and bandwidths > 0")

    def bottleneck_s(self, edges: int) -> float:
        """Seconds per batch at the fleet's bottleneck: one edge's processor or link (each
        serves its own batches, so the fleet gets ``edges`` of them), or the shared cloud."""
        per_edge = max(
            self.edge_forward_s + self.edge_backward_s,
            (self.act_bytes + self.egrad_bytes) * 8 / self.up_bits_per_s,
            (self.grad_bytes + self.ack_bytes) * 8 / self.down_bits_per_s,
        )
        return max(per_edge / edges, self.cloud_step_s + self.cloud_apply_s)


@dataclass
class SimResult:
    # Cloud-stage steps per second over the measured part (every batch takes one; counted
    # where the batch is served, not at its ACK: a run's end that cuts a burst of ACKs of
    # batches served before the measured part began would overstate the rate by up to the
    # batches in flight).
    batches_per_s: float
    mean_in_flight: float  # fleet-wide, time-weighted, over the measured part
    mean_staleness: float  # edge-stage updates a batch's gradient missed
    round_trip_s: float  # mean batch → ACK time over the measured part
    acked: int
    target: int | None = None  # the controller's, at the end
    targets: list[tuple[float, int]] = field(default_factory=list)  # (time, target)


@dataclass(order=True)
class _Event:
    at: float
    order: int
    act: Callable[[], None] = field(compare=False)


class _Queue:
    """A FIFO server: each job takes its service time, one at a time."""

    def __init__(self) -> None:
        self.free_at = 0.0

    def serve(self, now: float, seconds: float) -> float:
        start = max(now, self.free_at)
        self.free_at = start + seconds
        return self.free_at


def simulate(
    pipe: Pipe,
    policy: Policy,
    *,
    edges: int = 1,
    seconds: float = 10.0,
    measure_from: float = 0.5,
    egrad_first: bool = False,
) -> SimResult:
    """Run ``edges`` edges through ``pipe`` under ``policy`` for ``seconds`` of model time;
    figures are taken from ``measure_from`` (a fraction of the run) on.

    The cloud serves its queue in arrival order, or — ``egrad_first`` — edge gradients
    before waiting ACTs (an EGRAD is a short update that frees a credit; served behind every
    queued ACT, the fleet's batches move in convoys that leave the cloud idle while the next
    forwards run)."""
    if edges < 1 or seconds <= 0 or not 0 <= measure_from < 1:
        raise ConfigError("edges ≥ 1, seconds > 0 and 0 ≤ measure_from < 1")
    events: list[_Event] = []
    order = itertools.count()
    now = 0.0

    def at(when: float, act: Callable[[], None]) -> None:
        heapq.heappush(events, _Event(when, next(order), act))

    ids = [f"edge-{i}" for i in range(edges)]
    for edge_id in ids:
        policy.add_edge(edge_id)
    uplink = {e: _Queue() for e in ids}
    downlink = {e: _Queue() for e in ids}
    cloud_jobs: list[tuple[int, int, float, Callable[[], None]]] = []  # (priority, order, …)
    cloud_busy = False

    def to_cloud(priority: int, seconds_of_work: float, then: Callable[[], None]) -> None:
        heapq.heappush(cloud_jobs, (priority, next(order), seconds_of_work, then))
        serve_cloud()

    def serve_cloud() -> None:
        nonlocal cloud_busy
        if cloud_busy or not cloud_jobs:
            return
        _, _, work, then = heapq.heappop(cloud_jobs)
        cloud_busy = True

        def done() -> None:
            nonlocal cloud_busy
            cloud_busy = False
            then()
            serve_cloud()

        at(now + work, done)

    cpu_busy = dict.fromkeys(ids, False)
    backwards: dict[str, deque[int]] = {e: deque() for e in ids}
    next_seq = dict.fromkeys(ids, 0)
    sent_at: dict[tuple[str, int], float] = {}
    version_at: dict[tuple[str, int], int] = {}
    applied = 0  # edge-stage updates the cloud applied
    start = seconds * measure_from
    acked = 0
    round_trips: list[float] = []
    step_times: list[float] = []
    stale: list[int] = []
    in_flight = 0
    area = 0.0  # ∫ in flight dt over the measured part
    last = start
    targets: list[tuple[float, int]] = []

    def count_in_flight(delta: int) -> None:
        nonlocal in_flight, area, last
        if now > start:
            area += in_flight * (now - max(last, start))
            last = now
        in_flight += delta

    def transfer(link: _Queue, nbytes: float, bits_per_s: float, then: Callable[[], None]) -> None:
        done = link.serve(now, nbytes * 8 / bits_per_s)
        at(done + pipe.rtt_s / 2 + pipe.overhead_s, then)

    def run_cpu(edge_id: str) -> None:
        if cpu_busy[edge_id]:
            return
        if backwards[edge_id]:
            seq = backwards[edge_id].popleft()
            cpu_busy[edge_id] = True
            at(now + pipe.edge_backward_s, lambda: backward_done(edge_id, seq))
        elif policy.credits(edge_id) > 0:
            seq = next_seq[edge_id]
            next_seq[edge_id] += 1
            policy.on_send(edge_id, seq, now)
            sent_at[(edge_id, seq)] = now
            version_at[(edge_id, seq)] = applied
            count_in_flight(+1)
            cpu_busy[edge_id] = True
            at(now + pipe.edge_forward_s, lambda: forward_done(edge_id, seq))

    def forward_done(edge_id: str, seq: int) -> None:
        cpu_busy[edge_id] = False
        transfer(uplink[edge_id], pipe.act_bytes, pipe.up_bits_per_s, lambda: act(edge_id, seq))
        run_cpu(edge_id)

    def act(edge_id: str, seq: int) -> None:
        to_cloud(1, pipe.cloud_step_s, lambda: grad_out(edge_id, seq))

    def grad_out(edge_id: str, seq: int) -> None:
        if now > start:
            step_times.append(now)
        transfer(
            downlink[edge_id],
            pipe.grad_bytes,
            pipe.down_bits_per_s,
            lambda: grad_in(edge_id, seq),
        )

    def grad_in(edge_id: str, seq: int) -> None:
        backwards[edge_id].append(seq)
        run_cpu(edge_id)

    def backward_done(edge_id: str, seq: int) -> None:
        cpu_busy[edge_id] = False
        transfer(uplink[edge_id], pipe.egrad_bytes, pipe.up_bits_per_s, lambda: egrad(edge_id, seq))
        run_cpu(edge_id)

    def egrad(edge_id: str, seq: int) -> None:
        to_cloud(0 if egrad_first else 1, pipe.cloud_apply_s, lambda: applied_one(edge_id, seq))

    def applied_one(edge_id: str, seq: int) -> None:
        nonlocal applied
        if now > start:
            stale.append(applied - version_at[(edge_id, seq)])
        applied += 1
        transfer(downlink[edge_id], pipe.ack_bytes, pipe.down_bits_per_s, lambda: ack(edge_id, seq))

    def ack(edge_id: str, seq: int) -> None:
        nonlocal acked
        policy.on_ack(edge_id, seq, now)
        count_in_flight(-1)
        if now > start:
            acked += 1
            round_trips.append(now - sent_at[(edge_id, seq)])
        if isinstance(policy, FlowController) and (not targets or targets[-1][1] != policy.target):
            targets.append((now, policy.target))
        # Credits freed here may be any edge's (the fleet's room): the acking edge first,
        # then the others in turn.
        i = ids.index(edge_id)
        for other in ids[i:] + ids[:i]:
            run_cpu(other)

    for edge_id in ids:
        run_cpu(edge_id)
    while events and events[0].at <= seconds:
        event = heapq.heappop(events)
        now = event.at
        event.act()
    now = seconds
    count_in_flight(0)
    measured = seconds - start
    span = step_times[-1] - step_times[0] if len(step_times) > 1 else 0.0
    return SimResult(
        batches_per_s=(len(step_times) - 1) / span if span > 0 else 0.0,
        mean_in_flight=area / measured,
        mean_staleness=sum(stale) / len(stale) if stale else 0.0,
        round_trip_s=sum(round_trips) / len(round_trips) if round_trips else 0.0,
        acked=acked,
        target=policy.target if isinstance(policy, FlowController) else None,
        targets=targets,
    )
