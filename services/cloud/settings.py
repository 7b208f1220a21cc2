"""The cloud service's settings: one immutable object, every field also an environment variable.

Environment variables are the field names upper-cased with the prefix ``SIMULTRAIN_CLOUD_``
(``SIMULTRAIN_CLOUD_PORT=8800``). The run configuration (mode, model, optimizer, …) comes from
the coordinator when ``coordinator_url`` is set; without one it is ``run``, set key by key
from the shared declaration: ``SIMULTRAIN_CLOUD_RUN_<KEY>`` (``run_optimizer``, ``run_lr`` and
``run_momentum`` for the optimizer's name, learning rate and momentum), a misspelt one refused
at start-up (shared/run_settings.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from simultrain.shared.run_settings import SHORT_RUN_NAMES, RunConfigField, RunSettings
from simultrain.shared.training.config import RunConfig

__all__ = ["CloudSettings"]


class CloudSettings(RunSettings):
    # extra="ignore" only for the type checker: the run keys are keywords (``run_window=8``)
    # that are no fields, and RunSettings refuses any other unknown name itself.
    model_config = SettingsConfigDict(env_prefix="SIMULTRAIN_CLOUD_", frozen=True, extra="ignore")
    run_prefix = "run_"
    run_short_names = SHORT_RUN_NAMES

    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8800, ge=0, le=65535, description="TCP port; 0 picks a free port.")
    public_url: str | None = Field(
        None,
        description="ws:// or wss:// base URL edges use to reach this cloud (default: the "
        "bound address). Set it when edges connect through a proxy, a load balancer or netem.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Log level (logs go to stderr)."
    )
    coordinator_url: str | None = Field(None, description="Coordinator base URL, if any.")
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token for registering with the coordinator and for admin "
        "endpoints (GET /v1/model). Unset: those endpoints are open (development).",
    )
    admin_token_file: Path | None = Field(None, description="File holding admin_token.")
    token_key: SecretStr | None = Field(
        None,
        description="HMAC key that verifies edge tokens (the coordinator's token_key). Set: "
        "every session needs a valid token for its edge id. Unset: no auth (development).",
    )
    token_key_file: Path | None = Field(
        None, description="File holding token_key; further lines are previous keys still accepted."
    )
    max_queued_messages: int = Field(
        32, ge=1, description="Per-session queue depth: messages received but not yet handled."
    )
    max_messages_per_s: float = Field(
        2000.0, gt=0, description="Per-session message rate limit (token bucket, burst 2 s)."
    )
    heartbeat_interval_s: float = Field(
        2.0, gt=0, description="Heartbeat period to the coordinator."
    )
    # The run configuration when no coordinator is given: one ``run_<key>`` setting per key
    # of the shared declaration (SIMULTRAIN_CLOUD_RUN_WINDOW, …; shared/run_settings.py).
    run: RunConfigField = Field(
        default_factory=RunConfig,
        description="The run configuration without a coordinator: one variable per key.",
    )
    eval_dataset: str | None = Field(
        None,
        description="Held-out set the cloud evaluates the master on (default: the run's "
        "dataset's test split). Raw data never leaves the edge; this is the operator's own.",
    )
    eval_interval_s: float = Field(
        5.0,
        ge=0,
        description="Seconds between held-out evaluations of the master while it trains "
        "(the dashboard's accuracy curve, /metrics); 0 turns them off.",
    )
    max_frame_bytes: int = Field(64 << 20, gt=0, description="Largest WebSocket message accepted.")
    max_decompressed_bytes: int = Field(256 << 20, gt=0, description="Largest decoded frame.")
    device: str = Field(
        "auto",
        description="Where the master computes: auto (CUDA when torch sees a GPU, else CPU), "
        "cpu, cuda, cuda:N.",
    )
    compute_threads: int = Field(
        1, ge=1, description="Torch threads for the master (one compute thread runs all steps)."
    )
    checkpoint_dir: Path | None = Field(None, description="Where checkpoints go (none: off).")
    checkpoint_every: int = Field(200, ge=1, description="Master updates between checkpoints.")
    # Replicas (docs/REPLICAS.md): on when MASTER_ADDR is set, torchrun's rendezvous variables.
    replica_sync_every: int = Field(
        50, ge=1, description="Replicas: local updates that start a sync round."
    )
    replica_sync_interval_s: float = Field(
        1.0, gt=0, description="Replicas: longest time between sync rounds."
    )
    replica_timeout_s: float = Field(
        30.0, gt=0, description="Replicas: a collective or the rendezvous store fails after this."
    )
    replica_join_window_s: float = Field(
        3.0, gt=0, description="Replicas: how long a new group generation waits for members."
    )
    replica_backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="Replicas: collective backend (auto: nccl on CUDA, else gloo)."
    )
    replica_merge: Literal["mean", "sum"] = Field(
        "mean",
        description="Replicas: a sync round adds the mean of the replicas' deltas (FedAvg) "
        "or their sum (Downpour; loses accuracy with more replicas).",
    )
    ssl_certfile: Path | None = Field(None, description="TLS certificate (PEM) → HTTPS/WSS.")
    ssl_keyfile: Path | None = Field(None, description="TLS private key (PEM).")
    ca_file: Path | None = Field(
        None, description="CA bundle that verifies an https coordinator (default: system CAs)."
    )
    graceful_shutdown_s: float = Field(10.0, ge=0, description="Time to drain sessions on SIGTERM.")

    def token_keys(self) -> list[str]:
        """Keys that verify edge tokens, newest first (rotation: SECURITY.md, "Key rotation")."""
        keys: list[str] = []
        if self.token_key is not None:
            keys.append(self.token_key.get_secret_value())
        if self.token_key_file is not None:
            keys += [
                line.strip()
                for line in self.token_key_file.read_text().splitlines()
                if line.strip()
            ]
        return keys

    def admin_secret(self) -> str | None:
        if self.admin_token is not None:
            return self.admin_token.get_secret_value()
        if self.admin_token_file is not None:
            return self.admin_token_file.read_text().strip()
        return None
