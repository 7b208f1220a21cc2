"""Mixed-edge cloud steps: every cloud-stage step learns from several edges at once.

docs/FLEET.md, "Mixed steps". A fleet's edges hold skewed data (one subject, two labels).
Stepped one edge's batch at a time, the cloud stage chases each edge's labels in turn — the
*order* part of a fleet's gap to pooled training. Split-federated systems that mix several
clients' activations into each server batch recover most of that non-IID loss (S²FL, 2023;
GPSL, 2024; SCALA, 2024). Here the cloud gathers the ACTs of ``m`` edges (``m`` = the
configured ``mix_edges``, or fewer while fewer edges are in session), concatenates them and
takes one cloud-stage step on the whole; each edge gets its own slice of the cut gradient.

The arithmetic (PROTOCOL.md §6 frames unchanged). The loss of the mixed step is the mean over
all ``n = Σ n_i`` samples, so the slice for edge ``i`` is ``∂ℓ/∂a_i`` with the ``1/n`` inside,
and the gradient edge ``i`` backpropagates from it is its share of the whole:
``g_i = Σ_{s ∈ i} ∇ℓ_s / n``. Their **sum** ``Σ_i g_i`` is the gradient of the mean loss of
the concatenated batch — taken at one edge-stage version when the edges' replicas agree. The
edge stage steps once per mixed step, on that sum, when every member's EGRAD is in; each
member's batch is then applied and acknowledged (its own counters, its own ACK and DELTA).

How the step keeps its size (``mix_batch``):

- ``split``: each edge sends ``batch_size / m`` samples, so the mixed step is one ordinary
  batch and the fleet takes as many steps per sample as pooled training does;
- ``stack``: each edge keeps ``batch_size``; the step is ``m`` times larger and its learning
  rate follows ``mix_lr`` — ``sqrt`` (Adam: the square-root scaling rule, Malladi et al.,
  "On the SDEs and Scaling Rules for Adaptive Gradient Algorithms", NeurIPS 2022) or
  ``linear`` (SGD: Goyal et al., "Accurate, Large Minibatch SGD", 2017).

A step never waits long: it goes as soon as ``m`` edges have an ACT waiting, and otherwise
when the oldest waiting ACT is ``mix_wait_s`` old (`CloudMixer.due_in` /
`CloudMixer.step_if_due`: the mixer reads a clock and keeps no timers, like the lockstep
rounds' deadline). With one edge in session, or ``mix_edges = 1``, the runtime never calls
the mixer: the run is bit for bit today's.

Exactly once. A waiting ACT is neither applied nor acknowledged, so dropping it (its edge
left, or the cloud restarted) loses nothing: the edge sends it again. A mixed step applies
each member's cloud-stage update at once (``highest_cloud_step_seq``) and its edge-stage
update with the others; a member whose edge leaves before its EGRAD comes is taken out of
the gathering (the others step without it) and, sent again, is answered like any batch whose
cloud-stage update was applied before: its cut gradient computed again, nothing applied twice,
its edge gradient applied alone. So the mixer holds nothing a checkpoint must keep: what is
waiting or gathering is re-sent by the edges, which keep every batch until it is durable.
Each edge's batches are applied and acknowledged in sequence order: a complete step waits
behind an earlier step of one of its edges that still gathers (`CloudMixer._apply_in_order`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from simultrain.shared.errors import TrainingError
from simultrain.shared.protocol import Act, EGrad, Grad
from simultrain.shared.tensors import from_wire, state_from_wire, to_wire
from simultrain.shared.training.fleet import Mixing

if TYPE_CHECKING:
    from simultrain.shared.training.master import CloudMaster
    from simultrain.shared.training.runtime import CloudRuntime, CloudSessionState, Outgoing

__all__ = ["CloudMixer", "MixedStep", "WaitingAct"]


@dataclass(slots=True)
class WaitingAct:
    """An ACT waiting for its mixed step: decoded, checked, nothing applied yet."""

    edge_id: str
    seq: int
    edge_version: int
    activations: Tensor
    labels: Tensor
    arrived: float

    @property
    def samples(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True, slots=True)
class _Member:
    edge_id: str
    seq: int
    edge_version: int
    samples: int


@dataclass
class MixedStep:
    """A mixed step whose cloud-stage update is applied and whose edge gradients are being
    gathered: each member's EGRAD (its tensors and the version it was taken at)."""

    members: list[_Member]
    lr_factor: float
    grads: dict[str, Mapping[str, Tensor]] = field(default_factory=dict)

    def complete(self) -> bool:
        return all(m.edge_id in self.grads for m in self.members)


