"""Staleness compensation: how the master turns stale work into the update it applies.

SPEC step 4 and "Pilot findings". A gradient ``g`` was taken at the edge-stage weights of
master version ``v`` (``w_then``) and is applied when the master holds ``w_now``,
``staleness`` (τ) edge-stage updates later. A compensation is a small object (data, like the
modes) with nine hooks, each of which is the plain update at τ = 0 (and with one edge):

- :meth:`~Compensation.edge_gradients` — the gradient to apply at ``w_now`` (forecast,
  DC-ASGD, their adaptive variants); called by the master only when τ > 0;
- :meth:`~Compensation.lr_scale` — a multiplier on a stage's learning rate (staleness-aware
  learning rate);
- :meth:`~Compensation.momentum` — a stage's momentum (SGD) or β₁ (Adam) given τ
  (delay-matched momentum);
- :meth:`~Compensation.prediction_horizon` — how many edge-stage updates ahead the weights
  the cloud sends to the edge are extrapolated (weight prediction, SpecTrain / PipeMare), and
  :meth:`~Compensation.prediction_span` — over how many past updates the velocity it
  extrapolates along is averaged (1: the last update; the staleness: a look-ahead);
- :meth:`~Compensation.edge_batch` — how many edge gradients, from a fleet of E edges, the
  master averages into one edge-stage step (1: a step per gradient), and
  :meth:`~Compensation.batch_lr_scale` — the multiplier on that step's learning rate;
- :meth:`~Compensation.per_edge_momentum` — whether the master keeps one edge-stage momentum
  (SGD's buffer, Adam's first moment) per edge, and for how many edges (DANA), and
  :meth:`~Compensation.momentum_lookahead` — how far along the sum of those momenta the
  weights sent to the edges look ahead.

``a+b`` composes compensations (:class:`Combined`); ``name:key=value`` sets a parameter, as in
``forecast:alpha=0.2`` or ``delay-momentum:stages=both``. :func:`compensation_from_name`
builds them from the strings a run configuration carries.

The default (``RunConfig.compensation``) is ``delay-beta1``: Adam's β₁ on the cloud stage
lowered with τ. Why, and what every other one measured, is in ``docs/STALENESS.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol, cast, runtime_checkable

import torch
from torch import Tensor

from simultrain.shared.errors import ConfigError
from simultrain.shared.training.schedule import check_alpha

__all__ = [
    "COMPENSATIONS",
    "DCASGD",
    "AdaptiveDCASGD",
    "AdaptiveForecast",
    "Combined",
    "Compensation",
    "Dana",
    "DelayMomentum",
    "FleetBatch",
    "Forecast",
    "LookAhead",
    "NoCompensation",
    "StalenessLR",
    "WeightPrediction",
    "compensation_from_name",
    "delay_matched_momentum",
]

Stage = Literal["edge", "cloud"]
OptimizerKind = Literal["sgd", "adam"]


@runtime_checkable
class Compensation(Protocol):
    @property
    def name(self) -> str:
        """The configuration name (``compensation_from_name`` builds it back)."""
        ...

    def edge_gradient(self, grad: Tensor, w_now: Tensor, w_then: Tensor, staleness: int) -> Tensor:
        """The gradient to apply at ``w_now`` given ``grad`` taken at ``w_then`` (one tensor)."""
        ...

    def edge_gradients(
        self,
        grads: Mapping[str, Tensor],
        w_now: Mapping[str, Tensor],
        w_then: Mapping[str, Tensor],
        staleness: int,
    ) -> dict[str, Tensor]:
        """:meth:`edge_gradient` for every tensor of the edge stage, by name."""
        ...

    def lr_scale(self, staleness: int, stage: Stage = "edge") -> float:
        """Multiplier on ``stage``'s learning rate for an update of this staleness."""
        ...

    def momentum(
        self, base: float, staleness: int, stage: Stage = "edge", *, kind: OptimizerKind = "sgd"
    ) -> float:
        """``stage``'s momentum (``kind`` sgd) or β₁ (adam) when its updates are τ late."""
        ...

    def prediction_horizon(self, staleness: int) -> float:
        """Edge-stage updates to extrapolate the weights sent to the edge by (0: none)."""
        ...

    def prediction_span(self, staleness: int) -> int:
        """Past edge-stage updates the extrapolation's velocity is averaged over (≥ 1)."""
        ...

    def edge_batch(self, edges: int) -> int:
        """Edge gradients averaged into one edge-stage step with ``edges`` in session (≥ 1)."""
        ...

    def batch_lr_scale(self, gradients: int) -> float:
        """Multiplier on the edge stage's learning rate for a step that averages
        ``gradients`` edge gradients."""
        ...

    def per_edge_momentum(self) -> int:
        """0: one edge-stage optimizer state (the plain update); n > 0: one momentum per edge,
        for at most the n edges most recently updated."""
        ...

    def momentum_lookahead(self, staleness: int) -> float:
        """Scale of the look-ahead along the per-edge momenta sent to the edge (0: none)."""
        ...


