"""The JSON bodies that cross a process boundary, as pydantic models: one declaration each,
used by the process that writes the body and by every process that reads it.

- the cloud's ``GET /v1/status`` (:class:`CloudStatus`), ``GET /v1/session-spec``
  (:class:`SessionSpec`), ``GET /v1/eval`` (:class:`Evaluation`) and ``GET /v1/history``
  (:class:`CloudHistory`) — read by the coordinator's dashboard, the demo, the benchmark
  and the tests;
- the coordinator's ``GET /v1/dashboard`` (:class:`DashboardSnapshot`) — read by the page;
- ``simultrain demo --json``'s summary (:class:`DemoSummary`) — read by the fleet studies.

A reader parses a body with ``Model.model_validate_json`` and reads attributes, never string
keys, so renaming a field is a type error in every reader (mypy), not a blank on a dashboard.
Readers ignore fields they do not know (a newer producer may add some); every field a model
declares without a default must be there.

Bytes are counted from the edge's side, the link's words (docs/DESIGN.md §3.8): ``bytes_up``
travel edge → cloud (activations, edge gradients), ``bytes_down`` cloud → edge. Until the
next protocol version ``/v1/status`` also writes each session's counts under their earlier
names, ``bytes_in`` and ``bytes_out`` (the cloud's view), for readers written against them.

Imports pydantic only: no torch, so a coordinator or a test reads these without loading it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

__all__ = [
    "CloudHistory",
    "CloudStatus",
    "CreditsStatus",
    "DashboardCloud",
    "DashboardEdge",
    "DashboardSnapshot",
    "DemoSummary",
    "EdgeSessionStatus",
    "Evaluation",
    "HistoryPoint",
    "MixingStatus",
    "PacingStatus",
    "ReplicaGroupStatus",
    "ReplicaTensor",
    "SessionArchitecture",
    "SessionLimits",
    "SessionSpec",
    "StalenessSummary",
]


class Contract(BaseModel):
    """A body that crosses a process boundary: unknown fields are ignored when read."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class StalenessSummary(Contract):
    """Staleness τ of the applied edge gradients (edge-stage updates each one missed)."""

    batches: int = Field(description="Edge gradients applied.")
    max: int
    mean: float
    dropped: int = Field(description="Edge gradients older than the master history, dropped.")
    histogram: dict[str, int] = Field(description="τ (as a string) → batches.")
    # Staleness in samples (docs/FLEET.md, "Staleness in samples"): a fleet that mixes takes
    # fewer, larger steps, so updates alone understate what its gradients missed.
    samples_sum: int = Field(
        default=0, description="Samples the master applied while each gradient was out, summed."
    )
    samples_max: int = Field(
        default=0, description="The most samples the master applied while one gradient was out."
    )
    samples_mean: float = Field(
        default=0.0, description="samples_sum over the gradients applied (batches)."
    )


class EdgeSessionStatus(Contract):
    """One edge's session as its cloud counts it (``CloudStatus.edges``)."""

    samples_received: int
    samples_applied: int
    steps_applied: int
    highest_applied_seq: int
    duplicates_dropped: int
    last_edge_version: int
    replica_version: int = Field(description="The edge replica's version v_e, as mirrored.")
    bytes_up: int = Field(description="WebSocket payload bytes edge → cloud, across sessions.")
    bytes_down: int = Field(description="WebSocket payload bytes cloud → edge, across sessions.")
    staleness: StalenessSummary
    code_row: int | None = Field(description="Gradient coding: the row of the code it computes.")
    late_uploads_dropped: int = Field(
        description="Gradient coding: uploads that came after their round decoded (dropped)."
    )
    connected: bool

    # The earlier names, written for readers of the previous release (module docstring).
    @computed_field(  # type: ignore[prop-decorator]
        description="Deprecated: bytes_up.", json_schema_extra={"deprecated": True}
    )
    @property
    def bytes_in(self) -> int:
        return self.bytes_up

    @computed_field(  # type: ignore[prop-decorator]
        description="Deprecated: bytes_down.", json_schema_extra={"deprecated": True}
    )
    @property
    def bytes_out(self) -> int:
        return self.bytes_down


class ReplicaGroupStatus(Contract):
    """Cloud replicas (docs/REPLICAS.md): this replica's group and its sync rounds."""

    backend: str
    problem: str | None = Field(
        None, description="Why this replica is not a member of its group (then not ready)."
    )
    merge: str
    configured_rank: int | None
    generation: int
    rank: int | None
    size: int
    rounds: int
    global_version: int
    failures: int
    committed_edges: dict[str, dict[str, int]]


