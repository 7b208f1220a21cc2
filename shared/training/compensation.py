"""Staleness compensation: how the master turns stale work into the update it applies.

A gradient ``g`` was taken at the edge-stage weights of master version ``v`` (``w_then``) and
is applied when the master holds ``w_now``, ``staleness`` (τ) edge-stage steps later (the
SimulTrain paper's gradient forecast; docs/STALENESS.md measures every part below). A
compensation is a typed composition of four kinds of part, each of which is the plain update
at τ = 0 and with one edge:

- **gradient corrections**, chained in order — the gradient to apply at ``w_now``:
  ``forecast``, ``forecast-adaptive``, ``dcasgd``, ``dcasgd-a``;
- **step rules** — a stage's learning rate (their scales multiply: ``staleness-lr``) and its
  momentum or Adam's β₁ (applied in order: ``delay-momentum``, ``delay-beta1``);
- one **edge-step strategy** — how compensated gradients become edge-stage steps: the plain
  step, ``fleet-batch`` (one step per K gradients, shared/training/fleet_batch.py) or
  ``dana`` (one momentum per edge, shared/training/dana.py);
- one **replica position** — where the weights sent to the edges stand: the master's own,
  ``predict`` and ``lookahead`` (extrapolated along its history), or ``dana``'s look-ahead
  along the per-edge momenta.

A run names its compensation as a chain, parts joined by ``+`` with ``name:key=value``
parameters (``delay-beta1+forecast:alpha=0.2``); :func:`parse_compensation` builds the
composition. The strategy and the position are choose-one slots, so what cannot be
combined cannot be written: two strategies (a fleet batch has no one edge whose momentum
it would use) or two positions (two look-aheads count the same future updates twice) are
refused with the reason. ``dana`` fills the strategy and, unless ``lookahead=0``, the
position.

This module imports no torch: the parts' arithmetic runs on the tensors they are given, and
a configuration is validated without training anything. Parts are frozen parameters; the
two corrections that learn from the gradients they see keep that state in a
:meth:`corrector` made per master.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, Protocol

from simultrain.shared.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "DCASGD",
    "PARTS",
    "AdaptiveDCASGD",
    "AdaptiveForecast",
    "Compensation",
    "Corrector",
    "Current",
    "Dana",
    "DanaLookAhead",
    "DelayMomentum",
    "FleetBatch",
    "Forecast",
    "HistoryEntry",
    "LookAhead",
    "PlainStep",
    "Predict",
    "StalenessLR",
    "check_alpha",
    "delay_matched_momentum",
    "forecast_parts",
    "parse_compensation",
    "without_forecast",
]

Stage = Literal["edge", "cloud"]
OptimizerKind = Literal["sgd", "adam"]
Weights = Mapping[str, "Tensor"]


# --- gradient corrections: g̃ = c_n(… c_1(g)) ---------------------------------------------


class Corrector(Protocol):
    """A gradient correction as one master runs it (with its state, if it learns)."""

    def correct(
        self, grads: Weights, w_now: Weights, w_then: Weights, staleness: int
    ) -> dict[str, Tensor]:
        """The gradient to apply at ``w_now`` given ``grads`` taken at ``w_then``, by name.

        The master calls it only for τ > 0 (at τ = 0 every correction is the identity)."""
        ...


@dataclass(frozen=True, slots=True)
class Forecast:
    """The paper's first-order gradient forecast with the Hessian taken as ``αI``.

    ``g̃ = g + α·(w_c − w_c@v)`` — SimulTrain paper, eq. for ∇̃ℓ_k: a Taylor step from the
    weights the gradient was taken at to the master's current weights.
    """

    alpha: float = 0.5

    def corrector(self) -> Corrector:
        return self

    def correct(
        self, grads: Weights, w_now: Weights, w_then: Weights, staleness: int
    ) -> dict[str, Tensor]:
        if staleness == 0 or self.alpha == 0.0:
            return dict(grads)
        return {n: g + self.alpha * (w_now[n] - w_then[n]) for n, g in grads.items()}


@dataclass(frozen=True, slots=True)
class AdaptiveForecast:
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
    a negative curvature estimate turns the forecast off rather than reversing it.
    """

    alpha_max: float = 10.0
    decay: float = 0.99

    def corrector(self) -> AdaptiveForecastState:
        return AdaptiveForecastState(self)


