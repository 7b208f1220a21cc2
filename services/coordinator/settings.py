"""The coordinator's one settings object (docs/ARCHITECTURE.md, "Settings").

Built once at start-up from keyword arguments and ``SIMULTRAIN_COORDINATOR_*`` environment
variables, immutable, passed down. Every field is an environment variable of the same name
in upper case with that prefix (``port`` → ``SIMULTRAIN_COORDINATOR_PORT``); lists are JSON.
The run configuration is one field, ``run`` (the shared `RunConfig`), set key by key: each
key of its declaration is a variable (``window`` → ``SIMULTRAIN_COORDINATOR_WINDOW``) and a
keyword (``load_settings(window=8)``), so a key added to `RunConfig` needs no edit here
(shared/run_settings.py). Any other ``SIMULTRAIN_COORDINATOR_*`` variable is refused at
start-up, naming the closest valid one.
:func:`settings_table` renders the table for docs/CONFIGURATION.md from the field descriptions and
the run keys' declaration.

Authentication (SECURITY.md) is on when any of ``enrollment_secret``, ``token_key`` or
``admin_token`` is configured, and then all three are required — a half-configured
coordinator would enroll edges it cannot vouch for. With none configured it runs in
development mode: anyone may register, no tokens are issued, and a warning is logged.
Each secret may instead be read from a file (``*_file``; surrounding whitespace stripped),
which is how container secrets are usually mounted. Secrets are ``SecretStr`` so they never
appear in ``repr``, logs or tracebacks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from simultrain.shared.auth import MIN_KEY_BYTES
from simultrain.shared.run_settings import RunSettings, SettingsError
from simultrain.shared.run_settings import load_settings as load_shared_settings
from simultrain.shared.settings_doc import settings_table as shared_settings_table

from .records import RunConfig, RunConfigField

__all__ = ["ENV_PREFIX", "CoordinatorSettings", "SettingsError", "load_settings", "settings_table"]

ENV_PREFIX = "SIMULTRAIN_COORDINATOR_"

# (secret field, file field): the file is read when the secret is not given directly.
_SECRET_FILES = (
    ("enrollment_secret", "enrollment_secret_file"),
    ("token_key", "token_key_file"),
    ("admin_token", "admin_token_file"),
)


class CoordinatorSettings(RunSettings):
    """Everything the coordinator process is configured with."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    # --- serving ---------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8700, ge=0, le=65535, description="TCP port; 0 picks a free port.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Log level of the coordinator and uvicorn (logs go to stderr)."
    )
    access_log: bool = Field(False, description="Log every HTTP request (to stderr).")
    db_path: str = Field(
        "simultrain-coordinator.db",
        description='SQLite database file holding the state; ":memory:" keeps it in memory.',
    )
    ssl_certfile: Path | None = Field(None, description="TLS certificate chain (PEM): serve HTTPS.")
    ssl_keyfile: Path | None = Field(None, description="TLS private key (PEM) of ssl_certfile.")

    # --- health ----------------------------------------------------------------------
    heartbeat_interval_s: float = Field(
        2.0, gt=0, description="How often clouds and edges are asked to heartbeat (seconds)."
    )
    heartbeat_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A cloud or edge silent this long is marked down; a down cloud's edges "
        "are reassigned to a live cloud (seconds).",
    )

    # --- run configuration handed to every edge (docs/DESIGN.md §2) -------------------
    # One SIMULTRAIN_COORDINATOR_<KEY> variable (or keyword argument) per key of the shared
    # RunConfig, whose declaration (shared/training/config.py) gives each its type, default,
    # bounds and meaning: `RunSettings` (shared/run_settings.py) reads them and builds it.
    run: RunConfigField = Field(
        default_factory=RunConfig,
        description="The run configuration handed to every edge: one variable per key.",
    )

    # --- authentication (SECURITY.md) --------------------------------------------------
    enrollment_secret: SecretStr | None = Field(
        None, description="Secret an edge presents to register (X-Enrollment-Secret)."
    )
    enrollment_secret_file: Path | None = Field(None, description="File holding enrollment_secret.")
    token_key: SecretStr | None = Field(
        None,
        description=f"HMAC key (≥ {MIN_KEY_BYTES} bytes) signing edge tokens; the cloud "
        "verifies with the same key.",
    )
    token_key_file: Path | None = Field(
        None,
        description="File holding token_key; further lines are previous keys, still "
        "accepted (rotation).",
    )
    token_previous_keys: tuple[SecretStr, ...] = Field(
        (), description="Previous token keys still accepted for verification (JSON list)."
    )
    token_ttl_s: float = Field(
        3600.0, ge=1, description="Lifetime of an edge token; refreshed on every heartbeat."
    )
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token for admin endpoints (edge removal) and for clouds "
        "registering and heartbeating.",
    )
    admin_token_file: Path | None = Field(None, description="File holding admin_token.")

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for secret_field, file_field in _SECRET_FILES:
            path = data.get(file_field)
            if path is None or path == "":
                continue
            if data.get(secret_field) not in (None, ""):
                raise ValueError(f"give {secret_field} or {file_field}, not both")
            try:
                lines = [ln.strip() for ln in Path(path).read_text("utf-8").splitlines()]
            except (OSError, UnicodeDecodeError) as exc:
                # The message names the file, never its content.
                raise ValueError(f"cannot read {file_field} {str(path)!r}: {exc}") from exc
            lines = [ln for ln in lines if ln]
            if not lines:
                raise ValueError(f"{file_field} {str(path)!r} is empty")
            data[secret_field] = lines[0]
            if secret_field == "token_key" and len(lines) > 1:
                if data.get("token_previous_keys"):
                    raise ValueError(
                        "previous token keys given both in token_key_file and token_previous_keys"
                    )
                data["token_previous_keys"] = tuple(lines[1:])
        return data

    @field_validator("token_key")
    @classmethod
    def _strong_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_KEY_BYTES:
            raise ValueError(f"token_key must be at least {MIN_KEY_BYTES} bytes")
        return value

    @field_validator("token_previous_keys")
    @classmethod
    def _strong_previous_keys(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        if any(len(key.get_secret_value().encode()) < MIN_KEY_BYTES for key in value):
            raise ValueError(f"every previous token key must be at least {MIN_KEY_BYTES} bytes")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CoordinatorSettings:
        if self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            raise ValueError("heartbeat_timeout_s must be longer than heartbeat_interval_s")
        configured = {
            "enrollment_secret": self.enrollment_secret,
            "token_key": self.token_key,
            "admin_token": self.admin_token,
        }
        given = [name for name, value in configured.items() if value is not None]
        if given and len(given) < len(configured):
            missing = sorted(set(configured) - set(given))
            raise ValueError(
                f"authentication is half configured: {', '.join(given)} set but "
                f"{', '.join(missing)} missing; set all three or none (development mode)"
            )
        for name in given:
            value = configured[name]
            if value is not None and not value.get_secret_value():
                raise ValueError(f"{name} must not be empty")
        if self.token_previous_keys and self.token_key is None:
            raise ValueError("token_previous_keys needs token_key")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("TLS needs both ssl_certfile and ssl_keyfile, or neither")
        return self

    @property
    def auth_enabled(self) -> bool:
        """Whether registration, edge heartbeats and admin endpoints require credentials."""
        return self.token_key is not None

    def token_keys(self) -> list[str]:
        """Keys accepted when verifying edge tokens: the signing key, then previous ones."""
        if self.token_key is None:
            return []
        return [self.token_key.get_secret_value()] + [
            key.get_secret_value() for key in self.token_previous_keys
        ]

    def run_config(self) -> RunConfig:
        """The run configuration these settings describe."""
        return self.run


def settings_table() -> str:
    """A Markdown table of every environment variable, its default and its meaning."""
    return shared_settings_table(CoordinatorSettings)


def load_settings(**overrides: Any) -> CoordinatorSettings:
    """Build the settings from ``overrides`` and the environment.

    Raises :class:`SettingsError` whose message lists each bad setting, one a line, but
    never the value given: pydantic's own message echoes inputs, and an input may be a key.
    """
    return load_shared_settings(CoordinatorSettings, **overrides)
