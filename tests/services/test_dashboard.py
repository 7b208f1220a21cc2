"""The live dashboard in-process: the coordinator's feed over mocked clouds, the page and its
assets, and the cloud's periodic evaluation and reconciliation counts that feed it.

The page in a real browser against real processes is ``test_dashboard_browser.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from simultrain.cloud.app import create_app as create_cloud_app
from simultrain.cloud.evaluation import PeriodicEvaluator
from simultrain.cloud.metrics import AppliedRate, CloudMetrics, TrainingHistory
from simultrain.cloud.settings import CloudSettings
from simultrain.coordinator import CoordinatorSettings, create_app
from simultrain.coordinator.dashboard import DashboardFeed, cloud_http_url
from simultrain.shared.contracts import (
    CloudHistory,
    CloudStatus,
    EdgeSessionStatus,
    HistoryPoint,
    StalenessSummary,
)
from simultrain.shared.protocol import Ack, Snap, WireTensor
from simultrain.shared.training.config import RunConfig

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "services" / "coordinator" / "static"
CLOUD_URL = "ws://cloud.test:8800"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeCloud:
    """What a cloud's ``/v1/status`` and ``/v1/history`` answer, changed by the test: the
    bodies are the shared contracts', as a real cloud writes them."""

    def __init__(self) -> None:
        self.sessions: dict[str, EdgeSessionStatus] = {}
        self.master_version = 0
        self.requests: list[str] = []
        self.failure: Callable[[httpx.Request], httpx.Response] | None = None

    def status(self) -> CloudStatus:
        return CloudStatus(
            cloud_id="c-1",
            mode="simultrain",
            model_id="imu-cnn1d",
            device="cpu",
            master_version=self.master_version,
            edge_updates=self.master_version // 2,
            samples_applied=sum(s.samples_applied for s in self.sessions.values()),
            loss=0.7,
            busy_seconds=5.0,
            compute_cpu_seconds=4.0,
            partial_rounds=0,
            coded_rounds=0,
            late_uploads_dropped=0,
            uptime_seconds=20.0,
            staleness=StalenessSummary(batches=3, max=2, mean=1.0, dropped=0, histogram={"1": 3}),
            replica=None,
            edges=self.sessions,
        )

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(str(request.url))
        if self.failure is not None:
            return self.failure(request)
        if request.url.path == "/v1/status":
            return httpx.Response(200, json=self.status().model_dump(mode="json"))
        if request.url.path == "/v1/history":
            history = CloudHistory(
                eval_interval_s=5.0,
                points=[POINT],
                reconciliations={edge: 2 for edge in self.sessions},
            )
            return httpx.Response(200, json=history.model_dump(mode="json"))
        return httpx.Response(404)


POINT = HistoryPoint(
    time=1.0, master_version=4, samples_applied=64, train_loss=0.9, accuracy=0.5, eval_loss=1.1
)


@pytest.fixture
def fake_cloud() -> FakeCloud:
    return FakeCloud()