class AdaptiveForecastState:
    """One master's running secant estimates for :class:`AdaptiveForecast`."""

    def __init__(self, part: AdaptiveForecast) -> None:
        self.part = part
        self._state: dict[str, list[float | Tensor]] = {}

    def alpha(self, name: str) -> float:
        """The current estimate of α for tensor ``name``."""
        state = self._state.get(name)
        if state is None:
            return 0.0
        num, den = float(state[0]), float(state[1])
        if den <= 0.0 or not math.isfinite(num / den):
            return 0.0
        return min(max(num / den, 0.0), self.part.alpha_max)

    def observe(self, name: str, grad: Tensor, w_then: Tensor) -> None:
        """Fold one gradient, taken at ``w_then``, into the secant estimate of ``name``."""
        state = self._state.get(name)
        if state is None:
            self._state[name] = [0.0, 0.0, grad.detach().clone(), w_then.detach().clone()]
            return
        num, den, g_prev, w_prev = state
        assert not isinstance(g_prev, float) and not isinstance(w_prev, float)
        dw = (w_then - w_prev).double()
        dg = (grad - g_prev).double()
        state[0] = self.part.decay * float(num) + float((dg * dw).sum())
        state[1] = self.part.decay * float(den) + float((dw * dw).sum())
        state[2], state[3] = grad.detach().clone(), w_then.detach().clone()

    def correct(
        self, grads: Weights, w_now: Weights, w_then: Weights, staleness: int
    ) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for n, g in grads.items():
            self.observe(n, g, w_then[n])
            alpha = self.alpha(n)
            out[n] = g if staleness == 0 or alpha == 0.0 else g + alpha * (w_now[n] - w_then[n])
        return out


@dataclass(frozen=True, slots=True)
class DCASGD:
    """Delay-compensated ASGD (Zheng et al., ICML 2017, eq. 9), diagonal Hessian approximation.

    ``g̃ = g + λ·g⊙g⊙(w_now − w_then)``: the outer product ``g gᵀ`` approximates the Hessian
    (it is the Fisher information for a log-likelihood loss); only its diagonal is kept.
    """

    lam: float = 2.0

    def corrector(self) -> Corrector:
        return self

    def correct(
        self, grads: Weights, w_now: Weights, w_then: Weights, staleness: int
    ) -> dict[str, Tensor]:
        if staleness == 0 or self.lam == 0.0:
            return dict(grads)
        return {n: g + self.lam * g * g * (w_now[n] - w_then[n]) for n, g in grads.items()}


@dataclass(frozen=True, slots=True)
class AdaptiveDCASGD:
    """DC-ASGD-a (Zheng et al., ICML 2017, Algorithm 2 and eq. 12): λ normalised per element.

    ``MS ← m·MS + (1−m)·g⊙g``, ``g̃ = g + (λ/√(MS + ε))⊙g⊙g⊙(w_now − w_then)``, so the
    correction is scale-free: ``g⊙g/√MS`` is of the order of ``|g|``.
    """

    lam: float = 2.0
    m: float = 0.95
    eps: float = 1e-7

    def corrector(self) -> AdaptiveDCASGDState:
        return AdaptiveDCASGDState(self)


class AdaptiveDCASGDState:
    """One master's running mean squares for :class:`AdaptiveDCASGD`."""

    def __init__(self, part: AdaptiveDCASGD) -> None:
        self.part = part
        self._mean_square: dict[str, Tensor] = {}

    def correct(
        self, grads: Weights, w_now: Weights, w_then: Weights, staleness: int
    ) -> dict[str, Tensor]:
        part = self.part
        out: dict[str, Tensor] = {}
        for n, g in grads.items():
            ms = self._mean_square.get(n)
            ms = (1.0 - part.m) * g * g if ms is None else part.m * ms + (1.0 - part.m) * g * g
            self._mean_square[n] = ms
            if staleness == 0 or part.lam == 0.0:
                out[n] = g
            else:
                lam = part.lam / (ms + part.eps).sqrt()
                out[n] = g + lam * g * g * (w_now[n] - w_then[n])
        return out


