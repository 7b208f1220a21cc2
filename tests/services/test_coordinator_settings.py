"""CoordinatorSettings: defaults, environment variables, secret files, auth consistency."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from simultrain.coordinator import CoordinatorSettings, SettingsError, load_settings
from simultrain.coordinator.records import RunConfig, run_config_field
from simultrain.coordinator.settings import settings_table
from simultrain.shared.settings_doc import setting_names
from simultrain.shared.settings_doc import settings_table as shared_settings_table
from simultrain.shared.training.config import Key

KEY = "k" * 40

pytestmark = pytest.mark.usefixtures("coordinator_clean_env")


def test_defaults() -> None:
    settings = CoordinatorSettings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8700)
    assert settings.db_path == "simultrain-coordinator.db"
    assert settings.auth_enabled is False
    assert settings.token_keys() == []
    assert settings.run_config() == RunConfig()
    assert settings.run_config().to_mapping() == {
        **settings.run_config().to_mapping(),
        "mode": "simultrain",
        "alpha": None,
        "beta": 0.9,
        "reconcile_every": 10,
        "window": "auto",
        "act_codec": "lz4",
        "delta_codec": "lz4",
        "grad_codec": "lz4",
        "dataset": "imu",
        "model_id": None,
        "seed": 0,
        "batch_size": 32,
    }


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMULTRAIN_COORDINATOR_PORT", "0")
    monkeypatch.setenv("SIMULTRAIN_COORDINATOR_DB_PATH", ":memory:")
    monkeypatch.setenv("SIMULTRAIN_COORDINATOR_ALPHA", "0")
    monkeypatch.setenv("SIMULTRAIN_COORDINATOR_COMPENSATION", "delay-beta1+forecast")
    monkeypatch.setenv("SIMULTRAIN_COORDINATOR_RECONCILE_EVERY", "0")
    monkeypatch.setenv("SIMULTRAIN_COORDINATOR_MODE", "split-sync")
    monkeypatch.setenv("SIMULTRAIN_COORDINATOR_ACT_CODEC", "fp16")
    settings = CoordinatorSettings()
    assert settings.port == 0 and settings.db_path == ":memory:"
    config = settings.run_config()
    assert (config.alpha, config.reconcile_every, config.mode, config.codecs.act) == (
        0.0,
        None,
        "split-sync",
        "fp16",
    )


def test_keyword_arguments_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMULTRAIN_COORDINATOR_PORT", "9999")
    assert CoordinatorSettings(port=0).port == 0


def test_frozen() -> None:
    settings = CoordinatorSettings()
    with pytest.raises(ValidationError):
        settings.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "bad",
    [
        {"port": -1},
        {"port": 65536},
        {"alpha": -0.1},
        {"alpha": float("inf")},
        {"alpha": 0.5},  # the default chain (delay-beta1) has no forecast to take it
        {"alpha": 0.5, "compensation": "forecast:alpha=0.2"},
        {"beta": 1.5},
        {"window": -1},
        {"batch_size": 0},
        {"mode": "turbo"},
        {"grad_codec": "zip"},
        {"heartbeat_interval_s": 5, "heartbeat_timeout_s": 5},
        {"heartbeat_interval_s": 0},
        {"token_ttl_s": 0},
        {"unknown_field": 1},
    ],
)
def test_invalid_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        CoordinatorSettings(**bad)  # type: ignore[arg-type]


def test_auth_all_or_nothing() -> None:
    full = CoordinatorSettings(enrollment_secret="e", token_key=KEY, admin_token="a")
    assert full.auth_enabled and full.token_keys() == [KEY]
    for partial in (
        {"enrollment_secret": "e"},
        {"token_key": KEY, "admin_token": "a"},
        {"admin_token": "a", "enrollment_secret": "e"},
    ):
        with pytest.raises(ValidationError, match="half configured"):
            CoordinatorSettings(**partial)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="must not be empty"):
        CoordinatorSettings(enrollment_secret="", token_key=KEY, admin_token="a")


def test_secrets_are_hidden_and_keys_must_be_strong() -> None:
    settings = CoordinatorSettings(enrollment_secret="e-secret", token_key=KEY, admin_token="a-tok")
    text = repr(settings) + str(settings) + settings.model_dump_json()
    for secret in ("e-secret", KEY, "a-tok"):
        assert secret not in text
    with pytest.raises(SettingsError) as info:
        load_settings(enrollment_secret="e", token_key="too-short-key", admin_token="a")
    message = str(info.value)
    assert "SIMULTRAIN_COORDINATOR_TOKEN_KEY" in message and "32 bytes" in message
    assert "too-short-key" not in message


def test_secret_files(tmp_path: Path) -> None:
    (tmp_path / "enroll").write_text("enroll-secret\n")
    (tmp_path / "key").write_text(f"{KEY}\n{'o' * 32}\n\n")
    (tmp_path / "admin").write_text("  admin-token  \n")
    settings = CoordinatorSettings(
        enrollment_secret_file=tmp_path / "enroll",
        token_key_file=tmp_path / "key",
        admin_token_file=tmp_path / "admin",
    )
    assert settings.enrollment_secret is not None and settings.admin_token is not None
    assert settings.enrollment_secret.get_secret_value() == "enroll-secret"
    assert settings.admin_token.get_secret_value() == "admin-token"
    assert settings.token_keys() == [KEY, "o" * 32]


def test_secret_files_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in [("enroll", "e"), ("key", KEY), ("admin", "a")]:
        (tmp_path / name).write_text(value)
    monkeypatch.setenv("SIMULTRAIN_COORDINATOR_ENROLLMENT_SECRET_FILE", str(tmp_path / "enroll"))
    monkeypatch.setenv("SIMULTRAIN_COORDINATOR_TOKEN_KEY_FILE", str(tmp_path / "key"))
    monkeypatch.setenv("SIMULTRAIN_COORDINATOR_ADMIN_TOKEN_FILE", str(tmp_path / "admin"))
    monkeypatch.setenv("SIMULTRAIN_COORDINATOR_TOKEN_PREVIOUS_KEYS", "[]")
    assert CoordinatorSettings().auth_enabled


def test_previous_keys_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMULTRAIN_COORDINATOR_TOKEN_PREVIOUS_KEYS", f'["{"p" * 32}"]')
    settings = CoordinatorSettings(enrollment_secret="e", token_key=KEY, admin_token="a")
    assert settings.token_keys() == [KEY, "p" * 32]
    with pytest.raises(ValidationError, match="needs token_key"):
        CoordinatorSettings()


def test_secret_file_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n \n")
    (tmp_path / "admin").write_text("a")
    with pytest.raises(ValidationError, match="not both"):
        CoordinatorSettings(admin_token="x", admin_token_file=tmp_path / "admin")
    with pytest.raises(ValidationError, match="is empty"):
        CoordinatorSettings(admin_token_file=tmp_path / "empty")
    with pytest.raises(ValidationError, match="cannot read"):
        CoordinatorSettings(admin_token_file=tmp_path / "missing")


def test_settings_table_documents_every_field() -> None:
    table = settings_table()
    names = setting_names(CoordinatorSettings)
    # The run field is a variable per key of the shared declaration, not one of its own.
    assert set(RunConfig.keys(driver=False)) <= set(names) and "run" not in names
    assert set(CoordinatorSettings.model_fields) - {"run"} <= set(names)
    for name in names:
        row = next(r for r in table.splitlines() if f"`SIMULTRAIN_COORDINATOR_{name.upper()}`" in r)
        assert not row.endswith("|  |"), f"{name} is undocumented"


def test_every_run_key_is_a_variable_and_keywords_beat_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each key of the shared declaration is ``SIMULTRAIN_COORDINATOR_<KEY>``, read by its
    declared type (as the demo, compose and k8s set them: text, "" for null)."""
    wanted = RunConfig.from_mapping(
        {
            "mode": "fedavg",
            "window": 2,
            "compensation": "delay-beta1+forecast",
            "alpha": 0.25,
            "reconcile_every": None,
            "round_deadline_s": 1.5,
            "optimizer_name": "sgd",
            "optimizer_lr": 0.05,
            "optimizer_cloud_momentum": 0.5,
            "delta_codec": "fp16",
            "topk_ratio": 0.2,
            "model_id": "imu-thin",
        }
    )
    for key, text in wanted.to_strings().items():
        monkeypatch.setenv(f"SIMULTRAIN_COORDINATOR_{key.upper()}", text)
    assert CoordinatorSettings().run_config() == wanted
    assert load_settings(window=8, beta=1).run_config().to_mapping() == {
        **wanted.to_mapping(),
        "window": 8,
        "beta": 1.0,
    }


