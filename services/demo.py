"""``simultrain demo``: coordinator, cloud and edges as separate OS processes on 127.0.0.1.

Each service is started the way a user starts it on its own machine (``python -m
simultrain.<service>``, settings in the environment, port 0), the demo waits on each one's
``LISTENING`` line, shows a live progress bar from the cloud's ``/v1/status`` and
``/v1/eval``, and stops everything — on Ctrl-C too.
"""

from __future__ import annotations

import json
import queue
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from simultrain.procs import ServiceGroup, ServiceProcess
from simultrain.shared.contracts import CloudStatus, DemoSummary, Evaluation
from simultrain.shared.data import load_dataset
from simultrain.shared.errors import SimulTrainError
from simultrain.shared.training.config import RunConfig

__all__ = [
    "DemoOptions",
    "Topology",
    "edge_environment",
    "edge_processes",
    "run_demo",
    "start_topology",
]


@dataclass(frozen=True)
class DemoOptions:
    run: RunConfig = field(default_factory=RunConfig)
    steps: int = RunConfig.steps  # batches per edge
    edges: int = RunConfig.edges
    json_output: bool = False
    # Held-out evaluation while it trains (the progress bar's accuracy, the cloud's periodic
    # curve): every this many seconds; 0 evaluates once, at the end. Each evaluation runs the
    # whole test split (10 000 images on MNIST), so fleet studies on a shared machine turn it off.
    eval_every_s: float = 3.0
    log_dir: Path | None = None
    link_profile: str | None = None  # put netem between edges and cloud (4g, 5g, lan, …)
    edge_slowdown: float = 1.0
    timeout_s: float = 1800.0


def _coordinator_env(run: RunConfig, db_path: Path) -> dict[str, str]:
    env = {
        "SIMULTRAIN_COORDINATOR_HOST": "127.0.0.1",
        "SIMULTRAIN_COORDINATOR_PORT": "0",
        "SIMULTRAIN_COORDINATOR_DB_PATH": str(db_path),
        "SIMULTRAIN_COORDINATOR_LOG_LEVEL": "warning",
    }
    # Every run key is a coordinator variable, read back by its declared type ("" is null).
    for key, text in run.to_strings().items():
        env[f"SIMULTRAIN_COORDINATOR_{key.upper()}"] = text
    return env


def edge_processes(run: RunConfig, steps: int) -> tuple[int, int]:
    """How many edge processes a run of ``run.edges`` edges × ``steps`` batches starts, and
    the batches each trains: one per edge; a ``pooled`` run — the fleet's reference, all its
    data on one shuffled stream (docs/FLEET.md, "The yardstick") — one edge that streams the
    union of the fleet's shards for ``steps × edges`` batches, the fleet's number."""
    if run.pooled:
        return 1, steps * run.edges
    return run.edges, steps


def run_demo(options: DemoOptions, *, console: Console | None = None) -> DemoSummary:
    """Train through real services; return the summary (also printed)."""
    console = console or Console(stderr=options.json_output)
    started = time.perf_counter()
    run = RunConfig.from_mapping({"edges": options.edges}, base=options.run)
    # An impossible fleet is refused before any process starts (each edge would otherwise
    # fail on its own, after the coordinator and the cloud are up).
    load_dataset(run.dataset, seed=run.seed).check_shards(
        options.edges, partition=run.partition, batch_size=run.batch_size
    )
    with tempfile.TemporaryDirectory(prefix="simultrain-demo-") as tmp:
        log_dir = options.log_dir or Path(tmp) / "logs"
        group = ServiceGroup(log_dir)
        try:
            summary = _run(group, run, options, Path(tmp), console)
        finally:
            group.stop_all()
    summary = summary.model_copy(update={"seconds": round(time.perf_counter() - started, 2)})
    _print_summary(summary, console)
    if options.json_output:
        print(summary.model_dump_json(), flush=True)
    return summary


@dataclass(frozen=True)
class Topology:
    """The processes of one run, started and listening (docs/DESIGN.md §2)."""

    coordinator_url: str
    cloud_url: str  # http:// base URL of the cloud's API
    edge_cloud_url: str  # ws:// URL the edges stream to: the cloud, or netem in front of it
    edges: list[ServiceProcess]
    netem: ServiceProcess | None = None


