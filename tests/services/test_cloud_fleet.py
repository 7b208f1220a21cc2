"""The cloud sizes its edge-stage history by the fleet it actually serves (docs/DESIGN.md §6.3)."""

from __future__ import annotations

import torch
from fastapi.testclient import TestClient

from simultrain.cloud.app import create_app
from simultrain.cloud.settings import CloudSettings
from simultrain.shared.models import get_model_spec
from simultrain.shared.protocol import EdgeSession, Hello, Limits, Snap, Welcome
from simultrain.shared.training.config import RunConfig

RUN = RunConfig(mode="simultrain", dataset="imu", window=8)
SPEC = get_model_spec("imu-cnn1d")


def _open(ws: object, edge_id: str) -> None:
    session = EdgeSession(limits=Limits(window=RUN.window + 1))
    hello = Hello(edge_id=edge_id, model_id=SPEC.model_id, cut_shape=tuple(SPEC.cut_shape))
    ws.send_bytes(session.send(hello))  # type: ignore[attr-defined]
    seen: set[type] = set()
    while not {Welcome, Snap} <= seen:
        seen |= {type(f) for f in session.receive_data(ws.receive_bytes())}  # type: ignore[attr-defined]


def test_history_grows_with_the_sessions_a_cloud_without_a_coordinator_serves() -> None:
    with TestClient(create_app(CloudSettings(), run=RUN)) as client:
        master = client.app.state.service.master  # type: ignore[attr-defined]
        sized_for_run = master.history_versions  # the run says 1 edge
        with (
            client.websocket_connect("/v1/stream") as a,
            client.websocket_connect("/v1/stream") as b,
            client.websocket_connect("/v1/stream") as c,
            client.websocket_connect("/v1/stream") as d,
        ):
            for i, ws in enumerate((a, b, c, d)):
                _open(ws, f"edge-{i}")
            # 4 edges × (W + 1) = 36 batches in flight, ~72 versions late at most: the
            # history keeps 8× that, more than the one-edge sizing.
            assert master.history_versions == 8 * 2 * (RUN.window + 1) * 4 > sized_for_run


def test_a_fleet_batch_steps_the_edge_stage_once_per_edge_in_session() -> None:
    """``fleet-batch`` through the real cloud: two edges, one edge-stage step per two batches;
    both batches are acknowledged, and the staleness is counted in edge-stage steps."""
    from tests.integration.waiting import wait_until
    from tests.services.test_cloud import FakeEdge

    run = RunConfig(mode="simultrain", dataset="imu", window=2, compensation="fleet-batch")
    with TestClient(create_app(CloudSettings(), run=run)) as client:
        master = client.app.state.service.master  # type: ignore[attr-defined]
        with (
            client.websocket_connect("/v1/stream") as a,
            client.websocket_connect("/v1/stream") as b,
        ):
            edge_a, edge_b = FakeEdge(a, "edge-a"), FakeEdge(b, "edge-b")
            edge_a.hello()
            edge_b.hello()
            assert master.edges_in_session == 2
            before = {n: t.clone() for n, t in master.edge_weights().items()}
            edge_a.step()  # acknowledged, gathered: the edge stage has not moved
            assert (master.edge_updates, master.edge_step.gathered, master.version) == (0, 1, 2)
            assert all(torch.equal(master.edge_weights()[n], t) for n, t in before.items())
            edge_b.step()  # the second edge's gradient completes the batch: one step
            assert (master.edge_updates, master.edge_step.gathered, master.version) == (1, 0, 4)
            assert not all(torch.equal(master.edge_weights()[n], t) for n, t in before.items())
            edge_a.step()
            edge_b.step()
            assert master.edge_updates == 2 and master.samples_applied == 4 * 32
            # Edge-stage steps missed: edge-a's second batch was taken before the first step
            # (its replica then was at version 2), edge-b's after it.
            assert master.staleness.counts == {0: 3, 1: 1}
            # The edge answered last holds the master's edge stage (lossless deltas).
            replica = edge_b.runtime.replica
            assert replica is not None
            for name, t in master.edge_weights().items():
                assert torch.equal(replica.current.tensors[name], t)
            edge_a.step()  # gathered; then edge-a leaves, and edge-b stays
            # Closed here, not by leaving the block: the test client cancels the server's
            # handler as the block ends, which under load may come before the handler has
            # read the close (a server does not cancel a handler whose client went away).
            a.close(1000)
            # One edge in session: the gradient gathered is a full batch and steps (no
            # acknowledged gradient left out).
            wait_until(
                lambda: (master.edges_in_session, master.edge_step.gathered) == (1, 0),
                timeout_s=60,
                what="the gathered gradient to step once edge-a left",
            )
            assert master.edge_updates == 3
