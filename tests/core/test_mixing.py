"""Mixed-edge cloud steps (shared/training/mixing.py, roles/fleet.py): the arithmetic, the
bound on a step's wait, exactly-once, and one edge bit for bit today's."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from simultrain.shared.data import load_dataset
from simultrain.shared.errors import ConfigError
from simultrain.shared.protocol import Ack, Act, EGrad, Grad
from simultrain.shared.tensors import as_received, from_wire, state_to_wire, to_wire
from simultrain.shared.training.assembly import build_cloud, build_master
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.driver import run_in_process
from simultrain.shared.training.fleet import Mixing
from simultrain.shared.training.master import CloudMaster
from simultrain.shared.training.options import OptimizerConfig
from simultrain.shared.training.roles.fleet import FleetCloudRuntime
from simultrain.shared.training.weights import EdgeReplica

SPEC = load_dataset("imu").model_spec()

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def _run(**kw: object) -> RunConfig:
    return RunConfig(**{"mode": "simultrain", "dataset": "imu", "edges": 2, **kw})  # type: ignore[arg-type]


def _cloud(run: RunConfig, clock: Clock, edges: tuple[str, ...] = ("a", "b")) -> FleetCloudRuntime:
    runtime = build_cloud(run, SPEC, clock=clock).runtime
    assert isinstance(runtime, FleetCloudRuntime)
    for edge_id in edges:
        runtime.open_session(edge_id)
    return runtime


def _batch(seed: int, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *SPEC.input_shape, generator=g)
    y = torch.randint(0, SPEC.num_classes, (n,), generator=g)
    return x, y


def _act(master: CloudMaster, seq: int, x: torch.Tensor, y: torch.Tensor) -> tuple[Act, object]:
    """An edge's ACT at the master's current edge stage, and the stash its EGRAD needs."""
    replica = EdgeReplica(master.edge_stage, dict(master.edge_weights()), master.version)
    stash = replica.forward(seq, x)
    act = Act(
        seq=seq,
        edge_version=master.version,
        activations=to_wire(stash.activations.detach(), "raw"),
        labels=to_wire(y, "raw"),
    )
    return act, stash


def _egrad(stash: object, grad: Grad) -> EGrad:
    assert isinstance(stash, object)
    grads = EdgeReplica.backward(stash, from_wire(grad.cut_grad))  # type: ignore[arg-type]
    return EGrad(
        seq=grad.seq, edge_version=stash.version, grads=as_received(state_to_wire(grads, "raw"))
    )  # type: ignore[attr-defined]


def _weights(master: CloudMaster) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in master.full_state().items()}


def _reference(
    run: RunConfig, xs: list[torch.Tensor], ys: list[torch.Tensor], lr_scale: float = 1.0
) -> dict[str, torch.Tensor]:
    """One ordinary split step on the concatenated batch: the cloud stage's step, then the
    edge stage's on the gradient of the whole batch, both at the starting weights."""
    if lr_scale != 1.0:
        run = replace(run, optimizer=OptimizerConfig("adam", lr=1e-3 * lr_scale))
    master = build_master(run, SPEC, run.schedule())
    x, y = torch.cat(xs), torch.cat(ys)
    replica = EdgeReplica(master.edge_stage, dict(master.edge_weights()), master.version)
    stash = replica.forward(0, x)
    result = master.cloud_step(stash.activations.detach(), y)
    grads = EdgeReplica.backward(stash, result.cut_grad)
    master.apply_edge_gradient(grads, 0, samples=int(y.shape[0]))
    return _weights(master)


