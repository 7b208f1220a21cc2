"""The cloud service in-process: HTTP endpoints, WebSocket sessions, refusals, auth, limits."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import SecretStr
from safetensors.torch import load as load_safetensors
from starlette.websockets import WebSocketDisconnect

from simultrain.cloud.app import create_app
from simultrain.cloud.checkpoint import latest_checkpoint, restore, save_checkpoint
from simultrain.cloud.service import TokenBucket
from simultrain.cloud.settings import CloudSettings
from simultrain.shared import auth
from simultrain.shared.contracts import CloudStatus, Evaluation
from simultrain.shared.data import BatchStream, load_dataset
from simultrain.shared.errors import RateLimited
from simultrain.shared.models import get_model_spec
from simultrain.shared.protocol import (
    Ack,
    Act,
    Delta,
    EdgeSession,
    Error,
    Grad,
    Hello,
    Limits,
    Snap,
    Welcome,
    WireTensor,
    encode_frame,
)
from simultrain.shared.protocol.tensorcodec import Codec
from simultrain.shared.training.assembly import Shard, build_cloud, build_edge
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.dana import DanaEdgeStep
from simultrain.shared.training.roles.synthetic import SyntheticCloudRuntime
from simultrain.shared.training.runtime import CloudSessionState

RUN = RunConfig(mode="simultrain", dataset="imu", window=2)
SPEC = get_model_spec("imu-cnn1d")
KEY = "k" * 40
ADMIN = "admin-token-for-tests-0123456789"


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(CloudSettings(), run=RUN)) as c:
        yield c


class FakeEdge:
    """A real EdgeRuntime and EdgeSession over TestClient's WebSocket."""

    def __init__(self, ws: Any, edge_id: str = "edge-a", *, token: str | None = None) -> None:
        self.ws = ws
        self.edge_id = edge_id
        self.session = EdgeSession(limits=Limits(window=RUN.window))
        data = load_dataset("imu")
        self.runtime = build_edge(RUN, SPEC, Shard(data)).runtime
        self.stream = BatchStream(data.x_train, data.y_train, batch_size=32, seed=1)
        self.token = token

    def send(self, frame: Any) -> None:
        self.ws.send_bytes(self.session.send(frame))

    def receive(self) -> list[Any]:
        return self.session.receive_data(self.ws.receive_bytes())

    def hello(self) -> Welcome:
        self.send(
            Hello(
                edge_id=self.edge_id,
                model_id=SPEC.model_id,
                cut_shape=tuple(SPEC.cut_shape),
                token=self.token,
            )
        )
        welcome = None
        while self.runtime.replica is None:
            for frame in self.receive():
                if isinstance(frame, Welcome):
                    welcome = frame
                elif isinstance(frame, Snap):
                    self.runtime.on_snap(frame)
        assert welcome is not None
        return welcome

    def step(self) -> None:
        """One whole batch: ACT → GRAD → EGRAD → DELTA + ACK."""
        x, y = next(self.stream)
        act = self.runtime.produce(x, y)
        self.send(act)
        acked = False
        while not acked:
            for frame in self.receive():
                if isinstance(frame, Grad):
                    self.send(self.runtime.on_grad(frame))
                elif isinstance(frame, Delta):
                    self.runtime.on_delta(frame)
                elif isinstance(frame, Ack):
                    self.runtime.on_ack(frame)
                    acked = True
                elif isinstance(frame, Snap):
                    self.runtime.on_snap(frame)


