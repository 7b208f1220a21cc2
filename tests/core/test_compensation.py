"""Staleness compensation: each part's arithmetic against hand-computed values, each part the
plain update at staleness 0, and the composition that only writes what is legal
(shared/training/compensation.py)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from simultrain.bench.bench import COMPENSATION_VARIANTS
from simultrain.bench.study import DEFAULT_COMPENSATIONS
from simultrain.shared.errors import ConfigError, TrainingError
from simultrain.shared.training.compensation import (
    DCASGD,
    AdaptiveDCASGD,
    AdaptiveForecast,
    Compensation,
    Current,
    Dana,
    DanaLookAhead,
    DelayMomentum,
    FleetBatch,
    Forecast,
    LookAhead,
    PlainStep,
    Predict,
    StalenessLR,
    delay_matched_momentum,
    parse_compensation,
)
from simultrain.shared.training.dana import DanaEdgeStep, EdgeMomenta
from simultrain.shared.training.master import CloudMaster
from simultrain.shared.training.options import OptimizerConfig
from simultrain.shared.training.window import (
    LINK_4G,
    LinkProfile,
    StageTimes,
    auto_window,
    bandwidth_delay_product,
)

G = torch.tensor([1.0, -2.0])
NOW = torch.tensor([0.5, 0.5])
THEN = torch.tensor([0.25, 1.0])  # NOW − THEN = [0.25, −0.5]

EVERY_CHAIN = [
    "none",
    "delay-beta1",
    "forecast",
    "forecast-adaptive",
    "dcasgd",
    "dcasgd-a",
    "staleness-lr",
    "delay-momentum",
    "predict",
    "lookahead",
    "fleet-batch",
    "forecast-adaptive+delay-momentum+predict",
    "delay-beta1+fleet-batch:lr_power=0.5",
    "dana",
    "delay-beta1+dana",
    "delay-beta1+dana:lookahead=0+lookahead",
]


def correct(part: Forecast | DCASGD, grad: torch.Tensor, staleness: int) -> torch.Tensor:
    return part.corrector().correct({"w": grad}, {"w": NOW}, {"w": THEN}, staleness)["w"]


@pytest.mark.parametrize("chain", EVERY_CHAIN)
def test_every_compensation_is_the_plain_update_at_staleness_zero(chain: str) -> None:
    comp = parse_compensation(chain)
    torch.manual_seed(0)
    correctors = comp.correctors()
    for _ in range(3):  # the stateful ones, after they have seen gradients too
        g, now, then = torch.randn(5), torch.randn(5), torch.randn(5)
        for corrector in correctors:
            assert torch.equal(corrector.correct({"w": g}, {"w": now}, {"w": then}, 0)["w"], g)
    for stage in ("edge", "cloud"):
        assert comp.lr_scale(0, stage) == 1.0
        for kind in ("sgd", "adam"):
            assert comp.momentum(0.9, 0, stage, kind=kind) == 0.9
            assert comp.momentum(0.0, 3, stage, kind=kind) == 0.0  # never adds momentum
    if isinstance(comp.edge_step, FleetBatch):  # one edge: a step per gradient, plain lr
        assert comp.edge_step.edge_batch(1) == 1 and comp.edge_step.batch_lr_scale(1) == 1.0
    # Fresh gradients (τ = 0): the replica is sent the master's own weights, whatever the
    # position; with one edge, per-edge momenta are the one momentum (no look-ahead).
    master = tiny_master(comp, OptimizerConfig(lr=0.1, momentum=0.9))
    for k in range(3):
        master.apply_edge_gradient(fill(master, float(k)), edge_version=master.version)
        assert master.edge_weights_for_replica() is master.edge_weights()


def test_forecast_matches_hand_computed_values() -> None:
    # g + 0.5·(now − then) = [1 + 0.125, −2 − 0.25]
    assert torch.equal(correct(Forecast(0.5), G, 3), torch.tensor([1.125, -2.25]))


def test_dcasgd_matches_hand_computed_values() -> None:
    # g + 2·g⊙g⊙(now − then) = [1 + 2·1·0.25, −2 + 2·4·(−0.5)]
    assert torch.equal(correct(DCASGD(2.0), G, 1), torch.tensor([1.5, -6.0]))


def test_adaptive_dcasgd_normalises_lambda_by_the_running_mean_square() -> None:
    comp = AdaptiveDCASGD(lam=2.0, m=0.5, eps=0.0).corrector()

    def one(g: torch.Tensor) -> torch.Tensor:
        return comp.correct({"w": g}, {"w": NOW}, {"w": THEN}, 2)["w"]

    # First gradient: MS = 0.5·g² = [0.5, 2]; λ/√MS = [2/√0.5, 2/√2] = [2√2, √2].
    out = one(G)
    expected = G + torch.tensor([2 * math.sqrt(2), math.sqrt(2)]) * G * G * (NOW - THEN)
    assert torch.allclose(out, expected)  # [1 + 2√2·0.25, −2 − √2·4·0.5]
    assert torch.allclose(out, torch.tensor([1 + math.sqrt(2) / 2, -2 - 2 * math.sqrt(2)]))
    # Second gradient g' = [2, 0]: MS = 0.5·[0.5, 2] + 0.5·[4, 0] = [2.25, 1].
    out2 = one(torch.tensor([2.0, 0.0]))
    assert torch.allclose(out2, torch.tensor([2 + (2 / 1.5) * 4 * 0.25, 0.0]))


def test_adaptive_forecast_fits_alpha_from_successive_gradients() -> None:
    comp = AdaptiveForecast(alpha_max=10.0, decay=1.0).corrector()
    # A quadratic with Hessian 3I: g(w) = 3w. The first gradient only starts the estimate.
    w0, w1, w2 = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0]), torch.tensor([1.0, 2.0])
    out = comp.correct({"w": 3 * w0}, {"w": w2}, {"w": w0}, 1)
    assert torch.equal(out["w"], 3 * w0) and comp.alpha("w") == 0.0
    comp.correct({"w": 3 * w1}, {"w": w2}, {"w": w1}, 1)
    assert comp.alpha("w") == pytest.approx(3.0)  # ⟨3Δw, Δw⟩ / ⟨Δw, Δw⟩
    # With α̂ = 3 the forecast g + 3·(w_now − w_then) is exact on this quadratic.
    out = comp.correct({"w": 3 * w1}, {"w": w2}, {"w": w1}, 1)  # Δw = 0: estimate kept
    assert torch.allclose(out["w"], 3 * w2)
    # Negative curvature turns the forecast off; large curvature is clipped to α_max.
    neg = AdaptiveForecast(decay=1.0).corrector()
    neg.correct({"w": -w0}, {"w": w2}, {"w": w0}, 1)
    neg.correct({"w": -w1}, {"w": w2}, {"w": w1}, 1)
    assert neg.alpha("w") == 0.0
    big = AdaptiveForecast(alpha_max=2.0, decay=1.0).corrector()
    big.correct({"w": 50 * w0}, {"w": w2}, {"w": w0}, 1)
    big.correct({"w": 50 * w1}, {"w": w2}, {"w": w1}, 1)
    assert big.alpha("w") == 2.0


def test_a_part_is_frozen_parameters_and_its_state_belongs_to_one_master() -> None:
    """A configuration's parts are values (hashable, shared freely); what a correction
    learns lives in the corrector each master makes, so two masters never share it."""
    part = AdaptiveForecast(decay=1.0)
    assert hash(part) == hash(AdaptiveForecast(decay=1.0))
    first, second = part.corrector(), part.corrector()
    w0, w1, w2 = torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([2.0])
    first.correct({"w": 3 * w0}, {"w": w2}, {"w": w0}, 1)
    first.correct({"w": 3 * w1}, {"w": w2}, {"w": w1}, 1)
    assert first.alpha("w") == pytest.approx(3.0) and second.alpha("w") == 0.0
    assert parse_compensation("forecast-adaptive") == parse_compensation("forecast-adaptive")
    with pytest.raises(AttributeError):
        part.decay = 0.5  # type: ignore[misc]


def test_staleness_lr_scales_only_the_late_edge_stage() -> None:
    assert StalenessLR().lr_scale(3, "edge") == 0.25
    assert StalenessLR(power=0.5).lr_scale(3, "edge") == 0.5
    assert StalenessLR().lr_scale(3, "cloud") == 1.0


@pytest.mark.parametrize(
    ("base", "staleness", "expected"),
    [(0.9, 0, 0.9), (0.9, 2, 0.7), (0.9, 4, 0.5), (0.9, 8, 0.1), (0.9, 12, 0.0), (0.5, 1, 0.0)],
)
def test_delay_matched_momentum(base: float, staleness: int, expected: float) -> None:
    # 1 − (τ+1)(1 − μ): the product of the (1 − μ) of explicit and implicit momentum is kept.
    assert delay_matched_momentum(base, staleness) == pytest.approx(expected)


def sgd_momentum(rule: DelayMomentum, base: float, staleness: int, stage: str) -> float:
    return rule.momentum(base, staleness, stage, kind="sgd")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("staleness", "expected"), [(0, 0.9), (1, 0.5), (2, 0.5), (4, 0.5), (6, 0.3), (8, 0.1)]
)
def test_delay_momentum_caps_a_stale_stage_at_one_half(staleness: int, expected: float) -> None:
    # min(0.5, 1 − (τ+1)·0.1) once τ > 0; the plain 0.9 at τ = 0.
    assert sgd_momentum(DelayMomentum(), 0.9, staleness, "cloud") == pytest.approx(expected)
    assert sgd_momentum(DelayMomentum(cap=1.0), 0.9, 2, "cloud") == pytest.approx(0.7)
    assert sgd_momentum(DelayMomentum(), 0.3, 1, "cloud") == pytest.approx(0.0)


def test_delay_momentum_stages() -> None:
    assert sgd_momentum(DelayMomentum(), 0.9, 4, "cloud") == pytest.approx(0.5)
    assert sgd_momentum(DelayMomentum(), 0.9, 4, "edge") == 0.9  # the cloud stage by default
    assert sgd_momentum(DelayMomentum(stages="both"), 0.9, 4, "edge") == pytest.approx(0.5)
    assert sgd_momentum(DelayMomentum(stages="both"), 0.9, 4, "cloud") == pytest.approx(0.5)
    assert sgd_momentum(DelayMomentum(stages="edge"), 0.9, 4, "cloud") == 0.9
    with pytest.raises(ConfigError):
        DelayMomentum(stages="middle")  # type: ignore[arg-type]


def test_delay_beta1_lowers_adams_beta1_and_leaves_sgd_alone() -> None:
    default = parse_compensation("delay-beta1")
    assert default.step_rules == (DelayMomentum(optimizers="adam"),)
    assert default.momentum(0.9, 4, "cloud", kind="adam") == pytest.approx(0.5)
    assert default.momentum(0.9, 4, "cloud", kind="sgd") == 0.9
    assert default.momentum(0.9, 4, "edge", kind="adam") == 0.9
    capped = parse_compensation("delay-beta1:cap=0.3")
    assert capped.momentum(0.9, 2, "cloud", kind="adam") == pytest.approx(0.3)
    assert sgd_momentum(DelayMomentum(), 0.9, 4, "cloud") == pytest.approx(0.5)


def test_a_chain_is_sorted_into_its_four_kinds_of_part() -> None:
    comp = parse_compensation("forecast+dcasgd+staleness-lr+delay-momentum+predict:scale=0.5")
    assert comp.corrections == (Forecast(0.5), DCASGD(2.0))
    assert comp.step_rules == (StalenessLR(), DelayMomentum())
    assert (comp.edge_step, comp.position) == (PlainStep(), Predict(0.5))
    # Corrections chain in order: forecast first, g1 = [1.125, −2.25]; then DC-ASGD on g1.
    g = {"w": G}
    for corrector in comp.correctors():
        g = corrector.correct(g, {"w": NOW}, {"w": THEN}, 4)
    g1 = torch.tensor([1.125, -2.25])
    assert torch.allclose(g["w"], g1 + 2.0 * g1 * g1 * (NOW - THEN))
    # Step rules: learning-rate scales multiply, momenta compose in chain order.
    assert comp.lr_scale(4, "edge") == pytest.approx(0.2)
    assert comp.momentum(0.9, 4, "cloud", kind="sgd") == pytest.approx(0.5)
    assert comp.momentum(0.9, 4, "edge", kind="sgd") == 0.9
    two = parse_compensation(
        "staleness-lr+staleness-lr:power=0.5+delay-beta1+delay-momentum:cap=0.3"
    )
    assert two.lr_scale(3, "edge") == pytest.approx(0.25 * 0.5)
    # In order: delay-beta1 takes β₁ 0.9 to 0.5 at τ = 4; the second rule then matches that
    # 0.5 to the delay, max(0, 1 − 5·0.5) = 0.
    assert two.momentum(0.9, 4, "cloud", kind="adam") == 0.0


def test_names_build_compensations_with_parameters() -> None:
    assert parse_compensation("forecast", alpha=0.25).corrections == (Forecast(0.25),)
    assert parse_compensation("forecast:alpha=0.1").corrections == (Forecast(0.1),)
    assert parse_compensation("forecast", alpha=0.0) == Compensation(name="forecast")
    assert parse_compensation("delay-momentum:stages=both").step_rules == (DelayMomentum("both"),)
    combo = parse_compensation("dcasgd-a:lam=1+delay-momentum")
    assert combo.name == "dcasgd-a:lam=1+delay-momentum"
    assert combo.corrections == (AdaptiveDCASGD(lam=1.0),)
    for bad in ("magic", "forecast:beta=1", "forecast:alpha=x", "dcasgd:_mean_square=1"):
        with pytest.raises(ConfigError):
            parse_compensation(bad)


def test_every_chain_the_project_names_is_legal() -> None:
    """The study's and the benchmark's chains, and those docs/STALENESS.md reports."""
    named = {
        *DEFAULT_COMPENSATIONS,
        *(str(v["compensation"]) for v in COMPENSATION_VARIANTS.values() if v),
        "delay-beta1+forecast:alpha=0.2",
        "delay-beta1+fleet-batch:k=8",
        "delay-beta1:cap=0+fleet-batch",
        "delay-beta1+staleness-lr:power=0.75",
        "delay-beta1+dana:lookahead=0",
        "dana:max_edges=64",
        "delay-momentum+predict",
        "lookahead+staleness-lr",
        "delay-momentum:stages=cloud",
    }
    for chain in sorted(named):
        assert parse_compensation(chain).name == chain


@pytest.mark.parametrize(
    ("chain", "message"),
    [
        ("dana+fleet-batch", r"'dana' and 'fleet-batch' are both edge-step strategies.*no one"),
        ("fleet-batch+fleet-batch:k=2", "both edge-step strategies"),
        ("dana:lookahead=0+dana", "both edge-step strategies"),
        ("dana+lookahead", r"both set the weights the edges are sent.*dana:lookahead=0"),
        ("predict+dana", "'predict' and 'dana' both set the weights"),
        ("predict+lookahead", "'predict' and 'lookahead' both set the weights"),
        ("delay-beta1+predict:scale=0.5+predict", "both set the weights"),
    ],
)
def test_two_parts_for_one_slot_cannot_be_written(chain: str, message: str) -> None:
    """A strategy and a position are one each: a chain that names two is refused with why."""
    with pytest.raises(ConfigError, match=message):
        parse_compensation(chain)


def test_the_composition_types_hold_one_strategy_and_one_position() -> None:
    """Written in Python too: each slot holds one part, and dana's look-ahead reads the
    per-edge momenta of its strategy, so it comes with it."""
    assert Compensation(edge_step=Dana(), position=DanaLookAhead(0.5)).position.scale == 0.5
    with pytest.raises(ConfigError, match="per-edge momenta of the dana strategy"):
        Compensation(position=DanaLookAhead())
    with pytest.raises(ConfigError, match="per-edge momenta of the dana strategy"):
        Compensation(edge_step=FleetBatch(), position=DanaLookAhead())
    assert parse_compensation("dana").position == DanaLookAhead(1.0)
    assert parse_compensation("dana:lookahead=0").position == Current()


# --- the master applies them ----------------------------------------------------------------


def tiny_master(comp: Compensation, optimizer: OptimizerConfig) -> CloudMaster:
    torch.manual_seed(0)
    edge = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
    cloud = nn.Linear(4, 2)
    return CloudMaster(edge, cloud, optimizer=optimizer, compensation=comp)


def ones(master: CloudMaster) -> dict[str, torch.Tensor]:
    return {n: torch.ones_like(p) for n, p in master.edge_stage.named_parameters()}


def fill(master: CloudMaster, value: float) -> dict[str, torch.Tensor]:
    return {n: torch.full_like(p, value) for n, p in master.edge_stage.named_parameters()}


def gathered(master: CloudMaster) -> int:
    return master.edge_step.gathered


def momenta(master: CloudMaster) -> EdgeMomenta:
    assert isinstance(master.edge_step, DanaEdgeStep)
    return master.edge_step.momenta


@pytest.mark.parametrize(
    "optimizer",
    [OptimizerConfig(lr=0.1, momentum=0.9), OptimizerConfig("adam", lr=0.01)],
    ids=["sgd", "adam"],
)
def test_master_sets_both_stages_momentum_from_the_observed_staleness(
    optimizer: OptimizerConfig,
) -> None:
    master = tiny_master(
        Compensation(step_rules=(DelayMomentum(stages="both", cap=0.6),)), optimizer
    )
    master.apply_edge_gradient(ones(master), edge_version=0)
    master.apply_edge_gradient(ones(master), edge_version=0)
    master.apply_edge_gradient(ones(master), edge_version=0)  # staleness 2
    master.cloud_step(torch.randn(5, 4), torch.tensor([0, 1, 0, 1, 1]))

    def momentum(opt: torch.optim.Optimizer) -> float:
        group = opt.param_groups[0]
        return float(group["betas"][0] if "betas" in group else group["momentum"])

    assert momentum(master.optimizers()["edge"]) == pytest.approx(0.6)  # min(cap 0.6, 0.7)
    assert momentum(master.optimizers()["cloud"]) == pytest.approx(0.6)
    master.apply_edge_gradient(ones(master), edge_version=master.version)  # fresh again
    assert momentum(master.optimizers()["edge"]) == pytest.approx(0.9)


def test_master_sends_weights_predicted_along_the_last_update() -> None:
    master = tiny_master(Compensation(position=Predict()), OptimizerConfig(lr=0.1, momentum=0.9))
    assert master.edge_weights_for_replica() is master.edge_weights()  # nothing to go on
    master.apply_edge_gradient(ones(master), edge_version=0)
    w1 = dict(master.edge_weights())
    master.apply_edge_gradient(ones(master), edge_version=0)  # staleness 1
    w2 = master.edge_weights()
    predicted = master.edge_weights_for_replica()  # one update ahead
    for name, w in w2.items():
        assert torch.allclose(predicted[name], w + (w - w1[name]))
    master.apply_edge_gradient(ones(master), edge_version=master.version)  # staleness 0
    assert master.edge_weights_for_replica() is master.edge_weights()


def test_master_scales_the_edge_learning_rate_by_staleness() -> None:
    master = tiny_master(Compensation(step_rules=(StalenessLR(),)), OptimizerConfig(lr=0.1))
    master.apply_edge_gradient(ones(master), edge_version=0)
    before = {n: t.clone() for n, t in master.edge_weights().items()}
    master.apply_edge_gradient(ones(master), edge_version=0)  # staleness 1: lr 0.05
    for name, w in master.edge_weights().items():
        assert torch.allclose(w, before[name] - 0.05)


# --- automatic window --------------------------------------------------------------------


def test_auto_window_is_the_smallest_that_keeps_the_bottleneck_busy() -> None:
    # 50 Mbit/s both ways, 30 ms RTT. Up 125 kB = 20 ms, down 62.5 kB = 10 ms, edge 15 ms,
    # cloud 5 ms: the uplink is the bottleneck at T = 20 ms; a slot is held for
    # L = 20 + 10 + 15 + 5 + 60 = 110 ms, so ⌈110/20⌉ = 6 in flight, W = 6.
    stages = StageTimes(0.010, 0.005, 0.004, 0.001, up_bytes=125_000, down_bytes=62_500)
    plan = auto_window(LINK_4G, stages)
    assert plan.bottleneck == "uplink"
    assert plan.period_s == pytest.approx(0.020)
    assert plan.cycle_s == pytest.approx(0.110)
    assert (plan.in_flight, plan.window) == (6, 6)  # W batches in flight (PROTOCOL §6.3)
    assert plan.batches_per_s == pytest.approx(50.0)
    assert auto_window(LINK_4G, stages, max_window=4).window == 4
    # A slow edge is the bottleneck: no window helps beyond covering the rest of the cycle.
    slow = StageTimes(0.5, 0.5, 0.004, 0.001, up_bytes=1000, down_bytes=1000)
    plan = auto_window(LinkProfile(50e6, 50e6, 0.0), slow)
    assert plan.bottleneck == "edge" and plan.window == 2
    # Exact multiples do not round up by float error: L = T gives W = 0.
    even = StageTimes(0.01, 0.0, 0.0, 0.0, up_bytes=0, down_bytes=0)
    assert auto_window(LinkProfile(1e6, 1e6, 0.0), even).window == 0
    assert bandwidth_delay_product(LINK_4G) == pytest.approx(187_500)
    with pytest.raises(ConfigError):
        StageTimes(-1, 0, 0, 0, 0, 0)


@dataclass(frozen=True)
class _Entry:
    index: int
    weights: Mapping[str, torch.Tensor]


def test_positions_extrapolate_along_the_history_by_hand() -> None:
    """Steps 0 … 6 at w = 0, 1, 3, 6, 10, 15, 21: ``predict`` extrapolates the last step
    τ times, ``lookahead`` the mean of the last τ steps; fresh (τ = 0): the newest weights."""
    history = [
        _Entry(k, {"w": torch.tensor([float(w)]), "buf": torch.tensor([1.0])})
        for k, w in enumerate((0, 1, 3, 6, 10, 15, 21))
    ]
    params = {"w"}  # buffers are never extrapolated
    assert LookAhead(scale=0.5).weights(history, 6, params)["w"].item() == 21 + 0.5 * 21
    assert LookAhead().weights(history, 2, params)["w"].item() == 21 + 2 * (21 - 10) / 2
    assert Predict().weights(history, 4, params)["w"].item() == 21 + 4 * (21 - 15)
    assert Predict(scale=0.5).weights(history, 4, params)["w"].item() == 21 + 2 * (21 - 15)
    for position in (Current(), Predict(), LookAhead()):
        assert position.weights(history, 0, params) is history[-1].weights
        assert position.weights(history, 4, params)["buf"].item() == 1.0
    assert Current().weights(history, 4, params) is history[-1].weights


def test_lookahead_extrapolates_the_mean_of_the_updates_it_stands_in_for() -> None:
    """``lookahead``: ŵ = w + s·(w − w_{−τ}), the last τ updates standing for the next τ;
    ``predict`` extrapolates only the last one (τ times)."""
    master = tiny_master(Compensation(position=LookAhead()), OptimizerConfig(lr=0.1))
    grads = [
        {n: torch.full_like(p, float(k + 1)) for n, p in master.edge_stage.named_parameters()}
        for k in range(3)
    ]
    history = [dict(master.edge_weights())]
    for g in grads:  # staleness 0, 1, 2: the last gradient lands 2 updates late
        master.apply_edge_gradient(g, edge_version=0)
        history.append(dict(master.edge_weights()))
    assert master.observed_staleness == 2
    w, w_then = history[-1], history[-3]
    predicted = master.edge_weights_for_replica()
    for name in w:
        assert torch.allclose(predicted[name], w[name] + (w[name] - w_then[name]))
        # Not the last update twice: the updates differ (gradients 2 and 3).
        assert not torch.allclose(predicted[name], w[name] + 2 * (w[name] - history[-2][name]))
    master.apply_edge_gradient(grads[0], edge_version=master.version)  # fresh: no prediction
    assert master.edge_weights_for_replica() is master.edge_weights()


# --- fleet-batched edge-stage updates ----------------------------------------------------


def test_fleet_batch_sizes_its_batch_by_the_fleet_or_a_configured_k() -> None:
    assert FleetBatch().edge_batch(8) == 8 and FleetBatch().edge_batch(1) == 1
    assert FleetBatch(k=3).edge_batch(8) == 3
    assert parse_compensation("fleet-batch:k=3").edge_step == FleetBatch(k=3)
    assert FleetBatch(lr_power=0.5).batch_lr_scale(4) == 2.0
    assert FleetBatch(lr_power=1.0).batch_lr_scale(8) == 8.0
    assert FleetBatch().batch_lr_scale(8) == 1.0
    chain = parse_compensation("delay-beta1+fleet-batch:lr_power=0.5")
    assert chain.edge_step == FleetBatch(lr_power=0.5)
    assert Compensation().edge_step == PlainStep()
    for bad in ("fleet-batch:k=1.5", "fleet-batch:k=-1", "fleet-batch:lr_power=2"):
        with pytest.raises(ConfigError):
            parse_compensation(bad)


def edge_weights(master: CloudMaster) -> dict[str, torch.Tensor]:
    return {n: t.clone() for n, t in master.edge_weights().items()}


@pytest.mark.parametrize(("lr_power", "lr"), [(0.0, 0.1), (0.5, 0.1 * math.sqrt(2))])
def test_fleet_batch_steps_once_on_the_mean_of_one_gradient_per_edge(
    lr_power: float, lr: float
) -> None:
    """Two edges: the first gradient waits (a version, no step), the second steps on the mean
    ``(1 + 3)/2 = 2`` at lr·2^p; staleness is then counted in edge-stage steps."""
    master = tiny_master(
        Compensation(edge_step=FleetBatch(lr_power=lr_power)), OptimizerConfig(lr=0.1)
    )
    master.set_edges_in_session(2)
    w0 = edge_weights(master)
    first = master.apply_edge_gradient(ones(master), edge_version=0, samples=32)
    assert (first.applied, first.version, first.staleness) == (True, 1, 0)
    assert master.edge_updates == 0 and gathered(master) == 1
    for name, w in master.edge_weights().items():
        assert torch.equal(w, w0[name])  # gathered, not stepped
    threes = {n: 3 * g for n, g in ones(master).items()}
    second = master.apply_edge_gradient(threes, edge_version=0, samples=32)
    assert (second.version, second.staleness, second.staleness_versions) == (2, 0, 1)
    assert master.edge_updates == 1 and gathered(master) == 0
    assert master.samples_applied == 64
    for name, w in master.edge_weights().items():
        assert torch.allclose(w, w0[name] - lr * 2.0)
    # A gradient of the weights at version 0 now misses exactly that one step.
    late = master.apply_edge_gradient(ones(master), edge_version=1)
    assert late.staleness == 1 and master.staleness.counts == {0: 2, 1: 1}
    # The edge stage at version 1 (between the two gradients) is still w0: lookups are exact.
    at_1 = master.edge_weights_at(1)
    assert at_1 is not None and all(torch.equal(at_1[n], w0[n]) for n in w0)


def test_fleet_batch_compensates_each_gradient_at_its_own_staleness() -> None:
    """``forecast+fleet-batch``: each gradient is forecast from its own weights, then averaged."""
    master = tiny_master(parse_compensation("forecast+fleet-batch"), OptimizerConfig(lr=0.1))
    master.set_edges_in_session(2)
    master.apply_edge_gradient(ones(master), edge_version=0)
    master.apply_edge_gradient(ones(master), edge_version=0)  # step 1: w1 = w0 − 0.1
    w1 = edge_weights(master)
    master.apply_edge_gradient(ones(master), edge_version=0)  # τ = 1: 1 + 0.5·(w1 − w0)
    master.apply_edge_gradient(ones(master), edge_version=master.version)  # τ = 0: 1
    for name, w in master.edge_weights().items():
        mean = (1 + 0.5 * -0.1 + 1) / 2
        assert torch.allclose(w, w1[name] - 0.1 * mean)


def test_fleet_batch_steps_what_it_holds_when_the_fleet_shrinks_or_ends() -> None:
    master = tiny_master(Compensation(edge_step=FleetBatch()), OptimizerConfig(lr=0.1))
    master.set_edges_in_session(3)
    w0 = edge_weights(master)
    master.apply_edge_gradient(ones(master), edge_version=0)
    master.apply_edge_gradient(ones(master), edge_version=0)
    assert gathered(master) == 2 and not master.set_edges_in_session(4)
    assert not master.set_edges_in_session(3)  # an edge leaves: three still to gather
    assert master.set_edges_in_session(2)  # two gathered, two edges: that is a full batch
    assert master.edge_updates == 1 and master.version == 3  # the step is a version
    for name, w in master.edge_weights().items():
        assert torch.allclose(w, w0[name] - 0.1)
    master.apply_edge_gradient(ones(master), edge_version=master.version)
    assert gathered(master) == 1
    assert master.set_edges_in_session(0)  # the last edge left: what is gathered steps
    assert master.edge_updates == 2 and gathered(master) == 0
    assert not master.flush_edge_step()  # nothing left


def test_fleet_batch_is_the_plain_update_with_one_edge() -> None:
    plain = tiny_master(Compensation(), OptimizerConfig("adam", lr=0.01))
    batched = tiny_master(
        Compensation(edge_step=FleetBatch(lr_power=0.5)), OptimizerConfig("adam", lr=0.01)
    )
    for master in (plain, batched):
        master.set_edges_in_session(1)
        for k in range(4):
            grads = {n: torch.full_like(g, float(k) - 1.5) for n, g in ones(master).items()}
            master.apply_edge_gradient(grads, edge_version=max(master.version - 2, 0))
    assert batched.edge_updates == plain.edge_updates == 4
    for name, w in plain.edge_weights().items():
        assert torch.equal(batched.edge_weights()[name], w)


# --- DANA: one edge-stage momentum per edge, the look-ahead along their sum ---------------


def test_dana_keeps_one_momentum_per_edge_and_looks_ahead_along_their_sum() -> None:
    """Two edges, SGD lr 0.1, γ 0.5, by hand (Hakimi et al., 2019, DANA-Zero)::

        a, g = 1:  v_a = 1              θ1 = θ0 − 0.1·1            = θ0 − 0.1
        b, g = 2:  v_b = 2 (its own)    θ2 = θ1 − 0.1·2            = θ0 − 0.3
        a, g = 4:  v_a = 0.5·1 + 4 = 4.5, θ3 = θ2 − 0.45          = θ0 − 0.75
        sent:      θ̂ = θ3 − 0.1·0.5·(4.5 + 2) = θ3 − 0.325

    One shared momentum would give v = 1, 2.5, 5.25 and θ0 − 0.875."""
    master = tiny_master(parse_compensation("dana"), OptimizerConfig(lr=0.1, momentum=0.5))
    w0 = edge_weights(master)
    master.apply_edge_gradient(fill(master, 1.0), edge_version=0, edge_id="a")
    master.apply_edge_gradient(fill(master, 2.0), edge_version=0, edge_id="b")
    master.apply_edge_gradient(fill(master, 4.0), edge_version=0, edge_id="a")
    held = momenta(master)
    assert list(held.buffers) == ["b", "a"]  # least recent first
    for name, w in master.edge_weights().items():
        assert torch.allclose(w, w0[name] - 0.75)
        assert torch.allclose(held.buffers["a"][name], torch.full_like(w, 4.5))
        assert torch.allclose(held.buffers["b"][name], torch.full_like(w, 2.0))
    assert master.observed_staleness == 2
    sent = master.edge_weights_for_replica()
    for name, w in master.edge_weights().items():
        assert torch.allclose(sent[name], w - 0.325)
    assert master.edge_weights_for_replica() is sent  # computed once per version
    # Fresh again (τ = 0): no look-ahead, the master's own weights.
    master.apply_edge_gradient(fill(master, 0.0), edge_version=master.version, edge_id="b")
    assert master.edge_weights_for_replica() is master.edge_weights()
    # dana:lookahead=0 keeps the per-edge momenta and sends the master's weights.
    off = tiny_master(parse_compensation("dana:lookahead=0"), OptimizerConfig(lr=0.1, momentum=0.5))
    for g, e in ((1.0, "a"), (2.0, "b"), (4.0, "a")):
        off.apply_edge_gradient(fill(off, g), edge_version=0, edge_id=e)
    assert off.edge_weights_for_replica() is off.edge_weights()
    for name, w in off.edge_weights().items():
        assert torch.allclose(w, w0[name] - 0.75)


def test_dana_with_adam_keeps_one_first_moment_per_edge_and_shares_the_second() -> None:
    """Two edges, Adam lr 0.01, β = (0.9, 0.999), ε = 1e-8, by hand: the first moments are
    per edge and debiased by the edge's own count n, the second moment and its step t
    shared; the look-ahead divides the debiased first moments by the shared denominator."""
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    master = tiny_master(parse_compensation("dana"), OptimizerConfig("adam", lr=lr))
    w0 = edge_weights(master)
    s = 0.0
    theta = 0.0  # the displacement from w0, the same in every element
    moments = {"a": 0.0, "b": 0.0}
    counts = {"a": 0, "b": 0}
    for t, (g, edge) in enumerate(((1.0, "a"), (2.0, "b"), (4.0, "a")), start=1):
        master.apply_edge_gradient(fill(master, g), edge_version=0, edge_id=edge)
        counts[edge] += 1
        moments[edge] = b1 * moments[edge] + (1 - b1) * g
        s = b2 * s + (1 - b2) * g * g
        denom = math.sqrt(s / (1 - b2**t)) + eps
        theta -= lr * moments[edge] / (1 - b1 ** counts[edge]) / denom
    # Written out: m_a = 0.9·0.1 + 0.1·4 = 0.49 over n_a = 2 (÷ 0.19); m_b = 0.2 over n_b = 1.
    assert moments == pytest.approx({"a": 0.49, "b": 0.2})
    held = momenta(master)
    assert held.counts == {"b": 1, "a": 2}
    for name, w in master.edge_weights().items():
        assert torch.allclose(w, w0[name] + theta, rtol=0, atol=1e-6)
        assert torch.allclose(held.buffers["a"][name], torch.full_like(w, 0.49))
    mean_hat = moments["a"] / (1 - b1**2) + moments["b"] / (1 - b1)
    ahead = -lr * b1 * mean_hat / denom
    sent = master.edge_weights_for_replica()
    for name, w in master.edge_weights().items():
        assert torch.allclose(sent[name], w + ahead, rtol=0, atol=1e-6)
    # One shared first moment (plain Adam) steps elsewhere: the per-edge state matters.
    plain = tiny_master(Compensation(), OptimizerConfig("adam", lr=lr))
    for g in (1.0, 2.0, 4.0):
        plain.apply_edge_gradient(fill(plain, g), edge_version=0)
    name = next(iter(w0))
    assert not torch.allclose(plain.edge_weights()[name], master.edge_weights()[name], atol=1e-6)


@pytest.mark.parametrize(
    "optimizer",
    [OptimizerConfig(lr=0.1, momentum=0.9), OptimizerConfig("adam", lr=0.01)],
    ids=["momentum", "adam"],
)
def test_dana_with_one_edge_is_the_plain_update_bit_for_bit(optimizer: OptimizerConfig) -> None:
    """One edge: its momentum is the optimizer's, and fresh gradients get no look-ahead."""
    plain = tiny_master(Compensation(), optimizer)
    dana = tiny_master(parse_compensation("dana"), optimizer)
    for master in (plain, dana):
        for k in range(5):
            g = {n: torch.full_like(t, float(k) - 1.5) for n, t in ones(master).items()}
            master.apply_edge_gradient(g, edge_version=master.version, edge_id="only")
    for name, w in plain.edge_weights().items():
        assert torch.equal(dana.edge_weights()[name], w)
    assert dana.edge_weights_for_replica() is dana.edge_weights()


