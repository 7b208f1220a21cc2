"""Two whole edge agents mixing through the real cloud app, in one event loop
(services/edge/inprocess.py; docs/FLEET.md, "Mixed steps")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI

from simultrain.cloud.app import create_app
from simultrain.cloud.settings import CloudSettings
from simultrain.edge.agent import EdgeAgent, EdgeObserver
from simultrain.edge.inprocess import ASGITransport
from simultrain.shared.protocol import Act
from simultrain.shared.training.config import RunConfig
from tests.services.test_edge_inprocess import AGENT_TIMEOUT_S, edge_settings, service_of

# A window wide enough that a GRAD usually finds room for the next ACT: without mixing the
# agent would hold its EGRAD to ride on that ACT.
RUN = RunConfig(mode="simultrain", dataset="imu", window=8, edges=2, mix_edges=2)
STEPS = 12


@pytest.fixture
async def cloud() -> AsyncIterator[FastAPI]:
    app = create_app(CloudSettings(eval_interval_s=0), run=RUN)
    async with app.router.lifespan_context(app):
        yield app


class Piggybacked(EdgeObserver):
    """Whether each ACT the agent produced carried an EGRAD (one it held for that ACT)."""

    def __init__(self) -> None:
        self.carried: list[bool] = []

    def compute_section(self, kind: str, started: float, ended: float, result: object) -> None:
        if kind == "_produce_next" and isinstance(result, Act):
            self.carried.append(result.egrad is not None)


async def test_two_agents_mix_every_batch_once_and_send_each_egrad_at_once(
    cloud: FastAPI,
) -> None:
    agents, observers = [], []
    for index in range(2):
        observer = Piggybacked()
        settings = edge_settings(steps=STEPS, shard_index=index, shard_count=2)
        agent = EdgeAgent(settings, run=RUN, transport=ASGITransport(cloud), observer=observer)
        agents.append(agent)
        observers.append(observer)
    reports = await asyncio.wait_for(
        asyncio.gather(*(agent.run() for agent in agents)), AGENT_TIMEOUT_S
    )
    status = service_of(cloud).status()
    micro = RUN.batch_size // 2  # split: each edge sends half a batch
    for report in reports:
        assert report.steps == report.batches_acked == STEPS
        session = status.edges[report.edge_id]
        assert session.samples_applied == session.samples_received == STEPS * micro
        assert session.highest_applied_seq == STEPS - 1 and session.duplicates_dropped == 0
    assert status.samples_applied == 2 * STEPS * micro
    mixer = service_of(cloud).runtime.mixer  # type: ignore[attr-defined]
    assert mixer.steps >= 1 and mixer.empty
    # A mixed step's ACKs wait for every member's EGRAD: none waits for its edge's next ACT.
    for observer in observers:
        assert len(observer.carried) == STEPS and not any(observer.carried)