def master_state(client: TestClient) -> dict[str, torch.Tensor]:
    master = client.app.state.service.master  # type: ignore[attr-defined]
    return {n: t.clone() for n, t in master.full_state().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# --- HTTP -------------------------------------------------------------------------------


def test_health_ready_status_eval_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    status = CloudStatus.model_validate_json(client.get("/v1/status").content)
    assert status.master_version == 0 and status.edges == {}
    assert status.model_id == "imu-cnn1d" and status.mode == "simultrain"
    evaluation = Evaluation.model_validate_json(client.get("/v1/eval").content)
    assert 0.0 <= evaluation.accuracy <= 1.0 and evaluation.samples == 773
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "simultrain_cloud_master_version" in metrics.text


def test_model_download_is_safetensors_of_the_master(client: TestClient) -> None:
    reply = client.get("/v1/model")
    assert reply.status_code == 200
    tensors = load_safetensors(reply.content)
    assert_same(tensors, {n: t.contiguous() for n, t in master_state(client).items()})


def test_errors_are_json_never_500(client: TestClient) -> None:
    for method, path in [("GET", "/nope"), ("POST", "/v1/status"), ("GET", "/v1/status/x")]:
        reply = client.request(method, path)
        assert 400 <= reply.status_code < 500
        assert set(reply.json()["error"]) == {"code", "message"}


def test_admin_endpoint_needs_the_admin_token() -> None:
    settings = CloudSettings(admin_token=SecretStr(ADMIN))
    with TestClient(create_app(settings, run=RUN)) as c:
        assert c.get("/v1/model").status_code == 401
        assert c.get("/v1/model", headers={"Authorization": "Bearer nope"}).status_code == 403
        assert c.get("/v1/model", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200


# --- sessions -------------------------------------------------------------------------------


def test_a_session_trains_and_status_counts_what_the_edge_sent(client: TestClient) -> None:
    with client.websocket_connect("/v1/stream") as ws:
        edge = FakeEdge(ws)
        welcome = edge.hello()
        assert welcome.cut_shape == tuple(SPEC.cut_shape) and welcome.acked_seq is None
        for _ in range(5):
            edge.step()
        # The replica is the master's edge stage, bit for bit (lossless XOR deltas).
        master = client.app.state.service.master  # type: ignore[attr-defined]
        replica = edge.runtime.replica
        assert replica is not None and replica.version == master.version
        for name, t in master.edge_weights().items():
            assert torch.equal(replica.current.tensors[name].detach(), t)
    status = CloudStatus.model_validate_json(client.get("/v1/status").content)
    session = status.edges["edge-a"]
    assert session.samples_received == session.samples_applied == 5 * 32
    assert session.highest_applied_seq == 4 and session.duplicates_dropped == 0
    assert status.master_version == 10  # a cloud-stage and an edge-stage update per batch
    assert session.bytes_up > 0 and session.bytes_down > 0


def test_a_resumed_session_learns_what_is_applied(client: TestClient) -> None:
    with client.websocket_connect("/v1/stream") as ws:
        edge = FakeEdge(ws)
        edge.hello()
        edge.step()
        edge.step()
    with client.websocket_connect("/v1/stream") as ws:
        assert FakeEdge(ws).hello().acked_seq == 1


def refused(ws: Any) -> tuple[int, Error | None]:
    """Read until the cloud closes: its close code and the ERROR frame before it."""
    error = None
    session = EdgeSession()
    try:
        while True:
            data = ws.receive_bytes()
            try:
                frames = session.receive_data(data)
            except Exception:  # noqa: BLE001 - the session need not be open to read ERROR
                frames = []
            error = next((f for f in frames if isinstance(f, Error)), error)
    except WebSocketDisconnect as closed:
        return closed.code, error


def nan_act(edge: FakeEdge) -> bytes:
    """An ACT whose activations hold a NaN, patched into the bytes: our encoder refuses NaN."""
    x, y = next(edge.stream)
    good = edge.runtime.produce(x, y)
    assert isinstance(good, Act)
    values = np.full_like(good.activations.array, 1.5)
    raw = encode_frame(
        Act(
            seq=good.seq,
            edge_version=good.edge_version,
            activations=WireTensor(values, Codec.RAW),
            labels=good.labels,
        )
    )
    return raw.replace(np.float32(1.5).tobytes(), np.float32(math.nan).tobytes(), 1)


def test_a_bad_frame_closes_only_its_session_and_leaves_the_master_unchanged(
    client: TestClient,
) -> None:
    with client.websocket_connect("/v1/stream") as good_ws:
        good = FakeEdge(good_ws, "edge-good")
        good.hello()
        good.step()
        before = master_state(client)
        with client.websocket_connect("/v1/stream") as bad_ws:
            bad = FakeEdge(bad_ws, "edge-bad")
            bad.hello()
            bad_ws.send_bytes(nan_act(bad))
            code, error = refused(bad_ws)
        assert code == 1007
        assert error is not None and error.code == "non_finite_tensor"
        assert_same(master_state(client), before)
        good.step()  # the other session goes on
    assert client.get("/v1/status").json()["edges"]["edge-good"]["samples_applied"] == 64


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\xc1garbage", 1002),  # not msgpack
        (
            encode_frame(Hello(edge_id="x", model_id="imu-cnn1d", cut_shape=(3, 3))),
            4001,
        ),  # cut shape
        (encode_frame(Hello(edge_id="x", model_id="mnist-cnn", cut_shape=(32, 32))), 4001),  # model
        (b"\x82\xa1v\x63\xa1t\xa5hello", 4000),  # protocol version 99
        (
            encode_frame(
                Hello(edge_id="x", model_id="imu-cnn1d", cut_shape=(32, 32), model_fingerprint="0")
            ),
            4003,
        ),  # same model id, another architecture
    ],
    ids=["garbage", "cut-shape", "model", "version", "fingerprint"],
)
def test_refusals_carry_the_documented_close_code(
    client: TestClient, payload: bytes, code: int
) -> None:
    before = master_state(client)
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(payload)
        assert refused(ws)[0] == code
    assert_same(master_state(client), before)