def start_topology(
    group: ServiceGroup,
    run: RunConfig,
    state_dir: Path,
    *,
    steps: int,
    edges: int = 1,
    link_profile: str | None = None,
    edge_slowdown: float = 1.0,
    edge_module: str = "simultrain.edge",
    edge_env: Mapping[str, str] | None = None,
    cloud_env: Mapping[str, str] | None = None,
) -> Topology:
    """Coordinator, cloud, optional netem and ``edges`` edge processes, each waited on.

    The benchmark starts the same topology with its own edge entry point (``edge_module``)
    and extra settings; every process is added to ``group``, which stops them.
    """
    coordinator = group.start(
        "coordinator", "simultrain.coordinator", _coordinator_env(run, state_dir / "coordinator.db")
    )
    coordinator_url = coordinator.wait_listening()
    cloud = group.start(
        "cloud",
        "simultrain.cloud",
        {
            "SIMULTRAIN_CLOUD_HOST": "127.0.0.1",
            "SIMULTRAIN_CLOUD_PORT": "0",
            "SIMULTRAIN_CLOUD_COORDINATOR_URL": coordinator_url,
            "SIMULTRAIN_CLOUD_LOG_LEVEL": "warning",
            "SIMULTRAIN_CLOUD_HEARTBEAT_INTERVAL_S": "1",
            **(cloud_env or {}),
        },
    )
    cloud_url = cloud.wait_listening(timeout_s=120)
    edge_cloud_url = cloud_url.replace("http", "ws", 1)
    netem: ServiceProcess | None = None
    if link_profile:
        host, port = cloud_url.rsplit("//", 1)[1].rsplit(":", 1)
        netem = group.start(
            "netem",
            "simultrain.netem",
            {
                "SIMULTRAIN_NETEM_LISTEN_HOST": "127.0.0.1",
                "SIMULTRAIN_NETEM_LISTEN_PORT": "0",
                "SIMULTRAIN_NETEM_UPSTREAM_HOST": host,
                "SIMULTRAIN_NETEM_UPSTREAM_PORT": port,
                "SIMULTRAIN_NETEM_PROFILE": link_profile,
            },
        )
        edge_cloud_url = netem.wait_listening().replace("tcp", "ws", 1)
    started: list[ServiceProcess] = []
    for index in range(edges):
        env = edge_environment(
            coordinator_url,
            edge_cloud_url,
            index=index,
            count=edges,
            steps=steps,
            slowdown=edge_slowdown,
        )
        started.append(group.start(f"edge-{index}", edge_module, {**env, **(edge_env or {})}))
    return Topology(coordinator_url, cloud_url, edge_cloud_url, started, netem)


def edge_environment(
    coordinator_url: str,
    edge_cloud_url: str,
    *,
    index: int,
    count: int,
    steps: int,
    slowdown: float = 1.0,
) -> dict[str, str]:
    """The settings of edge ``index`` of ``count`` (``SIMULTRAIN_EDGE_*`` variables)."""
    return {
        "SIMULTRAIN_EDGE_COORDINATOR_URL": coordinator_url,
        "SIMULTRAIN_EDGE_CLOUD_URL_OVERRIDE": edge_cloud_url,
        "SIMULTRAIN_EDGE_SHARD_INDEX": str(index),
        "SIMULTRAIN_EDGE_SHARD_COUNT": str(count),
        "SIMULTRAIN_EDGE_STEPS": str(steps),
        "SIMULTRAIN_EDGE_NAME": f"demo-edge-{index}",
        "SIMULTRAIN_EDGE_LOG_LEVEL": "warning",
        "SIMULTRAIN_EDGE_SLOWDOWN": str(slowdown),
    }


def _run(
    group: ServiceGroup, run: RunConfig, options: DemoOptions, tmp: Path, console: Console
) -> DemoSummary:
    processes, steps = edge_processes(run, options.steps)
    with console.status("starting coordinator, cloud and edge processes…"):
        topology = start_topology(
            group,
            run,
            tmp,
            steps=steps,
            edges=processes,
            link_profile=options.link_profile,
            edge_slowdown=options.edge_slowdown,
            # 0 also turns off the cloud's own periodic evaluation (the dashboard's curve).
            cloud_env={"SIMULTRAIN_CLOUD_EVAL_INTERVAL_S": "0"}
            if options.eval_every_s <= 0
            else None,
        )
    cloud_url, edges = topology.cloud_url, topology.edges
    console.print(f"live dashboard: {topology.coordinator_url}/dashboard (while the run lasts)")
    reports = _follow(cloud_url, edges, run, options, console)
    with httpx.Client(timeout=60) as client:
        final = Evaluation.model_validate_json(client.get(f"{cloud_url}/v1/eval").content)
        status = CloudStatus.model_validate_json(client.get(f"{cloud_url}/v1/status").content)
    sessions = status.edges.values()
    schedule = run.schedule()
    return DemoSummary(
        mode=run.mode,
        dataset=run.dataset,
        model_id=status.model_id,
        edges=options.edges,
        steps=sum(r["steps"] for r in reports),
        samples=final.samples_applied,
        accuracy=round(final.accuracy, 4),
        test_loss=round(final.loss, 4),
        test_samples=final.samples,
        bytes_up=status.bytes_up,
        bytes_down=status.bytes_down,
        max_staleness=status.staleness.max,
        mean_staleness=status.staleness.mean,
        mean_staleness_samples=status.staleness.samples_mean,
        master_version=status.master_version,
        window=run.window,
        compensation=schedule.compensation,
        # The α that acted: the forecast part's (its own 0.5 when not given), else none.
        alpha=(schedule.alpha if schedule.alpha is not None else 0.5)
        if schedule.forecasts
        else None,
        beta=run.beta,
        reconcile_every=run.reconcile_every,
        seed=run.seed,
        link=options.link_profile or "loopback",
        samples_received=sum(s.samples_received for s in sessions),
        duplicates_dropped=sum(s.duplicates_dropped for s in sessions),
        reconnects=sum(r["reconnects"] for r in reports),
        seconds=0.0,  # run_demo's, once every process has stopped
        mixing=status.mixing,
        credits=status.credits,
        pacing=status.pacing,
        samples_per_s=status.samples_per_s,
    )