def _cut_gradient(run: RunConfig, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The cut gradient of one ordinary cloud step on the batch ``(x, y)``."""
    master = build_master(run, SPEC, run.schedule())
    replica = EdgeReplica(master.edge_stage, dict(master.edge_weights()), master.version)
    return master.cloud_step(replica.forward(0, x).activations.detach(), y).cut_grad


@pytest.mark.parametrize("batch", ["split", "stack"])
def test_a_mixed_step_equals_the_step_on_the_concatenated_batch(batch: str) -> None:
    run = _run(mix_edges=2, mix_batch=batch, batch_size=8)
    clock = Clock()
    cloud = _cloud(run, clock)
    (xa, ya), (xb, yb) = _batch(1), _batch(2)
    act_a, stash_a = _act(cloud.master, 0, xa, ya)
    act_b, stash_b = _act(cloud.master, 0, xb, yb)
    assert cloud.on_act("a", act_a) == []  # waits for a second edge
    before = _weights(cloud.master)
    out = cloud.on_act("b", act_b)
    grads = {edge_id: f for edge_id, f in out if isinstance(f, Grad)}
    assert sorted(grads) == ["a", "b"] and cloud.master.version == 1  # one cloud-stage step
    # Each edge gets its own slice of the cut gradient of the concatenated batch, exactly.
    whole = _cut_gradient(run, torch.cat([xa, xb]), torch.cat([ya, yb]))
    assert torch.equal(from_wire(grads["a"].cut_grad), whole[:4])
    assert torch.equal(from_wire(grads["b"].cut_grad), whole[4:])
    assert cloud.on_egrad("a", _egrad(stash_a, grads["a"])) == []  # waits for "b"'s EGRAD
    assert all(
        torch.equal(before[n], t)
        for n, t in cloud.master.full_state().items()
        if n.startswith("edge.")
    )
    out = cloud.on_egrad("b", _egrad(stash_b, grads["b"]))
    assert sorted(e for e, f in out if isinstance(f, Ack)) == ["a", "b"]
    expected = _reference(run, [xa, xb], [ya, yb], math.sqrt(2) if batch == "stack" else 1.0)
    for name, value in _weights(cloud.master).items():
        torch.testing.assert_close(value, expected[name], atol=1e-6, rtol=0)
    # Both batches applied once, with their own counters.
    assert cloud.master.samples_applied == 8 and cloud.master.version == 2
    for edge_id in ("a", "b"):
        state = cloud.sessions[edge_id]
        assert (state.samples_applied, state.steps_applied, state.highest_applied_seq) == (4, 1, 0)
    assert cloud.mixer is not None and cloud.mixer.empty


def test_stepping_each_edge_alone_is_not_the_concatenated_step() -> None:
    """The test above distinguishes: without mixing the two batches take two steps."""
    run = _run(batch_size=8)
    cloud = build_cloud(run, SPEC).runtime
    for edge_id in ("a", "b"):
        cloud.open_session(edge_id)
    (xa, ya), (xb, yb) = _batch(1), _batch(2)
    for edge_id, (x, y) in (("a", (xa, ya)), ("b", (xb, yb))):
        act, stash = _act(cloud.master, 0, x, y)
        (grad,) = [f for _, f in cloud.on_act(edge_id, act) if isinstance(f, Grad)]
        cloud.on_egrad(edge_id, _egrad(stash, grad))
    expected = _reference(run, [xa, xb], [ya, yb])
    assert any(
        not torch.allclose(v, expected[n], atol=1e-6) for n, v in _weights(cloud.master).items()
    )


def test_a_step_waits_no_longer_than_its_bound() -> None:
    run = _run(mix_edges=2, batch_size=8, mix_wait_s=0.5)
    clock = Clock()
    cloud = _cloud(run, clock)
    mixer = cloud.mixer
    assert mixer is not None
    act, _ = _act(cloud.master, 0, *_batch(1))
    assert cloud.on_act("a", act) == [] and cloud.round_due_in() == pytest.approx(0.5)
    clock.now += 0.4
    assert cloud.close_round_if_due() == [] and cloud.step_waiting() == []
    clock.now += 0.2
    out = cloud.close_round_if_due()
    assert [e for e, f in out if isinstance(f, Grad)] == ["a"]  # a mix of the one that came
    assert mixer.early_steps == 1 and mixer.due_in() is None


def test_with_one_edge_a_run_is_bit_for_bit_todays() -> None:
    base = dict(mode="simultrain", dataset="imu", edges=1, steps=30, seed=3)
    plain = run_in_process(RunConfig(**base))  # type: ignore[arg-type]
    mixed = run_in_process(RunConfig(**base, mix_edges=4))  # type: ignore[arg-type]
    assert "mixing" in mixed.fleet and mixed.fleet["mixing"]["steps"] == 0  # never asked
    assert (mixed.accuracy, mixed.test_loss, mixed.bytes_up, mixed.bytes_down) == (
        plain.accuracy,
        plain.test_loss,
        plain.bytes_up,
        plain.bytes_down,
    )
    assert plain.master is not None and mixed.master is not None
    for name, value in plain.master.full_state().items():
        assert torch.equal(value, mixed.master.full_state()[name])


def test_a_mixed_fleet_applies_every_batch_once_and_counts_per_edge() -> None:
    run = RunConfig(
        mode="simultrain", dataset="imu", edges=4, steps=24, mix_edges=4, window=2, seed=1
    )
    result = run_in_process(run)
    assert run.mixing().edge_batch_size(run.batch_size, run.edges) == 8
    mixing = result.fleet["mixing"]
    assert mixing["steps"] == 24 and mixing["mean_members"] == 4.0 and mixing["waiting"] == 0
    assert result.samples == 4 * 24 * 8 and result.master_version == 2 * 24
    assert result.staleness["batches"] == 24  # one edge-stage step per mixed step
    assert result.staleness_samples["mean"] <= 2 * 32  # at most two mixed steps behind


def test_an_edge_that_leaves_mid_step_is_applied_exactly_once() -> None:
    run = _run(mix_edges=2, batch_size=8)
    cloud = _cloud(run, Clock())
    (xa, ya), (xb, yb) = _batch(1), _batch(2)
    act_a, stash_a = _act(cloud.master, 0, xa, ya)
    act_b, stash_b = _act(cloud.master, 0, xb, yb)
    cloud.on_act("a", act_a)
    grads = {e: f for e, f in cloud.on_act("b", act_b) if isinstance(f, Grad)}
    cloud.on_egrad("a", _egrad(stash_a, grads["a"]))
    # "b" leaves before its EGRAD: "a"'s part of the step goes alone and is acknowledged.
    out = cloud.close_session("b")
    assert [e for e, f in out if isinstance(f, Ack)] == ["a"]
    assert cloud.sessions["b"].samples_applied == 0 and cloud.master.version == 2
    # "b" comes back and sends its batch again: its cloud-stage update is not applied twice
    # (no new version), its edge gradient is applied once.
    cloud.open_session("b")
    (grad,) = [f for _, f in cloud.on_act("b", act_b) if isinstance(f, Grad)]
    assert cloud.master.version == 2 and cloud.sessions["b"].duplicates == 1
    out = cloud.on_egrad("b", _egrad(stash_b, grad))
    assert [e for e, f in out if isinstance(f, Ack)] == ["b"]
    assert cloud.sessions["b"].samples_applied == 4 and cloud.master.samples_applied == 8
    assert cloud.mixer is not None and cloud.mixer.empty


def test_a_hostile_batch_is_left_out_and_the_others_step() -> None:
    run = _run(mix_edges=2, batch_size=8)
    cloud = _cloud(run, Clock())
    act_a, _ = _act(cloud.master, 0, *_batch(1))
    x, _ = _batch(2)
    act_b, _ = _act(cloud.master, 0, x, torch.full((4,), 99))  # labels no class has
    cloud.on_act("a", act_a)
    out = cloud.on_act("b", act_b)
    assert [e for e, f in out if isinstance(f, Grad)] == ["a"]
    assert cloud.mixer is not None and [r[0] for r in cloud.mixer.refused] == ["b"]
    assert cloud.master.version == 1


def test_mixing_options_are_checked() -> None:
    assert Mixing(8).edge_batch_size(32, 8) == 4
    assert Mixing(8).edge_batch_size(32, 1) == 32  # one edge: a mix of one
    assert Mixing(4, "stack").lr_factor(4, "adam") == 2.0
    assert Mixing(4, "stack").lr_factor(4, "sgd") == 4.0
    assert Mixing(4, "split").lr_factor(4, "adam") == 1.0
    with pytest.raises(ConfigError, match="does not divide"):
        RunConfig(mode="simultrain", edges=3, mix_edges=3, batch_size=32)
    with pytest.raises(ConfigError, match="mix_edges"):
        RunConfig(mode="fedavg", edges=4, mix_edges=4)
    with pytest.raises(ConfigError, match="dana"):
        RunConfig(mode="simultrain", edges=4, mix_edges=4, compensation="delay-beta1+dana")


def test_mixed_steps_with_fleet_credits_keep_egrads_in_order() -> None:
    """Credits can hold an edge whose window has room: its EGRADs wait to ride on an ACT,
    and one that must go alone takes the waiting ones with it, in sequence order."""
    run = RunConfig(
        mode="simultrain", dataset="imu", edges=4, steps=20, mix_edges=4, fleet_in_flight=16
    )
    result = run_in_process(run)
    assert result.samples == 4 * 20 * 8 and result.fleet["mixing"]["steps"] == 20
    assert result.staleness["max"] <= 4  # four mixed steps in flight at most