class MixingStatus(Contract):
    """How full the cloud's mixed steps are (docs/FLEET.md, "Mixed steps")."""

    mix_edges: int = Field(description="Edges a step mixes at most (the run's mix_edges).")
    steps: int = Field(description="Mixed cloud-stage steps taken.")
    mean_members: float = Field(description="Edge batches per mixed step, mean.")
    early_steps: int = Field(
        description="Steps the wait bound (mix_wait_s) took with fewer edges than mix_edges."
    )


class CreditsStatus(Contract):
    """The cloud's in-flight credits (PROTOCOL.md §6.7, docs/FLEET.md "Credits")."""

    policy: Literal["auto", "fixed"] = Field(
        description="auto: the flow controller sizes the grants; fixed: fleet_in_flight."
    )
    in_flight: int = Field(description="Batches in flight across the fleet now.")
    most_in_flight: int = Field(description="The most ever in flight across the fleet.")
    grants: dict[str, int] = Field(description="Each credits edge's grant in force.")
    pipe: float | None = Field(
        description="The controller's estimate of the pipe, in batches (auto); null before one."
    )
    min_rtt_s: float | None = Field(description="Shortest credit → ACK loop seen, seconds.")


class PacingStatus(Contract):
    """The cloud's pacing of its fleet (docs/FLEET.md, "Pacing")."""

    lead: int | None = Field(
        description="Batches an edge may be ahead of the slowest (pace_lead); null: off."
    )
    holding: list[str] = Field(
        description="The edges whose ACKs wait now: ahead of the fleet, or for a credit."
    )
    held_acks: int = Field(description="ACKs held so far.")


class CloudStatus(Contract):
    """``GET /v1/status``: the master's counters and every edge session."""

    cloud_id: str | None = Field(description="As the coordinator assigned it; null without one.")
    mode: str
    model_id: str
    device: str
    master_version: int
    edge_updates: int
    samples_applied: int
    loss: float | None = Field(description="The master's training loss (moving average).")
    busy_seconds: float = Field(description="Wall time the compute thread has been busy.")
    compute_cpu_seconds: float
    partial_rounds: int
    coded_rounds: int
    late_uploads_dropped: int
    uptime_seconds: float
    staleness: StalenessSummary
    replica: ReplicaGroupStatus | None
    edges: dict[str, EdgeSessionStatus]
    mixing: MixingStatus | None = Field(default=None, description="Null: no mixed steps.")
    credits: CreditsStatus | None = Field(default=None, description="Null: no credits.")
    pacing: PacingStatus | None = Field(default=None, description="Null: no pacing.")
    samples_per_s: float | None = Field(
        default=None,
        description="Samples applied per second from the first batch applied to the last "
        "(the run's throughput, start-up left out); null before two.",
    )

    @property
    def bytes_up(self) -> int:
        """Bytes edge → cloud over every session."""
        return sum(e.bytes_up for e in self.edges.values())

    @property
    def bytes_down(self) -> int:
        """Bytes cloud → edge over every session."""
        return sum(e.bytes_down for e in self.edges.values())


class SessionLimits(Contract):
    """The limits the cloud enforces on a session's frames; null: no limit."""

    max_frame_bytes: int | None
    max_decompressed_bytes: int | None
    max_tensor_elements: int | None
    max_tensor_rank: int
    max_weight_tensors: int | None
    max_messages_per_s: float
    max_message_burst: float = Field(description="Messages that may come at once (§5).")


class ReplicaTensor(Contract):
    name: str
    shape: list[int]
    dtype: str


class SessionArchitecture(Contract):
    """What the model fingerprint covers (PROTOCOL.md §3.3)."""

    input_shape: list[int]
    cut_shape: list[int] = Field(description="The model's cut (also in centralized mode).")
    edge_stage: list[ReplicaTensor] = Field(description="Edge-stage parameters, by name.")
    cloud_stage_digest: str = Field(description="SHA-256 of the cloud stage's listing.")


