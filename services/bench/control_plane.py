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
import multiprocessing
import os
import random
import re
import secrets
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from simultrain.bench.harness import Experiment, SuiteOptions
from simultrain.bench.records import (
    ControlPlaneFailover as FailoverStats,
)
from simultrain.bench.records import (
    ControlPlaneFailure,
    ControlPlaneFile,
    ControlPlaneMeta,
    ControlPlaneRecord,
)
from simultrain.bench.records import (
    ControlPlanePhase as PhaseStats,
)
from simultrain.bench.records import (
    ControlPlaneSteady as SteadyStats,
)
from simultrain.procs import ServiceGroup
from simultrain.shared.errors import SimulTrainError

__all__ = [
    "BACKENDS",
    "ControlPlaneOptions",
    "ControlPlaneSuite",
    "control_plane_markdown",
    "control_plane_suite",
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
    failover_limit_s: float = 180.0

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
    """A simulated cloud: it heartbeats from registration to the end of the case and reports
    the sessions it holds as the real one does (services/cloud/coordinator_client.py)."""

    cloud_id: str
    interval_s: float
    timeout_s: float
    sessions: set[str] = field(default_factory=set)
    reported: set[str] | None = None  # acknowledged by the coordinator; None: it holds none
    alive: bool = True
    version: int = 0

    def body(self) -> dict[str, Any]:
        reported = self.reported or set()
        self.version += 1
        return {
            "master_version": self.version,
            "session_changes": {
                "opened": sorted(self.sessions - reported),
                "closed": sorted(reported - self.sessions),
            },
            "list_assigned_edges": False,
        }


@dataclass
class _Recorder:
    """Latencies and errors of one phase, with the coordinator's CPU around it."""

    backend: _Backend
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    started: float = 0.0
    cpu0: float = 0.0
    db_cpu0: float = 0.0
    active: bool = True

    def start(self) -> _Recorder:
        self.latencies.clear()
        self.errors = 0
        self.started = time.perf_counter()
        self.cpu0 = self.backend.coordinator_cpu()
        self.db_cpu0 = self.backend.db_cpu()
        self.active = True
        return self

    def ok(self, latency: float) -> None:
        if self.active:
            self.latencies.append(latency)

    def failed(self) -> None:
        if self.active:
            self.errors += 1

    def stats(self, extra: _Recorder | None = None) -> PhaseStats:
        """This phase (and ``extra``, recorded over the same span) in one figure."""
        seconds = time.perf_counter() - self.started
        cpu = self.backend.coordinator_cpu() - self.cpu0
        db_cpu = self.backend.db_cpu() - self.db_cpu0
        latencies = [*self.latencies, *(extra.latencies if extra else [])]
        errors = self.errors + (extra.errors if extra else 0)
        count = len(latencies)
        ms = sorted(x * 1000 for x in latencies)
        return PhaseStats(
            requests=count,
            seconds=round(seconds, 2),
            per_s=round(count / seconds, 1) if seconds > 0 else 0.0,
            p50_ms=_quantile(ms, 0.50),
            p99_ms=_quantile(ms, 0.99),
            errors=errors,
            cpu_ms_per_request=round(1000 * cpu / count, 3) if count else None,
            db_cpu_ms_per_request=round(1000 * db_cpu / count, 3) if count and db_cpu else None,
        )


def _quantile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))
    return round(sorted_values[index], 2)


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


_ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def _register_clouds(fleet: _Fleet, count: int) -> list[_Cloud]:
    clouds = []
    for i in range(count):
        reply = await fleet.next().post(
            "/v1/clouds", json={"url": f"ws://cloud-{i}.bench.invalid:8000"}, headers=_ADMIN
        )
        reply.raise_for_status()
        body = reply.json()
        clouds.append(
            _Cloud(
                body["cloud_id"],
                float(body["heartbeat_interval_s"]),
                float(body["heartbeat_timeout_s"]),
            )
        )
    return clouds


async def _cloud_beat(fleet: _Fleet, cloud: _Cloud, recorder: _Recorder | None) -> None:
    body = cloud.body()
    sent = set(cloud.sessions)
    started = time.perf_counter()
    try:
        reply = await fleet.next().post(
            f"/v1/clouds/{cloud.cloud_id}/heartbeat", json=body, headers=_ADMIN
        )
        reply.raise_for_status()
        # The coordinator dropped this cloud's sessions (it had marked it down): all again.
        cloud.reported = None if reply.json().get("sessions_snapshot_wanted") else sent
    except httpx.HTTPError:
        if recorder is not None:
            recorder.failed()
        return
    if recorder is not None:
        recorder.ok(time.perf_counter() - started)


