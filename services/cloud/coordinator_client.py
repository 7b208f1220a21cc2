"""The cloud's side of the coordinator: fetch the run config, register, heartbeat.

Heartbeats run on their own task, independent of compute, so a long step never makes the
cloud look dead (docs/DESIGN.md §8.2). A coordinator that is down is retried with backoff; the
cloud keeps training its connected edges meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import ssl
from typing import Any

import httpx

from simultrain.shared.errors import ConfigError
from simultrain.shared.training.config import RunConfig

from .service import CloudService
from .settings import CloudSettings

__all__ = ["CoordinatorLink", "fetch_run_config"]

log = logging.getLogger("simultrain.cloud")


def _verify(settings: CloudSettings) -> ssl.SSLContext | bool:
    if settings.ca_file is None:
        return True
    return ssl.create_default_context(cafile=str(settings.ca_file))


def _headers(settings: CloudSettings) -> dict[str, str]:
    secret = settings.admin_secret()
    if secret is None:
        return {}
    return {"Authorization": f"Bearer {secret}"}


async def fetch_run_config(settings: CloudSettings, *, attempts: int = 30) -> RunConfig:
    """``GET /v1/config`` from the coordinator, retried while it starts."""
    assert settings.coordinator_url
    url = settings.coordinator_url.rstrip("/") + "/v1/config"
    delay = 0.1
    async with httpx.AsyncClient(timeout=5.0, verify=_verify(settings)) as client:
        for attempt in range(attempts):
            try:
                reply = await client.get(url, headers=_headers(settings))
                reply.raise_for_status()
                return RunConfig.from_mapping(reply.json()["run_config"])
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                if attempt == attempts - 1:
                    raise ConfigError(f"cannot read the run config from {url}: {exc}") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
    raise ConfigError(f"cannot read the run config from {url}")


class CoordinatorLink:
    def __init__(self, settings: CloudSettings, service: CloudService) -> None:
        assert settings.coordinator_url
        self.settings = settings
        self.service = service
        self.base = settings.coordinator_url.rstrip("/")
        self.client = httpx.AsyncClient(
            timeout=5.0, headers=_headers(settings), verify=_verify(settings)
        )
        self._task: asyncio.Task[None] | None = None

    async def public_url(self) -> str:
        """The URL edges use: configured, or the bound address once the server listens."""
        if self.settings.public_url:
            # Replicas need one address each (edges stream to their own replica): the URL may
            # name the host or the replica's rank (docs/REPLICAS.md).
            return self.settings.public_url.replace("{hostname}", socket.gethostname()).replace(
                "{rank}", os.environ.get("RANK", "0")
            )
        bound = await self.service.bound_url
        return bound.replace("http", "ws", 1)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="coordinator-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.aclose()

    async def _register(self) -> None:
        body = {"url": await self.public_url(), "master_version": self.service.master.version}
        reply = await self.client.post(f"{self.base}/v1/clouds", json=body)
        reply.raise_for_status()
        self.service.cloud_id = reply.json()["cloud_id"]
        log.info("registered with the coordinator as %s (%s)", self.service.cloud_id, body["url"])

    async def _heartbeat(self) -> dict[str, Any]:
        body = {
            "master_version": self.service.master.version,
            "connected_edges": sorted(self.service.connections),
        }
        reply = await self.client.post(
            f"{self.base}/v1/clouds/{self.service.cloud_id}/heartbeat", json=body
        )
        if reply.status_code == 404:  # the coordinator forgot us (new database): register anew
            self.service.cloud_id = None
        reply.raise_for_status()
        result: dict[str, Any] = reply.json()
        revoked = result.get("revoked_edges", {})
        if isinstance(revoked, dict):
            await self.service.revoke({str(k): float(v) for k, v in revoked.items()})
        return result

    async def _loop(self) -> None:
        interval = self.settings.heartbeat_interval_s
        backoff = 0.1
        while True:
            try:
                if self.service.cloud_id is None:
                    await self._register()
                await self._heartbeat()
                backoff = 0.1
                await asyncio.sleep(interval)
            except httpx.HTTPError as exc:
                log.warning("coordinator unreachable (%s); retrying", exc)
                await asyncio.sleep(backoff * (1 + random.random()))
                backoff = min(backoff * 2, interval)
