"""Conformance of the cloud: an edge built from PROTOCOL.md alone, against the real cloud app.

Nothing here imports the project's encoder, decoder, sessions or training code: messages are
msgpack maps written as the document's §2-§4 and §8 lay them out (the helpers of
``doc_edge.py``, the document-only client the conformance kit drives), the replica
arithmetic is §3.1's, the checksum is zlib's CRC-32 over the bytes §3.1 names. The cloud is
the real FastAPI app in-process (Starlette's TestClient). Each test checks the documented
reply or ERROR code and close code. The other direction — any edge client against the
cloud, with faults — is the conformance kit's (test_kit.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from simultrain.cloud.app import create_app
from simultrain.cloud.service import TokenBucket
from simultrain.cloud.settings import CloudSettings
from simultrain.shared.errors import RateLimited
from simultrain.shared.training.config import RunConfig

from .doc_edge import SUBPROTOCOL, apply, checksum, egrad_fields, fingerprint, message, tensor

WINDOW = 2
BATCH = 4
MAX_FRAME_BYTES = 1 << 20
# R = 3: a reconciling SNAP every third applied batch, so §3.1's blend is exercised too.
RUN = RunConfig(mode="simultrain", dataset="imu", window=WINDOW, reconcile_every=3, batch_size=4)

# -- a client ------------------------------------------------------------------------------


class Closed(Exception):
    def __init__(self, code: int, error: dict[str, Any] | None) -> None:
        super().__init__(f"closed {code}: {error}")
        self.code = code
        self.error = error


class Edge:
    """One session: the replica it holds (§3.1) and the batches in flight (§6.3)."""

    def __init__(self, client: TestClient, spec: dict[str, Any], edge_id: str = "conf-edge"):
        self.client = client
        self.spec = spec
        self.edge_id = edge_id
        self.replica: dict[str, np.ndarray] = {}
        self.version = 0
        self.welcome: dict[str, Any] = {}
        self.in_flight: list[int] = []
        self.awaiting_egrad: list[int] = []
        self.acked = -1
        self.checked = 0  # checksums compared
        self.rng = np.random.default_rng(0)
        self.ws: Any = None
        self._ctx: Any = None

    # transport
    def connect(self, subprotocols: list[str] | None = None) -> None:
        """The upgrade alone (§1.1: the edge offers the versions it speaks)."""
        offered = [SUBPROTOCOL] if subprotocols is None else subprotocols
        self._ctx = self.client.websocket_connect("/v1/stream", subprotocols=offered)
        self.ws = self._ctx.__enter__()

    def open(self) -> None:
        self.connect()
        assert self.ws.accepted_subprotocol == SUBPROTOCOL
        self.hello()
        self.welcome = self.receive()
        assert self.welcome["t"] == "welcome", self.welcome
        self.in_flight, self.awaiting_egrad = [], []
        snap = self.receive()
        assert snap["t"] == "snap" and snap["reconcile"] is False
        # §3.1: the first SNAP replaces the replica; its checksum must agree.
        self.replica = {}
        assert self.apply(snap), "the first SNAP's checksum does not match its tensors"

    def hello(self, **hello: Any) -> None:
        self.ws.send_bytes(
            message(
                "hello",
                **{
                    "edge_id": self.edge_id,
                    "model_id": self.spec["model_id"],
                    "cut_shape": self.spec["cut_shape"],
                    "config": {"mode": self.spec["mode"]},
                    "token": None,
                    "resume": self.acked if self.acked >= 0 else None,
                    "model_fingerprint": self.spec["model_fingerprint"],
                    "capabilities": {},
                    **hello,
                },
            )
        )

    def close(self, code: int) -> None:
        self.ws.close(code)
        self.release()

    def release(self) -> None:
        """Leave the test client's WebSocket context (also after the cloud closed it)."""
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            with contextlib.suppress(Exception):
                ctx.__exit__(None, None, None)

    def send(self, data: bytes) -> None:
        self.ws.send_bytes(data)

    def receive(self) -> dict[str, Any]:
        try:
            data = self.ws.receive_bytes()
        except WebSocketDisconnect as closed:
            raise Closed(closed.code, None) from closed
        frame: dict[str, Any] = msgpack.unpackb(data, raw=False)
        assert frame["v"] == 2 or frame["t"] == "error"
        return frame

    def refusal(self) -> tuple[int, dict[str, Any] | None]:
        """§7: read until the close; the ERROR that came before it, if any."""
        error = None
        while True:
            try:
                frame = self.receive()
            except Closed as closed:
                return closed.code, error
            if frame["t"] == "error":
                error = frame

    # §3.1
    def apply(self, frame: dict[str, Any]) -> bool:
        """Apply a DELTA or SNAP; True when the replica's checksum is the cloud's."""
        if frame["t"] == "delta":
            assert frame["from_version"] == self.version, "deltas arrive in order here"
        apply(self.replica, frame, float(self.welcome["config"]["beta"]))
        self.version = frame["to_version"] if frame["t"] == "delta" else frame["master_version"]
        self.checked += 1
        return checksum(self.replica) == frame["checksum"]

    # docs/DESIGN.md §3.1 and §3.3, as bytes
    def act(self, seq: int, egrad: dict[str, Any] | None = None) -> bytes:
        shape = (BATCH, *self.spec["cut_shape"])
        activations = self.rng.standard_normal(shape).astype(np.float32)
        labels = self.rng.integers(0, self.spec["num_classes"], BATCH).astype(np.int64)
        return message(
            "act",
            seq=seq,
            edge_version=self.version,
            activations=tensor(activations, "lz4"),
            labels=tensor(labels),
            egrad=egrad,
        )

    def grads(self) -> dict[str, np.ndarray]:
        # §3: one gradient per parameter of the session spec, its shape, a float dtype.
        return {
            p["name"]: (1e-3 * self.rng.standard_normal(p["shape"])).astype(np.float32)
            for p in self.spec["replica"]
        }


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = CloudSettings(max_frame_bytes=MAX_FRAME_BYTES)
    with TestClient(create_app(settings, run=RUN)) as c:
        yield c


