"""Gradient coding through the real cloud app (docs/DESIGN.md §5.3): a coded syncsgd round completes
with a straggler that never answers, and the master takes the uncoded full-gradient step."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from simultrain.cloud.app import create_app
from simultrain.cloud.settings import CloudSettings
from simultrain.shared.contracts import CloudStatus
from simultrain.shared.data import BatchStream, load_dataset
from simultrain.shared.models import get_model_spec
from simultrain.shared.protocol import Ack, Delta, EdgeSession, Error, Hello, Limits, Snap, Welcome
from simultrain.shared.training.assembly import Shard, build_edge, gradient_code
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.options import OptimizerConfig
from simultrain.shared.training.roles.coded import CodedEdgeRuntime
from simultrain.shared.training.roles.lockstep import WholeModel

SPEC = get_model_spec("imu-cnn1d")
SGD = OptimizerConfig("sgd", lr=0.05)
RUN = RunConfig(mode="syncsgd", dataset="imu", edges=3, gradient_coding_s=1, optimizer=SGD)
BATCH = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class CodedEdge:
    """A real coded EdgeRuntime and EdgeSession over TestClient's WebSocket."""

    def __init__(self, ws: Any, row: int) -> None:
        self.ws = ws
        self.row = row
        self.session = EdgeSession(
            limits=Limits(window=0), egrad_needs_grad=RUN.schedule().egrad_needs_grad
        )
        runtime = build_edge(RUN, SPEC, Shard(load_dataset("imu"), row, RUN.edges)).runtime
        assert isinstance(runtime, CodedEdgeRuntime)
        self.runtime = runtime

    def receive(self) -> list[Any]:
        return self.session.receive_data(self.ws.receive_bytes())

    def hello(self, **config: Any) -> None:
        code = gradient_code(RUN)
        assert code is not None
        wanted = {"mode": "syncsgd", "code_row": self.row, "gradient_code": code.identity}
        hello = Hello(
            edge_id=f"edge-{self.row}",
            model_id=SPEC.model_id,
            cut_shape=tuple(SPEC.cut_shape),
            config={**wanted, **config},
        )
        self.ws.send_bytes(self.session.send(hello))

    def open(self) -> None:
        self.hello()
        seen: set[type] = set()
        while not {Welcome, Snap} <= seen:
            for frame in self.receive():
                seen.add(type(frame))
                if isinstance(frame, Snap):
                    self.runtime.on_snap(frame)

    def send_round(self, batches: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
        partitions = self.runtime.round_partitions()
        upload = self.runtime.produce_coded({k: batches[k] for k in partitions})
        self.ws.send_bytes(self.session.send(upload))

    def until_ack(self) -> list[Any]:
        frames: list[Any] = []
        while not any(isinstance(f, Ack) for f in frames):
            frames += self.receive()
        for frame in frames:
            if isinstance(frame, Delta):
                self.runtime.on_delta(frame)
        return frames


def _round_batches() -> dict[int, tuple[np.ndarray, np.ndarray]]:
    data = load_dataset("imu")
    out = {}
    for k in range(RUN.edges):
        shard = data.shard(k, RUN.edges)
        out[k] = next(BatchStream(shard.x_train, shard.y_train, batch_size=BATCH, seed=k))
    return out


def _uncoded_step(weights: dict[str, torch.Tensor], batches: dict[int, Any]) -> dict[str, Any]:
    structure = SPEC.build(0)
    model = WholeModel(structure.edge_stage, structure.cloud_stage)
    model.load_state_dict(weights)
    params = dict(model.named_parameters())
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for x, y in batches.values():
        loss = F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
        for name, g in zip(params, torch.autograd.grad(loss, list(params.values())), strict=True):
            total[name] += g
    return {n: weights[n] - SGD.lr * total[n] / len(batches) for n in params}


def test_a_coded_round_completes_without_its_straggler_and_takes_the_full_step() -> None:
    batches = _round_batches()
    with (
        TestClient(create_app(CloudSettings(), run=RUN)) as client,
        client.websocket_connect("/v1/stream") as a,
        client.websocket_connect("/v1/stream") as b,
        client.websocket_connect("/v1/stream") as c,
    ):
        service = client.app.state.service  # type: ignore[attr-defined]
        edges = [CodedEdge(ws, row) for row, ws in enumerate((a, b, c))]
        for edge in edges:
            edge.open()
        start = {n: t.detach().clone() for n, t in service.master.full_state().items()}
        # Edge 2 is the straggler: connected, never answering. Edges 0 and 1 are n − s = 2.
        edges[0].send_round(batches)
        edges[1].send_round(batches)
        for edge in edges[:2]:
            frames = edge.until_ack()
            assert any(isinstance(f, Delta) and f.to_version == 1 for f in frames)
            assert edge.runtime.version == 1  # ready for the next round
        status = CloudStatus.model_validate_json(client.get("/v1/status").content)
        assert status.coded_rounds == 1 and status.master_version == 1
        # n = 3 partition batches applied once each, whoever answered.
        assert status.samples_applied == RUN.edges * BATCH
        assert status.edges["edge-0"].samples_applied == 2 * BATCH
        assert status.edges["edge-2"].samples_applied == 0
        expected = _uncoded_step(start, batches)
        state = service.master.full_state()
        for name, tensor in expected.items():
            torch.testing.assert_close(state[name], tensor, rtol=0, atol=1e-6, msg=name)
        # The straggler's upload of the decoded round arrives: dropped, counted, answered.
        edges[2].send_round(batches)
        frames = edges[2].until_ack()
        assert edges[2].runtime.version == 1
        status = CloudStatus.model_validate_json(client.get("/v1/status").content)
        assert status.late_uploads_dropped == 1 and status.master_version == 1
        assert status.edges["edge-2"].late_uploads_dropped == 1


@pytest.mark.parametrize(
    "config",
    [
        {"gradient_code": "cyclic n=3 s=1 seed=9"},  # another B: would decode wrongly
        {"code_row": 3},  # no row of a 3-edge code
        {"code_row": "0"},
    ],
)
def test_a_coded_edge_that_does_not_fit_the_cloud_is_refused(config: dict[str, Any]) -> None:
    with (
        TestClient(create_app(CloudSettings(), run=RUN)) as client,
        client.websocket_connect("/v1/stream") as ws,
    ):
        edge = CodedEdge(ws, 0)
        edge.hello(**config)
        frames: list[Any] = []
        with pytest.raises(WebSocketDisconnect) as closed:
            while True:
                frames += edge.receive()
        assert [f.code for f in frames if isinstance(f, Error)] == ["handshake_rejected"]
        assert not any(isinstance(f, Welcome) for f in frames)
        assert closed.value.code == 4001


def test_every_holder_of_a_partition_draws_the_same_round_batches() -> None:
    """An edge's data for coding, as every edge of the run is assembled: row i holds shards
    i … i + s (mod n), and the round at master version v takes batch v of each — the same
    batch at every holder, or the cloud's decode would not be the gradient of one set of n
    batches."""
    run = RunConfig(mode="syncsgd", dataset="imu", edges=4, gradient_coding_s=2)
    data = load_dataset("imu")
    streams = {}
    for row in range(4):
        edge = build_edge(run, SPEC, Shard(data, row, 4)).runtime
        assert isinstance(edge, CodedEdgeRuntime) and edge.code_row == row
        streams[row] = edge.partitions
    assert {row: sorted(s) for row, s in streams.items()} == {
        0: [0, 1, 2],
        1: [1, 2, 3],
        2: [0, 2, 3],
        3: [0, 1, 3],
    }
    for version in (0, 7):
        for k in range(4):
            drawn = []
            for held in streams.values():
                if k in held:
                    held[k].seek(version)
                    drawn.append(next(held[k]))
            assert len(drawn) == 3
            for x, y in drawn[1:]:
                assert np.array_equal(x, drawn[0][0]) and np.array_equal(y, drawn[0][1])
