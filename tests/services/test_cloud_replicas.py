"""The cloud's replica group (services/cloud/replicas.py) without processes: the rendezvous
read from the environment, and two replicas as two groups in one process, syncing through
a real gloo group on 127.0.0.1 (docs/REPLICAS.md)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
import torch
from torch import nn

from simultrain.cloud.replicas import Rendezvous, ReplicaGroup
from simultrain.shared.errors import ConfigError
from simultrain.shared.training.master import CloudMaster
from simultrain.shared.training.options import OptimizerConfig
from simultrain.shared.training.runtime import CloudSessionState

T = TypeVar("T")


def test_rendezvous_reads_torchruns_variables() -> None:
    assert Rendezvous.from_env({}) is None  # a single cloud
    env = {"MASTER_ADDR": "cloud-0.headless", "MASTER_PORT": "29501", "RANK": "2"}
    assert Rendezvous.from_env({**env, "WORLD_SIZE": "1"}) is None  # a group of one: plain
    assert Rendezvous.from_env({**env, "WORLD_SIZE": "3"}) == Rendezvous(
        "cloud-0.headless", 29501, 2, 3
    )
    # compose: no ordinal, size unknown until the join window closes
    assert Rendezvous.from_env({"MASTER_ADDR": "store"}) == Rendezvous("store", 29500, None, None)


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"RANK": "3", "WORLD_SIZE": "3"}, "outside WORLD_SIZE"),
        ({"RANK": "x"}, "rendezvous"),
        ({"MASTER_PORT": "70000"}, "TCP port"),
        ({"WORLD_SIZE": "0"}, "at least 1"),
    ],
)
def test_bad_rendezvous_is_a_config_error(env: dict[str, str], complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        Rendezvous.from_env({"MASTER_ADDR": "127.0.0.1", **env})


def make_master() -> CloudMaster:
    torch.manual_seed(0)
    return CloudMaster(
        nn.Sequential(nn.Linear(4, 3)),
        nn.Sequential(nn.ReLU(), nn.Linear(3, 2)),
        optimizer=OptimizerConfig(lr=0.1),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Replica:
    """A master, its sessions and its compute thread, as CloudService holds them."""

    def __init__(self, rank: int, port: int) -> None:
        self.master = make_master()
        self.sessions: dict[str, CloudSessionState] = {}
        self.executor = ThreadPoolExecutor(max_workers=1)
        self.group = ReplicaGroup(
            Rendezvous("127.0.0.1", port, rank, 2),
            self.master,
            self.sessions,
            self.on_compute,
            sync_every=1,
            sync_interval_s=0.05,
            timeout_s=20,
            join_window_s=0.5,
        )

    def on_compute(self, fn: Callable[[], T]) -> T:
        return self.executor.submit(fn).result()

    def train(self, edge_id: str, seq: int) -> None:
        def step() -> None:
            g = torch.Generator().manual_seed(seq)
            self.master.cloud_step(torch.randn(8, 3, generator=g), torch.randint(0, 2, (8,)))
            state = self.sessions.setdefault(edge_id, CloudSessionState(edge_id))
            state.highest_applied_seq = state.highest_cloud_step_seq = seq
            state.samples_applied += 8

        self.on_compute(step)
        self.group.updated()

    def close(self) -> None:
        self.group.stop()
        self.executor.shutdown()


def wait_for(predicate: Callable[[], Any], what: str) -> None:
    pause = threading.Event()
    for _ in range(600):
        if predicate():
            return
        pause.wait(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_replicas_sync_through_gloo_and_share_watermarks() -> None:
    port = free_port()
    replicas = [Replica(rank, port) for rank in range(2)]
    try:
        for replica in replicas:
            replica.group.start()
        wait_for(lambda: all(r.group.status().size == 2 for r in replicas), "the group")
        for seq in range(3):
            replicas[0].train("e0", seq)
        replicas[1].train("e1", 0)
        wait_for(
            lambda: (
                all(r.master.version == 4 for r in replicas)
                and all(set(r.group.ledger.committed) == {"e0", "e1"} for r in replicas)
            ),
            "a round that carries every update",
        )
        a, b = (r.master.full_state() for r in replicas)
        for name in a:
            torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0)
        assert replicas[1].group.ledger.committed["e0"].applied_seq == 2
        # The edge of replica 0 moves to replica 1: its session starts where the rounds got.
        replicas[1].on_compute(lambda: replicas[1].group.adopt("e0", 0))
        assert replicas[1].sessions["e0"].highest_applied_seq == 2
        assert replicas[1].sessions["e0"].samples_applied == 24
        assert replicas[0].sessions["e0"].durable_seq == 2
    finally:
        for replica in replicas:
            replica.close()
