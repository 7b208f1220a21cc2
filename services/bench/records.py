"""What every experiment writes: its records and results files, as pydantic models.

One record is one finished case of one experiment (:mod:`simultrain.bench.harness`); a results
file is a record list with its provenance (``meta``). Each has one JSON form,
:meth:`Record.to_json`: the fields that are set, so a record read from a file written before
a field existed is written back as it was read. ``RESULTS_FILES`` names the model of every
results file under ``bench/results/``; ``tests/bench/test_records.py`` reads each committed
one through it.

A field that older files lack has a default (``None``) and is left out when it was not set.
Unknown fields are refused: a file that does not fit its model is an error, not a silently
empty column.

Pydantic only (no torch): the reports and their tests read records without loading it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from simultrain.shared.contracts import CreditsStatus, StalenessSummary

__all__ = [
    "RESULTS_FILES",
    "AblationRecord",
    "BeforeAfterFile",
    "BeforeAfterRecord",
    "BenchFailure",
    "BenchMeta",
    "BenchRecord",
    "BenchResults",
    "CaseFailure",
    "ControlPlaneFailover",
    "ControlPlaneFailure",
    "ControlPlaneFile",
    "ControlPlaneMeta",
    "ControlPlanePhase",
    "ControlPlaneRecord",
    "ControlPlaneSteady",
    "EdgeReportSummary",
    "FailoverFailure",
    "FailoverFile",
    "FailoverMeta",
    "FailoverRecord",
    "FleetFailure",
    "FleetFile",
    "FleetMeta",
    "FleetParityFile",
    "FleetParityRecord",
    "FleetRecord",
    "FleetScreenFile",
    "ForecastAblation",
    "HostInfo",
    "RateSummary",
    "ReconcileAblation",
    "Record",
    "ReplicaFile",
    "ReplicaMeta",
    "ReplicaRecord",
    "ResultsFile",
    "StepMetrics",
    "StudyFile",
    "StudyMeta",
    "StudyRecord",
    "SuitePlan",
    "write_json",
]


class Record(BaseModel):
    """A record or results file: typed, strict about its fields, one JSON form."""

    model_config = ConfigDict(extra="forbid")

    def to_json(self) -> dict[str, Any]:
        """The JSON form: every field that was set, and only those."""
        return self.model_dump(mode="json", exclude_unset=True)


class CaseFailure(Record):
    """Any experiment's failed case, as far as it has one: the error and the case's name."""

    error: str


ResultsT = TypeVar("ResultsT", bound="ResultsFile")


class ResultsFile(Record):
    """A results file: ``{"meta": …, "records": […]}`` unless the subclass says otherwise."""

    @classmethod
    def read(cls: type[ResultsT], path: Path) -> ResultsT:
        return cls.model_validate_json(path.read_bytes())

    def write(self, path: Path) -> None:
        write_json(path, self.to_json())


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON through a temporary file: a reader never sees half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


# --- simultrain bench: every mode through the services (results.json, meta.json) ----------


class EdgeReportSummary(Record):
    """The edge's own counters of one bench case (its ``DONE`` report, in part)."""

    steps: int | None
    samples_sent: int | None
    reconnects: int | None
    resyncs: int | None
    reconciliations: int | None
    resent: int | None
    checksum_failures: int | None = None
    local_steps: int | None = None
    compute_seconds: float | None
    seconds: float | None
    errors: list[str] | None


class BenchCase(Record):
    """The fields every bench record has, failed or not: which case it is."""

    suite: str
    case: str
    mode: str
    link: str
    dataset: str
    seed: int
    variant: str


class BenchFailure(BenchCase, CaseFailure):
    """A bench case that raised: its case fields and the error."""

    steps: int


class StepMetrics(Record):
    """What the steady-state window says about one run, in milliseconds and bytes
    (:func:`simultrain.bench.metrics.step_metrics`; docs/BENCH.md, "Metrics")."""

    batches: int
    window: tuple[int, int] = Field(description="First and last batch of the steady window.")
    step_interval_ms: float
    step_latency_ms: float
    step_latency_p50_ms: float
    step_latency_p95_ms: float
    bytes_up_per_step: float
    bytes_down_per_step: float
    edge_compute_ms: float
    cloud_compute_ms: float
    uplink_ms: float
    downlink_ms: float
    pipeline_bound_ms: float
    sequential_bound_ms: float
    bottleneck: str
    edge_busy: float
    cloud_busy: float
    btp_byte_s: float