@pytest.mark.parametrize(
    ("variable", "text", "reason"),
    [
        ("WINDOW", "four", "'four' is not an integer"),
        ("BETA", "1.5", "must be ≤ 1"),
        ("OPTIMIZER_NAME", "rmsprop", "'rmsprop' is not one of sgd, adam"),
        ("ACT_CODEC", "zip", "'zip' is not one of raw, lz4"),
        ("BATCH_SIZE", "", "'' is not an integer"),
    ],
)
def test_a_bad_run_variable_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, text: str, reason: str
) -> None:
    monkeypatch.setenv(f"SIMULTRAIN_COORDINATOR_{variable}", text)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert f"SIMULTRAIN_COORDINATOR_{variable}: " in str(info.value)
    assert reason in str(info.value)


def test_run_keys_that_do_not_go_together_are_refused() -> None:
    with pytest.raises(SettingsError, match="run configuration: alpha is the forecast's"):
        load_settings(alpha=0.5)  # the default chain has no forecast part


@dataclass(frozen=True)
class _Extended(RunConfig):
    """The shared run configuration with one key more, declared the one way keys are."""

    probe_extra_key: Annotated[int, Key("A key only this test declares.", ge=0)] = 0


class _ExtendedSettings(CoordinatorSettings):
    run: run_config_field(_Extended) = Field(  # type: ignore[valid-type]
        default_factory=_Extended, description="The run configuration: one variable per key."
    )


