"""Staleness compensation: how the master turns a stale edge gradient into the one it applies.

SPEC step 4. A gradient ``g`` was taken at the edge-stage weights of master version ``v``
(``w_then``) and is applied when the master holds ``w_now``, ``staleness`` edge-stage updates
later. Each compensation is a small, stateless-by-default object (data, like the modes); the
master calls :meth:`Compensation.edge_gradient` per tensor and scales the step by
:meth:`Compensation.lr_scale`. Every compensation reduces to the plain update at staleness 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor

from simultrain.shared.errors import ConfigError

__all__ = [
    "Compensation",
    "DCASGD",
    "Forecast",
    "NoCompensation",
    "StalenessLR",
    "compensation_from_name",
]


@runtime_checkable
class Compensation(Protocol):
    name: str

    def edge_gradient(self, grad: Tensor, w_now: Tensor, w_then: Tensor, staleness: int) -> Tensor:
        """The gradient to apply at ``w_now`` given ``grad`` taken at ``w_then``."""
        ...

    def lr_scale(self, staleness: int) -> float:
        """Multiplier on the learning rate for an update of this staleness."""
        ...


@dataclass(frozen=True, slots=True)
class NoCompensation:
    """Apply the stale gradient as it is (the paper's "no forecast" ablation, α = 0)."""

    name: str = "none"

    def edge_gradient(self, grad: Tensor, w_now: Tensor, w_then: Tensor, staleness: int) -> Tensor:
        return grad

    def lr_scale(self, staleness: int) -> float:
        return 1.0


@dataclass(frozen=True, slots=True)
class Forecast:
    """The paper's first-order gradient forecast with the Hessian taken as ``αI``.

    ``g̃ = g + α·(w_c − w_c@v)`` — SimulTrain paper, eq. for ∇̃ℓ_k (SPEC step 4): a Taylor
    step from the weights the gradient was taken at to the master's current weights.
    """

    alpha: float = 0.5
    name: str = "forecast"

    def edge_gradient(self, grad: Tensor, w_now: Tensor, w_then: Tensor, staleness: int) -> Tensor:
        if staleness == 0 or self.alpha == 0.0:
            return grad
        return grad + self.alpha * (w_now - w_then)

    def lr_scale(self, staleness: int) -> float:
        return 1.0


@dataclass(frozen=True, slots=True)
class DCASGD:
    """Delay-compensated ASGD (Zheng et al., ICML 2017), diagonal Hessian approximation.

    ``g̃ = g + λ·g⊙g⊙(w_now − w_then)``: the outer product ``g gᵀ`` approximates the Hessian
    (it is the Fisher information for a log-likelihood loss); only its diagonal is kept.
    """

    lam: float = 2.0
    name: str = "dcasgd"

    def edge_gradient(self, grad: Tensor, w_now: Tensor, w_then: Tensor, staleness: int) -> Tensor:
        if staleness == 0 or self.lam == 0.0:
            return grad
        return grad + self.lam * grad * grad * (w_now - w_then)

    def lr_scale(self, staleness: int) -> float:
        return 1.0


@dataclass(frozen=True, slots=True)
class StalenessLR:
    """Learning rate divided by ``1 + staleness`` (Zhang et al., IJCAI 2016, "staleness-aware")."""

    name: str = "staleness-lr"

    def edge_gradient(self, grad: Tensor, w_now: Tensor, w_then: Tensor, staleness: int) -> Tensor:
        return grad

    def lr_scale(self, staleness: int) -> float:
        return 1.0 / (1.0 + max(staleness, 0))


def compensation_from_name(name: str, *, alpha: float = 0.5, lam: float = 2.0) -> Compensation:
    """Build a compensation from its configuration name."""
    table: dict[str, Compensation] = {
        "none": NoCompensation(),
        "forecast": Forecast(alpha) if alpha != 0.0 else NoCompensation(),
        "dcasgd": DCASGD(lam),
        "staleness-lr": StalenessLR(),
    }
    try:
        return table[name]
    except KeyError:
        raise ConfigError(
            f"unknown compensation {name!r}; choose one of {sorted(table)}"
        ) from None