@pytest.fixture(scope="module")
def spec(client: TestClient) -> dict[str, Any]:
    reply = client.get("/v1/session-spec")
    assert reply.status_code == 200
    body: dict[str, Any] = reply.json()
    return body


@pytest.fixture
def new_edge(client: TestClient, spec: dict[str, Any]) -> Iterator[Callable[[str], Edge]]:
    """Edges for one test; their WebSockets are released even when the test fails (an open
    one would keep the module's test client from shutting down)."""
    made: list[Edge] = []

    def make(edge_id: str) -> Edge:
        made.append(Edge(client, spec, edge_id))
        return made[-1]

    yield make
    for edge in made:
        edge.release()


def status(client: TestClient) -> dict[str, Any]:
    body: dict[str, Any] = client.get("/v1/status").json()
    return body


# -- the documented behaviour ---------------------------------------------------------------


def test_handshake_matches_the_session_spec(
    client: TestClient, spec: dict[str, Any], new_edge: Callable[[str], Edge]
) -> None:
    assert spec["protocol_version"] == 2 and spec["path"] == "/v1/stream"
    assert spec["subprotocols"] == [SUBPROTOCOL]
    edge = new_edge("conf-handshake")
    edge.open()
    welcome = edge.welcome
    # §3: exactly the documented fields.
    assert set(welcome) == {
        "v",
        "t",
        "session_id",
        "master_version",
        "cut_shape",
        "window",
        "acked_seq",
        "config",
        "capabilities",
    }
    assert welcome["capabilities"] == {}  # version 2 defines none (§10.2)
    # §6.3: one window: the run's, WELCOME's and the session spec's are one number.
    assert welcome["window"] == spec["window"] == spec["config"]["window"] == WINDOW
    assert welcome["cut_shape"] == spec["cut_shape"]
    # §3.2: the SNAP holds exactly the spec's tensors; its checksum is §3.1's.
    assert [(n, list(t.shape)) for n, t in sorted(edge.replica.items())] == [
        (p["name"], p["shape"]) for p in spec["replica"]
    ]
    assert edge.checked == 1  # and it matched (Edge.open)
    edge.close(1000)


def test_pipelined_training_keeps_the_replica_bit_exact(
    client: TestClient, spec: dict[str, Any], new_edge: Callable[[str], Edge]
) -> None:
    edge = new_edge("conf-train")
    edge.open()
    seq, steps, mismatches, reconciled = 0, 9, 0, 0
    while edge.acked < steps - 1:
        # §6.3: ACTs while fewer than W batches are in flight (ACT to covering ACK).
        while seq < steps and len(edge.in_flight) < WINDOW:
            edge.send(edge.act(seq))
            edge.in_flight.append(seq)
            seq += 1
        frame = edge.receive()
        if frame["t"] == "grad":
            assert frame["cut_grad"]["shape"] == [BATCH, *spec["cut_shape"]]
            # The window is full until an ACK: the EGRAD goes alone (§6.4).
            edge.send(message("egrad", **egrad_fields(frame["seq"], 0, edge.grads())))
        elif frame["t"] in ("delta", "snap"):
            mismatches += not edge.apply(frame)
            reconciled += frame["t"] == "snap"
        elif frame["t"] == "ack":
            edge.acked = frame["seq"]
            edge.in_flight = [s for s in edge.in_flight if s > frame["seq"]]
        else:
            pytest.fail(f"unexpected {frame}")
    assert mismatches == 0 and reconciled >= 2  # every delta and both blends agree
    assert edge.checked >= steps
    row = status(client)["edges"]["conf-train"]
    assert row["samples_applied"] == steps * BATCH and row["highest_applied_seq"] == steps - 1
    edge.close(1000)


