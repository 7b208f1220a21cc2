"""``simultrain bench --suite fleet``: many edges against one cloud process; and ``--suite
stragglers``: eight edges, one or two of them slowed (docs/BENCH.md).

One *case* is one fleet: N edges, a mode, and (stragglers) which edges are slowed and how the
rounds end. The benchmark starts one cloud process (no coordinator: the edges connect
straight to it, so the coordinator's registrations and heartbeats do not share the cloud's
two cores) and ⌈N ÷ agents-per-process⌉ **worker processes**, each running several unchanged
:class:`~simultrain.edge.agent.EdgeAgent` on one asyncio loop. Every agent is its own
WebSocket session doing the real protocol (HELLO, SNAP, ACT/GRAD/EGRAD/DELTA/ACK, BYE); the
agents of a worker share only the loop, the process's torch and the cached dataset, the way
several Python clients share one host. Each agent has its own compute slot (an
``asyncio.Semaphore``), so a worker gives its default executor one thread per agent: otherwise
the slots would queue for the loop's few default threads and the edges would wait on each
other, not on the cloud.

Measurement, per case:

1. wait until every agent has had its first ACK (each worker prints ``READY``);
2. read the cloud's ``GET /v1/status``, then sample the cloud's resident memory
   (``VmRSS`` in ``/proc/<pid>/status``) every ``rss_interval_s`` for ``duration_s``, and read
   the status again: the steady window. Per-edge step rate = that edge's
   ``steps_applied`` difference ÷ the window; cloud compute per update = the compute
   thread's ``busy_seconds`` difference ÷ the master-version difference (one update per
   cloud-stage step and one per edge-stage step, docs/DESIGN.md §3);
3. SIGTERM the workers: every agent stops producing and drains (its un-acknowledged batches
   are applied or re-sent); each worker prints ``DONE`` with every agent's report;
4. **lost samples** = samples the edges produced − samples the cloud applied (its status, per
   edge, after the drain) − the samples of **late** coded uploads (gradient coding: an upload
   that comes after its round decoded without it is dropped by design, its partitions
   applied through the other holders); **errors** = agents that raised, plus every
   connection error or reconnect an agent recorded.

The results are ``fleet.json`` / ``stragglers.json`` (one record per case,
:class:`~simultrain.bench.records.FleetFile`) and their ``.md`` tables in ``--out``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from simultrain.bench.harness import Experiment, SuiteOptions
from simultrain.bench.records import (
    FleetFailure,
    FleetFile,
    FleetMeta,
    FleetRecord,
    RateSummary,
)
from simultrain.edge.agent import EdgeAgent, EdgeObserver, EdgeReport
from simultrain.edge.settings import EdgeSettings
from simultrain.procs import ServiceGroup, ServiceProcess
from simultrain.shared.contracts import CloudStatus, Evaluation
from simultrain.shared.data import load_dataset
from simultrain.shared.errors import SimulTrainError

__all__ = [
    "FULL_EDGE_COUNTS",
    "QUICK_EDGE_COUNTS",
    "FleetOptions",
    "FleetSuite",
    "Stragglers",
    "fleet_markdown",
    "fleet_suite",
    "rss_slope_mib_per_min",
    "run_fleet_case",
    "straggler_plan",
    "stragglers_markdown",
    "stragglers_suite",
]

log = logging.getLogger("simultrain.bench.fleet")

FULL_EDGE_COUNTS = (1, 8, 32, 64)
QUICK_EDGE_COUNTS = (1, 4)
WORKER_VAR = "SIMULTRAIN_FLEET_WORKER"  # the worker's JSON spec
BATCH = 32  # the run configuration's batch size (RunConfig default), samples per step

FleetResult = FleetRecord | FleetFailure


@dataclass(frozen=True)
class FleetOptions:
    """One fleet case, or (``edge_counts`` with several sizes) the fleet suite's cases."""

    out_dir: Path = Path("bench/results")
    edge_counts: tuple[int, ...] = FULL_EDGE_COUNTS
    duration_s: float = 60.0  # the steady window of each case
    agents_per_process: int = 16
    mode: str = "simultrain"
    dataset: str = "imu"
    slowdown: float = 1.0  # edge CPU emulation; 1: the edges run at this machine's speed
    rss_interval_s: float = 1.0
    # Niceness the worker processes add to their own (the cloud keeps the benchmark's): on a
    # machine where the edges share the cloud's cores, > 0 lets the cloud run first, as
    # it would on cores of its own. 0: everyone at one priority.
    edge_nice: int = 0
    ready_timeout_s: float = 300.0
    drain_timeout_s: float = 120.0
    log_dir: Path | None = None
    command: str = ""
    results_name: str = "fleet"
    # The straggler suite: edge index → its own slowdown, a FedAvg round deadline, and an
    # evaluation of the master after the drain.
    slowdowns: tuple[tuple[int, float], ...] = ()
    round_deadline_s: float | None = None
    evaluate: bool = False
    label: str = ""
    # > 0: the round deadline is this factor × the reference case's measured round (the
    # plan's straggler-free case of the same mode), so it tracks how loaded the machine is.
    deadline_factor: float = 0.0
    # syncsgd with gradient coding (RunConfig.gradient_coding_s): stragglers tolerated.
    gradient_coding_s: int = 0

    def __post_init__(self) -> None:
        if not self.edge_counts or min(self.edge_counts) < 1:
            raise SimulTrainError(f"fleet sizes must be ≥ 1, got {list(self.edge_counts)}")
        if self.duration_s <= 0 or self.agents_per_process < 1 or self.rss_interval_s <= 0:
            raise SimulTrainError("duration, agents per process and RSS interval must be > 0")
        if not 0 <= self.edge_nice <= 19:
            raise SimulTrainError(f"edge niceness must be in 0..19, got {self.edge_nice}")

    @property
    def edges(self) -> int:
        """The fleet size of one case."""
        if len(self.edge_counts) != 1:
            raise SimulTrainError(f"one case is one fleet size, not {list(self.edge_counts)}")
        return self.edge_counts[0]


