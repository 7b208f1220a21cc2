"""What the coordinator records: the run configuration, clouds and edges.

Records are immutable values; a store keeps the latest value per id and updates are new
values (``dataclasses.replace``). Version counters are "as last reported" by the cloud
(master version ``v_c``) and the edge (replica version ``v_e``); SPEC.md "Version counters
are the backbone".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from simultrain.shared.errors import ConfigError
from simultrain.shared.training.schedule import make_schedule

__all__ = ["CloudRecord", "Codec", "EdgeRecord", "Mode", "Partition", "RunConfig", "Status"]

# SPEC.md "The same machinery runs every baseline".
Mode = Literal[
    "centralized",
    "syncsgd",
    "split-sync",
    "fedavg",
    "simultrain",
    "simultrain-noforecast",
    "simultrain-noreconcile",
    "synthetic",
    "synthetic-nolocal",
]
# SPEC.md "Wire protocol": lossless raw/lz4 and the lossy codecs.
Codec = Literal["raw", "lz4", "fp16", "int8", "topk"]
# shared/data/dataset.py `PARTITIONS`: how `Dataset.shard` deals training data to edges.
Partition = Literal["auto", "groups", "iid", "label-skew"]


class Status(StrEnum):
    UP = "up"
    DOWN = "down"


class RunConfig(BaseModel):
    """The run configuration every edge receives at registration (SPEC.md, issue 3 item 3)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Mode = "simultrain"
    alpha: float | None = Field(
        None,
        ge=0,
        description="Forecast coefficient α; only with a forecast part (default: its own 0.5).",
    )
    beta: float = Field(0.9, ge=0, le=1, description="Soft-reconciliation weight β.")
    reconcile_every: int | None = Field(
        10, ge=0, description="Reconcile every R edge steps; null = never (R = ∞)."
    )
    window: int = Field(4, ge=0, description="In-flight window τ_max (0 = wait every reply).")
    act_codec: Codec = "lz4"
    delta_codec: Codec = "lz4"
    grad_codec: Codec = "lz4"
    dataset: str = Field("imu", min_length=1)
    model_id: str | None = Field(
        None, min_length=1, description="Model id (default: the dataset's own model)."
    )
    seed: int = 0
    partition: Partition = Field("auto", description="How training data is dealt to edges.")
    batch_size: int = Field(32, ge=1)
    egrad_codec: Codec = "lz4"
    topk_ratio: float = Field(0.1, gt=0, le=1, description="Share of entries the topk codec keeps.")
    compensation: str = Field(
        "delay-beta1", description="Staleness compensation chain, e.g. delay-beta1+forecast."
    )
    local_steps: int = Field(5, ge=1, description="FedAvg's local steps E.")
    round_deadline_s: float | None = Field(
        None, gt=0, description="Lockstep rounds: close a round this late with what arrived."
    )
    edges: int = Field(1, ge=1, description="Edges expected in the run (sizes the history).")
    optimizer_name: Literal["sgd", "adam"] = "adam"
    optimizer_lr: float = Field(0.001, gt=0)
    optimizer_momentum: float = Field(0.0, ge=0, lt=1)
    optimizer_cloud_momentum: float | None = Field(None, ge=0, lt=1)
    optimizer_weight_decay: float = Field(0.0, ge=0)

    @field_validator("alpha")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("alpha must be finite")
        return value

    @field_validator("reconcile_every")
    @classmethod
    def _never_is_none(cls, value: int | None) -> int | None:
        # One spelling of "never" on the wire: null. 0 is accepted as input for convenience.
        return None if value == 0 else value

    @model_validator(mode="after")
    def _schedule_holds(self) -> RunConfig:
        # The same check every edge and the cloud make (shared schedule): a configuration
        # they would refuse — an α for a chain without a forecast — is refused here first.
        try:
            make_schedule(
                self.mode,
                window=self.window,
                alpha=self.alpha,
                reconcile_every=self.reconcile_every,
                beta=self.beta,
                local_steps=self.local_steps,
                compensation=self.compensation,
            )
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return self


@dataclass(frozen=True, slots=True)
class CloudRecord:
    cloud_id: str
    url: str
    status: Status
    last_heartbeat: float
    registered_at: float
    master_version: int = 0
    connected_edges: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EdgeRecord:
    edge_id: str
    cloud_id: str
    status: Status
    last_heartbeat: float
    registered_at: float
    # Registration order among live records (lowest free), used to stagger reconciliation
    # when the edge gives no shard.
    ordinal: int
    reconcile_offset: int
    name: str | None = None
    shard_index: int | None = None
    shard_count: int | None = None
    edge_version: int = 0
    step: int = 0
