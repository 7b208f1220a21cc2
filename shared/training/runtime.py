"""Both sides of one training session as frame-in, frames-out objects (no I/O).

:class:`EdgeRuntime` and :class:`CloudRuntime` turn decoded protocol frames into the frames to
send back, doing the torch work of SPEC "One SimulTrain step" in between. The cloud and edge
services are loops between a socket and these objects; the in-process driver connects them
through the real encoder and decoder. What the edge computes is read off the
:class:`~simultrain.shared.training.schedule.Schedule` (its :class:`EdgeRole`), never off a
mode name.

Deltas (SPEC step 5). The cloud keeps, per session, a *mirror* of the edge's replica: the
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

import copy
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simultrain.shared.errors import ConfigError, DeltaGapError, TrainingError
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
    from_wire,
    state_from_wire,
    state_to_wire,
    to_wire,
    xor_apply,
    xor_delta,
)
from simultrain.shared.training.deltas import DeltaSequencer, GapStatus, VersionStep
from simultrain.shared.training.gradcoding import GradientCode, combine
from simultrain.shared.training.keys import Key
from simultrain.shared.training.master import (
    CloudMaster,
    OptimizerConfig,
    PreparedCloudStep,
    StalenessStats,
)
from simultrain.shared.training.schedule import WHOLE_MODEL_ROLES, EdgeRole, Schedule
from simultrain.shared.training.synthetic import (
    STAGE_PREFIX,
    LocalUpdates,
    SyntheticEdge,
    SyntheticGradientTrainer,
    predict_cut_grad,
    stage_grads,
)
from simultrain.shared.training.weights import EdgeReplica, StashedForward, blend

log = logging.getLogger("simultrain.training")

__all__ = [
    "CloudRuntime",
    "CloudSessionState",
    "Codecs",
    "EdgeRuntime",
    "Outgoing",
    "WholeModel",
    "checksum_of",
]


def checksum_of(tensors: Mapping[str, Tensor]) -> int:
    """The CRC-32 a DELTA or SNAP carries for a replica holding ``tensors`` (PROTOCOL §3.1)."""
    return replica_checksum({n: t.detach().cpu().numpy() for n, t in tensors.items()})


_CODECS = tuple(codec.value for codec in Codec)


@dataclass(frozen=True, slots=True)
class Codecs:
    """Which tensor codec each kind of payload travels with."""

    # Each field is a flat run configuration key ``<field>_codec`` (``topk_ratio`` itself).
    act: Annotated[str, Key("Codec for activations (edge → cloud).", choices=_CODECS)] = "lz4"
    grad: Annotated[str, Key("Codec for cut-layer gradients.", choices=_CODECS)] = "lz4"
    delta: Annotated[str, Key("Codec for weight deltas (cloud → edge).", choices=_CODECS)] = "lz4"
    egrad: Annotated[
        str, Key("Codec for edge-stage gradients (edge → cloud).", choices=_CODECS)
    ] = "lz4"
    topk_ratio: Annotated[float, Key("Share of entries topk keeps.", gt=0, le=1)] = 0.1


# --------------------------------------------------------------------------------------
# Cloud side
# --------------------------------------------------------------------------------------

Outgoing = tuple[str, Frame]
"""A frame and the edge it goes to: a FedAvg round answers every edge at once."""


@dataclass
class CloudSessionState:
    """What the cloud tracks for one edge (SPEC steps 4 and 6, issue 5's exactly-once)."""

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
    # This edge's own gradients' staleness (SPEC: τ per batch); the master keeps the fleet's.
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
            "code_row": self.code_row,
            "late_uploads_dropped": self.late_dropped,
        }


