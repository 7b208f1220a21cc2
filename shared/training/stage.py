"""One stage's optimizer as the compensation sets it, and how edge gradients become steps.

The master steps each stage with one torch optimizer. Before a step, the compensation's step
rules set the stage's learning rate and momentum (Adam's β₁) for the staleness of the update
(:class:`StageOptimizer`); at staleness 0 they are the optimizer's own, so the step is the
plain one. How compensated edge gradients become edge-stage steps is the compensation's
edge-step strategy (:class:`EdgeStep`): :class:`PlainEdgeStep` here, one step per gradient;
the fleet batch (shared/training/fleet_batch.py) and DANA's per-edge momenta
(shared/training/dana.py) live with their parts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from simultrain.shared.training.compensation import Compensation, PlainStep

__all__ = ["EdgeStep", "PlainEdgeStep", "StageOptimizer"]

Stage = Literal["edge", "cloud"]


def _momentum_of(group: Mapping[str, object]) -> float:
    """SGD's momentum or Adam's β₁: the fraction of the previous step a new one keeps."""
    if "betas" in group:
        betas = group["betas"]
        assert isinstance(betas, tuple)
        return float(betas[0])
    return float(group.get("momentum", 0.0))  # type: ignore[arg-type]


class StageOptimizer:
    """A stage's optimizer, its base learning rates and momenta, and the step rules."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, compensation: Compensation, stage: Stage
    ) -> None:
        self.optimizer = optimizer
        self.compensation = compensation
        self.stage: Stage = stage
        self.base_lr: Sequence[float] = [g["lr"] for g in optimizer.param_groups]
        self.base_momentum: Sequence[float] = [_momentum_of(g) for g in optimizer.param_groups]
        # A multiplier on the learning rate for the steps of a mixed batch of stacked edge
        # batches (`CloudMaster.scaled_lr`); 1 otherwise, which changes no bit.
        self.lr_factor = 1.0

    def set_for(self, staleness: int) -> None:
        """Learning rate and momentum of the stage's next step, as the step rules set them.

        At staleness 0 every step rule returns the base values, so the step is the plain one.
        """
        compensation = self.compensation
        scale = compensation.lr_scale(staleness, self.stage)
        groups = self.optimizer.param_groups
        for group, lr, momentum in zip(groups, self.base_lr, self.base_momentum, strict=True):
            group["lr"] = lr * scale * self.lr_factor
            kind: Literal["sgd", "adam"] = "adam" if "betas" in group else "sgd"
            mu = compensation.momentum(momentum, staleness, self.stage, kind=kind)
            if "betas" in group:
                group["betas"] = (mu, group["betas"][1])
            elif "momentum" in group:
                group["momentum"] = mu


class EdgeStep(Protocol):
    """How compensated edge gradients become edge-stage steps (a compensation's strategy).

    The master sets the stage's learning rate and momentum for each gradient's staleness,
    compensates it, and hands it here; what it gets back is how many edge-stage steps were
    taken (0 while a strategy gathers gradients it has not stepped yet).
    """

    @property
    def gathered(self) -> int:
        """Gradients applied but not yet in the weights (0: the weights hold every one)."""
        ...

    def apply(self, grads: Mapping[str, Tensor], staleness: int, edge_key: str) -> int:
        """One compensated gradient of edge ``edge_key``; the steps taken (0 or 1)."""
        ...

    def resize(self, edges: int) -> None:
        """The edges in session changed (≥ 1)."""
        ...

    def flush(self, *, only_if_full: bool) -> int:
        """Step on what is gathered (only a full batch if ``only_if_full``); steps taken."""
        ...

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The strategy's state for a checkpoint: tensors and JSON metadata."""
        ...

    def load(self, meta: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> None:
        """Its state back from a checkpoint's (`state`); `TrainingError` if it does not fit."""
        ...


class PlainEdgeStep:
    """One edge-stage step per gradient, with the stage's one optimizer state."""

    gathered = 0

    def __init__(
        self, part: PlainStep, stage: StageOptimizer, params: Mapping[str, Tensor]
    ) -> None:
        self.stage = stage
        self.params = params

    @staticmethod
    def held_by(meta: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> str | None:
        """What of this strategy's state a checkpoint holds (the plain step keeps none)."""
        return None

    def apply(self, grads: Mapping[str, Tensor], staleness: int, edge_key: str) -> int:
        for name, param in self.params.items():
            param.grad = grads[name].clone()
        self.stage.optimizer.step()
        self.stage.optimizer.zero_grad(set_to_none=True)
        return 1

    def resize(self, edges: int) -> None:
        pass

    def flush(self, *, only_if_full: bool) -> int:
        return 0

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        return {}, {}

    def load(self, meta: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> None:
        pass