class _Plain:
    """Every hook as the plain update; compensations override the ones they change."""

    __slots__ = ()

    def edge_gradient(self, grad: Tensor, w_now: Tensor, w_then: Tensor, staleness: int) -> Tensor:
        return grad

    def edge_gradients(
        self,
        grads: Mapping[str, Tensor],
        w_now: Mapping[str, Tensor],
        w_then: Mapping[str, Tensor],
        staleness: int,
    ) -> dict[str, Tensor]:
        return {n: self.edge_gradient(g, w_now[n], w_then[n], staleness) for n, g in grads.items()}

    def lr_scale(self, staleness: int, stage: Stage = "edge") -> float:
        return 1.0

    def momentum(
        self, base: float, staleness: int, stage: Stage = "edge", *, kind: OptimizerKind = "sgd"
    ) -> float:
        return base

    def prediction_horizon(self, staleness: int) -> float:
        return 0.0

    def prediction_span(self, staleness: int) -> int:
        return 1

    def edge_batch(self, edges: int) -> int:
        return 1

    def batch_lr_scale(self, gradients: int) -> float:
        return 1.0

    def per_edge_momentum(self) -> int:
        return 0

    def momentum_lookahead(self, staleness: int) -> float:
        return 0.0


@dataclass(frozen=True, slots=True)
class NoCompensation(_Plain):
    """Apply the stale gradient as it is (the paper's "no forecast" ablation, α = 0)."""

    name: str = "none"


@dataclass(frozen=True, slots=True)
class Forecast(_Plain):
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


@dataclass(frozen=True, slots=True)
class AdaptiveForecast(_Plain):
    """The paper's forecast with α learned online: the secant curvature along the updates.

    The paper's future work ("α learned/adaptive"). The forecast takes the Hessian as ``αI``;
    the best such α for the directions the weights actually move in is the Rayleigh quotient
    ``Δwᵀ H Δw / Δwᵀ Δw``. Two successive edge gradients ``g_k, g_{k−1}`` taken at
    ``w_k, w_{k−1}`` give its secant estimate (the Barzilai–Borwein step, 1988) per tensor::

        num ← ρ·num + ⟨g_k − g_{k−1}, w_k − w_{k−1}⟩
        den ← ρ·den + ⟨w_k − w_{k−1}, w_k − w_{k−1}⟩
        α̂   = clip(num / den, 0, α_max),     g̃ = g + α̂·(w_now − w_then)

    Minibatch noise in ``g_k − g_{k−1}`` is uncorrelated with ``Δw`` and averages out of the
    running sums (ρ = 0.99: about 100 gradients). α̂ stays 0 until two gradients were seen, and
    a negative curvature estimate turns the forecast off rather than reversing it. Stateful:
    one instance per master.
    """

    alpha_max: float = 10.0
    decay: float = 0.99
    name: str = "forecast-adaptive"
    _state: dict[str, list[float | Tensor]] = field(default_factory=dict, repr=False)

    def alpha(self, name: str) -> float:
        """The current estimate of α for tensor ``name``."""
        state = self._state.get(name)
        if state is None:
            return 0.0
        num, den = float(state[0]), float(state[1])
        if den <= 0.0 or not math.isfinite(num / den):
            return 0.0
        return min(max(num / den, 0.0), self.alpha_max)

    def observe(self, name: str, grad: Tensor, w_then: Tensor) -> None:
        """Fold one gradient, taken at ``w_then``, into the secant estimate of ``name``."""
        state = self._state.get(name)
        if state is None:
            self._state[name] = [0.0, 0.0, grad.detach().clone(), w_then.detach().clone()]
            return
        num, den, g_prev, w_prev = state
        assert isinstance(g_prev, Tensor) and isinstance(w_prev, Tensor)
        dw = (w_then - w_prev).double()
        dg = (grad - g_prev).double()
        state[0] = self.decay * float(num) + float((dg * dw).sum())
        state[1] = self.decay * float(den) + float((dw * dw).sum())
        state[2], state[3] = grad.detach().clone(), w_then.detach().clone()

    def edge_gradients(
        self,
        grads: Mapping[str, Tensor],
        w_now: Mapping[str, Tensor],
        w_then: Mapping[str, Tensor],
        staleness: int,
    ) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for n, g in grads.items():
            self.observe(n, g, w_then[n])
            alpha = self.alpha(n)
            out[n] = g if staleness == 0 or alpha == 0.0 else g + alpha * (w_now[n] - w_then[n])
        return out

    def edge_gradient(self, grad: Tensor, w_now: Tensor, w_then: Tensor, staleness: int) -> Tensor:
        return self.edge_gradients({"": grad}, {"": w_now}, {"": w_then}, staleness)[""]