def test_act_beyond_the_window_is_refused(
    client: TestClient, spec: dict[str, Any], new_edge: Callable[[str], Edge]
) -> None:
    edge = new_edge("conf-window")
    edge.open()
    # GRADs come back at once, but no EGRAD goes: nothing is acknowledged, the slots stay taken.
    for seq in range(WINDOW):
        edge.send(edge.act(seq))
        assert edge.receive()["t"] == "grad"
    edge.send(edge.act(WINDOW))
    code, error = edge.refusal()
    assert error is not None and error["code"] == "window_exceeded" and code == 1008
    assert status(client)["edges"]["conf-window"]["samples_received"] == WINDOW * BATCH


def test_egrad_for_a_batch_never_sent_is_refused(
    client: TestClient, spec: dict[str, Any], new_edge: Callable[[str], Edge]
) -> None:
    edge = new_edge("conf-unknown-egrad")
    edge.open()
    before = status(client)["master_version"]
    edge.send(message("egrad", **egrad_fields(5, edge.version, edge.grads())))
    code, error = edge.refusal()
    assert error is not None and error["code"] == "unexpected_sequence" and code == 1002
    assert status(client)["master_version"] == before  # nothing applied


def test_egrad_already_answered_is_refused(
    client: TestClient, spec: dict[str, Any], new_edge: Callable[[str], Edge]
) -> None:
    edge = new_edge("conf-twice")
    edge.open()
    edge.send(edge.act(0))
    assert edge.receive()["t"] == "grad"
    edge.send(message("egrad", **egrad_fields(0, 0, edge.grads())))
    while edge.receive()["t"] != "ack":
        pass
    before = status(client)["master_version"]
    edge.send(message("egrad", **egrad_fields(0, 0, edge.grads())))
    code, error = edge.refusal()
    assert error is not None and error["code"] == "unexpected_sequence" and code == 1002
    assert status(client)["master_version"] == before


def test_piggybacked_egrad_for_a_batch_never_sent_is_refused_with_its_act(
    client: TestClient, spec: dict[str, Any], new_edge: Callable[[str], Edge]
) -> None:
    edge = new_edge("conf-piggy")
    edge.open()
    before = status(client)["master_version"]
    edge.send(edge.act(3, egrad=egrad_fields(1, 0, edge.grads())))
    code, error = edge.refusal()
    assert error is not None and error["code"] == "unexpected_sequence" and code == 1002
    assert status(client)["master_version"] == before  # neither the ACT nor its EGRAD


def test_oversized_message_gets_an_error_then_1009(
    client: TestClient, spec: dict[str, Any], new_edge: Callable[[str], Edge]
) -> None:
    edge = new_edge("conf-oversized")
    edge.open()
    edge.send(b"\x00" * (MAX_FRAME_BYTES + 1))
    code, error = edge.refusal()
    assert error is not None and error["code"] == "frame_too_large" and code == 1009


def test_wrong_base_is_caught_by_the_checksum_and_a_resync_repairs_it(
    client: TestClient, spec: dict[str, Any], new_edge: Callable[[str], Edge]
) -> None:
    edge = new_edge("conf-resync")
    edge.open()
    # One bit of one weight differs from the replica the cloud mirrors (§3.1's example).
    name = spec["replica"][0]["name"]
    edge.replica[name].view("<i4").reshape(-1)[0] ^= 1
    edge.send(edge.act(0))
    assert edge.receive()["t"] == "grad"
    edge.send(message("egrad", **egrad_fields(0, 0, edge.grads())))
    delta = edge.receive()
    assert delta["t"] == "delta" and delta["kind"] == "xor"
    assert not edge.apply(delta)  # the XOR landed on the wrong base: caught
    assert edge.receive()["t"] == "ack"
    edge.acked = 0
    # §3.1: ask for a resync by closing with 4002 and opening a new session.
    edge.close(4002)
    edge.open()
    assert edge.welcome["acked_seq"] == 0  # the new SNAP's checksum matched (Edge.open)
    # Training goes on from the exact replica: the next delta's checksum agrees.
    edge.send(edge.act(1))
    assert edge.receive()["t"] == "grad"
    edge.send(message("egrad", **egrad_fields(1, edge.version, edge.grads())))
    delta = edge.receive()
    assert delta["t"] == "delta" and edge.apply(delta)
    edge.close(1000)


