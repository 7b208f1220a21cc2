"""Fleet flow control: in-flight credits sized to the pipe, re-estimated while running.

docs/FLEET.md, "Credits". A fixed window gets both cases wrong. One edge on 4G needs about
14 batches in flight to cover its batch → ACK round trip (docs/NETEM.md), four leave its
bottleneck idle; a fleet of 32 edges with four each keeps 128 in flight when the cloud, the
bottleneck, needs a handful — the rest only queue, and every queued batch is staleness for
the shared edge stage. What the pipe needs is Little's law on the bottleneck (the module
docstring of shared/training/window.py derives it from stage times):

    in flight = bottleneck rate × round trip without queueing  (+ a small margin)

Here it is *measured*, not computed from profiles, the way BBR sizes a TCP flow (Cardwell et
al., "BBR: Congestion-Based Congestion Control", ACM Queue 14(5), 2016; the delivery-rate
estimate of Cheng et al., IETF draft-cheng-iccrg-delivery-rate-estimation): every batch's
send → ACK time is a round-trip sample, the rate at which ACKs come back is a delivery-rate
sample; the fleet's target in flight is ``max rate × min round trip`` (the pipe's
bandwidth-delay product, in batches) plus ``margin``. It starts small, doubles each round
while the rate still grows (startup), drains the queue startup built, then keeps probing:
one round a quarter above the estimate (is there more rate?), one at the estimate without
the margin (what queued drains), six at the estimate. A minimum round trip not seen again for
``rtt_window_s`` is measured afresh with one batch in flight for a round (BBR's ProbeRTT): a
pipe that always holds a queue would otherwise take the queue for its length, and keep it.

The controller is sans-I/O: the caller tells it when a batch was sent and when its ACK came
(``now`` in seconds, any clock), and asks how many batches an edge may send now
(`FlowController.credits`). The total granted never exceeds the target, and an explicit
window is each edge's cap on top (`FlowController.on_send` refuses a batch beyond its
credit). The in-process driver has no clock; it runs a fleet with a fixed total
(``RunConfig.fleet_in_flight``) — what this controller settles at, found by running it
against a simulated pipe (shared/training/flowsim.py).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from simultrain.shared.errors import ConfigError, TrainingError

__all__ = ["FlowController", "FlowError", "FlowPhase", "SendState"]

# BBR's ProbeBW gain cycle: probe a quarter above, drain a quarter below, cruise six rounds.
# The drain round keeps at least the pipe itself (rounded up): BBR counts packets, a pipe here
# may be a batch or two, and three quarters of it would idle the bottleneck.
_CYCLE = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
_STARTUP_GROWTH = 1.25  # the rate grew by a quarter in a round: the pipe is not full yet
_FULL_AFTER = 3  # rounds without that growth before startup ends (BBR's "full pipe")


class FlowError(TrainingError):
    """A batch sent without a credit for it."""


class FlowPhase(StrEnum):
    STARTUP = "startup"  # the target doubles each round while the delivery rate grows
    DRAIN = "drain"  # the queue startup built drains: the target is the estimate itself
    PROBE = "probe"  # the gain cycle around the estimate
    # One batch in flight for a round, when the minimum round trip is older than its
    # window: a pipe that always holds a queue would otherwise measure its own queue as its
    # length, and keep it (BBR's ProbeRTT).
    PROBE_RTT = "probe_rtt"


@dataclass(frozen=True, slots=True)
class SendState:
    """The controller's deliveries when a batch went (BBR's per-packet state): its ACK's
    delivery-rate sample counts from here (`FlowController.send_state`)."""

    delivered: int  # batches delivered (ACKed) by then
    delivered_at: float  # when the last of those was delivered
    first_sent_at: float  # when the last of those had been sent
    idle: bool = False  # nothing was in flight: its round trip has no queue of this flow's


@dataclass(slots=True)
class _Sent:
    edge_id: str
    sent_at: float
    state: SendState
    rtt: bool  # whether its send → ACK time is a round-trip sample (`on_send`)


@dataclass(slots=True)
class _Edge:
    in_flight: dict[int, _Sent] = field(default_factory=dict)  # seq → record


class FlowController:
    """Fleet-wide in-flight credits (module docstring).

    ``per_edge_cap``: an explicit window, each edge's cap (None: the fleet's target alone).
    ``margin``: batches above the estimated bandwidth-delay product in the cruise rounds.
    ``initial``: the target before anything is measured. ``rtt_window_s``: how long a
    minimum round trip stays valid (BBR: 10 s); ``rate_rounds``: over how many rounds the
    maximum delivery rate is kept. ``max_in_flight`` bounds the target whatever is measured.
    """

    def __init__(
        self,
        *,
        per_edge_cap: int | None = None,
        margin: int = 2,
        initial: int = 2,
        rtt_window_s: float = 10.0,
        rate_rounds: int = 10,
        max_in_flight: int = 4096,
    ) -> None:
        if per_edge_cap is not None and per_edge_cap < 1:
            raise ConfigError(f"a per-edge cap is at least 1 batch, got {per_edge_cap}")
        if margin < 0 or initial < 1 or rate_rounds < 1 or max_in_flight < 1:
            raise ConfigError("margin ≥ 0, initial ≥ 1, rate_rounds ≥ 1, max_in_flight ≥ 1")
        if not (math.isfinite(rtt_window_s) and rtt_window_s > 0):
            raise ConfigError(f"rtt_window_s must be > 0, got {rtt_window_s}")
        self.per_edge_cap = per_edge_cap
        self.margin = margin
        self.rtt_window_s = rtt_window_s
        self.rate_rounds = rate_rounds
        self.max_in_flight = max_in_flight
        self.phase = FlowPhase.STARTUP
        self.target = min(initial, max_in_flight)
        self._edges: dict[str, _Edge] = {}
        self._in_flight = 0
        self.delivered = 0  # batches ACKed so far
        self._delivered_at = 0.0
        self._first_sent_at = 0.0  # the send time of the batch delivered last
        # Round counting (BBR): a round ends when a batch sent after it began is ACKed.
        self.round = 0
        self._round_end = 0  # delivered count at which the current round ends
        self._min_rtt: float | None = None
        self._min_rtt_at = 0.0  # when that minimum was seen
        # Whether it is the round trip of a batch sent alone (into an empty pipe): then it
        # carries no queue, and startup needs no ProbeRTT after it.
        self._min_alone = False
        self._probe_rtt_round: int | None = None  # the round ProbeRTT's one batch went in
        self._probe_min: float | None = None  # the shortest round trip ProbeRTT has seen
        self._probe_rtt_at: float | None = None  # when the last ProbeRTT ended
        self._rates: deque[tuple[int, float]] = deque()  # (round, max rate that round)
        self._full_rate = 0.0  # the rate startup last saw grow
        self._flat_rounds = 0
        self._cycle = 0

    # --- the estimate --------------------------------------------------------------------
    @property
    def min_rtt_s(self) -> float | None:
        """The shortest batch → ACK time seen within the last ``rtt_window_s``."""
        return self._min_rtt

    @property
    def max_rate(self) -> float | None:
        """Batches per second: the largest delivery rate of the last ``rate_rounds`` rounds."""
        return max((r for _, r in self._rates), default=None)

    @property
    def pipe(self) -> float | None:
        """The estimated bandwidth-delay product in batches: max rate × min round trip."""
        rtt, rate = self.min_rtt_s, self.max_rate
        return None if rtt is None or rate is None else rate * rtt

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def summary(self) -> dict[str, object]:
        pipe = self.pipe
        return {
            "phase": str(self.phase),
            "target": self.target,
            "in_flight": self._in_flight,
            "round": self.round,
            "min_rtt_s": self.min_rtt_s,
            "max_rate": self.max_rate,
            "pipe": None if pipe is None else round(pipe, 3),
        }

    # --- edges ---------------------------------------------------------------------------
    def add_edge(self, edge_id: str) -> None:
        self._edges.setdefault(edge_id, _Edge())

    def remove_edge(self, edge_id: str) -> None:
        """The edge left: its batches in flight no longer hold credits (it re-sends them)."""
        edge = self._edges.pop(edge_id, None)
        if edge is not None:
            self._in_flight -= len(edge.in_flight)

    def credits(self, edge_id: str) -> int:
        """How many more batches ``edge_id`` may send now.

        Its fair share of the target (the target over the edges, rounded up, so the shares
        cover it), capped by the per-edge window, less what it has in flight, and never more
        than the fleet's room: the sum of every edge's in flight stays within the target.
        """
        edge = self._edges.get(edge_id)
        if edge is None:
            return 0
        share = math.ceil(self.target / max(len(self._edges), 1))
        if self.per_edge_cap is not None:
            share = min(share, self.per_edge_cap)
        room = self.target - self._in_flight
        return max(0, min(share - len(edge.in_flight), room))

    # --- events --------------------------------------------------------------------------
    def send_state(self, now: float) -> SendState:
        """The deliveries so far, for a batch that goes at ``now`` (`on_send`'s ``state``)."""
        idle = not self._in_flight
        if idle:
            # An idle pipe: rates count from here (BBR's delivery-rate estimate).
            self._delivered_at = self._first_sent_at = now
        return SendState(self.delivered, self._delivered_at, self._first_sent_at, idle)

    def on_send(
        self,
        edge_id: str,
        seq: int,
        now: float,
        *,
        over_grant: bool = False,
        state: SendState | None = None,
        rtt: bool = True,
    ) -> None:
        """Batch ``seq`` of ``edge_id`` left at ``now``: it takes one of the edge's credits.

        ``over_grant``: count it even beyond the edge's credits, for a caller that learns of
        a batch after the fact — a cloud service reads an ACT the edge sent under a grant the
        target has shrunk below since, or an edge's one batch that every grant allows
        (PROTOCOL.md §6.7); the rate and round-trip samples are taken all the same.
        ``state``: `send_state` as it was at ``now``, for such a caller (None: as it is
        now). ``rtt`` False: the batch's send → ACK time is no round-trip sample (it waited
        behind others somewhere the caller knows of); its delivery-rate sample counts.
        """
        if edge_id not in self._edges:
            raise FlowError(f"{edge_id} sent batch {seq} but is not an edge of this fleet")
        if not over_grant and self.credits(edge_id) < 1:
            raise FlowError(
                f"{edge_id} sent batch {seq} without a credit (target {self.target}, "
                f"{self._in_flight} in flight)"
            )
        edge = self._edges[edge_id]
        if seq in edge.in_flight:
            raise FlowError(f"batch {seq} of {edge_id} is in flight already")
        if state is None:
            state = self.send_state(now)
        edge.in_flight[seq] = _Sent(edge_id, now, state, rtt)
        self._in_flight += 1

    def on_ack(self, edge_id: str, seq: int, now: float) -> None:
        """The ACK of ``seq`` came at ``now`` (cumulative: every batch of the edge up to it)."""
        edge = self._edges.get(edge_id)
        if edge is None:
            return
        for done in sorted(s for s in edge.in_flight if s <= seq):
            sent = edge.in_flight.pop(done)
            self._in_flight -= 1
            self.delivered += 1
            self._delivered_at = now
            self._first_sent_at = sent.sent_at
            self._sample(sent, now)

    # --- the estimate's update -----------------------------------------------------------
    def _sample(self, sent: _Sent, now: float) -> None:
        if sent.rtt:
            self._take_rtt(max(now - sent.sent_at, 0.0), now, sent.state.idle)
        if self.phase is FlowPhase.PROBE and self._probe_rtt_due(now):
            # One batch in flight until a batch sent alone comes back, so the queue drains
            # and the round trip shows.
            self.phase = FlowPhase.PROBE_RTT
            self._probe_rtt_round = None
            self._probe_min = None
            self.target = 1
        # The interval over which the batches delivered since this one was sent were both
        # sent and ACKed: the longer of the two, so ACKs that arrive in a burst do not
        # overstate the rate (the delivery-rate estimate's rule).
        state = sent.state
        interval = max(now - state.delivered_at, sent.sent_at - state.first_sent_at)
        if interval > 0:
            rate = (self.delivered - state.delivered) / interval
            if self._rates and self._rates[-1][0] == self.round:
                if rate > self._rates[-1][1]:
                    self._rates[-1] = (self.round, rate)
            else:
                self._rates.append((self.round, rate))
        if self.delivered >= self._round_end:
            self._next_round()

    def _take_rtt(self, rtt: float, now: float, alone: bool) -> None:
        if self.phase is FlowPhase.PROBE_RTT:
            # The round trips of this phase replace the old minimum when it ends.
            self._probe_min = rtt if self._probe_min is None else min(self._probe_min, rtt)
        elif self._min_rtt is None or rtt <= self._min_rtt:
            # A round trip shorter than one alone, of a batch that was not: the one alone
            # held something else (an edge starting up), and this one may hold a queue.
            # (Within 1 %, it is the same round trip.)
            old = self._min_rtt
            self._min_alone = alone or (old is not None and self._min_alone and rtt >= 0.99 * old)
            self._min_rtt, self._min_rtt_at = rtt, now
        elif now - self._min_rtt_at > self.rtt_window_s and self.phase is not FlowPhase.PROBE:
            # An old minimum outside the gain cycle (startup, drain) simply expires; in the
            # cycle ProbeRTT renews it.
            self._min_rtt, self._min_rtt_at, self._min_alone = rtt, now, alone

    def _probe_rtt_due(self, now: float) -> bool:
        """ProbeRTT is due once startup has drained, unless the minimum is the round trip of
        a batch sent alone (startup's other round trips carry its queue: a fleet whose
        edges each have a batch in flight from the start sends none alone); then whenever
        the minimum is older than ``rtt_window_s`` (BBR), and at the latest every
        ``rtt_window_s`` (BBRv2's periodic ProbeRTT): a pipe whose queue only shrinks slowly
        keeps finding minimums that are still mostly queue, and keeps them."""
        last = self._probe_rtt_at
        return now - self._min_rtt_at > self.rtt_window_s or (
            not self._min_alone if last is None else now - last > self.rtt_window_s
        )

    def _next_round(self) -> None:
        self.round += 1
        self._round_end = self.delivered + self._in_flight
        while self._rates and self._rates[0][0] <= self.round - self.rate_rounds:
            self._rates.popleft()
        pipe = self.pipe
        if pipe is None:
            return
        if self.phase is FlowPhase.PROBE_RTT:
            if self._probe_rtt_round is None:
                if self._in_flight <= 1:
                    self._probe_rtt_round = self.round  # what is sent now goes alone
                return
            if self.round <= self._probe_rtt_round:
                return
            self.phase = FlowPhase.PROBE
            self._cycle = 0
            self._probe_rtt_at = self._delivered_at
            if self._probe_min is not None:
                self._min_rtt, self._min_alone = self._probe_min, True
            # Renewed either way: with no round-trip sample this round (every batch waited
            # behind another) the old minimum stays, as if seen again — else ProbeRTT would
            # come straight back.
            self._min_rtt_at = self._delivered_at
            pipe = self.pipe
            assert pipe is not None
        if self.phase is FlowPhase.STARTUP:
            rate = self.max_rate or 0.0
            if rate >= self._full_rate * _STARTUP_GROWTH:
                self._full_rate = rate
                self._flat_rounds = 0
            else:
                self._flat_rounds += 1
            if self._flat_rounds >= _FULL_AFTER:
                self.phase = FlowPhase.DRAIN
            else:
                self._set(max(self.target, math.ceil(2.0 * pipe)) + self.margin)
                return
        if self.phase is FlowPhase.DRAIN:
            self._set(max(1, math.floor(pipe)))
            if self._in_flight <= pipe:
                self.phase = FlowPhase.PROBE
                self._cycle = 0
            return
        gain = _CYCLE[self._cycle % len(_CYCLE)]
        self._cycle += 1
        if gain < 1.0:
            # The pipe and no margin: what the probe round queued drains, and a short pipe
            # (a batch or two) is not left idle for a round.
            self._set(max(math.ceil(gain * pipe), math.ceil(pipe - 1e-9)))
        else:
            self._set(math.ceil(gain * pipe) + self.margin)

    def _set(self, target: int) -> None:
        self.target = max(1, min(target, self.max_in_flight))