@dataclass(frozen=True, slots=True)
class DCASGD(_Plain):
    """Delay-compensated ASGD (Zheng et al., ICML 2017, eq. 9), diagonal Hessian approximation.

    ``g̃ = g + λ·g⊙g⊙(w_now − w_then)``: the outer product ``g gᵀ`` approximates the Hessian
    (it is the Fisher information for a log-likelihood loss); only its diagonal is kept.
    """

    lam: float = 2.0
    name: str = "dcasgd"

    def edge_gradient(self, grad: Tensor, w_now: Tensor, w_then: Tensor, staleness: int) -> Tensor:
        if staleness == 0 or self.lam == 0.0:
            return grad
        return grad + self.lam * grad * grad * (w_now - w_then)


@dataclass(frozen=True, slots=True)
class AdaptiveDCASGD(_Plain):
    """DC-ASGD-a (Zheng et al., ICML 2017, Algorithm 2 and eq. 12): λ normalised per element.

    ``MS ← m·MS + (1−m)·g⊙g``, ``g̃ = g + (λ/√(MS + ε))⊙g⊙g⊙(w_now − w_then)``, so the
    correction is scale-free: ``g⊙g/√MS`` is of the order of ``|g|``. Stateful per tensor.
    """

    lam: float = 2.0
    m: float = 0.95
    eps: float = 1e-7
    name: str = "dcasgd-a"
    _mean_square: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def edge_gradients(
        self,
        grads: Mapping[str, Tensor],
        w_now: Mapping[str, Tensor],
        w_then: Mapping[str, Tensor],
        staleness: int,
    ) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for n, g in grads.items():
            ms = self._mean_square.get(n)
            ms = (1.0 - self.m) * g * g if ms is None else self.m * ms + (1.0 - self.m) * g * g
            self._mean_square[n] = ms
            if staleness == 0 or self.lam == 0.0:
                out[n] = g
            else:
                lam = self.lam / torch.sqrt(ms + self.eps)
                out[n] = g + lam * g * g * (w_now[n] - w_then[n])
        return out

    def edge_gradient(self, grad: Tensor, w_now: Tensor, w_then: Tensor, staleness: int) -> Tensor:
        return self.edge_gradients({"": grad}, {"": w_now}, {"": w_then}, staleness)[""]


@dataclass(frozen=True, slots=True)
class StalenessLR(_Plain):
    """Edge-stage learning rate divided by ``(1 + τ)^p`` (Zhang et al., IJCAI 2016, p = 1).

    Only the edge stage is late; the cloud stage's gradient is fresh and keeps its rate.
    """

    power: float = 1.0
    name: str = "staleness-lr"

    def lr_scale(self, staleness: int, stage: Stage = "edge") -> float:
        if stage != "edge" or staleness <= 0:
            return 1.0
        return float((1.0 + staleness) ** -self.power)


