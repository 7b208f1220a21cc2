"""JSON bodies of the coordinator's HTTP API (requests validated strictly: no coercion).

Integers are bounded to SQLite's 64-bit range, strings and lists to sane sizes, so bad input
is a 422 from validation and never reaches the store as an overflow.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from .records import RunConfigField, Status

__all__ = [
    "CloudHeartbeat",
    "CloudHeartbeatReply",
    "CloudRegistered",
    "CloudRegistration",
    "CloudView",
    "ConfigView",
    "EdgeHeartbeat",
    "EdgeHeartbeatReply",
    "EdgeRegistered",
    "EdgeRegistration",
    "EdgeVersionView",
    "EdgeView",
    "ErrorBody",
    "ErrorDetail",
    "HealthView",
    "ReadyView",
    "SessionChanges",
    "VersionsView",
]

MAX_INT64 = 2**63 - 1
Count = Annotated[int, Field(ge=0, le=MAX_INT64)]
Id = Annotated[str, Field(min_length=1, max_length=128)]


class _Request(BaseModel):
    # Unknown fields are ignored so a newer client can talk to an older coordinator.
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: list[dict[str, object]] | None = None


class ErrorBody(BaseModel):
    """Every error response: ``{"error": {"code": ..., "message": ...}}``."""

    error: ErrorDetail


# --- clouds ------------------------------------------------------------------------------


class CloudRegistration(_Request):
    url: str = Field(
        max_length=2048, description="Base URL edges connect to (http, https, ws or wss)."
    )
    master_version: Count = Field(0, description="Master version v_c, e.g. after a resume.")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https", "ws", "wss"} or not parts.hostname:
            raise ValueError("url must be an absolute http, https, ws or wss URL")
        return value.rstrip("/")


class CloudRegistered(BaseModel):
    cloud_id: str
    heartbeat_interval_s: float
    heartbeat_timeout_s: float


class SessionChanges(_Request):
    opened: list[Id] = Field(
        default_factory=list, max_length=100_000, description="Sessions opened since."
    )
    closed: list[Id] = Field(
        default_factory=list, max_length=100_000, description="Sessions closed since."
    )


class CloudHeartbeat(_Request):
    master_version: Count = Field(description="Current master version v_c.")
    connected_edges: list[Id] = Field(
        default_factory=list,
        max_length=100_000,
        description="Every edge id with a live session (the whole set), unless "
        "session_changes is given.",
    )
    session_changes: SessionChanges | None = Field(
        None,
        description="The sessions opened and closed since the last heartbeat the "
        "coordinator answered; given, connected_edges is ignored (PROTOCOL.md §9.4).",
    )
    list_assigned_edges: bool = Field(
        True, description="Whether the reply lists assigned_edges (as long as the fleet share)."
    )


class CloudHeartbeatReply(BaseModel):
    cloud_id: str
    status: Status
    assigned_edges: list[str] | None = Field(
        None,
        description="Edges the coordinator assigns here (unless list_assigned_edges is false).",
    )
    revoked_edges: dict[str, float] = Field(
        default_factory=dict,
        description="Removed edges → when (Unix seconds): tokens issued at or before that "
        "instant are no longer valid.",
    )
    sessions_snapshot_wanted: bool | None = Field(
        None,
        description="Present (true) when the coordinator no longer holds this cloud's "
        "sessions (it had marked the cloud down): send them all in the next heartbeat.",
    )


class CloudView(BaseModel):
    cloud_id: str
    url: str
    status: Status
    last_heartbeat: float
    registered_at: float
    master_version: int
    connected_edges: list[str]
    live_edges: int = Field(description="Live edges assigned to this cloud (its load).")


# --- edges -------------------------------------------------------------------------------


class EdgeRegistration(_Request):
    name: str | None = Field(None, max_length=128, description="Free-form label.")
    shard_index: Count | None = Field(None, description="This edge's data shard index.")
    shard_count: int | None = Field(None, ge=1, le=1_000_000, description="Number of shards.")
    enrollment_secret: SecretStr | None = Field(
        None, max_length=1024, description="Alternative to the X-Enrollment-Secret header."
    )
    enrollment_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="A unique key the client chooses for this enrollment: a retry with the "
        "same key returns the edge it enrolled instead of enrolling another.",
    )

    @model_validator(mode="after")
    def _shard(self) -> EdgeRegistration:
        if (self.shard_index is None) != (self.shard_count is None):
            raise ValueError("give shard_index and shard_count together")
        if self.shard_count is not None and (self.shard_index or 0) >= self.shard_count:
            raise ValueError("shard_index must be smaller than shard_count")
        return self


class _Schedule(BaseModel):
    reconcile_every: int | None = Field(description="R; null = never.")
    reconcile_offset: int = Field(description="Reconcile on steps s ≥ 1 with s ≡ offset mod R.")
    next_reconciliations: list[int] = Field(description="The next steps reconciliation is due.")


class _Cadence(BaseModel):
    heartbeat_interval_s: float = Field(description="Heartbeat period while not streaming.")
    heartbeat_timeout_s: float = Field(
        description="Silent this long, and in no session a cloud reports: marked down."
    )
    streaming_heartbeat_interval_s: float = Field(
        description="Heartbeat period while streaming (the cloud vouches for the edge)."
    )


class EdgeRegistered(_Schedule, _Cadence):
    edge_id: str
    cloud_id: str
    cloud_url: str
    run_config: RunConfigField
    token: str | None = Field(None, description="Bearer token for the cloud (auth on).")
    token_expires_at: int | None = Field(None, description="Token expiry (epoch seconds).")


class EdgeHeartbeat(_Request):
    edge_version: Count = Field(description="Master version the edge replica reflects (v_e).")
    step: Count = Field(description="The edge's last completed step.")
    streaming: bool | None = Field(
        None,
        description="Whether the edge has a live session with its cloud. Not streaming while "
        "its cloud still reports its session, it is told to ask again as soon as a cloud "
        "that died would be found out (PROTOCOL.md §9.4).",
    )
    finished: bool = Field(
        False,
        description="The edge has trained its configured steps and leaves: it is marked "
        "finished, not down, when its heartbeats stop.",
    )


class EdgeHeartbeatReply(_Schedule, _Cadence):
    edge_id: str
    cloud_id: str
    cloud_url: str
    cloud_status: Status = Field(description="down only while no live cloud exists.")
    master_version: int = Field(description="The assigned cloud's master version v_c.")
    token: str | None = Field(None, description="A fresh token (auth on).")
    token_expires_at: int | None = None


class EdgeView(BaseModel):
    edge_id: str
    name: str | None
    shard_index: int | None
    shard_count: int | None
    cloud_id: str
    cloud_url: str | None
    status: Status
    last_heartbeat: float
    registered_at: float
    edge_version: int
    step: int
    reconcile_offset: int


# --- versions, config, health ------------------------------------------------------------


class CloudVersionView(BaseModel):
    cloud_id: str
    url: str
    status: Status
    master_version: int


class EdgeVersionView(BaseModel):
    edge_id: str
    cloud_id: str
    status: Status
    edge_version: int
    step: int
    master_version: int | None
    lag: int | None = Field(description="master_version − edge_version, as last reported.")


class VersionsView(BaseModel):
    clouds: list[CloudVersionView]
    edges: list[EdgeVersionView]
    max_lag: int | None


class ConfigView(BaseModel):
    run_config: RunConfigField
    heartbeat_interval_s: float
    heartbeat_timeout_s: float
    auth_enabled: bool


class HealthView(BaseModel):
    status: str


class ReadyView(BaseModel):
    status: str
    clouds_up: int
    edges_up: int