@dataclass
class _Worker:
    proc: ServiceProcess
    edge_ids: list[str]
    done: WorkerDone | None = None


# --- the suites --------------------------------------------------------------------------


@dataclass
class FleetSuite(Experiment[FleetOptions, FleetResult]):
    """Every fleet size of ``options.edge_counts`` in turn; ``fleet.json``/``.md`` after each."""

    options: FleetOptions
    results_name: str = "fleet"
    started: float = field(default_factory=time.monotonic)

    def cases(self) -> list[FleetOptions]:
        return [replace(self.options, edge_counts=(n,)) for n in self.options.edge_counts]

    def run_one(self, case: FleetOptions) -> FleetResult:
        return run_fleet_case(case.edges, case)

    def failed(self, case: FleetOptions, exc: BaseException) -> FleetResult:
        return FleetFailure(edges=case.edges, label=case.label or None, error=str(exc))

    def clean(self, record: FleetResult) -> bool:
        return isinstance(record, FleetRecord) and record.clean

    def describe(self, case: FleetOptions) -> str:
        return f"fleet: {case.edges} edge(s) for {case.duration_s:g} s"

    def summary(self, record: FleetResult) -> str:
        return _one_line(record)

    def meta(self) -> FleetMeta:
        return FleetMeta(
            command=self.options.command,
            duration_s=self.options.duration_s,
            agents_per_process=self.options.agents_per_process,
            cpus=os.cpu_count(),
            wall_seconds=round(time.monotonic() - self.started, 1),
        )

    def save(self, records: Sequence[FleetResult]) -> None:
        out = self.options.out_dir
        results = FleetFile(meta=self.meta(), records=list(records))
        results.write(out / f"{self.results_name}.json")
        (out / f"{self.results_name}.md").write_text(self.markdown(results))

    def markdown(self, results: FleetFile) -> str:
        return fleet_markdown(results)


@dataclass
class Stragglers(FleetSuite):
    """The straggler cases in turn; ``stragglers.json``/``.md`` after each. A case with a
    ``deadline_factor`` takes its deadline from the measured round of its mode's reference
    (the plan's first straggler-free case of that mode), so the cases run in plan order."""

    plan: Sequence[FleetOptions] = ()
    results_name: str = "stragglers"
    references: dict[str, float] = field(default_factory=dict)  # mode → measured round

    def cases(self) -> list[FleetOptions]:
        return list(self.plan)

    def run_one(self, case: FleetOptions) -> FleetResult:
        if case.deadline_factor > 0:
            reference = self.references.get(case.mode)
            if reference is None:
                return FleetFailure(edges=case.edges, label=case.label, error="no reference")
            case = replace(case, round_deadline_s=round(case.deadline_factor * reference, 3))
        record = run_fleet_case(case.edges, case)
        if case.mode not in self.references and not case.slowdowns and record.seconds_per_update:
            self.references[case.mode] = record.seconds_per_update
        return record

    def describe(self, case: FleetOptions) -> str:
        return f"stragglers: {case.label} for {case.duration_s:g} s"

    def summary(self, record: FleetResult) -> str:
        return _straggler_line(record)

    def markdown(self, results: FleetFile) -> str:
        return stragglers_markdown(results)


