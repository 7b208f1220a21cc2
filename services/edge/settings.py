"""The edge agent's settings: one immutable object, every field also an environment variable.

Environment variables are the field names upper-cased with the prefix ``SIMULTRAIN_EDGE_``
(``SIMULTRAIN_EDGE_COORDINATOR_URL=http://coordinator:8700``). With a coordinator the agent
registers and receives its cloud and run configuration; without one it connects to
``cloud_url`` and trains ``run``, set key by key from the shared declaration:
``SIMULTRAIN_EDGE_RUN_<KEY>`` (``run_optimizer``, ``run_lr`` and ``run_momentum`` for the
optimizer's name, learning rate and momentum), a misspelt one refused at start-up
(shared/run_settings.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from simultrain.shared.run_settings import SHORT_RUN_NAMES, RunConfigField, RunSettings
from simultrain.shared.training.config import RunConfig

__all__ = ["EdgeSettings"]


class EdgeSettings(RunSettings):
    # extra="ignore" only for the type checker: the run keys are keywords (``run_window=8``)
    # that are no fields, and RunSettings refuses any other unknown name itself.
    model_config = SettingsConfigDict(env_prefix="SIMULTRAIN_EDGE_", frozen=True, extra="ignore")
    run_prefix = "run_"
    run_short_names = SHORT_RUN_NAMES

    coordinator_url: str | None = Field(None, description="Coordinator base URL (http/https).")
    cloud_url: str | None = Field(
        None, description="Cloud base URL (ws/wss) when there is no coordinator."
    )
    cloud_url_override: str | None = Field(
        None,
        description="Connect here instead of the cloud URL the coordinator assigns (e.g. "
        "through a link emulator or a local tunnel).",
    )
    name: str | None = Field(None, description="Free-form label shown by the coordinator.")
    edge_id: str | None = Field(None, description="Fixed edge id when there is no coordinator.")
    token: SecretStr | None = Field(
        None, description="Token for a cloud with authentication on, when there is no coordinator."
    )
    enrollment_secret: SecretStr | None = Field(None, description="Secret to register (auth on).")
    enrollment_secret_file: Path | None = Field(None, description="File holding the secret.")
    ca_file: Path | None = Field(None, description="CA bundle to verify the cloud/coordinator TLS.")
    shard_index: int = Field(0, ge=0, description="Which data shard this edge holds.")
    shard_count: int = Field(1, ge=1, description="How many shards the data is cut into.")
    steps: int = Field(0, ge=0, description="Batches to train, then stop (0: run forever).")
    dataset: str | None = Field(None, description="Override the run's dataset (e.g. npz:PATH).")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Log level (logs go to stderr)."
    )
    heartbeat_interval_s: float | None = Field(
        None,
        gt=0,
        description="Heartbeat period, streaming or not (default: the cadence the "
        "coordinator states).",
    )
    reconnect_initial_s: float = Field(0.2, gt=0, description="First reconnect delay.")
    reconnect_max_s: float = Field(10.0, gt=0, description="Largest reconnect delay.")
    drain_timeout_s: float = Field(
        30.0, ge=0, description="On SIGTERM, how long to wait for in-flight batches to be applied."
    )
    compute_threads: int = Field(2, ge=1, description="Torch threads (a Pi 4 has 4 cores).")
    slowdown: float = Field(
        1.0,
        ge=1.0,
        description="Edge CPU emulation: after each compute section sleep (k−1)× its duration.",
    )
    status_file: Path | None = Field(
        None, description="Write a JSON progress line here after every acknowledged batch."
    )
    state_dir: Path | None = Field(
        None,
        description="Directory of the edge's durable state (identity, data cursor, batches "
        "not yet durable in the cloud): a restarted agent resumes as the same edge and loses "
        "no sample. Unset: all of it lives in memory and a restart enrolls a new edge.",
    )
    state_max_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1,
        description="Bound on the kept batches in the state directory; past it the agent "
        "stops with an error (exit status 78).",
    )
    watchdog: bool = Field(True, description="Ping systemd's watchdog when run under it.")
    # The run configuration when there is no coordinator: one ``run_<key>`` setting per key
    # of the shared declaration (SIMULTRAIN_EDGE_RUN_WINDOW, …; shared/run_settings.py).
    run: RunConfigField = Field(
        default_factory=RunConfig,
        description="The run configuration without a coordinator: one variable per key.",
    )