GradientCorrection = Forecast | AdaptiveForecast | DCASGD | AdaptiveDCASGD


# --- step rules: a stage's learning rate and momentum for an update τ late ----------------


@dataclass(frozen=True, slots=True)
class StalenessLR:
    """Edge-stage learning rate divided by ``(1 + τ)^p`` (Zhang et al., IJCAI 2016, p = 1).

    Only the edge stage is late; the cloud stage's gradient is fresh and keeps its rate.
    """

    power: float = 1.0

    def lr_scale(self, staleness: int, stage: Stage) -> float:
        if stage != "edge" or staleness <= 0:
            return 1.0
        return float((1.0 + staleness) ** -self.power)

    def momentum(self, base: float, staleness: int, stage: Stage, *, kind: OptimizerKind) -> float:
        return base


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
class DelayMomentum:
    """Staleness-aware momentum: :func:`delay_matched_momentum` of τ, on the cloud stage.

    A cloud stage updated at once with momentum 0.9 keeps over-correcting for an edge that
    answers τ updates late; lowering its momentum to 0.5 brought window 4 back to parity
    (docs/STALENESS.md). The delay-matched rule gives exactly 0.5 at τ = 4 and goes on
    lowering it as the window grows. The cloud stage's own gradient is fresh, but it sits in
    a feedback loop whose delay is the edge's staleness: what it learns reaches the edge's
    weights, and so its own inputs, τ updates later; so the rule uses the edge stage's
    observed staleness.

    ``cap`` bounds the momentum of a stale stage from above: measured, window 2 needs the
    cloud's momentum at 0.5 as much as window 4 does (the rule alone gives 0.7 there and
    loses 3 points; docs/STALENESS.md), so the default caps it at 0.5. From τ = 4 on the rule
    is below the cap and decides.

    ``stages`` says where the rule applies: ``cloud`` (the default), ``edge`` or ``both``.
    Applied to the edge stage too it slows the edge's learning more than the delay hurts it
    (docs/STALENESS.md has the numbers), so the default leaves the edge's momentum alone.

    ``optimizers``: ``all`` (SGD's momentum and Adam's β₁) or ``adam`` (β₁ only; the chain
    part ``delay-beta1``, the run default). Adam's β₁ is pure inertia: its step is
    normalised, so lowering β₁ does not lower the step. SGD's momentum is inertia *and* step
    size (``η/(1−μ)``): lowering it rescued IMU but starved the MNIST cloud stage, and keeping
    the step while lowering the inertia was unstable at window 8 (docs/STALENESS.md, "Why").
    """

    stages: Literal["both", "edge", "cloud"] = "cloud"
    cap: float = 0.5
    optimizers: Literal["all", "adam"] = "all"

    def __post_init__(self) -> None:
        if self.stages not in ("both", "edge", "cloud"):
            raise ConfigError(f"delay-momentum stages must be both, edge or cloud: {self.stages!r}")
        if self.optimizers not in ("all", "adam"):
            raise ConfigError(f"delay-momentum optimizers must be all or adam: {self.optimizers!r}")
        if not 0.0 <= self.cap <= 1.0:
            raise ConfigError(f"delay-momentum cap must be in [0, 1], got {self.cap}")

    def lr_scale(self, staleness: int, stage: Stage) -> float:
        return 1.0

    def momentum(self, base: float, staleness: int, stage: Stage, *, kind: OptimizerKind) -> float:
        if self.stages not in ("both", stage) or (self.optimizers == "adam" and kind != "adam"):
            return base
        return delay_matched_momentum(base, staleness, cap=self.cap)