class CloudRuntime:
    """The cloud's half: master updates and the frames each edge gets back.

    Every handler returns ``(edge_id, frame)`` pairs; callers send each frame to its edge.
    """

    def __init__(
        self,
        master: CloudMaster,
        schedule: Schedule,
        codecs: Codecs,
        *,
        round_deadline_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        synthetic: SyntheticGradientTrainer | None = None,
        code: GradientCode | None = None,
    ) -> None:
        if round_deadline_s is not None and not round_deadline_s > 0:
            raise ConfigError(f"round_deadline_s must be > 0 or None, got {round_deadline_s}")
        if code is not None and (
            schedule.edge_role is not EdgeRole.FULL_GRADIENT or round_deadline_s is not None
        ):
            raise ConfigError("gradient coding runs syncsgd rounds, without a round deadline")
        self.master = master
        self.schedule = schedule
        self.codecs = codecs
        if (synthetic is None) != (schedule.edge_role is not EdgeRole.SYNTHETIC):
            raise TrainingError(
                "the synthetic schedule needs a synthetic-gradient trainer, and only it"
            )
        self.synthetic = synthetic  # seed 003's M (shared/training/synthetic.py)
        self.sessions: dict[str, CloudSessionState] = {}
        self.connected: set[str] = set()
        # With checkpoints, ACKs carry the durable watermark and edges keep batches above it.
        self.checkpointing = False
        self._round: dict[str, tuple[int, dict[str, Tensor], int]] = {}  # lockstep uploads
        # Straggler mitigation (RunConfig.round_deadline_s): a round closes this long after
        # it started (the previous round's close) with whoever reported; the caller asks
        # ``round_due_in`` and calls ``close_round_if_due`` then (the runtime keeps no
        # timers: it only reads ``clock``).
        self.round_deadline_s = round_deadline_s
        self._clock = clock
        self._round_opened_at: float | None = None
        self.partial_rounds = 0  # rounds the deadline closed without every connected edge
        # Gradient coding (seed 004; RunConfig.gradient_coding_s): the open round's coded
        # uploads by code row; the round is the master version they were all computed at.
        self.code = code
        self._coded: dict[int, tuple[str, int, dict[str, Tensor], int]] = {}
        self.coded_rounds = 0  # rounds decoded
        self.late_uploads_dropped = 0  # coded uploads whose round had decoded without them

    # --- sessions -----------------------------------------------------------------------
    def open_session(
        self, edge_id: str, *, reconcile_offset: int = 0, code_row: int | None = None
    ) -> tuple[CloudSessionState, Snap]:
        """A new or resumed session starts from an exact copy of the master (SPEC step 5).

        With gradient coding the edge says which row of the code it computes (``code_row``,
        its shard index); two connected edges cannot hold one row. Raises `TrainingError`
        for a row that does not fit the code, or for one given to an uncoded run.
        """
        self._check_code_row(edge_id, code_row)
        state = self.sessions.get(edge_id)
        if state is None:
            state = CloudSessionState(edge_id, reconcile_offset=reconcile_offset)
            self.sessions[edge_id] = state
        state.code_row = code_row
        self.connected.add(edge_id)
        self.master.set_edges_in_session(len(self.connected))
        return state, self._resync(state)

    def _check_code_row(self, edge_id: str, row: int | None) -> None:
        if self.code is None:
            if row is not None:
                raise TrainingError(
                    "this cloud runs no gradient code: an edge that codes its "
                    "gradients would have them applied as plain ones"
                )
            return
        if row is None or not 0 <= row < self.code.n:
            raise TrainingError(
                f"gradient coding ({self.code.identity}): the edge must name its code row "
                f"0 … {self.code.n - 1}, got {row}"
            )
        for other in self.connected - {edge_id}:
            if self.sessions[other].code_row == row:
                raise TrainingError(f"code row {row} is held by the connected edge {other}")

    def close_session(self, edge_id: str) -> list[Outgoing]:
        """The edge left; a FedAvg round that only waited for it can close now."""
        self.connected.discard(edge_id)
        self._round.pop(edge_id, None)
        # A fleet batch of edge gradients (``fleet-batch``) waits for one per edge in session:
        # with one fewer it may be complete now, and when the last edge leaves it steps.
        self.master.set_edges_in_session(len(self.connected))
        return self._maybe_close_round()

    def replica_template(self) -> Mapping[str, Tensor]:
        """The tensors an edge replica holds (names, shapes, dtypes): what SNAPs carry."""
        return self._session_weights()

    def resync(self, edge_id: str) -> Snap:
        return self._resync(self.sessions[edge_id])

    def _resync(self, state: CloudSessionState) -> Snap:
        weights = self._session_weights()
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
        live, whatever device the master computes on)."""
        if self.schedule.edge_role in WHOLE_MODEL_ROLES:
            return {n: t.detach().to("cpu", copy=True) for n, t in self.master.full_state().items()}
        if self.synthetic is not None:
            # The edge stage and M travel together in one replica (shared/training/synthetic.py).
            stage = self.master.edge_weights_for_replica()
            return {
                **{STAGE_PREFIX + n: t.cpu() for n, t in stage.items()},
                **self.synthetic.weights(),
            }
        # The master's edge stage, or its prediction at the time the edge's gradient will
        # land when the compensation predicts weights (SpecTrain / PipeMare). History entries
        # are immutable snapshots: on the CPU, .cpu() returns them without a copy.
        return {n: t.cpu() for n, t in self.master.edge_weights_for_replica().items()}

    # --- ACT: SPEC step 2 ---------------------------------------------------------------
    def on_act(self, edge_id: str, act: Act) -> list[Outgoing]:
        state = self.sessions[edge_id]
        role = self.schedule.edge_role
        if role not in (EdgeRole.RAW, EdgeRole.SPLIT, EdgeRole.SYNTHETIC):
            raise TrainingError(f"ACT frames are not part of the {self.schedule.mode} schedule")
        labels = from_wire(act.labels).long()
        batch = int(labels.shape[0])
        duplicate = act.seq <= state.highest_applied_seq
        # The frame is checked whole before any of it lands: an EGRAD piggybacked on an ACT
        # that must be refused is not applied either (a refused frame changes nothing). The
        # cloud-stage forward and backward do not read the edge stage, so computing them
        # before the EGRAD is applied changes no number.
        prepared = None
        if role is not EdgeRole.RAW and not duplicate:
            prepared = self.master.prepare_cloud_step(from_wire(act.activations), labels)
        out: list[Outgoing] = []
        if act.egrad is not None:
            out.extend(self.on_egrad(edge_id, act.egrad))
        state.last_edge_version = act.edge_version
        if duplicate:
            # Re-sent after a reconnect and applied before (exactly-once): drop and count. The
            # edge learns what is applied from WELCOME's acked_seq, so no ACK goes back.
            state.duplicates += 1
            return out
        if role is EdgeRole.RAW:
            state.samples_received += batch
            self.master.full_step(from_wire(act.activations), labels)
            self._mark_applied(state, act.seq, batch)
            return [*out, *self._after_update(state, act.seq)]
        assert prepared is not None
        if self.synthetic is not None:
            return [*out, *self._synthetic_step(state, act, prepared, labels)]
        # A batch re-sent after a reconnect may have had its cloud-stage update applied
        # already (its EGRAD was lost): compute its cut gradient again, apply nothing twice.
        first_time = act.seq > state.highest_cloud_step_seq
        result = self.master.commit_cloud_step(prepared, apply=first_time)
        if first_time:
            state.highest_cloud_step_seq = act.seq
            state.samples_received += batch
        else:
            state.duplicates += 1
        state.batch_sizes[act.seq] = batch
        grad = Grad(
            seq=act.seq,
            master_version=result.version,
            cut_grad=to_wire(result.cut_grad, self.codecs.grad, topk_ratio=self.codecs.topk_ratio),
            loss=result.loss,
        )
        return [*out, (edge_id, grad)]

    def _synthetic_step(
        self, state: CloudSessionState, act: Act, prepared: PreparedCloudStep, labels: Tensor
    ) -> list[Outgoing]:
        """Seed 003 on ACT k (with its EGRAD, which arrived just before): apply the edge
        gradient the edge took from M's synthetic cut gradient (forecast to the current
        master, SPEC step 4), commit the cloud-stage step, and train M on the true cut
        gradient. No GRAD goes back: M reaches the edge with the deltas, then the ACK."""
        assert self.synthetic is not None
        leading = state.leading_egrads.pop(act.seq, None)
        for seq in [s for s in state.leading_egrads if s < act.seq]:
            del state.leading_egrads[seq]
        batch = int(labels.shape[0])
        if leading is not None:
            # Checked (names, shapes, finiteness) before anything of this batch lands.
            self._apply_edge_gradient(
                state, state_from_wire(leading.grads), leading.edge_version, samples=batch
            )
        # A batch re-sent after a reconnect may have had its cloud-stage step applied already
        # (its EGRAD was lost): apply nothing twice.
        first_time = act.seq > state.highest_cloud_step_seq
        result = self.master.commit_cloud_step(prepared, apply=first_time)
        if first_time:
            device = self.master.device
            self.synthetic.train(
                from_wire(act.activations).to(device), labels.to(device), result.cut_grad
            )
            state.highest_cloud_step_seq = act.seq
            state.samples_received += batch
        else:
            state.duplicates += 1
        if leading is None:
            return []  # not applied whole: no ACK, the edge sends the batch again
        self._mark_applied(state, act.seq, batch)
        return self._after_update(state, act.seq)

    # --- EGRAD: SPEC step 4 -------------------------------------------------------------
    def on_egrad(self, edge_id: str, egrad: EGrad) -> list[Outgoing]:
        state = self.sessions[edge_id]
        if egrad.seq <= state.highest_applied_seq:
            state.duplicates += 1  # re-sent after a reconnect: applied already
            return []
        role = self.schedule.edge_role
        if role is EdgeRole.SYNTHETIC:
            # Seed 003: its ACT follows at once; the two are applied together there.
            if len(state.leading_egrads) > self.schedule.window:
                raise TrainingError("synthetic mode: EGRAD frames without their ACTs")
            state.leading_egrads[egrad.seq] = egrad
            return []
        tensors = state_from_wire(egrad.grads)
        if role is EdgeRole.SPLIT:
            samples = state.batch_sizes.pop(egrad.seq, 0)
            self._apply_edge_gradient(state, tensors, egrad.edge_version, samples=samples)
            # A gradient older than the history is dropped and counted inside the master;
            # the batch is answered all the same so the edge moves on (SPEC step 4).
            self._mark_applied(state, egrad.seq, samples)
            return self._after_update(state, egrad.seq)
        if role is EdgeRole.FULL_GRADIENT and self.code is not None:
            return self._coded_upload(state, egrad, tensors)
        if role in WHOLE_MODEL_ROLES:
            # Lockstep rounds (SPEC modes table: syncsgd waits for new weights every step,
            # fedavg for the round): checked now, so a bad upload never waits in a round.
            checked = (
                self.master.check_full_gradient(tensors)
                if role is EdgeRole.FULL_GRADIENT
                else self.master.check_full_weights(tensors)
            )
            state.samples_received += egrad.samples
            if self._round_opened_at is None:  # the first round starts with its first upload
                self._round_opened_at = self._clock()
            self._round[edge_id] = (egrad.seq, checked, egrad.samples)
            return self._maybe_close_round()
        raise TrainingError(f"EGRAD frames are not part of the {self.schedule.mode} schedule")

    def round_due_in(self) -> float | None:
        """Seconds until the open round's deadline (≤ 0: due); None without one."""
        if self.round_deadline_s is None or not self._round or self._round_opened_at is None:
            return None
        return self._round_opened_at + self.round_deadline_s - self._clock()

    def close_round_if_due(self) -> list[Outgoing]:
        """Partial aggregation, as Flower's and NVFlare's round timeouts do: a round past
        its deadline averages the uploads it has. A straggler's upload is not lost: it
        arrives later, joins the next round and is acknowledged with it."""
        due = self.round_due_in()
        if due is None or due > 0:
            return []
        partial = not self.connected <= set(self._round)
        out = self._maybe_close_round(force=True)
        self.partial_rounds += int(partial)
        return out

    def _maybe_close_round(self, *, force: bool = False) -> list[Outgoing]:
        """Lockstep round (fedavg, syncsgd): aggregate once every connected edge reported."""
        if not self._round or (not force and not self.connected <= set(self._round)):
            return []
        uploads = [(w, n) for _, w, n in self._round.values()]
        if self.schedule.edge_role is EdgeRole.LOCAL_STEPS:
            self.master.average_in(uploads)
        else:
            # Synchronous SGD: one step with the sample-weighted mean of the round's gradients.
            self.master.apply_full_gradient(
                _weighted_mean(uploads), samples=sum(n for _, n in uploads)
            )
        out: list[Outgoing] = []
        for edge_id, (seq, _, samples) in sorted(self._round.items()):
            state = self.sessions[edge_id]
            self._mark_applied(state, seq, samples)
            out.extend(self._after_update(state, seq))
        self._round.clear()
        # The next round starts now, when the edges get the new model: its deadline counts
        # from here, as a server's round timeout does, not from its first upload (which may
        # be a straggler's late one from the round before).
        self._round_opened_at = self._clock()
        return out

    # --- gradient coding (seed 004; Tandon et al. 2017) ---------------------------------
    def _coded_upload(
        self, state: CloudSessionState, egrad: EGrad, tensors: Mapping[str, Tensor]
    ) -> list[Outgoing]:
        """A coded gradient ``c_i = Σ_k B[i,k] g_k`` of the round at ``egrad.edge_version``.

        The round is the master version: every coded gradient of it was computed at those
        weights, on the round's batch of each partition. The first ``n − s`` decode the
        full gradient; one that comes after its round decoded is dropped (its partitions are
        in the master already) and answered, so its edge moves on to the current round.
        Round v always takes batch v of each partition, so a cloud that resumes from an older
        checkpoint redoes its lost rounds on the same batches: each applied once.
        """
        code = self.code
        assert code is not None and state.code_row is not None
        version = self.master.version
        per_partition, rest = divmod(egrad.samples, code.s + 1)
        if per_partition < 1 or rest:
            raise TrainingError(
                f"a coded gradient covers s + 1 = {code.s + 1} equal batches, not "
                f"{egrad.samples} samples"
            )
        checked = self.master.check_full_gradient(tensors)
        state.samples_received += egrad.samples
        if egrad.edge_version != version:
            # Late: its round decoded without it. (Above the master's version: kept by the
            # edge across a cloud that resumed from an older checkpoint; that round is done
            # again, at the same version with the same batches, so it is not lost either.)
            self.late_uploads_dropped += 1
            state.late_dropped += 1
            # Settled, not applied: acknowledged so the edge neither waits nor re-sends it.
            state.highest_applied_seq = max(state.highest_applied_seq, egrad.seq)
            return self._after_update(state, egrad.seq)
        if state.code_row in self._coded:
            state.duplicates += 1  # this row's gradient of this round is here already
            return []
        if self._coded:
            _, _, _, samples = next(iter(self._coded.values()))
            if samples != egrad.samples:
                raise TrainingError(
                    f"coded gradients of one round cover equal batches: {egrad.samples} "
                    f"samples against {samples}"
                )
        self._coded[state.code_row] = (state.edge_id, egrad.seq, checked, egrad.samples)
        if len(self._coded) < code.n - code.s:
            return []
        return self._decode_round()

    def _decode_round(self) -> list[Outgoing]:
        """``g = Σ_i a_i c_i`` over the arrivals (``aᵀB_F = 1ᵀ``), applied as the mean
        ``g / n`` of the ``n`` partition gradients: the step an uncoded round of ``n`` edges,
        one partition each, would take. ``n`` partition batches are applied, each once."""
        code = self.code
        assert code is not None
        a = code.decoding_vector(self._coded)
        rows = sorted(a)
        mean = combine([a[r] / code.n for r in rows], [self._coded[r][2] for r in rows])
        batch = self._coded[rows[0]][3] // (code.s + 1)
        self.master.apply_full_gradient(mean, samples=code.n * batch)
        self.coded_rounds += 1
        out: list[Outgoing] = []
        for row in rows:
            edge_id, seq, _, samples = self._coded[row]
            state = self.sessions[edge_id]
            self._mark_applied(state, seq, samples)
            out.extend(self._after_update(state, seq))
        self._coded.clear()
        return out

    def _apply_edge_gradient(
        self,
        state: CloudSessionState,
        grads: Mapping[str, Tensor],
        edge_version: int,
        *,
        samples: int,
    ) -> None:
        """SPEC step 4 through the master, with the staleness also counted for this edge
        (and, with per-edge momenta, ``dana``, stepped with this edge's momentum)."""
        result = self.master.apply_edge_gradient(
            grads, edge_version, samples=samples, edge_id=state.edge_id
        )
        if result.applied:
            state.staleness.record(result.staleness)
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
        if state.mirror_version == self.master.version or self.schedule.edge_role is EdgeRole.RAW:
            return
        master = self._session_weights()
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
        """SPEC step 6: send the full master; mirror the edge's blend exactly."""
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