class SessionSpec(Contract):
    """``GET /v1/session-spec``: what an edge must send and will receive (PROTOCOL.md §3.2)."""

    protocol_version: int = Field(description="The newest major version the cloud speaks.")
    protocol_versions: list[int] = Field(description="Every major version it speaks (§1.1).")
    subprotocols: list[str] = Field(description="The same, as WebSocket subprotocols.")
    capabilities: list[str] = Field(description="Capabilities it can grant (§10.2).")
    path: str
    mode: str
    model_id: str
    model_fingerprint: str
    architecture: SessionArchitecture
    input_shape: list[int]
    num_classes: int
    cut_shape: list[int]
    window: int | None = Field(description="Most batches in flight; null: no bound.")
    egrad_needs_grad: bool
    limits: SessionLimits
    replica: list[ReplicaTensor] = Field(
        description="The edge-stage tensors, in the order the checksum runs over them."
    )
    config: dict[str, str | int | float | bool | None] = Field(
        description="The run configuration's scalar keys."
    )


class Evaluation(Contract):
    """``GET /v1/eval``: the master on the held-out split, now."""

    accuracy: float
    loss: float
    samples: int = Field(description="Held-out samples evaluated.")
    master_version: int
    samples_applied: int


class HistoryPoint(Contract):
    """One periodic evaluation; a value that was not finite is null (JSON has no NaN)."""

    time: float = Field(description="Seconds since the epoch, on the cloud's clock.")
    master_version: int
    samples_applied: int
    train_loss: float | None
    accuracy: float | None
    eval_loss: float | None


class CloudHistory(Contract):
    """``GET /v1/history``: the master over time, and the reconciliations sent to each edge."""

    eval_interval_s: float
    points: list[HistoryPoint]
    reconciliations: dict[str, int]


class DashboardCloud(Contract):
    """One cloud on the dashboard: what the coordinator knows, and what the cloud reports."""

    cloud_id: str
    url: str
    status: str = Field(description="The coordinator's view from heartbeats: up or down.")
    last_heartbeat: float
    master_version: int
    connected_edges: list[str]
    live_edges: int
    reachable: bool
    error: str | None = Field(description="Why the cloud's figures are missing, if they are.")
    detail: CloudStatus | None
    busy_share: float | None = Field(description="busy_seconds ÷ uptime_seconds, at most 1.")
    history: list[HistoryPoint]
    reconciliations: dict[str, int]
    eval_interval_s: float | None


class DashboardEdge(Contract):
    """One edge on the dashboard (bytes and staleness as its cloud counts them)."""

    edge_id: str
    name: str | None
    cloud_id: str
    status: str = Field(description="up, down (silent: a failure) or finished (its steps done).")
    connected: bool | None = Field(description="Its cloud session; null while unknown.")
    last_heartbeat: float
    step: int = Field(description="The step it last reported in a heartbeat.")
    steps_applied: int
    step_rate: float | None = Field(description="Steps applied per second, recent.")
    edge_version: int
    replica_version: int
    master_version: int | None
    lag: int | None = Field(description="master_version − replica_version.")
    samples_applied: int | None
    bytes_up: int | None
    bytes_down: int | None
    duplicates_dropped: int | None
    reconciliations: int | None
    staleness: StalenessSummary | None


class DashboardSnapshot(Contract):
    """``GET /v1/dashboard`` on the coordinator: everything the page draws."""

    generated_at: float
    run_config: dict[str, Any]
    clouds: list[DashboardCloud]
    edges: list[DashboardEdge]


class DemoSummary(Contract):
    """``simultrain demo``'s summary (its ``--json`` line, and ``run_demo``'s result)."""

    mode: str
    dataset: str
    model_id: str
    edges: int
    steps: int = Field(description="Batches the edges produced, all together.")
    samples: int = Field(description="Samples the master applied.")
    accuracy: float
    test_loss: float
    test_samples: int
    bytes_up: int
    bytes_down: int
    max_staleness: int
    mean_staleness: float
    mean_staleness_samples: float = Field(
        default=0.0,
        description="Samples the master applied while a gradient was out, mean (docs/FLEET.md).",
    )
    master_version: int
    window: int | Literal["auto"] = Field(
        description="The run's window: W, or auto (the cloud's credits size it, docs/FLEET.md)."
    )
    compensation: str
    alpha: float | None = Field(description="The forecast's α that acted; null without one.")
    beta: float
    reconcile_every: int | None
    seed: int
    link: str
    samples_received: int
    duplicates_dropped: int
    reconnects: int
    seconds: float
    mixing: MixingStatus | None = Field(default=None, description="The cloud's, at the end.")
    credits: CreditsStatus | None = Field(default=None, description="The cloud's, at the end.")
    pacing: PacingStatus | None = Field(default=None, description="The cloud's, at the end.")
    samples_per_s: float | None = Field(
        default=None, description="The cloud's throughput, first batch applied to last."
    )
