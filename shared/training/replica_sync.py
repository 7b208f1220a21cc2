"""The arithmetic that keeps several cloud replicas' masters one model (docs/REPLICAS.md).

Each replica applies its own edges' updates at once (docs/DESIGN.md §8.4: the cloud applies
updates immediately); every K updates or T seconds the replicas combine what each of them
changed since the last round — the intermediate tier of Tang et al.'s (2024) hierarchy (workers →
edge nodes → master), with the combination taken by a collective instead of a master
process.

Round r at replica i, snapshot at t0 on its compute thread::

    d_i = w_i(t0) − b        b: the model the replicas agreed on at round r − 1
    n_i = v_i(t0) − m        m: the global version of b

The replicas all-reduce (sum) ``[d_i, n_i, e_i, a_i]`` (e_i: edge-stage updates among the
n_i; a_i: 1 when n_i > 0). The round's step is the **mean** of the deltas over the A
replicas that contributed, ``Δ = D / A`` (``merge="mean"``, the default), or their sum
``Δ = D`` (``merge="sum"``). The merge, again on the compute thread at some t1 ≥ t0::

    w_i ← w_i + (Δ − d_i)    v_i ← v_i + (N − n_i)    b ← b + Δ    m ← m + N

so every update any replica applied lands in every replica, each with the same weight
(1/A, or 1 for the sum), none twice; updates applied between t0 and t1 stay, and go out
with the next round.

Why the mean. The replicas' deltas are steps taken in parallel from the same ``b``, each
without the others' steps — local SGD (Stich 2019; Lin et al. 2020) and FedAvg (McMahan et
al. 2017), which average them. Summing them is Downpour SGD's push (Dean et al. 2012): R
replicas' steps land at once, each as stale as the others' updates it missed, so the
staleness grows with R × (updates per round + the round's latency), and on non-IID edges
each replica's optimizer drifts towards its own edges' optimum at full step (client
drift, Karimireddy et al. 2020), which the sum multiplies by R. Measured
(bench/results/replicas.md): with the sum, 4 replicas lost 6 points with Adam and 28 with
SGD; an in-process reproduction at the services' round size lost 26 (the mean: 5). The
mean is FedAvg's server step of 1 (Reddi et al. 2021, "Adaptive Federated Optimization"):
a round moves the model as far as one replica's steps, so the staleness no longer scales
with R — at the cost of the learning rate of the group, which per sample is that of one
replica divided by A (the linear-scaling rule, Goyal et al. 2017, is what the sum was).

The **global version** is ``m`` at the last round: the number of updates applied by all
replicas and synchronised. Between rounds a replica's version reads ``m`` plus its own
updates since t0, and the staleness of a gradient (docs/DESIGN.md §6.1: τ_v = v_c − v_e(k))
counts every replica's updates it missed. Each round also gathers, per edge, how far its batches are
applied (:class:`Watermark`): once a round completes, those batches live in every replica,
so they are durable (the edge may forget them) and a replica that takes over the edge
knows which of its batches to refuse as duplicates.

No I/O and no threads here: the cloud's replica group (services/cloud/replicas.py) moves
the bytes and runs :meth:`SyncLedger.snapshot` and :meth:`SyncLedger.merge` on the compute
thread, between master updates.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from simultrain.shared.errors import TrainingError
from simultrain.shared.training.master import CloudMaster
from simultrain.shared.training.runtime import CloudSessionState

__all__ = [
    "MERGES",
    "Contribution",
    "Merge",
    "Reference",
    "SyncLedger",
    "Watermark",
    "decode_watermarks",
    "encode_watermarks",
]

# Versions, edge-stage updates and "contributed" (1 or 0) ride at the end of the summed vector.
TRAILER = 3

Merge = Literal["mean", "sum"]
MERGES: tuple[Merge, ...] = ("mean", "sum")


@dataclass(frozen=True, slots=True, order=True)
class Watermark:
    """How far one edge's batches are applied (ordered: a later watermark compares greater)."""

    applied_seq: int = -1  # every update of batches up to here is applied
    cloud_step_seq: int = -1  # cloud-stage updates applied up to here
    samples: int = 0  # samples of the applied batches
    steps: int = 0  # batches applied (the reconciliation schedule counts them)

    @classmethod
    def of(cls, state: CloudSessionState) -> Watermark:
        return cls(
            state.highest_applied_seq,
            state.highest_cloud_step_seq,
            state.samples_applied,
            state.steps_applied,
        )


