"""Versions, configuration and health: ``/v1/versions``, ``/v1/config``, ``/healthz``,
``/readyz``. Open reads: ids, versions and health, never a credential."""

from __future__ import annotations

from fastapi import APIRouter

from .api_common import CoordinatorDep, SettingsDep
from .schemas import (
    CloudVersionView,
    ConfigView,
    EdgeVersionView,
    HealthView,
    ReadyView,
    VersionsView,
)

__all__ = ["router"]

router = APIRouter(tags=["status"])


@router.get("/v1/versions")
def versions(coordinator: CoordinatorDep) -> VersionsView:
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


@router.get("/v1/config")
def config(coordinator: CoordinatorDep, settings: SettingsDep) -> ConfigView:
    return ConfigView(
        run_config=coordinator.run_config,
        heartbeat_interval_s=settings.heartbeat_interval_s,
        heartbeat_timeout_s=settings.heartbeat_timeout_s,
        auth_enabled=settings.auth_enabled,
    )


@router.get("/healthz")
async def healthz() -> HealthView:
    """Liveness: the process answers."""
    return HealthView(status="ok")


@router.get("/readyz")
def readyz(coordinator: CoordinatorDep) -> ReadyView:
    """Readiness: the store answers (503 ``store_unavailable`` otherwise)."""
    coordinator.store.ping()
    counts = coordinator.counts()
    return ReadyView(status="ready", clouds_up=counts.clouds_up, edges_up=counts.edges_up)
