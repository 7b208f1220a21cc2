"""Two coordinator replicas on one PostgreSQL database decide as one.

In-process: two :class:`Coordinator` objects, each with its own store (its own connection
pool), on one database of the session's real PostgreSQL server, racing from threads. The
real-process test (kill -9 of either replica during enrollment) is
``test_coordinator_replicas_process.py``.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from simultrain.coordinator import Coordinator, CoordinatorSettings
from simultrain.coordinator.postgres import PostgresStore
from simultrain.coordinator.records import Status
from simultrain.coordinator.registry import SweepResult

TIMEOUT = 5.0


@pytest.fixture
def replicas(
    coordinator_postgres_url: str,
    coordinator_settings: CoordinatorSettings,
    coordinator_clock: Any,
) -> Iterator[tuple[Coordinator, Coordinator]]:
    stores = [PostgresStore(coordinator_postgres_url) for _ in range(2)]
    try:
        one, two = (Coordinator(s, coordinator_settings, clock=coordinator_clock) for s in stores)
        yield one, two
    finally:
        for store in stores:
            store.close()


def in_threads(*work: Callable[[], None]) -> None:
    failures: list[BaseException] = []

    def run(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures


def test_concurrent_enrollments_on_two_replicas_are_balanced_and_unique(
    replicas: tuple[Coordinator, Coordinator],
) -> None:
    one, two = replicas
    clouds = [one.register_cloud(f"http://cloud-{i}.test").cloud_id for i in range(3)]
    enrolled: list[str] = []

    def enroll(replica: Coordinator, count: int) -> Callable[[], None]:
        def job() -> None:
            for _ in range(count):
                enrolled.append(replica.register_edge().edge.edge_id)

        return job

    in_threads(enroll(one, 40), enroll(two, 40), enroll(one, 40), enroll(two, 40))
    edges = two.list_edges()
    assert sorted(e.edge_id for e in edges) == sorted(enrolled)
    assert sorted(e.ordinal for e in edges) == list(range(160))  # no ordinal twice
    loads = {cloud.cloud_id: load for cloud, load in one.list_clouds()}
    assert set(loads) == set(clouds) and sum(loads.values()) == 160
    assert max(loads.values()) - min(loads.values()) <= 1  # least-loaded, decided one at a time
    assert Counter(e.cloud_id for e in edges) == Counter(loads)
    assert one.counts().enrolled == 160


def test_one_enrollment_id_is_one_edge_whichever_replica_answers(
    replicas: tuple[Coordinator, Coordinator],
) -> None:
    """A client whose reply was lost retries the same enrollment on the other replica, maybe
    while the first is still answering: one edge."""
    one, two = replicas
    one.register_cloud("http://cloud-a.test")
    got: list[str] = []

    def enroll(replica: Coordinator) -> Callable[[], None]:
        def job() -> None:
            for key in range(30):
                got.append(replica.register_edge(enrollment_id=f"retry-{key}").edge.edge_id)

        return job

    in_threads(enroll(one), enroll(two), enroll(one), enroll(two))
    edges = one.list_edges()
    assert len(edges) == 30 and len(set(got)) == 30
    assert {e.enrollment_id for e in edges} == {f"retry-{key}" for key in range(30)}


def test_one_replica_sweeps_at_a_time_and_the_other_takes_over(
    replicas: tuple[Coordinator, Coordinator], coordinator_clock: Any
) -> None:
    """The health lease: renewed by every sweep of its holder, taken over by another
    replica once it has not been renewed for three sweep intervals (its holder died)."""
    one, two = replicas
    ttl = 3 * one.settings.heartbeat_interval_s
    a = one.register_cloud("http://a.test").cloud_id
    b = two.register_cloud("http://b.test").cloud_id
    assert not one.sweep().changed  # one takes the lease
    coordinator_clock.advance(ttl - 0.5)
    assert not one.sweep().changed  # and renews it
    coordinator_clock.advance(TIMEOUT - (ttl - 0.5))  # a is silent now; b heartbeats
    two.cloud_heartbeat(b, master_version=1)
    assert two.sweep() == SweepResult()  # a is silent, but the lease is one's
    assert one.sweep().clouds_down == (a,)  # the work is done once, by the holder
    # one stops sweeping (its process died): after the lease expires, two takes over and
    # finds b silent meanwhile
    coordinator_clock.advance(TIMEOUT)
    assert two.sweep().clouds_down == (b,)
    assert one.sweep() == SweepResult()  # one is back, but two holds the lease now
    statuses = {cloud.cloud_id: cloud.status for cloud, _ in two.list_clouds()}
    assert statuses == {a: Status.DOWN, b: Status.DOWN}