def delay_matched_momentum(base: float, staleness: int, *, cap: float = 1.0) -> float:
    """Explicit momentum that keeps the *total* momentum at ``base`` under a delay of τ.

    "Asynchrony begets momentum" (Mitliagkas et al., 2016, Theorem 3): a delay of τ updates
    acts like an implicit momentum ``μ_τ = 1 − 1/(τ+1)``. Composing two momenta multiplies
    their ``1 − μ`` (the fraction of a new gradient that enters the step at once), so
    ``1 − μ_total = (1 − μ')/(τ+1)``; holding ``μ_total = base`` gives
    ``μ' = max(0, 1 − (τ+1)·(1 − base))``, and never more than ``cap`` once τ > 0.
    For base 0.9 (no cap): τ=0 → 0.9, 2 → 0.7, 4 → 0.5, 8 → 0.1.
    """
    if staleness <= 0 or base <= 0.0:
        return base
    return min(cap, base, max(0.0, 1.0 - (staleness + 1) * (1.0 - base)))


@dataclass(frozen=True, slots=True)
class DelayMomentum(_Plain):
    """Staleness-aware momentum: :func:`delay_matched_momentum` of τ, on the cloud stage.

    The pilot: a cloud stage updated at once with momentum 0.9 keeps over-correcting for an
    edge that answers τ updates late, and lowering its momentum to 0.5 brought window 4 back
    to parity. The delay-matched rule gives exactly 0.5 at τ = 4 and goes on lowering it as
    the window grows. The cloud stage's own gradient is fresh, but it sits in a feedback loop
    whose delay is the edge's staleness: what it learns reaches the edge's weights, and so its
    own inputs, τ updates later; so the rule uses the edge stage's observed staleness.

    ``cap`` bounds the momentum of a stale stage from above: measured, window 2 needs the
    cloud's momentum at 0.5 as much as window 4 does (the rule alone gives 0.7 there and
    loses 3 points; docs/STALENESS.md), so the default caps it at 0.5 — the pilot's value.
    From τ = 4 on the rule is below the cap and decides.

    ``stages`` says where the rule applies: ``cloud`` (the default), ``edge`` or ``both``.
    Applied to the edge stage too it slows the edge's learning more than the delay hurts it
    (docs/STALENESS.md has the numbers), so the default leaves the edge's momentum alone.

    ``optimizers``: ``all`` (SGD's momentum and Adam's β₁) or ``adam`` (β₁ only; registered
    as ``delay-beta1``, the run default). Lowering SGD's momentum also lowers its step
    ``η/(1−μ)``, which rescued IMU but starved the MNIST cloud stage.
    """

    stages: Literal["both", "edge", "cloud"] = "cloud"
    cap: float = 0.5
    optimizers: Literal["all", "adam"] = "all"
    name: str = "delay-momentum"

    def __post_init__(self) -> None:
        if self.stages not in ("both", "edge", "cloud"):
            raise ConfigError(f"delay-momentum stages must be both, edge or cloud: {self.stages!r}")
        if self.optimizers not in ("all", "adam"):
            raise ConfigError(f"delay-momentum optimizers must be all or adam: {self.optimizers!r}")
        if not 0.0 <= self.cap <= 1.0:
            raise ConfigError(f"delay-momentum cap must be in [0, 1], got {self.cap}")

    def momentum(
        self, base: float, staleness: int, stage: Stage = "edge", *, kind: OptimizerKind = "sgd"
    ) -> float:
        if self.stages not in ("both", stage) or (self.optimizers == "adam" and kind != "adam"):
            return base
        return delay_matched_momentum(base, staleness, cap=self.cap)


def _delay_beta1(**kwargs: Any) -> DelayMomentum:
    """The default: :class:`DelayMomentum` on Adam's β₁ only (docs/STALENESS.md, "Why").

    Adam's β₁ is pure inertia: its step is normalised, so lowering β₁ does not lower the step.
    SGD's momentum is inertia *and* step size (``η/(1−μ)``): lowering it rescued IMU and
    starved the MNIST cloud stage; keeping the step while lowering the inertia was unstable at
    window 8. So the default leaves SGD alone and ``delay-momentum`` opts SGD in.
    """
    return DelayMomentum(**{"optimizers": "adam", "name": "delay-beta1", **kwargs})


