"""The run configuration: one typed, validated object; compensation chains that compose."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import Annotated

import pytest

from simultrain.bench.bench import COMPENSATION_VARIANTS, Case
from simultrain.shared.data import load_dataset
from simultrain.shared.data.dataset import PARTITIONS
from simultrain.shared.errors import ConfigError
from simultrain.shared.training.assembly import build_master
from simultrain.shared.training.compensation import (
    Compensation,
    DelayMomentum,
    Forecast,
    parse_compensation,
)
from simultrain.shared.training.config import Key, RunConfig


def _built(config: RunConfig) -> Compensation:
    schedule = config.schedule()
    return parse_compensation(schedule.compensation, alpha=schedule.alpha)


def _plain(comp: Compensation) -> bool:
    """The plain update: no part at all."""
    return comp == Compensation(name=comp.name)


def _forecast(alpha: float) -> Compensation:
    return Compensation((Forecast(alpha),), name="forecast")


def test_validating_a_configuration_imports_no_torch() -> None:
    """The coordinator validates every run it is given: the configuration, its schedule and
    its compensation chain are checked without torch (seconds of import, hundreds of MB)."""
    probe = (
        "import sys\n"
        "from simultrain.shared.training.config import RunConfig\n"
        "RunConfig.from_mapping({'mode': 'synthetic', 'compensation': 'delay-beta1+dana',"
        " 'edges': 4, 'partition': 'iid'}).schedule()\n"
        "RunConfig.from_mapping({'mode': 'syncsgd', 'edges': 3, 'gradient_coding_s': 1})\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout


def test_the_partition_key_offers_exactly_the_partitions_a_dataset_deals() -> None:
    """Spelt in the declaration so that validation loads no data module; held equal here."""
    (key,) = [k for k in RunConfig.declaration() if k.name == "partition"]
    assert key.key.choices == PARTITIONS


def test_alpha_and_the_noforecast_mode_change_what_is_built() -> None:
    # The paper's SimulTrain and its ablations, as the bench and the demo name them.
    built = {
        (mode, alpha): _built(RunConfig(mode=mode, compensation="forecast", alpha=alpha))
        for mode in ("simultrain", "simultrain-noforecast")
        for alpha in (0.5, 0.0, 3.0)
    }
    assert built["simultrain", 0.5] == _forecast(0.5)
    assert built["simultrain", 3.0] == _forecast(3.0)
    assert _plain(built["simultrain", 0.0])  # α = 0: the ablation
    for alpha in (0.5, 0.0, 3.0):
        assert _plain(built["simultrain-noforecast", alpha])
    assert _built(RunConfig(compensation="forecast")) == _forecast(0.5)  # its own α


def test_noforecast_removes_the_forecast_from_whatever_chain_is_in_use() -> None:
    chain = "delay-beta1+forecast"
    full = RunConfig(compensation=chain, alpha=0.25)
    assert _built(full).corrections == (Forecast(0.25),)
    assert _built(full).step_rules == (DelayMomentum(optimizers="adam"),)
    assert full.schedule().compensation == chain
    ablated = RunConfig(mode="simultrain-noforecast", compensation=chain, alpha=0.25)
    assert ablated.schedule().compensation == "delay-beta1"
    assert _built(ablated) == Compensation(
        step_rules=(DelayMomentum(optimizers="adam"),), name="delay-beta1"
    )
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
        ({"window": "4"}, "'window': expected int or 'auto', got str"),
        ({"window": True}, "'window': expected int or 'auto', got bool"),
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
    assert _built(paper) == _forecast(0.5)
    assert _plain(_built(paper_alpha0))
    ours, ours_none = config("ours"), config("ours-nocomp")
    assert ours == RunConfig(mode="simultrain", seed=0, dataset="imu")
    assert _built(ours).step_rules == (DelayMomentum(optimizers="adam"),)
    assert _plain(_built(ours_none))
    assert len({repr(config(v)) for v in COMPENSATION_VARIANTS}) == len(COMPENSATION_VARIANTS)


def test_the_master_gets_the_configured_chain() -> None:
    """Through the assembly the cloud and the driver use: α reaches the master's forecast
    (on old code every variant built delay-beta1, whatever α and mode said)."""
    spec = load_dataset("imu").model_spec()

    def master_compensation(**overrides: object) -> Compensation:
        config = RunConfig.from_mapping(overrides)
        return build_master(config, spec, config.schedule()).compensation

    assert master_compensation(compensation="forecast", alpha=0.5) == _forecast(0.5)
    assert master_compensation(compensation="forecast", alpha=3.0) == _forecast(3.0)
    assert _plain(master_compensation(compensation="forecast", alpha=0.0))
    assert master_compensation().step_rules == (DelayMomentum(optimizers="adam"),)


@dataclass(frozen=True)
class _Extended(RunConfig):
    """A run configuration with one more key, declared as a field is: nothing else."""

    probe_extra_key: Annotated[int, Key("A key only this test declares.", ge=0)] = 0


def test_a_key_declared_once_is_in_every_form_of_the_run_configuration() -> None:
    """The declaration is the only list of keys: the flat form, the JSON schema, the text
    form (environment variables) and the checks all take a new field from it."""
    assert _Extended.keys()[-1] == "probe_extra_key"
    assert "probe_extra_key" in _Extended.keys(driver=False)
    assert _Extended.json_schema()["properties"]["probe_extra_key"] == {
        "type": "integer",
        "minimum": 0,
        "default": 0,
        "description": "A key only this test declares.",
    }
    config = _Extended.from_strings({"probe_extra_key": "2", "window": "8"})
    assert (config.probe_extra_key, config.window) == (2, 8)
    assert _Extended.from_mapping(config.to_mapping()) == config
    with pytest.raises(ConfigError, match="'probe_extra_key': must be ≥ 0, got -1"):
        _Extended.from_mapping({"probe_extra_key": -1})
    with pytest.raises(ConfigError, match="'probe_extra_key': 'two' is not an integer"):
        _Extended.from_strings({"probe_extra_key": "two"})
    with pytest.raises(ConfigError, match=r"unknown run configuration key.*'probe_extra_key'"):
        RunConfig.from_mapping({"probe_extra_key": 2})


def test_a_field_without_a_declared_meaning_is_refused() -> None:
    @dataclass(frozen=True)
    class Undocumented(RunConfig):
        extra: int = 0

    with pytest.raises(TypeError, match="'extra' is not declared with a Key"):
        Undocumented()


def test_the_declaration_is_complete_and_its_json_schema_closed() -> None:
    declared = RunConfig.declaration()
    assert [key.name for key in declared] == list(RunConfig().to_mapping(driver=True))
    assert all(key.description for key in declared)
    assert RunConfig.keys(driver=False) == tuple(RunConfig().to_mapping())
    schema = RunConfig.json_schema()
    assert schema["additionalProperties"] is False
    assert list(schema["properties"]) == list(RunConfig.keys(driver=False))
    assert {k: p["default"] for k, p in schema["properties"].items()} == RunConfig().to_mapping()
    assert schema["properties"]["beta"] == {
        "type": "number",
        "minimum": 0,
        "maximum": 1,
        "default": 0.9,
        "description": "Soft-reconciliation weight β.",
    }
    assert schema["properties"]["optimizer_name"]["enum"] == ["sgd", "adam"]  # a Literal
    assert schema["properties"]["alpha"]["anyOf"][1] == {"type": "null"}  # optional


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        ({"alpha": "", "compensation": "forecast"}, {"alpha": None}),
        ({"round_deadline_s": "null"}, {"round_deadline_s": None}),
        ({"reconcile_every": "0"}, {"reconcile_every": None}),  # 0 = never
        ({"reconcile_every": ""}, {"reconcile_every": None}),
        ({"optimizer_lr": " 1e-2 "}, {"optimizer_lr": 0.01}),
        ({"topk_ratio": "1"}, {"topk_ratio": 1.0}),
        ({"dataset": "npz:/data/x.npz"}, {"dataset": "npz:/data/x.npz"}),
    ],
)
def test_text_is_read_by_each_keys_declared_type(
    texts: dict[str, str], expected: dict[str, object]
) -> None:
    mapping = RunConfig.from_strings(texts).to_mapping()
    assert {key: mapping[key] for key in expected} == expected
    assert RunConfig.from_strings(RunConfig().to_strings()) == RunConfig()


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ({"window": "4.5"}, "'window': '4.5' is not an integer"),
        ({"window": ""}, "'window': '' is not an integer"),  # not optional
        ({"beta": "high"}, "'beta': 'high' is not a number"),
        ({"beta": "nan"}, "'beta': expected float"),
        ({"beta": "1.5"}, "'beta': must be ≤ 1, got 1.5"),
        ({"act_codec": "zip"}, "'act_codec': 'zip' is not one of raw, lz4"),
        ({"mode": "turbo"}, "'mode': 'turbo' is not one of"),
        ({"dataset": ""}, "'dataset': must not be empty"),
        ({"windw": "4"}, "unknown run configuration key.*'windw'"),
    ],
)
def test_bad_text_is_refused_naming_the_key(texts: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_strings(texts)


def test_window_auto_is_a_word_of_the_window_key() -> None:
    # docs/CONFIGURATION.md: `auto` lets the cloud's credits size the window; where none do
    # (the in-process driver, an edge without capability `credits`) it is window 4.
    from simultrain.shared.training.config import AUTO_FALLBACK_WINDOW

    key = next(k for k in RunConfig.declaration() if k.name == "window")
    assert key.parse("auto") == key.parse(" AUTO ") == "auto" and key.parse("8") == 8
    assert key.check("auto") == "auto"
    with pytest.raises(ConfigError, match="'window'"):
        key.parse("automatic")
    assert key.json_schema()["anyOf"][1] == {"type": "string", "enum": ["auto"]}
    auto = RunConfig.from_mapping({"window": "auto"})
    assert auto.window == "auto" and auto.window_cap is None and auto.grants_credits
    assert auto.schedule().window == AUTO_FALLBACK_WINDOW == RunConfig().schedule().window
    assert RunConfig.from_mapping(auto.to_mapping()) == auto
    explicit = RunConfig(window=2)
    assert explicit.window_cap == 2 and not explicit.grants_credits
    credits = RunConfig(window="auto", fleet_in_flight=6).credits()
    assert credits is not None and (credits.total, credits.per_edge_cap) == (6, 6)
