"""PROTOCOL.md §3.1: the replica arithmetic as specified, and checksums that catch a wrong base.

The first tests pin the document's numbers (the checksum example, the blend's rounding rule);
the others run the real cloud and edge runtimes in-process and break the edge's replica on
purpose: the next DELTA's checksum must catch it, the edge must stop producing and want a
resync, and the resync SNAP must make it usable again.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from simultrain.shared.data import BatchStream, load_dataset
from simultrain.shared.errors import MalformedFrame
from simultrain.shared.protocol import (
    Delta,
    Snap,
    WireTensor,
    decode_frame,
    encode_frame,
    replica_checksum,
)
from simultrain.shared.training.assembly import Shard, build_cloud, build_edge
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.options import Codecs
from simultrain.shared.training.runtime import CloudRuntime, EdgeRuntime, checksum_of
from simultrain.shared.training.weights import blend

DOC = Path(__file__).resolve().parents[2] / "PROTOCOL.md"


def test_documented_checksum_example() -> None:
    replica = {"b": np.array([1.0], np.float32), "a": np.array([0.5, -2.0], np.float32)}
    expected = zlib.crc32(bytes.fromhex("0000003f000000c00000803f"))
    assert replica_checksum(replica) == expected == 0xEEAD94C1
    assert "**0xeead94c1**" in DOC.read_text(encoding="utf-8")


@pytest.mark.parametrize("beta", [0.9, 0.99, 0.5, 0.3])
def test_blend_is_the_documented_float32_rule(beta: float) -> None:
    g = torch.Generator().manual_seed(0)
    edge, master = torch.randn(50_000, generator=g) * 3, torch.randn(50_000, generator=g)
    ours = blend(edge, master, beta).numpy()
    b, c = np.float32(beta), np.float32(1.0 - beta)  # 1 − β in binary64, then rounded
    documented = (b * edge.numpy()) + (c * master.numpy())
    assert np.array_equal(ours.view(np.int32), documented.view(np.int32))
    if beta in (0.9, 0.99):  # the order matters (PROTOCOL.md §3.1 says so)
        other = (b * edge.numpy()) + ((np.float32(1) - b) * master.numpy())
        assert not np.array_equal(ours.view(np.int32), other.view(np.int32))


def test_checksum_field_is_a_crc32() -> None:
    snap = Snap(master_version=0, tensors={}, reconcile=False, checksum=(1 << 32) - 1)
    assert decode_frame(encode_frame(snap)) == snap
    data = encode_frame(Snap(master_version=0, tensors={}, reconcile=False, checksum=0))
    patched = data.replace(b"\xa8checksum\x00", b"\xa8checksum\xcf" + (1 << 32).to_bytes(8, "big"))
    with pytest.raises(MalformedFrame, match="2\\^32"):
        decode_frame(patched)


def _pair(delta_codec: str) -> tuple[CloudRuntime, EdgeRuntime, BatchStream]:
    run = RunConfig(
        mode="simultrain", window=2, reconcile_every=2, codecs=Codecs(delta=delta_codec)
    )
    data = load_dataset("imu", seed=0)
    spec = data.model_spec(None)
    cloud = build_cloud(run, spec).runtime
    edge = build_edge(run, spec, Shard(data)).runtime
    _, snap = cloud.open_session("e")
    edge.on_snap(snap)
    stream = BatchStream(data.x_train, data.y_train, batch_size=8, seed=1)
    return cloud, edge, stream


def _step(cloud: CloudRuntime, edge: EdgeRuntime, stream: BatchStream) -> list[str]:
    """One batch through both runtimes, frames as the wire would carry them."""
    act = edge.produce(*next(stream))
    kinds = []
    for _, reply in cloud.on_act("e", decode_frame(encode_frame(act))):  # type: ignore[arg-type]
        egrad = edge.on_grad(decode_frame(encode_frame(reply)))  # type: ignore[arg-type]
        for _, frame in cloud.on_egrad("e", decode_frame(encode_frame(egrad))):  # type: ignore[arg-type]
            frame = decode_frame(encode_frame(frame))
            kinds.append(frame.type)
            if frame.type == "delta":
                edge.on_delta(frame)  # type: ignore[arg-type]
            elif frame.type == "snap":
                edge.on_snap(frame)  # type: ignore[arg-type]
            elif frame.type == "ack":
                edge.on_ack(frame)  # type: ignore[arg-type]
    return kinds


@pytest.mark.parametrize("delta_codec", ["lz4", "fp16"])
def test_checksums_agree_through_deltas_and_reconciliations(delta_codec: str) -> None:
    cloud, edge, stream = _pair(delta_codec)
    kinds = [kind for _ in range(4) for kind in _step(cloud, edge, stream)]
    assert kinds.count("snap") == 2 and kinds.count("delta") == 4
    assert edge.checksum_failures == 0 and edge.can_produce()
    assert checksum_of(edge.replica.current.tensors) == checksum_of(cloud.sessions["e"].mirror)  # type: ignore[union-attr]


@pytest.mark.parametrize("delta_codec", ["lz4", "fp16"])
def test_wrong_base_is_caught_and_a_resync_repairs_it(delta_codec: str) -> None:
    cloud, edge, stream = _pair(delta_codec)
    assert edge.replica is not None
    # One bit of one weight differs from the mirror: an XOR delta would flip signs and
    # exponents on it silently; an additive one would carry the error on for ever.
    name = next(iter(edge.replica.names()))
    broken = dict(edge.replica.current.tensors)
    flat = broken[name].detach().clone().contiguous().view(torch.int32).reshape(-1)
    flat[0] ^= 1
    broken[name] = flat.view(torch.float32).reshape(broken[name].shape)
    edge.replica.replace(broken, edge.replica.version)
    _step(cloud, edge, stream)
    assert edge.checksum_failures == 1 and edge.replica_corrupt
    assert edge.needs_resync(now=0.0) and not edge.can_produce()  # no training on garbage
    edge.on_snap(decode_frame(encode_frame(cloud.resync("e"))))  # type: ignore[arg-type]
    assert not edge.replica_corrupt and edge.can_produce()
    _step(cloud, edge, stream)
    assert edge.checksum_failures == 1


@pytest.mark.parametrize(
    ("delta_codec", "kind"),
    [("raw", "xor"), ("lz4", "xor"), ("fp16", "add"), ("int8", "add"), ("topk", "add")],
)
def test_the_delta_kind_follows_the_codec(delta_codec: str, kind: str) -> None:
    """PROTOCOL.md §3, DELTA: lossless codecs send `xor`, lossy ones `add`."""
    cloud, edge, stream = _pair(delta_codec)
    act = edge.produce(*next(stream))
    [(_, grad)] = cloud.on_act("e", act)  # type: ignore[arg-type]
    replies = cloud.on_egrad("e", edge.on_grad(grad))  # type: ignore[arg-type]
    deltas = [frame for _, frame in replies if isinstance(frame, Delta)]
    assert deltas and {delta.kind for delta in deltas} == {kind}


def test_a_float64_delta_is_rounded_to_binary32_before_the_add() -> None:
    """PROTOCOL.md §3.1: w ⊕ fl32(Δ) — two roundings, not fl32(w + Δ)."""
    _, edge, _ = _pair("fp16")
    assert edge.replica is not None
    weights = {n: t.detach().numpy().copy() for n, t in edge.replica.current.tensors.items()}
    rng = np.random.default_rng(3)
    change = {n: rng.normal(0.0, 1e-3, w.shape) for n, w in weights.items()}  # float64
    documented = {n: w + change[n].astype(np.float32) for n, w in weights.items()}
    once = {n: (w.astype(np.float64) + change[n]).astype(np.float32) for n, w in weights.items()}
    assert any(
        not np.array_equal(documented[n].view(np.int32), once[n].view(np.int32)) for n in weights
    ), "pick values where the two roundings differ"
    delta = Delta(
        from_version=edge.replica.version,
        to_version=edge.replica.version + 1,
        tensors={n: WireTensor(c) for n, c in change.items()},
        kind="add",
        checksum=replica_checksum(documented),
    )
    edge.on_delta(decode_frame(encode_frame(delta)))  # type: ignore[arg-type]
    assert edge.checksum_failures == 0
    held = {n: t.detach().numpy() for n, t in edge.replica.current.tensors.items()}
    assert all(np.array_equal(held[n].view(np.int32), documented[n].view(np.int32)) for n in held)