class BenchRecord(StepMetrics, BenchCase):
    """One bench case through the real services (docs/BENCH.md, "Metrics"): the case, its
    step metrics, and what the cloud and the edge counted."""

    model_id: str
    steps: int
    # accuracy and staleness, from the cloud
    accuracy: float
    test_loss: float
    test_samples: int
    samples: int
    max_staleness: int
    mean_staleness: float
    p95_staleness: int
    staleness_histogram: dict[str, int]
    stale_dropped: int
    master_version: int
    bytes_up_total: int
    bytes_down_total: int
    train_seconds: float
    wall_seconds: float
    eval_seconds: float
    accuracy_curve: list[tuple[float, int, float, float]] = Field(
        description="[training seconds, samples applied, accuracy, held-out loss]"
    )
    latency_sample_ms: list[float]
    edge_slowdown: float
    uplink_rate_bps: float | None
    downlink_rate_bps: float | None
    rtt_ms: float
    run_config: dict[str, Any]
    window_size: int
    window_override: int | None
    edge_report: EdgeReportSummary
    credits: CreditsStatus | None = Field(
        None,
        description="The cloud's in-flight credits at the end of the run (its flow "
        "controller's pipe estimate and shortest loop); null: no credits.",
    )
    rerun: str | None = Field(None, description="A note on a case run again by hand.")


class HostInfo(Record):
    platform: str
    python: str
    torch: str
    cpus: int | None
    git_commit: str | None = None


class SuitePlan(Record):
    """One suite of a bench plan, as ``meta.json`` records it."""

    name: str
    modes: list[str]
    links: list[str]
    datasets: list[str]
    seeds: list[int]
    steps: dict[str, int]
    variants: list[str]
    evals: int
    windows: list[int | None]


class BenchMeta(Record):
    """``meta.json``: how the records of ``results.json`` were made; an ``--append`` run's
    own meta joins ``appended``."""

    command: str
    started: str
    host: HostInfo
    edge_slowdown: float
    edge_threads: int
    calibration: dict[str, float | int] | None
    plan: list[SuitePlan]
    cases: int
    seconds: float | None = None
    appended: list[BenchMeta] | None = None


class BenchResults(ResultsFile):
    """``results.json``: a bare list of records (the meta is ``meta.json``)."""

    records: list[BenchRecord | BenchFailure]

    @classmethod
    def read(cls, path: Path) -> BenchResults:
        return cls.model_validate({"records": json.loads(path.read_text())})

    def write(self, path: Path) -> None:
        write_json(path, [r.to_json() for r in self.records])


# --- simultrain bench --suite fleet / stragglers: many agents, one cloud ------------------


class RateSummary(Record):
    min: float
    median: float
    max: float
    mean: float


class FleetFailure(CaseFailure):
    edges: int
    label: str | None = None


class FleetRecord(Record):
    """One fleet case (docs/BENCH.md, "Fleet load test" and "Stragglers")."""

    edges: int
    label: str
    processes: int
    mode: str
    dataset: str
    edge_slowdown: float
    edge_nice: int | None = None
    window_s: float
    step_rate_per_edge: RateSummary
    steps_per_s: float
    fast_edge_step_rate_median: float
    straggler_step_rates: list[float]
    stragglers: dict[str, float]
    round_deadline_s: float | None
    seconds_per_update: float | None
    partial_rounds: int
    gradient_coding_s: int | None = None
    coded_rounds: int | None = None
    late_uploads_dropped: int | None = None
    late_samples: int | None = Field(
        None,
        description="Samples of coded uploads dropped because their round had decoded "
        "without them: by design, not lost.",
    )
    accuracy: float | None
    eval_samples_applied: int | None
    cloud_updates: int
    cloud_busy_fraction: float
    cloud_ms_per_update: float | None
    cloud_ms_per_batch: float | None
    cloud_cpu_fraction: float
    cloud_cpu_ms_per_update: float | None
    cloud_compute_cpu_ms_per_update: float | None = None
    cloud_loop_cpu_ms_per_update: float | None = None
    cloud_bytes_up_per_update: int | None = None
    cloud_bytes_down_per_update: int | None = None
    rss_mib: list[tuple[float, float]] | None = None
    rss_start_mib: float
    rss_end_mib: float
    rss_max_mib: float
    rss_slope_mib_per_min: float
    errors: int
    error_details: list[str]
    agents_failed: int
    connection_errors: int
    reconnects: int
    session_end_reasons: dict[str, int] | None = None
    undelivered_batches: int | None = None
    samples_sent: int
    samples_applied: int
    lost_samples: int
    duplicates_dropped: int
    staleness: StalenessSummary
    cloud_involuntary_switches_per_update: float | None = None
    load_average: list[float] | None = None

    @property
    def clean(self) -> bool:
        """No agent failed, no connection error, no sample lost."""
        return self.errors == 0 and self.lost_samples == 0


