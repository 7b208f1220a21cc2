"""The coordinator's HTTP API: a thin FastAPI layer over :class:`Coordinator`.

Endpoints (JSON; every error is ``{"error": {"code", "message"}}`` with a 4xx/503 status),
one router per concern:

- ``api_clouds.py``: ``POST /v1/clouds``, ``POST /v1/clouds/{id}/heartbeat``, ``GET /v1/clouds``
- ``api_edges.py``: ``POST /v1/edges``, ``POST /v1/edges/{id}/heartbeat``, ``GET /v1/edges``,
  ``GET /v1/edges/{id}``, ``DELETE /v1/edges/{id}``
- ``api_status.py``: ``GET /v1/versions``, ``GET /v1/config``, ``GET /healthz``, ``GET /readyz``
- ``dashboard.py``: ``GET /dashboard`` (the live dashboard page), ``GET /v1/dashboard``

Who may call what is ``credentials.py``. Store transactions never run on the event loop:
most handlers are plain ``def``, which FastAPI runs in its worker threads; the requests a
fleet makes all the time (enrollment, edge and cloud heartbeats) are ``async`` and hand their
transaction to a worker thread themselves (``asyncio.to_thread``), saving a hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import api_clouds, api_edges, api_status
from .api_common import ERROR_RESPONSES
from .credentials import Credentials
from .dashboard import DashboardFeed, dashboard_router
from .errors import ApiError, CoordinatorError, StoreError
from .health import HealthMonitor
from .registry import Clock, Coordinator
from .settings import CoordinatorSettings
from .store import CoordinatorStore, open_store

__all__ = ["create_app"]

logger = logging.getLogger("simultrain.coordinator")


def create_app(
    settings: CoordinatorSettings,
    store: CoordinatorStore | None = None,
    *,
    clock: Clock | None = None,
) -> FastAPI:
    """Build the coordinator app.

    ``store``: given, the caller owns it (and closes it); omitted, the app opens the store
    the settings name (``database_url``, else ``db_path``) and closes it at shutdown.
    ``clock``: seconds since the epoch (default ``time.time``); tests pass a fake one. The
    health sweep runs in the lifespan.
    """
    owns_store = store is None
    if store is None:
        url, password = settings.database_url, settings.database_password
        store = open_store(
            settings.db_path,
            database_url=None if url is None else url.get_secret_value(),
            database_password=None if password is None else password.get_secret_value(),
            pool_size=settings.database_pool_size,
        )
    coordinator = Coordinator(store, settings, clock=clock)
    monitor = HealthMonitor(coordinator, interval_s=settings.heartbeat_interval_s)

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
        responses=ERROR_RESPONSES,
    )
    app.state.coordinator = coordinator
    app.state.health_monitor = monitor
    app.state.settings = settings
    app.state.credentials = Credentials(settings, coordinator.now)
    _install_error_handlers(app, settings)
    for router in (api_clouds.router, api_edges.router, api_status.router):
        app.include_router(router)
    # The live dashboard (GET /dashboard, GET /v1/dashboard); tests swap the feed's transport.
    app.state.dashboard = DashboardFeed(coordinator)
    app.include_router(dashboard_router)
    return app


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


def _install_error_handlers(app: FastAPI, settings: CoordinatorSettings) -> None:
    """One JSON shape for every error (``{"error": {"code", "message"}}``)."""
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