@pytest.fixture
def coordinator(fake_cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    for name in [n for n in os.environ if n.startswith("SIMULTRAIN_COORDINATOR_")]:
        monkeypatch.delenv(name)
    app = create_app(CoordinatorSettings(db_path=":memory:"))
    feed: DashboardFeed = app.state.dashboard
    feed.transport = httpx.MockTransport(fake_cloud.handle)
    feed.clock = Clock()
    feed.min_poll_interval_s = 0.0
    with TestClient(app) as client:
        yield client


def register(client: TestClient, name: str = "pi-kitchen") -> tuple[str, str]:
    cloud = client.post("/v1/clouds", json={"url": CLOUD_URL}).json()["cloud_id"]
    edge = client.post("/v1/edges", json={"name": name}).json()["edge_id"]
    return cloud, edge


def session(steps: int) -> EdgeSessionStatus:
    return EdgeSessionStatus(
        samples_received=32 * steps,
        samples_applied=32 * steps,
        steps_applied=steps,
        highest_applied_seq=steps - 1,
        duplicates_dropped=0,
        last_edge_version=2 * steps - 2,
        replica_version=2 * steps - 1,
        bytes_up=1000 * steps,
        bytes_down=3000 * steps,
        staleness=StalenessSummary(
            batches=steps,
            max=3,
            mean=2.5,
            dropped=0,
            histogram={"2": steps // 2, "3": steps - steps // 2},
        ),
        code_row=None,
        late_uploads_dropped=0,
        connected=True,
    )


# --- the coordinator's feed ----------------------------------------------------------------


def test_throughput_counts_from_the_first_batch_applied_to_the_last() -> None:
    now = [100.0]  # the cloud has been up for a while: start-up is not in the rate
    rate = AppliedRate(clock=lambda: now[0])
    assert rate.per_s is None
    rate.note(32)  # the first batch: the clock starts here
    assert rate.per_s is None
    now[0] = 102.0
    rate.note(32 * 11)
    now[0] = 110.0
    rate.note(32 * 11)  # nothing new applied (an idle tail): not counted
    assert rate.per_s == 160.0  # 320 samples in 2 s


def test_cloud_http_url_follows_the_url_edges_stream_to() -> None:
    assert cloud_http_url("ws://10.0.0.2:8800") == "http://10.0.0.2:8800"
    assert cloud_http_url("wss://cloud.example/") == "https://cloud.example"
    assert cloud_http_url("wss://cloud.example/v1/stream") == "https://cloud.example"
    assert cloud_http_url("http://10.0.0.2:8800") == "http://10.0.0.2:8800"


def test_the_feed_joins_the_registry_with_each_clouds_figures(
    coordinator: TestClient, fake_cloud: FakeCloud
) -> None:
    cloud_id, edge_id = register(coordinator)
    fake_cloud.sessions = {edge_id: session(10)}
    fake_cloud.master_version = 21
    data = coordinator.get("/v1/dashboard").json()

    assert sorted(fake_cloud.requests) == [
        "http://cloud.test:8800/v1/history",
        "http://cloud.test:8800/v1/status",
    ]
    assert data["run_config"]["mode"] == "simultrain"
    [cloud] = data["clouds"]
    assert cloud["cloud_id"] == cloud_id and cloud["reachable"] and cloud["error"] is None
    assert cloud["master_version"] == 21
    assert cloud["busy_share"] == 0.25
    assert cloud["history"] == [POINT.model_dump()]
    # The cloud's status passes through whole, the earlier byte names included.
    assert cloud["detail"]["edges"][edge_id]["bytes_in"] == 10_000
    [edge] = data["edges"]
    assert edge == {
        **edge,
        "edge_id": edge_id,
        "name": "pi-kitchen",
        "cloud_id": cloud_id,
        "status": "up",
        "connected": True,
        "steps_applied": 10,
        "replica_version": 19,
        "master_version": 21,
        "lag": 2,
        "bytes_up": 10_000,
        "bytes_down": 30_000,
        "reconciliations": 2,
        "step_rate": None,  # one sample is no rate yet
        # the edge's own staleness distribution, passed through from its cloud
        "staleness": {
            "batches": 10,
            "max": 3,
            "mean": 2.5,
            "dropped": 0,
            "histogram": {"2": 5, "3": 5},
            # in samples (docs/FLEET.md): this fake cloud reports none
            "samples_sum": 0,
            "samples_max": 0,
            "samples_mean": 0.0,
        },
    }


def test_step_rate_is_steps_over_time_between_polls_and_restarts_after_a_reset(
    coordinator: TestClient, fake_cloud: FakeCloud
) -> None:
    _, edge_id = register(coordinator)
    clock: Clock = coordinator.app.state.dashboard.clock  # type: ignore[attr-defined]

    def rate_at(seconds: float, steps: int) -> float | None:
        clock.now += seconds
        fake_cloud.sessions = {edge_id: session(steps)}
        rate: float | None = coordinator.get("/v1/dashboard").json()["edges"][0]["step_rate"]
        return rate

    assert rate_at(0, 10) is None
    assert rate_at(2, 30) == 10.0
    assert rate_at(2, 50) == 10.0
    # Only the last RATE_WINDOW_S count: a stall shows.
    assert rate_at(40, 50) is not None
    assert rate_at(40, 50) == 0.0
    # A new session counts from zero: no negative rate.
    assert rate_at(1, 3) is None


def test_polls_are_shared_between_viewers(coordinator: TestClient, fake_cloud: FakeCloud) -> None:
    register(coordinator)
    feed: DashboardFeed = coordinator.app.state.dashboard  # type: ignore[attr-defined]
    feed.min_poll_interval_s = 1.0
    for _ in range(5):
        coordinator.get("/v1/dashboard")
    assert len(fake_cloud.requests) == 2  # one /v1/status, one /v1/history
    feed.clock.now += 1.0  # type: ignore[attr-defined]
    coordinator.get("/v1/dashboard")
    assert len(fake_cloud.requests) == 4


def _refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (_refused, "ConnectError"),
        (lambda r: httpx.Response(503, json={"error": {}}), "HTTPStatusError"),
        (lambda r: httpx.Response(200, json=[1, 2]), "expected a JSON object"),
        (lambda r: httpx.Response(200, content=b'{"loss": NaN}'), "NaN is not JSON"),
        (lambda r: httpx.Response(200, content=b"<html>"), "JSONDecodeError"),
    ],
)
def test_a_cloud_that_does_not_answer_sensibly_is_shown_unreachable(
    coordinator: TestClient,
    fake_cloud: FakeCloud,
    failure: Callable[[httpx.Request], httpx.Response],
    reason: str,
) -> None:
    _, edge_id = register(coordinator)
    fake_cloud.failure = failure
    reply = coordinator.get("/v1/dashboard")
    assert reply.status_code == 200
    [cloud] = reply.json()["clouds"]
    assert not cloud["reachable"] and reason in cloud["error"]
    # The edge is still listed, from what the coordinator itself knows.
    [edge] = reply.json()["edges"]
    assert edge["edge_id"] == edge_id and edge["steps_applied"] == 0 and edge["connected"] is None


