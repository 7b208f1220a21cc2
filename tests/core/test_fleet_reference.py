"""The pooled reference (shared/training/pooled.py), per-edge copies (edge_copies.py) and
staleness counted in samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simultrain.shared.data import load_dataset
from simultrain.shared.errors import ConfigError
from simultrain.shared.protocol import Ack, Act, EGrad, Grad, Snap
from simultrain.shared.tensors import as_received, from_wire, state_to_wire, to_wire
from simultrain.shared.training.assembly import Shard, build_cloud, build_edge, build_master
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.driver import run_in_process, shards
from simultrain.shared.training.master import StalenessStats
from simultrain.shared.training.pooled import pooled_training_set
from simultrain.shared.training.roles.fleet import FleetCloudRuntime
from simultrain.shared.training.weights import EdgeReplica, blend

DATA = load_dataset("imu")
SPEC = DATA.model_spec()

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- the pooled reference ---------------------------------------------------------------
@pytest.mark.parametrize("edges", [3, 8, 12])
def test_the_pooled_set_is_every_sample_the_fleet_holds(edges: int) -> None:
    data = load_dataset("imu")
    pooled = pooled_training_set(data, edges, partition="groups")
    shards = [data.shard(i, edges, partition="groups") for i in range(edges)]
    held = np.concatenate([s.x_train.reshape(len(s.y_train), -1) for s in shards])
    assert len(held) == len(pooled.y_train) == len(data.y_train)
    fingerprint = np.sort(held @ np.arange(held.shape[1], dtype=np.float64))
    whole = pooled.x_train.reshape(len(pooled.y_train), -1)
    assert np.array_equal(fingerprint, np.sort(whole @ np.arange(whole.shape[1], dtype=np.float64)))


def test_a_pooled_run_streams_the_fleets_data_in_one_seeded_shuffle() -> None:
    """One edge, every edge's samples, one stream seeded by the run's seed: whatever shard
    a participant is handed, an edge of a pooled run draws the same batches."""
    run = RunConfig(mode="centralized", edges=4, partition="groups", seed=5, pooled=True)
    (shard,) = shards(run, DATA)
    pooled = build_edge(run, SPEC, shard)
    other = build_edge(run, SPEC, Shard(DATA, 2, 4))
    per_edge = [
        build_edge(RunConfig(mode="centralized", edges=4, seed=5), SPEC, s)
        for s in shards(RunConfig(edges=4), DATA)
    ]
    assert pooled.samples == other.samples == sum(e.samples for e in per_edge)
    assert (pooled.stream.seed, [e.stream.seed for e in per_edge]) == (5, [5, 1005, 2005, 3005])
    labels = set()
    for _ in range(3):
        xa, ya = next(pooled.stream)
        xb, yb = next(other.stream)
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
        labels |= set(ya.tolist())
    # One shuffle of all subjects' data: a few batches hold every class.
    assert len(labels) == SPEC.num_classes


def test_pooled_training_is_centralized_training_on_all_the_data() -> None:
    steps, edges = 6, 4
    base = dict(mode="centralized", dataset="imu", seed=2)
    pooled = run_in_process(RunConfig(**base, edges=edges, steps=steps, pooled=True))  # type: ignore[arg-type]
    whole = run_in_process(RunConfig(**base, edges=1, steps=steps * edges))  # type: ignore[arg-type]
    per_edge = run_in_process(RunConfig(**base, edges=edges, steps=steps))  # type: ignore[arg-type]
    assert pooled.samples == whole.samples == per_edge.samples == steps * edges * 32
    assert pooled.master is not None and whole.master is not None and per_edge.master is not None
    state = pooled.master.full_state()
    assert all(torch.equal(t, whole.master.full_state()[n]) for n, t in state.items())
    assert not all(torch.equal(t, per_edge.master.full_state()[n]) for n, t in state.items())
    with pytest.raises(ConfigError, match="pooled"):
        RunConfig(mode="simultrain", pooled=True)


# --- per-edge copies ----------------------------------------------------------------------
def _act(
    master_weights: dict[str, torch.Tensor], version: int, seq: int, seed: int
) -> tuple[Act, object]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, *SPEC.input_shape, generator=g)
    y = torch.randint(0, SPEC.num_classes, (4,), generator=g)
    replica = EdgeReplica(SPEC.build(0).edge_stage, master_weights, version)
    stash = replica.forward(seq, x)
    act = Act(
        seq=seq,
        edge_version=version,
        activations=to_wire(stash.activations.detach(), "raw"),
        labels=to_wire(y, "raw"),
    )
    return act, stash


def test_each_edge_steps_its_own_copy_and_reconciliation_averages_them() -> None:
    run = RunConfig(
        mode="simultrain", dataset="imu", edges=2, edge_copies=True, reconcile_every=2, beta=0.5
    )
    cloud = build_cloud(run, SPEC).runtime
    assert isinstance(cloud, FleetCloudRuntime)
    master, copies = cloud.master, cloud.copies
    start = {n: t.clone() for n, t in master.edge_weights().items()}
    for edge_id in ("a", "b"):
        cloud.open_session(edge_id)
    assert copies is not None

    def step(edge_id: str, seq: int, seed: int) -> list[object]:
        weights = dict(copies.weights(edge_id))
        act, stash = _act(weights, cloud.sessions[edge_id].mirror_version, seq, seed)
        (grad,) = [f for _, f in cloud.on_act(edge_id, act) if isinstance(f, Grad)]
        grads = EdgeReplica.backward(stash, from_wire(grad.cut_grad))  # type: ignore[arg-type]
        egrad = EGrad(
            seq=seq, edge_version=act.edge_version, grads=as_received(state_to_wire(grads, "raw"))
        )
        return [f for _, f in cloud.on_egrad(edge_id, egrad)]

    out = step("a", 0, 1)
    assert any(isinstance(f, Ack) for f in out)
    # "a"'s gradient moved "a"'s copy only: "b"'s copy and the master's edge stage did not.
    assert any(not torch.equal(copies.weights("a")[n], start[n]) for n in start)
    assert all(torch.equal(copies.weights("b")[n], start[n]) for n in start)
    assert all(torch.equal(master.edge_weights()[n], start[n]) for n in start)
    step("b", 0, 2)
    b_now = {n: t.clone() for n, t in copies.weights("b").items()}
    # "a"'s second step is its reconciliation (R = 2): the master becomes the copies' mean
    # and "a"'s copy the blend the edge computes from the SNAP, β·copy + (1 − β)·mean.
    out = step("a", 1, 3)
    (snap,) = [f for f in out if isinstance(f, Snap)]
    assert snap.reconcile and copies.averages == 1
    a_stepped = copies.copies["a"].history[-2].weights  # after its step, before the blend
    for name, value in master.edge_weights().items():
        mean = 0.5 * (a_stepped[name] + b_now[name])
        torch.testing.assert_close(value, mean, atol=1e-6, rtol=0)
        assert torch.equal(copies.weights("a")[name], blend(a_stepped[name], value, 0.5))
        assert torch.equal(cloud.sessions["a"].mirror[name], copies.weights("a")[name])
    # Staleness counts the copy's own steps: none missed here, though the fleet took three.
    assert master.staleness.counts == {0: 3} and master.version == 6


def test_copies_bound_staleness_by_an_edges_own_window() -> None:
    base = dict(mode="simultrain", dataset="imu", edges=4, steps=8, window=2, seed=1)
    shared = run_in_process(RunConfig(**base))  # type: ignore[arg-type]
    copies = run_in_process(RunConfig(**base, edge_copies=True))  # type: ignore[arg-type]
    assert shared.staleness["max"] >= 4  # the fleet's other edges moved the shared stage
    assert copies.staleness["max"] <= 1  # a window of 2: at most one of its own in flight
    assert copies.samples == shared.samples == 4 * 8 * 32
    assert copies.fleet["copy_averages"] >= 1
    with pytest.raises(ConfigError, match="edge_copies"):
        RunConfig(mode="centralized", edge_copies=True)
    with pytest.raises(ConfigError, match="fleet-batch"):
        RunConfig(mode="simultrain", edge_copies=True, compensation="delay-beta1+fleet-batch")


# --- staleness in samples -----------------------------------------------------------------
def test_staleness_is_counted_in_samples_too() -> None:
    stats = StalenessStats()
    stats.record(0)
    stats.record(2, samples=64)
    assert stats.summary()["mean"] == 1.0
    assert stats.in_samples() == {"mean": 32.0, "max": 64}
    run = RunConfig(mode="simultrain", dataset="imu")
    master = build_master(run, SPEC, run.schedule())
    grads = {n: torch.zeros_like(p) for n, p in master.edge_stage.named_parameters()}
    master.apply_edge_gradient(grads, 0, samples=32)
    master.apply_edge_gradient(grads, 0, samples=16)
    late = master.apply_edge_gradient(grads, 0, samples=8)
    assert (late.staleness, late.staleness_samples) == (2, 48)  # two steps, 32 + 16 samples
    assert master.staleness_of(0) == (3, 56)
