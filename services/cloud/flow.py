"""In-flight credits in the cloud service (PROTOCOL.md §6.7; docs/FLEET.md, "Credits").

A cloud whose run grants credits (``window = auto``, or ``fleet_in_flight``) tells each edge
that speaks capability ``credits`` how many batches it may have in flight: its first grant in
WELCOME, the grant in force in every ACK. With ``window = auto`` one
:class:`~simultrain.shared.training.flow.FlowController` per cloud sizes the fleet's total the
way BBR sizes a TCP flow; with ``fleet_in_flight`` the total is that fixed number
(:class:`~simultrain.shared.training.fleet.Credits`, the in-process driver's). An explicit
window stays each edge's cap either way. Edges that do not speak the capability keep the
window WELCOME gives them and are not counted here.

**What is measured.** The controller wants each batch's round trip, and the cloud cannot see
when the edge sent an ACT. It takes, for each batch, the time the cloud sent the frame that
carried the credit the batch used (WELCOME or an ACK) → the time the cloud applied the batch
(its ACK is made then, whether it goes then or is held). Credits are used in the order they
were issued — the n-th ACT of a session uses the n-th credit slot — so that time is known
for every batch: it is the whole control loop a credit goes round (downlink, the edge's
forward, uplink, the cloud's step and the edge's backward and EGRAD), which is what the in
flight must cover to keep the pipe busy. A credit issued while its edge still held an unused
one waits behind that one's batch at the edge: its time is the loop plus that queue, so only
a credit issued to an edge holding none gives a round-trip sample. (Taking every credit's
time let the queue feed itself: an edge-bound pipe, one edge on emulated 4G, measured a
205 ms loop where a batch alone takes about 100, and settled at twice the batches in flight
it needed; docs/FLEET.md, "Credits".) The delivery-rate sample of a batch counts from what
was delivered when its credit was issued, over the whole loop, as BBR's counts from a
packet's send: counted from the ACT's arrival it spanned a few applies, and the maximum
filter kept their bursts (a third above the real rate there).

**Zero grants.** The wire's grant is at least one batch (PROTOCOL.md §6.7), so a fleet of E
edges that each keep their one would hold E batches in flight whatever the pipe needs: 32
edges on a cloud that needs a handful make every batch miss the updates of the 31 others.
Instead, an ACK that would leave its edge with nothing in flight when the others hold the
fleet's whole total is held (`CloudFlow.room_for`, `Pacer`): the edge waits with its batch
applied, holding no credit, and its ACK goes when a credit frees up — to the slowest waiting
edge first, so the edges take turns — right behind a DELTA that brings the edge's replica to
the master of then. The fleet's in flight follows the total down to one batch (the
controller's ProbeRTT drains to one), and a batch misses the updates of about the total's
batches, not the fleet's. A credit counts while its edge has a batch the cloud has not
applied, or a grant it has not used and has sent an ACT or got a grant within ``idle_s``
(an edge whose data paused holds none).

**The replica.** Right behind each ACK that carries a grant, in the same step's frames, the
service sends the DELTA of `CloudRuntime.grant` (:func:`with_replica_refresh`, on the
compute thread), so the batches the grant lets go are computed at the current master, not
only at the edge's own updates (with one edge in session there are no others': none is
sent). An ACK that was held goes behind a DELTA of its own, made when it goes (the service's
``_release``): the one behind its step is as old as the hold.

**Pacing.** With ``pace_lead`` set, :class:`Pacer` keeps the fleet's edges within that many
acknowledged batches of the slowest edge in session: the ACKs of an edge further ahead are
held, in order, until the slowest catches up, and the held edge waits with its window (or
grant) full. Its batches are applied at once; only their acknowledgement waits. An edge whose
process gets less CPU, or a slower device, otherwise falls behind the others a little every
round trip, and at the end of a run the cloud learns from the laggards' data alone (one or two
edges' labels), which a pooled stream never does (docs/FLEET.md, "Pacing").

Everything here runs on the event loop except :func:`with_replica_refresh`; it keeps no
timers and does no I/O.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

from simultrain.shared.contracts import CreditsStatus, PacingStatus
from simultrain.shared.protocol import CREDITS, Ack, ConfigValue
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.fleet import Credits
from simultrain.shared.training.flow import FlowController, SendState
from simultrain.shared.training.runtime import CloudRuntime, Outgoing
from simultrain.shared.training.schedule import EdgeRole, Schedule

from .metrics import json_float

__all__ = ["AUTO_MAX_IN_FLIGHT", "CloudFlow", "Pacer", "with_replica_refresh"]

C = TypeVar("C")

# The most batches one edge may have in flight with ``window = auto``: the window WELCOME
# grants a credits session (the cloud's hard bound, PROTOCOL.md §6.7) and the controller's
# ceiling. Emulated 4G with a Pi-class edge settles at about 15 (docs/FLEET.md).
AUTO_MAX_IN_FLIGHT = 64

# Roles whose edges send ACTs that an ACK answers: the ones a window bounds.
_PIPELINED = frozenset({EdgeRole.SPLIT, EdgeRole.RAW, EdgeRole.SYNTHETIC})


@dataclass(frozen=True, slots=True)
class _Slot:
    """A credit the cloud issued and the edge has not used yet (no ACT has come for it)."""

    issued_at: float
    state: SendState | None  # the controller's deliveries then (None: no controller)
    # Whether the edge held no other unused credit then: its batch waits behind none at the
    # edge, so credit → apply is a round-trip sample (module docstring, "What is measured").
    first: bool


@dataclass(slots=True)
class _EdgeCredits:
    """One credits session: its batches in flight and when each credit slot was issued."""

    in_flight: set[int] = field(default_factory=set)  # ACT seqs no ACK covers yet
    unapplied: set[int] = field(default_factory=set)  # ACT seqs not applied yet
    received: int = 0  # ACTs received in this session
    issued: int = 0  # credit slots issued: the ACTs the grants so far let the edge send
    slots: deque[_Slot] = field(default_factory=deque)  # the unused credits, oldest first
    grant: int = 0  # the grant last sent
    active_at: float = 0.0  # its last ACT, or the last grant sent to it
    waiting: bool = False  # its ACK is held for a credit (`CloudFlow.room_for`)

    def committed(self, now: float, idle_s: float) -> int:
        """The fleet's credits this edge holds: its batches the cloud has not applied, and
        the ones its grant still lets it send unless it has been silent for ``idle_s`` (an
        edge whose data paused, or that finished, holds none it does not use)."""
        unused = max(0, self.grant - len(self.in_flight))
        return len(self.unapplied) + (unused if now - self.active_at < idle_s else 0)


class CloudFlow:
    """The cloud's credits: one controller (or a fixed total) over every credits session."""

    def __init__(
        self,
        run: RunConfig,
        schedule: Schedule,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_in_flight: int = AUTO_MAX_IN_FLIGHT,
        idle_s: float = 5.0,
    ) -> None:
        self.clock = clock
        self.idle_s = idle_s
        # Lockstep schedules (window 0: split-sync, the round-based modes) keep one batch at
        # a time whatever the run's window says.
        self.enabled = (
            run.grants_credits and schedule.edge_role in _PIPELINED and schedule.window > 0
        )
        self.fixed: Credits | None = run.credits()
        cap = run.window_cap
        self.controller: FlowController | None = None
        if self.enabled and self.fixed is None:
            self.controller = FlowController(
                per_edge_cap=cap, max_in_flight=max_in_flight if cap is None else cap
            )
        # WELCOME's window for a credits session: the hard bound the cloud enforces.
        self.window = cap if cap is not None else max_in_flight
        if self.fixed is not None and cap is None:
            self.window = min(max_in_flight, self.fixed.total)
        self._edges: dict[str, _EdgeCredits] = {}
        self.most_in_flight = 0  # the largest fleet-wide in flight seen (status, tests)

    @property
    def edges(self) -> frozenset[str]:
        """The edges in a credits session now."""
        return frozenset(self._edges)

    @property
    def in_flight(self) -> int:
        """Batches in flight across the credits sessions, as the cloud has seen them."""
        return sum(len(e.in_flight) for e in self._edges.values())

    def grant_of(self, edge_id: str) -> int | None:
        """The grant last sent to ``edge_id``; None outside a credits session."""
        edge = self._edges.get(edge_id)
        return None if edge is None else edge.grant

    # --- sessions ------------------------------------------------------------------------

    def answers(self, edge_id: str, offered: Mapping[str, ConfigValue]) -> dict[str, ConfigValue]:
        """`grant_capabilities`' ``answers`` for a HELLO: the first grant, or None (not granted).

        Opens the edge's credits session when the offer is one this cloud grants (a new
        session of an edge replaces its old one: the edge re-sends what was in flight).
        """
        self.close(edge_id)
        if not self.enabled or offered.get(CREDITS) is not True:
            return {CREDITS: None}
        self._edges[edge_id] = _EdgeCredits()
        if self.controller is not None:
            self.controller.add_edge(edge_id)
        return {CREDITS: self._issue(edge_id, self.clock())}

    def close(self, edge_id: str) -> None:
        """The edge's session ended: its batches in flight hold no credits any more."""
        if self._edges.pop(edge_id, None) is not None and self.controller is not None:
            self.controller.remove_edge(edge_id)

    # --- frames --------------------------------------------------------------------------

    def on_act(self, edge_id: str, seq: int) -> None:
        """An ACT of a credits session arrived: it used the oldest credit slot issued."""
        edge = self._edges.get(edge_id)
        if edge is None or seq in edge.in_flight:
            return
        now = self.clock()
        slot = edge.slots.popleft() if edge.slots else None
        edge.received += 1
        edge.in_flight.add(seq)
        edge.unapplied.add(seq)
        edge.active_at = now
        if self.controller is not None:
            # Sent under a grant the target may have shrunk below since: counted all the same.
            # A batch with no credit slot (none is left) gives no round trip.
            self.controller.on_send(
                edge_id,
                seq,
                now if slot is None else slot.issued_at,
                over_grant=True,
                state=None if slot is None else slot.state,
                rtt=slot is not None and slot.first,
            )
        self.most_in_flight = max(self.most_in_flight, self.in_flight)

    def on_applied(self, edge_id: str, seq: int) -> None:
        """The cloud applied the batches of ``edge_id`` up to ``seq``: they leave the pipe,
        whenever their ACK goes (`Pacer` may hold it), and the controller takes its round-trip
        and delivery-rate samples now."""
        edge = self._edges.get(edge_id)
        if edge is None:
            return
        edge.unapplied = {s for s in edge.unapplied if s > seq}
        if self.controller is not None:
            self.controller.on_ack(edge_id, seq, self.clock())

    def room_for(self, edge_id: str, ack: Ack) -> int | None:
        """The credits the fleet's total has left for ``edge_id`` once ``ack`` goes, when it
        would leave the edge with nothing in flight; None while the edge still has batches
        in flight (or no credits session): the ACK needs no credit to go. With none left the
        ACK would carry a grant of none, which the wire cannot say (PROTOCOL.md §6.7): the
        cloud holds it until a credit frees up (module docstring, "Zero grants")."""
        edge = self._edges.get(edge_id)
        if edge is None or edge.unapplied or any(s > ack.seq for s in edge.in_flight):
            return None
        edge.waiting = True  # until it is granted: the others' grants leave it a credit
        return self._room(edge_id, self.clock())

    def on_ack(self, edge_id: str, ack: Ack) -> Ack:
        """An ACK going to ``edge_id``: the batches it covers are delivered, and it carries
        the edge's grant from now on (unchanged for an edge outside a credits session)."""
        edge = self._edges.get(edge_id)
        if edge is None:
            return ack
        edge.in_flight = {seq for seq in edge.in_flight if seq > ack.seq}
        return replace(ack, credits=self._issue(edge_id, self.clock()))

    @property
    def total(self) -> int:
        """The fleet's total in flight now: the controller's target, or the fixed total."""
        if self.controller is not None:
            return self.controller.target
        assert self.fixed is not None
        return self.fixed.total

    def committed_by(self, edge_id: str, now: float) -> int:
        """The fleet's credits ``edge_id`` holds now (`_EdgeCredits.committed`)."""
        return self._edges[edge_id].committed(now, self.idle_s)

    def _room(self, edge_id: str, now: float) -> int:
        """What the fleet's total leaves ``edge_id`` once the other edges' credits are
        counted (`_EdgeCredits.committed`)."""
        others = sum(
            e.committed(now, self.idle_s) for key, e in self._edges.items() if key != edge_id
        )
        return self.total - others

    def _issue(self, edge_id: str, now: float) -> int:
        """The edge's grant now, and the credit slots it opens, stamped ``now``: its fair
        share of the total (the explicit window caps it), within what the others leave."""
        edge = self._edges[edge_id]
        if self.controller is not None:
            share = math.ceil(self.total / max(len(self._edges), 1))
            if self.controller.per_edge_cap is not None:
                share = min(share, self.controller.per_edge_cap)
        else:
            assert self.fixed is not None
            share = self.fixed.per_edge_cap
        # At least one: a grant of none is an ACK held (`room_for`); WELCOME's first grant
        # is one whatever the fleet holds. Never above WELCOME's window.
        # Every other edge that waits for a credit keeps one back from this grant: an edge
        # that always has a batch in flight never needs one, and with grants above one its
        # ACKs would otherwise take every credit that frees up while the waiting edge starves.
        waiting = sum(1 for key, e in self._edges.items() if e.waiting and key != edge_id)
        grant = max(1, min(share, self._room(edge_id, now) - waiting, self.window))
        acked = edge.received - len(edge.in_flight)
        opens = acked + grant - edge.issued
        if opens > 0:
            # One moment for every slot it opens: the controller's deliveries now, and only
            # the first waits behind no other unused credit of the edge.
            state = None if self.controller is None else self.controller.send_state(now)
            first = not edge.slots
            for i in range(opens):
                edge.slots.append(_Slot(now, state, first and i == 0))
            edge.issued += opens
        edge.grant = grant
        edge.active_at = now
        edge.waiting = False
        return grant

    def status(self) -> CreditsStatus | None:
        """``GET /v1/status``'s ``credits``: None when this cloud grants none."""
        if not self.enabled:
            return None
        controller = self.controller
        pipe = None if controller is None else controller.pipe
        return CreditsStatus(
            policy="fixed" if self.fixed is not None else "auto",
            in_flight=self.in_flight,
            most_in_flight=self.most_in_flight,
            grants={edge_id: e.grant for edge_id, e in sorted(self._edges.items())},
            pipe=None if pipe is None else round(pipe, 3),
            min_rtt_s=None if controller is None else json_float(controller.min_rtt_s),
        )

    def summary(self) -> dict[str, object]:
        """The controller's estimate and the grants in force, for logs and tests."""
        return {
            "policy": "fixed" if self.fixed is not None else "auto",
            "grants": {edge_id: e.grant for edge_id, e in sorted(self._edges.items())},
            "in_flight": self.in_flight,
            "most_in_flight": self.most_in_flight,
            **({} if self.controller is None else {"controller": self.controller.summary()}),
        }