class CloudMixer:
    """The cloud's side of mixed steps, between the runtime's ACT/EGRAD handlers and the master.

    ``gather_edge_gradients=False`` mixes the cloud stage only: each member's EGRAD then goes
    the ordinary way (per-edge edge-stage copies step each edge's own copy,
    shared/training/edge_copies.py).
    """

    def __init__(
        self,
        mixing: Mixing,
        *,
        clock: Callable[[], float] = time.monotonic,
        gather_edge_gradients: bool = True,
    ) -> None:
        self.mixing = mixing
        self._clock = clock
        self.gather_edge_gradients = gather_edge_gradients
        self.waiting: list[WaitingAct] = []  # in arrival order
        self.gathering: dict[tuple[str, int], MixedStep] = {}
        self.steps = 0  # mixed cloud-stage steps taken
        self.members = 0  # batches they held
        self.early_steps = 0  # stepped by the wait bound with fewer edges than the mix size
        # ACTs a mixed step could not take (labels out of range, a loss or gradient not
        # finite): left out and never answered; a service closes their edges' sessions as it
        # does for any refused frame (docs/FLEET.md, "What the services need").
        self.refused: list[tuple[str, int, str]] = []

    # --- what the runtime asks -----------------------------------------------------------
    def takes(self, edges_in_session: int) -> bool:
        """Whether ACTs go through the mixer: a mix of more than one, or ACTs still waiting."""
        return self.mixing.size(edges_in_session) > 1 or bool(self.waiting)

    def holds(self, edge_id: str, seq: int) -> bool:
        """Whether batch ``seq`` of ``edge_id`` belongs to a mixed step gathering EGRADs."""
        return (edge_id, seq) in self.gathering

    @property
    def empty(self) -> bool:
        return not self.waiting and not self.gathering

    def summary(self) -> dict[str, object]:
        return {
            "mix_edges": self.mixing.edges,
            "mix_batch": self.mixing.batch,
            "steps": self.steps,
            "mean_members": round(self.members / self.steps, 3) if self.steps else 0.0,
            "early_steps": self.early_steps,
            "waiting": len(self.waiting),
            "gathering": len({id(s) for s in self.gathering.values()}),
            "refused": len(self.refused),
        }

    def due_in(self) -> float | None:
        """Seconds until the oldest waiting ACT's wait runs out (≤ 0: due); None if none."""
        if not self.waiting:
            return None
        return self.waiting[0].arrived + self.mixing.wait_s - self._clock()

    # --- ACT ---------------------------------------------------------------------------
    def accept(self, edge_id: str, act: Act) -> WaitingAct:
        """A first-time ACT decoded and checked, not waiting yet: the caller lands its
        piggybacked EGRAD in between, so a frame refused here changes nothing."""
        activations = from_wire(act.activations)
        labels = from_wire(act.labels).long()
        _check_batch(activations, labels)
        if any(w.edge_id == edge_id and w.seq == act.seq for w in self.waiting):
            raise TrainingError(f"batch {act.seq} of {edge_id} is already waiting to be mixed")
        return WaitingAct(edge_id, act.seq, act.edge_version, activations, labels, self._clock())

    def add(self, runtime: CloudRuntime, waiting: WaitingAct) -> list[Outgoing]:
        """An accepted ACT waits for its mix; every mix that is full now steps."""
        self.waiting.append(waiting)
        return self._step_ready(runtime, force=False)

    def step_if_due(self, runtime: CloudRuntime, *, force: bool = False) -> list[Outgoing]:
        """Step what waits, in mixes as large as it allows, once the oldest has waited
        ``mix_wait_s`` (``force``: now — nothing else can come, e.g. at the end of a run)."""
        due = self.due_in()
        if due is None or (due > 0 and not force):
            return []
        return self._step_ready(runtime, force=True)

    def _step_ready(self, runtime: CloudRuntime, *, force: bool) -> list[Outgoing]:
        out: list[Outgoing] = []
        while self.waiting:
            size = self.mixing.size(len(runtime.connected))
            chosen: list[WaitingAct] = []
            seen: set[str] = set()
            for waiting in self.waiting:  # the oldest ACT of each edge, oldest edges first
                if waiting.edge_id not in seen:
                    seen.add(waiting.edge_id)
                    chosen.append(waiting)
                    if len(chosen) == size:
                        break
            if len(chosen) < size and not force:
                break
            self.early_steps += int(len(chosen) < size)
            for waiting in chosen:
                self.waiting.remove(waiting)
            out.extend(self._step(runtime, chosen))
        return out

    def _step(self, runtime: CloudRuntime, chosen: list[WaitingAct]) -> list[Outgoing]:
        """One cloud-stage step on the concatenated batch; a GRAD with its slice to each."""
        master = runtime.master
        try:
            prepared = master.prepare_cloud_step(*_concatenated(chosen))
        except TrainingError:
            # Labels out of range, or a loss or gradient that is not finite: find the
            # batches that fail alone, leave them out, mix the others (one hostile batch
            # never takes the others down; nothing was applied).
            chosen = self._passing(master, chosen)
            if not chosen:
                return []
            prepared = master.prepare_cloud_step(*_concatenated(chosen))
        factor = self.mixing.lr_factor(len(chosen), master.optimizer_config.name)
        with master.scaled_lr(factor):
            result = master.commit_cloud_step(prepared)
        self.steps += 1
        self.members += len(chosen)
        members = [_Member(w.edge_id, w.seq, w.edge_version, w.samples) for w in chosen]
        step = MixedStep(members, factor)
        slices = result.cut_grad.split([m.samples for m in members])
        codecs = runtime.codecs
        out: list[Outgoing] = []
        for member, cut_grad in zip(members, slices, strict=True):
            state = runtime.sessions[member.edge_id]
            state.highest_cloud_step_seq = member.seq
            state.samples_received += member.samples
            if self.gather_edge_gradients:
                self.gathering[(member.edge_id, member.seq)] = step
            else:
                state.batch_sizes[member.seq] = member.samples  # the ordinary EGRAD path
            grad = Grad(
                seq=member.seq,
                master_version=result.version,
                cut_grad=to_wire(cut_grad, codecs.grad, topk_ratio=codecs.topk_ratio),
                loss=result.loss,
            )
            out.append((member.edge_id, grad))
        return out

    def _passing(self, master: CloudMaster, chosen: list[WaitingAct]) -> list[WaitingAct]:
        """The waiting batches that pass the cloud step's checks alone; the others refused."""
        kept = []
        for waiting in chosen:
            try:
                master.prepare_cloud_step(waiting.activations, waiting.labels)
                kept.append(waiting)
            except TrainingError as exc:
                self.refused.append((waiting.edge_id, waiting.seq, str(exc)))
        return kept

    # --- EGRAD -------------------------------------------------------------------------
    def on_egrad(
        self, runtime: CloudRuntime, state: CloudSessionState, egrad: EGrad
    ) -> list[Outgoing]:
        """A member's edge gradient; once every member's is in, the edge stage steps."""
        step = self.gathering[(state.edge_id, egrad.seq)]
        grads = state_from_wire(egrad.grads)
        _check_edge_gradient(runtime.master, grads)  # refused alone, before it is summed
        step.grads[state.edge_id] = grads
        if not step.complete():
            return []
        return self._apply_in_order(runtime)

    def _apply_in_order(self, runtime: CloudRuntime) -> list[Outgoing]:
        """Apply every complete mixed step that no earlier batch of its members' edges still
        waits behind. An edge's batches are acknowledged in sequence order (PROTOCOL.md §6.4):
        a step of an edge's batch ``k + 1`` that completes first (mixed alone when the wait
        bound ran out, say) waits for the step of batch ``k``, whose other members' EGRADs
        are still coming."""
        out: list[Outgoing] = []
        while True:
            steps = {id(step): step for step in self.gathering.values()}  # gathering order
            ready = next((s for s in steps.values() if s.complete() and not self._behind(s)), None)
            if ready is None:
                return out
            out.extend(self._apply(runtime, ready))

    def _behind(self, step: MixedStep) -> bool:
        """Whether an earlier batch of one of ``step``'s edges is gathering in another step."""
        return any(
            other is not step and edge_id == member.edge_id and seq < member.seq
            for (edge_id, seq), other in self.gathering.items()
            for member in step.members
        )

    def _apply(self, runtime: CloudRuntime, step: MixedStep) -> list[Outgoing]:
        """The edge-stage step on the sum of the members' gradients (module docstring)."""
        for member in step.members:
            self.gathering.pop((member.edge_id, member.seq), None)
        present = [m for m in step.members if m.edge_id in step.grads]
        if not present:
            return []
        master = runtime.master
        names = step.grads[present[0].edge_id].keys()
        summed = {n: _sum([step.grads[m.edge_id][n] for m in present]) for n in names}
        oldest = min(m.edge_version for m in present)
        # Each member's own staleness, before the step moves the counters.
        missed = {m.edge_id: master.staleness_of(m.edge_version) for m in present}
        with master.scaled_lr(step.lr_factor):
            result = master.apply_edge_gradient(
                summed,
                oldest,
                samples=sum(m.samples for m in present),
                edge_id=present[0].edge_id if len(present) == 1 else None,
            )
        out: list[Outgoing] = []
        for member in present:
            state = runtime.sessions[member.edge_id]
            behind = missed[member.edge_id]
            if result.applied and behind is not None:
                state.staleness.record(behind[0], samples=behind[1])
            else:
                state.staleness.dropped += 1
            runtime._mark_applied(state, member.seq, member.samples)
            out.extend(runtime._after_update(state, member.seq))
        return out

    # --- an edge leaves ------------------------------------------------------------------
    def drop_edge(self, runtime: CloudRuntime, edge_id: str) -> list[Outgoing]:
        """``edge_id`` left: its waiting ACTs go (it sends them again), its members leave
        their gatherings (which step without them when the others are in), and mixes that the
        smaller fleet fills step now."""
        self.waiting = [w for w in self.waiting if w.edge_id != edge_id]
        out: list[Outgoing] = []
        for key in [k for k in self.gathering if k[0] == edge_id]:
            step = self.gathering.pop(key)
            step.members = [m for m in step.members if m.edge_id != edge_id]
            step.grads.pop(edge_id, None)
        out.extend(self._apply_in_order(runtime))
        return [*out, *self._step_ready(runtime, force=False)]