def _follow(
    cloud_url: str,
    edges: list[ServiceProcess],
    run: RunConfig,
    options: DemoOptions,
    console: Console,
) -> list[dict[str, Any]]:
    """Progress bar until every edge reports DONE; their reports."""
    total = options.steps * options.edges
    reports: list[dict[str, Any]] = []
    deadline = time.monotonic() + options.timeout_s
    accuracy: float | None = None
    last_eval = 0.0
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:>6.0f}/{task.total:.0f} steps"),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
    )
    with (
        Progress(*columns, console=console, transient=False) as progress,
        httpx.Client(timeout=30) as client,
    ):
        task = progress.add_task(f"{run.mode} on {run.dataset}", total=total, stats="")
        pending = list(edges)
        while pending:
            if time.monotonic() > deadline:
                raise SimulTrainError(f"the demo did not finish within {options.timeout_s:.0f}s")
            for edge in list(pending):
                try:
                    line = edge.lines.get(timeout=0.25)
                except queue.Empty:
                    continue
                if line is None:
                    raise SimulTrainError(
                        f"{edge.name} exited with status {edge.popen.wait()}{edge._log_hint()}"
                    )
                if line.startswith("DONE "):
                    reports.append(json.loads(line[5:]))
                    pending.remove(edge)
            try:
                status = CloudStatus.model_validate_json(
                    client.get(f"{cloud_url}/v1/status").content
                )
                if options.eval_every_s > 0 and time.monotonic() - last_eval > options.eval_every_s:
                    reply = client.get(f"{cloud_url}/v1/eval")
                    accuracy = Evaluation.model_validate_json(reply.content).accuracy
                    last_eval = time.monotonic()
            except httpx.HTTPError:
                continue
            steps = sum(s.steps_applied for s in status.edges.values())
            loss = status.loss
            stats = (
                (f"loss {loss:.3f} " if loss is not None else "")
                + (f"acc {accuracy:.1%} " if accuracy is not None else "")
                + (
                    f"staleness ≤{status.staleness.max} "
                    f"↑{status.bytes_up / 1e6:.1f} MB ↓{status.bytes_down / 1e6:.1f} MB"
                )
            )
            progress.update(task, completed=min(steps, total), stats=stats)
        progress.update(task, completed=total)
    return reports


def _print_summary(summary: DemoSummary, console: Console) -> None:
    table = Table(title="SimulTrain demo", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    rows = [
        ("mode / dataset / model", f"{summary.mode} / {summary.dataset} / {summary.model_id}"),
        ("edges, link", f"{summary.edges}, {summary.link}"),
        ("steps (batches), samples applied", f"{summary.steps}, {summary.samples}"),
        ("held-out accuracy", f"{summary.accuracy:.2%} on {summary.test_samples} samples"),
        ("held-out loss", f"{summary.test_loss:.4f}"),
        ("staleness (max / mean)", f"{summary.max_staleness} / {summary.mean_staleness}"),
        ("staleness in samples (mean)", f"{summary.mean_staleness_samples}"),
        ("bytes up / down", f"{summary.bytes_up / 1e6:.2f} MB / {summary.bytes_down / 1e6:.2f} MB"),
        (
            "compensation (α)",
            f"{summary.compensation}"
            + (f" (α {summary.alpha})" if summary.alpha is not None else ""),
        ),
        ("window, β, R", f"{summary.window}, {summary.beta}, {summary.reconcile_every}"),
        ("wall time", f"{summary.seconds:.1f} s"),
    ]
    for what, value in rows:
        table.add_row(what, value)
    console.print(table)
