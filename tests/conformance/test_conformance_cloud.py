"""Conformance: an edge client built from PROTOCOL.md alone, against the real cloud app.

Nothing here imports the project's encoder, decoder, sessions or training code: messages are
msgpack maps written as the document's §2-§4 and §8 lay them out (msgpack and lz4 directly),
the replica arithmetic is §3.1's, the checksum is zlib's CRC-32 over the bytes §3.1 names.
The cloud is the real FastAPI app in-process (Starlette's TestClient). Each test checks the
documented reply or ERROR code and close code.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import lz4.frame
import msgpack
import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from simultrain.cloud.app import create_app
from simultrain.cloud.settings import CloudSettings
from simultrain.shared.training.config import RunConfig

WINDOW = 2
BATCH = 4
MAX_FRAME_BYTES = 1 << 20
# R = 3: a reconciling SNAP every third applied batch, so §3.1's blend is exercised too.
RUN = RunConfig(mode="simultrain", dataset="imu", window=WINDOW, reconcile_every=3, batch_size=4)

# §4: dtype name → little-endian numpy dtype.
DTYPES = {
    "float32": "<f4",
    "float16": "<f2",
    "float64": "<f8",
    "int64": "<i8",
    "int32": "<i4",
    "uint8": "u1",
}


# -- bytes, as PROTOCOL.md writes them ----------------------------------------------------


def tensor(array: np.ndarray, codec: str = "raw") -> dict[str, Any]:
    """§4: {dtype, shape, codec, data}; `raw` is the little-endian elements in C order."""
    name = {np.dtype(v).newbyteorder("="): k for k, v in DTYPES.items()}[array.dtype]
    data = np.ascontiguousarray(array, dtype=DTYPES[name]).tobytes()
    if codec == "lz4":
        data = lz4.frame.compress(data, store_size=True)
    return {"dtype": name, "shape": list(array.shape), "codec": codec, "data": data}


def array_of(wire: dict[str, Any]) -> np.ndarray:
    """§4.1 for the lossless codecs and fp16 (what this cloud sends)."""
    shape = tuple(wire["shape"])
    data = wire["data"]
    if wire["codec"] == "lz4":
        data = lz4.frame.decompress(data)
    if wire["codec"] == "fp16":
        return np.frombuffer(data, "<f2").astype(DTYPES[wire["dtype"]]).reshape(shape)
    assert wire["codec"] in ("raw", "lz4"), wire["codec"]
    return np.frombuffer(data, DTYPES[wire["dtype"]]).reshape(shape).copy()


def message(kind: str, **fields: Any) -> bytes:
    """§2: one msgpack map, `v` and `t` then the fields; bin for bytes, str for text."""
    return msgpack.packb({"v": 1, "t": kind, **fields}, use_bin_type=True)  # type: ignore[no-any-return]


def egrad_fields(seq: int, edge_version: int, grads: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        "seq": seq,
        "edge_version": edge_version,
        "grads": {name: tensor(g) for name, g in grads.items()},
        "samples": 0,
    }


def checksum(replica: dict[str, np.ndarray]) -> int:
    """§3.1: CRC-32 over the tensors in ascending UTF-8 name order, little-endian, C order."""
    crc = 0
    for name in sorted(replica, key=lambda n: n.encode()):
        crc = zlib.crc32(np.ascontiguousarray(replica[name], "<f4").tobytes(), crc)
    return crc


def reconcile(edge: np.ndarray, master: np.ndarray, beta: float) -> np.ndarray:
    """§3.1: b = fl32(β), c = fl32(1 − β computed in binary64); (b ⊗ w_e) ⊕ (c ⊗ w_c)."""
    b, c = np.float32(beta), np.float32(1.0 - beta)
    return (b * edge) + (c * master)  # type: ignore[no-any-return]


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
    def open(self) -> None:
        self._ctx = self.client.websocket_connect("/v1/stream")
        self.ws = self._ctx.__enter__()
        self.ws.send_bytes(
            message(
                "hello",
                edge_id=self.edge_id,
                model_id=self.spec["model_id"],
                cut_shape=self.spec["cut_shape"],
                config={"mode": self.spec["mode"]},
                token=None,
                resume=self.acked if self.acked >= 0 else None,
                model_fingerprint=self.spec["model_fingerprint"],
            )
        )
        self.welcome = self.receive()
        assert self.welcome["t"] == "welcome", self.welcome
        self.in_flight, self.awaiting_egrad = [], []
        snap = self.receive()
        assert snap["t"] == "snap" and snap["reconcile"] is False
        # §3.1: the first SNAP replaces the replica; its checksum must agree.
        assert self.apply(snap), "the first SNAP's checksum does not match its tensors"

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
        assert frame["v"] == 1
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
        tensors = {name: array_of(w) for name, w in frame["tensors"].items()}
        if frame["t"] == "snap":
            beta = float(self.welcome["config"]["beta"])
            if frame["reconcile"]:
                tensors = {n: reconcile(self.replica[n], t, beta) for n, t in tensors.items()}
            self.replica = {n: t.astype("<f4") for n, t in tensors.items()}
            self.version = frame["master_version"]
        else:
            assert frame["from_version"] == self.version, "deltas arrive in order here"
            for name, delta in tensors.items():
                if frame["kind"] == "xor":
                    bits = self.replica[name].view("<i4") ^ delta
                    self.replica[name] = bits.view("<f4")
                else:
                    self.replica[name] = self.replica[name] + delta.astype("<f4")
            self.version = frame["to_version"]
        self.checked += 1
        return checksum(self.replica) == frame["checksum"]

    # SPEC steps 1 and 3, as bytes
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
    assert spec["protocol_version"] == 1 and spec["path"] == "/v1/stream"
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
    }
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