@dataclass(slots=True)
class _Held(Generic[C]):
    conn: C  # the connection the ACKs answer: sent there, or dropped with its session
    acks: list[Ack]


class Pacer(Generic[C]):
    """Holds the ACKs of an edge more than ``lead`` batches ahead of the slowest edge in
    session (module docstring, "Pacing"), and those that need a credit the fleet's total has
    not got (``room_for``: `CloudFlow.room_for`; a grant of none), or that one slower edge
    waits for: credits freed go to the slowest waiting edge first. ``lead`` None: no lead
    rule, and without ``room_for`` too none is ever held.

    An edge's progress counts the batches acknowledged to it since it joined, from the
    slowest edge's progress then: an edge that joins late, or comes back after a long
    absence, joins the fleet where it is (the others do not wait for it to redo their
    batches); within a session it moves with each ACK. The slowest edge is never held for
    the lead, so the fleet always moves. Only edges that sent an ACT within ``idle_s``, or
    whose ACKs are held, count:
    one whose data pauses (a camera at night) or that finished sets no pace, and an edge that
    leaves stops counting at once (what was held for it goes: its new session's WELCOME says
    what was applied). The caller asks `due` again ``idle_s`` after holding (`idle_s`), when
    an edge may have stopped counting."""

    def __init__(
        self,
        lead: int | None,
        *,
        room_for: Callable[[str, Ack], int | None] | None = None,
        idle_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lead = lead
        self.room_for = room_for
        self.idle_s = idle_s
        self.clock = clock
        self.progress: dict[str, int] = {}
        self._acked: dict[str, int] = {}  # batches acknowledged, by sequence number
        self._in_session: set[str] = set()
        self._last_act: dict[str, float] = {}
        self._held: dict[str, _Held[C]] = {}
        # Edges whose released ACKs are on their way (`due` → `sent`): their new ACKs queue
        # behind them.
        self._sending: dict[str, list[Ack]] = {}
        self.held_acks = 0  # ACKs held so far, for status and tests

    @property
    def active(self) -> bool:
        """Whether this pacer may hold an ACK at all."""
        return self.lead is not None or self.room_for is not None

    def open(self, edge_id: str, acked_seq: int | None) -> None:
        """A session of ``edge_id`` opened; ``acked_seq`` is its WELCOME's."""
        self._held.pop(edge_id, None)
        self._sending.pop(edge_id, None)
        self._in_session.discard(edge_id)
        level = self.slowest()
        self.progress[edge_id] = max(self.progress.get(edge_id, 0), level or 0)
        self._acked[edge_id] = max(
            self._acked.get(edge_id, 0), 0 if acked_seq is None else acked_seq + 1
        )
        self._in_session.add(edge_id)
        self._last_act[edge_id] = self.clock()

    def on_act(self, edge_id: str) -> None:
        """An ACT of ``edge_id`` came: it counts for the pace."""
        self._last_act[edge_id] = self.clock()

    def close(self, edge_id: str) -> None:
        self._in_session.discard(edge_id)
        self._held.pop(edge_id, None)
        self._sending.pop(edge_id, None)

    def slowest(self) -> int | None:
        """The progress of the slowest edge that counts (module docstring); None: none does."""
        since = self.clock() - self.idle_s
        return min(
            (
                self.progress[e]
                for e in self._in_session
                # One whose ACK the cloud holds is not idle: it waits for the cloud.
                if self._last_act[e] >= since or e in self._held or e in self._sending
            ),
            default=None,
        )

    def _ahead(self, edge_id: str, slowest: int | None) -> bool:
        return (
            self.lead is not None
            and slowest is not None
            and self.progress[edge_id] - slowest > self.lead
        )

    def _waits(self, edge_id: str, ack: Ack, slowest: int | None) -> bool:
        if self._ahead(edge_id, slowest):
            return True
        room = None if self.room_for is None else self.room_for(edge_id, ack)
        if room is None:
            return False
        # A free credit goes to the slowest edge that waits for one first (round robin).
        mine = self.progress[edge_id]
        return room < 1 or any(self.progress[e] < mine for e in self._held if e != edge_id)

    def hold(self, edge_id: str, conn: C, ack: Ack) -> bool:
        """Whether ``ack`` waits: its edge is more than ``lead`` ahead once it counts, or it
        needs a credit that is not free for it, or an earlier ACK of the edge waits (ACKs go
        in order, PROTOCOL.md §6.3)."""
        if not self.active or edge_id not in self._in_session:
            return False
        newly = ack.seq + 1 - self._acked[edge_id]
        if newly > 0:
            self._acked[edge_id] += newly
            self.progress[edge_id] += newly
        sending = self._sending.get(edge_id)
        if sending is not None:
            sending.append(ack)  # behind the released ones, which `sent` hands back
            return True
        held = self._held.get(edge_id)
        if held is None:
            if not self._waits(edge_id, ack, self.slowest()):
                return False
            held = self._held[edge_id] = _Held(conn, [])
        held.acks.append(ack)
        self.held_acks += 1
        return True

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def status(self) -> PacingStatus | None:
        """``GET /v1/status``'s ``pacing``: None when this cloud holds no ACK."""
        if not self.active:
            return None
        return PacingStatus(lead=self.lead, holding=sorted(self._held), held_acks=self.held_acks)

    def due(self) -> Iterator[tuple[str, C, list[Ack]]]:
        """The held ACKs that may go now, each edge's in order, the slowest edge first.

        Lazily: the caller sends what one edge is given (its grant takes a credit) before
        the next is looked at."""
        slowest = self.slowest()
        for edge_id in sorted(self._held, key=lambda e: (self.progress[e], e)):
            held = self._held.get(edge_id)
            if held is None or self._waits(edge_id, held.acks[-1], slowest):
                continue
            del self._held[edge_id]
            self._sending[edge_id] = []
            yield edge_id, held.conn, held.acks

    def sent(self, edge_id: str, conn: C) -> list[Ack]:
        """The caller sent to ``conn`` what `due` released for ``edge_id``: the ACKs its
        steps made meanwhile, to send next (when there are some, it calls again after sending
        them), unless the edge waits again by now (they are held then)."""
        meanwhile = self._sending.pop(edge_id, [])
        if not meanwhile:
            return []
        if self._waits(edge_id, meanwhile[-1], self.slowest()):
            self._held[edge_id] = _Held(conn, meanwhile)
            return []
        self._sending[edge_id] = []
        return meanwhile


def with_replica_refresh(
    runtime: CloudRuntime, outgoing: Iterable[Outgoing], edges: frozenset[str]
) -> list[Outgoing]:
    """``outgoing`` and, behind it, the DELTA of `CloudRuntime.grant` for each credits edge
    it acknowledges (module docstring): the batches the ACK's grant lets go are computed at
    the current master. Runs on the compute thread, after the step that made ``outgoing``.

    Behind every frame of the step, not ahead of its ACK: the runtime's DELTAs and SNAPs in
    ``outgoing`` moved the cloud's mirror of the replica in the order they are listed, and a
    DELTA computed now starts where the last of them left it (PROTOCOL.md §3.1).
    """
    frames = list(outgoing)
    if len(runtime.sessions) < 2:
        # One edge: every edge-stage update is its own batch's, which the step's own DELTA
        # carries already; what is left is the cloud-stage steps' version count, and a DELTA
        # of zeros per ACK would only cost the link and the edge's loop.
        return frames
    acked = {edge_id for edge_id, frame in frames if isinstance(frame, Ack)}
    for edge_id in sorted(acked & edges):
        if edge_id in runtime.sessions:
            frames.extend(runtime.grant(edge_id))
    return frames
