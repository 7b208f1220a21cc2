"""What the coordinator's routers share: the app's objects as FastAPI dependencies, views.

``create_app`` (``app.py``) puts one :class:`~.registry.Coordinator`, its settings and its
:class:`~.credentials.Credentials` on ``app.state``; a handler asks for them by type
(``coordinator: CoordinatorDep``), so the routers hold no state of their own.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from . import schedule
from .credentials import Credentials
from .records import EdgeRecord
from .registry import Coordinator
from .schemas import EdgeView, ErrorBody
from .settings import CoordinatorSettings

__all__ = [
    "ERROR_RESPONSES",
    "CoordinatorDep",
    "CredentialsDep",
    "SettingsDep",
    "edge_view",
    "next_reconciliations",
]

# How many upcoming reconciliation steps a reply lists.
NEXT_RECONCILIATIONS = 3

ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorBody} for status in (401, 403, 404, 422, 503)
}


# ``async``: FastAPI runs a plain ``def`` dependency in a worker thread, a hop that costs more
# than the lookup itself.
async def _coordinator(request: Request) -> Coordinator:
    coordinator: Coordinator = request.app.state.coordinator
    return coordinator


async def _settings(request: Request) -> CoordinatorSettings:
    settings: CoordinatorSettings = request.app.state.settings
    return settings


async def _credentials(request: Request) -> Credentials:
    credentials: Credentials = request.app.state.credentials
    return credentials


CoordinatorDep = Annotated[Coordinator, Depends(_coordinator)]
SettingsDep = Annotated[CoordinatorSettings, Depends(_settings)]
CredentialsDep = Annotated[Credentials, Depends(_credentials)]


def edge_view(edge: EdgeRecord, cloud_url: str | None) -> EdgeView:
    return EdgeView(
        edge_id=edge.edge_id,
        name=edge.name,
        shard_index=edge.shard_index,
        shard_count=edge.shard_count,
        cloud_id=edge.cloud_id,
        cloud_url=cloud_url,
        status=edge.status,
        last_heartbeat=edge.last_heartbeat,
        registered_at=edge.registered_at,
        edge_version=edge.edge_version,
        step=edge.step,
        reconcile_offset=edge.reconcile_offset,
    )


def next_reconciliations(coordinator: Coordinator, edge: EdgeRecord) -> list[int]:
    return schedule.next_due(
        edge.step,
        edge.reconcile_offset,
        coordinator.run_config.reconcile_every,
        NEXT_RECONCILIATIONS,
    )