def _concatenated(chosen: list[WaitingAct]) -> tuple[Tensor, Tensor]:
    """The mixed batch: the members' activations (as float32, as the master computes) and
    labels, in member order."""
    activations = torch.cat([w.activations.to(torch.float32) for w in chosen])
    return activations, torch.cat([w.labels for w in chosen])


def _check_batch(activations: Tensor, labels: Tensor) -> None:
    """What `CloudMaster.prepare_cloud_step` checks before its forward, for an ACT that
    waits: one label per sample, float activations, int64 labels."""
    if activations.ndim < 1 or activations.shape[0] != labels.shape[0] or labels.ndim != 1:
        raise TrainingError(f"{activations.shape[0]} activations for {labels.shape[0]} labels")
    if activations.dtype not in (torch.float16, torch.float32):
        raise TrainingError(f"activations must be float32 or float16, got {activations.dtype}")
    if labels.numel() == 0:
        raise TrainingError("an empty batch cannot be mixed")


def _check_edge_gradient(master: CloudMaster, grads: Mapping[str, Tensor]) -> None:
    """A member's edge gradient fits the edge stage (names, shapes) and is finite."""
    params = dict(master.edge_stage.named_parameters())
    if grads.keys() != params.keys():
        raise TrainingError(
            f"edge gradient names {sorted(grads)[:3]} do not match the edge stage's "
            f"{sorted(params)[:3]}"
        )
    for name, param in params.items():
        grad = grads[name]
        if grad.shape != param.shape:
            raise TrainingError(
                f"edge gradient {name} has shape {tuple(grad.shape)}, expected {tuple(param.shape)}"
            )
        if not bool(torch.isfinite(grad).all()):
            raise TrainingError(f"edge gradient {name}: not finite (NaN or infinity)")


def _sum(tensors: list[Tensor]) -> Tensor:
    """The members' gradients added in member order (one member: the tensor itself, so a mix
    of one is bit for bit the ordinary step)."""
    if len(tensors) == 1:
        return tensors[0]
    total = tensors[0].clone()
    for t in tensors[1:]:
        total.add_(t)
    return total
