"""Per-edge edge-stage copies, averaged at reconciliation (SplitFed-style).

docs/FLEET.md, "Per-edge copies". With one shared edge stage, an edge's gradient meets a
master that every other edge has moved meanwhile: its staleness grows with the fleet (about
E·W batches). SplitFed (Thapa et al., "SplitFed: When Federated Learning Meets Split
Learning", AAAI 2022) gives each client its own client-side model, stepped at once with its
own gradients, and averages those models every round. Here the cloud keeps that copy per edge
— the cloud stays the only place updates are applied (docs/DESIGN.md §2) — and

- an EGRAD of edge ``i`` steps copy ``i`` at once, with copy ``i``'s own optimizer state:
  its staleness counts copy ``i``'s steps only, at most the edge's own window ``W`` whatever
  the fleet's size;
- the DELTAs edge ``i`` gets bring its replica to copy ``i`` (the runtime's mirror machinery
  unchanged: "copy minus mirror" instead of "master minus mirror");
- at edge ``i``'s soft reconciliation (every R of its steps, staggered across edges:
  docs/DESIGN.md §3.6) the master's edge stage becomes the mean of all copies, and copy
  ``i`` the blend the edge computes, ``β·copy_i + (1−β)·mean`` (β = 0 is SplitFed's replacement).

The master version still counts every applied update (each copy step adds one), so versions,
ACKs and exactly-once are the runtime's own. The master's edge stage is the fleet's model —
what is evaluated, checkpointed and given to a new edge — as of the last average; `average`
refreshes it (the driver does before it evaluates).
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from simultrain.shared.errors import TrainingError
from simultrain.shared.training.master import CloudMaster, EdgeUpdateResult
from simultrain.shared.training.options import OptimizerConfig

__all__ = ["EdgeCopies"]


@dataclass(frozen=True, slots=True)
class _Entry:
    version: int  # master version from which the copy held these weights
    steps: int  # the copy's own steps by then
    samples: int  # samples those steps applied
    weights: Mapping[str, Tensor]


@dataclass
class _Copy:
    tensors: dict[str, Tensor]  # parameters (leaves that take a .grad) and buffers
    optimizer: torch.optim.Optimizer
    base_momentum: list[float]  # SGD's momentum or Adam's β₁ per group, as built
    steps: int = 0
    samples: int = 0
    history: deque[_Entry] = field(default_factory=deque)

    def snapshot(self) -> dict[str, Tensor]:
        return {n: t.detach().clone() for n, t in self.tensors.items()}


class EdgeCopies:
    """One edge-stage copy per edge, with its optimizer, beside the master (module docstring).

    ``history`` bounds the versions of a copy kept for the staleness of its gradients (an edge
    has at most its window in flight, so a few more than the window is plenty); a gradient
    older than that is dropped and counted, as the master does.
    """

    def __init__(self, master: CloudMaster, optimizer: OptimizerConfig, *, history: int) -> None:
        if history < 1:
            raise TrainingError("edge copies keep at least one version each")
        self.master = master
        self.optimizer = optimizer
        self.history = history
        self.copies: dict[str, _Copy] = {}
        self.averages = 0
        self._param_names = [n for n, _ in master.edge_stage.named_parameters()]
        # The run's gradient corrections, as one master runs them (their state shared by the
        # copies: each copy is a version of the one edge stage).
        self._corrections = master.compensation.correctors()

    # --- a copy per edge -----------------------------------------------------------------
    def open(self, edge_id: str) -> None:
        """A new edge's copy starts from the master's edge stage (the fleet's mean so far);
        a returning edge keeps its copy."""
        if edge_id in self.copies:
            return
        tensors = {
            n: t.detach().to("cpu", copy=True) for n, t in self.master.edge_weights().items()
        }
        params = [tensors[n].requires_grad_(True) for n in self._param_names]
        optimizer = self.optimizer.build(params, stage="edge")
        base = [
            float(g["betas"][0]) if "betas" in g else float(g.get("momentum", 0.0))
            for g in optimizer.param_groups
        ]
        copy = _Copy(tensors, optimizer, base)
        self._remember(copy)
        self.copies[edge_id] = copy

    def weights(self, edge_id: str) -> Mapping[str, Tensor]:
        """What edge ``edge_id``'s replica should hold: its copy (the runtime clones what it
        keeps as the mirror)."""
        return {n: t.detach() for n, t in self._copy(edge_id).tensors.items()}

    def set(self, edge_id: str, weights: Mapping[str, Tensor]) -> None:
        """The copy becomes ``weights`` (the reconciliation blend the edge computed too)."""
        copy = self._copy(edge_id)
        with torch.no_grad():
            for name, t in copy.tensors.items():
                t.copy_(weights[name])
        self._remember(copy)

    # --- the edge-stage update on a copy (docs/DESIGN.md §3.4) --------------------------
    def apply(
        self, edge_id: str, grads: Mapping[str, Tensor], edge_version: int, *, samples: int
    ) -> EdgeUpdateResult:
        """Step edge ``edge_id``'s copy with its gradient taken at ``edge_version``.

        The run's compensation acts as on the master, with the copy's own staleness: its
        learning-rate scale and momentum, and its gradient transform against the copy as it
        was at ``edge_version``. Counted in the master (version, samples, staleness).
        """
        copy = self._copy(edge_id)
        master = self.master
        entry = self._lookup(copy, edge_version)
        if entry is None:
            master.staleness.dropped += 1
            return EdgeUpdateResult(False, master.version, -1, master.version - edge_version)
        params = {n: copy.tensors[n] for n in self._param_names}
        for name, param in params.items():
            grad = grads.get(name)
            if grad is None or grad.shape != param.shape or not bool(torch.isfinite(grad).all()):
                raise TrainingError(f"edge gradient {name}: missing, misshapen or not finite")
        staleness = copy.steps - entry.steps
        behind = copy.samples - entry.samples
        applied = {n: grads[n].to(torch.float32) for n in params}
        if staleness > 0:
            now = {n: p.detach() for n, p in params.items()}
            for corrector in self._corrections:
                applied = corrector.correct(applied, now, entry.weights, staleness)
        self._set_stage(copy, staleness)
        for name, param in params.items():
            param.grad = applied[name].clone()
        copy.optimizer.step()
        copy.optimizer.zero_grad(set_to_none=True)
        copy.steps += 1
        copy.samples += samples
        master.version += 1
        master.edge_updates += 1
        master.samples_applied += samples
        master.staleness.record(staleness, samples=behind)
        master.observed_staleness = staleness
        self._remember(copy)
        return EdgeUpdateResult(
            True, master.version, staleness, master.version - 1 - edge_version, behind
        )

    def _set_stage(self, copy: _Copy, staleness: int) -> None:
        """The copy's learning rate and momentum for this staleness, from the base values."""
        compensation = self.master.compensation
        scale = compensation.lr_scale(staleness, "edge")
        for group, momentum in zip(copy.optimizer.param_groups, copy.base_momentum, strict=True):
            group["lr"] = self.optimizer.lr * scale
            kind: Literal["sgd", "adam"] = "adam" if "betas" in group else "sgd"
            mu = compensation.momentum(momentum, staleness, "edge", kind=kind)
            if kind == "adam":
                group["betas"] = (mu, group["betas"][1])
            else:
                group["momentum"] = mu

    # --- averaging (SplitFed's federated step) --------------------------------------------
    def average(self) -> Mapping[str, Tensor]:
        """The master's edge stage becomes the mean of the copies; returns it (CPU)."""
        if not self.copies:
            return self.master.edge_weights()
        stage = self.master.edge_stage.state_dict()
        with torch.no_grad():
            for name, target in stage.items():
                mean = torch.stack([c.tensors[name].detach() for c in self.copies.values()]).mean(0)
                target.copy_(mean.to(target.device, target.dtype))
        # The master's history held the old weights under current versions: only the new
        # ones are known now (copies never look the master's history up).
        self.master.reset_history()
        self.averages += 1
        return {n: t.cpu() for n, t in self.master.edge_weights().items()}

    # --- a checkpoint (services/cloud/checkpoint.py) ---------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Each copy's optimizer, named by its edge: a checkpoint keeps their state with the
        master's (`CloudRuntime.optimizers`)."""
        return {f"edge_copy:{edge_id}": copy.optimizer for edge_id, copy in self.copies.items()}

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Each copy's weights and counters (its optimizer goes with `optimizers`)."""
        tensors: dict[str, Tensor] = {}
        copies: list[dict[str, Any]] = []
        for index, (edge_id, copy) in enumerate(self.copies.items()):
            copies.append({"edge_id": edge_id, "steps": copy.steps, "samples": copy.samples})
            for name, t in copy.tensors.items():
                tensors[f"edge_copies/{index}/{name}"] = t.detach().to("cpu", copy=True)
        return tensors, {"edge_copies": {"copies": copies, "averages": self.averages}}

    def load_state(self, meta: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> None:
        """`state` back into freshly built copies (before their optimizers' state is loaded:
        `open` builds each copy's optimizer over its own tensors). A copy's history starts
        at the restored weights, as the master's does."""
        saved = meta.get("edge_copies")
        if saved is None:
            return
        for index, entry in enumerate(saved["copies"]):
            edge_id = str(entry["edge_id"])
            self.open(edge_id)
            copy = self.copies[edge_id]
            with torch.no_grad():
                for name, target in copy.tensors.items():
                    source = tensors.get(f"edge_copies/{index}/{name}")
                    if source is None or source.shape != target.shape:
                        raise TrainingError(f"edge copy of {edge_id}: {name} missing or misshapen")
                    target.copy_(source)
            copy.steps = int(entry["steps"])
            copy.samples = int(entry["samples"])
            copy.history.clear()
            self._remember(copy)
        self.averages = int(saved["averages"])

    # --- versions of a copy ----------------------------------------------------------------
    def _remember(self, copy: _Copy) -> None:
        copy.history.append(_Entry(self.master.version, copy.steps, copy.samples, copy.snapshot()))
        while len(copy.history) > self.history:
            copy.history.popleft()

    @staticmethod
    def _lookup(copy: _Copy, version: int) -> _Entry | None:
        """The copy as of master version ``version``: its newest entry at or before it."""
        i = bisect.bisect_right(copy.history, version, key=lambda e: e.version) - 1
        return copy.history[i] if i >= 0 else None

    def _copy(self, edge_id: str) -> _Copy:
        copy = self.copies.get(edge_id)
        if copy is None:
            raise TrainingError(f"no edge-stage copy for {edge_id}: its session never opened")
        return copy
