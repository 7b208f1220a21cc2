"""An edge client written from PROTOCOL.md alone, runnable under the conformance kit.

Nothing here imports SimulTrain: messages are msgpack maps as §2-§4 lay them out, the
replica arithmetic is §3.1's, the checksum zlib's CRC-32 over the bytes §3.1 names, the
fingerprint §3.3's recipe over the session spec's ``architecture``. It trains like an edge
whose model is not real (random activations and gradients, which the cloud takes as any
others), so every rule it follows is a rule of the document, not of the reference code.

Run it under the kit (docs/CONFORMANCE.md)::

    simultrain conformance --client-cmd 'python tests/conformance/doc_edge.py'

It reads SIMULTRAIN_CONFORMANCE_URL, _EDGE_ID, _STEPS and _TOKEN. ``--defect NAME`` breaks
one rule on purpose, so that the kit's tests can show each case catches the client that
breaks it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import urllib.request
import zlib
from typing import Any

import lz4.frame
import msgpack
import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

VERSION = 2  # §1.1: the major version this client speaks
SUBPROTOCOL = f"simultrain.v{VERSION}"
EX_CONFIG = 78  # §7: a version or model the cloud does not serve needs an operator
DEFECTS = (
    "no-subprotocol",  # offers no subprotocol
    "skip-checksum",  # never compares a checksum
    "ignore-window",  # one batch more in flight than the window
    "retry-always",  # reconnects whatever the close code
    "accept-oversize",  # reads a message over max_frame_bytes
    "no-resume",  # HELLO's resume always nil
)

# §4: dtype name → little-endian numpy dtype.
DTYPES = {
    "float32": "<f4",
    "float16": "<f2",
    "float64": "<f8",
    "int64": "<i8",
    "int32": "<i4",
    "uint8": "u1",
}
RECONNECT = {1000, 1001, 1006, 1011, 1012, 1013, 4002}  # §7: close codes worth a new session


# -- bytes, as PROTOCOL.md writes them ----------------------------------------------------


def tensor(array: np.ndarray, codec: str = "raw") -> dict[str, Any]:
    """§4: {dtype, shape, codec, data}; `raw` is the little-endian elements in C order."""
    name = {np.dtype(v).newbyteorder("="): k for k, v in DTYPES.items()}[array.dtype]
    data = np.ascontiguousarray(array, dtype=DTYPES[name]).tobytes()
    if codec == "lz4":
        data = lz4.frame.compress(data, store_size=True)
    return {"dtype": name, "shape": list(array.shape), "codec": codec, "data": data}


def array_of(wire: dict[str, Any]) -> np.ndarray:
    """§4.1, every codec: the decoded value x̂ in the tensor's dtype."""
    shape, dtype = tuple(wire["shape"]), DTYPES[wire["dtype"]]
    n = int(np.prod(shape, dtype=np.int64))
    data, codec = wire["data"], wire["codec"]
    if codec == "lz4":
        data = lz4.frame.decompress(data)
    if codec in ("raw", "lz4"):
        return np.frombuffer(data, dtype).reshape(shape).copy()
    if codec == "fp16":
        return np.frombuffer(data, "<f2").astype(dtype).reshape(shape)
    if codec == "int8":
        q = np.frombuffer(data, "i1").astype(np.float64)
        return (q * float(wire["scale"])).astype(dtype).reshape(shape)
    if codec == "topk":
        index = "<i4" if wire["index_dtype"] == "int32" else "<i8"
        dense = np.zeros(n, dtype)
        dense[np.frombuffer(wire["indices"], index)] = np.frombuffer(data, dtype)
        return dense.reshape(shape)
    raise ValueError(f"codec {codec!r} is not in §4.1")


def message(kind: str, **fields: Any) -> bytes:
    """§2: one msgpack map, `v` and `t` then the fields; bin for bytes, str for text."""
    return msgpack.packb({"v": VERSION, "t": kind, **fields}, use_bin_type=True)  # type: ignore[no-any-return]


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
        array = replica[name]
        crc = zlib.crc32(np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes(), crc)
    return crc


def reconcile(edge: np.ndarray, master: np.ndarray, beta: float) -> np.ndarray:
    """§3.1: b = fl32(β), c = fl32(1 − β computed in binary64); (b ⊗ w_e) ⊕ (c ⊗ w_c)."""
    b, c = np.float32(beta), np.float32(1.0 - beta)
    return (b * edge) + (c * master)  # type: ignore[no-any-return]


def fingerprint(architecture: dict[str, Any]) -> str:
    """§3.3: SHA-256 of the canonical text built from the session spec's `architecture`."""

    def shape(dims: list[int]) -> str:
        return "[" + ",".join(str(d) for d in dims) + "]"

    edge = sorted(architecture["edge_stage"], key=lambda t: t["name"].encode())
    lines = [
        "simultrain-fingerprint 1",
        f"input {shape(architecture['input_shape'])}",
        f"cut {shape(architecture['cut_shape'])}",
        *(f"edge {t['name']} {t['dtype']} {shape(t['shape'])}" for t in edge),
        f"cloud {architecture['cloud_stage_digest']}",
    ]
    return hashlib.sha256("".join(line + "\n" for line in lines).encode()).hexdigest()