@dataclass(frozen=True, slots=True)
class WeightPrediction(_Plain):
    """The edge runs its forward at weights extrapolated to when its gradient will land.

    SpecTrain (Chen et al., 2018) and PipeMare (Yang et al., MLSys 2021): a gradient applied τ
    updates late should be *taken* at the weights the master will hold then,
    ``ŵ_{t+τ} ≈ w_t + s·τ·(w_t − w_{t−1})`` — the last edge-stage update is ``−η·v_t`` for
    momentum SGD (``v`` the momentum buffer) and the Adam step for Adam, both smoothed
    velocities. The cloud sends ``ŵ`` instead of ``w`` on the delta path; the gradient the
    edge returns is then applied as it is. ``scale`` = s (1 = full horizon).
    """

    scale: float = 1.0
    name: str = "predict"

    def prediction_horizon(self, staleness: int) -> float:
        return self.scale * staleness if staleness > 0 else 0.0


@dataclass(frozen=True, slots=True)
class LookAhead(_Plain):
    """The edge forwards at where the master will be: ``ŵ = w + s·(w − w_{−τ})``.

    A look-ahead for asynchronous pipelines, as DANA's (Hakimi et al., 2019: a worker is sent
    the master's weights moved on by the momentum the other workers' pending updates will
    add) and Nesterov-style asynchronous pipelines (Ajanthan et al., ICML 2025): the τ updates
    a gradient will miss are estimated by the τ updates just applied. :class:`WeightPrediction`
    extrapolates the *last* update τ times; with a fleet that update is one edge's gradient
    of one shard (non-IID), and τ is tens of updates, so it extrapolates noise. Averaging the
    velocity over the same τ updates it extrapolates (``(w − w_{−τ})/τ``, read from the
    master's history) moves the replica by the fleet's mean drift instead. ``scale`` = s.
    """

    scale: float = 1.0
    name: str = "lookahead"

    def prediction_horizon(self, staleness: int) -> float:
        return self.scale * staleness if staleness > 0 else 0.0

    def prediction_span(self, staleness: int) -> int:
        return max(staleness, 1)


@dataclass(frozen=True, slots=True)
class FleetBatch(_Plain):
    """Fleet-batched edge-stage updates: one edge-stage step per ``K`` edge gradients.

    With E edges the master steps the edge stage once per batch of *every* edge, so a
    gradient lands about E·(W+1) edge-stage updates late (docs/STALENESS.md, "A fleet"): the
    fleet multiplies the staleness, not the window. Averaging the gradients of ``K`` arrivals
    into one step — synchronous data parallelism over the fleet (Goyal et al., 2017), kept
    asynchronous across steps — brings that back to about W+1 steps, where one edge is at
    parity, while the cloud stage still steps on every batch. ``k`` = 0 (the default) takes
    K = the edges in session; ``lr_power`` = p scales the step's learning rate by ``K^p``
    (0: the mean's step; 0.5: the square-root scaling of a K-times larger batch, Krizhevsky
    2014; 1: the linear rule, Goyal et al.). The staleness each gradient reports is counted
    in edge-stage *steps*, so it falls with the batching; each gradient is still compensated
    (by the chain's other parts) at its own staleness before it joins the mean.
    """

    k: float = 0.0
    lr_power: float = 0.0
    name: str = "fleet-batch"

    def __post_init__(self) -> None:
        if self.k < 0 or self.k != int(self.k):
            raise ConfigError(f"fleet-batch k must be a whole number ≥ 0, got {self.k}")
        if not 0.0 <= self.lr_power <= 1.0:
            raise ConfigError(f"fleet-batch lr_power must be in [0, 1], got {self.lr_power}")

    def edge_batch(self, edges: int) -> int:
        return max(1, int(self.k) if self.k else edges)

    def batch_lr_scale(self, gradients: int) -> float:
        return float(gradients**self.lr_power) if gradients > 1 else 1.0


