"""``simultrain bench --suite control-plane``: the coordinator under a simulated fleet.

HTTP only, no training: the bench starts the coordinator as an operator would (real
processes on port 0 of 127.0.0.1, authentication on, the store on SQLite or on PostgreSQL
with one or more replicas) and plays a fleet against its documented API (PROTOCOL.md §9).
One *case* is one store, replica count and fleet size N. Its phases:

1. **enroll**: register ``clouds`` clouds, then enroll N edges from ``clients`` concurrent
   clients (each with its own ``enrollment_id``, so a retry after a lost reply is the same
   enrollment): enrollments/s, latency p50/p99, coordinator CPU per enrollment.
2. **edge heartbeats**: ``clients`` concurrent clients heartbeat random edges as fast as the
   coordinator answers, for ``burst_s``: heartbeats/s, p50/p99, CPU per heartbeat.
3. **cloud heartbeats**: every cloud heartbeats back to back, ``cloud_beats`` in all: the cost
   of one cloud heartbeat at this fleet size.
4. **steady**: the fleet as it lives. A ``streaming_share`` of each cloud's edges stream: their
   cloud reports the sessions in its heartbeats (data-plane liveness, docs/ARCHITECTURE.md)
   and they heartbeat at the long interval the coordinator states; the rest heartbeat at the
   interval the coordinator states for an edge that is not streaming. After a warm-up of one
   interval (every edge has been heard once) the window lasts ``steady_s``: requests/s,
   p50/p99, CPU per request, and **live edges falsely marked down** (the coordinators' own
   log lines ``edge … missed its heartbeats: down`` in the window: every simulated edge keeps
   to its schedule, so each such line is a false death).

CPU is read from ``/proc/<pid>/stat`` (user + system) of every coordinator process, and of
the PostgreSQL server's processes for the PostgreSQL cases. The load generator is this
process: one asyncio loop with httpx, sharing the machine's cores; its own CPU is reported.

``coordinator_tree``: run the coordinator from another checkout of this repository (the
bench keeps its own load generator), so one command measures before and after a change.

Results: ``control-plane.json`` (one record per case) and ``control-plane.md`` in ``--out``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import re
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from simultrain.procs import ServiceGroup
from simultrain.shared.errors import SimulTrainError

__all__ = [
    "BACKENDS",
    "CaseRecord",
    "ControlPlaneOptions",
    "PhaseStats",
    "control_plane_markdown",
    "run_control_plane",
    "run_control_plane_case",
]

# store → (store kind, coordinator replicas)
BACKENDS: dict[str, tuple[str, int]] = {
    "sqlite": ("sqlite", 1),
    "postgres-1": ("postgres", 1),
    "postgres-2": ("postgres", 2),
}
FULL_EDGE_COUNTS = (100, 1_000, 10_000)
ENROLLMENT_SECRET = "control-plane-bench-enrollment"
TOKEN_KEY = "control-plane-bench-token-key-0123456789abcdef"
ADMIN_TOKEN = "control-plane-bench-admin"
_FALSE_DOWN = re.compile(r"edge \S+ missed its heartbeats: down")
_CLOUD_DOWN = re.compile(r"cloud \S+ missed its heartbeats: down")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ControlPlaneOptions:
    out_dir: Path = Path("bench/results/control-plane")
    edge_counts: tuple[int, ...] = FULL_EDGE_COUNTS
    backends: tuple[str, ...] = ("sqlite", "postgres-1", "postgres-2")
    clouds: int = 4
    clients: int = 32
    burst_s: float = 15.0
    cloud_beats: int = 400
    steady_s: float = 60.0
    streaming_share: float = 0.5
    coordinator_tree: Path | None = None
    label: str = ""
    log_dir: Path | None = None
    command: str = ""
    seed: int = 0
    loadgen_nice: int = 10

    def __post_init__(self) -> None:
        if not self.edge_counts or min(self.edge_counts) < 1:
            raise SimulTrainError(f"fleet sizes must be ≥ 1, got {list(self.edge_counts)}")
        unknown = sorted(set(self.backends) - set(BACKENDS))
        if unknown or not self.backends:
            raise SimulTrainError(f"unknown stores {unknown}: choose from {sorted(BACKENDS)}")
        if self.clouds < 1 or self.clients < 1 or self.cloud_beats < 0:
            raise SimulTrainError("clouds and clients must be ≥ 1, cloud beats ≥ 0")
        if self.burst_s < 0 or self.steady_s < 0 or not 0 <= self.streaming_share <= 1:
            raise SimulTrainError("durations must be ≥ 0 and the streaming share in [0, 1]")


@dataclass(frozen=True)
class PhaseStats:
    """One phase: how many requests, how fast, what they cost the coordinator."""

    requests: int
    seconds: float
    per_s: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    cpu_ms_per_request: float | None
    db_cpu_ms_per_request: float | None = None


@dataclass(frozen=True)
class SteadyStats:
    stats: PhaseStats
    edge_heartbeats: int
    cloud_heartbeats: int
    interval_s: float
    streaming_interval_s: float | None
    timeout_s: float
    streaming_edges: int
    warmup_s: float
    late_p99_ms: float | None  # how late the load generator sent a heartbeat (its own lag)
    false_down: int
    clouds_down: int
    edges_up_at_end: int | None


@dataclass(frozen=True)
class CaseRecord:
    label: str
    backend: str
    replicas: int
    edges: int
    clouds: int
    clients: int
    enroll: PhaseStats
    edge_heartbeat: PhaseStats | None
    cloud_heartbeat: PhaseStats | None
    steady: SteadyStats | None
    enrolled_once: bool
    loadgen_cpu_s: float
    error: str | None = None


# --- processes ------------------------------------------------------------------------------


def _cpu_seconds(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _CLK_TCK


def _source_root(tree: Path, into: Path) -> Path:
    """A directory whose ``simultrain`` package maps onto ``tree`` (as the install does)."""
    package = into / "simultrain"
    package.mkdir(parents=True)
    for entry in (tree / "services").iterdir():
        (package / entry.name).symlink_to(entry.resolve())
    (package / "shared").symlink_to((tree / "shared").resolve())
    return into


@dataclass(frozen=True)
class _Backend:
    """What the load generator knows of a case's coordinators and store (picklable: it runs
    in a process of its own)."""

    urls: tuple[str, ...]
    coordinator_pids: tuple[int, ...]
    log_paths: tuple[Path, ...]
    postgres_data: Path | None = None

    def coordinator_cpu(self) -> float:
        return _cpu_seconds(self.coordinator_pids)

    def db_cpu(self) -> float:
        if self.postgres_data is None:
            return 0.0
        from simultrain.bench.pgserver import postgres_pids

        return _cpu_seconds(postgres_pids(self.postgres_data))

    def log_sizes(self) -> list[int]:
        return [path.stat().st_size if path.exists() else 0 for path in self.log_paths]

    def log_since(self, offsets: Sequence[int]) -> str:
        text = []
        for path, offset in zip(self.log_paths, offsets, strict=True):
            if path.exists():
                with path.open("rb") as log:
                    log.seek(offset)
                    text.append(log.read().decode(errors="replace"))
        return "\n".join(text)


@contextlib.contextmanager
def _start_backend(
    kind: str, replicas: int, options: ControlPlaneOptions, work: Path
) -> Iterator[_Backend]:
    env = {
        "SIMULTRAIN_COORDINATOR_HOST": "127.0.0.1",
        "SIMULTRAIN_COORDINATOR_PORT": "0",
        "SIMULTRAIN_COORDINATOR_LOG_LEVEL": "warning",
        "SIMULTRAIN_COORDINATOR_ENROLLMENT_SECRET": ENROLLMENT_SECRET,
        "SIMULTRAIN_COORDINATOR_TOKEN_KEY": TOKEN_KEY,
        "SIMULTRAIN_COORDINATOR_ADMIN_TOKEN": ADMIN_TOKEN,
    }
    if options.coordinator_tree is not None:
        env["PYTHONPATH"] = str(_source_root(options.coordinator_tree, work / "source"))
    log_dir = options.log_dir or work / "logs"
    group = ServiceGroup(log_dir)
    with contextlib.ExitStack() as stack:
        data_dir = None
        if kind == "sqlite":
            env["SIMULTRAIN_COORDINATOR_DB_PATH"] = str(work / "coordinator.db")
        else:
            from simultrain.bench.pgserver import TemporaryPostgres

            server = stack.enter_context(TemporaryPostgres(fsync=True))
            env["SIMULTRAIN_COORDINATOR_DATABASE_URL"] = server.create_database("coordinator")
            data_dir = server.data_dir
        stack.callback(group.stop_all)
        processes = [
            group.start(f"coordinator-{i}-{kind}", "simultrain.coordinator", env)
            for i in range(replicas)
        ]
        urls = tuple(p.wait_listening(timeout_s=120) for p in processes)
        yield _Backend(
            urls=urls,
            coordinator_pids=tuple(p.popen.pid for p in processes),
            log_paths=tuple(log_dir / f"{p.name}.log" for p in processes),
            postgres_data=data_dir,
        )


# --- the simulated fleet --------------------------------------------------------------------


@dataclass
class _Edge:
    edge_id: str
    token: str | None
    cloud_id: str
    interval_s: float
    timeout_s: float
    streaming_interval_s: float | None
    streaming: bool = False


@dataclass
class _Cloud:
    cloud_id: str
    interval_s: float
    streaming: list[str] = field(default_factory=list)


@dataclass
class _Recorder:
    """Latencies and errors of one phase, with the coordinator's CPU around it."""

    backend: _Backend
    latencies: list[float] = field(default_factory=list)
    finished_at: list[float] = field(default_factory=list)
    errors: int = 0
    started: float = 0.0
    cpu0: float = 0.0
    db_cpu0: float = 0.0

    def start(self) -> _Recorder:
        self.started = time.perf_counter()
        self.cpu0 = self.backend.coordinator_cpu()
        self.db_cpu0 = self.backend.db_cpu()
        return self

    def ok(self, latency: float) -> None:
        self.latencies.append(latency)
        self.finished_at.append(time.perf_counter())

    def stats(self, requests: int | None = None) -> PhaseStats:
        seconds = time.perf_counter() - self.started
        cpu = self.backend.coordinator_cpu() - self.cpu0
        db_cpu = self.backend.db_cpu() - self.db_cpu0
        count = len(self.latencies) if requests is None else requests
        ms = sorted(x * 1000 for x in self.latencies)
        return PhaseStats(
            requests=count,
            seconds=round(seconds, 2),
            per_s=round(count / seconds, 1) if seconds > 0 else 0.0,
            p50_ms=_quantile(ms, 0.50),
            p99_ms=_quantile(ms, 0.99),
            errors=self.errors,
            cpu_ms_per_request=round(1000 * cpu / count, 3) if count else None,
            db_cpu_ms_per_request=round(1000 * db_cpu / count, 3) if count and db_cpu else None,
        )


