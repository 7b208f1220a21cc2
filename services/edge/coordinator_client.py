"""The edge's side of the coordinator: register once, then heartbeat (httpx, no FastAPI).

The coordinator states the cadence in every assignment (PROTOCOL.md §9.4): how often to
heartbeat while not streaming, and the longer interval while streaming (the cloud reports
the session, which keeps the edge live meanwhile). :func:`heartbeat_interval` picks one.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import ssl
from dataclasses import dataclass, replace
from typing import Any

import httpx

from simultrain.shared.errors import SimulTrainError

from .settings import EdgeSettings

__all__ = [
    "STREAMING_CHECK_S",
    "STREAMING_WINDOW_S",
    "Assignment",
    "CoordinatorClient",
    "EdgeRemoved",
    "ForeignRun",
    "heartbeat_interval",
]

log = logging.getLogger("simultrain.edge")

# The agent looks this often whether it is streaming: whether the cloud acknowledged a batch
# in the last STREAMING_WINDOW_S (a pipelined edge gets acknowledgements in bursts).
STREAMING_CHECK_S = 1.0
STREAMING_WINDOW_S = 5.0


class EdgeRemoved(SimulTrainError):
    """The coordinator no longer knows this edge: an operator removed it, which also revoked
    its tokens. Not retried — enrolling again would undo the operator's decision."""


class ForeignRun(SimulTrainError):
    """The coordinator trains another run than the one this edge's state was enrolled for."""


@dataclass(frozen=True)
class Assignment:
    """What the coordinator told this edge: who it is, where to stream, how to train."""

    edge_id: str
    cloud_url: str
    run_config: dict[str, Any]
    reconcile_offset: int
    heartbeat_interval_s: float
    token: str | None
    # The heartbeat period while streaming; None: the coordinator does not say (an older
    # one), so as often as when not streaming.
    streaming_heartbeat_interval_s: float | None = None


def heartbeat_interval(assignment: Assignment, *, streaming: bool) -> float:
    """Seconds until the next heartbeat the coordinator asked for (PROTOCOL.md §9.4)."""
    interval = assignment.heartbeat_interval_s
    if streaming and assignment.streaming_heartbeat_interval_s is not None:
        return max(interval, assignment.streaming_heartbeat_interval_s)
    return interval


