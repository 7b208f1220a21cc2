"""The run configuration: one typed, validated object; compensation chains that compose."""

from __future__ import annotations

import pytest

from simultrain.bench.bench import COMPENSATION_VARIANTS, Case
from simultrain.shared.data import load_dataset
from simultrain.shared.errors import ConfigError
from simultrain.shared.training.compensation import (
    Combined,
    DelayMomentum,
    Forecast,
    NoCompensation,
    compensation_from_name,
)
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.factory import build_master


def _built(config: RunConfig) -> object:
    schedule = config.schedule()
    return compensation_from_name(schedule.compensation, alpha=schedule.alpha)


def test_alpha_and_the_noforecast_mode_change_what_is_built() -> None:
    # The paper's SimulTrain and its ablations, as the bench and the demo name them.
    built = {
        (mode, alpha): _built(RunConfig(mode=mode, compensation="forecast", alpha=alpha))
        for mode in ("simultrain", "simultrain-noforecast")
        for alpha in (0.5, 0.0, 3.0)
    }
    assert built["simultrain", 0.5] == Forecast(alpha=0.5)
    assert built["simultrain", 3.0] == Forecast(alpha=3.0)
    assert isinstance(built["simultrain", 0.0], NoCompensation)  # α = 0: the ablation
    for alpha in (0.5, 0.0, 3.0):
        assert isinstance(built["simultrain-noforecast", alpha], NoCompensation)
    assert _built(RunConfig(compensation="forecast")) == Forecast(alpha=0.5)  # its own α