# --- the page ------------------------------------------------------------------------------


def test_the_page_and_its_assets_are_served_from_the_package(coordinator: TestClient) -> None:
    page = coordinator.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert 'src="dashboard/dashboard.js"' in page.text
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        asset = coordinator.get(f"/dashboard/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        assert asset.content == (STATIC / name).read_bytes()
    for name in ("dashboard.html", "..%2Fapp.py", "dashboard.py", "x.js"):
        assert coordinator.get(f"/dashboard/{name}").status_code == 404


def test_the_assets_fetch_nothing_from_elsewhere() -> None:
    """No CDN: the only absolute URL in the page is the SVG namespace, which is a name."""
    for path in STATIC.iterdir():
        urls = set(re.findall(r"[a-z]+://[^\s\"'`)]+", path.read_text()))
        assert urls <= {"http://www.w3.org/2000/svg"}, (path.name, urls)


def test_the_static_assets_are_package_data() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["simultrain.coordinator"]
    files = sorted(p.name for p in STATIC.iterdir())
    assert files == ["dashboard.css", "dashboard.html", "dashboard.js"]
    for name in files:
        assert any(Path("static", name).match(pattern) for pattern in patterns), name


# --- the cloud's side ----------------------------------------------------------------------


def _snap(reconcile: bool) -> Snap:
    tensor = WireTensor(np.zeros(2, dtype=np.float32))
    return Snap(master_version=3, tensors={"w": tensor}, reconcile=reconcile, checksum=0)


def test_the_cloud_counts_reconciliations_per_edge() -> None:
    metrics = CloudMetrics()
    metrics.observe_outgoing(
        [("a", _snap(True)), ("a", _snap(False)), ("b", _snap(True)), ("a", _snap(True))]
    )
    metrics.observe_outgoing([("a", Ack(seq=3, master_version=4))])
    assert metrics.reconciliations_by_edge == {"a": 2, "b": 1}
    assert metrics.registry.get_sample_value("simultrain_cloud_reconciliations_total") == 3


def test_history_is_bounded_and_never_carries_nan() -> None:
    history = TrainingHistory(max_points=3, clock=lambda: 12.0)
    for version in range(5):
        history.record(
            master_version=version,
            samples_applied=32 * version,
            train_loss=math.nan if version == 4 else 0.5,
            accuracy=0.25,
            eval_loss=math.inf,
        )
    assert [p.master_version for p in history.points] == [2, 3, 4]
    assert history.points[-1] == HistoryPoint(
        time=12.0,
        master_version=4,
        samples_applied=128,
        train_loss=None,
        accuracy=0.25,
        eval_loss=None,
    )


def test_the_cloud_evaluates_the_master_periodically() -> None:
    settings = CloudSettings(eval_interval_s=0.05)
    with TestClient(create_cloud_app(settings, run=RunConfig(dataset="imu"))) as client:
        deadline = time.monotonic() + 30
        points: list[dict[str, Any]] = []
        while not points and time.monotonic() < deadline:
            points = client.get("/v1/history").json()["points"]
            time.sleep(0.05)
        assert points, "no periodic evaluation within 30 s"
        reply = client.get("/v1/history").json()
        assert reply["eval_interval_s"] == 0.05 and reply["reconciliations"] == {}
        # An idle master is evaluated once, not on every tick.
        assert len(reply["points"]) == 1
        point = reply["points"][0]
        assert point["master_version"] == 0 and 0 <= point["accuracy"] <= 1
        assert point["accuracy"] == pytest.approx(
            client.get("/v1/eval").json()["accuracy"], abs=1e-6
        )
        metrics = client.get("/metrics").text
        assert f"simultrain_cloud_eval_accuracy {point['accuracy']}" in metrics


def test_periodic_evaluation_can_be_turned_off() -> None:
    with TestClient(create_cloud_app(CloudSettings(eval_interval_s=0), run=RunConfig())) as client:
        tasks = client.portal.call(asyncio.all_tasks)  # type: ignore[union-attr]
        assert "cloud-eval" not in {task.get_name() for task in tasks}
        assert client.get("/v1/history").json()["points"] == []


def test_periodic_evaluation_runs_off_the_compute_thread_on_an_exact_copy() -> None:
    with TestClient(create_cloud_app(CloudSettings(eval_interval_s=0), run=RunConfig())) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        evaluator = PeriodicEvaluator(service, 0.01)
        # An exact copy: the same figures as the master's own evaluation, at any weights.
        with torch.no_grad():
            for tensor in service.master.cloud_stage.parameters():
                tensor.add_(torch.randn_like(tensor))
        expected = service.master.evaluate(service.x_test, service.y_test)
        assert evaluator._evaluate(evaluator._snapshot().state) == pytest.approx(expected)

        entered, release = threading.Event(), threading.Event()
        real = evaluator._evaluate

        def held(state: dict[str, torch.Tensor]) -> tuple[float, float]:
            entered.set()
            assert release.wait(30)
            return real(state)

        evaluator._evaluate = held  # type: ignore[method-assign]

        async def scenario() -> None:
            recorded = asyncio.Event()
            observe = service.metrics.observe_evaluation

            def observed(*args: Any, **kwargs: Any) -> None:
                observe(*args, **kwargs)
                recorded.set()

            service.metrics.observe_evaluation = observed
            task = asyncio.create_task(evaluator.run())
            try:
                assert await asyncio.to_thread(entered.wait, 30)
                # Mid-evaluation, the compute thread still serves the master at once.
                assert await asyncio.wait_for(service.compute(lambda: 42), 10) == 42
                release.set()
                await asyncio.wait_for(recorded.wait(), 30)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        client.portal.call(scenario)  # type: ignore[union-attr]
        [point] = service.metrics.history.points
        assert point.accuracy == pytest.approx(expected[0], abs=1e-6)