StepRule = StalenessLR | DelayMomentum


# --- edge-step strategies (one per run) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlainStep:
    """One edge-stage step per edge gradient, with the stage's one optimizer state."""


@dataclass(frozen=True, slots=True)
class FleetBatch:
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
    (by the chain's corrections) at its own staleness before it joins the mean. The
    gathering is shared/training/fleet_batch.py.
    """

    k: float = 0.0
    lr_power: float = 0.0

    def __post_init__(self) -> None:
        if self.k < 0 or self.k != int(self.k):
            raise ConfigError(f"fleet-batch k must be a whole number ≥ 0, got {self.k}")
        if not 0.0 <= self.lr_power <= 1.0:
            raise ConfigError(f"fleet-batch lr_power must be in [0, 1], got {self.lr_power}")

    def edge_batch(self, edges: int) -> int:
        """Edge gradients averaged into one step with ``edges`` in session (≥ 1)."""
        return max(1, int(self.k) if self.k else edges)

    def batch_lr_scale(self, gradients: int) -> float:
        """Multiplier on the learning rate of a step that averages ``gradients`` gradients."""
        return float(gradients**self.lr_power) if gradients > 1 else 1.0


@dataclass(frozen=True, slots=True)
class Dana:
    """DANA-Zero's per-edge momenta: each edge's gradients step with that edge's own momentum.

    Hakimi et al., "Taming Momentum in a Distributed Asynchronous Environment" (2019): the
    master keeps a momentum ``v_i`` per worker; a gradient from worker i updates only its own,
    ``v_i ← γ·v_i + g``, and the master steps ``θ ← θ − η·v_i``. One momentum shared by a
    fleet mixes the edges' non-IID gradients and carries each stale gradient into the next
    steps of every other edge; per edge, it only carries an edge's own gradients forward.
    For Adam, one first moment per edge with the second moment shared (docs/STALENESS.md,
    "Compensations"). The arithmetic is shared/training/dana.py. With one edge the one
    momentum is the optimizer's and the step is the plain one, bit for bit.

    ``max_edges`` bounds the state: beyond it the least recently updated edge's momentum is
    dropped (an edge that leaves keeps its momentum for when it returns until then).
    """

    max_edges: float = 1024.0

    def __post_init__(self) -> None:
        if self.max_edges < 1 or self.max_edges != int(self.max_edges):
            raise ConfigError(f"dana max_edges must be a whole number ≥ 1, got {self.max_edges}")


EdgeStepStrategy = PlainStep | FleetBatch | Dana


# --- replica positions (one per run) ------------------------------------------------------


class HistoryEntry(Protocol):
    """One version of the master's edge stage, as its history keeps it."""

    @property
    def index(self) -> int:
        """How many edge-stage steps the master had taken by then."""
        ...

    @property
    def weights(self) -> Weights: ...


@dataclass(frozen=True, slots=True)
class Current:
    """The edges are sent the master's own weights."""

    def weights(
        self, history: Sequence[HistoryEntry], staleness: int, params: Collection[str]
    ) -> Weights:
        return history[-1].weights


def _extrapolate(
    history: Sequence[HistoryEntry], horizon: float, span: int, params: Collection[str]
) -> Weights:
    """The newest weights moved ``horizon`` steps on along the mean of the last ``span``
    steps, ``ŵ = w + h·(w − w_{−k})/k`` (fewer than ``k`` in the history: from the oldest
    entry there). Buffers (names not in ``params``) are never extrapolated."""
    current = history[-1].weights
    if horizon == 0.0 or len(history) < 2:
        return current
    newest = history[-1]
    # Entries newest first: one per edge-stage step (whole-model updates add one each).
    previous = next(
        (e for e in reversed(history) if e.index <= newest.index - span),
        history[0],
    )
    updates = newest.index - previous.index
    if updates < 1 or (span == 1 and updates != 1):
        return current  # no step to extrapolate along, or not one step apart
    rate = horizon / updates
    return {
        n: (t + rate * (t - previous.weights[n])) if n in params else t for n, t in current.items()
    }


@dataclass(frozen=True, slots=True)
class Predict:
    """The edge runs its forward at weights extrapolated to when its gradient will land.

    SpecTrain (Chen et al., 2018) and PipeMare (Yang et al., MLSys 2021): a gradient applied τ
    updates late should be *taken* at the weights the master will hold then,
    ``ŵ_{t+τ} ≈ w_t + s·τ·(w_t − w_{t−1})`` — the last edge-stage update is ``−η·v_t`` for
    momentum SGD (``v`` the momentum buffer) and the Adam step for Adam, both smoothed
    velocities. The cloud sends ``ŵ`` instead of ``w`` on the delta path; the gradient the
    edge returns is then applied as it is. ``scale`` = s (1 = full horizon).
    """

    scale: float = 1.0

    def weights(
        self, history: Sequence[HistoryEntry], staleness: int, params: Collection[str]
    ) -> Weights:
        horizon = self.scale * staleness if staleness > 0 else 0.0
        return _extrapolate(history, horizon, 1, params)


@dataclass(frozen=True, slots=True)
class LookAhead:
    """The edge forwards at where the master will be: ``ŵ = w + s·(w − w_{−τ})``.

    A look-ahead for asynchronous pipelines, as DANA's (Hakimi et al., 2019: a worker is sent
    the master's weights moved on by the momentum the other workers' pending updates will
    add) and Nesterov-style asynchronous pipelines (Ajanthan et al., ICML 2025): the τ updates
    a gradient will miss are estimated by the τ updates just applied. :class:`Predict`
    extrapolates the *last* update τ times; with a fleet that update is one edge's gradient
    of one shard (non-IID), and τ is tens of updates, so it extrapolates noise. Averaging the
    velocity over the same τ updates it extrapolates (``(w − w_{−τ})/τ``, read from the
    master's history) moves the replica by the fleet's mean drift instead. ``scale`` = s.
    """

    scale: float = 1.0

    def weights(
        self, history: Sequence[HistoryEntry], staleness: int, params: Collection[str]
    ) -> Weights:
        horizon = self.scale * staleness if staleness > 0 else 0.0
        return _extrapolate(history, horizon, max(staleness, 1), params)


@dataclass(frozen=True, slots=True)
class DanaLookAhead:
    """DANA-Zero's look-ahead: the edges are sent ``θ̂ = θ − s·η·γ·Σ_j v_j``, where the master
    will be once every edge's next update has added its momentum (Adam: the debiased first
    moments over the shared denominator; shared/training/dana.py). Only when gradients
    arrive late (τ > 0): with one edge at window 0 DANA is the plain update bit for bit.
    It reads the per-edge momenta, so it comes with the :class:`Dana` strategy (``dana``
    spells both; ``dana:lookahead=0`` leaves the position free)."""

    scale: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0.0):
            raise ConfigError(f"dana lookahead must be a number > 0 here, got {self.scale}")