class FleetMeta(Record):
    command: str
    duration_s: float
    agents_per_process: int | None = None
    cpus: int | None
    wall_seconds: float


class FleetFile(ResultsFile):
    """``fleet.json`` and ``stragglers.json``."""

    meta: FleetMeta
    records: list[FleetRecord | FleetFailure]


class BeforeAfterRecord(FleetRecord):
    """A fleet case of ``bench/fleet_before_after.py``: which cloud code ran it."""

    cloud_code: str = Field(description="before (the base commit's cloud) or after.")
    case_wall_s: float


class BeforeAfterFile(ResultsFile):
    """``fleet-before-after.json``."""

    base: str
    command: str
    records: list[BeforeAfterRecord]


# --- simultrain fleet-parity: fleets against centralized training --------------------------


class FleetParityRecord(Record):
    """One run of a fleet (or of centralized training on its samples) through the services."""

    dataset: str
    partition: str
    edges: int
    window: int
    steps: int = Field(description="Batches per edge.")
    method: str = Field(description="centralized, default, or a compensation chain.")
    mode: str
    compensation: str = Field(description="The chain the cloud ran.")
    seed: int
    accuracy: float
    test_loss: float
    mean_staleness: float
    max_staleness: int
    # Staleness in samples (docs/FLEET.md): a mixed fleet takes fewer, larger steps.
    mean_staleness_samples: float | None = None
    master_version: int
    samples: int
    seconds: float
    command: str = Field(description="The demo command that runs the same case.")
    # How full the mixed steps were and the most in flight under credits (the cloud's
    # /v1/status at the end); None where the run did neither, or was recorded before.
    mix_mean_members: float | None = None
    most_in_flight: int | None = None
    # The cloud's samples applied per second, first batch applied to last (start-up left
    # out); None where recorded before it was.
    samples_per_s: float | None = None


class FleetParityMeta(Record):
    command: str


class FleetParityFile(ResultsFile):
    """``fleet_parity.json``."""

    meta: FleetParityMeta
    records: list[FleetParityRecord]


# --- simultrain study: the staleness study ---------------------------------------------------


class StudyRecord(Record):
    """One run of the grid: a compensation at a window, in-process (docs/STALENESS.md)."""

    compensation: str
    optimizer: str
    edges: int
    window: int
    dataset: str
    seed: int
    partition: str | None = None  # only where edges > 1
    steps: int = Field(description="Batches per edge.")
    accuracy: float
    final_loss: float = Field(description="Held-out loss at the end.")
    train_loss: float = Field(description="Mean of the last 50 batches.")
    max_staleness: int
    mean_staleness: float | None = None
    seconds: float


class _AblationRun(Record):
    compensation: str
    optimizer: str
    window: int
    dataset: str
    seed: int
    steps: int
    accuracy: float
    final_loss: float
    train_loss: float
    max_staleness: int
    mean_staleness: float | None = None
    seconds: float
    curve: list[tuple[int, float]] = Field(description="[step, held-out accuracy]")
    loss_curve: list[tuple[int, float]] = Field(description="[step, held-out loss]")
    train_curve: list[float]
    deltas_lost: int
    replica_drift: float