class _ExtendedView(BaseModel):
    run_config: run_config_field(_Extended)  # type: ignore[valid-type]


def test_a_key_added_to_the_shared_declaration_reaches_settings_table_and_schema(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No edit in the coordinator: the variable, the keyword, the docs/CONFIGURATION.md row, the API
    schema and the wire form of a new key all come from its declaration."""
    monkeypatch.setenv("SIMULTRAIN_COORDINATOR_PROBE_EXTRA_KEY", "2")
    assert _ExtendedSettings().run.probe_extra_key == 2
    assert _ExtendedSettings(probe_extra_key=3).run.probe_extra_key == 3
    monkeypatch.setenv("SIMULTRAIN_COORDINATOR_PROBE_EXTRA_KEY", "-1")
    with pytest.raises(ValidationError, match=r"SIMULTRAIN_COORDINATOR_PROBE_EXTRA_KEY: .*≥ 0"):
        _ExtendedSettings()
    row = "| `SIMULTRAIN_COORDINATOR_PROBE_EXTRA_KEY` | `0` | A key only this test declares. |"
    assert row in shared_settings_table(_ExtendedSettings)
    assert "probe_extra_key" in setting_names(_ExtendedSettings)
    schema = _ExtendedView.model_json_schema()["properties"]["run_config"]["properties"]
    assert schema["probe_extra_key"]["description"] == "A key only this test declares."
    view = _ExtendedView.model_validate({"run_config": {"probe_extra_key": 1}})
    assert view.model_dump()["run_config"]["probe_extra_key"] == 1
    adapter = TypeAdapter(run_config_field(RunConfig))
    with pytest.raises(ValidationError, match=r"unknown run configuration key.*probe_extra_key"):
        adapter.validate_python({"probe_extra_key": 1})  # not a key of the real one