ReplicaPosition = Current | Predict | LookAhead | DanaLookAhead


# --- the composition ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Compensation:
    """A run's staleness compensation: corrections, step rules, one strategy, one position."""

    corrections: tuple[GradientCorrection, ...] = ()
    step_rules: tuple[StepRule, ...] = ()
    edge_step: EdgeStepStrategy = field(default_factory=PlainStep)
    position: ReplicaPosition = field(default_factory=Current)
    name: str = "none"  # the chain it was parsed from (display only)

    def __post_init__(self) -> None:
        if isinstance(self.position, DanaLookAhead) and not isinstance(self.edge_step, Dana):
            raise ConfigError("dana's look-ahead reads the per-edge momenta of the dana strategy")

    def correctors(self) -> tuple[Corrector, ...]:
        """The corrections as one master runs them, each with fresh state."""
        return tuple(c.corrector() for c in self.corrections)

    def lr_scale(self, staleness: int, stage: Stage) -> float:
        """Multiplier on ``stage``'s learning rate: the product of the step rules' scales."""
        return math.prod(r.lr_scale(staleness, stage) for r in self.step_rules)

    def momentum(self, base: float, staleness: int, stage: Stage, *, kind: OptimizerKind) -> float:
        """``stage``'s momentum (``kind`` sgd) or β₁ (adam): the step rules in chain order."""
        for rule in self.step_rules:
            base = rule.momentum(base, staleness, stage, kind=kind)
        return base