def test_noforecast_removes_the_forecast_from_whatever_chain_is_in_use() -> None:
    chain = "delay-beta1+forecast"
    full = RunConfig(compensation=chain, alpha=0.25)
    assert isinstance(_built(full), Combined)
    assert full.schedule().compensation == chain
    ablated = RunConfig(mode="simultrain-noforecast", compensation=chain, alpha=0.25)
    assert ablated.schedule().compensation == "delay-beta1"
    assert isinstance(_built(ablated), DelayMomentum)
    # The default chain has no forecast: the ablation is the same chain (nothing to remove).
    assert RunConfig(mode="simultrain-noforecast").schedule().compensation == "delay-beta1"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"alpha": 0.5}, "has no 'forecast' part"),  # the default chain, delay-beta1
        ({"alpha": 0.5, "compensation": "none"}, "has no 'forecast' part"),
        ({"alpha": 0.5, "compensation": "forecast:alpha=0.2"}, "alpha is given twice"),
        ({"alpha": -1.0, "compensation": "forecast"}, "'alpha': must be ≥ 0"),
        ({"compensation": "bogus"}, "unknown compensation 'bogus'"),
        ({"compensation": "forecast:gamma=1"}, "takes no parameter"),
    ],
)
def test_alpha_and_chains_that_would_mean_nothing_are_refused(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_mapping(overrides)


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"windw": 4}, "unknown run configuration key.*'windw'"),
        ({"window": "4"}, "'window': expected int, got str"),
        ({"window": True}, "'window': expected int, got bool"),
        ({"seed": 1.5}, "'seed': expected int, got float"),
        ({"alpha": "0.5", "compensation": "forecast"}, "'alpha': expected float or None"),
        ({"optimizer_lr": "fast"}, "'optimizer_lr': expected float"),
        ({"optimizer_name": "rmsprop"}, "'optimizer_name': 'rmsprop' is not one of"),
        ({"act_codec": 3}, "'act_codec': expected str"),
        ({"batch_size": 0}, "'batch_size': must be ≥ 1"),
        ({"partition": "random"}, "'partition': 'random' is not one of"),
        ({"beta": float("nan")}, "'beta': expected float"),
        ({"mode": None}, "'mode': must not be null"),
    ],
)
def test_unknown_keys_and_wrong_types_are_refused_by_name(
    mapping: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_mapping(mapping)


def test_the_flat_form_round_trips_and_takes_ints_for_floats() -> None:
    config = RunConfig(
        mode="simultrain-noreconcile",
        compensation="delay-beta1+forecast",
        alpha=0.3,
        partition="label-skew",
        dataset="mnist",
    )
    assert RunConfig.from_mapping(config.to_mapping()) == config
    assert RunConfig.from_mapping(config.to_mapping(driver=True)) == config
    assert set(config.to_mapping(driver=True)) == set(RunConfig.keys())
    taken = RunConfig.from_mapping({"optimizer_lr": 1, "beta": 1, "reconcile_every": 0})
    assert taken.optimizer.lr == 1.0 and isinstance(taken.optimizer.lr, float)
    assert taken.beta == 1.0 and taken.reconcile_every is None  # 0 = never


def test_bench_ablation_pairs_differ_in_their_compensation_only() -> None:
    def config(variant: str) -> RunConfig:
        return Case("ablation", "simultrain", "lan", "imu", 0, variant, 10, 0).run_config()

    paper, paper_alpha0 = config("paper"), config("paper-alpha0")
    assert _built(paper) == Forecast(alpha=0.5)
    assert isinstance(_built(paper_alpha0), NoCompensation)
    ours, ours_none = config("ours"), config("ours-nocomp")
    assert ours == RunConfig(mode="simultrain", seed=0, dataset="imu")
    assert isinstance(_built(ours), DelayMomentum)
    assert isinstance(_built(ours_none), NoCompensation)
    assert len({repr(config(v)) for v in COMPENSATION_VARIANTS}) == len(COMPENSATION_VARIANTS)


def test_the_master_gets_the_configured_chain() -> None:
    """Through the factory the cloud and the driver use: α reaches the master's forecast
    (on the old code every variant built delay-beta1, whatever α and mode said)."""
    spec = load_dataset("imu").model_spec()

    def master_compensation(**overrides: object) -> object:
        config = RunConfig.from_mapping(overrides)
        return build_master(config, spec, config.schedule()).compensation

    assert master_compensation(compensation="forecast", alpha=0.5) == Forecast(alpha=0.5)
    assert master_compensation(compensation="forecast", alpha=3.0) == Forecast(alpha=3.0)
    assert isinstance(master_compensation(compensation="forecast", alpha=0.0), NoCompensation)
    assert isinstance(master_compensation(), DelayMomentum)


def test_every_service_schema_carries_exactly_the_run_configuration() -> None:
    """The coordinator's schema and settings hold the same keys as `RunConfig.to_mapping`,
    and a mapping accepted by one is accepted by the other, with the same values."""
    from simultrain.coordinator.records import RunConfig as CoordinatorRunConfig
    from simultrain.coordinator.settings import CoordinatorSettings

    keys = set(RunConfig().to_mapping())
    assert set(CoordinatorRunConfig.model_fields) == keys
    assert keys <= set(CoordinatorSettings.model_fields)
    shared = RunConfig(compensation="forecast", alpha=0.3, partition="iid", window=2)
    served = CoordinatorRunConfig.model_validate(shared.to_mapping())
    assert RunConfig.from_mapping(served.model_dump()) == RunConfig.from_mapping(
        shared.to_mapping()
    )
    assert CoordinatorRunConfig().model_dump() == RunConfig().to_mapping()


def test_cloud_and_edge_settings_describe_a_run_config() -> None:
    """Without a coordinator the services build their run from ``run_*`` settings: every one
    names a RunConfig key, and the defaults are RunConfig's own."""
    from simultrain.cloud.settings import CloudSettings
    from simultrain.edge.settings import EdgeSettings

    for settings in (CloudSettings(), EdgeSettings()):
        assert RunConfig.from_settings(settings.model_dump()) == RunConfig()
    cloud = CloudSettings(run_compensation="forecast", run_alpha=0.2, run_lr=0.01)
    built = RunConfig.from_settings(cloud.model_dump())
    assert (built.compensation, built.alpha, built.optimizer.lr) == ("forecast", 0.2, 0.01)
    with pytest.raises(ConfigError, match="has no 'forecast' part"):
        RunConfig.from_settings(CloudSettings(run_alpha=0.5).model_dump())
