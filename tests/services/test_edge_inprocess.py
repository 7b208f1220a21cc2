"""The whole edge agent against the real cloud app, in one process and one event loop.

The agent's transport seam (services/edge/transport.py) connects it straight to the cloud's
ASGI app (services/edge/inprocess.py): the handshake, streaming with deltas, a dropped link and
its reconnect, a restart that resumes from the edge's state, and the closes that stop the
agent for good all run the agent's real code and the cloud's real code, without a socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi import FastAPI
from pydantic import SecretStr

from simultrain.cloud.app import create_app
from simultrain.cloud.service import CloudService
from simultrain.cloud.settings import CloudSettings
from simultrain.edge.agent import EdgeAgent, EdgeObserver, EdgeReport
from simultrain.edge.inprocess import ASGITransport
from simultrain.edge.settings import EdgeSettings
from simultrain.edge.transport import StreamConnection
from simultrain.shared.errors import (
    ConfigError,
    ModelMismatch,
    ProtocolVersionMismatch,
    Unauthorized,
)
from simultrain.shared.training.config import RunConfig

RUN = RunConfig(mode="simultrain", dataset="imu", window=2)
STEPS = 10
EDGE = "edge-0"
AGENT_TIMEOUT_S = 120  # a bound on a run that takes seconds


@pytest.fixture
async def cloud() -> AsyncIterator[FastAPI]:
    """The real cloud app with its lifespan run (master built), served by nothing."""
    app = create_app(CloudSettings(eval_interval_s=0), run=RUN)
    async with app.router.lifespan_context(app):
        yield app


def service_of(app: FastAPI) -> CloudService:
    service: CloudService = app.state.service
    return service


def edge_settings(**overrides: Any) -> EdgeSettings:
    values: dict[str, Any] = {
        "cloud_url": "http://cloud.test",
        "steps": STEPS,
        "watchdog": False,
        "compute_threads": 1,
        "reconnect_initial_s": 0.01,
        "reconnect_max_s": 0.05,
        **overrides,
    }
    return EdgeSettings(**values)


async def run_agent(agent: EdgeAgent) -> EdgeReport:
    return await asyncio.wait_for(agent.run(), AGENT_TIMEOUT_S)


def assert_every_batch_applied_once(app: FastAPI) -> None:
    """Exactly once: batches 0 … STEPS−1 each applied, none twice — each batch one update
    of the cloud stage and one of the edge stage (docs/DESIGN.md §3.2, §3.4)."""
    status = service_of(app).status()
    edge = status.edges[EDGE]
    assert edge.highest_applied_seq == STEPS - 1
    assert edge.steps_applied == STEPS
    assert edge.samples_applied == status.samples_applied == STEPS * RUN.batch_size
    assert status.master_version == 2 * STEPS
    assert status.staleness.batches == STEPS


class AtFrame(EdgeObserver):
    """Calls ``action`` once, right after the compute section ``kind`` made batch ``seq``'s
    frame and before the agent sends it."""

    def __init__(self, kind: str, seq: int, action: Callable[[], object]) -> None:
        self.kind = kind
        self.seq = seq
        self.action = action
        self.done = False

    def compute_section(self, kind: str, started: float, ended: float, result: object) -> None:
        if not self.done and kind == self.kind and getattr(result, "seq", None) == self.seq:
            self.done = True
            self.action()


async def test_the_agent_streams_with_the_real_cloud_and_ends_in_step(cloud: FastAPI) -> None:
    transport = ASGITransport(cloud)
    agent = EdgeAgent(edge_settings(), run=RUN, transport=transport)
    report = await run_agent(agent)

    assert [conn.subprotocol for conn in transport.connections] == ["simultrain.v2"]
    assert (report.sessions, report.reconnects, report.resent) == (1, 0, 0)
    assert report.steps == report.batches_acked == STEPS
    assert report.last_loss is not None and np.isfinite(report.last_loss)
    assert_every_batch_applied_once(cloud)
    # Deltas streamed and applied: the edge's replica is, tensor for tensor, what the cloud
    # knows the edge holds (PROTOCOL.md §3.1), at a version past the first SNAP's.
    service = service_of(cloud)
    mirror = service.runtime.sessions[EDGE]
    assert agent.runtime is not None and agent.runtime.replica is not None
    replica = agent.runtime.replica.current.tensors
    assert agent.runtime.version == mirror.mirror_version > 0
    assert replica.keys() == mirror.mirror.keys()
    assert all(torch.equal(replica[name], mirror.mirror[name]) for name in replica)
    # The edge said BYE and the cloud closed the session with 1000.
    assert transport.connections[0].close_code == 1000
    assert EDGE not in service.connections


async def test_a_dropped_link_reconnects_resends_and_applies_every_batch_once(
    cloud: FastAPI,
) -> None:
    """The link dies once the cloud stepped its stage on batch 4's activations and before
    the edge's gradient of it left (docs/DESIGN.md §3.2–§3.4): the edge sends batch 4 again, and the
    cloud must not step its stage on it twice (PROTOCOL.md §6.5)."""
    transport = ASGITransport(cloud)
    observer = AtFrame("on_grad", 4, lambda: transport.connections[-1].drop())
    agent = EdgeAgent(edge_settings(), run=RUN, transport=transport, observer=observer)
    report = await run_agent(agent)

    assert observer.done
    assert (report.sessions, report.reconnects) == (2, 1)
    assert report.session_ends == ["closed by the cloud: 1006 "]
    assert report.resent >= 1  # batch 4 at least
    assert report.steps == report.batches_acked == STEPS
    assert_every_batch_applied_once(cloud)


async def test_a_restarted_agent_resumes_from_its_state_and_loses_nor_repeats_a_batch(
    cloud: FastAPI, tmp_path: Path
) -> None:
    """SIGTERM with no time to drain, and the link gone, right after batch 3 was taken:
    only the edge's state directory holds it."""
    settings = edge_settings(state_dir=tmp_path / "edge", drain_timeout_s=0.0)
    transport = ASGITransport(cloud)
    first = EdgeAgent(settings, run=RUN, transport=transport)

    def sigterm_and_drop() -> None:
        first.stop()
        transport.connections[-1].drop()

    first.observer = AtFrame("_produce_next", 3, sigterm_and_drop)
    stopped = await run_agent(first)
    assert stopped.steps == 4 and stopped.undelivered >= 1

    second = EdgeAgent(settings, run=RUN, transport=ASGITransport(cloud))
    report = await run_agent(second)

    # The same edge at the same place in its data: it sent batch 3 from its state and
    # produced only what was left.
    assert report.edge_id == stopped.edge_id == EDGE
    assert report.resent >= 1
    assert report.steps == STEPS and report.samples_sent == STEPS * RUN.batch_size
    assert report.batches_acked == STEPS
    assert_every_batch_applied_once(cloud)