class CoordinatorClient:
    def __init__(self, settings: EdgeSettings) -> None:
        assert settings.coordinator_url
        self.settings = settings
        self.base = settings.coordinator_url.rstrip("/")
        verify: ssl.SSLContext | bool = True
        if settings.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(settings.ca_file))
        self.client = httpx.AsyncClient(timeout=10.0, verify=verify)
        self.assignment: Assignment | None = None

    def _enrollment_secret(self) -> str | None:
        s = self.settings
        if s.enrollment_secret is not None:
            return s.enrollment_secret.get_secret_value()
        if s.enrollment_secret_file is not None:
            return s.enrollment_secret_file.read_text().strip()
        return None

    def _cadence(self, data: dict[str, Any]) -> tuple[float, float | None]:
        """The intervals of a reply (not streaming, streaming); a configured
        ``heartbeat_interval_s`` overrides both."""
        override = self.settings.heartbeat_interval_s
        streaming = data.get("streaming_heartbeat_interval_s")
        return (
            float(override or data["heartbeat_interval_s"]),
            override or (None if streaming is None else float(streaming)),
        )

    async def register(self, *, attempts: int = 60) -> Assignment:
        """``POST /v1/edges``, retried with backoff while no cloud is up yet (503).

        Every attempt carries one ``enrollment_id``: an attempt whose reply was lost (a
        coordinator replica died after enrolling) returns the same edge when retried."""
        body: dict[str, Any] = {
            "name": self.settings.name,
            "enrollment_id": f"enroll-{secrets.token_hex(16)}",
        }
        if self.settings.shard_count > 1:
            body["shard_index"] = self.settings.shard_index
            body["shard_count"] = self.settings.shard_count
        headers = {}
        secret = self._enrollment_secret()
        if secret is not None:
            headers["X-Enrollment-Secret"] = secret
        delay = 0.1
        for attempt in range(attempts):
            try:
                reply = await self.client.post(f"{self.base}/v1/edges", json=body, headers=headers)
                if reply.status_code in (401, 403, 422):
                    raise SimulTrainError(
                        f"the coordinator refused registration: {reply.status_code} {reply.text}"
                    )
                reply.raise_for_status()
                data = reply.json()
                interval, streaming = self._cadence(data)
                self.assignment = Assignment(
                    edge_id=data["edge_id"],
                    cloud_url=data["cloud_url"],
                    run_config=dict(data["run_config"]),
                    reconcile_offset=int(data.get("reconcile_offset") or 0),
                    heartbeat_interval_s=interval,
                    token=data.get("token"),
                    streaming_heartbeat_interval_s=streaming,
                )
                return self.assignment
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                if attempt == attempts - 1:
                    raise SimulTrainError(f"cannot register with {self.base}: {exc}") from exc
                log.info("registration not possible yet (%s); retrying", exc)
                await asyncio.sleep(random.uniform(0, delay))
                delay = min(delay * 2, 2.0)
        raise SimulTrainError(f"cannot register with {self.base}")

    async def resume(self, stored: Assignment, *, attempts: int = 20) -> Assignment:
        """Continue as the edge of a state directory instead of enrolling again.

        The coordinator must still know this edge and train the same run: a state directory
        of another coordinator or run is refused (:class:`EdgeRemoved`, :class:`ForeignRun`),
        never covered by a silent new enrollment, which would train the shard a second time.
        While the coordinator cannot be reached, the stored assignment is used: the
        heartbeat loop corrects it once the coordinator answers.
        """
        self.assignment = stored
        delay = 0.1
        for attempt in range(attempts):
            try:
                reply = await self.client.get(f"{self.base}/v1/config")
                reply.raise_for_status()
                run_config = reply.json()["run_config"]
            except (httpx.HTTPError, KeyError, ValueError, TypeError) as exc:
                if attempt == attempts - 1:
                    log.warning("coordinator unreachable (%s): resuming as stored", exc)
                    return stored
                await asyncio.sleep(random.uniform(0, delay))
                delay = min(delay * 2, 2.0)
                continue
            if run_config != stored.run_config:
                raise ForeignRun(
                    f"the coordinator at {self.base} trains {run_config}, the edge state "
                    f"was enrolled for {stored.run_config}"
                )
            break
        try:
            return await self.heartbeat(0, 0, resuming=True)
        except EdgeRemoved:
            raise
        except SimulTrainError as exc:
            log.warning("%s: resuming as stored", exc)
            return stored

    async def heartbeat(
        self,
        edge_version: int,
        step: int,
        *,
        resuming: bool = False,
        streaming: bool | None = None,
        finished: bool = False,
    ) -> Assignment:
        """``POST /v1/edges/{id}/heartbeat``: the current assignment (it may have moved) and
        cadence. ``streaming``: whether the edge has a live session with its cloud (the
        coordinator then knows whether to ask again soon, in case that cloud died).
        ``finished``: the last one, its steps done (the coordinator marks it finished)."""
        assert self.assignment is not None
        headers = {}
        if self.assignment.token:
            headers["Authorization"] = f"Bearer {self.assignment.token}"
        body: dict[str, Any] = {"edge_version": edge_version, "step": step}
        if streaming is not None:
            body["streaming"] = streaming
        if finished:
            body["finished"] = True
        try:
            reply = await self.client.post(
                f"{self.base}/v1/edges/{self.assignment.edge_id}/heartbeat",
                json=body,
                headers=headers,
            )
            if reply.status_code == 404 and _error_code(reply) == "unknown_edge":
                raise EdgeRemoved(
                    f"the coordinator at {self.base} no longer knows edge "
                    f"{self.assignment.edge_id}: it was removed (its tokens are revoked)"
                    + (" or the edge state is of another coordinator" if resuming else "")
                )
            if resuming and reply.status_code in (401, 403):
                raise EdgeRemoved(
                    f"the coordinator at {self.base} refuses the stored token of edge "
                    f"{self.assignment.edge_id} ({reply.status_code} {_error_code(reply)}): "
                    "expired while the edge was off, or issued by another coordinator"
                )
            reply.raise_for_status()
            data = reply.json()
            # A reply without a cadence keeps the one the edge has.
            interval, streaming_interval = (
                self._cadence(data)
                if "heartbeat_interval_s" in data
                else (
                    self.assignment.heartbeat_interval_s,
                    self.assignment.streaming_heartbeat_interval_s,
                )
            )
        except (httpx.HTTPError, ValueError, TypeError) as exc:
            raise SimulTrainError(f"heartbeat to {self.base} failed: {exc}") from exc
        self.assignment = replace(
            self.assignment,
            cloud_url=data.get("cloud_url") or self.assignment.cloud_url,
            token=data.get("token") or self.assignment.token,
            heartbeat_interval_s=interval,
            streaming_heartbeat_interval_s=streaming_interval,
        )
        return self.assignment

    async def close(self) -> None:
        await self.client.aclose()


def _error_code(reply: httpx.Response) -> str | None:
    """The coordinator's machine-readable error code (``{"error": {"code": …}}``), if any."""
    try:
        body = reply.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None