def _weighted_mean(uploads: list[tuple[dict[str, Tensor], int]]) -> dict[str, Tensor]:
    """The sample-weighted mean of a round's gradients (equal weights if none has samples);
    one upload is used as it is, so one edge trains exactly as without rounds."""
    if len(uploads) == 1:
        return uploads[0][0]
    total = sum(n for _, n in uploads)
    weights = [n / total if total > 0 else 1 / len(uploads) for _, n in uploads]
    return dict(combine(weights, [g for g, _ in uploads]))


# --------------------------------------------------------------------------------------
# Edge side
# --------------------------------------------------------------------------------------


KeptBatch = tuple[np.ndarray, np.ndarray] | EGrad
"""A batch kept until it is durable: its data, or FedAvg's upload frame."""


class WholeModel(nn.Module):
    """Edge and cloud stages as one module with ``edge.*`` / ``cloud.*`` names.

    The whole-model baselines (syncsgd, fedavg) run this on the edge; the names match
    :meth:`CloudMaster.full_state`.
    """

    def __init__(self, edge: nn.Module, cloud: nn.Module) -> None:
        super().__init__()
        self.edge = edge
        self.cloud = cloud

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.cloud(self.edge(x))
        return out


class EdgeRuntime:
    """The edge's half: forwards, backwards from cut gradients, deltas, reconciliation.

    ``module`` is the edge stage, or a :class:`WholeModel` for the whole-model baselines; its
    own parameters are never used, only its computation (weights come from the cloud).
    """

    def __init__(
        self,
        module: nn.Module,
        schedule: Schedule,
        codecs: Codecs,
        *,
        optimizer: OptimizerConfig | None = None,
        verify_checksums: bool = True,
        code: GradientCode | None = None,
        code_row: int | None = None,
    ) -> None:
        if (code is None) != (code_row is None) or (
            code is not None and schedule.edge_role is not EdgeRole.FULL_GRADIENT
        ):
            raise ConfigError("a gradient-coded edge runs syncsgd and needs its code row")
        if code is not None and code_row is not None:
            code.partitions(code_row)  # a row of the code, or TrainingError
        self.code = code
        self.code_row = code_row
        self.schedule = schedule
        self.codecs = codecs
        self._module = module
        self._optimizer = optimizer or OptimizerConfig()
        self.replica: EdgeReplica | None = None
        self.in_flight: dict[int, StashedForward] = {}
        self.unanswered: deque[int] = deque()
        self.pending_egrads: deque[EGrad] = deque()
        # Frames to send before the one `produce` returns (the synthetic mode's EGRAD).
        self.leading: deque[EGrad] = deque()
        self.next_seq = 0
        self.losses: list[float] = []
        self.reconciliations = 0
        self.resyncs = 0
        self.highest_acked = -1
        self._local: _LocalRound | None = None
        # Every batch is kept until the cloud acknowledges applying it, and re-sent after a
        # reconnect (issue 5: no sample lost). FedAvg keeps its upload frame instead.
        self.unacked: dict[int, tuple[np.ndarray, np.ndarray] | EGrad] = {}
        self.deltas: DeltaSequencer[Delta] = DeltaSequencer(0)
        self.batches_produced = 0  # new batches taken from the data (re-sends not counted)
        self.samples_produced = 0
        # PROTOCOL.md §3.1: a replica whose checksum differs from the cloud's is not trained
        # on; only a SNAP that replaces it (a resync) makes it usable again.
        self.verify_checksums = verify_checksums
        self.replica_corrupt = False
        self.checksum_failures = 0
        # Synthetic mode: the edge's own local steps not yet in the master (seed 003); the
        # replica above stays the master's exact copy, the working weights are beside it.
        self.local_updates: LocalUpdates | None = None

    # --- version and window -----------------------------------------------------------
    @property
    def version(self) -> int:
        return self.replica.version if self.replica is not None else -1

    def can_produce(self) -> bool:
        """SPEC step 1: wait while ``max(window, 1)`` batches are in flight.

        A batch is in flight from its ACT until the ACK covering it (PROTOCOL.md §6.3), so
        window W means the forward of batch k misses at most the updates of batches
        k − W + 1 … k − 1; W = 0 and W = 1 are lockstep. A replica that failed its checksum
        produces nothing until a resync.
        """
        return (
            self.replica is not None
            and not self.replica_corrupt
            and len(self.unanswered) < max(self.schedule.window, 1)
        )

    # --- frames in --------------------------------------------------------------------
    def on_snap(self, snap: Snap) -> None:
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
        if self.schedule.local_step:
            # A reconciliation (after an ACK) blends in a master without the pending batches:
            # their local steps go on top of it. A resync starts a session whose unacknowledged
            # batches are sent again and take new steps: the old ones are dropped.
            if self.local_updates is None:
                self.local_updates = LocalUpdates(self._optimizer, self.replica.current)
            self.local_updates.include(
                self.replica.current, self.highest_acked, resync=not snap.reconcile
            )

    def on_delta(self, delta: Delta, *, now: float = 0.0) -> int:
        """SPEC step 5: apply deltas in version order; returns how many were applied.

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

    def on_grad(self, grad: Grad) -> EGrad:
        """SPEC step 3: backpropagate the cut gradient through the stashed graph."""
        stash = self.in_flight.pop(grad.seq, None)
        if stash is None:
            raise TrainingError(f"GRAD for batch {grad.seq}, which is not in flight")
        self.losses.append(grad.loss)
        grads = EdgeReplica.backward(stash, from_wire(grad.cut_grad))
        return EGrad(
            seq=grad.seq,
            edge_version=stash.version,
            grads=state_to_wire(grads, self.codecs.egrad, topk_ratio=self.codecs.topk_ratio),
        )

    def on_ack(self, ack: Ack) -> None:
        """Cumulative: every batch up to ``ack.seq`` is applied."""
        self.highest_acked = max(self.highest_acked, ack.seq)
        while self.unanswered and self.unanswered[0] <= ack.seq:
            self.unanswered.popleft()
        if self.local_updates is not None and self.replica is not None:
            # The DELTA just before this ACK holds the master's own application of these
            # batches' gradients: their local steps are done.
            self.local_updates.include(self.replica.current, self.highest_acked)
        # Keep what is applied but not yet durable: a cloud that crashes resumes from its
        # checkpoint and needs those batches again (Ack.durable_until, PROTOCOL.md).
        until = ack.seq + 1 if ack.durable_until is None else ack.durable_until
        for seq in [s for s in self.unacked if s < until]:
            del self.unacked[seq]

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
        self.in_flight.clear()
        self.unanswered.clear()
        self.pending_egrads.clear()
        self.leading.clear()
        if self.local_updates is not None and self.replica is not None:
            self.local_updates.include(self.replica.current, self.highest_acked, resync=True)
        return [(s, self.unacked[s]) for s in sorted(self.unacked) if s > self.highest_acked]

    # --- frames out -------------------------------------------------------------------
    def produce(
        self, inputs: np.ndarray, labels: np.ndarray, *, seq: int | None = None
    ) -> Act | EGrad | None:
        """The frame for the next batch (SPEC step 1), or None while a local round runs.

        ``seq`` re-sends a batch kept from before a reconnect under its own number. The
        caller checks :meth:`can_produce` first.
        """
        replica = self._require_replica()
        if seq is None:
            self.batches_produced += 1
            self.samples_produced += int(labels.shape[0])
        if seq is None and self.schedule.edge_role is not EdgeRole.LOCAL_STEPS:
            seq = self._take_seq()
            self.unacked[seq] = (inputs, labels)
        elif seq is not None:
            self.unanswered.append(seq)
        x = torch.from_numpy(np.ascontiguousarray(inputs))
        y = torch.from_numpy(np.ascontiguousarray(labels))
        role = self.schedule.edge_role
        if role is EdgeRole.LOCAL_STEPS:
            return self._local_step(replica, x, y)
        assert seq is not None
        if role is EdgeRole.SYNTHETIC:
            return self._synthetic_step(replica, seq, x, y)
        if role is EdgeRole.FULL_GRADIENT:
            return EGrad(
                seq=seq,
                edge_version=replica.version,
                grads=state_to_wire(
                    self._full_gradient(replica, seq, x, y),
                    self.codecs.egrad,
                    topk_ratio=self.codecs.topk_ratio,
                ),
                samples=int(y.shape[0]),
            )
        if role is EdgeRole.RAW:
            payload = to_wire(x, self.codecs.act)
        else:
            stash = replica.forward(seq, x)
            self.in_flight[seq] = stash
            payload = to_wire(
                stash.activations.detach(), self.codecs.act, topk_ratio=self.codecs.topk_ratio
            )
        egrad = self.pending_egrads.popleft() if self.pending_egrads else None
        return Act(
            seq=seq,
            edge_version=replica.version,
            activations=payload,
            labels=to_wire(y, Codec.RAW.value),
            egrad=egrad,
        )

    def _full_gradient(
        self, replica: EdgeReplica, seq: int, x: Tensor, y: Tensor
    ) -> dict[str, Tensor]:
        """syncsgd: the whole model's gradient of the mean loss of one batch."""
        stash = replica.forward(seq, x)
        loss = F.cross_entropy(stash.activations, y)
        self.losses.append(float(loss.detach()))
        logit_grad = torch.autograd.grad(loss, stash.activations, retain_graph=True)[0]
        return EdgeReplica.backward(stash, logit_grad)

    def round_partitions(self) -> tuple[int, ...]:
        """Gradient coding: the partitions this edge computes each round (``s + 1``)."""
        if self.code is None or self.code_row is None:
            raise TrainingError("this edge codes no gradients")
        return self.code.partitions(self.code_row)

    def produce_coded(self, batches: Mapping[int, tuple[np.ndarray, np.ndarray]]) -> EGrad:
        """Gradient coding (seed 004): the coded gradient ``Σ_k B[i,k] g_k`` of this round.

        ``batches`` holds the round's batch of each of :meth:`round_partitions` — the batch
        every edge holding that partition takes at this master version, so the cloud's
        decode is the gradient of one well-defined set of ``n`` batches. The upload is kept
        as a frame (not as data): a lost one is a straggler, which the code tolerates.
        """
        replica = self._require_replica()
        assert self.code is not None and self.code_row is not None
        wanted = self.round_partitions()
        if sorted(batches) != sorted(wanted):
            raise TrainingError(f"a coded round needs the batches of partitions {list(wanted)}")
        seq = self._take_seq()
        partial = {}
        samples = 0
        for k in wanted:
            x = torch.from_numpy(np.ascontiguousarray(batches[k][0]))
            y = torch.from_numpy(np.ascontiguousarray(batches[k][1]))
            partial[k] = self._full_gradient(replica, seq, x, y)
            samples += int(y.shape[0])
        coded = self.code.encode(self.code_row, partial)
        self.batches_produced += 1
        self.samples_produced += samples
        upload = EGrad(
            seq=seq,
            edge_version=replica.version,
            grads=state_to_wire(coded, self.codecs.egrad, topk_ratio=self.codecs.topk_ratio),
            samples=samples,
        )
        self.unacked[seq] = upload
        return upload

    def _synthetic_step(self, replica: EdgeReplica, seq: int, x: Tensor, y: Tensor) -> Act:
        """Seed 003: forward, backward from M's synthetic cut gradient at once, and send the
        activations with that gradient; nothing stays in flight waiting for a GRAD.

        With local steps the forward runs at the working weights (the replica plus the
        pending local steps) and this batch's own step joins them at once, so the next
        batch is computed with it."""
        module = self._module
        if not isinstance(module, SyntheticEdge):
            raise TrainingError("the synthetic schedule runs a SyntheticEdge module")
        local = self.local_updates
        working = local.working() if local is not None else None
        stash = replica.forward(seq, x, weights=working.weights if working is not None else None)
        cut_grad = predict_cut_grad(module.synthetic, stash.weights.tensors, stash.activations, y)
        all_grads = EdgeReplica.backward(stash, cut_grad)
        if local is not None and working is not None:
            local.step(
                seq, working, {n: g for n, g in all_grads.items() if n.startswith(STAGE_PREFIX)}
            )
        grads = stage_grads(all_grads)
        # The protocol piggybacks only earlier batches' EGRADs on an ACT, and refuses an EGRAD
        # after its own ACT until a GRAD answered it (none will): so it goes alone, just
        # before its ACT (`leading`), and the cloud applies the two together.
        self.leading.append(
            EGrad(
                seq=seq,
                edge_version=stash.version,
                grads=state_to_wire(grads, self.codecs.egrad, topk_ratio=self.codecs.topk_ratio),
            )
        )
        return Act(
            seq=seq,
            edge_version=stash.version,
            activations=to_wire(
                stash.activations.detach(), self.codecs.act, topk_ratio=self.codecs.topk_ratio
            ),
            labels=to_wire(y, Codec.RAW.value),
        )

    def _take_seq(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        self.unanswered.append(seq)
        return seq

    def _local_step(self, replica: EdgeReplica, x: Tensor, y: Tensor) -> EGrad | None:
        """FedAvg: E local optimizer steps from the replica, then upload the local model."""
        if self._local is None or self._local.base_version != replica.version:
            self._local = _LocalRound(self._module, replica, self._optimizer)
        loss = self._local.step(x, y)
        self.losses.append(loss)
        if self._local.steps < self.schedule.local_steps:
            return None
        local, self._local = self._local, None
        upload = EGrad(
            seq=self._take_seq(),
            edge_version=replica.version,
            grads=state_to_wire(local.weights(), Codec.LZ4.value),
            samples=local.samples,
        )
        self.unacked[upload.seq] = upload
        return upload

    def resend(self, seq: int, kept: tuple[np.ndarray, np.ndarray] | EGrad) -> Act | EGrad | None:
        """The frame that sends a kept batch again (after :meth:`resume`)."""
        if isinstance(kept, EGrad):
            self.unanswered.append(seq)
            return kept
        return self.produce(kept[0], kept[1], seq=seq)

    def _require_replica(self) -> EdgeReplica:
        if self.replica is None:
            raise TrainingError("no weights yet: the session has not received its first SNAP")
        return self.replica


class _LocalRound:
    """One FedAvg round on the edge: a private copy of the model and a fresh optimizer."""

    def __init__(self, module: nn.Module, replica: EdgeReplica, optimizer: OptimizerConfig) -> None:
        self.base_version = replica.version
        self.model = copy.deepcopy(module)
        self.model.load_state_dict({n: t.detach() for n, t in replica.current.tensors.items()})
        self.opt = optimizer.build(list(self.model.parameters()), stage="full")
        self.steps = 0
        self.samples = 0

    def step(self, x: Tensor, y: Tensor) -> float:
        loss = F.cross_entropy(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.steps += 1
        self.samples += int(y.shape[0])
        return float(loss.detach())

    def weights(self) -> dict[str, Tensor]:
        return {n: t.detach().clone() for n, t in self.model.state_dict().items()}
