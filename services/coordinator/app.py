"""The coordinator's HTTP API: a thin FastAPI layer over :class:`Coordinator`.

Endpoints (JSON; every error is ``{"error": {"code", "message"}}`` with a 4xx/503 status):

- ``POST /v1/clouds``, ``POST /v1/clouds/{id}/heartbeat``, ``GET /v1/clouds``
- ``POST /v1/edges``, ``POST /v1/edges/{id}/heartbeat``, ``GET /v1/edges``,
  ``GET /v1/edges/{id}``, ``DELETE /v1/edges/{id}``
- ``GET /v1/versions``, ``GET /v1/config``, ``GET /healthz``, ``GET /readyz``
- ``GET /dashboard`` (the live dashboard page), ``GET /v1/dashboard`` (what it draws; see
  ``dashboard.py``)

Credentials when authentication is on (SECURITY.md; see ``settings.py``):

- registering an edge: the enrollment secret, header ``X-Enrollment-Secret`` (or body field
  ``enrollment_secret``): missing → 401, wrong → 403. The reply carries a token bound to
  the new edge id.
- edge heartbeat: ``Authorization: Bearer <edge token>``: missing, expired or forged → 401,
  a token of another edge → 403. The reply carries a fresh token.
- clouds (register, heartbeat) and ``DELETE /v1/edges/{id}``: ``Authorization: Bearer
  <admin token>``: missing → 401, wrong → 403.
- reads (``GET``) are open: they show ids, versions and health, never a credential.

Handlers are plain ``def``: FastAPI runs them in its worker threads, so store writes never
block the event loop (see ``store.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Annotated

from fastapi import FastAPI, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from simultrain.shared import auth

from . import schedule
from .dashboard import DashboardFeed, register_dashboard
from .errors import ApiError, CoordinatorError, StoreError
from .health import HealthMonitor
from .records import CloudRecord, EdgeRecord, Status
from .registry import Assignment, Clock, Coordinator
from .schemas import (
    CloudHeartbeat,
    CloudHeartbeatReply,
    CloudRegistered,
    CloudRegistration,
    CloudVersionView,
    CloudView,
    ConfigView,
    EdgeHeartbeat,
    EdgeHeartbeatReply,
    EdgeRegistered,
    EdgeRegistration,
    EdgeVersionView,
    EdgeView,
    ErrorBody,
    HealthView,
    ReadyView,
    VersionsView,
)
from .settings import CoordinatorSettings
from .store import CoordinatorStore, open_store

__all__ = ["create_app"]

logger = logging.getLogger("simultrain.coordinator")

# How many upcoming reconciliation steps a reply lists.
NEXT_RECONCILIATIONS = 3

_ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorBody} for status in (401, 403, 404, 422, 503)
}


def _error(
    status_code: int,
    code: str,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    details: list[dict[str, object]] | None = None,
) -> JSONResponse:
    error: dict[str, object] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return JSONResponse({"error": error}, status_code=status_code, headers=headers)


def _bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else ``None``."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _refuse(request: Request, status_code: int, code: str, message: str) -> ApiError:
    # Logged without the credential itself (SECURITY.md: secrets are never logged).
    client = request.client.host if request.client else "?"
    logger.warning("refused %s %s from %s: %s", request.method, request.url.path, client, code)
    headers = {"WWW-Authenticate": "Bearer"} if status_code == 401 else None
    return ApiError(status_code, code, message, headers)


def create_app(
    settings: CoordinatorSettings,
    store: CoordinatorStore | None = None,
    *,
    clock: Clock | None = None,
) -> FastAPI:
    """Build the coordinator app.

    ``store``: given, the caller owns it (and closes it); omitted, the app opens
    ``settings.db_path`` and closes it at shutdown. ``clock``: seconds since the epoch
    (default ``time.time``); tests pass a fake one. The health sweep runs in the lifespan.
    """
    owns_store = store is None
    if store is None:
        store = open_store(settings.db_path)
    coordinator = Coordinator(store, settings, clock=clock)
    monitor = HealthMonitor(coordinator, interval_s=settings.heartbeat_interval_s)
    token_keys = settings.token_keys()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.auth_enabled:
            logger.warning(
                "authentication is OFF (development mode): anyone who can reach this "
                "coordinator may register edges and clouds; set enrollment_secret, token_key "
                "and admin_token to turn it on"
            )
        task = asyncio.create_task(monitor.run(), name="coordinator-health")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if owns_store:
                store.close()

    app = FastAPI(
        title="SimulTrain coordinator",
        version="1",
        lifespan=lifespan,
        responses=_ERROR_RESPONSES,
    )
    app.state.coordinator = coordinator
    app.state.health_monitor = monitor
    app.state.settings = settings

    # --- errors: one JSON shape for all of them ----------------------------------------

    retry_after = {"Retry-After": str(max(1, round(settings.heartbeat_interval_s)))}

    @app.exception_handler(CoordinatorError)
    async def _coordinator_error(request: Request, exc: CoordinatorError) -> JSONResponse:
        headers = exc.headers if isinstance(exc, ApiError) else None
        if exc.status_code == 503:
            headers = retry_after
        return _error(exc.status_code, exc.code, exc.message, headers=headers)

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError) -> JSONResponse:
        logger.error("store unavailable: %s", exc)
        return _error(503, "store_unavailable", str(exc), headers=retry_after)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Only location, message and type: pydantic's "input" could echo a secret and its
        # "ctx" may hold exception objects that are not JSON.
        details: list[dict[str, object]] = []
        summary: list[str] = []
        for error in exc.errors():
            loc = [str(part) for part in error.get("loc", ())]
            msg = str(error.get("msg", ""))
            details.append({"loc": loc, "msg": msg, "type": str(error.get("type", ""))})
            summary.append(f"{'.'.join(loc)}: {msg}")
        message = "; ".join(summary[:5]) or "invalid request"
        return _error(422, "invalid_request", message, details=details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return _error(
            exc.status_code,
            codes.get(exc.status_code, f"http_{exc.status_code}"),
            str(exc.detail),
            headers=exc.headers,
        )

    # --- credentials --------------------------------------------------------------------

    def require_admin(request: Request, authorization: str | None) -> None:
        if not settings.auth_enabled or settings.admin_token is None:
            return
        token = _bearer(authorization)
        if token is None:
            raise _refuse(request, 401, "admin_token_required", "an admin bearer token is required")
        if not auth.constant_time_equals(token, settings.admin_token.get_secret_value()):
            raise _refuse(request, 403, "admin_token_invalid", "the admin token is not valid")

    def require_enrollment(
        request: Request, header_secret: str | None, body: EdgeRegistration | None
    ) -> None:
        if not settings.auth_enabled or settings.enrollment_secret is None:
            return
        presented = header_secret
        if not presented and body is not None and body.enrollment_secret is not None:
            presented = body.enrollment_secret.get_secret_value()
        if not presented:
            raise _refuse(
                request,
                401,
                "enrollment_secret_required",
                "registering an edge requires the enrollment secret (X-Enrollment-Secret)",
            )
        if not auth.constant_time_equals(presented, settings.enrollment_secret.get_secret_value()):
            raise _refuse(
                request, 403, "enrollment_secret_invalid", "the enrollment secret is not valid"
            )

    def require_edge_token(request: Request, edge_id: str, authorization: str | None) -> None:
        if not settings.auth_enabled:
            return
        try:
            claims = auth.verify_token(_bearer(authorization), token_keys, now=coordinator.now())
        except auth.AuthError as exc:
            raise _refuse(request, 401, exc.auth_code, str(exc)) from exc
        if claims.edge_id != edge_id:
            raise _refuse(
                request, 403, "token_wrong_edge", "the token is bound to a different edge"
            )

    def token_for(edge_id: str) -> tuple[str | None, int | None]:
        if not settings.auth_enabled or settings.token_key is None:
            return None, None
        now = coordinator.now()
        key = settings.token_key.get_secret_value()
        token = auth.issue_token(edge_id, key, settings.token_ttl_s, now=now)
        return token, auth.verify_token(token, [key], now=now).expires_at

    # --- views --------------------------------------------------------------------------

    def edge_view(edge: EdgeRecord, cloud: CloudRecord | None) -> EdgeView:
        return EdgeView(
            edge_id=edge.edge_id,
            name=edge.name,
            shard_index=edge.shard_index,
            shard_count=edge.shard_count,
            cloud_id=edge.cloud_id,
            cloud_url=None if cloud is None else cloud.url,
            status=edge.status,
            last_heartbeat=edge.last_heartbeat,
            registered_at=edge.registered_at,
            edge_version=edge.edge_version,
            step=edge.step,
            reconcile_offset=edge.reconcile_offset,
        )

    def next_reconciliations(edge: EdgeRecord) -> list[int]:
        return schedule.next_due(
            edge.step,
            edge.reconcile_offset,
            coordinator.run_config.reconcile_every,
            NEXT_RECONCILIATIONS,
        )

    # --- clouds -------------------------------------------------------------------------

    @app.post("/v1/clouds", status_code=201, tags=["clouds"])
    def register_cloud(
        request: Request,
        body: CloudRegistration,
        authorization: Annotated[str | None, Header()] = None,
    ) -> CloudRegistered:
        """Register a cloud (again): the same URL keeps its cloud id."""
        require_admin(request, authorization)
        cloud = coordinator.register_cloud(body.url, body.master_version)
        return CloudRegistered(
            cloud_id=cloud.cloud_id,
            heartbeat_interval_s=settings.heartbeat_interval_s,
            heartbeat_timeout_s=settings.heartbeat_timeout_s,
        )

    @app.post("/v1/clouds/{cloud_id}/heartbeat", tags=["clouds"])
    def cloud_heartbeat(
        request: Request,
        cloud_id: str,
        body: CloudHeartbeat,
        authorization: Annotated[str | None, Header()] = None,
    ) -> CloudHeartbeatReply:
        """Report the master version and connected edges; returns the edges assigned here."""
        require_admin(request, authorization)
        cloud, assigned = coordinator.cloud_heartbeat(
            cloud_id, body.master_version, body.connected_edges
        )
        return CloudHeartbeatReply(
            cloud_id=cloud.cloud_id,
            status=cloud.status,
            assigned_edges=assigned,
            revoked_edges=coordinator.revocations(),
        )

    @app.get("/v1/clouds", tags=["clouds"])
    def list_clouds() -> list[CloudView]:
        return [
            CloudView(
                cloud_id=c.cloud_id,
                url=c.url,
                status=c.status,
                last_heartbeat=c.last_heartbeat,
                registered_at=c.registered_at,
                master_version=c.master_version,
                connected_edges=list(c.connected_edges),
                live_edges=load,
            )
            for c, load in coordinator.list_clouds()
        ]

    # --- edges --------------------------------------------------------------------------

    @app.post("/v1/edges", status_code=201, tags=["edges"])
    def register_edge(
        request: Request,
        body: EdgeRegistration | None = None,
        x_enrollment_secret: Annotated[str | None, Header()] = None,
    ) -> EdgeRegistered:
        """Enroll an edge: its id, assigned cloud, run configuration, schedule and token."""
        require_enrollment(request, x_enrollment_secret, body)
        body = body or EdgeRegistration.model_validate({})
        assignment = coordinator.register_edge(
            name=body.name, shard_index=body.shard_index, shard_count=body.shard_count
        )
        edge, cloud = assignment.edge, assignment.cloud
        token, expires_at = token_for(edge.edge_id)
        return EdgeRegistered(
            edge_id=edge.edge_id,
            cloud_id=cloud.cloud_id,
            cloud_url=cloud.url,
            run_config=coordinator.run_config,
            heartbeat_interval_s=settings.heartbeat_interval_s,
            heartbeat_timeout_s=settings.heartbeat_timeout_s,
            token=token,
            token_expires_at=expires_at,
            reconcile_every=coordinator.run_config.reconcile_every,
            reconcile_offset=edge.reconcile_offset,
            next_reconciliations=next_reconciliations(edge),
        )

    @app.post("/v1/edges/{edge_id}/heartbeat", tags=["edges"])
    def edge_heartbeat(
        request: Request,
        edge_id: str,
        body: EdgeHeartbeat,
        authorization: Annotated[str | None, Header()] = None,
    ) -> EdgeHeartbeatReply:
        """Report the replica version and step; returns the (possibly new) assignment."""
        require_edge_token(request, edge_id, authorization)
        assignment: Assignment = coordinator.edge_heartbeat(
            edge_id, body.edge_version, body.step, finished=body.finished
        )
        edge, cloud = assignment.edge, assignment.cloud
        token, expires_at = token_for(edge.edge_id)
        return EdgeHeartbeatReply(
            edge_id=edge.edge_id,
            cloud_id=cloud.cloud_id,
            cloud_url=cloud.url,
            cloud_status=cloud.status,
            master_version=cloud.master_version,
            heartbeat_interval_s=settings.heartbeat_interval_s,
            token=token,
            token_expires_at=expires_at,
            reconcile_every=coordinator.run_config.reconcile_every,
            reconcile_offset=edge.reconcile_offset,
            next_reconciliations=next_reconciliations(edge),
        )

    @app.get("/v1/edges", tags=["edges"])
    def list_edges() -> list[EdgeView]:
        clouds = {c.cloud_id: c for c, _ in coordinator.list_clouds()}
        return [edge_view(e, clouds.get(e.cloud_id)) for e in coordinator.list_edges()]

    @app.get("/v1/edges/{edge_id}", tags=["edges"])
    def get_edge(edge_id: str) -> EdgeView:
        assignment = coordinator.get_edge(edge_id)
        return edge_view(assignment.edge, assignment.cloud)

    @app.delete("/v1/edges/{edge_id}", status_code=204, tags=["edges", "admin"])
    def remove_edge(
        request: Request,
        edge_id: str,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Remove an edge (admin). Its token stays valid until it expires; the cloud should
        also refuse edges the coordinator no longer lists."""
        require_admin(request, authorization)
        coordinator.remove_edge(edge_id)
        return Response(status_code=204)

    # --- versions, config, health -------------------------------------------------------

    @app.get("/v1/versions", tags=["status"])
    def versions() -> VersionsView:
        report = coordinator.versions()
        lags = [e.lag for e in report.edges if e.lag is not None]
        return VersionsView(
            clouds=[
                CloudVersionView(
                    cloud_id=c.cloud_id, url=c.url, status=c.status, master_version=c.master_version
                )
                for c in report.clouds
            ],
            edges=[
                EdgeVersionView(
                    edge_id=e.edge.edge_id,
                    cloud_id=e.edge.cloud_id,
                    status=e.edge.status,
                    edge_version=e.edge.edge_version,
                    step=e.edge.step,
                    master_version=e.master_version,
                    lag=e.lag,
                )
                for e in report.edges
            ],
            max_lag=max(lags) if lags else None,
        )

    @app.get("/v1/config", tags=["status"])
    def config() -> ConfigView:
        return ConfigView(
            run_config=coordinator.run_config,
            heartbeat_interval_s=settings.heartbeat_interval_s,
            heartbeat_timeout_s=settings.heartbeat_timeout_s,
            auth_enabled=settings.auth_enabled,
        )

    @app.get("/healthz", tags=["status"])
    async def healthz() -> HealthView:
        """Liveness: the process answers."""
        return HealthView(status="ok")

    @app.get("/readyz", tags=["status"])
    def readyz() -> ReadyView:
        """Readiness: the store answers (503 ``store_unavailable`` otherwise)."""
        store.ping()
        clouds = coordinator.list_clouds()
        edges = coordinator.list_edges()
        return ReadyView(
            status="ready",
            clouds_up=sum(c.status is Status.UP for c, _ in clouds),
            edges_up=sum(e.status is Status.UP for e in edges),
        )

    # The live dashboard (GET /dashboard, GET /v1/dashboard); tests swap the feed's transport.
    app.state.dashboard = DashboardFeed(coordinator)
    register_dashboard(app, app.state.dashboard)

    return app
