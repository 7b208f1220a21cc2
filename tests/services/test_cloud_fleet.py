"""The cloud sizes its edge-stage history by the fleet it actually serves (SPEC "Fleets")."""

from __future__ import annotations

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
