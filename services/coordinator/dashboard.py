"""The live dashboard: ``GET /dashboard`` (a page) and ``GET /v1/dashboard`` (what it draws).

A training run is watched while it runs (docs/CONFIGURATION.md, "Watching a run"). The coordinator
already knows the fleet (its registry of clouds and edges, their heartbeats and the versions they
last reported); the figures only the master has — per-edge steps, bytes and replica versions,
staleness, loss, held-out accuracy over time, reconciliations — it reads from each cloud it knows,
over the clouds' own open read endpoints (``/v1/status``, ``/v1/history``). The page polls
``/v1/dashboard`` and draws it with its own small script: no build step, no CDN, the assets ship in
the package (``static/``), so the page works on a cluster with no way out.

Polling is on demand and shared: while nobody watches, nothing is polled; however many
pages watch, each cloud is asked at most once per ``min_poll_interval_s``. A cloud that does
not answer, or answers nonsense, is shown as unreachable with the reason, never an error page.
Reads are open like the rest of the coordinator's ``GET`` endpoints: ids, versions, figures,
never a credential.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

import httpx
from fastapi import FastAPI, Response
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from simultrain.shared.contracts import (
    CloudHistory,
    CloudStatus,
    DashboardCloud,
    DashboardEdge,
    DashboardSnapshot,
    EdgeSessionStatus,
)

from .records import CloudRecord, EdgeRecord
from .registry import Coordinator

__all__ = ["DashboardFeed", "cloud_http_url", "register_dashboard"]

# The page's assets: a fixed list, so no request path ever reaches the file system.
ASSETS: Mapping[str, str] = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
# Only the page's own files, nothing inline, nothing from elsewhere: edge names are
# user-chosen text, and the script shows them as text only.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# The step rate is measured over this much recent time: long enough to smooth the bursts of
# a pipelined edge (a window of batches at once), short enough to show a stall.
RATE_WINDOW_S = 30.0


def cloud_http_url(url: str) -> str:
    """The HTTP base of a cloud from the URL it registered (the one edges stream to)."""
    base = url.rstrip("/")
    if base.endswith("/v1/stream"):
        base = base[: -len("/v1/stream")]
    for ws, http in (("wss://", "https://"), ("ws://", "http://")):
        if base.startswith(ws):
            return http + base[len(ws) :]
    return base


class _StepRate:
    """Steps per second of one edge over the last ``RATE_WINDOW_S`` seconds of polls."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int]] = deque()

    def observe(self, now: float, steps: int) -> float | None:
        if self.samples and steps < self.samples[-1][1]:
            self.samples.clear()  # a new session or run counts from zero again
        self.samples.append((now, steps))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW_S:
            self.samples.popleft()
        (t0, s0), (t1, s1) = self.samples[0], self.samples[-1]
        if t1 <= t0:
            return None
        return round((s1 - s0) / (t1 - t0), 3)


