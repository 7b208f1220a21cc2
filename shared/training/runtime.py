"""Both sides of one training session as frame-in, frames-out objects (no I/O).

:class:`EdgeRuntime` and :class:`CloudRuntime` turn decoded protocol frames into the frames to
send back, doing the torch work of a training step (PROTOCOL.md §6.4) in between. The cloud
and edge services are loops between a socket and these objects; the in-process driver
connects them through the real encoder and decoder. What differs between modes — what the
edge computes and uploads, what the cloud does with it — is a *role*: one subclass of each
runtime per role (shared/training/roles/), chosen once, from the schedule's
:class:`~simultrain.shared.training.schedule.EdgeRole`, when the run is assembled
(shared/training/assembly.py). This module holds what every role shares: sessions, the
replica and its mirror, deltas, reconciliation, checksums, acknowledgements and resume.

Deltas (PROTOCOL.md §3.1). The cloud keeps, per session, a *mirror* of the edge's replica: the
exact tensors the edge holds, because it applies the same float32 operations on them. A delta
is always "master minus mirror", so

- with a lossless codec it travels as the bitwise XOR of the float32 patterns (exact, and lz4
  compresses it well because neighbouring versions share sign, exponent and high mantissa
  bits): the replica becomes the master bit for bit;
- with a lossy codec (fp16, int8, top-k) it travels as an arithmetic difference, and whatever
  the codec lost stays in "master minus mirror" and goes out with the next delta (error
  feedback), so codec error never accumulates.
A lost delta breaks the version chain; the edge then asks for a full resync.

Checksums (PROTOCOL.md §3.1). Every DELTA and SNAP carries the CRC-32 of the mirror it leaves
behind, i.e. of the replica the edge must hold once it has applied it. The edge checks what it
holds against it; a replica that differs by one bit (a delta applied on the wrong base, a
client rounding a reconciliation differently) stops producing and asks for a resync instead
of training on corrupted weights.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from simultrain.shared.data import BatchStream
from simultrain.shared.errors import DeltaGapError, TrainingError
from simultrain.shared.protocol import (
    Ack,
    Act,
    Delta,
    EGrad,
    Frame,
    Grad,
    Snap,
    replica_checksum,
)
from simultrain.shared.protocol.tensorcodec import Codec
from simultrain.shared.tensors import (
    LOSSLESS_CODECS,
    as_received,
    state_from_wire,
    state_to_wire,
    xor_apply,
    xor_delta,
)
from simultrain.shared.training.deltas import DeltaSequencer, GapStatus, VersionStep
from simultrain.shared.training.gradcoding import GradientCode
from simultrain.shared.training.master import CloudMaster, StalenessStats
from simultrain.shared.training.options import Codecs, OptimizerConfig
from simultrain.shared.training.schedule import Schedule
from simultrain.shared.training.weights import EdgeReplica, blend

log = logging.getLogger("simultrain.training")

__all__ = [
    "CloudRuntime",
    "CloudSessionState",
    "EdgeRuntime",
    "KeptBatch",
    "Outgoing",
    "checksum_of",
]


def checksum_of(tensors: Mapping[str, Tensor]) -> int:
    """The CRC-32 a DELTA or SNAP carries for a replica holding ``tensors`` (PROTOCOL §3.1)."""
    return replica_checksum({n: t.detach().cpu().numpy() for n, t in tensors.items()})


# --------------------------------------------------------------------------------------
# Cloud side
# --------------------------------------------------------------------------------------

Outgoing = tuple[str, Frame]
"""A frame and the edge it goes to: a FedAvg round answers every edge at once."""


@dataclass
class CloudSessionState:
    """What the cloud tracks for one edge (docs/DESIGN.md §3.4, §3.6, §7.1)."""

    edge_id: str
    reconcile_offset: int = 0
    mirror: dict[str, Tensor] = field(default_factory=dict)  # the edge's replica, exactly
    mirror_version: int = 0
    steps_applied: int = 0
    samples_received: int = 0
    samples_applied: int = 0
    highest_applied_seq: int = -1  # every update of batches up to here is applied
    highest_cloud_step_seq: int = -1  # cloud-stage updates applied up to here
    durable_seq: int = -1  # applied and in a checkpoint on disk
    duplicates: int = 0
    last_edge_version: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)  # seq → samples, ACT to EGRAD
    # Synthetic mode: a batch's EGRAD arrives just before its ACT and waits for it here.
    leading_egrads: dict[int, EGrad] = field(default_factory=dict)
    bytes_in: int = 0  # on the wire, across reconnects (the service counts them)
    bytes_out: int = 0
    # This edge's own gradients' staleness (docs/DESIGN.md §3.8); the master keeps the fleet's.
    staleness: StalenessStats = field(default_factory=StalenessStats)
    # Gradient coding: the row of the code (its partitions) this edge computes, and its coded
    # uploads that came after their round had decoded without them (dropped, answered).
    code_row: int | None = None
    late_dropped: int = 0

    def summary(self) -> dict[str, object]:
        return {
            "samples_received": self.samples_received,
            "samples_applied": self.samples_applied,
            "steps_applied": self.steps_applied,
            "highest_applied_seq": self.highest_applied_seq,
            "duplicates_dropped": self.duplicates,
            "last_edge_version": self.last_edge_version,
            "replica_version": self.mirror_version,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "staleness": self.staleness.summary(),
            "staleness_samples": self.staleness.in_samples(),
            "code_row": self.code_row,
            "late_uploads_dropped": self.late_dropped,
        }


class CloudRuntime:
    """The cloud's half: master updates and the frames each edge gets back.

    Every handler returns ``(edge_id, frame)`` pairs; callers send each frame to its edge.
    A role (shared/training/roles/) says which frames its edges send and what they do to the
    master: it overrides :meth:`on_act`, :meth:`_on_egrad` and what a replica holds.
    """

    def __init__(self, master: CloudMaster, schedule: Schedule, codecs: Codecs) -> None:
        self.master = master
        self.schedule = schedule
        self.codecs = codecs
        self.sessions: dict[str, CloudSessionState] = {}
        self.connected: set[str] = set()
        # With checkpoints, ACKs carry the durable watermark and edges keep batches above it.
        self.checkpointing = False
        # The gradient code a coded role decodes with (None: uncoded); HELLO names it.
        self.code: GradientCode | None = None
        # What the cloud's status reports of lockstep rounds, for every run (0 without them):
        # rounds a deadline closed without every edge, rounds decoded, and coded uploads
        # whose round had decoded without them (dropped, answered).
        self.partial_rounds = 0
        self.coded_rounds = 0
        self.late_uploads_dropped = 0

    # --- sessions -----------------------------------------------------------------------
    def open_session(
        self, edge_id: str, *, reconcile_offset: int = 0, code_row: int | None = None
    ) -> tuple[CloudSessionState, Snap]:
        """A new or resumed session starts from an exact copy of the master (PROTOCOL §6.2).

        With gradient coding the edge says which row of the code it computes (``code_row``,
        its shard index). Raises `TrainingError` for a row the role does not take.
        """
        self._admit(edge_id, code_row)
        state = self.sessions.get(edge_id)
        if state is None:
            state = CloudSessionState(edge_id, reconcile_offset=reconcile_offset)
            self.sessions[edge_id] = state
        state.code_row = code_row
        self.connected.add(edge_id)
        self.master.set_edges_in_session(len(self.connected))
        return state, self._resync(state)

    def _admit(self, edge_id: str, code_row: int | None) -> None:
        """Refuse a session the role cannot serve (an uncoded role: any code row)."""
        if code_row is not None:
            raise TrainingError(
                "this cloud runs no gradient code: an edge that codes its "
                "gradients would have them applied as plain ones"
            )

    def close_session(self, edge_id: str) -> list[Outgoing]:
        """The edge left; what only waited for it (a lockstep round) can go on now."""
        self.connected.discard(edge_id)
        self._left(edge_id)
        # A strategy that gathers one edge gradient per edge in session (``fleet-batch``)
        # may be complete with one fewer, and when the last edge leaves it steps.
        self.master.set_edges_in_session(len(self.connected))
        return self._fleet_changed()

    def _left(self, edge_id: str) -> None:
        """Forget what the role held of an edge that left."""

    def _fleet_changed(self) -> list[Outgoing]:
        """Frames due now that an edge left (a round that only waited for it)."""
        return []

    def replica_template(self) -> Mapping[str, Tensor]:
        """The tensors an edge replica holds (names, shapes, dtypes): what SNAPs carry."""
        return self._session_weights()

    def resync(self, edge_id: str) -> Snap:
        return self._resync(self.sessions[edge_id])

    def _resync(self, state: CloudSessionState) -> Snap:
        weights = self._replica_weights(state)
        state.mirror = {n: t.clone() for n, t in weights.items()}
        state.mirror_version = self.master.version
        return Snap(
            master_version=self.master.version,
            tensors=state_to_wire(weights, Codec.LZ4.value),
            reconcile=False,
            checksum=checksum_of(state.mirror),
        )

    def _session_weights(self) -> Mapping[str, Tensor]:
        """What an edge's replica should hold, on the CPU (where the per-session mirrors
        live, whatever device the master computes on): the master's edge stage, or where the
        compensation's replica position puts it (SpecTrain, PipeMare, a look-ahead). History
        entries are immutable snapshots: on the CPU, .cpu() returns them without a copy."""
        return {n: t.cpu() for n, t in self.master.edge_weights_for_replica().items()}

    def _replica_weights(self, state: CloudSessionState) -> Mapping[str, Tensor]:
        """What this edge's replica should hold: what every edge's holds, unless the role
        keeps one edge stage per edge (shared/training/roles/fleet.py)."""
        return self._session_weights()

    def grant(self, edge_id: str) -> list[Outgoing]:
        """What a credit grant carries to ``edge_id`` (docs/FLEET.md, "Credits"): the DELTA
        that brings its replica to the master, none when it is there already.

        With a window per edge a replica moves only when the edge's own batches are answered,
        so in a fleet of E edges each forward misses the E − 1 updates of the others even with
        one batch in flight each. A grant that refreshes the replica makes a batch's staleness
        the batches in flight fleet-wide, which the credits bound, whatever the fleet's size.
        """
        return [(edge_id, delta) for delta in self._deltas_for(self.sessions[edge_id])]

    # --- frames in ----------------------------------------------------------------------
    def on_act(self, edge_id: str, act: Act) -> list[Outgoing]:
        """An ACT (PROTOCOL §3): the roles whose edges send activations or raw batches."""
        raise TrainingError(f"ACT frames are not part of the {self.schedule.mode} schedule")

    def on_egrad(self, edge_id: str, egrad: EGrad) -> list[Outgoing]:
        """An EGRAD: one re-sent after a reconnect and applied before is dropped and counted
        (exactly once); any other goes to the role."""
        state = self.sessions[edge_id]
        if egrad.seq <= state.highest_applied_seq:
            state.duplicates += 1
            return []
        return self._on_egrad(state, egrad)

    def _on_egrad(self, state: CloudSessionState, egrad: EGrad) -> list[Outgoing]:
        raise TrainingError(f"EGRAD frames are not part of the {self.schedule.mode} schedule")

    # --- lockstep rounds (the roles that have them override) -----------------------------
    def round_due_in(self) -> float | None:
        """Seconds until the open round's deadline (≤ 0: due); None without one."""
        return None

    def close_round_if_due(self) -> list[Outgoing]:
        """Close the open round if its deadline passed (partial aggregation)."""
        return []

    # --- work held for a bounded wait (the roles that have it override) ------------------
    def step_waiting(self, *, force: bool = False) -> list[Outgoing]:
        """Work held back for a bounded wait whose bound has passed — a mixed step waiting
        for more edges (shared/training/roles/fleet.py) — or, ``force``, all of it now: the
        caller knows nothing else can arrive. Lockstep rounds keep their own deadline."""
        return []

    def settle(self) -> None:
        """Bring the master to the fleet's model before it is evaluated or saved (per-edge
        edge-stage copies: their mean); the master already is for every other role."""

    # --- what a checkpoint keeps (services/cloud/checkpoint.py) --------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Every optimizer whose state a checkpoint keeps: the master's, and the role's."""
        return self.master.optimizers()

    def role_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """What the role trains besides the master (tensors, metadata) for a checkpoint."""
        return {}, {}

    def load_role_state(self, meta: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> None:
        """The role's trained state back from a checkpoint (:meth:`role_state`)."""

    # --- updates and what goes back -----------------------------------------------------
    def _apply_edge_gradient(
        self,
        state: CloudSessionState,
        grads: Mapping[str, Tensor],
        edge_version: int,
        *,
        samples: int,
    ) -> None:
        """An edge gradient through the master (PROTOCOL §6.4), its staleness also counted
        for this edge (and, with per-edge momenta, ``dana``, stepped with its momentum)."""
        result = self.master.apply_edge_gradient(
            grads, edge_version, samples=samples, edge_id=state.edge_id
        )
        if result.applied:
            state.staleness.record(result.staleness, samples=result.staleness_samples)
        else:
            state.staleness.dropped += 1

    def _mark_applied(self, state: CloudSessionState, seq: int, samples: int) -> None:
        state.highest_applied_seq = max(state.highest_applied_seq, seq)
        state.steps_applied += 1
        state.samples_applied += samples

    def _after_update(self, state: CloudSessionState, seq: int) -> list[Outgoing]:
        """Bring the edge's replica up to the master, acknowledge, reconcile when due."""
        out: list[Outgoing] = [(state.edge_id, d) for d in self._deltas_for(state)]
        durable = state.durable_seq + 1 if self.checkpointing else None
        out.append(
            (state.edge_id, Ack(seq=seq, master_version=self.master.version, durable_until=durable))
        )
        if self.schedule.reconcile_due(state.steps_applied, state.reconcile_offset):
            out.append((state.edge_id, self._reconcile(state)))
        return out

    def _deltas_for(self, state: CloudSessionState) -> Iterator[Delta]:
        if state.mirror_version == self.master.version:
            return
        master = self._replica_weights(state)
        if self.codecs.delta in LOSSLESS_CODECS:
            payload = {n: xor_delta(master[n], state.mirror[n]) for n in master}
            state.mirror = {n: t.clone() for n, t in master.items()}
            kind = "xor"
            wire = state_to_wire(payload, self.codecs.delta)
        else:
            diff = {n: master[n] - state.mirror[n] for n in master}
            wire = state_to_wire(diff, self.codecs.delta, topk_ratio=self.codecs.topk_ratio)
            # Mirror what the edge will hold: the *decoded* (lossy) delta added on. What the
            # codec lost stays in master − mirror and goes out with the next delta.
            decoded = state_from_wire(as_received(wire))
            state.mirror = {n: state.mirror[n] + decoded[n] for n in master}
            kind = "add"
        delta = Delta(
            from_version=state.mirror_version,
            to_version=self.master.version,
            tensors=wire,
            kind=kind,
            checksum=checksum_of(state.mirror),
        )
        state.mirror_version = self.master.version
        yield delta

    def _reconcile(self, state: CloudSessionState) -> Snap:
        """Soft reconciliation (PROTOCOL §3, ``snap``): send the full master; mirror the
        edge's blend exactly."""
        master = self._session_weights()
        beta = self.schedule.beta
        state.mirror = {n: blend(state.mirror[n], master[n], beta) for n in master}
        state.mirror_version = self.master.version
        return Snap(
            master_version=self.master.version,
            tensors=state_to_wire(master, Codec.LZ4.value),
            reconcile=True,
            checksum=checksum_of(state.mirror),
        )


# --------------------------------------------------------------------------------------
# Edge side
# --------------------------------------------------------------------------------------


KeptBatch = tuple[np.ndarray, np.ndarray] | EGrad
"""A batch kept until it is durable: its data, or an upload frame (FedAvg, gradient coding)."""


class EdgeRuntime:
    """The edge's half: forwards, backwards, deltas, reconciliation, acknowledgements.

    ``module`` is what the role computes with; its own parameters are never used, only its
    computation (weights come from the cloud). A role (shared/training/roles/) says what one
    batch becomes (:meth:`_frame`) and what it does with the frames only it receives.
    """

    def __init__(
        self,
        module: nn.Module,
        schedule: Schedule,
        codecs: Codecs,
        *,
        optimizer: OptimizerConfig,
        verify_checksums: bool = True,
    ) -> None:
        self.schedule = schedule
        self.codecs = codecs
        self._module = module
        self._optimizer = optimizer
        self.replica: EdgeReplica | None = None
        self.unanswered: deque[int] = deque()
        self.pending_egrads: deque[EGrad] = deque()
        # Frames to send before the one `produce` returns (the synthetic role's EGRAD).
        self.leading: deque[EGrad] = deque()
        self.next_seq = 0
        self.losses: list[float] = []
        self.reconciliations = 0
        self.resyncs = 0
        self.highest_acked = -1
        # Every batch is kept until the cloud acknowledges applying it, and re-sent after a
        # reconnect (PROTOCOL §6.5: no sample lost). Upload roles keep their upload frame.
        self.unacked: dict[int, KeptBatch] = {}
        self.deltas: DeltaSequencer[Delta] = DeltaSequencer(0)
        self.batches_produced = 0  # new batches taken from the data (re-sends not counted)
        self.samples_produced = 0
        # PROTOCOL.md §3.1: a replica whose checksum differs from the cloud's is not trained
        # on; only a SNAP that replaces it (a resync) makes it usable again.
        self.verify_checksums = verify_checksums
        self.replica_corrupt = False
        self.checksum_failures = 0
        # The gradient code this edge encodes with and its row (a coded role; HELLO names them).
        self.code: GradientCode | None = None
        self.code_row: int | None = None
        self._init_role()

    def _init_role(self) -> None:
        """The state one role keeps beside what every role shares; roles override it."""

    # --- version and window -----------------------------------------------------------
    @property
    def version(self) -> int:
        return self.replica.version if self.replica is not None else -1

    @property
    def local_steps(self) -> int:
        """Edge-stage steps the edge took on its own (the synthetic role's local updates)."""
        return 0

    def can_produce(self, window: int | None = None) -> bool:
        """PROTOCOL §6.3: wait while ``max(window, 1)`` batches are in flight.

        A batch is in flight from its ACT until the ACK covering it, so window W means the
        forward of batch k misses at most the updates of batches k − W + 1 … k − 1; W = 0 and
        W = 1 are lockstep. A replica that failed its checksum produces nothing until a resync.
        ``window``: the session's own, where the cloud's credits size it (PROTOCOL.md §6.7);
        None: the schedule's.
        """
        bound = self.schedule.window if window is None else window
        return (
            self.replica is not None
            and not self.replica_corrupt
            and len(self.unanswered) < max(bound, 1)
        )

    # --- frames in --------------------------------------------------------------------
    def on_snap(self, snap: Snap) -> None:
        """A session's first copy of the master, a resync, or a soft reconciliation."""
        weights = state_from_wire(snap.tensors)
        if self.replica is None:
            self.replica = EdgeReplica(self._module, weights, snap.master_version)
        elif snap.reconcile:
            self.replica.reconcile(weights, self.schedule.beta, snap.master_version)
            self.reconciliations += 1
        else:
            self.replica.replace(weights, snap.master_version)
            self.resyncs += 1
            self.replica_corrupt = False
        # Deltas continue from the snapshot's version.
        self.deltas.reset(snap.master_version)
        self._verify(snap.checksum, f"SNAP v{snap.master_version}")
        self._after_snap(self.replica, snap)

    def on_delta(self, delta: Delta, *, now: float = 0.0) -> int:
        """docs/DESIGN.md §3.5: apply deltas in version order; returns how many were applied.

        Out-of-order deltas wait in the reorder buffer; :meth:`needs_resync` tells when a
        gap did not fill in time.
        """
        ready = self.deltas.offer(VersionStep(delta.from_version, delta.to_version), delta, now=now)
        for _, item in ready:
            self._apply_delta(item)
        return len(ready)

    def needs_resync(self, *, now: float) -> bool:
        """A delta gap that did not fill, or a replica that failed its checksum."""
        return self.replica_corrupt or self.deltas.status(now=now) is GapStatus.RESYNC

    def _verify(self, expected: int, what: str) -> None:
        if not self.verify_checksums or self.replica is None:
            return
        actual = checksum_of(self.replica.current.tensors)
        if actual != expected:
            self.checksum_failures += 1
            self.replica_corrupt = True
            log.warning(
                "replica checksum %08x after %s, the cloud's is %08x: asking for a resync",
                actual,
                what,
                expected,
            )

    def _apply_delta(self, delta: Delta) -> None:
        replica = self._require_replica()
        if delta.from_version != replica.version:
            raise DeltaGapError(
                f"delta {delta.from_version}→{delta.to_version} does not start at the "
                f"replica's version {replica.version}"
            )
        if delta.kind == "xor":
            patterns = state_from_wire(delta.tensors)
            current = replica.current.tensors
            replica.replace(
                {n: xor_apply(current[n], patterns[n]) for n in replica.names()},
                delta.to_version,
            )
        else:
            replica.add(state_from_wire(delta.tensors), delta.to_version)
        self._verify(delta.checksum, f"DELTA {delta.from_version}→{delta.to_version}")

    def _after_snap(self, replica: EdgeReplica, snap: Snap) -> None:
        """What the role does once a SNAP is in the replica."""

    def on_grad(self, grad: Grad) -> EGrad:
        """A cut gradient: only the roles whose edge stage waits for one take it."""
        raise TrainingError(f"GRAD frames are not part of the {self.schedule.mode} schedule")

    def on_ack(self, ack: Ack) -> None:
        """Cumulative: every batch up to ``ack.seq`` is applied."""
        self.highest_acked = max(self.highest_acked, ack.seq)
        while self.unanswered and self.unanswered[0] <= ack.seq:
            self.unanswered.popleft()
        self._after_ack()
        # Keep what is applied but not yet durable: a cloud that crashes resumes from its
        # checkpoint and needs those batches again (Ack.durable_until, PROTOCOL.md).
        until = ack.seq + 1 if ack.durable_until is None else ack.durable_until
        for seq in [s for s in self.unacked if s < until]:
            del self.unacked[seq]

    def _after_ack(self) -> None:
        """What the role does once the acknowledged batches are in the master."""

    def resume(self, acked_seq: int | None) -> list[tuple[int, KeptBatch]]:
        """After a reconnect: forget in-flight state; what must be sent again, in order.

        Graphs of batches in flight belong to the old session (their cut gradients will never
        come). The cloud's WELCOME says which batches it has fully applied, and it is the
        authority: a cloud that crashed and resumed from its checkpoint may have applied
        fewer than it had acknowledged before — those come again from what we kept.
        Applied is not durable: what the cloud applied stays kept (not re-sent) until an
        ACK's ``durable_until`` passes it, or a crash of the cloud right after this
        WELCOME would lose it.
        """
        self.highest_acked = -1 if acked_seq is None else acked_seq
        # PROTOCOL.md §6.5: new batches take numbers above acked_seq. Only an edge that kept
        # its identity but not its cursor (FedAvg's uploads are not stored) is behind it.
        self.next_seq = max(self.next_seq, self.highest_acked + 1)
        self.unanswered.clear()
        self.pending_egrads.clear()
        self.leading.clear()
        self._after_resume()
        return [(s, self.unacked[s]) for s in sorted(self.unacked) if s > self.highest_acked]

    def _after_resume(self) -> None:
        """What the role forgets of the old session."""

    # --- frames out -------------------------------------------------------------------
    def produce_next(
        self, stream: BatchStream, *, taken: Callable[[], None] | None = None
    ) -> Act | EGrad | None:
        """The frame of the next batch of ``stream`` (PROTOCOL §6.4, step 1), or None while a
        local round runs; ``taken`` is called once the batch has left the stream. The caller
        checks :meth:`can_produce` first."""
        x, y = next(stream)
        if taken is not None:
            taken()
        return self.produce(x, y)

    def produce(
        self, inputs: np.ndarray, labels: np.ndarray, *, seq: int | None = None
    ) -> Act | EGrad | None:
        """The frame for the batch ``(inputs, labels)``, or None while a local round runs.

        ``seq`` re-sends a batch kept from before a reconnect under its own number.
        """
        replica = self._require_replica()
        if seq is None:
            self.batches_produced += 1
            self.samples_produced += int(labels.shape[0])
            seq = self._number(inputs, labels)
        else:
            self.unanswered.append(seq)
        x = torch.from_numpy(np.ascontiguousarray(inputs))
        y = torch.from_numpy(np.ascontiguousarray(labels))
        return self._frame(replica, seq, x, y)

    def _number(self, inputs: np.ndarray, labels: np.ndarray) -> int | None:
        """A new batch's sequence number; the batch is kept until it is durable."""
        seq = self._take_seq()
        self.unacked[seq] = (inputs, labels)
        return seq

    def _frame(
        self, replica: EdgeReplica, seq: int | None, x: Tensor, y: Tensor
    ) -> Act | EGrad | None:
        """What the role sends for one batch."""
        raise NotImplementedError

    def resend(self, seq: int, kept: KeptBatch) -> Act | EGrad | None:
        """The frame that sends a kept batch again (after :meth:`resume`)."""
        if isinstance(kept, EGrad):
            self.unanswered.append(seq)
            return kept
        return self.produce(kept[0], kept[1], seq=seq)

    def _take_seq(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        self.unanswered.append(seq)
        return seq

    def _require_replica(self) -> EdgeReplica:
        if self.replica is None:
            raise TrainingError("no weights yet: the session has not received its first SNAP")
        return self.replica