async def _keep_alive(
    fleet: _Fleet, cloud: _Cloud, recorder: _Recorder, stop: asyncio.Event
) -> None:
    """A cloud's heartbeat loop, for the whole case (until killed or stopped)."""
    while cloud.alive and not stop.is_set():
        await _cloud_beat(fleet, cloud, recorder)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), cloud.interval_s)


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
        last = ""
        for attempt in range(attempts):
            started = time.perf_counter()
            try:
                reply = await fleet.next().post("/v1/edges", json=body, headers=headers)
            except httpx.TransportError as exc:
                reply, last = None, f"{type(exc).__name__}: {exc}"
            if reply is None or reply.status_code != 201:
                if reply is not None:
                    last = f"{reply.status_code} {reply.text[:200]}"
                recorder.failed()
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
        raise SimulTrainError(f"edge {index} could not enroll in {attempts} attempts: {last}")

    async def worker() -> None:
        for index in todo:
            await one(index)

    await asyncio.gather(*(worker() for _ in range(clients)))
    return [edge for edge in edges if edge is not None]


async def _heartbeat(fleet: _Fleet, edge: _Edge) -> dict[str, Any] | None:
    """One heartbeat as the agent sends it; the edge takes the cadence and cloud it is told."""
    headers = {"Authorization": f"Bearer {edge.token}"} if edge.token else {}
    try:
        reply = await fleet.next().post(
            f"/v1/edges/{edge.edge_id}/heartbeat",
            json={"edge_version": 1, "step": 1, "streaming": edge.streaming},
            headers=headers,
        )
    except httpx.TransportError:
        return None
    if reply.status_code != 200:
        return None
    data: dict[str, Any] = reply.json()
    edge.cloud_id = str(data.get("cloud_id", edge.cloud_id))
    edge.interval_s = float(data.get("heartbeat_interval_s", edge.interval_s))
    edge.timeout_s = float(data.get("heartbeat_timeout_s", edge.timeout_s))
    stated = data.get("streaming_heartbeat_interval_s")
    edge.streaming_interval_s = None if stated is None else float(stated)
    return data


def _next_interval(edge: _Edge) -> float:
    if edge.streaming and edge.streaming_interval_s is not None:
        return max(edge.interval_s, edge.streaming_interval_s)
    return edge.interval_s


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
                recorder.failed()
            else:
                recorder.ok(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(clients)))


