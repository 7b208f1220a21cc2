"""``simultrain bench``: every mode through the real services, side by side (docs/BENCH.md).

One *case* is one training run: a mode, a dataset, a link profile, a seed, a codec variant
and a number of steps. The benchmark starts the same process topology as ``simultrain demo``
(:func:`simultrain.demo.start_topology`: coordinator, cloud, netem, one edge — the edge
through :mod:`simultrain.bench.probe`, the unchanged agent plus a step timeline), polls the
cloud while it trains, evaluates, stops everything, and turns the recordings into one
:class:`~simultrain.bench.records.BenchRecord` of ``results.json`` with
:mod:`simultrain.bench.metrics`. :class:`Bench` is the experiment (:mod:`simultrain.bench.harness`).

A *plan* is a list of :class:`Suite` grids. The default (full) plan has three:

- ``systems``: every mode × 4G, 5G, LAN × IMU, MNIST, video, one seed — step interval,
  latency, bytes, pipeline bound (no evaluation during training, so nothing stalls steps);
- ``accuracy``: every mode × IMU, MNIST × three seeds on 5G, longer, with evaluations during
  training for accuracy-over-time and time-to-target;
- ``compression``: SimulTrain with lossy downlink codecs (fp16/int8 deltas, top-k cut
  gradients) on 4G — the effect on bytes, step time and accuracy;
- ``window``: SimulTrain with in-flight windows 2, 8, 16 on 4G and 5G (4 is in ``systems``):
  how large a window the link's bandwidth-delay product needs to reach the pipeline bound.

``--quick`` is the same shape with a few steps, one seed and fewer cells.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import queue
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx

from simultrain.bench import metrics
from simultrain.bench.calibrate import Calibration, calibrate
from simultrain.bench.harness import Experiment, Progress, run
from simultrain.bench.probe import PRELOAD_VAR, SETTINGS_FIFO_VAR
from simultrain.bench.records import (
    BenchFailure,
    BenchMeta,
    BenchRecord,
    BenchResults,
    EdgeReportSummary,
    HostInfo,
    SuitePlan,
    write_json,
)
from simultrain.demo import edge_environment, start_topology
from simultrain.netem.profiles import parse_profile
from simultrain.procs import ServiceGroup, ServiceProcess
from simultrain.shared.contracts import CloudStatus, Evaluation
from simultrain.shared.errors import SimulTrainError
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.schedule import MODES

__all__ = [
    "CODEC_VARIANTS",
    "COMPENSATION_VARIANTS",
    "VARIANTS",
    "WORKLOADS",
    "Bench",
    "BenchOptions",
    "Case",
    "Suite",
    "full_plan",
    "quick_plan",
    "run_bench",
    "run_case",
]

# The synthetic mode's "no local step" ablation is measured on its own (docs/SYNTHETIC.md,
# `--modes synthetic-nolocal`), not in every systems or accuracy run.
ALL_MODES: tuple[str, ...] = tuple(m for m in MODES if m != "synthetic-nolocal")

# The bench's "dataset" axis names a workload: a dataset and the split model trained on it.
# The built-in datasets train their default model; ``imu-thin`` is the IMU data with the
# ``imu-thin`` model, whose cut (32 KiB per batch) is smaller than the model (71 KiB): the
# payload regime of the paper's table. ``imu-cnn1d``'s cut (128 KiB) is larger than its model.
WORKLOADS: Mapping[str, tuple[str, str | None]] = {
    "imu": ("imu", None),
    "mnist": ("mnist", None),
    "video": ("video", None),
    "imu-thin": ("imu", "imu-thin"),
}
LOOPBACK = "loopback"  # no emulator between edge and cloud

# Codec variants of the compression suite: (act, grad, delta, egrad, topk_ratio) overrides of
# RunConfig.codecs. "lz4" is the lossless default every other suite uses.
CODEC_VARIANTS: Mapping[str, Mapping[str, Any]] = {
    "lz4": {},
    "delta-fp16": {"delta_codec": "fp16"},
    "delta-int8": {"delta_codec": "int8"},
    "grad-topk10": {"grad_codec": "topk", "topk_ratio": 0.1},
    "down-int8-topk10": {"delta_codec": "int8", "grad_codec": "topk", "topk_ratio": 0.1},
    "all-fp16": {
        "act_codec": "fp16",
        "grad_codec": "fp16",
        "delta_codec": "fp16",
        "egrad_codec": "fp16",
    },
}

# The paper's ablations, made honest (docs/DESIGN.md §5.1, §10): each is a RunConfig override on the
# same mode, so the two runs of a pair differ in exactly one thing. SimulTrain as the paper
# defines it (forecast, α = 0.5) against α = 0; our default chain against no compensation.
# (The "simultrain-noforecast" mode removes the forecast from the run's chain, and our
# default chain has none: beside our default it would be the same run twice.)
COMPENSATION_VARIANTS: Mapping[str, Mapping[str, Any]] = {
    "paper": {"compensation": "forecast", "alpha": 0.5},
    "paper-alpha0": {"compensation": "forecast", "alpha": 0.0},
    "ours": {},
    "ours-nocomp": {"compensation": "none"},
}

# Every value of a case's ``variant`` axis: a codec variant or a compensation variant.
VARIANTS: Mapping[str, Mapping[str, Any]] = {**CODEC_VARIANTS, **COMPENSATION_VARIANTS}

# The accuracy suites' modes: the no-forecast mode is the "ablation" suite's business.
ACCURACY_MODES = tuple(m for m in ALL_MODES if m != "simultrain-noforecast")


@dataclass(frozen=True)
class Suite:
    """A grid of cases: modes × links × datasets × seeds × codec variants."""

    name: str
    modes: tuple[str, ...]
    links: tuple[str, ...]
    datasets: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: Mapping[str, int]  # batches per dataset
    variants: tuple[str, ...] = ("lz4",)
    evals: int = 0  # evaluations during training, evenly spaced in samples (final one extra)
    windows: tuple[int | None, ...] = (None,)  # in-flight windows W (None: RunConfig's)

    def describe(self) -> SuitePlan:
        """The suite as ``meta.json`` records it."""
        return SuitePlan.model_validate({**asdict(self), "steps": dict(self.steps)})

    def cases(self) -> list[Case]:
        return [
            Case(
                self.name,
                mode,
                link,
                dataset,
                seed,
                variant,
                self.steps[dataset],
                self.evals,
                window,
            )
            for dataset in self.datasets
            for link in self.links
            for variant in self.variants
            for window in self.windows
            for seed in self.seeds
            for mode in self.modes
        ]


@dataclass(frozen=True)
class Case:
    suite: str
    mode: str
    link: str
    dataset: str
    seed: int
    variant: str
    steps: int
    evals: int
    window: int | None = None

    @property
    def case_id(self) -> str:
        window = "" if self.window is None else f"/w{self.window}"
        return (
            f"{self.suite}/{self.dataset}/{self.link}/{self.variant}{window}/{self.mode}"
            f"/s{self.seed}"
        )

    @property
    def data(self) -> str:
        """The dataset the workload trains on."""
        return WORKLOADS[self.dataset][0]

    def run_config(self) -> RunConfig:
        window = {} if self.window is None else {"window": self.window}
        data, model_id = WORKLOADS[self.dataset]
        return RunConfig.from_mapping(
            {
                "mode": self.mode,
                "dataset": data,
                "model_id": model_id,
                "seed": self.seed,
                **window,
                **VARIANTS[self.variant],
            }
        )


STEPS_SYSTEMS = {"imu": 200, "imu-thin": 200, "mnist": 150, "video": 40}
STEPS_ACCURACY = {"imu": 500, "imu-thin": 500, "mnist": 1200, "video": 150}
STEPS_QUICK = {"imu": 60, "imu-thin": 60, "mnist": 40, "video": 16}


def full_plan() -> list[Suite]:
    """The committed benchmark (``bench/results``); about 50 minutes on the 2-core dev box."""
    return [
        Suite(
            "systems",
            ALL_MODES,
            ("4g", "5g", "lan"),
            ("imu", "imu-thin", "mnist", "video"),
            (0,),
            STEPS_SYSTEMS,
        ),
        Suite(
            "accuracy",
            ACCURACY_MODES,
            ("5g",),
            ("imu", "imu-thin"),
            (0, 1, 2),
            STEPS_ACCURACY,
            evals=4,
        ),
        # MNIST with this model and optimizer sits on its initial plateau (≈ 17 %) for the
        # first ~400 steps and reaches ≈ 84 % at 1200 (centralized, in-process): it needs
        # the long run, so it goes over LAN, the fastest link (accuracy does not depend on
        # it), without split-sync (window 0: the same arithmetic as syncsgd/centralized).
        Suite(
            "accuracy",
            tuple(m for m in ACCURACY_MODES if m != "split-sync"),
            ("lan",),
            ("mnist",),
            (0, 1, 2),
            STEPS_ACCURACY,
            evals=4,
        ),
        Suite(
            "compression",
            ("simultrain",),
            ("4g",),
            ("imu", "mnist", "video"),
            (0,),
            STEPS_SYSTEMS,
            variants=tuple(CODEC_VARIANTS),
        ),
        # The paper's ablations as pairs (COMPENSATION_VARIANTS), three seeds each, over LAN
        # (accuracy does not depend on the link).
        Suite(
            "ablation",
            ("simultrain",),
            ("lan",),
            ("imu", "mnist"),
            (0, 1, 2),
            STEPS_ACCURACY,
            variants=tuple(COMPENSATION_VARIANTS),
        ),
        # W = 4 is the systems suite's default window: the report puts it beside these.
        Suite(
            "window",
            ("simultrain",),
            ("4g", "5g"),
            ("imu", "imu-thin", "mnist"),
            (0,),
            STEPS_SYSTEMS,
            windows=(2, 8, 16),
        ),
    ]


def quick_plan() -> list[Suite]:
    """``--quick``: the same three suites, small enough for under five minutes."""
    return [
        Suite(
            "systems",
            ALL_MODES,
            ("4g", "5g"),
            ("imu",),
            (0,),
            STEPS_QUICK,
        ),
        Suite(
            "compression",
            ("simultrain",),
            ("4g",),
            ("imu",),
            (0,),
            STEPS_QUICK,
            variants=("lz4", "delta-int8", "down-int8-topk10"),
        ),
        Suite(
            "window",
            ("simultrain",),
            ("4g",),
            ("imu",),
            (0,),
            STEPS_QUICK,
            windows=(8,),
        ),
    ]


@dataclass(frozen=True)
class BenchOptions:
    out_dir: Path = Path("bench/results")
    quick: bool = False
    modes: tuple[str, ...] | None = None  # overrides of every suite of the plan
    links: tuple[str, ...] | None = None
    datasets: tuple[str, ...] | None = None
    seeds: int | None = None
    steps: int | None = None
    variants: tuple[str, ...] | None = None
    suites: tuple[str, ...] | None = None  # keep only these suites
    slowdown: float | None = None  # None: calibrate
    edge_threads: int = 1
    log_dir: Path | None = None
    case_timeout_s: float = 900.0
    plots: bool = True
    append: bool = False  # add to OUT/results.json instead of starting it anew
    command: str = ""

    def plan(self) -> list[Suite]:
        plan = quick_plan() if self.quick else full_plan()
        if self.suites is not None:
            plan = [suite for suite in plan if suite.name in self.suites]
        restrict = self.datasets is not None and any(
            set(suite.datasets) & set(self.datasets) for suite in plan
        )
        out: list[Suite] = []
        for suite in plan:
            if restrict:
                # --datasets keeps the suites' cells of these datasets; a plan that has none
                # of them runs every suite on them instead (below).
                kept = tuple(d for d in suite.datasets if d in (self.datasets or ()))
                if not kept:
                    continue
                suite = replace(suite, datasets=kept)
            if self.variants is not None:
                # Variants only change codecs; a suite of the default codec keeps it.
                variants = tuple(v for v in suite.variants if v in self.variants)
                suite = replace(suite, variants=variants or suite.variants[:1])
            if self.modes is not None:
                kept = tuple(m for m in suite.modes if m in self.modes)
                # A mode no default suite runs (the synthetic ablation) joins every suite
                # it is asked of.
                kept += tuple(m for m in self.modes if m not in ALL_MODES)
                suite = replace(suite, modes=kept or self.modes)
            if self.links is not None:
                suite = replace(suite, links=self.links)
            if self.datasets is not None and not restrict:
                suite = replace(suite, datasets=self.datasets)
            if self.seeds is not None:
                suite = replace(suite, seeds=tuple(range(self.seeds)))
            if self.steps is not None:
                suite = replace(
                    suite,
                    steps=dict.fromkeys(suite.steps, self.steps)
                    | dict.fromkeys(suite.datasets, self.steps),
                )
            out.append(suite)
        return out


# --------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------


@dataclass
class _Recording:
    """What the benchmark saw while one case trained."""

    busy: list[list[float]] = field(default_factory=list)  # [t, busy_seconds]
    pauses: list[list[float]] = field(default_factory=list)  # [start, end] of /v1/eval
    evals: list[tuple[float, Evaluation]] = field(default_factory=list)  # (t, evaluation)
    report: dict[str, Any] | None = None


def run_case(
    case: Case,
    *,
    slowdown: float,
    edge_threads: int = 1,
    log_dir: Path | None = None,
    timeout_s: float = 900.0,
    on_progress: Callable[[int], None] | None = None,
) -> BenchRecord:
    """Train one case through the real services; its ``results.json`` record."""
    run = case.run_config()
    link = None if case.link == LOOPBACK else case.link
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="simultrain-bench-") as tmp:
        group = ServiceGroup(log_dir / case.case_id.replace("/", "_") if log_dir else None)
        try:
            # The edge first, so its imports and dataset load overlap the others' start-up;
            # it waits for the addresses on a named pipe (see probe.py).
            fifo = Path(tmp) / "edge-settings"
            os.mkfifo(fifo)
            edge = group.start(
                "edge-0",
                "simultrain.bench.probe",
                {
                    SETTINGS_FIFO_VAR: str(fifo),
                    PRELOAD_VAR: f"{case.data}:{case.seed}",
                    "SIMULTRAIN_EDGE_COMPUTE_THREADS": str(edge_threads),
                },
            )
            topology = start_topology(
                group, run, Path(tmp), steps=case.steps, edges=0, link_profile=link
            )
            edge.wait_for_line("WAITING", timeout_s=120)
            env = edge_environment(
                topology.coordinator_url,
                topology.edge_cloud_url,
                index=0,
                count=1,
                steps=case.steps,
                slowdown=slowdown,
            )
            env["SIMULTRAIN_EDGE_NAME"] = f"bench-{case.mode}"
            with fifo.open("w") as pipe:
                pipe.write(json.dumps(env) + "\n")
            # Bounded by the work: a run that stalls (a service gone, a lost session) fails
            # instead of holding the benchmark for the whole case timeout.
            budget_s = min(timeout_s, 120.0 + 3.0 * case.steps)
            recording = _follow(topology.cloud_url, edge, group, case, run, budget_s, on_progress)
            with httpx.Client(timeout=120) as client:
                status = _read(client, f"{topology.cloud_url}/v1/status", CloudStatus)
                before = time.monotonic()
                final = _read(client, f"{topology.cloud_url}/v1/eval", Evaluation)
                eval_cost_s = time.monotonic() - before
        finally:
            group.stop_all()
    assert recording.report is not None
    return _record(
        case,
        run,
        recording,
        status,
        final,
        eval_cost_s,
        slowdown=slowdown,
        wall_s=time.monotonic() - started,
    )


BodyT = TypeVar("BodyT", CloudStatus, Evaluation)


def _read(client: httpx.Client, url: str, contract: type[BodyT]) -> BodyT:
    response = client.get(url)
    response.raise_for_status()
    return contract.model_validate_json(response.content)


def _follow(
    cloud_url: str,
    edge: ServiceProcess,
    group: ServiceGroup,
    case: Case,
    run: RunConfig,
    timeout_s: float,
    on_progress: Callable[[int], None] | None,
) -> _Recording:
    """Poll the cloud until the edge prints ``DONE``; evaluate at even sample fractions."""
    recording = _Recording()
    total_samples = case.steps * run.batch_size
    thresholds = [total_samples * (k + 1) / (case.evals + 1) for k in range(case.evals)]
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=120) as client:
        while recording.report is None:
            if time.monotonic() > deadline:
                raise SimulTrainError(f"{case.case_id} did not finish within {timeout_s:.0f}s")
            try:
                line = edge.lines.get(timeout=0.1)
            except queue.Empty:
                line = ""
            if line is None:
                code = edge.popen.wait()
                raise SimulTrainError(f"{edge.name} exited with status {code}{edge._log_hint()}")
            if line.startswith("DONE "):
                recording.report = json.loads(line[5:])
                break
            for proc in group.processes:
                if proc is not edge and proc.popen.poll() is not None:
                    raise SimulTrainError(
                        f"{proc.name} exited with status {proc.popen.returncode} while "
                        f"{case.case_id} trained{proc._log_hint()}"
                    )
            try:
                status = _read(client, f"{cloud_url}/v1/status", CloudStatus)
            except httpx.HTTPError:
                continue
            recording.busy.append([time.monotonic(), status.busy_seconds])
            samples = status.samples_applied
            if on_progress is not None:
                on_progress(samples // run.batch_size)
            if thresholds and samples >= thresholds[0]:
                thresholds.pop(0)
                before = time.monotonic()
                result = _read(client, f"{cloud_url}/v1/eval", Evaluation)
                after = time.monotonic()
                recording.pauses.append([before, after])
                recording.evals.append((before, result))
    return recording


def _record(
    case: Case,
    run: RunConfig,
    recording: _Recording,
    status: CloudStatus,
    final: Evaluation,
    eval_cost_s: float,
    *,
    slowdown: float,
    wall_s: float,
) -> BenchRecord:
    """The case's record from what the benchmark saw, the cloud's last status and evaluation
    (docs/BENCH.md, "Metrics"). Long because the record is: one field a line."""
    report = dict(recording.report or {})
    timeline = report.pop("timeline")
    profile = parse_profile(case.link if case.link != LOOPBACK else "none")
    # The busy polls end before the edge's last ACK; close them with the final status.
    busy = [*recording.busy, [time.monotonic(), status.busy_seconds]]
    step = metrics.step_metrics(
        timeline,
        busy,
        uplink_rate_bps=profile.uplink.rate_bps,
        downlink_rate_bps=profile.downlink.rate_bps,
        rtt_s=profile.rtt_s,
        pauses=recording.pauses,
        eval_cost_s=eval_cost_s,
    )
    origin = timeline["batch_start"][0]
    acked_at = metrics.ack_times(timeline["batch_frame"], timeline["acks"])
    end = max(t for t in acked_at if t is not None)
    curve = [
        (
            round(metrics.training_time_s(t, origin, recording.pauses), 3),
            e.samples_applied,
            round(e.accuracy, 4),
            round(e.loss, 4),
        )
        for t, e in recording.evals
    ]
    train_s = metrics.training_time_s(end, origin, recording.pauses)
    curve.append(
        (round(train_s, 3), final.samples_applied, round(final.accuracy, 4), round(final.loss, 4))
    )
    staleness = status.staleness
    latencies = metrics.step_latencies_s(timeline["batch_start"], acked_at, step.window)
    # A bounded sample of per-step latencies for the distribution plots.
    stride = max(1, len(latencies) // 200)
    return BenchRecord.model_validate(
        {
            **_case_fields(case),
            "model_id": status.model_id,
            "steps": case.steps,
            **step.to_json(),
            "accuracy": round(final.accuracy, 4),
            "test_loss": round(final.loss, 4),
            "test_samples": final.samples,
            "samples": final.samples_applied,
            "max_staleness": staleness.max,
            "mean_staleness": staleness.mean,
            "p95_staleness": metrics.staleness_percentile(staleness.histogram, 0.95),
            "staleness_histogram": staleness.histogram,
            "stale_dropped": staleness.dropped,
            "master_version": status.master_version,
            "bytes_up_total": status.bytes_up,
            "bytes_down_total": status.bytes_down,
            "train_seconds": round(train_s, 3),
            "wall_seconds": round(wall_s, 2),
            "eval_seconds": round(eval_cost_s, 3),
            "accuracy_curve": curve,
            "latency_sample_ms": [round(v * 1e3, 2) for v in latencies[::stride]],
            "edge_slowdown": slowdown,
            "uplink_rate_bps": profile.uplink.rate_bps,
            "downlink_rate_bps": profile.downlink.rate_bps,
            "rtt_ms": round(profile.rtt_s * 1e3, 3),
            "run_config": run.to_mapping(),
            "window_size": run.schedule().window,
            "window_override": case.window,
            "credits": status.credits,
            "edge_report": EdgeReportSummary(
                steps=report.get("steps"),
                samples_sent=report.get("samples_sent"),
                reconnects=report.get("reconnects"),
                resyncs=report.get("resyncs"),
                reconciliations=report.get("reconciliations"),
                resent=report.get("resent"),
                checksum_failures=report.get("checksum_failures"),
                local_steps=report.get("local_steps"),
                compute_seconds=report.get("compute_seconds"),
                seconds=report.get("seconds"),
                errors=report.get("errors"),
            ),
        }
    )


# --------------------------------------------------------------------------------------
# The whole benchmark
# --------------------------------------------------------------------------------------


def _host() -> HostInfo:
    import torch

    commit: str | None = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    host = HostInfo(
        platform=platform.platform(),
        python=platform.python_version(),
        torch=torch.__version__,
        cpus=os.cpu_count(),
    )
    return host if commit is None else host.model_copy(update={"git_commit": commit})


BenchResult = BenchRecord | BenchFailure


@dataclass
class Bench(Experiment[Case, BenchResult]):
    """The plan's cases through the services: ``results.json`` after every case, then
    ``meta.json``, the report and the plots (``--append`` keeps the earlier records and meta)."""

    options: BenchOptions
    slowdown: float
    calibration: Calibration | None = None
    # Each case's progress in batches (the progress bar's); the cases run one at a time.
    on_progress: Callable[[int], None] | None = None
    earlier_meta: BenchMeta | None = None
    started: float = field(default_factory=time.monotonic)
    meta: BenchMeta = field(init=False)

    failures = (SimulTrainError, httpx.HTTPError, ValueError, KeyError)

    def __post_init__(self) -> None:
        plan = self.options.plan()
        self.meta = BenchMeta(
            command=self.options.command,
            started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            host=_host(),
            edge_slowdown=self.slowdown,
            edge_threads=self.options.edge_threads,
            calibration=self.calibration.as_dict() if self.calibration else None,
            plan=[suite.describe() for suite in plan],
            cases=sum(len(suite.cases()) for suite in plan),
        )

    @property
    def results_path(self) -> Path:
        return self.options.out_dir / "results.json"

    def cases(self) -> list[Case]:
        return [case for suite in self.options.plan() for case in suite.cases()]

    def run_one(self, case: Case) -> BenchResult:
        return run_case(
            case,
            slowdown=self.slowdown,
            edge_threads=self.options.edge_threads,
            log_dir=self.options.log_dir,
            timeout_s=self.options.case_timeout_s,
            on_progress=self.on_progress,
        )

    def failed(self, case: Case, exc: BaseException) -> BenchResult:
        return BenchFailure(**_case_fields(case), error=f"{type(exc).__name__}: {exc}")

    def describe(self, case: Case) -> str:
        return case.case_id

    def load(self) -> list[BenchResult]:
        meta_path = self.options.out_dir / "meta.json"
        if meta_path.exists():
            self.earlier_meta = BenchMeta.model_validate_json(meta_path.read_bytes())
        return BenchResults.read(self.results_path).records if self.results_path.exists() else []

    def save(self, records: Sequence[BenchResult]) -> None:
        BenchResults(records=list(records)).write(self.results_path)

    def finish(self, records: Sequence[BenchResult]) -> None:
        from simultrain.bench.report import write_report

        self.save(records)
        meta = self.meta.model_copy(update={"seconds": round(time.monotonic() - self.started, 1)})
        if self.earlier_meta is not None:
            # One meta for the whole results.json: the first run's, and each appended run.
            appended = [*(self.earlier_meta.appended or []), meta]
            meta = self.earlier_meta.model_copy(update={"appended": appended})
        self.meta = meta
        write_json(self.options.out_dir / "meta.json", meta.to_json())
        write_report(records, meta, self.options.out_dir, plots=self.options.plots)


def run_bench(
    options: BenchOptions, *, progress: Progress | None = None
) -> tuple[list[BenchResult], BenchMeta]:
    """Run every case of the plan; write ``results.json``, ``meta.json``, report, plots.

    ``results.json`` is rewritten after every case, so an interrupted run keeps what it did.
    """
    options.out_dir.mkdir(parents=True, exist_ok=True)
    calibration: Calibration | None = None
    slowdown = options.slowdown
    if slowdown is None:
        calibration = calibrate(threads=options.edge_threads)
        slowdown = round(calibration.slowdown, 2)
    bench = Bench(options, slowdown, calibration)
    with _Bar(bench) as bar:
        outcome = run(
            bench, earlier="append" if options.append else "replace", progress=progress or bar
        )
    return outcome.records, bench.meta


class _Bar:
    """The bench's progress on stderr: a bar over the cases, one over the current case's
    batches (the cloud's count, as the benchmark polls it)."""

    def __init__(self, bench: Bench) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(stderr=True)
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self.bench = bench
        self.cases = {case.case_id: case for case in bench.cases()}
        self.overall = self.bar.add_task("bench", total=len(self.cases), detail="")
        self.current = self.bar.add_task("case", total=1, detail="")

    def __enter__(self) -> _Bar:
        self.bar.start()
        self.bench.on_progress = self.tick
        return self

    def __exit__(self, *exc: object) -> None:
        self.bench.on_progress = None
        self.bar.stop()

    def tick(self, steps: int) -> None:
        total = self.bar.tasks[self.current].total
        self.bar.update(self.current, completed=min(steps, total or steps))

    def started(self, description: str, index: int, total: int) -> None:
        case = self.cases[description]
        self.bar.update(self.overall, total=total, detail=description)
        self.bar.reset(self.current, total=case.steps, description=case.mode, detail="")

    def finished(self, description: str, summary: str, index: int, total: int) -> None:
        self.bar.update(self.overall, completed=index)

    def failed(self, description: str, error: BaseException, index: int, total: int) -> None:
        self.console.print(f"[red]{description} failed:[/red] {error}")
        self.bar.update(self.overall, completed=index)


def _case_fields(case: Case) -> dict[str, Any]:
    return {
        "suite": case.suite,
        "case": case.case_id,
        "mode": case.mode,
        "link": case.link,
        "dataset": case.dataset,
        "seed": case.seed,
        "variant": case.variant,
        "steps": case.steps,
    }


def parse_list(text: str | None, *, known: Iterable[str] | None = None) -> tuple[str, ...] | None:
    """``"a,b"`` → ``("a", "b")``; checks names against ``known`` when given."""
    if text is None:
        return None
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    if known is not None:
        allowed = set(known)
        unknown = [item for item in items if item not in allowed]
        if unknown:
            raise SimulTrainError(f"unknown {unknown}; choose from {', '.join(sorted(allowed))}")
    return items