@dataclass(frozen=True, slots=True)
class Dana(_Plain):
    """DANA-Zero: one edge-stage momentum per edge, and edges sent the look-ahead position.

    Hakimi et al., "Taming Momentum in a Distributed Asynchronous Environment" (2019),
    DANA-Zero: the master keeps a momentum ``v_i`` per worker; a gradient from worker i
    updates only its own, ``v_i ← γ·v_i + g``, and the master steps ``θ ← θ − η·v_i``; a
    worker is sent ``θ̂ = θ − η·γ·Σ_j v_j``, where the master will be once every worker's
    next update has added its momentum, instead of ``θ``. One momentum shared by a fleet
    mixes the edges' non-IID gradients and carries each stale gradient into the next steps
    of every other edge; per edge, it only carries an edge's own gradients forward.

    For Adam (our form; docs/STALENESS.md, "Compensations"): one first moment per edge, the
    second moment and the step count shared, ``m_i ← β₁·m_i + (1−β₁)·g``,
    ``u ← β₂·u + (1−β₂)·g²``, ``θ ← θ − η·m̂_i/(√û + ε)`` with ``m̂_i = m_i/(1 − β₁^{n_i})``
    (``n_i`` the edge's own gradients: its moment is debiased by what it has seen) and
    ``û = u/(1 − β₂^t)``; the look-ahead is ``θ̂ = θ − η·β₁·Σ_j m̂_j/(√û + ε)``.

    The master does the arithmetic (``shared/training/dana.py``); this part only asks for
    it. ``lookahead`` scales the look-ahead (0: off, per-edge momenta only); it is applied
    only when gradients arrive late (τ > 0), so at window 0 with one edge — one momentum,
    no look-ahead — DANA is the plain update bit for bit. ``max_edges`` bounds the state:
    beyond it the least recently updated edge's momentum is dropped (an edge that leaves
    keeps its momentum for when it returns until then).
    """

    lookahead: float = 1.0
    max_edges: float = 1024.0
    name: str = "dana"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lookahead) and self.lookahead >= 0.0):
            raise ConfigError(f"dana lookahead must be a number ≥ 0, got {self.lookahead}")
        if self.max_edges < 1 or self.max_edges != int(self.max_edges):
            raise ConfigError(f"dana max_edges must be a whole number ≥ 1, got {self.max_edges}")

    def per_edge_momentum(self) -> int:
        return int(self.max_edges)

    def momentum_lookahead(self, staleness: int) -> float:
        return self.lookahead if staleness > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Combined(_Plain):
    """Several compensations at once: gradients chained, lr scales and momenta composed,
    the longest prediction horizon."""

    parts: tuple[Compensation, ...] = ()
    name: str = "combined"

    def __post_init__(self) -> None:
        # Per-edge momenta step the edge stage once per gradient, with that edge's momentum:
        # a step on the mean of several edges' gradients has no one edge's momentum, and a
        # second look-ahead would count the same future updates twice.
        if any(p.per_edge_momentum() for p in self.parts):
            if any(p.edge_batch(2) > 1 for p in self.parts):
                raise ConfigError("dana and fleet-batch do not compose: a fleet batch has no edge")
            if any(p.momentum_lookahead(1) for p in self.parts) and any(
                p.prediction_horizon(1) for p in self.parts
            ):
                raise ConfigError(
                    "dana's look-ahead and predict/lookahead do not compose (two look-aheads);"
                    " use dana:lookahead=0 to keep only its per-edge momenta"
                )

    def edge_gradients(
        self,
        grads: Mapping[str, Tensor],
        w_now: Mapping[str, Tensor],
        w_then: Mapping[str, Tensor],
        staleness: int,
    ) -> dict[str, Tensor]:
        out = dict(grads)
        for part in self.parts:
            out = part.edge_gradients(out, w_now, w_then, staleness)
        return out

    def edge_gradient(self, grad: Tensor, w_now: Tensor, w_then: Tensor, staleness: int) -> Tensor:
        for part in self.parts:
            grad = part.edge_gradient(grad, w_now, w_then, staleness)
        return grad

    def lr_scale(self, staleness: int, stage: Stage = "edge") -> float:
        return math.prod(p.lr_scale(staleness, stage) for p in self.parts)

    def momentum(
        self, base: float, staleness: int, stage: Stage = "edge", *, kind: OptimizerKind = "sgd"
    ) -> float:
        for part in self.parts:
            base = part.momentum(base, staleness, stage, kind=kind)
        return base

    def prediction_horizon(self, staleness: int) -> float:
        return max((p.prediction_horizon(staleness) for p in self.parts), default=0.0)

    def prediction_span(self, staleness: int) -> int:
        """The span of the part with the longest horizon (the one that predicts)."""
        if not self.parts:
            return 1
        part = max(self.parts, key=lambda p: p.prediction_horizon(staleness))
        return part.prediction_span(staleness)

    def edge_batch(self, edges: int) -> int:
        return max((p.edge_batch(edges) for p in self.parts), default=1)

    def batch_lr_scale(self, gradients: int) -> float:
        return math.prod(p.batch_lr_scale(gradients) for p in self.parts)

    def per_edge_momentum(self) -> int:
        return max((p.per_edge_momentum() for p in self.parts), default=0)

    def momentum_lookahead(self, staleness: int) -> float:
        return max((p.momentum_lookahead(staleness) for p in self.parts), default=0.0)