async def test_a_status_file_that_cannot_be_written_stops_the_agent_with_a_clear_error(
    cloud: FastAPI, tmp_path: Path
) -> None:
    """Not taken for a broken link (which would be retried forever, failing at every ACK)."""
    status_file = tmp_path / "missing-directory" / "status.json"
    agent = EdgeAgent(
        edge_settings(status_file=status_file), run=RUN, transport=ASGITransport(cloud)
    )
    with pytest.raises(ConfigError, match="cannot write the status file"):
        await run_agent(agent)
    assert agent.report.reconnects == 0


class OfferOnly:
    """A transport that offers the cloud other protocol versions than the agent speaks."""

    def __init__(self, inner: ASGITransport, subprotocols: list[str]) -> None:
        self.inner = inner
        self.subprotocols = subprotocols

    def connect(
        self, url: str, *, subprotocols: Sequence[str], headers: Mapping[str, str]
    ) -> AbstractAsyncContextManager[StreamConnection]:
        return self.inner.connect(url, subprotocols=self.subprotocols, headers=headers)


async def test_a_cloud_of_another_protocol_version_stops_the_agent_for_good(
    cloud: FastAPI,
) -> None:
    """4000 (PROTOCOL.md §1.1): the agent stops, exit status 78, and never retries."""
    transport = ASGITransport(cloud)
    agent = EdgeAgent(edge_settings(), run=RUN, transport=OfferOnly(transport, ["simultrain.v99"]))
    with pytest.raises(ProtocolVersionMismatch, match=r"speaks none .*not retrying"):
        await run_agent(agent)
    assert len(transport.connections) == 1
    assert transport.connections[0].close_code == 4000
    assert agent.report.sessions == 0


def images(path: Path, classes: int) -> str:
    """An npz data set of 28×28 images in ``classes`` classes; its ``npz:`` name."""
    y = np.arange(64) % classes
    x = np.random.default_rng(0).normal(0.0, 1.0, (64, 1, 28, 28)).astype(np.float32)
    np.savez(path, X=x, y=y)
    return f"npz:{path}"


async def test_a_cloud_that_builds_another_model_stops_the_agent_for_good(tmp_path: Path) -> None:
    """4003: a user's model of the same id, built for one class more on the edge's data, is
    another architecture (its fingerprint differs; PROTOCOL.md §7)."""
    model = "examples.tiny_mobilenet:build"
    run = RunConfig(mode="simultrain", dataset=images(tmp_path / "3.npz", 3), model_id=model)
    app = create_app(CloudSettings(eval_interval_s=0), run=run)
    async with app.router.lifespan_context(app):
        transport = ASGITransport(app)
        settings = edge_settings(dataset=images(tmp_path / "4.npz", 4))
        agent = EdgeAgent(settings, run=run, transport=transport)
        with pytest.raises(ModelMismatch, match=r"another model.*not retrying"):
            await run_agent(agent)
    assert [conn.close_code for conn in transport.connections] == [4003]
    assert agent.report.reconnects == 0


async def test_a_token_the_cloud_refuses_stops_an_agent_without_a_coordinator() -> None:
    """HTTP 403 on the upgrade: without a coordinator no fresh token can come."""
    app = create_app(CloudSettings(eval_interval_s=0, token_key=SecretStr("k" * 40)), run=RUN)
    async with app.router.lifespan_context(app):
        transport = ASGITransport(app)
        agent = EdgeAgent(
            edge_settings(token=SecretStr("not-a-token")), run=RUN, transport=transport
        )
        with pytest.raises(Unauthorized, match="HTTP 403"):
            await run_agent(agent)
    assert transport.connections == []  # refused before the upgrade completed
    assert agent.report.sessions == 0