# --- the chain's text -----------------------------------------------------------------------


def _delay_beta1(
    stages: Literal["both", "edge", "cloud"] = "cloud",
    cap: float = 0.5,
    optimizers: Literal["all", "adam"] = "adam",
) -> DelayMomentum:
    """The run default: :class:`DelayMomentum` on Adam's β₁ only (docs/STALENESS.md, "Why")."""
    return DelayMomentum(stages, cap, optimizers)


def _dana(lookahead: float = 1.0, max_edges: float = 1024.0) -> tuple[Dana, DanaLookAhead | None]:
    if not (math.isfinite(lookahead) and lookahead >= 0.0):
        raise ConfigError(f"dana lookahead must be a number ≥ 0, got {lookahead}")
    return Dana(max_edges), DanaLookAhead(lookahead) if lookahead else None


def _none() -> None:
    return None


Part = GradientCorrection | StepRule | EdgeStepStrategy | ReplicaPosition


@dataclass(frozen=True, slots=True)
class _Syntax:
    """A chain part's spelling: what it builds and the parameters ``name:key=value`` sets."""

    build: Callable[..., Part | tuple[Part | None, ...] | None]
    params: Mapping[str, object]  # name → default (its type says how the text is read)


def _syntax(part: type[Any]) -> _Syntax:
    """A part spelt as its class: its fields are its parameters."""
    return _Syntax(part, {f.name: f.default for f in fields(part)})


PARTS: dict[str, _Syntax] = {
    "none": _Syntax(_none, {}),
    "forecast": _syntax(Forecast),
    "forecast-adaptive": _syntax(AdaptiveForecast),
    "dcasgd": _syntax(DCASGD),
    "dcasgd-a": _syntax(AdaptiveDCASGD),
    "staleness-lr": _syntax(StalenessLR),
    "delay-momentum": _syntax(DelayMomentum),
    "delay-beta1": _Syntax(_delay_beta1, {"stages": "cloud", "cap": 0.5, "optimizers": "adam"}),
    "predict": _syntax(Predict),
    "lookahead": _syntax(LookAhead),
    "fleet-batch": _syntax(FleetBatch),
    "dana": _Syntax(_dana, {"lookahead": 1.0, "max_edges": 1024.0}),
}
"""Every chain part by its configuration name."""

_FORECASTS = frozenset({"forecast", "forecast-adaptive"})


def _part_base(part: str) -> str:
    return part.strip().partition(":")[0].strip()


def forecast_parts(chain: str) -> list[str]:
    """The gradient-forecast parts (``forecast``, ``forecast-adaptive``) of a chain."""
    return [p.strip() for p in chain.split("+") if _part_base(p) in _FORECASTS]


def without_forecast(chain: str) -> str:
    """The chain with its forecast parts removed (the paper's "no forecast" ablation)."""
    kept = [p.strip() for p in chain.split("+") if _part_base(p) not in _FORECASTS]
    return "+".join(kept) or "none"


def check_alpha(chain: str, alpha: float | None) -> None:
    """Refuse an α that would act on nothing, or that a forecast part already sets.

    α is the coefficient of the ``forecast`` part: given for a chain without one it would
    silently change nothing, the trap this check closes.
    """
    if alpha is None:
        return
    if not math.isfinite(alpha) or alpha < 0:
        raise ConfigError(f"alpha must be a finite number ≥ 0, got {alpha}")
    plain = [p for p in forecast_parts(chain) if _part_base(p) == "forecast"]
    if not plain:
        raise ConfigError(
            f"alpha is the forecast's coefficient, but compensation {chain!r} has no "
            "'forecast' part: add one (e.g. 'delay-beta1+forecast') or leave alpha unset"
        )
    if any("alpha=" in p.replace(" ", "") for p in plain):
        raise ConfigError(
            f"alpha is given twice: as alpha and inside compensation {chain!r}; give it once"
        )