COMPENSATIONS: dict[str, Callable[..., Compensation]] = {
    "none": NoCompensation,
    "forecast": Forecast,
    "forecast-adaptive": AdaptiveForecast,
    "dcasgd": DCASGD,
    "dcasgd-a": AdaptiveDCASGD,
    "staleness-lr": StalenessLR,
    "delay-momentum": DelayMomentum,
    "delay-beta1": _delay_beta1,
    "predict": WeightPrediction,
    "lookahead": LookAhead,
    "fleet-batch": FleetBatch,
    "dana": Dana,
}
"""Every compensation by its configuration name."""


def _parse_part(spec: str, *, alpha: float | None, lam: float) -> Compensation | None:
    base, _, params = spec.strip().partition(":")
    factory = COMPENSATIONS.get(base)
    if factory is None:
        raise ConfigError(
            f"unknown compensation {base!r}; choose one of {sorted(COMPENSATIONS)}, joined with '+'"
        )
    kwargs: dict[str, object] = {}
    if base == "forecast" and alpha is not None:
        kwargs["alpha"] = alpha
    elif base in ("dcasgd", "dcasgd-a"):
        kwargs["lam"] = lam
    known = {
        f.name: f for f in fields(cast(Any, DelayMomentum if base == "delay-beta1" else factory))
    }
    for item in filter(None, params.split(",")):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in known or key == "name" or key.startswith("_"):
            raise ConfigError(f"compensation {base!r} takes no parameter {item!r}")
        default = known[key].default
        try:
            kwargs[key] = raw.strip() if isinstance(default, str) else float(raw)
        except ValueError as exc:
            raise ConfigError(f"compensation {base!r}: {key} must be a number") from exc
    if base == "forecast" and kwargs.get("alpha", Forecast().alpha) == 0.0:
        return None  # α = 0 is no forecast (the paper's ablation)
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"compensation {spec!r}: {exc}") from exc


def compensation_from_name(
    name: str, *, alpha: float | None = None, lam: float = 2.0
) -> Compensation:
    """Build a compensation from its configuration name, e.g. ``delay-momentum+predict``.

    ``alpha`` is the run's forecast coefficient (RunConfig.alpha): the α of the ``forecast``
    part (None: the part's own, 0.5 unless ``forecast:alpha=…``), and α = 0 removes that part
    (the paper's "no forecast" ablation). An α for a chain without a ``forecast`` part, or
    one the part already sets, is refused (`check_alpha`): it would change nothing.
    """
    check_alpha(name, alpha)
    parts = [p for p in (_parse_part(s, alpha=alpha, lam=lam) for s in name.split("+")) if p]
    if not parts:
        return NoCompensation()
    if len(parts) == 1:
        return parts[0]
    return Combined(tuple(parts), name=name)