# -- versions (§1.1) ------------------------------------------------------------------------

FIRST_RELEASE = Path(__file__).resolve().parents[1] / "protocol" / "vectors" / "first_release"
UPGRADE = "this cloud speaks simultrain.v2, the edge simultrain.v1: upgrade the edge, do not retry"


@pytest.mark.parametrize(
    "path",
    [*sorted(FIRST_RELEASE.glob("*-e2c-*.msgpack")), FIRST_RELEASE / "hello-resume.msgpack"],
    ids=lambda p: p.stem,
)
def test_a_first_release_edge_is_told_to_upgrade(
    new_edge: Callable[[str], Edge], path: Path
) -> None:
    """Recorded first-release frames, replayed as the first message of a session, as that
    release sent them (no subprotocol): ERROR in its own version, close 4000."""
    edge = new_edge("conf-first-release")
    edge.connect(subprotocols=[])
    assert edge.ws.accepted_subprotocol is None
    edge.send(path.read_bytes())
    code, error = edge.refusal()
    assert code == 4000 and error is not None
    assert error == {"v": 1, "t": "error", "code": "protocol_version_mismatch", "reason": UPGRADE}


@pytest.mark.parametrize(
    ("offered", "v", "advice"),
    [
        (["simultrain.v1"], 1, "upgrade the edge"),
        (["simultrain.v3", "chat"], 3, "upgrade this cloud or use an older edge"),
    ],
)
def test_no_common_version_is_refused_before_any_frame(
    new_edge: Callable[[str], Edge], offered: list[str], v: int, advice: str
) -> None:
    edge = new_edge("conf-versions")
    edge.connect(subprotocols=offered)
    assert edge.ws.accepted_subprotocol is None  # §1.1: accepted without a subprotocol
    code, error = edge.refusal()  # nothing sent: the refusal comes unasked
    assert code == 4000 and error is not None
    assert error["v"] == v and error["code"] == "protocol_version_mismatch"
    assert error["reason"].startswith("this cloud speaks simultrain.v2")
    assert advice in error["reason"]


def test_a_negotiated_session_refuses_a_frame_of_another_version(
    new_edge: Callable[[str], Edge],
) -> None:
    edge = new_edge("conf-v1-on-v2")
    edge.connect()
    assert edge.ws.accepted_subprotocol == SUBPROTOCOL
    edge.send((FIRST_RELEASE / "001-s1-e2c-hello.msgpack").read_bytes())
    code, error = edge.refusal()
    assert code == 4000 and error is not None and error["code"] == "protocol_version_mismatch"


def test_an_edge_offering_no_subprotocol_is_served_by_its_hello_version(
    spec: dict[str, Any], new_edge: Callable[[str], Edge]
) -> None:
    """§1.1 point 5: the compatibility path; a version 2 HELLO opens the session."""
    edge = new_edge("conf-no-subprotocol")
    edge.connect(subprotocols=[])
    edge.send(
        message(
            "hello",
            edge_id="conf-no-subprotocol",
            model_id=spec["model_id"],
            cut_shape=spec["cut_shape"],
            config={},
            token=None,
            resume=None,
            model_fingerprint=None,
            capabilities={"from-a-newer-edge": True},  # ignored (§10.2)
        )
    )
    welcome = edge.receive()
    assert welcome["t"] == "welcome" and welcome["capabilities"] == {}
    assert edge.receive()["t"] == "snap"
    edge.close(1000)


# -- the fingerprint (§3.3) ----------------------------------------------------------------


def test_the_session_spec_fingerprint_is_the_recipe_over_its_architecture(
    spec: dict[str, Any],
) -> None:
    assert fingerprint(spec["architecture"]) == spec["model_fingerprint"]
    # The architecture's edge stage is the replica of this (simultrain) run.
    assert spec["architecture"]["edge_stage"] == spec["replica"]


def test_another_fingerprint_is_refused_with_4003(new_edge: Callable[[str], Edge]) -> None:
    edge = new_edge("conf-other-model")
    edge.connect()
    edge.hello(model_fingerprint="0" * 64)
    code, error = edge.refusal()
    assert code == 4003 and error is not None and error["code"] == "model_mismatch"