def _quantile(sorted_ms: Sequence[float], q: float) -> float | None:
    if not sorted_ms:
        return None
    index = min(len(sorted_ms) - 1, round(q * (len(sorted_ms) - 1)))
    return round(sorted_ms[index], 2)


class _Fleet:
    """httpx clients, one per coordinator replica, used in turn."""

    def __init__(self, urls: Sequence[str], clients: int) -> None:
        limits = httpx.Limits(max_connections=clients + 16, max_keepalive_connections=clients + 16)
        self.clients = [
            httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) for url in urls
        ]
        self._turn = 0

    def next(self) -> httpx.AsyncClient:
        self._turn += 1
        return self.clients[self._turn % len(self.clients)]

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


async def _register_clouds(fleet: _Fleet, count: int) -> list[_Cloud]:
    clouds = []
    for i in range(count):
        reply = await fleet.next().post(
            "/v1/clouds",
            json={"url": f"ws://cloud-{i}.bench.invalid:8000"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        reply.raise_for_status()
        body = reply.json()
        clouds.append(_Cloud(body["cloud_id"], float(body["heartbeat_interval_s"])))
    return clouds


async def _enroll(
    fleet: _Fleet, count: int, clients: int, recorder: _Recorder, *, attempts: int = 30
) -> list[_Edge]:
    """N enrollments from ``clients`` concurrent clients; a failed one is retried with the
    same ``enrollment_id`` (on the next replica), so each simulated edge enrolls once."""
    edges: list[_Edge | None] = [None] * count
    todo = iter(range(count))
    headers = {"X-Enrollment-Secret": ENROLLMENT_SECRET}

    async def one(index: int) -> None:
        body = {"name": f"sim-{index}", "enrollment_id": f"bench-{secrets.token_hex(8)}"}
        for attempt in range(attempts):
            client = fleet.next()
            started = time.perf_counter()
            try:
                reply = await client.post("/v1/edges", json=body, headers=headers)
            except httpx.TransportError:
                recorder.errors += 1
                await asyncio.sleep(0.05 * (attempt + 1))
                continue
            if reply.status_code != 201:
                recorder.errors += 1
                await asyncio.sleep(0.05 * (attempt + 1))
                continue
            recorder.ok(time.perf_counter() - started)
            data = reply.json()
            edges[index] = _Edge(
                edge_id=data["edge_id"],
                token=data.get("token"),
                cloud_id=data["cloud_id"],
                interval_s=float(data["heartbeat_interval_s"]),
                timeout_s=float(data["heartbeat_timeout_s"]),
                streaming_interval_s=data.get("streaming_heartbeat_interval_s"),
            )
            return
        raise SimulTrainError(f"edge {index} could not enroll in {attempts} attempts")

    async def worker() -> None:
        for index in todo:
            await one(index)

    await asyncio.gather(*(worker() for _ in range(clients)))
    return [edge for edge in edges if edge is not None]


async def _heartbeat(fleet: _Fleet, edge: _Edge) -> dict[str, Any] | None:
    headers = {"Authorization": f"Bearer {edge.token}"} if edge.token else {}
    try:
        reply = await fleet.next().post(
            f"/v1/edges/{edge.edge_id}/heartbeat",
            json={"edge_version": 1, "step": 1},
            headers=headers,
        )
    except httpx.TransportError:
        return None
    if reply.status_code != 200:
        return None
    data: dict[str, Any] = reply.json()
    return data


async def _burst(
    fleet: _Fleet, edges: Sequence[_Edge], clients: int, seconds: float, recorder: _Recorder
) -> None:
    deadline = time.perf_counter() + seconds
    rng = random.Random(1)

    async def worker() -> None:
        while time.perf_counter() < deadline:
            edge = edges[rng.randrange(len(edges))]
            started = time.perf_counter()
            if await _heartbeat(fleet, edge) is None:
                recorder.errors += 1
            else:
                recorder.ok(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(clients)))


def _cloud_body(master_version: int, opened: Sequence[str] = ()) -> dict[str, Any]:
    # What the cloud sends (services/cloud/coordinator_client.py): session changes since its
    # last heartbeat, no list of its assigned edges. An older coordinator ignores both.
    return {
        "master_version": master_version,
        "session_changes": {"opened": list(opened), "closed": []},
        "list_assigned_edges": False,
    }


async def _cloud_burst(
    fleet: _Fleet, clouds: Sequence[_Cloud], beats: int, recorder: _Recorder
) -> None:
    per_cloud = max(1, beats // len(clouds))
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def cloud_loop(cloud: _Cloud) -> None:
        for version in range(per_cloud):
            started = time.perf_counter()
            try:
                reply = await fleet.next().post(
                    f"/v1/clouds/{cloud.cloud_id}/heartbeat",
                    json=_cloud_body(version),
                    headers=admin,
                )
                reply.raise_for_status()
            except httpx.HTTPError:
                recorder.errors += 1
                continue
            recorder.ok(time.perf_counter() - started)

    await asyncio.gather(*(cloud_loop(c) for c in clouds))


async def _steady(
    fleet: _Fleet,
    backend: _Backend,
    edges: Sequence[_Edge],
    clouds: Sequence[_Cloud],
    options: ControlPlaneOptions,
) -> SteadyStats:
    """The fleet on its schedule; false deaths counted after a warm-up of one interval."""
    by_cloud = {cloud.cloud_id: cloud for cloud in clouds}
    for cloud in clouds:
        mine = [e for e in edges if e.cloud_id == cloud.cloud_id]
        for edge in mine[: round(len(mine) * options.streaming_share)]:
            edge.streaming = True
            cloud.streaming.append(edge.edge_id)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    gate = asyncio.Semaphore(options.clients)
    edge_recorder = _Recorder(backend)
    cloud_recorder = _Recorder(backend)
    late: list[float] = []
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def pause(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    async def live_edge(edge: _Edge, first_s: float) -> None:
        await pause(first_s)
        while not stop.is_set():
            due = loop.time()
            async with gate:
                late.append(loop.time() - due)
                started = time.perf_counter()
                reply = await _heartbeat(fleet, edge)
            if reply is None:
                edge_recorder.errors += 1
            else:
                edge_recorder.ok(time.perf_counter() - started)
                edge.interval_s = float(reply.get("heartbeat_interval_s", edge.interval_s))
                edge.timeout_s = float(reply.get("heartbeat_timeout_s", edge.timeout_s))
                stated = reply.get("streaming_heartbeat_interval_s")
                edge.streaming_interval_s = None if stated is None else float(stated)
            interval = edge.interval_s
            if edge.streaming and edge.streaming_interval_s is not None:
                interval = edge.streaming_interval_s
            await pause(interval)

    async def live_cloud(cloud: _Cloud) -> None:
        version = 0
        opened: Sequence[str] = cloud.streaming
        while not stop.is_set():
            version += 1
            started = time.perf_counter()
            try:
                reply = await fleet.next().post(
                    f"/v1/clouds/{cloud.cloud_id}/heartbeat",
                    json=_cloud_body(version, opened),
                    headers=admin,
                )
                reply.raise_for_status()
                # The coordinator lost this cloud's sessions (it had marked it down): all again.
                wanted = reply.json().get("sessions_snapshot_wanted")
                opened = cloud.streaming if wanted else ()
                cloud_recorder.ok(time.perf_counter() - started)
            except httpx.HTTPError:
                cloud_recorder.errors += 1
            await pause(cloud.interval_s)

    rng = random.Random(options.seed)
    first_spread = max(e.interval_s for e in edges)
    tasks = [asyncio.create_task(live_cloud(c)) for c in clouds]
    for edge in edges:
        spread = edge.interval_s
        if edge.streaming and edge.streaming_interval_s is not None:
            spread = edge.streaming_interval_s
        tasks.append(asyncio.create_task(live_edge(edge, rng.uniform(0, spread))))
    sweep_s = max(c.interval_s for c in by_cloud.values())
    warmup = first_spread + 2 * sweep_s
    await asyncio.sleep(warmup)
    offsets = backend.log_sizes()
    for recorder in (edge_recorder, cloud_recorder):
        recorder.start()
    late.clear()
    await asyncio.sleep(options.steady_s)
    edge_stats = edge_recorder.stats()
    cloud_stats = cloud_recorder.stats()
    logged = backend.log_since(offsets)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    edges_up = None
    with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
        edges_up = int((await fleet.next().get("/readyz")).json()["edges_up"])
    # One figure for the window: every request (edge and cloud heartbeats) and its cost.
    requests = edge_stats.requests + cloud_stats.requests
    seconds = edge_stats.seconds
    cpu_total = (edge_stats.cpu_ms_per_request or 0) * edge_stats.requests
    db_total = (edge_stats.db_cpu_ms_per_request or 0) * edge_stats.requests
    merged = sorted([*edge_recorder.latencies, *cloud_recorder.latencies])
    ms = [x * 1000 for x in merged]
    stats = PhaseStats(
        requests=requests,
        seconds=seconds,
        per_s=round(requests / seconds, 1) if seconds else 0.0,
        p50_ms=_quantile(ms, 0.5),
        p99_ms=_quantile(ms, 0.99),
        errors=edge_stats.errors + cloud_stats.errors,
        cpu_ms_per_request=round(cpu_total / requests, 3) if requests else None,
        db_cpu_ms_per_request=round(db_total / requests, 3) if requests and db_total else None,
    )
    stream_intervals = [e.streaming_interval_s for e in edges if e.streaming_interval_s]
    return SteadyStats(
        stats=stats,
        edge_heartbeats=edge_stats.requests,
        cloud_heartbeats=cloud_stats.requests,
        interval_s=max(e.interval_s for e in edges),
        streaming_interval_s=max(stream_intervals) if stream_intervals else None,
        timeout_s=max(e.timeout_s for e in edges),
        streaming_edges=sum(e.streaming for e in edges),
        warmup_s=round(warmup, 1),
        late_p99_ms=_quantile(sorted(x * 1000 for x in late), 0.99),
        false_down=len(_FALSE_DOWN.findall(logged)),
        clouds_down=len(_CLOUD_DOWN.findall(logged)),
        edges_up_at_end=edges_up,
    )


async def _play(
    backend_name: str, backend: _Backend, edges_wanted: int, options: ControlPlaneOptions
) -> CaseRecord:
    fleet = _Fleet(backend.urls, options.clients)
    loadgen0 = time.process_time()
    try:
        clouds = await _register_clouds(fleet, options.clouds)
        enroll = _Recorder(backend).start()
        edges = await _enroll(fleet, edges_wanted, options.clients, enroll)
        enroll_stats = enroll.stats()
        listed = (await fleet.next().get("/v1/edges")).json()
        enrolled_once = len(listed) == edges_wanted == len({e["edge_id"] for e in listed})
        burst = None
        if options.burst_s > 0:
            recorder = _Recorder(backend).start()
            await _burst(fleet, edges, options.clients, options.burst_s, recorder)
            burst = recorder.stats()
        cloud_stats = None
        if options.cloud_beats > 0:
            recorder = _Recorder(backend).start()
            await _cloud_burst(fleet, clouds, options.cloud_beats, recorder)
            cloud_stats = recorder.stats()
        steady = None
        if options.steady_s > 0:
            steady = await _steady(fleet, backend, edges, clouds, options)
    finally:
        await fleet.aclose()
    return CaseRecord(
        label=options.label,
        backend=backend_name,
        replicas=len(backend.urls),
        edges=edges_wanted,
        clouds=options.clouds,
        clients=options.clients,
        enroll=enroll_stats,
        edge_heartbeat=burst,
        cloud_heartbeat=cloud_stats,
        steady=steady,
        enrolled_once=enrolled_once,
        loadgen_cpu_s=round(time.process_time() - loadgen0, 2),
    )


def run_control_plane_case(
    backend_name: str, edges: int, options: ControlPlaneOptions
) -> CaseRecord:
    """One store, replica count and fleet size, from start to a stopped coordinator."""
    kind, replicas = BACKENDS[backend_name]
    # The load generator runs in a process of its own at a lower priority, so on a machine
    # it shares with the coordinator, the coordinator's cores come first.
    with (
        tempfile.TemporaryDirectory(prefix="simultrain-control-plane-") as tmp,
        _start_backend(kind, replicas, options, Path(tmp)) as backend,
        ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=os.nice,
            initargs=(options.loadgen_nice,),
        ) as pool,
    ):
        return pool.submit(_play_in_process, backend_name, backend, edges, options).result()


def _play_in_process(
    backend_name: str, backend: _Backend, edges: int, options: ControlPlaneOptions
) -> CaseRecord:
    return asyncio.run(_play(backend_name, backend, edges, options))


def run_control_plane(
    options: ControlPlaneOptions, *, progress: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Every store × fleet size in turn; the results are rewritten after each case."""
    options.out_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for backend_name in options.backends:
        for edges in options.edge_counts:
            progress(f"control plane: {backend_name}, {edges} edges …")
            try:
                record = asdict(run_control_plane_case(backend_name, edges, options))
            except (
                SimulTrainError,
                httpx.HTTPError,
                OSError,
                subprocess.SubprocessError,
                BrokenProcessPool,
            ) as exc:
                record = {
                    "label": options.label,
                    "backend": backend_name,
                    "edges": edges,
                    "error": f"{type(exc).__name__}: {exc}",
                }
            records.append(record)
            progress(_one_line(record))
            _write(records, options)
    return records


def _write(records: list[dict[str, Any]], options: ControlPlaneOptions) -> None:
    meta = {
        "command": options.command,
        "label": options.label,
        "cpus": os.cpu_count(),
        "clients": options.clients,
        "clouds": options.clouds,
        "burst_s": options.burst_s,
        "steady_s": options.steady_s,
        "streaming_share": options.streaming_share,
        "coordinator_tree": str(options.coordinator_tree) if options.coordinator_tree else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    (options.out_dir / "control-plane.json").write_text(
        json.dumps({"meta": meta, "records": records}, indent=1) + "\n"
    )
    (options.out_dir / "control-plane.md").write_text(control_plane_markdown(records, meta))


def _one_line(record: dict[str, Any]) -> str:
    if record.get("error"):
        return f"  {record['backend']} N={record['edges']}: error: {record['error']}"
    enroll, beat = record["enroll"], record.get("edge_heartbeat") or {}
    steady = record.get("steady") or {}
    return (
        f"  {record['backend']} N={record['edges']}: enroll {enroll['per_s']}/s "
        f"({enroll['cpu_ms_per_request']} ms CPU), heartbeats {beat.get('per_s')}/s "
        f"p50/p99 {beat.get('p50_ms')}/{beat.get('p99_ms')} ms "
        f"({beat.get('cpu_ms_per_request')} ms CPU); steady false down "
        f"{steady.get('false_down')}"
    )


def _fmt(value: object, suffix: str = "") -> str:
    return "–" if value is None else f"{value}{suffix}"


def control_plane_markdown(records: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Control-plane load test: one simulated fleet against the coordinator",
        "",
        f"Command: `{meta.get('command') or 'simultrain bench --suite control-plane'}` "
        f"({meta.get('cpus')} CPUs shared with the load generator; {meta.get('clients')} "
        f"concurrent clients, {meta.get('clouds')} clouds, heartbeat burst "
        f"{meta.get('burst_s')} s, steady window {meta.get('steady_s')} s, "
        f"{meta.get('streaming_share')} of the edges streaming).",
        "",
        "CPU is the coordinator processes' user + system time per request (for PostgreSQL, "
        "the database server's after the slash).",
        "",
        "| label | store | edges | enrollments/s | enroll p50 / p99 ms | enroll CPU ms "
        "| heartbeats/s | heartbeat p50 / p99 ms | heartbeat CPU ms | cloud heartbeat CPU ms "
        "| steady req/s | steady p50 / p99 ms | steady CPU ms | intervals s (idle / streaming) "
        "| false down | enrolled once |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if r.get("error"):
            lines.append(
                f"| {r.get('label', '')} | {r['backend']} | {r['edges']} | error: {r['error']} "
                "| | | | | | | | | | | | |"
            )
            continue
        enroll, beat = r["enroll"], r.get("edge_heartbeat") or {}
        cloud, steady = r.get("cloud_heartbeat") or {}, r.get("steady") or {}
        stats = steady.get("stats") or {}

        def cpu(phase: dict[str, Any]) -> str:
            text = _fmt(phase.get("cpu_ms_per_request"))
            if phase.get("db_cpu_ms_per_request") is not None:
                text += f" / {phase['db_cpu_ms_per_request']}"
            return text

        lines.append(
            f"| {r.get('label', '')} | {r['backend']} | {r['edges']} | {enroll['per_s']} "
            f"| {_fmt(enroll['p50_ms'])} / {_fmt(enroll['p99_ms'])} | {cpu(enroll)} "
            f"| {_fmt(beat.get('per_s'))} | {_fmt(beat.get('p50_ms'))} / "
            f"{_fmt(beat.get('p99_ms'))} | {cpu(beat)} | {cpu(cloud)} "
            f"| {_fmt(stats.get('per_s'))} | {_fmt(stats.get('p50_ms'))} / "
            f"{_fmt(stats.get('p99_ms'))} | {cpu(stats)} "
            f"| {_fmt(steady.get('interval_s'))} / {_fmt(steady.get('streaming_interval_s'))} "
            f"| {_fmt(steady.get('false_down'))} | {r['enrolled_once']} |"
        )
    return "\n".join(lines) + "\n"