class ForecastAblation(_AblationRun):
    """No forecast (α = 0) against the paper's α."""

    ablation: Literal["forecast"]
    alpha: float


class ReconcileAblation(_AblationRun):
    """No reconciliation (R = ∞) against R = 10, with a lossy or lost delta stream."""

    ablation: Literal["reconcile"]
    delta_codec: str
    delta_loss: float
    reconcile_every: int | None


AblationRecord = ForecastAblation | ReconcileAblation


class StudyMeta(Record):
    study: dict[str, Any] = Field(description="The last part's StudyConfig.")
    optimizers: dict[str, dict[str, Any]]
    started: str
    parts: list[dict[str, Any]] = Field(description="Every part's StudyConfig (resume).")
    finished: str | None = None


class StudyFile(ResultsFile):
    """``staleness.json``."""

    default: str = Field(description="The run configuration's default compensation chain.")
    meta: StudyMeta
    records: list[StudyRecord]
    ablations: list[AblationRecord] = Field(default_factory=list)

    @classmethod
    def split(cls, records: Sequence[StudyRecord | AblationRecord]) -> dict[str, Any]:
        """The ``records`` and ``ablations`` fields of a list of both."""
        return {
            "records": [r for r in records if isinstance(r, StudyRecord)],
            "ablations": [r for r in records if not isinstance(r, StudyRecord)],
        }


# --- the in-process replica reproduction ----------------------------------------------------


class ReplicaRecord(Record):
    """One replicated run in one process (docs/REPLICAS.md)."""

    case: str
    seed: int
    replicas: int
    merge: str
    sync_every: int
    lag: int
    sgd: bool
    optimizer: str
    steps_per_edge: int
    accuracy: list[float] = Field(description="Each replica's, after the last round.")
    global_version: int
    samples_applied: int
    rounds: int
    staleness_mean: float
    seconds: float


class ReplicaMeta(Record):
    command: str | None = None
    commands: list[str] | None = None  # a file merged from several runs by hand
    cpus: int | None
    machine: str | None = None
    note: str | None = None


class ReplicaFile(ResultsFile):
    """``replicas-inprocess.json`` (its list is ``rows``)."""

    meta: ReplicaMeta
    rows: list[ReplicaRecord]


# --- the control plane (control_plane.py, failover.py) -------------------------------------


class ControlPlanePhase(Record):
    """One phase of a control-plane case: how many requests, how fast, what they cost."""

    requests: int
    seconds: float
    per_s: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    cpu_ms_per_request: float | None = Field(description="Coordinator processes' CPU.")
    db_cpu_ms_per_request: float | None = Field(None, description="PostgreSQL's CPU.")


class ControlPlaneFailover(Record):
    """One cloud killed: how long its streaming edges took to be told another cloud."""

    edges: int
    moved: int
    p50_s: float | None
    max_s: float | None
    cloud_timeout_s: float


class ControlPlaneSteady(Record):
    """The fleet as it lives, on the stated intervals, for the steady window."""

    stats: ControlPlanePhase
    edge_heartbeats: int
    cloud_heartbeats: int
    interval_s: float
    streaming_interval_s: float | None
    timeout_s: float
    streaming_edges: int
    warmup_s: float
    late_p99_ms: float | None = Field(description="How late the load generator sent a beat.")
    false_down: int = Field(description="Live edges marked down in the window.")
    clouds_down: int
    edges_up_at_end: int | None
    failover: ControlPlaneFailover | None = None


class ControlPlaneRecord(Record):
    """One store, replica count and fleet size."""

    label: str
    backend: str
    replicas: int
    edges: int
    clouds: int
    clients: int
    enroll: ControlPlanePhase
    edge_heartbeat: ControlPlanePhase | None
    cloud_heartbeat: ControlPlanePhase | None
    steady: ControlPlaneSteady | None
    enrolled_once: bool
    loadgen_cpu_s: float
    error: str | None = None


class ControlPlaneFailure(CaseFailure):
    """A control-plane case that failed."""

    label: str
    backend: str
    edges: int


class ControlPlaneMeta(Record):
    command: str
    label: str
    cpus: int | None
    clients: int
    clouds: int
    burst_s: float
    steady_s: float
    streaming_share: float
    coordinator_tree: str | None
    load_average: list[float]


