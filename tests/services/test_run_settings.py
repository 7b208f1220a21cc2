"""The run configuration in every service's settings comes from the one declaration.

The cloud's and the edge's ``run_<key>`` settings (their run without a coordinator) and the
coordinator's ``<key>`` settings are `RunConfig.declaration` itself: type, default, bounds and
meaning (shared/run_settings.py). A variable that names nothing is refused at start-up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Annotated

import pytest
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings

from simultrain.cloud.settings import CloudSettings
from simultrain.coordinator.settings import CoordinatorSettings
from simultrain.edge.settings import EdgeSettings
from simultrain.shared.run_settings import (
    SettingsError,
    load_settings,
    run_config_field,
    run_setting_names,
)
from simultrain.shared.settings_doc import settings_table
from simultrain.shared.training.config import Key, RunConfig

SERVICES: tuple[type[BaseSettings], ...] = (CoordinatorSettings, CloudSettings, EdgeSettings)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SIMULTRAIN_* variable of the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith("SIMULTRAIN_"):
            monkeypatch.delenv(name)


def test_the_cloud_and_the_edge_take_every_declared_key_with_its_declaration() -> None:
    """No run key is written in a service: the only run field is ``run``, its settings are
    the declaration's keys (the optimizer's three under their short names) and the
    docs/CONFIGURATION.md rows their defaults and meanings."""
    declared = RunConfig.declaration(driver=False)
    for settings in (CloudSettings, EdgeSettings):
        assert [name for name in settings.model_fields if name.startswith("run")] == ["run"]
        names = run_setting_names(settings)
        assert list(names.values()) == list(declared)
        assert {"run_optimizer", "run_lr", "run_momentum", "run_window"} <= set(names)
        assert settings().run == RunConfig()
        table = settings_table(settings)
        prefix = str(settings.model_config["env_prefix"])
        for name, key in names.items():
            assert f"| `{prefix}{name.upper()}` |" in table
            assert f"| {key.description} |" in table


@dataclass(frozen=True)
class _Extended(RunConfig):
    """The shared run configuration with one key more, declared the one way keys are."""

    probe_extra_key: Annotated[int, Key("A key only this test declares.", ge=0)] = 0


class _ExtendedCloud(CloudSettings):
    run: run_config_field(_Extended) = Field(default_factory=_Extended)  # type: ignore[valid-type]


class _ExtendedEdge(EdgeSettings):
    run: run_config_field(_Extended) = Field(default_factory=_Extended)  # type: ignore[valid-type]


@dataclass(frozen=True)
class _Clashing(RunConfig):
    heartbeat_interval_s: Annotated[float, Key("A run key named like a setting.", gt=0)] = 1.0


class _ClashingCoordinator(CoordinatorSettings):
    run: run_config_field(_Clashing) = Field(default_factory=_Clashing)  # type: ignore[valid-type]


def test_a_run_key_named_like_a_setting_is_refused_where_it_is_declared() -> None:
    with pytest.raises(
        TypeError, match=r"run keys named like settings: \['heartbeat_interval_s'\]"
    ):
        _ClashingCoordinator()


@pytest.mark.parametrize(
    ("settings", "variable"),
    [
        (_ExtendedCloud, "SIMULTRAIN_CLOUD_RUN_PROBE_EXTRA_KEY"),
        (_ExtendedEdge, "SIMULTRAIN_EDGE_RUN_PROBE_EXTRA_KEY"),
    ],
)
def test_a_key_added_to_the_declaration_is_a_cloud_and_an_edge_setting(
    monkeypatch: pytest.MonkeyPatch, settings: type[CloudSettings | EdgeSettings], variable: str
) -> None:
    """No edit in the services: the variable, the keyword, its bounds and its docs/CONFIGURATION.md
    row come from the key's declaration."""
    monkeypatch.setenv(variable, "2")
    assert settings().run.probe_extra_key == 2  # type: ignore[attr-defined]
    assert settings(run_probe_extra_key=3).run.probe_extra_key == 3  # type: ignore[attr-defined]
    monkeypatch.setenv(variable, "-1")
    with pytest.raises(SettingsError, match=rf"{variable}: .*≥ 0"):
        load_settings(settings)
    assert f"| `{variable}` | `0` | A key only this test declares. |" in settings_table(settings)


def test_the_variables_deployments_use_configure_the_cloud_and_the_edge_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for prefix in ("SIMULTRAIN_CLOUD_RUN_", "SIMULTRAIN_EDGE_RUN_"):
        for name, text in {
            "MODE": "fedavg",
            "DATASET": "mnist",
            "WINDOW": "2",
            "OPTIMIZER": "sgd",
            "LR": "0.01",
            "MOMENTUM": "0.5",
            "ROUND_DEADLINE_S": "3",
            "EDGES": "3",
            "BATCH_SIZE": "16",
            "ACT_CODEC": "fp16",  # a key neither service spelt out by hand before
        }.items():
            monkeypatch.setenv(prefix + name, text)
    expected = RunConfig.from_mapping(
        {
            "mode": "fedavg",
            "dataset": "mnist",
            "window": 2,
            "optimizer_name": "sgd",
            "optimizer_lr": 0.01,
            "optimizer_momentum": 0.5,
            "round_deadline_s": 3.0,
            "edges": 3,
            "batch_size": 16,
            "act_codec": "fp16",
        }
    )
    assert CloudSettings().run == expected
    assert EdgeSettings().run == expected
    # Keywords, as the fleet benchmark builds its in-process edges.
    assert EdgeSettings(run_mode="fedavg", run_edges=3).run.edges == 3