async def _cloud_burst(
    fleet: _Fleet, clouds: Sequence[_Cloud], beats: int, recorder: _Recorder
) -> None:
    per_cloud = max(1, beats // len(clouds))

    async def beat_on(cloud: _Cloud) -> None:
        for _ in range(per_cloud):
            await _cloud_beat(fleet, cloud, recorder)

    await asyncio.gather(*(beat_on(c) for c in clouds))


@dataclass
class _Live:
    """The steady fleet: each edge on its own schedule, each cloud on its loop."""

    fleet: _Fleet
    edges: Sequence[_Edge]
    clients: int
    recorder: _Recorder
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    late: list[float] = field(default_factory=list)
    moved_at: dict[str, float] = field(default_factory=dict)
    wakes: dict[str, asyncio.Event] = field(default_factory=dict)

    async def run_edge(self, edge: _Edge, gate: asyncio.Semaphore, first_s: float) -> None:
        loop = asyncio.get_running_loop()
        wake = self.wakes[edge.edge_id] = asyncio.Event()
        await self._pause(first_s, wake)
        while not self.stop.is_set():
            due = loop.time()
            async with gate:
                self.late.append(loop.time() - due)
                started = time.perf_counter()
                before = edge.cloud_id
                reply = await _heartbeat(self.fleet, edge)
            if reply is None:
                self.recorder.failed()
            else:
                self.recorder.ok(time.perf_counter() - started)
                if edge.cloud_id != before:
                    self.moved_at.setdefault(edge.edge_id, time.perf_counter())
            await self._pause(_next_interval(edge), wake)

    async def _pause(self, seconds: float, wake: asyncio.Event) -> None:
        waits = {asyncio.ensure_future(self.stop.wait()), asyncio.ensure_future(wake.wait())}
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
            wake.clear()


async def _steady(
    fleet: _Fleet,
    backend: _Backend,
    edges: Sequence[_Edge],
    clouds: Sequence[_Cloud],
    cloud_recorder: _Recorder,
    options: ControlPlaneOptions,
) -> SteadyStats:
    """The fleet on its schedule; false deaths counted after a warm-up of one interval;
    then one cloud dies and its streaming edges are timed until they learn a new cloud."""
    for cloud in clouds:
        mine = [e for e in edges if e.cloud_id == cloud.cloud_id]
        for edge in mine[: round(len(mine) * options.streaming_share)]:
            edge.streaming = True
            cloud.sessions.add(edge.edge_id)
    live = _Live(fleet, edges, options.clients, _Recorder(backend))
    gate = asyncio.Semaphore(options.clients)
    rng = random.Random(options.seed)
    tasks = [
        asyncio.create_task(live.run_edge(edge, gate, rng.uniform(0, _next_interval(edge))))
        for edge in edges
    ]
    sweep_s = max(c.interval_s for c in clouds)
    warmup = max(e.interval_s for e in edges) + 2 * sweep_s
    await asyncio.sleep(warmup)
    offsets = backend.log_sizes()
    live.recorder.start()
    cloud_recorder.start()
    live.late.clear()
    await asyncio.sleep(options.steady_s)
    stats = live.recorder.stats(extra=cloud_recorder)
    edge_beats, cloud_beats = len(live.recorder.latencies), len(cloud_recorder.latencies)
    logged = backend.log_since(offsets)
    edges_up = None
    with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
        edges_up = int((await fleet.next().get("/readyz")).json()["edges_up"])
    streaming_edges = sum(e.streaming for e in edges)  # before the failover turns some
    failover = await _failover(live, clouds, options) if len(clouds) > 1 else None
    live.stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    streaming_intervals = [e.streaming_interval_s for e in edges if e.streaming_interval_s]
    return SteadyStats(
        stats=stats,
        edge_heartbeats=edge_beats,
        cloud_heartbeats=cloud_beats,
        interval_s=max(e.interval_s for e in edges),
        streaming_interval_s=max(streaming_intervals) if streaming_intervals else None,
        timeout_s=max(e.timeout_s for e in edges),
        streaming_edges=streaming_edges,
        warmup_s=round(warmup, 1),
        late_p99_ms=_quantile(sorted(x * 1000 for x in live.late), 0.99),
        false_down=len(_FALSE_DOWN.findall(logged)),
        clouds_down=len(_CLOUD_DOWN.findall(logged)),
        edges_up_at_end=edges_up,
        failover=failover,
    )


async def _failover(
    live: _Live, clouds: Sequence[_Cloud], options: ControlPlaneOptions
) -> FailoverStats:
    """Kill the first cloud (it stops heartbeating and its sessions break, as a kill -9
    breaks their sockets): each edge streaming with it stops streaming and heartbeats at
    once, as the agent does, then when told; time until a reply names another cloud."""
    dead = clouds[0]
    victims = [e for e in live.edges if e.streaming and e.cloud_id == dead.cloud_id]
    dead.alive = False
    killed = time.perf_counter()
    live.moved_at.clear()
    for edge in victims:
        edge.streaming = False
        live.wakes[edge.edge_id].set()
    deadline = killed + options.failover_limit_s
    while time.perf_counter() < deadline:
        if all(e.edge_id in live.moved_at for e in victims):
            break
        await asyncio.sleep(0.2)
    seconds = sorted(
        live.moved_at[e.edge_id] - killed for e in victims if e.edge_id in live.moved_at
    )
    return FailoverStats(
        edges=len(victims),
        moved=len(seconds),
        p50_s=_quantile(seconds, 0.5),
        max_s=round(seconds[-1], 2) if seconds else None,
        cloud_timeout_s=dead.timeout_s,
    )


async def _play(
    backend_name: str, backend: _Backend, edges_wanted: int, options: ControlPlaneOptions
) -> ControlPlaneRecord:
    fleet = _Fleet(backend.urls, options.clients)
    loadgen0 = time.process_time()
    stop = asyncio.Event()
    cloud_recorder = _Recorder(backend)
    cloud_recorder.active = False
    keepers: list[asyncio.Task[None]] = []
    try:
        clouds = await _register_clouds(fleet, options.clouds)
        # Clouds heartbeat for the whole case, as real ones do.
        keepers = [asyncio.create_task(_keep_alive(fleet, c, cloud_recorder, stop)) for c in clouds]
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
            steady = await _steady(fleet, backend, edges, clouds, cloud_recorder, options)
    finally:
        stop.set()
        await asyncio.gather(*keepers, return_exceptions=True)
        await fleet.aclose()
    return ControlPlaneRecord(
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
) -> ControlPlaneRecord:
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
        try:
            return pool.submit(_play_in_process, backend_name, backend, edges, options).result()
        finally:
            # Interrupted (or failed): the load generator stops with the case.
            for child in multiprocessing.active_children():
                child.terminate()


def _play_in_process(
    backend_name: str, backend: _Backend, edges: int, options: ControlPlaneOptions
) -> ControlPlaneRecord:
    return asyncio.run(_play(backend_name, backend, edges, options))


class ControlPlaneSuite(Experiment[tuple[str, int], ControlPlaneRecord | ControlPlaneFailure]):
    """Every store × fleet size in turn; ``control-plane.json`` and ``.md`` after each case."""

    failures = (
        SimulTrainError,
        httpx.HTTPError,
        OSError,
        subprocess.SubprocessError,
        BrokenProcessPool,
    )

    def __init__(self, options: ControlPlaneOptions) -> None:
        self.options = options

    def cases(self) -> list[tuple[str, int]]:
        return [(b, n) for b in self.options.backends for n in self.options.edge_counts]

    def run_one(self, case: tuple[str, int]) -> ControlPlaneRecord:
        return run_control_plane_case(case[0], case[1], self.options)

    def failed(self, case: tuple[str, int], exc: BaseException) -> ControlPlaneFailure:
        return ControlPlaneFailure(
            label=self.options.label,
            backend=case[0],
            edges=case[1],
            error=f"{type(exc).__name__}: {exc}",
        )

    def describe(self, case: tuple[str, int]) -> str:
        return f"control plane: {case[0]}, {case[1]} edges"

    def summary(self, record: ControlPlaneRecord | ControlPlaneFailure) -> str:
        if isinstance(record, ControlPlaneFailure):
            return f"error: {record.error}"
        beat, steady = record.edge_heartbeat, record.steady
        return (
            f"enroll {record.enroll.per_s}/s ({record.enroll.cpu_ms_per_request} ms CPU), "
            f"heartbeats {beat and beat.per_s}/s p50/p99 {beat and beat.p50_ms}/"
            f"{beat and beat.p99_ms} ms ({beat and beat.cpu_ms_per_request} ms CPU); "
            f"steady false down {steady and steady.false_down}"
        )

    def clean(self, record: ControlPlaneRecord | ControlPlaneFailure) -> bool:
        """Every edge enrolled once and no live edge marked down."""
        if isinstance(record, ControlPlaneFailure) or record.error is not None:
            return False
        return record.enrolled_once and (record.steady is None or record.steady.false_down == 0)

    def save(self, records: Sequence[ControlPlaneRecord | ControlPlaneFailure]) -> None:
        options = self.options
        options.out_dir.mkdir(parents=True, exist_ok=True)
        results = ControlPlaneFile(
            meta=ControlPlaneMeta(
                command=options.command,
                label=options.label,
                cpus=os.cpu_count(),
                clients=options.clients,
                clouds=options.clouds,
                burst_s=options.burst_s,
                steady_s=options.steady_s,
                streaming_share=options.streaming_share,
                coordinator_tree=str(options.coordinator_tree)
                if options.coordinator_tree
                else None,
                load_average=[round(x, 2) for x in os.getloadavg()],
            ),
            records=list(records),
        )
        results.write(options.out_dir / "control-plane.json")
        (options.out_dir / "control-plane.md").write_text(control_plane_markdown(results))


def control_plane_suite(options: SuiteOptions) -> ControlPlaneSuite:
    """``simultrain bench --suite control-plane``: ``--fleet-edges``, ``--stores``,
    ``--duration`` (the steady window), ``--coordinator-tree``, ``--label``; the results go to
    ``bench/results/control-plane`` unless ``--out`` says otherwise."""
    defaults = ControlPlaneOptions()
    stores = options.stores or defaults.backends
    return ControlPlaneSuite(
        ControlPlaneOptions(
            out_dir=defaults.out_dir
            if options.out_dir == Path("bench/results")
            else options.out_dir,
            edge_counts=options.edge_counts or defaults.edge_counts,
            backends=tuple(stores),
            steady_s=options.duration_s if options.duration_s is not None else defaults.steady_s,
            coordinator_tree=options.coordinator_tree,
            label=options.label,
            log_dir=options.log_dir,
            command=options.command,
        )
    )


def _fmt(value: object, suffix: str = "") -> str:
    return "–" if value is None else f"{value}{suffix}"


def control_plane_markdown(results: ControlPlaneFile) -> str:
    """The table of ``control-plane.md``."""
    records = [r.to_json() for r in results.records]
    meta = results.meta.to_json()
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
        "| false down | cloud killed: edges told a new cloud after p50 / max s "
        "| enrolled once |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if r.get("error"):
            lines.append(
                f"| {r.get('label', '')} | {r['backend']} | {r['edges']} | error: {r['error']} "
                "| | | | | | | | | | | | | |"
            )
            continue
        enroll, beat = r["enroll"], r.get("edge_heartbeat") or {}
        cloud, steady = r.get("cloud_heartbeat") or {}, r.get("steady") or {}
        stats = steady.get("stats") or {}

        def failover(moved: dict[str, Any] | None) -> str:
            if not moved:
                return "–"
            return (
                f"{_fmt(moved['p50_s'])} / {_fmt(moved['max_s'])} "
                f"({moved['moved']} of {moved['edges']})"
            )

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
            f"| {_fmt(steady.get('false_down'))} | {failover(steady.get('failover'))} "
            f"| {r['enrolled_once']} |"
        )
    return "\n".join(lines) + "\n"