def fleet_suite(options: SuiteOptions) -> FleetSuite:
    """``simultrain bench --suite fleet``."""
    counts = options.edge_counts or (QUICK_EDGE_COUNTS if options.quick else FULL_EDGE_COUNTS)
    fleet = FleetOptions(
        out_dir=options.out_dir,
        edge_counts=counts,
        duration_s=_duration(options),
        slowdown=options.slowdown or 1.0,
        log_dir=options.log_dir,
        command=options.command,
    )
    return FleetSuite(fleet)


def stragglers_suite(options: SuiteOptions) -> Stragglers:
    """``simultrain bench --suite stragglers``: the plan, each case evaluated after its drain."""
    base = FleetOptions(
        out_dir=options.out_dir,
        duration_s=_duration(options),
        slowdown=options.slowdown or 1.0,
        log_dir=options.log_dir,
        command=options.command,
    )
    plan = straggler_plan(base, deadline_s=options.round_deadline_s, modes=options.modes)
    return Stragglers(base, plan=[replace(case, evaluate=True) for case in plan])


def _duration(options: SuiteOptions) -> float:
    if options.duration_s is not None:
        return options.duration_s
    return 5.0 if options.quick else 60.0


def straggler_plan(
    base: FleetOptions,
    *,
    deadline_s: float | None,
    slowdown: float = 5.0,
    edges: int = 8,
    modes: Sequence[str] | None = None,
) -> list[FleetOptions]:
    """Stragglers (docs/DESIGN.md §8.3): 8 edges, one or two slowed ``slowdown``×. The
    lockstep modes waiting for them (syncsgd's step, FedAvg's round), syncsgd with gradient
    coding for s = 1 and 2 (Tandon et al. 2017), with a round deadline, and SimulTrain,
    which waits for no one. FedAvg and
    syncsgd without stragglers are the reference rounds; without ``deadline_s`` a mode's
    deadline is 1.5× its own reference round. ``modes`` keeps only those modes' cases."""
    plan = [
        replace(base, edge_counts=(edges,), mode="syncsgd", label="syncsgd, no straggler"),
        replace(base, edge_counts=(edges,), mode="fedavg", label="fedavg, no straggler"),
    ]
    for count in (1, 2):
        slow = tuple((i, slowdown) for i in range(count))
        case = replace(base, edge_counts=(edges,), slowdowns=slow)
        factor = 0.0 if deadline_s is not None else 1.5
        plan += [
            replace(case, mode="syncsgd", label=f"syncsgd, waits ({count} slow)"),
            *(
                replace(
                    case,
                    mode="syncsgd",
                    gradient_coding_s=s,
                    label=f"syncsgd, coded s={s} ({count} slow)",
                )
                for s in (1, 2)
            ),
            replace(
                case,
                mode="syncsgd",
                round_deadline_s=deadline_s,
                deadline_factor=factor,
                label=f"syncsgd, deadline ({count} slow)",
            ),
            replace(case, mode="simultrain", label=f"simultrain ({count} slow)"),
            replace(case, mode="fedavg", label=f"fedavg, waits ({count} slow)"),
            replace(
                case,
                mode="fedavg",
                round_deadline_s=deadline_s,
                deadline_factor=factor,
                label=f"fedavg, deadline ({count} slow)",
            ),
        ]
    return [case for case in plan if modes is None or case.mode in modes]


# --- the tables ----------------------------------------------------------------------------


def _straggler_line(record: FleetResult) -> str:
    if isinstance(record, FleetFailure):
        return f"  {record.label}: error: {record.error}"
    return (
        f"  {record.label} (deadline {record.round_deadline_s}): "
        f"{record.steps_per_s:.1f} steps/s in all, "
        f"{record.seconds_per_update} s per update, fast edges "
        f"{record.fast_edge_step_rate_median:.2f}/s, stragglers "
        f"{record.straggler_step_rates}, partial rounds {record.partial_rounds}, "
        f"coded rounds {record.coded_rounds or 0} "
        f"(late dropped {record.late_uploads_dropped or 0}), "
        f"accuracy {record.accuracy}, errors {record.errors}, lost {record.lost_samples}"
    )


