"""Builders shared by the protocol tests: valid frames, open session pairs, raw wire maps.

Bytes-in/events-out tests with no event loop (the first tier of the README's "Development").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest

from simultrain.shared.protocol import (
    Act,
    CloudSession,
    Delta,
    EdgeSession,
    EGrad,
    Frame,
    Grad,
    Hello,
    Limits,
    Welcome,
    WireTensor,
    encode_frame,
)

CUT_SHAPE = (2,)


def tensor(
    shape: tuple[int, ...], dtype: str = "float32", codec: str = "raw", **params: Any
) -> WireTensor:
    """A deterministic tensor with distinct, finite values."""
    size = int(np.prod(shape))
    values = (np.arange(size, dtype=np.float64) - size / 3) / 4
    return WireTensor(values.astype(dtype).reshape(shape), codec, params)  # type: ignore[arg-type]


def act(seq: int, *, batch: int = 2, edge_version: int = 0, egrad: EGrad | None = None) -> Act:
    return Act(
        seq=seq,
        edge_version=edge_version,
        activations=tensor((batch, *CUT_SHAPE)),
        labels=WireTensor(np.arange(batch, dtype=np.int64) % 3),
        egrad=egrad,
    )


def grad(seq: int, *, batch: int = 2, master_version: int = 1, delta: Delta | None = None) -> Grad:
    return Grad(
        seq=seq,
        master_version=master_version,
        cut_grad=tensor((batch, *CUT_SHAPE)),
        loss=0.25,
        delta=delta,
    )


def egrad(seq: int, *, edge_version: int = 0) -> EGrad:
    return EGrad(
        seq=seq,
        edge_version=edge_version,
        grads={"conv.weight": tensor((3, 2)), "conv.bias": tensor((3,), codec="lz4")},
    )


def hello(**changes: Any) -> Hello:
    frame = Hello(
        edge_id="edge-1",
        model_id="imu-cnn1d",
        cut_shape=CUT_SHAPE,
        config={"mode": "simultrain", "alpha": 0.5, "window": 2},
        token="token",
    )
    return dataclasses.replace(frame, **changes)


def welcome(**changes: Any) -> Welcome:
    frame = Welcome(session_id="session-1", master_version=0, cut_shape=CUT_SHAPE, window=2)
    return dataclasses.replace(frame, **changes)


def open_pair(
    *,
    window: int | None = 2,
    acked_seq: int | None = None,
    edge_limits: Limits | None = None,
    cloud_limits: Limits | None = None,
    egrad_needs_grad: bool = True,
) -> tuple[EdgeSession, CloudSession]:
    """An edge and a cloud session that completed the handshake through real bytes."""
    edge = EdgeSession(
        limits=edge_limits or Limits(window=window), egrad_needs_grad=egrad_needs_grad
    )
    cloud = CloudSession(
        limits=cloud_limits or Limits(window=window), egrad_needs_grad=egrad_needs_grad
    )
    cloud.receive_data(edge.send(hello()))
    edge.receive_data(cloud.send(welcome(window=window, acked_seq=acked_seq)))
    return edge, cloud


def wire_of(frame: Frame) -> dict[str, Any]:
    """The decoded msgpack map of a valid frame, for tests that break it on purpose."""
    return msgpack.unpackb(encode_frame(frame), raw=False)  # type: ignore[no-any-return]


def pack(wire: object) -> bytes:
    return msgpack.packb(wire, use_bin_type=True)  # type: ignore[no-any-return]


@dataclasses.dataclass
class Builders:
    """The module-level builders, handed to tests as one fixture."""

    tensor: Callable[..., WireTensor] = tensor
    act: Callable[..., Act] = act
    grad: Callable[..., Grad] = grad
    egrad: Callable[..., EGrad] = egrad
    hello: Callable[..., Hello] = hello
    welcome: Callable[..., Welcome] = welcome
    open_pair: Callable[..., tuple[EdgeSession, CloudSession]] = open_pair
    wire_of: Callable[[Frame], dict[str, Any]] = wire_of
    pack: Callable[[object], bytes] = pack
    cut_shape: tuple[int, ...] = CUT_SHAPE


@pytest.fixture(scope="session")
def build() -> Builders:
    return Builders()
