"""Fleet-batched edge-stage updates: the ``fleet-batch`` strategy's gathering and step.

The part (`FleetBatch` in shared/training/compensation.py) says how many edge gradients K make
one step and how that step's learning rate scales; this is the mechanism. Each gradient is
compensated at its own staleness and added to the batch; the K-th steps the edge stage once
on their mean, with the learning rate and momentum the step rules set for the largest
staleness among them. A gradient taken into the batch is applied — it adds its version, its
samples and its staleness to the master at once — though the weights move only with the
K-th (docs/STALENESS.md, "A fleet").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from simultrain.shared.errors import TrainingError
from simultrain.shared.training.compensation import FleetBatch
from simultrain.shared.training.stage import StageOptimizer

__all__ = ["FleetBatchEdgeStep"]

_META = "edge_batch"  # checkpoint metadata: {"gradients": n, "staleness": τ}
_PREFIX = "edge_batch/"  # checkpoint tensors: the batch's sum, by parameter name


class FleetBatchEdgeStep:
    """One edge-stage step per ``K`` edge gradients, on their mean."""

    def __init__(
        self, part: FleetBatch, stage: StageOptimizer, params: Mapping[str, Tensor]
    ) -> None:
        self.part = part
        self.stage = stage
        self.params = params
        self.edges = 1  # edges in session: K when the part's k is 0
        # The batch being gathered: the sum of its (compensated) gradients, how many, and the
        # largest staleness among them (what the step's learning rate and momentum are set by).
        self.accumulation: dict[str, Tensor] = {}
        self.gathered = 0
        self.gathered_staleness = 0

    @staticmethod
    def held_by(meta: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> str | None:
        """``a partly gathered fleet batch`` when a checkpoint holds one."""
        saved = meta.get(_META)
        gathered = int(saved["gradients"]) if isinstance(saved, dict) else 0
        if gathered or any(k.startswith(_PREFIX) for k in tensors):
            return "a partly gathered fleet batch (fleet-batch)"
        return None

    def apply(self, grads: Mapping[str, Tensor], staleness: int, edge_key: str) -> int:
        if self.part.edge_batch(self.edges) > 1 or self.gathered:
            return self._accumulate(grads, staleness)
        for name, param in self.params.items():
            param.grad = grads[name].clone()
        self.stage.optimizer.step()
        self.stage.optimizer.zero_grad(set_to_none=True)
        return 1

    def _accumulate(self, grads: Mapping[str, Tensor], staleness: int) -> int:
        """Add one gradient to the batch; step once it holds ``edge_batch`` of them."""
        if not self.gathered:
            self.accumulation = {n: g.clone() for n, g in grads.items()}
        else:
            for name, g in grads.items():
                self.accumulation[name].add_(g)
        self.gathered += 1
        self.gathered_staleness = max(self.gathered_staleness, staleness)
        if self.gathered >= self.part.edge_batch(self.edges):
            self._step()
            return 1
        return 0

    def _step(self) -> None:
        """One edge-stage step on the mean of the gathered gradients; the batch starts anew."""
        count = self.gathered
        self.stage.set_for(self.gathered_staleness)
        scale = self.part.batch_lr_scale(count)
        optimizer = self.stage.optimizer
        for group in optimizer.param_groups:
            group["lr"] *= scale
        for name, param in self.params.items():
            param.grad = self.accumulation[name] / count
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.accumulation = {}
        self.gathered = 0
        self.gathered_staleness = 0

    def resize(self, edges: int) -> None:
        self.edges = edges

    def flush(self, *, only_if_full: bool) -> int:
        if not self.gathered:
            return 0
        full = self.gathered >= self.part.edge_batch(self.edges)
        if only_if_full and not full:
            return 0
        self._step()
        return 1

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Acknowledged gradients waiting for the rest of the fleet are held, not applied: a
        checkpoint keeps them, so a resumed cloud takes the step one without the restart
        takes (stepping early would make the two runs differ)."""
        tensors = {
            _PREFIX + name: t.detach().to("cpu", copy=True).contiguous()
            for name, t in self.accumulation.items()
        }
        return tensors, {_META: {"gradients": self.gathered, "staleness": self.gathered_staleness}}

    def load(self, meta: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> None:
        saved = meta.get(_META, {"gradients": 0, "staleness": 0})
        gathered = int(saved["gradients"])
        accumulation = {
            k.removeprefix(_PREFIX): v for k, v in tensors.items() if k.startswith(_PREFIX)
        }
        if gathered and (
            accumulation.keys() != self.params.keys()
            or any(accumulation[k].shape != p.shape for k, p in self.params.items())
        ):
            raise TrainingError("its gathered edge gradients do not fit")
        self.accumulation = (
            {k: v.to(self.params[k].device) for k, v in accumulation.items()} if gathered else {}
        )
        self.gathered = gathered
        self.gathered_staleness = int(saved["staleness"])