def _parse_part(spec: str, *, alpha: float | None) -> tuple[Part, ...]:
    base, _, params = spec.strip().partition(":")
    syntax = PARTS.get(base)
    if syntax is None:
        raise ConfigError(
            f"unknown compensation {base!r}; choose one of {sorted(PARTS)}, joined with '+'"
        )
    kwargs: dict[str, object] = {}
    if base == "forecast" and alpha is not None:
        kwargs["alpha"] = alpha
    for item in filter(None, params.split(",")):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in syntax.params:
            raise ConfigError(f"compensation {base!r} takes no parameter {item!r}")
        default = syntax.params[key]
        try:
            kwargs[key] = raw.strip() if isinstance(default, str) else float(raw)
        except ValueError as exc:
            raise ConfigError(f"compensation {base!r}: {key} must be a number") from exc
    if base == "forecast" and kwargs.get("alpha", Forecast().alpha) == 0.0:
        return ()  # α = 0 is no forecast (the paper's ablation)
    try:
        built = syntax.build(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"compensation {spec!r}: {exc}") from exc
    parts = built if isinstance(built, tuple) else (built,)
    return tuple(p for p in parts if p is not None)


def parse_compensation(name: str, *, alpha: float | None = None) -> Compensation:
    """The composition a chain names, e.g. ``delay-momentum+predict``.

    ``alpha`` is the run's forecast coefficient (RunConfig.alpha): the α of the ``forecast``
    part (None: the part's own, 0.5 unless ``forecast:alpha=…``), and α = 0 removes that part
    (the paper's "no forecast" ablation). An α for a chain without a ``forecast`` part, or
    one the part already sets, is refused (`check_alpha`): it would change nothing. A second
    part for the edge-step strategy or the replica position is refused: those are one each.
    """
    check_alpha(name, alpha)
    corrections: list[GradientCorrection] = []
    rules: list[StepRule] = []
    strategy: tuple[str, EdgeStepStrategy] | None = None
    position: tuple[str, ReplicaPosition] | None = None
    for text in name.split("+"):
        label = _part_base(text)
        for part in _parse_part(text, alpha=alpha):
            if isinstance(part, Forecast | AdaptiveForecast | DCASGD | AdaptiveDCASGD):
                corrections.append(part)
            elif isinstance(part, StalenessLR | DelayMomentum):
                rules.append(part)
            elif isinstance(part, PlainStep | FleetBatch | Dana):
                if strategy is not None:
                    raise ConfigError(_two_strategies(name, strategy[0], label))
                strategy = (label, part)
            else:
                if position is not None:
                    raise ConfigError(_two_positions(name, position[0], label))
                position = (label, part)
    return Compensation(
        tuple(corrections),
        tuple(rules),
        strategy[1] if strategy is not None else PlainStep(),
        position[1] if position is not None else Current(),
        name=name.strip(),
    )


def _two_strategies(chain: str, first: str, second: str) -> str:
    why = (
        "a fleet batch averages several edges' gradients, and a step on their mean has no one "
        "edge's momentum"
        if {first, second} == {"dana", "fleet-batch"}
        else "the edge stage takes its steps one way"
    )
    return (
        f"compensation {chain!r}: {first!r} and {second!r} are both edge-step strategies; "
        f"choose one ({why})"
    )


def _two_positions(chain: str, first: str, second: str) -> str:
    hint = (
        "; dana:lookahead=0 keeps only dana's per-edge momenta" if "dana" in (first, second) else ""
    )
    return (
        f"compensation {chain!r}: {first!r} and {second!r} both set the weights the edges are "
        f"sent (two look-aheads would count the same future updates twice); choose one{hint}"
    )