@pytest.mark.parametrize("settings", SERVICES)
def test_reconcile_every_zero_means_never_in_every_service(
    monkeypatch: pytest.MonkeyPatch, settings: type[BaseSettings]
) -> None:
    names = run_setting_names(settings)
    name = next(n for n, key in names.items() if key.name == "reconcile_every")
    prefix = str(settings.model_config["env_prefix"])
    monkeypatch.setenv(f"{prefix}{name.upper()}", "0")
    assert load_settings(settings).run.reconcile_every is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("settings", "variable", "text", "reason"),
    [
        (CloudSettings, "SIMULTRAIN_CLOUD_RUN_WINDOW", "four", "'four' is not an integer"),
        (CloudSettings, "SIMULTRAIN_CLOUD_RUN_LR", "0", "must be > 0"),
        (CloudSettings, "SIMULTRAIN_CLOUD_RUN_OPTIMIZER", "rmsprop", "not one of sgd, adam"),
        (EdgeSettings, "SIMULTRAIN_EDGE_RUN_BATCH_SIZE", "0", "must be ≥ 1"),
        (EdgeSettings, "SIMULTRAIN_EDGE_RUN_MODE", "turbo", "'turbo' is not one of"),
    ],
)
def test_a_bad_run_variable_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch,
    settings: type[BaseSettings],
    variable: str,
    text: str,
    reason: str,
) -> None:
    monkeypatch.setenv(variable, text)
    with pytest.raises(SettingsError) as info:
        load_settings(settings)
    assert f"{variable}: " in str(info.value) and reason in str(info.value)


def test_run_keys_that_do_not_go_together_are_refused_by_the_cloud() -> None:
    with pytest.raises(SettingsError, match="run configuration: alpha is the forecast's"):
        load_settings(CloudSettings, run_alpha=0.5)  # the default chain has no forecast part


@pytest.mark.parametrize(
    ("settings", "variable", "closest"),
    [
        (CoordinatorSettings, "SIMULTRAIN_COORDINATOR_WINDW", "SIMULTRAIN_COORDINATOR_WINDOW"),
        (CoordinatorSettings, "SIMULTRAIN_COORDINATOR_DB_PAHT", "SIMULTRAIN_COORDINATOR_DB_PATH"),
        (CloudSettings, "SIMULTRAIN_CLOUD_RUN_WINDW", "SIMULTRAIN_CLOUD_RUN_WINDOW"),
        (CloudSettings, "SIMULTRAIN_CLOUD_RUN_LEARNING_RATE", None),
        (EdgeSettings, "SIMULTRAIN_EDGE_RUN_BATCHSIZE", "SIMULTRAIN_EDGE_RUN_BATCH_SIZE"),
        (EdgeSettings, "simultrain_edge_run_edge", "SIMULTRAIN_EDGE_RUN_EDGES"),
    ],
)
def test_a_misspelt_variable_is_refused_with_the_closest_valid_one(
    monkeypatch: pytest.MonkeyPatch,
    settings: type[BaseSettings],
    variable: str,
    closest: str | None,
) -> None:
    monkeypatch.setenv(variable, "4")
    with pytest.raises(SettingsError) as info:
        load_settings(settings)
    (line,) = str(info.value).splitlines()[1:]  # one line for the one problem
    assert line.strip().startswith(f"{variable.upper()} is not a setting of {settings.__name__}")
    assert line.endswith(f"did you mean {closest}?" if closest else settings.__name__)


def test_a_misspelt_keyword_is_refused_too() -> None:
    with pytest.raises(ValidationError, match="SIMULTRAIN_EDGE_CLOUD_ULR is not a setting"):
        EdgeSettings(cloud_ulr="ws://127.0.0.1:9")


def test_settings_that_are_not_run_keys_are_not_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, text in {
        "HOST": "127.0.0.1",
        "PORT": "0",
        "DB_PATH": ":memory:",
        "LOG_LEVEL": "debug",
        "ACCESS_LOG": "true",
        "HEARTBEAT_INTERVAL_S": "1",
        "WINDOW": "8",
    }.items():
        monkeypatch.setenv(f"SIMULTRAIN_COORDINATOR_{name}", text)
    monkeypatch.setenv("SIMULTRAIN_CLOUD_PORT", "0")
    monkeypatch.setenv("SIMULTRAIN_CLOUD_RUN_WINDOW", "8")
    monkeypatch.setenv("SIMULTRAIN_EDGE_STEPS", "5")
    monkeypatch.setenv("SIMULTRAIN_EDGE_DATASET", "mnist")  # the edge's override, no run key
    coordinator = load_settings(CoordinatorSettings)
    assert (coordinator.db_path, coordinator.log_level, coordinator.run.window) == (
        ":memory:",
        "debug",
        8,
    )
    assert load_settings(CloudSettings).run.window == 8
    edge = load_settings(EdgeSettings)
    assert (edge.steps, edge.dataset, edge.run.dataset) == (5, "mnist", "imu")


@pytest.mark.parametrize(
    ("module", "variable"),
    [
        ("simultrain.cloud.__main__", "SIMULTRAIN_CLOUD_RUN_WINDW"),
        ("simultrain.edge.__main__", "SIMULTRAIN_EDGE_RUN_MODEE"),
        ("simultrain.coordinator.__main__", "SIMULTRAIN_COORDINATOR_PROT"),
    ],
)
def test_a_service_refuses_to_start_in_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    module: str,
    variable: str,
) -> None:
    import importlib

    monkeypatch.setenv(variable, "4")
    assert importlib.import_module(module).main() == 2
    err = capsys.readouterr().err
    assert f"{variable} is not a setting" in err and "did you mean" in err
    assert "Traceback" not in err
