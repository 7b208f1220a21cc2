"""``/v1/clouds``: clouds register, heartbeat (reporting their sessions) and are listed.

The heartbeat is ``async`` and runs its store transaction with ``asyncio.to_thread`` (one
worker-thread hop, as in ``api_edges.py``).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Annotated

from fastapi import APIRouter, Header, Request

from .api_common import CoordinatorDep, CredentialsDep, SettingsDep
from .schemas import (
    CloudHeartbeat,
    CloudHeartbeatReply,
    CloudRegistered,
    CloudRegistration,
    CloudView,
)

__all__ = ["router"]

router = APIRouter(prefix="/v1/clouds", tags=["clouds"])


@router.post("", status_code=201)
def register_cloud(
    request: Request,
    body: CloudRegistration,
    coordinator: CoordinatorDep,
    credentials: CredentialsDep,
    settings: SettingsDep,
    authorization: Annotated[str | None, Header()] = None,
) -> CloudRegistered:
    """Register a cloud (again): the same URL keeps its cloud id."""
    credentials.require_admin(request, authorization)
    cloud = coordinator.register_cloud(body.url, body.master_version)
    return CloudRegistered(
        cloud_id=cloud.cloud_id,
        heartbeat_interval_s=settings.heartbeat_interval_s,
        heartbeat_timeout_s=settings.heartbeat_timeout_s,
    )


# Fields a request did not ask for are left out, so an older cloud sees the reply it knows.
@router.post("/{cloud_id}/heartbeat", response_model_exclude_none=True)
async def cloud_heartbeat(
    request: Request,
    cloud_id: str,
    body: CloudHeartbeat,
    coordinator: CoordinatorDep,
    credentials: CredentialsDep,
    authorization: Annotated[str | None, Header()] = None,
) -> CloudHeartbeatReply:
    """Report the master version and the edges' sessions (the whole set, or what changed
    since the last heartbeat); returns the edges assigned here and revoked edges."""
    credentials.require_admin(request, authorization)
    changes = body.session_changes
    beat = await asyncio.to_thread(
        functools.partial(
            coordinator.cloud_heartbeat,
            cloud_id,
            body.master_version,
            body.connected_edges if changes is None else None,
            opened=() if changes is None else changes.opened,
            closed=() if changes is None else changes.closed,
            list_assigned=body.list_assigned_edges,
        )
    )
    return CloudHeartbeatReply(
        cloud_id=beat.cloud.cloud_id,
        status=beat.cloud.status,
        assigned_edges=beat.assigned_edges,
        revoked_edges=beat.revoked_edges,
        sessions_snapshot_wanted=True if beat.sessions_lost else None,
    )


@router.get("")
def list_clouds(coordinator: CoordinatorDep) -> list[CloudView]:
    sessions = coordinator.sessions()
    return [
        CloudView(
            cloud_id=c.cloud_id,
            url=c.url,
            status=c.status,
            last_heartbeat=c.last_heartbeat,
            registered_at=c.registered_at,
            master_version=c.master_version,
            connected_edges=sessions.get(c.cloud_id, []),
            live_edges=load,
        )
        for c, load in coordinator.list_clouds()
    ]