class DashboardFeed:
    """Builds the dashboard's snapshot from the registry and the clouds it lists.

    ``transport``: an httpx transport (tests pass ``httpx.MockTransport``); ``clock``:
    monotonic seconds for the step rates and the poll interval.
    """

    def __init__(
        self,
        coordinator: Coordinator,
        *,
        poll_timeout_s: float = 2.0,
        min_poll_interval_s: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.coordinator = coordinator
        self.poll_timeout_s = poll_timeout_s
        self.min_poll_interval_s = min_poll_interval_s
        self.transport = transport
        self.clock = clock
        self._rates: dict[str, _StepRate] = {}
        self._lock = asyncio.Lock()
        self._latest: DashboardSnapshot | None = None
        self._latest_at = -math.inf

    async def snapshot(self) -> DashboardSnapshot:
        async with self._lock:
            if self._latest is not None and self.clock() - self._latest_at < (
                self.min_poll_interval_s
            ):
                return self._latest
            snapshot = await self._build()
            self._latest, self._latest_at = snapshot, self.clock()
            return snapshot

    async def _build(self) -> DashboardSnapshot:
        # The store may block (SQLite): off the event loop, as the plain-def handlers are.
        clouds, edges, run_config = await asyncio.to_thread(self._registry)
        async with httpx.AsyncClient(
            timeout=self.poll_timeout_s, transport=self.transport, follow_redirects=False
        ) as client:
            polled = await asyncio.gather(
                *(self._poll(client, cloud, load) for cloud, load in clouds)
            )
        now = self.clock()
        by_cloud = {view.cloud_id: view for view in polled}
        edge_views = [self._edge_view(edge, by_cloud.get(edge.cloud_id), now) for edge in edges]
        live = {edge.edge_id for edge in edges}
        for edge_id in list(self._rates):
            if edge_id not in live:
                del self._rates[edge_id]
        return DashboardSnapshot(
            generated_at=round(self.coordinator.now(), 3),
            run_config=run_config,
            clouds=polled,
            edges=edge_views,
        )

    def _registry(
        self,
    ) -> tuple[list[tuple[CloudRecord, int]], list[EdgeRecord], dict[str, Any]]:
        return (
            self.coordinator.list_clouds(),
            self.coordinator.list_edges(),
            self.coordinator.run_config.to_mapping(),
        )

    async def _poll(
        self, client: httpx.AsyncClient, cloud: CloudRecord, live_edges: int
    ) -> DashboardCloud:
        base = cloud_http_url(cloud.url)
        view = DashboardCloud(
            cloud_id=cloud.cloud_id,
            url=cloud.url,
            status=cloud.status.value,
            last_heartbeat=cloud.last_heartbeat,
            master_version=cloud.master_version,
            connected_edges=list(cloud.connected_edges),
            live_edges=live_edges,
            reachable=False,
            error=None,
            detail=None,
            busy_share=None,
            history=[],
            reconciliations={},
            eval_interval_s=None,
        )
        try:
            replies = await asyncio.gather(
                client.get(f"{base}/v1/status"), client.get(f"{base}/v1/history")
            )
            for reply in replies:
                reply.raise_for_status()
            detail = CloudStatus.model_validate(_json_object(replies[0]))
            progress = CloudHistory.model_validate(_json_object(replies[1]))
        except (httpx.HTTPError, ValueError) as exc:
            # Unreachable or answering nonsense (a pydantic ValidationError is a ValueError):
            # that is the cloud's health, shown as such.
            return view.model_copy(update={"error": f"{type(exc).__name__}: {exc}"[:300]})
        busy_share = (
            round(min(detail.busy_seconds / detail.uptime_seconds, 1.0), 4)
            if detail.uptime_seconds > 0
            else None
        )
        return view.model_copy(
            update={
                "master_version": detail.master_version,
                "reachable": True,
                "detail": detail,
                "busy_share": busy_share,
                "history": progress.points,
                "reconciliations": progress.reconciliations,
                "eval_interval_s": progress.eval_interval_s,
            }
        )

    def _edge_view(
        self, edge: EdgeRecord, cloud: DashboardCloud | None, now: float
    ) -> DashboardEdge:
        session: EdgeSessionStatus | None = None
        if cloud is not None and cloud.detail is not None:
            session = cloud.detail.edges.get(edge.edge_id)
        # The cloud's count of applied steps is exact; the edge's heartbeat is the fallback
        # while its cloud does not answer.
        steps = session.steps_applied if session is not None else edge.step
        rate = self._rates.setdefault(edge.edge_id, _StepRate()).observe(now, steps)
        master_version = None if cloud is None else cloud.master_version
        replica_version = session.replica_version if session is not None else edge.edge_version
        lag = None if master_version is None else master_version - replica_version
        reconciliations = None if cloud is None else cloud.reconciliations.get(edge.edge_id, 0)
        return DashboardEdge(
            edge_id=edge.edge_id,
            name=edge.name,
            cloud_id=edge.cloud_id,
            status=edge.status.value,
            connected=None if session is None else session.connected,
            last_heartbeat=edge.last_heartbeat,
            step=edge.step,
            steps_applied=steps,
            step_rate=rate,
            edge_version=edge.edge_version,
            replica_version=replica_version,
            master_version=master_version,
            lag=lag,
            samples_applied=None if session is None else session.samples_applied,
            bytes_up=None if session is None else session.bytes_up,
            bytes_down=None if session is None else session.bytes_down,
            duplicates_dropped=None if session is None else session.duplicates_dropped,
            reconciliations=reconciliations,
            # This edge's own staleness distribution, as its cloud counts it.
            staleness=None if session is None else session.staleness,
        )


def _json_object(reply: httpx.Response) -> dict[str, Any]:
    """A reply's JSON object; NaN and infinity (not JSON, yet Python's parser takes them)
    are refused, so nothing the page cannot parse is passed on."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    value = json.loads(reply.content, parse_constant=refuse)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _asset(name: str) -> bytes:
    return resources.files("simultrain.coordinator").joinpath("static", name).read_bytes()


def register_dashboard(app: FastAPI, feed: DashboardFeed) -> None:
    """Add the dashboard's routes to the coordinator's app."""
    headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"}

    @app.get("/dashboard", tags=["status"], response_class=HTMLResponse)
    async def dashboard_page() -> HTMLResponse:
        """The live dashboard (a page for a browser)."""
        return HTMLResponse(_asset("dashboard.html"), headers=headers)

    @app.get("/dashboard/{name}", tags=["status"], include_in_schema=False)
    async def dashboard_asset(name: str) -> Response:
        media_type = ASSETS.get(name)
        if media_type is None:
            raise StarletteHTTPException(404, f"no dashboard asset {name!r}")
        return Response(_asset(name), media_type=media_type, headers=headers)

    @app.get("/v1/dashboard", tags=["status"])
    async def dashboard_data() -> JSONResponse:
        """What the dashboard shows: the registry, and each cloud's figures as it reports."""
        snapshot = await feed.snapshot()
        return JSONResponse(snapshot.model_dump(mode="json"), headers={"Cache-Control": "no-store"})