def test_a_copied_fingerprint_trains_only_with_the_spec_s_shapes(
    client: TestClient, spec: dict[str, Any], new_edge: Callable[[str], Edge]
) -> None:
    """§3.3: a client that copies the fingerprint passes the handshake; its gradients must
    still have the replica's shapes, or nothing is applied."""
    edge = new_edge("conf-copied-fingerprint")
    edge.open()  # HELLO carries the session spec's fingerprint, copied
    edge.send(edge.act(0))
    assert edge.receive()["t"] == "grad"
    before = status(client)["master_version"]
    grads = edge.grads()
    name = spec["replica"][0]["name"]
    grads[name] = np.zeros((*grads[name].shape, 2), np.float32)  # its own, other shape
    edge.send(message("egrad", **egrad_fields(0, 0, grads)))
    code, error = edge.refusal()
    assert code == 1007 and error is not None and error["code"] == "invalid_tensor"
    assert status(client)["master_version"] == before


# -- the smaller rules ------------------------------------------------------------------------


def test_a_piggyback_not_below_its_act_is_unexpected_sequence(
    client: TestClient, new_edge: Callable[[str], Edge]
) -> None:
    """§3, ACT's `egrad`: a sequence rule, refused as one (it was malformed_frame)."""
    edge = new_edge("conf-piggy-seq")
    edge.open()
    edge.send(edge.act(0))
    assert edge.receive()["t"] == "grad"
    before = status(client)["master_version"]
    edge.send(edge.act(1, egrad=egrad_fields(1, 0, edge.grads())))
    code, error = edge.refusal()
    assert code == 1002 and error is not None and error["code"] == "unexpected_sequence"
    assert status(client)["master_version"] == before


def test_an_error_from_the_edge_is_not_answered(
    client: TestClient, new_edge: Callable[[str], Edge]
) -> None:
    """§1: the side that receives ERROR answers nothing but the closing handshake."""
    service = client.app.state.service  # type: ignore[attr-defined]
    refused = service.metrics.rejected.labels("illegal_transition")
    before = refused._value.get()
    edge = new_edge("conf-edge-error")
    edge.open()
    edge.send(message("error", code="frame_too_large", reason="a GRAD too large for me"))
    edge.send(edge.act(0))  # after its ERROR, discarded unread
    edge.close(1009)
    assert refused._value.get() == before
    assert "conf-edge-error" not in service.connections


def test_egrads_around_a_resync_are_applied_exactly_once(
    client: TestClient, new_edge: Callable[[str], Edge]
) -> None:
    """§3.1, "EGRADs around a 4002 close": one sent before the close is applied, one never
    sent comes again with its batch, whose cloud-stage step is not taken twice."""
    edge = new_edge("conf-resync-egrads")
    edge.open()
    start = status(client)["master_version"]
    edge.send(edge.act(0))
    edge.send(edge.act(1))
    assert [edge.receive()["t"], edge.receive()["t"]] == ["grad", "grad"]  # 2 cloud steps
    edge.send(message("egrad", **egrad_fields(0, 0, edge.grads())))  # 1 edge step
    while edge.receive()["t"] != "ack":
        pass
    edge.acked = 0
    edge.close(4002)  # EGRAD 1 is never sent
    edge.open()
    assert edge.welcome["acked_seq"] == 0
    edge.send(edge.act(1))  # batch 1 again, at the resynced replica
    assert edge.receive()["t"] == "grad"
    edge.send(message("egrad", **egrad_fields(1, edge.version, edge.grads())))
    frame = edge.receive()
    while frame["t"] != "ack":
        frame = edge.receive()
    assert frame["seq"] == 1
    row = status(client)["edges"]["conf-resync-egrads"]
    assert row["steps_applied"] == 2 and row["samples_applied"] == 2 * BATCH
    assert status(client)["master_version"] - start == 4  # 2 cloud + 2 edge steps, no more
    edge.close(1000)


def test_the_message_rate_is_a_published_token_bucket(spec: dict[str, Any]) -> None:
    """§5, "Message rate": burst 2r at once, then r per second."""
    limits = spec["limits"]
    assert limits["max_message_burst"] == 2 * limits["max_messages_per_s"]
    now = [0.0]
    bucket = TokenBucket(5.0, clock=lambda: now[0])
    for _ in range(10):
        bucket.take()
    with pytest.raises(RateLimited):
        bucket.take()
    now[0] += 0.2  # one token back
    bucket.take()
    with pytest.raises(RateLimited):
        bucket.take()