def stragglers_markdown(results: FleetFile) -> str:
    meta = results.meta
    lines = [
        "# Stragglers: 8 edges, one or two slowed 5×",
        "",
        f"Command: `{meta.command or 'simultrain bench --suite stragglers'}` "
        f"({meta.cpus} CPUs, shared; {meta.duration_s} s of training per case, "
        "then a drain and one evaluation).",
        "",
        "| case | mode | round deadline s | s per master update | steps/s in all "
        "| fast edge steps/s (median) | straggler steps/s | partial rounds "
        "| coded rounds (late dropped) | samples applied | accuracy | errors | lost |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results.records:
        if isinstance(r, FleetFailure):
            lines.append(f"| {r.label} | error: {r.error} | | | | | | | | | | | |")
            continue
        accuracy = r.accuracy
        coded = r.coded_rounds or 0
        decoded = f"{coded} ({r.late_uploads_dropped or 0})" if coded else "–"
        lines.append(
            f"| {r.label} | {r.mode} | {r.round_deadline_s or '–'} "
            f"| {r.seconds_per_update} | {r.steps_per_s:.1f} "
            f"| {r.fast_edge_step_rate_median:.2f} "
            f"| {', '.join(f'{x:.2f}' for x in r.straggler_step_rates) or '–'} "
            f"| {r.partial_rounds} "
            f"| {decoded} "
            f"| {r.eval_samples_applied} "
            f"| {'–' if accuracy is None else f'{accuracy:.1%}'} | {r.errors} "
            f"| {r.lost_samples}{f' (late {r.late_samples})' if r.late_samples else ''} |"
        )
    lines += [
        "",
        "A step is one batch of 32 samples (a FedAvg round is 5 steps per edge). s per master "
        "update: the steady window ÷ master versions in it (FedAvg and syncsgd: one per round; "
        "SimulTrain: two per batch). steps/s in all: distinct batches applied per second (a "
        "coded round applies the 8 partitions' batches, whichever 8 − s edges answered). "
        "Fast edge and straggler steps/s: batches of each edge's own uploads applied per "
        "second; a coded upload carries s + 1 batches, so coded edges count (s + 1)× and a "
        "straggler whose uploads all came late counts 0. Coded rounds: rounds decoded in the "
        "steady window, and uploads dropped because their round had decoded without them. "
        "Accuracy: the master on the held-out split after the fixed training time and the "
        "drain (equal time, not equal samples). Lost: samples the edges sent that no update "
        "applied — in FedAvg, batches of local rounds the edges had not finished when told to "
        "stop (the agent drops an unfinished round when it drains); "
        + (
            # Records of before the late uploads had their own count: lost included them.
            "in coded syncsgd, the late uploads' batches (their partitions were applied "
            "through the other holders)."
            if all(r.late_samples is None for r in results.records if isinstance(r, FleetRecord))
            else "late: the batches of coded uploads that came after their round had decoded, "
            "dropped by design (their partitions were applied through the other holders), "
            "not lost."
        ),
        "",
    ]
    return "\n".join(lines)


# --- one case --------------------------------------------------------------------------------


def run_fleet_case(edges: int, options: FleetOptions) -> FleetRecord:
    """One fleet size: start, wait ready, measure the steady window, drain, count."""
    log_dir = options.log_dir / f"fleet-{edges}" if options.log_dir else None
    with ServiceGroup(log_dir) as group:
        cloud = group.start(
            "cloud",
            "simultrain.cloud",
            {
                "SIMULTRAIN_CLOUD_HOST": "127.0.0.1",
                "SIMULTRAIN_CLOUD_PORT": "0",
                "SIMULTRAIN_CLOUD_LOG_LEVEL": "warning",
                "SIMULTRAIN_CLOUD_RUN_MODE": options.mode,
                "SIMULTRAIN_CLOUD_RUN_DATASET": options.dataset,
                **(
                    {"SIMULTRAIN_CLOUD_RUN_ROUND_DEADLINE_S": str(options.round_deadline_s)}
                    if options.round_deadline_s is not None
                    else {}
                ),
                **(
                    {
                        "SIMULTRAIN_CLOUD_RUN_EDGES": str(edges),
                        "SIMULTRAIN_CLOUD_RUN_GRADIENT_CODING_S": str(options.gradient_coding_s),
                    }
                    if options.gradient_coding_s
                    else {}
                ),
            },
        )
        cloud_url = cloud.wait_listening(timeout_s=120)
        workers = _start_workers(group, edges, cloud_url, options)
        with httpx.Client(base_url=cloud_url, timeout=30) as http:
            for worker in workers:
                worker.proc.wait_for_line("READY", timeout_s=options.ready_timeout_s)
            first = _status(http)
            cpu0 = _cpu_seconds(cloud.popen.pid)
            switches0 = _context_switches(cloud.popen.pid)
            t0 = time.monotonic()
            rss = [(0.0, _rss_mib(cloud.popen.pid))]
            while (elapsed := time.monotonic() - t0) < options.duration_s:
                time.sleep(min(options.rss_interval_s, options.duration_s - elapsed))
                rss.append((round(time.monotonic() - t0, 3), _rss_mib(cloud.popen.pid)))
            second = _status(http)
            cpu_s = _cpu_seconds(cloud.popen.pid) - cpu0
            switches = _context_switches(cloud.popen.pid) - switches0
            load = os.getloadavg()
            window_s = time.monotonic() - t0
            for worker in workers:
                worker.proc.popen.send_signal(signal.SIGTERM)
            for worker in workers:
                line = worker.proc.wait_for_line("DONE ", timeout_s=options.drain_timeout_s)
                worker.done = WorkerDone.model_validate_json(line)
            final = _status(http)
            evaluation = (
                Evaluation.model_validate_json(http.get("/v1/eval", timeout=120).content)
                if options.evaluate
                else None
            )
        window = _Window(first, second, rss, window_s, cpu_s, switches, load)
        return _record(edges, options, workers, window, final, evaluation)


def _start_workers(
    group: ServiceGroup, edges: int, cloud_url: str, options: FleetOptions
) -> list[_Worker]:
    processes = math.ceil(edges / options.agents_per_process)
    workers = []
    for p in range(processes):
        indices = list(range(p, edges, processes))  # round-robin: sizes differ by ≤ 1
        spec = WorkerSpec(
            cloud_url=cloud_url,
            indices=indices,
            count=edges,
            mode=options.mode,
            dataset=options.dataset,
            slowdown=options.slowdown,
            slowdowns={i: k for i, k in options.slowdowns if i in indices},
            gradient_coding_s=options.gradient_coding_s,
            # The agents' own drain bound: inside the time the benchmark waits for them, so
            # a slow drain shows as undelivered batches, never as a silent loss.
            drain_timeout_s=max(options.drain_timeout_s - 15.0, 1.0),
            nice=options.edge_nice,
        )
        proc = group.start(
            f"fleet-worker-{p}", "simultrain.bench.fleet", {WORKER_VAR: spec.model_dump_json()}
        )
        workers.append(_Worker(proc, [_edge_id(i) for i in indices]))
    return workers


def _edge_id(index: int) -> str:
    return f"fleet-{index:03d}"


def _status(http: httpx.Client) -> CloudStatus:
    response = http.get("/v1/status")
    response.raise_for_status()
    return CloudStatus.model_validate_json(response.content)


def _rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` in MiB, from ``/proc/<pid>/status`` (proc(5))."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 2)
    raise SimulTrainError(f"no VmRSS for process {pid}")


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) of ``pid``, from ``/proc/<pid>/stat`` (proc(5)).

    Unlike the compute thread's busy time (wall clock), it does not grow when the two
    shared cores are taken by someone else, and it counts the event loop's work too.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3): utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _context_switches(pid: int) -> int:
    """Involuntary context switches of every thread of ``pid`` (``/proc/<pid>/task/*/status``,
    proc(5)): how often the cores were taken from the cloud while it had work."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            for line in (task / "status").read_text().splitlines():
                if line.startswith("nonvoluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def rss_slope_mib_per_min(samples: Sequence[Sequence[float]]) -> float:
    """Least-squares slope of ``[seconds, MiB]`` samples, in MiB per minute."""
    if len(samples) < 2:
        return 0.0
    ts = [float(s[0]) for s in samples]
    ms = [float(s[1]) for s in samples]
    t_mean, m_mean = statistics.fmean(ts), statistics.fmean(ms)
    var = sum((t - t_mean) ** 2 for t in ts)
    if var == 0:
        return 0.0
    cov = sum((t - t_mean) * (m - m_mean) for t, m in zip(ts, ms, strict=True))
    return 60.0 * cov / var


@dataclass(frozen=True)
class _Window:
    """The steady window: the cloud's status at its start and end, and what was sampled."""

    first: CloudStatus
    second: CloudStatus
    rss: list[tuple[float, float]]  # [seconds into the window, MiB]
    seconds: float
    cpu_s: float  # the cloud process's CPU time in the window
    switches: int  # its involuntary context switches in the window
    load: tuple[float, float, float]  # load average at its end


def _record(
    edges: int,
    options: FleetOptions,
    workers: list[_Worker],
    window: _Window,
    final: CloudStatus,
    evaluation: Evaluation | None,
) -> FleetRecord:
    """The case's record from the edges' reports and the cloud's counts (module docstring).

    Long because the record is: one keyword a field, each figure computed next to it."""
    reports: dict[str, EdgeReport] = {}
    failures: list[str] = []
    for worker in workers:
        for edge_id, outcome in (worker.done.agents if worker.done else {}).items():
            if isinstance(outcome, AgentFailure):
                failures.append(f"{edge_id}: {outcome.error}")
            else:
                reports[edge_id] = outcome
    connection_errors = sum(len(r.errors) for r in reports.values())
    reconnects = sum(r.reconnects for r in reports.values())
    ended = Counter(_close_reason(e) for r in reports.values() for e in r.session_ends)
    undelivered = sum(r.undelivered for r in reports.values())
    first, second, window_s = window.first, window.second, window.seconds
    # Batches (of BATCH samples) applied per edge: the same unit in every mode (a FedAvg
    # upload carries E batches).
    per_edge = {}
    for edge_id in sorted({e for w in workers for e in w.edge_ids}):
        before = first.edges[edge_id].samples_applied if edge_id in first.edges else 0
        after = second.edges[edge_id].samples_applied if edge_id in second.edges else 0
        per_edge[edge_id] = (after - before) / BATCH / window_s
    rates = list(per_edge.values())
    slow = {_edge_id(i) for i, _ in options.slowdowns}
    updates = second.master_version - first.master_version
    batches = (second.samples_applied - first.samples_applied) / BATCH
    busy = second.busy_seconds - first.busy_seconds
    compute_cpu = second.compute_cpu_seconds - first.compute_cpu_seconds
    cpu_s = window.cpu_s
    bytes_up = second.bytes_up - first.bytes_up
    bytes_down = second.bytes_down - first.bytes_down
    sent = sum(r.samples_sent for r in reports.values())
    applied = sum(e.samples_applied for e in final.edges.values())
    # A coded upload carries s + 1 batches; one that came after its round decoded was
    # dropped by design (docs/BENCH.md, "Stragglers"), not lost.
    late_samples = (options.gradient_coding_s + 1) * BATCH * final.late_uploads_dropped
    steady_rss = window.rss[len(window.rss) // 5 :]  # the first fifth: caches warming up
    fast = [r for e, r in per_edge.items() if e not in slow] or [0.0]
    rss = window.rss
    return FleetRecord(
        edges=edges,
        label=options.label,
        processes=len(workers),
        mode=options.mode,
        dataset=options.dataset,
        edge_slowdown=options.slowdown,
        edge_nice=options.edge_nice,
        window_s=round(window_s, 3),
        step_rate_per_edge=RateSummary(
            min=round(min(rates), 3),
            median=round(statistics.median(rates), 3),
            max=round(max(rates), 3),
            mean=round(statistics.fmean(rates), 3),
        ),
        steps_per_s=round(batches / window_s, 2),
        fast_edge_step_rate_median=round(statistics.median(fast), 3),
        straggler_step_rates=[round(per_edge[e], 3) for e in sorted(slow & set(per_edge))],
        stragglers={_edge_id(i): k for i, k in options.slowdowns},
        round_deadline_s=options.round_deadline_s,
        seconds_per_update=round(window_s / updates, 4) if updates else None,
        partial_rounds=second.partial_rounds - first.partial_rounds,
        gradient_coding_s=options.gradient_coding_s,
        coded_rounds=second.coded_rounds - first.coded_rounds,
        late_uploads_dropped=second.late_uploads_dropped - first.late_uploads_dropped,
        late_samples=late_samples,
        accuracy=None if evaluation is None else evaluation.accuracy,
        eval_samples_applied=None if evaluation is None else evaluation.samples_applied,
        cloud_updates=updates,
        cloud_busy_fraction=round(busy / window_s, 3),
        cloud_ms_per_update=round(1000 * busy / updates, 3) if updates else None,
        cloud_ms_per_batch=round(1000 * busy / batches, 3) if batches else None,
        cloud_cpu_fraction=round(cpu_s / window_s, 3),
        cloud_cpu_ms_per_update=round(1000 * cpu_s / updates, 3) if updates else None,
        # The split of that CPU time: the compute thread's own, and the rest (the event
        # loop: frames in and out, sessions; and the process's other threads).
        cloud_compute_cpu_ms_per_update=(
            round(1000 * compute_cpu / updates, 3) if updates else None
        ),
        cloud_loop_cpu_ms_per_update=(
            round(1000 * (cpu_s - compute_cpu) / updates, 3) if updates else None
        ),
        # What crosses the cloud's sockets per update (the loop's work grows with it).
        cloud_bytes_up_per_update=round(bytes_up / updates) if updates else None,
        cloud_bytes_down_per_update=round(bytes_down / updates) if updates else None,
        rss_mib=rss,
        rss_start_mib=rss[0][1],
        rss_end_mib=rss[-1][1],
        rss_max_mib=max(m for _, m in rss),
        rss_slope_mib_per_min=round(rss_slope_mib_per_min(steady_rss), 3),
        errors=len(failures) + connection_errors + reconnects,
        error_details=failures[:20],
        agents_failed=len(failures),
        connection_errors=connection_errors,
        reconnects=reconnects,
        session_end_reasons=dict(ended.most_common()),
        undelivered_batches=undelivered,
        samples_sent=sent,
        samples_applied=applied,
        lost_samples=sent - applied - late_samples,
        duplicates_dropped=sum(e.duplicates_dropped for e in final.edges.values()),
        staleness=final.staleness,
        cloud_involuntary_switches_per_update=(
            round(window.switches / updates, 2) if updates else None
        ),
        load_average=[round(x, 2) for x in window.load],  # 1, 5, 15 min, at the window's end
    )


def _close_reason(ended: str) -> str:
    """A session's end without the numbers that differ between edges (for counting)."""
    return "".join("#" if c.isdigit() else c for c in ended)[:120]


def _one_line(record: FleetResult) -> str:
    if isinstance(record, FleetFailure):
        return f"  {record.edges} edge(s): error: {record.error}"
    rate = record.step_rate_per_edge
    return (
        f"  {record.edges} edge(s): {rate.median:.2f} steps/s per edge (median), "
        f"{record.steps_per_s:.1f} in all; cloud {record.cloud_ms_per_update} ms/update "
        f"({record.cloud_cpu_ms_per_update} ms CPU), "
        f"busy {record.cloud_busy_fraction:.0%}; RSS {record.rss_start_mib:.0f}→"
        f"{record.rss_end_mib:.0f} MiB; errors {record.errors}, "
        f"lost {record.lost_samples}"
    )


def fleet_markdown(results: FleetFile) -> str:
    meta = results.meta
    lines = [
        "# Fleet load test: N edges against one cloud process",
        "",
        f"Command: `{meta.command or 'simultrain bench --suite fleet'}` "
        f"({meta.cpus} CPUs, shared; steady window {meta.duration_s} s per size, "
        f"{meta.agents_per_process} agents per worker process).",
        "",
        "| edges | steps/s per edge (min / median / max) | steps/s in all | cloud ms per update "
        "(compute thread, wall) | cloud CPU ms per update | cloud busy | cloud RSS start → end "
        "(max) MiB | RSS slope MiB/min | errors | samples sent / applied | lost "
        "| staleness mean / max | edge gradients dropped (older than the history) "
        "| CPU ms per update: compute thread / loop | involuntary switches per update "
        "| undelivered batches | load average |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results.records:
        if isinstance(r, FleetFailure):
            lines.append(f"| {r.edges} | error: {r.error} | | | | | | | | | | | | | | | |")
            continue
        rate = r.step_rate_per_edge
        load = r.load_average
        undelivered = "–" if r.undelivered_batches is None else r.undelivered_batches
        lines.append(
            f"| {r.edges} | {rate.min:.2f} / {rate.median:.2f} / {rate.max:.2f} "
            f"| {r.steps_per_s:.1f} | {r.cloud_ms_per_update} "
            f"| {r.cloud_cpu_ms_per_update} "
            f"| {r.cloud_busy_fraction:.0%} "
            f"| {r.rss_start_mib:.0f} → {r.rss_end_mib:.0f} ({r.rss_max_mib:.0f}) "
            f"| {r.rss_slope_mib_per_min:+.2f} | {r.errors} "
            f"| {r.samples_sent} / {r.samples_applied} | {r.lost_samples} "
            f"| {r.staleness.mean:.0f} / {r.staleness.max} "
            f"| {r.staleness.dropped} "
            f"| {r.cloud_compute_cpu_ms_per_update} / "
            f"{r.cloud_loop_cpu_ms_per_update} "
            f"| {r.cloud_involuntary_switches_per_update} "
            f"| {undelivered} "
            f"| {'–' if not load else ' / '.join(f'{x:.1f}' for x in load)} |"
        )
    ended = [r for r in results.records if isinstance(r, FleetRecord) and r.session_end_reasons]
    if ended:
        lines += ["", "Why sessions ended before a reconnect (digits as #):", ""]
        for r in ended:
            reasons = ", ".join(f"{n}× {why}" for why, n in (r.session_end_reasons or {}).items())
            lines.append(f"- {r.edges} edges: {reasons}")
    lines += [
        "",
        "Per-edge step rate: batches the cloud applied for that edge in the steady window ÷ "
        "its length. Cloud ms per update: compute-thread busy time (wall clock, so it grows "
        "when other processes take the cores) ÷ master updates (two per batch in "
        "SimulTrain); cloud CPU ms per update: the cloud process's CPU time (every thread: "
        "compute and event loop) ÷ the same updates. RSS slope: least squares over the "
        "window without its first fifth. Lost = samples the edges produced − samples the "
        "cloud applied, after every edge drained; undelivered: batches an agent still held "
        "when its drain timed out (part of lost). Errors = agents that failed + connection "
        "errors + reconnects. Compute thread CPU: its own CPU time (`time.thread_time`); loop: "
        "the rest of the process's. Involuntary switches: the cloud's threads' "
        "`nonvoluntary_ctxt_switches` (proc(5)) ÷ updates. Load average: 1 / 5 / 15 min at the "
        "window's end.",
        "",
    ]
    return "\n".join(lines)


# --- the worker process: several agents on one event loop ------------------------------


class WorkerSpec(BaseModel):
    """What a worker process runs (its ``SIMULTRAIN_FLEET_WORKER`` variable)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cloud_url: str
    indices: list[int] = Field(description="The fleet's edges this worker runs.")
    count: int = Field(description="Edges in the whole fleet.")
    mode: str
    dataset: str
    slowdown: float
    slowdowns: dict[int, float] = Field(description="Edge index → its own slowdown.")
    gradient_coding_s: int = 0
    drain_timeout_s: float = 30.0
    nice: int = 0


class AgentFailure(BaseModel):
    """An agent that raised instead of returning its report."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error: str


class WorkerDone(BaseModel):
    """A worker's ``DONE`` line: each agent's report, or why it failed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agents: dict[str, Annotated[AgentFailure | EdgeReport, Field(union_mode="left_to_right")]]


class _FirstAck(EdgeObserver):
    """Sets an event on the agent's first ACK: its session is open and trains."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def acked(self, acked_seq: int, report: EdgeReport) -> None:
        self.event.set()


async def _worker(spec: WorkerSpec) -> WorkerDone:
    indices = spec.indices
    loop = asyncio.get_running_loop()
    # One thread per agent (its compute slot), plus a few for the loop's own uses.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=len(indices) + 4))
    dataset = await asyncio.to_thread(load_dataset, spec.dataset, seed=0)  # cached for all
    # IMU shards by subject (8 in the training split): beyond that, edges share a shard
    # (and its batch order). The load on the cloud is the same; the data is not the point.
    groups = dataset.groups_train
    shards = min(spec.count, len(set(groups.tolist())) if groups is not None else spec.count)
    agents = {}
    observers = {}
    coding = spec.gradient_coding_s
    # Gradient coding: edge i is row i of the code and holds its partitions (the replicated
    # data of an edge-node tier, Tang et al. 2024), so its index is its shard of the run's
    # edges, whatever the groups.
    coded: dict[str, Any] = (
        {"run_edges": spec.count, "run_gradient_coding_s": coding} if coding else {}
    )
    for index in indices:
        observer = _FirstAck()
        settings = EdgeSettings(
            cloud_url=spec.cloud_url,
            edge_id=_edge_id(index),
            shard_index=index if coding else index % shards,
            shard_count=spec.count if coding else shards,
            compute_threads=1,
            slowdown=spec.slowdowns.get(index, spec.slowdown),
            watchdog=False,
            log_level="warning",
            run_mode=spec.mode,
            run_dataset=spec.dataset,
            **coded,
            drain_timeout_s=spec.drain_timeout_s,
        )
        agents[_edge_id(index)] = EdgeAgent(settings, observer=observer)
        observers[_edge_id(index)] = observer
    tasks = {edge_id: asyncio.create_task(agent.run()) for edge_id, agent in agents.items()}
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    ready = asyncio.gather(*(o.event.wait() for o in observers.values()))
    stopped = asyncio.ensure_future(stopping.wait())
    waiting: set[asyncio.Future[Any]] = {ready, stopped, *tasks.values()}
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    print("READY", flush=True)  # or an agent already ended: the report will say why
    await stopped
    for agent in agents.values():
        agent.stop()
    ready.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ready
    outcomes = await asyncio.gather(*tasks.values(), return_exceptions=True)
    result: dict[str, AgentFailure | EdgeReport] = {}
    for edge_id, outcome in zip(tasks, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            result[edge_id] = AgentFailure(error=f"{type(outcome).__name__}: {outcome}")
        else:
            result[edge_id] = outcome
    return WorkerDone(agents=result)


def worker_main() -> int:
    """``python -m simultrain.bench.fleet`` with ``SIMULTRAIN_FLEET_WORKER`` set."""
    logging.basicConfig(
        level="WARNING", stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    spec = WorkerSpec.model_validate_json(os.environ[WORKER_VAR])
    if spec.nice:
        os.nice(spec.nice)  # before any thread starts: they all inherit it
    done = asyncio.run(_worker(spec))
    print("DONE " + done.model_dump_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