class ControlPlaneFile(ResultsFile):
    """``control-plane.json``."""

    meta: ControlPlaneMeta
    records: list[ControlPlaneRecord | ControlPlaneFailure]


class FailoverRecord(Record):
    """One kill -9 of a cloud under streaming edge agents (real processes)."""

    label: str
    run: int
    edges: int
    reassigned_s: list[float] = Field(description="Kill → the coordinator names a new cloud.")
    streaming_s: list[float] = Field(description="Kill → the edge streams with it.")
    error: str | None = None


class FailoverFailure(CaseFailure):
    label: str
    run: int


class FailoverMeta(Record):
    command: str
    label: str
    cpus: int | None
    coordinator_tree: str | None


class FailoverFile(ResultsFile):
    """``failover.json``."""

    meta: FailoverMeta
    records: list[FailoverRecord | FailoverFailure]


# --- bench/fleet_screen.py: the fleet's scheduling, in-process (docs/FLEET.md) ---------------


class FleetScreenRecord(Record):
    """One in-process run of a fleet method (or of its pooled reference) on one seed."""

    dataset: str
    edges: int
    method: str
    seed: int
    accuracy: float
    test_loss: float
    samples: int
    steps_per_edge: int
    edge_batch_size: int
    staleness_mean: float
    staleness_max: int
    staleness_samples_mean: float
    staleness_samples_max: int
    master_version: int
    seconds: float
    config: dict[str, Any] = Field(description="The run configuration, flat (driver keys too).")
    fleet: dict[str, Any] = Field(description="RunResult.fleet: mixing, copies, credits.")


class FleetScreenMeta(Record):
    credits: dict[str, Any] = Field(description="Per dataset/fleet: the settled grant.")
    stages: dict[str, dict[str, float]] = Field(description="Measured stage times and sizes.")
    flow: list[dict[str, Any]] = Field(description="Credits against fixed windows, simulated.")


class FleetScreenFile(ResultsFile):
    """``fleet_screen.json``."""

    meta: FleetScreenMeta
    records: list[FleetScreenRecord]


RESULTS_FILES: dict[str, type[ResultsFile]] = {
    "results.json": BenchResults,
    "synthetic.json": BenchResults,
    "ablation/results.json": BenchResults,
    "credits_4g/results.json": BenchResults,
    "fleet.json": FleetFile,
    "rss32/fleet.json": FleetFile,
    "fleet64-history-fix-run1.json": FleetFile,
    "fleet64-history-fix-run2.json": FleetFile,
    "stragglers.json": FleetFile,
    "fleet-before-after.json": BeforeAfterFile,
    "fleet_parity.json": FleetParityFile,
    "fleet_pooled/fleet_parity.json": FleetParityFile,
    "fleet_epoch/fleet_parity.json": FleetParityFile,
    "fleet_32/fleet_parity.json": FleetParityFile,
    "fleet_zero/fleet_parity.json": FleetParityFile,
    "fleet_zero_kept_back/fleet_parity.json": FleetParityFile,
    "fleet_loop/fleet_parity.json": FleetParityFile,
    "fleet_throughput/fleet_parity.json": FleetParityFile,
    "fleet_throughput_loop/fleet_parity.json": FleetParityFile,
    "staleness.json": StudyFile,
    "replicas-inprocess.json": ReplicaFile,
    "control-plane/before/control-plane.json": ControlPlaneFile,
    "control-plane/before-10000/control-plane.json": ControlPlaneFile,
    "control-plane/sqlite/control-plane.json": ControlPlaneFile,
    "control-plane/merged/control-plane.json": ControlPlaneFile,
    "control-plane/postgres/control-plane.json": ControlPlaneFile,
    "control-plane/soak/control-plane.json": ControlPlaneFile,
    "control-plane/failover-before/failover.json": FailoverFile,
    "control-plane/failover-after/failover.json": FailoverFile,
    "fleet_screen.json": FleetScreenFile,
}
"""Every results file of ``bench/results`` an experiment of this package writes, and its model
(``replicas*.json`` are tests/integration/test_replicas.py's)."""
