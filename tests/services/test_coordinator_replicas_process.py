"""Two coordinator replicas on one PostgreSQL database survive kill -9 of either one during
enrollment: every edge enrolled exactly once, every edge assigned to exactly one live cloud.

Real processes: the session's PostgreSQL server, two coordinator processes (port 0) on one
database, four clouds played over HTTP (each heartbeats through whichever replica answers
and reports a session with each of its edges, so they stay live), and eight clients that
enroll edges through the replicas in turn. A client whose enrollment fails (the replica
died mid-request, perhaps after committing) retries it on the other replica with the same
``enrollment_id`` (and every seventh reply is dropped on its way back, so that case surely
happens). Replica 0 is killed with SIGKILL during the first wave of enrollments and
started again; replica 1 during the second. Then a cloud stops heartbeating: the replica
left holding the health lease marks it down and moves its edges to the live clouds.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from simultrain.procs import ServiceGroup, ServiceProcess

pytestmark = [pytest.mark.integration]

CLIENTS = 8
PER_WAVE = 120
CLOUDS = 4


@dataclass
class Replicas:
    """The coordinator processes and the URLs they answer on now (a restart moves one)."""

    group: ServiceGroup
    env: dict[str, str]
    processes: list[ServiceProcess] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def launch(self, index: int) -> ServiceProcess:
        """Start replica ``index`` (again); it takes its turn once :meth:`listening`."""
        return self.group.start(f"coordinator-{index}", "simultrain.coordinator", self.env)

    def listening(self, index: int, proc: ServiceProcess) -> None:
        url = proc.wait_listening(timeout_s=120)
        with self.lock:
            if index < len(self.processes):
                self.processes[index], self.urls[index] = proc, url
            else:
                self.processes.append(proc)
                self.urls.append(url)

    def url(self, turn: int) -> str:
        with self.lock:
            return self.urls[turn % len(self.urls)]


class Cloud(threading.Thread):
    """A cloud played over HTTP: heartbeats, reporting its edges' sessions as they change."""

    def __init__(self, index: int, replicas: Replicas, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.replicas, self.stop = replicas, stop
        self.url = f"ws://cloud-{index}.test:8000"
        self.cloud_id = ""
        self.sessions: set[str] = set()
        self.reported: set[str] | None = None
        self.alive = True
        self.turn = itertools.count(index)
        self.lock = threading.Lock()
        self.http = httpx.Client(timeout=5)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        for _ in range(20):
            try:
                reply = self.http.post(self.replicas.url(next(self.turn)) + path, json=body)
                if reply.status_code < 500:
                    reply.raise_for_status()
                    data: dict[str, Any] = reply.json()
                    return data
            except httpx.TransportError:
                pass
            self.stop.wait(0.05)
        raise AssertionError(f"cloud {self.url}: no replica answered {path}")

    def run(self) -> None:
        self.cloud_id = self.post("/v1/clouds", {"url": self.url})["cloud_id"]
        while self.alive and not self.stop.is_set():
            with self.lock:
                now = set(self.sessions)
            reported = self.reported or set()
            reply = self.post(
                f"/v1/clouds/{self.cloud_id}/heartbeat",
                {
                    "master_version": 1,
                    "session_changes": {
                        "opened": sorted(now - reported),
                        "closed": sorted(reported - now),
                    },
                    "list_assigned_edges": False,
                },
            )
            self.reported = None if reply.get("sessions_snapshot_wanted") else now
            self.stop.wait(0.25)
        self.http.close()


def enroll_wave(
    replicas: Replicas,
    clouds: dict[str, Cloud],
    wave: int,
    enrolled: dict[str, str],
    on_progress: Callable[[int], None],
) -> None:
    """``PER_WAVE`` enrollments from ``CLIENTS`` threads, through the replicas in turn."""
    keys = iter(f"wave{wave}-edge{i}" for i in range(PER_WAVE))
    # Every seventh reply is lost on its way back, after the replica committed: the kill
    # cannot be aimed at that moment, so the test makes sure it happens.
    lose = {f"wave{wave}-edge{i}" for i in range(3, PER_WAVE, 7)}
    keys_lock = threading.Lock()
    failures: list[str] = []

    def client(number: int) -> None:
        turn = itertools.count(number)
        http = httpx.Client(timeout=10)
        while True:
            with keys_lock:
                key = next(keys, None)
            if key is None:
                http.close()
                return
            for _ in range(100):
                try:
                    reply = http.post(
                        replicas.url(next(turn)) + "/v1/edges",
                        json={"name": key, "enrollment_id": key},
                    )
                except httpx.TransportError:
                    continue  # that replica died mid-request: the same key on the other one
                if reply.status_code == 201 and key in lose:
                    lose.discard(key)
                    continue  # "lost": enrolled there, retried on the other replica
                if reply.status_code == 201:
                    break
                time.sleep(0.05)  # 503 while no cloud is up yet, or a store error
            else:
                failures.append(key)
                continue
            data = reply.json()
            with keys_lock:
                enrolled[key] = data["edge_id"]
                on_progress(len(enrolled))
            cloud = clouds[data["cloud_id"]]
            with cloud.lock:
                cloud.sessions.add(data["edge_id"])

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not failures, f"never enrolled: {failures}"


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        pause.wait(0.1)


@pytest.mark.timeout(600)
def test_two_replicas_survive_kill_9_of_either_during_enrollment(
    tmp_path: Path, coordinator_postgres_url: str
) -> None:
    env = {
        "SIMULTRAIN_COORDINATOR_HOST": "127.0.0.1",
        "SIMULTRAIN_COORDINATOR_PORT": "0",
        "SIMULTRAIN_COORDINATOR_DATABASE_URL": coordinator_postgres_url,
        "SIMULTRAIN_COORDINATOR_LOG_LEVEL": "warning",
        "SIMULTRAIN_COORDINATOR_HEARTBEAT_INTERVAL_S": "0.5",
        "SIMULTRAIN_COORDINATOR_HEARTBEAT_TIMEOUT_S": "3",
    }
    group = ServiceGroup(tmp_path / "logs")
    replicas = Replicas(group, env)
    stop = threading.Event()
    try:
        started = time.monotonic()

        def mark(what: str) -> None:
            print(f"{time.monotonic() - started:6.1f} s  {what}")

        for index, proc in enumerate([replicas.launch(0), replicas.launch(1)]):
            replicas.listening(index, proc)
        mark("two replicas listening")
        clouds_by_url = [Cloud(i, replicas, stop) for i in range(CLOUDS)]
        for cloud in clouds_by_url:
            cloud.start()
        wait_until(lambda: all(c.cloud_id for c in clouds_by_url), "the clouds to register")
        clouds = {c.cloud_id: c for c in clouds_by_url}
        enrolled: dict[str, str] = {}
        for wave, victim in enumerate((0, 1)):
            replacement: list[ServiceProcess] = []
            kill_at = wave * PER_WAVE + PER_WAVE // 3

            def kill_mid_wave(
                count: int, victim: int = victim, again: Any = replacement, at: int = kill_at
            ) -> None:
                if count >= at and not again:
                    replicas.processes[victim].kill()  # SIGKILL, requests in flight
                    again.append(replicas.launch(victim))  # its replacement starts meanwhile

            enroll_wave(replicas, clouds, wave, enrolled, kill_mid_wave)
            assert replacement, "the replica was not killed"
            mark(f"wave {wave} enrolled, replica {victim} killed during it")
            replicas.listening(victim, replacement[0])
            mark(f"replica {victim} started again")

        # Every edge enrolled exactly once: one row per enrollment, the edge each client got.
        # (each client named its edge after its enrollment key).
        with psycopg.connect(coordinator_postgres_url) as conn:
            rows = conn.execute("SELECT name, edge_id FROM edges").fetchall()
        duplicated = sorted(n for n, count in Counter(n for n, _ in rows).items() if count > 1)
        assert not duplicated, f"enrolled more than once: {duplicated}"
        assert len(rows) == len(enrolled) == 2 * PER_WAVE
        assert dict(rows) == enrolled
        assert sorted(e["name"] for e in httpx.get(replicas.url(0) + "/v1/edges").json()) == (
            sorted(enrolled)
        )

        # A cloud dies: whichever replica holds the health lease now moves its edges.
        dead = clouds_by_url[0]
        dead.alive = False

        def every_edge_on_a_live_cloud() -> bool:
            live = {
                c["cloud_id"]
                for c in httpx.get(replicas.url(1) + "/v1/clouds").json()
                if c["status"] == "up"
            }
            edges = httpx.get(replicas.url(1) + "/v1/edges").json()
            return dead.cloud_id not in live and all(e["cloud_id"] in live for e in edges)

        wait_until(every_edge_on_a_live_cloud, "the dead cloud's edges to move")
        mark("the dead cloud's edges moved")
        edges = httpx.get(replicas.url(0) + "/v1/edges").json()
        assert len(edges) == len({e["edge_id"] for e in edges}) == 2 * PER_WAVE
        logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
        assert "Traceback" not in logs, logs[-3000:]
    finally:
        stop.set()
        group.stop_all()