def test_text_messages_are_refused(client: TestClient) -> None:
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_text("hello")
        assert refused(ws)[0] == 1003


# --- authentication ----------------------------------------------------------------------


@pytest.fixture
def auth_client() -> Iterator[TestClient]:
    with TestClient(create_app(CloudSettings(token_key=SecretStr(KEY)), run=RUN)) as c:
        yield c


def test_a_valid_token_opens_its_own_edges_session(auth_client: TestClient) -> None:
    token = auth.issue_token("edge-a", KEY, ttl_s=60)
    with auth_client.websocket_connect(
        "/v1/stream", headers={"Authorization": f"Bearer {token}"}
    ) as ws:
        edge = FakeEdge(ws, "edge-a")
        edge.hello()
        edge.step()


def test_token_in_hello_works_too(auth_client: TestClient) -> None:
    token = auth.issue_token("edge-a", KEY, ttl_s=60)
    with auth_client.websocket_connect("/v1/stream") as ws:
        FakeEdge(ws, "edge-a", token=token).hello()


@pytest.mark.parametrize(
    "token",
    [
        None,
        auth.issue_token("edge-a", KEY, ttl_s=60, now=time.time() - 3600),  # expired
        auth.issue_token("edge-a", "f" * 40, ttl_s=60),  # forged: another key
        auth.issue_token("edge-b", KEY, ttl_s=60),  # another edge's
    ],
    ids=["none", "expired", "forged", "other-edge"],
)
def test_bad_tokens_in_hello_are_refused_with_1008(
    auth_client: TestClient, token: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    before = master_state(auth_client)
    with auth_client.websocket_connect("/v1/stream") as ws:
        edge = FakeEdge(ws, "edge-a", token=token)
        edge.send(
            Hello(
                edge_id="edge-a",
                model_id=SPEC.model_id,
                cut_shape=tuple(SPEC.cut_shape),
                token=token,
            )
        )
        assert refused(ws)[0] == 1008
    assert_same(master_state(auth_client), before)
    assert KEY not in caplog.text and (token is None or token not in caplog.text)


def test_bad_token_header_is_refused_before_the_upgrade(auth_client: TestClient) -> None:
    forged = auth.issue_token("edge-a", "f" * 40, ttl_s=60)
    with (
        pytest.raises(WebSocketDisconnect) as closed,
        auth_client.websocket_connect("/v1/stream", headers={"Authorization": f"Bearer {forged}"}),
    ):
        pass
    assert closed.value.code == 1008


def test_a_revoked_token_closes_its_session_and_opens_no_other(auth_client: TestClient) -> None:
    """The coordinator removed the edge (its heartbeat reply lists it as revoked at t): the
    live session opened with a token issued before t is closed with 1008 and that token is
    refused from then on; a token issued after t (the edge enrolled again) is accepted."""
    service = auth_client.app.state.service  # type: ignore[attr-defined]
    issued = int(time.time()) - 10
    old = auth.issue_token("edge-a", KEY, ttl_s=600, now=issued)
    with auth_client.websocket_connect("/v1/stream") as ws:
        edge = FakeEdge(ws, "edge-a", token=old)
        edge.hello()
        edge.step()
        closed = auth_client.portal.call(service.revoke, {"edge-a": float(issued + 1)})  # type: ignore[union-attr]
        assert closed == ["edge-a"]
        assert refused(ws)[0] == 1008
    with auth_client.websocket_connect("/v1/stream") as ws:
        edge = FakeEdge(ws, "edge-a", token=old)
        edge.send(
            Hello(edge_id="edge-a", model_id=SPEC.model_id, cut_shape=SPEC.cut_shape, token=old)
        )
        code, error = refused(ws)
        assert code == 1008 and error is not None and "revoked" in error.reason
    with (
        pytest.raises(WebSocketDisconnect) as upgrade,
        auth_client.websocket_connect("/v1/stream", headers={"Authorization": f"Bearer {old}"}),
    ):
        pass
    assert upgrade.value.code == 1008
    fresh = auth.issue_token("edge-a", KEY, ttl_s=600, now=issued + 2)
    with auth_client.websocket_connect("/v1/stream") as ws:
        welcome = FakeEdge(ws, "edge-a", token=fresh).hello()
        assert welcome.acked_seq == 0  # the same session resumes: its batch is applied
    assert auth_client.get("/v1/status").json()["edges"]["edge-a"]["samples_applied"] == 32


# --- limits ------------------------------------------------------------------------------


def test_token_bucket_refuses_bursts_beyond_twice_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(10.0, clock=lambda: now[0])
    for _ in range(20):
        bucket.take()
    with pytest.raises(RateLimited):
        bucket.take()
    now[0] += 0.5  # five tokens back
    for _ in range(5):
        bucket.take()


def test_rate_limited_session_is_closed_with_1008() -> None:
    with (
        TestClient(create_app(CloudSettings(max_messages_per_s=1.0), run=RUN)) as c,
        c.websocket_connect("/v1/stream") as ws,
    ):
        edge = FakeEdge(ws)
        edge.hello()
        edge.step()
        x, y = next(edge.stream)
        for _ in range(3):
            ws.send_bytes(encode_frame(edge.runtime.produce(x, y)))  # type: ignore[arg-type]
        assert refused(ws)[0] == 1008


def test_oversized_frame_is_refused_with_1009() -> None:
    with (
        TestClient(create_app(CloudSettings(max_frame_bytes=1000), run=RUN)) as c,
        c.websocket_connect("/v1/stream") as ws,
    ):
        ws.send_bytes(b"\x80" * 2000)
        assert refused(ws)[0] == 1009


# --- checkpoints -------------------------------------------------------------------------


def test_checkpoint_round_trip_restores_master_optimizer_and_sessions(tmp_path: Path) -> None:
    run = RunConfig(window=2, optimizer=RUN.optimizer.__class__(lr=0.01, momentum=0.9))
    cloud = build_cloud(run, SPEC)
    master, runtime = cloud.master, cloud.runtime
    state, _ = runtime.open_session("edge-a")
    x = torch.randn(8, *SPEC.cut_shape)
    y = torch.randint(0, 7, (8,))
    for _ in range(3):
        master.cloud_step(x, y)
    state.highest_applied_seq = 41
    save_checkpoint(tmp_path, master, runtime)
    assert state.durable_seq == 41

    rebuilt = build_cloud(run, SPEC)
    fresh, fresh_runtime = rebuilt.master, rebuilt.runtime
    found = latest_checkpoint(tmp_path)
    assert found is not None
    restore(found, fresh, fresh_runtime)
    assert fresh.version == master.version == 3
    assert_same(dict(fresh.full_state()), dict(master.full_state()))
    assert fresh_runtime.sessions["edge-a"].highest_applied_seq == 41
    # The momentum buffers came back: one more identical step gives identical weights.
    master.cloud_step(x, y)
    fresh.cloud_step(x, y)
    assert_same(dict(fresh.full_state()), dict(master.full_state()))


def test_a_checkpoint_holds_a_partly_gathered_fleet_batch(tmp_path: Path) -> None:
    """``fleet-batch``: acknowledged gradients waiting for the rest of the fleet are in the
    checkpoint, so the resumed cloud takes the same step a cloud without the restart takes."""
    run = RunConfig(window=2, compensation="fleet-batch")
    cloud = build_cloud(run, SPEC)
    master, runtime = cloud.master, cloud.runtime
    for edge_id in ("edge-a", "edge-b", "edge-c"):
        runtime.open_session(edge_id)
    grads = {n: torch.randn_like(p) for n, p in master.edge_stage.named_parameters()}
    master.apply_edge_gradient(grads, edge_version=0)
    master.apply_edge_gradient({n: 2 * g for n, g in grads.items()}, edge_version=0)
    assert master.edge_step.gathered == 2 and master.edge_updates == 0
    save_checkpoint(tmp_path, master, runtime)

    rebuilt = build_cloud(run, SPEC)
    fresh, fresh_runtime = rebuilt.master, rebuilt.runtime
    found = latest_checkpoint(tmp_path)
    assert found is not None
    restore(found, fresh, fresh_runtime)
    for edge_id in ("edge-a", "edge-b", "edge-c"):  # the fleet reconnects
        fresh_runtime.open_session(edge_id)
    assert fresh.edge_step.gathered == 2
    for m in (master, fresh):
        m.apply_edge_gradient(grads, edge_version=m.version)  # the third: one step
    assert fresh.edge_updates == master.edge_updates == 1
    assert_same(dict(fresh.full_state()), dict(master.full_state()))
    # A run whose compensation gathers nothing could not apply them: the file is refused.
    from simultrain.cloud.checkpoint import CheckpointError

    plain = build_cloud(RunConfig(window=2), SPEC)
    with pytest.raises(CheckpointError, match="partly gathered fleet batch"):
        restore(found, plain.master, plain.runtime)


def test_a_checkpoint_holds_each_edges_momentum(tmp_path: Path) -> None:
    """``dana``: the per-edge momenta (Adam's per-edge first moments, their counts) are in the
    checkpoint, so the resumed cloud takes the steps, and sends the look-ahead, a cloud
    without the restart does; a run that keeps no per-edge momenta refuses the file, and
    so does one whose momenta are not finite."""
    from safetensors.torch import save_file

    from simultrain.cloud.checkpoint import CheckpointError

    run = RunConfig(window=2, compensation="delay-beta1+dana")
    cloud = build_cloud(run, SPEC)
    master, runtime = cloud.master, cloud.runtime
    torch.manual_seed(0)
    grads = [
        {n: torch.randn_like(p) for n, p in master.edge_stage.named_parameters()} for _ in "abc"
    ]
    for g, edge_id in zip(grads, ("edge-a", "edge-b", "edge-a"), strict=True):
        master.apply_edge_gradient(g, edge_version=0, edge_id=edge_id)
    save_checkpoint(tmp_path, master, runtime)

    rebuilt = build_cloud(run, SPEC)
    fresh = rebuilt.master
    found = latest_checkpoint(tmp_path)
    assert found is not None
    restore(found, fresh, rebuilt.runtime)
    assert isinstance(fresh.edge_step, DanaEdgeStep)
    assert isinstance(master.edge_step, DanaEdgeStep)
    held = fresh.edge_step.momenta.counts
    assert held == master.edge_step.momenta.counts == {"edge-b": 1, "edge-a": 2}
    for m in (master, fresh):  # the same gradients from the same edges, the second late
        v = m.version  # (a resumed cloud knows no version before its own: history anew)
        m.apply_edge_gradient(grads[2], edge_version=v, edge_id="edge-b")
        assert m.apply_edge_gradient(grads[0], edge_version=v, edge_id="edge-a").staleness == 1
    assert_same(dict(fresh.full_state()), dict(master.full_state()))
    assert_same(dict(fresh.edge_weights_for_replica()), dict(master.edge_weights_for_replica()))

    plain = build_cloud(RunConfig(window=2), SPEC)
    with pytest.raises(CheckpointError, match="per-edge momenta"):
        restore(found, plain.master, plain.runtime)
    name = next(k for k in found.tensors if k.startswith("edge_momentum/"))
    bad = tmp_path / "bad"
    bad.mkdir()
    tensors = {**found.tensors, name: torch.full_like(found.tensors[name], math.nan)}
    save_file(
        tensors,
        str(bad / "checkpoint-000000000099.safetensors"),
        metadata={"simultrain": json.dumps(found.meta)},
    )
    corrupt = latest_checkpoint(bad)
    assert corrupt is not None
    other = build_cloud(run, SPEC)
    with pytest.raises(CheckpointError, match="not finite"):
        restore(corrupt, other.master, other.runtime)


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(tmp_path: Path) -> None:
    cloud = build_cloud(RUN, SPEC)
    master, runtime = cloud.master, cloud.runtime
    save_checkpoint(tmp_path, master, runtime)
    master.cloud_step(torch.randn(4, *SPEC.cut_shape), torch.randint(0, 7, (4,)))
    newest = save_checkpoint(tmp_path, master, runtime)
    newest.write_bytes(newest.read_bytes()[:100])  # torn write
    found = latest_checkpoint(tmp_path)
    assert found is not None and found.meta["version"] == 0
    assert not list(tmp_path.glob(".checkpoint-*"))  # no temporary files left behind


def test_a_checkpoint_keeps_the_synthetic_gradient_model_and_each_edges_staleness(
    tmp_path: Path,
) -> None:
    """Seed 003's M is trained state of the cloud: a restart must not reset it to zero."""
    run = RunConfig(mode="synthetic", dataset="imu", seed=0)
    cloud = build_cloud(run, SPEC)
    master, runtime = cloud.master, cloud.runtime
    assert isinstance(runtime, SyntheticCloudRuntime)
    acts, labels = torch.randn(8, *SPEC.cut_shape), torch.randint(0, 7, (8,))
    for _ in range(3):
        runtime.synthetic.train(acts, labels, torch.randn(8, *SPEC.cut_shape))
    state = runtime.sessions.setdefault("edge-a", CloudSessionState("edge-a"))
    state.staleness.record(2)
    save_checkpoint(tmp_path, master, runtime)

    fresh_run = build_cloud(run, SPEC).runtime
    assert isinstance(fresh_run, SyntheticCloudRuntime)
    found = latest_checkpoint(tmp_path)
    assert found is not None
    restore(found, fresh_run.master, fresh_run)
    assert fresh_run.synthetic.steps == 3
    assert_same(fresh_run.synthetic.model.state_dict(), runtime.synthetic.model.state_dict())
    assert fresh_run.sessions["edge-a"].staleness.counts == {2: 1}
    # and the optimizer of M came back: one more identical step, identical M
    grad = torch.randn(8, *SPEC.cut_shape)
    runtime.synthetic.train(acts, labels, grad)
    fresh_run.synthetic.train(acts, labels, grad)
    assert_same(fresh_run.synthetic.model.state_dict(), runtime.synthetic.model.state_dict())
