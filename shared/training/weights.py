"""Copy-on-write edge-stage weights: weight stashing and lock-free deltas are one mechanism.

docs/DESIGN.md §3.1, §3.5, §3.6 and §4.1. The edge replica is a reference to an immutable
:class:`VersionedWeights`. A forward pass reads that reference once and builds its autograd
graph on exactly those tensors; every later change (a delta, a resync, a soft reconciliation)
builds *new* tensors and swaps the one reference. So

- an in-flight graph keeps the exact weights it used alive (weight stashing, PipeDream-style),
  and its backward gives the gradient at the version it was computed at;
- the forward loop never takes a lock: swapping a Python reference is atomic, and nothing
  that a reader holds is ever written to.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from torch import Tensor, nn
from torch.func import functional_call

from simultrain.shared.errors import TrainingError

__all__ = [
    "EdgeReplica",
    "StashedForward",
    "VersionedWeights",
    "clone_weights",
    "freeze",
    "module_weights",
]


def freeze(tensors: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    """New leaf tensors that require grad (so a graph can be taken at them), read-only view."""
    return MappingProxyType(
        {
            name: t.detach().clone().requires_grad_(t.is_floating_point())
            for name, t in tensors.items()
        }
    )


def clone_weights(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Detached copies, safe to hand to another thread or to mutate."""
    return {name: t.detach().clone() for name, t in tensors.items()}


def module_weights(module: nn.Module) -> dict[str, Tensor]:
    """Parameters and buffers of ``module`` by name, detached copies."""
    named: dict[str, Tensor] = dict(module.named_parameters())
    named.update(module.named_buffers())
    return clone_weights(named)


@dataclass(frozen=True, slots=True)
class VersionedWeights:
    """Edge-stage weights as of master version ``version``. Never mutated after creation."""

    version: int
    tensors: Mapping[str, Tensor]

    def __post_init__(self) -> None:
        if self.version < 0:
            raise TrainingError(f"negative version {self.version}")


@dataclass(slots=True)
class StashedForward:
    """One batch's edge-stage forward, kept until its cut gradient comes back.

    ``weights`` is the exact :class:`VersionedWeights` the graph was built on; holding it here
    is what keeps that version alive however many deltas arrive meanwhile.
    """

    seq: int
    weights: VersionedWeights
    activations: Tensor
    batch_size: int
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def version(self) -> int:
        return self.weights.version


class EdgeReplica:
    """The edge's replica of the edge-stage weights, tagged with the master version it reflects.

    All operations are plain torch code without I/O; the edge service calls them from its
    compute thread, the in-process driver directly.
    """

    def __init__(self, edge_stage: nn.Module, initial: Mapping[str, Tensor], version: int) -> None:
        # The module only supplies the computation; its own parameters are never used.
        self._module = edge_stage
        self._names = tuple(initial)
        self._current = VersionedWeights(version, freeze(initial))

    @property
    def current(self) -> VersionedWeights:
        return self._current

    @property
    def version(self) -> int:
        return self._current.version

    def names(self) -> tuple[str, ...]:
        return self._names

    def forward(
        self, seq: int, inputs: Tensor, *, weights: VersionedWeights | None = None
    ) -> StashedForward:
        """Edge-stage forward at the current weights, keeping the graph (docs/DESIGN.md §3.1).

        ``weights`` forwards at other weights of these names instead (the synthetic mode's
        working weights: the replica plus the edge's own pending local steps).
        """
        if weights is None:
            weights = self._current  # read the reference exactly once
        elif weights.tensors.keys() != set(self._names):
            raise TrainingError("forward at weights whose names are not the replica's")
        with torch.enable_grad():
            activations = functional_call(self._module, dict(weights.tensors), (inputs,))
        return StashedForward(seq, weights, activations, batch_size=int(inputs.shape[0]))

    def forward_no_grad(self, inputs: Tensor) -> Tensor:
        with torch.no_grad():
            out: Tensor = functional_call(self._module, dict(self._current.tensors), (inputs,))
        return out

    @staticmethod
    def backward(stash: StashedForward, cut_grad: Tensor) -> dict[str, Tensor]:
        """Backpropagate ``cut_grad`` through the stashed graph (docs/DESIGN.md §3.3).

        ``torch.autograd.grad`` returns the gradients instead of accumulating into ``.grad``,
        so graphs of several in-flight batches that share one version never mix.
        """
        if cut_grad.shape != stash.activations.shape:
            raise TrainingError(
                f"cut gradient of shape {tuple(cut_grad.shape)} for activations of shape "
                f"{tuple(stash.activations.shape)} (batch {stash.seq})"
            )
        names = [n for n, t in stash.weights.tensors.items() if t.requires_grad]
        inputs = [stash.weights.tensors[n] for n in names]
        grads = torch.autograd.grad(
            stash.activations, inputs, grad_outputs=cut_grad, allow_unused=True
        )
        return {
            name: (g if g is not None else torch.zeros_like(t)).detach()
            for name, g, t in zip(names, grads, inputs, strict=True)
        }

    # --- the three ways the replica changes; each swaps one reference -------------------

    def replace(self, tensors: Mapping[str, Tensor], version: int) -> None:
        """Set the replica to exact master weights (lossless delta, resync, welcome)."""
        self._check_names(tensors)
        self._current = VersionedWeights(version, freeze(tensors))

    def add(self, delta: Mapping[str, Tensor], version: int) -> None:
        """``w_e ← w_e + Δ`` (lossy deltas, docs/DESIGN.md §4.2)."""
        self._check_names(delta, partial=True)
        old = self._current.tensors
        new = {
            n: (old[n].detach() + delta[n].to(old[n].dtype)) if n in delta else old[n]
            for n in self._names
        }
        self._current = VersionedWeights(version, freeze(new))

    def reconcile(self, master: Mapping[str, Tensor], beta: float, version: int) -> None:
        """Soft reconciliation ``w_e ← β·w_e + (1−β)·w_c`` (docs/DESIGN.md §4.5)."""
        if not 0.0 <= beta <= 1.0:
            raise TrainingError(f"beta must be in [0, 1], got {beta}")
        self._check_names(master)
        old = self._current.tensors
        new = {n: blend(old[n].detach(), master[n], beta) for n in self._names}
        self._current = VersionedWeights(version, freeze(new))

    def _check_names(self, tensors: Mapping[str, Tensor], *, partial: bool = False) -> None:
        unknown = set(tensors) - set(self._names)
        missing = set() if partial else set(self._names) - set(tensors)
        if unknown or missing:
            raise TrainingError(
                f"weight names do not match the edge stage: unknown {sorted(unknown)}, "
                f"missing {sorted(missing)}"
            )
        for name, t in tensors.items():
            ref = self._current.tensors[name]
            if t.shape != ref.shape:
                raise TrainingError(
                    f"{name}: shape {tuple(t.shape)} does not match {tuple(ref.shape)}"
                )

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)


def blend(edge: Tensor, master: Tensor, beta: float) -> Tensor:
    """``β·edge + (1−β)·master``; β = 1 leaves ``edge`` unchanged bit for bit."""
    if beta == 1.0:
        return edge.clone()
    if beta == 0.0:
        return master.to(edge.dtype).clone()
    return beta * edge + (1.0 - beta) * master.to(edge.dtype)