def apply(replica: dict[str, np.ndarray], frame: dict[str, Any], beta: float) -> None:
    """§3.1: what a DELTA or SNAP makes of the replica (in place)."""
    tensors = {name: array_of(w) for name, w in frame["tensors"].items()}
    if frame["t"] == "snap":
        if frame["reconcile"]:
            tensors = {n: reconcile(replica[n], t.astype("<f4"), beta) for n, t in tensors.items()}
        replica.clear()
        replica.update({n: t.astype("<f4") for n, t in tensors.items()})
        return
    for name, delta in tensors.items():
        if frame["kind"] == "xor":
            replica[name] = (replica[name].view("<i4") ^ delta.astype("<i4")).view("<f4")
        else:
            replica[name] = replica[name] + delta.astype("<f4")


# -- the client -----------------------------------------------------------------------------


class Ended(Exception):
    """The session is over; ``code`` is the close code, ``reason`` what was said."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class DocEdge:
    def __init__(
        self, url: str, edge_id: str, steps: int, token: str | None, defect: str | None
    ) -> None:
        self.url = url.rstrip("/")
        self.edge_id = edge_id
        self.steps = steps
        self.token = token or None
        self.defect = defect
        with urllib.request.urlopen(f"{self.url}/v1/session-spec", timeout=30) as reply:
            self.spec: dict[str, Any] = json.load(reply)
        self.fingerprint = fingerprint(self.spec["architecture"])
        if self.fingerprint != self.spec["model_fingerprint"]:
            raise SystemExit("the session spec's fingerprint is not §3.3's recipe over it")
        self.max_frame_bytes = int(self.spec["limits"]["max_frame_bytes"])
        self.rng = np.random.default_rng(abs(hash(edge_id)) % 2**32)
        self.replica: dict[str, np.ndarray] = {}
        self.version = 0
        self.beta = 0.9
        self.acked = -1  # every batch ≤ this is applied (§3 ACK)
        self.next_seq = 0
        self.kept: set[int] = set()  # batches sent and not yet acknowledged: re-sent

    # transport
    def run(self) -> int:
        while True:
            try:
                self.session()
            except Ended as ended:
                print(f"session ended: {ended.code} {ended.reason}", flush=True)
                if ended.code == 1000 and self.done():
                    return 0
                if ended.code in (4000, 4003) and self.defect != "retry-always":
                    return EX_CONFIG
                retry = ended.code in RECONNECT or "superseded" in ended.reason
                if not retry and self.defect != "retry-always":
                    return 1
            except InvalidStatus as refused:
                print(f"upgrade refused: HTTP {refused.response.status_code}", flush=True)
                if self.defect != "retry-always":
                    return 1
            time.sleep(0.2)

    def done(self) -> bool:
        return self.acked >= self.steps - 1

    def session(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        offered = [] if self.defect == "no-subprotocol" else [Subprotocol(SUBPROTOCOL)]
        with connect(
            self.url.replace("http://", "ws://", 1) + "/v1/stream",
            subprotocols=offered or None,
            additional_headers=headers,
            max_size=None,
            compression=None,
            open_timeout=10,
        ) as ws:
            try:
                if offered and ws.subprotocol != SUBPROTOCOL:
                    # §1.1: the cloud speaks none of our versions; its refusal follows.
                    self.read_refusal(ws)
                self.hello(ws)
                self.stream(ws)
            except ConnectionClosed as closed:
                self.drain(ws)
                rcvd = closed.rcvd
                raise Ended(rcvd.code if rcvd else 1006, rcvd.reason if rcvd else "") from None

    def drain(self, ws: ClientConnection) -> None:
        """The frames the cloud sent before it closed and this client has not read (a send
        failed on the close first): their ACKs count for the next HELLO's resume (§6.5)."""
        while True:
            try:
                data = ws.recv(timeout=0)
            except (ConnectionClosed, TimeoutError):
                return
            frame = msgpack.unpackb(data, raw=False) if isinstance(data, bytes) else {}
            if frame.get("t") == "ack":
                self.on_ack(frame["seq"])

    def read_refusal(self, ws: ClientConnection) -> None:
        try:
            data = ws.recv(timeout=5)
            print(f"refused: {msgpack.unpackb(data, raw=False).get('reason')}", flush=True)
        except TimeoutError:
            pass
        ws.close(4000, "no common protocol version")
        raise Ended(4000, "no common protocol version")

    def receive(self, ws: ClientConnection) -> dict[str, Any]:
        data = ws.recv(timeout=60)
        if not isinstance(data, bytes):
            ws.send(message("error", code="unknown_message_type", reason="text message"))
            ws.close(1003, "text message")
            raise Ended(1003, "text message")
        if len(data) > self.max_frame_bytes and self.defect != "accept-oversize":
            # §1: refused with ERROR frame_too_large and close 1009.
            reason = f"message of {len(data)} bytes"
            ws.send(message("error", code="frame_too_large", reason=reason))
            ws.close(1009, reason)
            raise Ended(1009, reason)
        if len(data) > self.max_frame_bytes:
            return {"v": VERSION, "t": "ignored"}
        frame: dict[str, Any] = msgpack.unpackb(data, raw=False)
        if frame.get("t") == "error":
            print(f"cloud error {frame['code']}: {frame['reason']}", flush=True)
        elif frame.get("v") != VERSION:
            ws.close(4000, "protocol version")
            raise Ended(4000, "the cloud wrote another version")
        return frame

    def check(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        """§3.1: apply a DELTA or SNAP and compare the replica's checksum with the cloud's."""
        apply(self.replica, frame, self.beta)
        self.version = frame["to_version"] if frame["t"] == "delta" else frame["master_version"]
        if self.defect != "skip-checksum" and checksum(self.replica) != frame["checksum"]:
            ws.close(4002, "replica checksum mismatch: resync")
            raise Ended(4002, "replica checksum mismatch: resync")

    def hello(self, ws: ClientConnection) -> None:
        resume = None if self.acked < 0 or self.defect == "no-resume" else self.acked
        ws.send(
            message(
                "hello",
                edge_id=self.edge_id,
                model_id=self.spec["model_id"],
                cut_shape=self.spec["cut_shape"],
                config={"mode": self.spec["mode"]},
                token=self.token,
                resume=resume,
                model_fingerprint=self.fingerprint,
                capabilities={},
            )
        )
        welcome = self.receive(ws)
        if welcome["t"] != "welcome":
            raise Ended(1002, f"expected WELCOME, got {welcome['t']}")
        self.beta = float(welcome["config"]["beta"])
        self.window = max(int(welcome["window"]), 1) + (self.defect == "ignore-window")
        if welcome["acked_seq"] is not None:
            self.acked = max(self.acked, int(welcome["acked_seq"]))
        self.kept = {seq for seq in self.kept if seq > self.acked}
        self.next_seq = max(self.next_seq, self.acked + 1)
        snap = self.receive(ws)
        if snap["t"] != "snap" or snap["reconcile"]:
            raise Ended(1002, "a session starts with a replacing SNAP")
        self.replica = {}
        self.check(ws, snap)

    def stream(self, ws: ClientConnection) -> None:
        in_flight: list[int] = []
        resend = sorted(self.kept)
        edge_version: dict[int, int] = {}
        while True:
            while len(in_flight) < self.window and (resend or self.next_seq < self.steps):
                seq = resend.pop(0) if resend else self.next_seq
                self.next_seq = max(self.next_seq, seq + 1)
                edge_version[seq] = self.version
                ws.send(self.act(seq))
                in_flight.append(seq)
            if self.done():
                ws.send(message("bye", reason="training finished"))
                while True:  # the cloud closes (ConnectionClosed); anything before is read
                    self.receive(ws)
            frame = self.receive(ws)
            kind = frame["t"]
            if kind == "grad":
                if frame["delta"] is not None:
                    self.check(ws, {"t": "delta", **frame["delta"]})
                seq = frame["seq"]
                ws.send(message("egrad", **egrad_fields(seq, edge_version[seq], self.grads())))
            elif kind in ("delta", "snap"):
                self.check(ws, frame)
            elif kind == "ack":
                self.on_ack(frame["seq"])
                in_flight = [seq for seq in in_flight if seq > self.acked]

    def on_ack(self, seq: int) -> None:
        """§3 ACK: every batch up to ``seq`` is applied; none of them is kept to re-send."""
        self.acked = max(self.acked, seq)
        self.kept = {kept for kept in self.kept if kept > self.acked}

    def act(self, seq: int) -> bytes:
        """docs/DESIGN.md §3.1 as bytes: random activations of the cut shape, random labels."""
        batch = int(self.spec["config"].get("batch_size") or 8)
        shape = (batch, *self.spec["cut_shape"])
        activations = self.rng.standard_normal(shape).astype(np.float32)
        labels = self.rng.integers(0, self.spec["num_classes"], batch).astype(np.int64)
        self.kept.add(seq)
        return message(
            "act",
            seq=seq,
            edge_version=self.version,
            activations=tensor(activations, "lz4"),
            labels=tensor(labels),
            egrad=None,
        )

    def grads(self) -> dict[str, np.ndarray]:
        # §3: one gradient per parameter of the session spec's replica, its shape.
        return {
            p["name"]: (1e-3 * self.rng.standard_normal(p["shape"])).astype(np.float32)
            for p in self.spec["replica"]
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--defect", choices=DEFECTS, help="break one rule on purpose")
    args = parser.parse_args()
    env = os.environ
    edge = DocEdge(
        env["SIMULTRAIN_CONFORMANCE_URL"],
        env["SIMULTRAIN_CONFORMANCE_EDGE_ID"],
        int(env["SIMULTRAIN_CONFORMANCE_STEPS"]),
        env.get("SIMULTRAIN_CONFORMANCE_TOKEN"),
        args.defect,
    )
    return edge.run()


if __name__ == "__main__":
    sys.exit(main())