def test_dana_bounds_its_state_and_refuses_bad_input() -> None:
    master = tiny_master(
        parse_compensation("dana:max_edges=2"), OptimizerConfig(lr=0.1, momentum=0.5)
    )
    for edge in ("a", "b", "a", "c"):  # c pushes out b, the least recently updated
        master.apply_edge_gradient(ones(master), edge_version=master.version, edge_id=edge)
    held = momenta(master)
    assert list(held.buffers) == ["a", "c"] and held.evicted == 1
    # Bad edge ids and non-finite gradients: refused, nothing changed.
    before = edge_weights(master)
    nan = {n: torch.full_like(g, math.nan) for n, g in ones(master).items()}
    for edge_id, grads in (
        ("", ones(master)),
        (7, ones(master)),
        ("x" * 257, ones(master)),
        ("\ud800", ones(master)),
        ("d", nan),
    ):
        with pytest.raises(TrainingError):
            master.apply_edge_gradient(grads, edge_version=master.version, edge_id=edge_id)  # type: ignore[arg-type]
    assert list(held.buffers) == ["a", "c"] and master.version == 4
    for name, w in master.edge_weights().items():
        assert torch.equal(w, before[name])
    for bad in ("dana:lookahead=-1", "dana:max_edges=0", "dana:max_edges=1.5"):
        with pytest.raises(ConfigError):
            parse_compensation(bad)
    chain = parse_compensation("delay-beta1+dana:lookahead=0+lookahead")
    assert (chain.edge_step, chain.position) == (Dana(1024), LookAhead())
    assert parse_compensation("delay-beta1+dana").position == DanaLookAhead(1.0)