def encode_watermarks(marks: Mapping[str, Watermark]) -> bytes:
    return json.dumps(
        {edge: [w.applied_seq, w.cloud_step_seq, w.samples, w.steps] for edge, w in marks.items()}
    ).encode()


def decode_watermarks(data: bytes) -> dict[str, Watermark]:
    try:
        raw = json.loads(data.decode())
        return {str(edge): Watermark(*(int(x) for x in values)) for edge, values in raw.items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise TrainingError(f"malformed replica watermarks: {exc}") from exc


def latest(tables: Iterable[Mapping[str, Watermark]]) -> dict[str, Watermark]:
    """Per edge, the furthest watermark any table has (an edge that moved between replicas
    leaves an older one behind on the first)."""
    out: dict[str, Watermark] = {}
    for table in tables:
        for edge, mark in table.items():
            if edge not in out or mark > out[edge]:
                out[edge] = mark
    return out


@dataclass(frozen=True, slots=True)
class Contribution:
    """What one replica changed since the last round, taken at one instant (t0)."""

    delta: Tensor  # flat float64: w(t0) − b
    versions: int
    edge_updates: int
    watermarks: dict[str, Watermark]

    def packed(self, *, joiners: int = 0) -> Tensor:
        """The vector the replicas sum: the delta, then the counts (the last of them 1 when
        this replica applied anything: the sum counts the contributors the mean divides by),
        then ``joiners`` (how many replicas wait to join, seen by this one: any non-zero sum
        makes the group re-form)."""
        counts = torch.tensor(
            [self.versions, self.edge_updates, 1 if self.versions > 0 else 0, joiners],
            dtype=torch.float64,
            device=self.delta.device,
        )
        return torch.cat([self.delta, counts])


@dataclass(frozen=True, slots=True)
class Reference:
    """The agreed model a (re-)formed group starts from: the ledger of its most advanced
    member (most rounds), which every member rebases onto."""

    base: Tensor
    mark_version: int
    mark_edge_updates: int
    rounds: int
    committed: dict[str, Watermark] = field(default_factory=dict)


class SyncLedger:
    """One replica's side of the rounds: the agreed base ``b``, its global version ``m``."""

    def __init__(self, master: CloudMaster, *, merge: Merge = "mean") -> None:
        if merge not in MERGES:
            raise TrainingError(f"replica merge must be one of {', '.join(MERGES)}, got {merge!r}")
        self.merge_kind: Merge = merge
        state = master.full_state()
        # Parameters and floating buffers (BatchNorm statistics); integer counters stay local.
        self.names = tuple(sorted(n for n, t in state.items() if t.is_floating_point()))
        self.shapes = {n: state[n].shape for n in self.names}
        self.base = self.flatten(master)
        self.mark_version = master.version
        self.mark_edge_updates = master.edge_updates
        self.rounds = 0
        self.committed: dict[str, Watermark] = {}
        self.pending: Contribution | None = None  # sent into a round that has not completed

    @property
    def size(self) -> int:
        return int(self.base.numel())

    def flatten(self, master: CloudMaster) -> Tensor:
        state = master.full_state()
        return torch.cat([state[n].detach().reshape(-1).to(torch.float64) for n in self.names])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        out, offset = {}, 0
        for name in self.names:
            count = int(torch.Size(self.shapes[name]).numel())
            out[name] = flat[offset : offset + count].reshape(self.shapes[name])
            offset += count
        return out

    def local_updates(self, master: CloudMaster) -> int:
        """Updates this replica applied since the last round's snapshot."""
        pending = self.pending.versions if self.pending is not None else 0
        return master.version - self.mark_version - pending

    # --- one round ------------------------------------------------------------------------

    def snapshot(
        self, master: CloudMaster, sessions: Mapping[str, CloudSessionState]
    ) -> Contribution:
        """What this replica sends into the next round (compute thread)."""
        if self.pending is not None:
            raise TrainingError("a round is already in flight")
        self.pending = Contribution(
            delta=self.flatten(master) - self.base,
            versions=master.version - self.mark_version,
            edge_updates=master.edge_updates - self.mark_edge_updates,
            watermarks={edge: Watermark.of(s) for edge, s in sessions.items()},
        )
        return self.pending

    def merge(
        self,
        master: CloudMaster,
        total: Tensor,
        watermarks: Iterable[Mapping[str, Watermark]],
        sessions: Mapping[str, CloudSessionState],
    ) -> None:
        """Apply a completed round (compute thread): the round's step (the mean or the sum of
        the deltas) replaces this replica's own delta, the others' versions land in the
        master, the base moves, and the gathered watermarks become durable."""
        own = self.pending
        if own is None:
            raise TrainingError("no round in flight to merge")
        if total.numel() != self.size + TRAILER + 1:
            raise TrainingError(
                f"round result has {total.numel()} values, expected {self.size + TRAILER + 1}"
            )
        total = total.to(self.base.device, torch.float64)
        versions, edge_updates, contributors = (
            round(float(x)) for x in total[self.size : self.size + TRAILER]
        )
        step = total[: self.size]
        if self.merge_kind == "mean" and contributors > 1:
            step = step / contributors
        master.absorb(
            self.unflatten(step - own.delta),
            versions=versions - own.versions,
            edge_updates=edge_updates - own.edge_updates,
        )
        self.base = self.base + step
        self.mark_version += versions
        self.mark_edge_updates += edge_updates
        self.rounds += 1
        self.pending = None
        self.commit([own.watermarks, *watermarks], sessions)

    def commit(
        self,
        watermarks: Iterable[Mapping[str, Watermark]],
        sessions: Mapping[str, CloudSessionState],
    ) -> None:
        self.committed = latest([self.committed, *watermarks])
        for edge, state in sessions.items():
            mark = self.committed.get(edge)
            if mark is not None:
                state.durable_seq = max(
                    state.durable_seq, min(mark.applied_seq, state.highest_applied_seq)
                )

    # --- forming a group ------------------------------------------------------------------

    def reference(self) -> Reference:
        return Reference(
            self.base.clone(),
            self.mark_version,
            self.mark_edge_updates,
            self.rounds,
            dict(self.committed),
        )

    def rebase(
        self,
        master: CloudMaster,
        ref: Reference,
        sessions: Mapping[str, CloudSessionState],
    ) -> None:
        """Move onto a (re-)formed group's reference, keeping this replica's own updates that
        no round has carried yet (compute thread).

        A round this replica sent into and saw fail may have completed at the reference (a
        peer died after the sums were exchanged): then its contribution is in the reference
        already, and counting it into the base first keeps it from being added twice.
        """
        own = self.pending
        self.pending = None
        if own is not None and ref.rounds == self.rounds + 1:
            self.base = self.base + own.delta
            self.mark_version += own.versions
            self.mark_edge_updates += own.edge_updates
            self.rounds += 1
            self.committed = latest([self.committed, own.watermarks])
        shift = ref.base.to(self.base.device, torch.float64) - self.base
        versions = ref.mark_version - self.mark_version
        edge_updates = ref.mark_edge_updates - self.mark_edge_updates
        # A member never has more synchronised updates than the most advanced one; should it
        # (two groups that trained apart), the counter keeps going up rather than back.
        master.absorb(
            self.unflatten(shift), versions=max(versions, 0), edge_updates=max(edge_updates, 0)
        )
        self.base = ref.base.to(self.base.device, torch.float64).clone()
        self.mark_version = max(ref.mark_version, self.mark_version)
        self.mark_edge_updates = max(ref.mark_edge_updates, self.mark_edge_updates)
        self.rounds = ref.rounds
        self.commit([ref.committed], sessions)

    def adopt(
        self, sessions: dict[str, CloudSessionState], edge_id: str, *, reconcile_offset: int = 0
    ) -> CloudSessionState | None:
        """An edge opens a session here: if the group's rounds carried more of its batches
        than this replica's session knows (it moved here from another replica), start from
        there — those batches are in the master already and come back only as duplicates."""
        mark = self.committed.get(edge_id)
        if mark is None:
            return sessions.get(edge_id)
        state = sessions.get(edge_id)
        if state is None:
            state = CloudSessionState(edge_id, reconcile_offset=reconcile_offset)
            sessions[edge_id] = state
        if Watermark.of(state) < mark:
            state.highest_applied_seq = mark.applied_seq
            state.highest_cloud_step_seq = mark.cloud_step_seq
            state.samples_applied = mark.samples
            state.samples_received = max(state.samples_received, mark.samples)
            state.steps_applied = mark.steps
            state.batch_sizes = {s: n for s, n in state.batch_sizes.items() if s > mark.applied_seq}
        state.durable_seq = max(state.durable_seq, mark.applied_seq)
        return state
