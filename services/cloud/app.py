"""The cloud's HTTP and WebSocket API: a thin FastAPI layer over :class:`CloudService`.

- ``WS /v1/stream``: one session per edge; the handler only moves bytes between the socket and
  the sans-I/O :class:`CloudSession`, and frames between the session and the service.
- ``GET /healthz`` (the process serves), ``GET /readyz`` (the master is built, with a
  coordinator registered, and as a replica a member of its group), ``GET /v1/status``,
  ``GET /v1/session-spec``, ``GET /v1/eval``,
  ``GET /v1/history`` (loss and held-out accuracy over time, for the coordinator's dashboard),
  ``GET /v1/model`` (safetensors), ``GET /metrics`` (Prometheus).

Errors are JSON ``{"error": {"code", "message"}}`` with a 4xx/5xx status, never a bare 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI, Request, Response, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from safetensors.torch import save as save_safetensors
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.websockets import WebSocketDisconnect

from simultrain.shared import auth
from simultrain.shared.contracts import CloudHistory, CloudStatus, Evaluation, SessionSpec
from simultrain.shared.errors import IllegalTransition, ProtocolError, Unauthorized
from simultrain.shared.protocol import (
    Act,
    Bye,
    CloudSession,
    EGrad,
    Error,
    Frame,
    Hello,
    negotiate,
)
from simultrain.shared.training.config import RunConfig

from .coordinator_client import CoordinatorLink, fetch_run_config
from .evaluation import PeriodicEvaluator
from .service import CloudService, Connection, TokenBucket
from .settings import CloudSettings

__all__ = ["create_app"]

log = logging.getLogger("simultrain.cloud")


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def create_app(settings: CloudSettings, *, run: RunConfig | None = None) -> FastAPI:
    """The cloud app. ``run`` overrides the coordinator's and the settings' run config."""
    lifespan = _lifespan(settings, run)
    app = FastAPI(title="SimulTrain cloud", version="1", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid_request", "; ".join(str(e.get("msg")) for e in exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "http_error", str(exc.detail))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> Response:
        service = getattr(request.app.state, "service", None)
        if service is None or not service.ready:
            return _error(503, "not_ready", "the master is not ready")
        if settings.coordinator_url and service.cloud_id is None:
            # Edges find this cloud through the coordinator: until it knows us, we are not
            # ready for them (compose's service_healthy and Kubernetes readiness wait on it).
            return _error(503, "not_registered", "not yet registered with the coordinator")
        if service.replicas is not None and service.replicas.problem is not None:
            # A replica outside its group would train a master of its own (docs/REPLICAS.md).
            return _error(503, "replica_group_unreachable", service.replicas.problem)
        return JSONResponse({"status": "ready", "master_version": service.master.version})

    @app.get("/v1/status")
    async def status(request: Request) -> CloudStatus:
        return service_of(request).status()

    @app.get("/v1/session-spec")
    async def session_spec(request: Request) -> SessionSpec:
        """The cut shape, window, limits and edge-stage tensors of a session (PROTOCOL §3.2)."""
        return service_of(request).session_spec()

    @app.get("/v1/eval")
    async def evaluate(request: Request) -> Evaluation:
        return await service_of(request).evaluate()

    @app.get("/v1/history")
    async def history(request: Request) -> CloudHistory:
        """The master's loss and held-out accuracy over time (one point per periodic
        evaluation) and the reconciliations sent to each edge: what the dashboard draws."""
        metrics = service_of(request).metrics
        return CloudHistory(
            eval_interval_s=settings.eval_interval_s,
            points=list(metrics.history.points),
            reconciliations=dict(metrics.reconciliations_by_edge),
        )

    @app.get("/v1/model")
    async def model(request: Request) -> Response:
        refused = _refuse_non_admin(settings, request)
        if refused is not None:
            return refused
        return await _model_file(service_of(request))

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(
            generate_latest(service_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

    app.add_api_websocket_route("/v1/stream", _stream)
    return app


def _lifespan(
    settings: CloudSettings, run: RunConfig | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start-up (the master built off the event loop, the coordinator link, periodic
    evaluation) and shutdown (sessions closed with 1012, a last checkpoint)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        config = run
        if config is None and settings.coordinator_url:
            config = await fetch_run_config(settings)
        if config is None:
            config = settings.run
        # Loading data and building the model take a while: off the event loop.
        service = await asyncio.to_thread(CloudService, settings, config)
        service.bound_url = asyncio.get_running_loop().create_future()
        app.state.service = service
        if service.replicas is not None:
            service.replicas.start()  # joins its group in the background (docs/REPLICAS.md)
        link: CoordinatorLink | None = None
        if settings.coordinator_url:
            link = CoordinatorLink(settings, service)
            await link.start()
        service.ready = True
        evaluation: asyncio.Task[None] | None = None
        if settings.eval_interval_s > 0:
            evaluator = PeriodicEvaluator(service, settings.eval_interval_s)
            evaluation = asyncio.create_task(evaluator.run(), name="cloud-eval")
        try:
            yield
        finally:
            service.ready = False
            if evaluation is not None:
                evaluation.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await evaluation
            if link is not None:
                await link.stop()
            for conn in list(service.connections.values()):
                # 1012 "service restart": the edge reconnects at once (uvicorn does the same
                # for connections it closes itself).
                with contextlib.suppress(RuntimeError):
                    await conn.websocket.close(code=1012, reason="cloud restarting")
            await service.checkpoint()  # on SIGTERM: nothing applied is lost
            await asyncio.to_thread(service.shutdown)

    return lifespan


def _refuse_non_admin(settings: CloudSettings, request: Request) -> JSONResponse | None:
    """The refusal of a request without the admin token, or ``None`` to serve it."""
    expected = settings.admin_secret()
    if expected is None:
        return None  # development: no admin token configured
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return _error(401, "admin_token_missing", "this endpoint needs the admin token")
    if not auth.constant_time_equals(presented, expected):
        log.warning("refused %s: wrong admin token", request.url.path)
        return _error(403, "admin_token_invalid", "wrong admin token")
    return None


def service_of(request: Request | WebSocket) -> CloudService:
    service: CloudService = request.app.state.service
    return service


async def _model_file(service: CloudService) -> Response:
    """``GET /v1/model``: the whole model as safetensors, with its id and master version."""
    state = await service.model_state()
    body = save_safetensors(
        state,
        metadata={
            "model_id": service.spec.model_id,
            "master_version": str(service.master.version),
            "format": "simultrain full model: edge.* and cloud.* tensors",
        },
    )
    return Response(
        body,
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{service.spec.model_id}.safetensors"'
        },
    )


async def _stream(websocket: WebSocket) -> None:
    """``WS /v1/stream``: negotiate the version, check a header token, then serve the
    session until it ends (PROTOCOL.md §1.1, §7)."""
    service = service_of(websocket)
    # PROTOCOL.md §1.1: the edge offers `simultrain.v<N>` subprotocols, newest first;
    # the cloud picks the newest it speaks too (RFC 6455 §4.2.2). None offered: the
    # HELLO's `v` decides (the first release offered none).
    negotiation = negotiate(websocket.scope.get("subprotocols") or [])
    conn = Connection(
        websocket,
        CloudSession(
            limits=service.limits,
            egrad_needs_grad=service.schedule.egrad_needs_grad,
            version=negotiation.version,
        ),
    )
    if negotiation.refusal is not None:
        # Versions offered, none spoken here: accept without a subprotocol and refuse
        # at once, before any frame, with 4000 and the versions this cloud speaks.
        await websocket.accept()
        service.metrics.rejected.labels(negotiation.refusal.code.value).inc()
        await conn.fail(negotiation.refusal)
        return
    header = websocket.headers.get("authorization")
    if service.auth_enabled and header is not None:
        # Checked before the upgrade completes: a bad token never gets a session
        # (the client sees HTTP 403). Without the header, HELLO's token is checked.
        scheme, _, token = header.partition(" ")
        try:
            if scheme.lower() != "bearer":
                raise Unauthorized("expected an Authorization: Bearer token")
            conn.token = service.authenticate(token)
        except Unauthorized as exc:
            log.warning("refused a stream: %s", exc.reason)
            service.metrics.rejected.labels(exc.code.value).inc()
            await websocket.close(code=exc.close_code, reason=exc.reason)
            return
    conn.bucket = TokenBucket(service.settings.max_messages_per_s)
    await websocket.accept(subprotocol=negotiation.subprotocol)
    try:
        await _serve_session(service, conn)
    except WebSocketDisconnect:
        pass
    finally:
        conn.session.connection_closed()
        await service.close(conn)


async def _serve_session(service: CloudService, conn: Connection) -> None:
    """The thin loop: socket bytes → session → frames → service → frames → socket."""
    websocket = conn.websocket
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        payload: bytes | str = data if data is not None else message.get("text") or ""
        conn.bytes_in += len(payload)
        if conn.state is not None:
            conn.state.bytes_in += len(payload)
        service.metrics.bytes.labels("in").inc(len(payload))
        try:
            frames = conn.session.receive_data(payload)
            for frame in frames:
                service.metrics.frames.labels(frame.type).inc()
            for frame in _whole(frames):
                if isinstance(frame, Hello):
                    await service.open(conn, frame)
                elif isinstance(frame, Act | EGrad):
                    await service.handle(conn, frame)
                elif isinstance(frame, Bye):
                    # An edge that leaves may forget its batches: make them durable first.
                    await service.checkpoint()
                    await websocket.close(code=1000, reason="bye")
                    return
                elif isinstance(frame, Error):
                    # The edge ends the session and closes it (PROTOCOL.md §7): nothing is
                    # answered; what still comes before its close is discarded unread.
                    log.warning(
                        "%s ended its session: %s %s", conn.edge_id, frame.code, frame.reason
                    )
                else:
                    raise IllegalTransition(f"the cloud does not accept {frame.type} frames")
        except ProtocolError as exc:
            service.metrics.rejected.labels(exc.code.value).inc()
            await conn.fail(exc)
            return


def _whole(frames: list[Frame]) -> list[Frame]:
    """The session hands a piggybacked EGRAD over before the ACT that carried it; the
    training runtime takes them as one frame again, so that an ACT it must refuse does not
    apply the EGRAD riding on it (a refused message changes nothing)."""
    if len(frames) == 2 and isinstance(frames[0], EGrad) and isinstance(frames[1], Act):
        return [dataclasses.replace(frames[1], egrad=frames[0])]
    return frames
