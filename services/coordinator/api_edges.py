"""``/v1/edges``: edges enroll, heartbeat and are listed, read and removed (PROTOCOL.md §9).

Enrollment and the heartbeat, the requests a fleet makes, are ``async`` and run their store
transaction with ``asyncio.to_thread``: one hop to a worker thread per request, where a plain
``def`` handler takes two (the handler, then the serialization of its reply).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response

from .api_common import CoordinatorDep, CredentialsDep, edge_view, next_reconciliations
from .credentials import Credentials
from .registry import Assignment, Coordinator
from .schemas import (
    EdgeHeartbeat,
    EdgeHeartbeatReply,
    EdgeRegistered,
    EdgeRegistration,
    EdgeView,
)

__all__ = ["router"]

router = APIRouter(prefix="/v1/edges", tags=["edges"])


def _assignment_fields(
    coordinator: Coordinator, credentials: Credentials, assignment: Assignment
) -> dict[str, Any]:
    """What enrollment and an edge heartbeat both answer: the cloud, the cadence, a fresh
    token and the reconciliation schedule (PROTOCOL.md §9)."""
    edge, cloud, cadence = assignment.edge, assignment.cloud, assignment.cadence
    token, expires_at = credentials.token_for(edge.edge_id)
    return {
        "edge_id": edge.edge_id,
        "cloud_id": cloud.cloud_id,
        "cloud_url": cloud.url,
        "heartbeat_interval_s": cadence.interval_s,
        "heartbeat_timeout_s": cadence.timeout_s,
        "streaming_heartbeat_interval_s": cadence.streaming_interval_s,
        "token": token,
        "token_expires_at": expires_at,
        "reconcile_every": coordinator.run_config.reconcile_every,
        "reconcile_offset": edge.reconcile_offset,
        "next_reconciliations": next_reconciliations(coordinator, edge),
    }


@router.post("", status_code=201)
async def register_edge(
    request: Request,
    coordinator: CoordinatorDep,
    credentials: CredentialsDep,
    body: EdgeRegistration | None = None,
    x_enrollment_secret: Annotated[str | None, Header()] = None,
) -> EdgeRegistered:
    """Enroll an edge: its id, assigned cloud, run configuration, schedule, cadence and
    token. The same ``enrollment_id`` again returns the same edge."""
    credentials.require_enrollment(request, x_enrollment_secret, body)
    body = body or EdgeRegistration.model_validate({})
    assignment = await asyncio.to_thread(
        functools.partial(
            coordinator.register_edge,
            name=body.name,
            shard_index=body.shard_index,
            shard_count=body.shard_count,
            enrollment_id=body.enrollment_id,
        )
    )
    return EdgeRegistered(
        **_assignment_fields(coordinator, credentials, assignment),
        run_config=coordinator.run_config,
    )


@router.post("/{edge_id}/heartbeat")
async def edge_heartbeat(
    request: Request,
    edge_id: str,
    body: EdgeHeartbeat,
    coordinator: CoordinatorDep,
    credentials: CredentialsDep,
    authorization: Annotated[str | None, Header()] = None,
) -> EdgeHeartbeatReply:
    """Report the replica version and step; returns the (possibly new) assignment and the
    cadence to heartbeat at."""
    credentials.require_edge_token(request, edge_id, authorization)
    assignment = await asyncio.to_thread(
        coordinator.edge_heartbeat,
        edge_id,
        body.edge_version,
        body.step,
        streaming=body.streaming,
        finished=body.finished,
    )
    return EdgeHeartbeatReply(
        **_assignment_fields(coordinator, credentials, assignment),
        cloud_status=assignment.cloud.status,
        master_version=assignment.cloud.master_version,
    )


@router.get("")
def list_edges(coordinator: CoordinatorDep) -> list[EdgeView]:
    urls = {c.cloud_id: c.url for c, _ in coordinator.list_clouds()}
    return [edge_view(e, urls.get(e.cloud_id)) for e in coordinator.list_edges()]


@router.get("/{edge_id}")
def get_edge(edge_id: str, coordinator: CoordinatorDep) -> EdgeView:
    assignment = coordinator.get_edge(edge_id)
    return edge_view(assignment.edge, assignment.cloud.url)


@router.delete("/{edge_id}", status_code=204, tags=["admin"])
def remove_edge(
    request: Request,
    edge_id: str,
    coordinator: CoordinatorDep,
    credentials: CredentialsDep,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    """Remove an edge (admin). Its token stays valid until it expires; the cloud should
    also refuse edges the coordinator no longer lists."""
    credentials.require_admin(request, authorization)
    coordinator.remove_edge(edge_id)
    return Response(status_code=204)
