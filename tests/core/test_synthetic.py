"""The synthetic-gradient mode (docs/SYNTHETIC.md): M learns the cut gradient on the cloud, reaches
the edge with the deltas, and the edge's stage is updated from M's prediction, never from a GRAD."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from simultrain.shared.data import load_dataset
from simultrain.shared.errors import ConfigError, TrainingError
from simultrain.shared.protocol import (
    Ack,
    Act,
    Delta,
    EGrad,
    Frame,
    Grad,
    Snap,
    decode_frame,
    encode_frame,
)
from simultrain.shared.tensors import from_wire, state_from_wire
from simultrain.shared.training.assembly import Shard, build_cloud, build_edge
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.driver import run_in_process
from simultrain.shared.training.options import OptimizerConfig
from simultrain.shared.training.roles.synthetic import (
    LocalSyntheticEdgeRuntime,
    SyntheticCloudRuntime,
    SyntheticEdgeRuntime,
)
from simultrain.shared.training.runtime import checksum_of
from simultrain.shared.training.schedule import EdgeRole, Schedule
from simultrain.shared.training.synthetic import (
    LocalUpdates,
    SyntheticGradientModel,
    SyntheticGradientTrainer,
    predict_cut_grad,
)
from simultrain.shared.training.weights import VersionedWeights, freeze

DATA = load_dataset("imu")
SPEC = DATA.model_spec("imu-cnn1d")


def wire(frame: Frame) -> Frame:
    """Through the real encoder and decoder, as on a socket."""
    return decode_frame(encode_frame(frame))


def test_the_mode_is_a_schedule() -> None:
    schedule = RunConfig(mode="synthetic", window=4).schedule()
    assert schedule.edge_role is EdgeRole.SYNTHETIC and schedule.window == 4
    # Its EGRAD precedes its ACT and is answered by an ACK: one batch must fit in flight.
    assert RunConfig(mode="synthetic", window=0).schedule().window == 1


def test_m_starts_silent_and_learns_a_cut_gradient() -> None:
    cut_shape, classes = (4, 8), 3
    model = SyntheticGradientModel(cut_shape, classes, seed=0)
    a = torch.randn(8, *cut_shape)
    y = torch.arange(8) % classes
    weights = {f"synthetic.{n}": t for n, t in model.named_parameters()}
    # DNI's zero-initialised output layer: the edge stage does not move until M has learned.
    assert torch.count_nonzero(predict_cut_grad(model, weights, a, y)) == 0
    trainer = SyntheticGradientTrainer(
        cut_shape, classes, seed=0, optimizer=OptimizerConfig("adam", lr=1e-2)
    )
    target = (0.5 * a + (y[:, None, None] - 1.0)) / a.shape[0]  # some learnable map
    first = trainer.train(a, y, target)
    for _ in range(100):
        last = trainer.train(a, y, target)
    assert last < 0.2 * first
    assert set(trainer.weights()) == {f"synthetic.{n}" for n, _ in model.named_parameters()}


class Pair:
    """One edge and the cloud, every frame through the codec."""

    def __init__(self, **run_config: object) -> None:
        run = RunConfig.from_mapping({"mode": "synthetic", "window": 2, **run_config})
        cloud = build_cloud(run, SPEC)
        self.master = cloud.master
        assert isinstance(cloud.runtime, SyntheticCloudRuntime)
        self.cloud = cloud.runtime
        edge = build_edge(run, SPEC, Shard(DATA)).runtime
        assert isinstance(edge, SyntheticEdgeRuntime)
        self.edge = edge
        _, snap = self.cloud.open_session("e")
        self.edge.on_snap(wire(snap))  # type: ignore[arg-type]
        rng = np.random.default_rng(0)
        self.x = rng.normal(size=(4, *SPEC.input_shape)).astype(np.float32)
        self.y = np.arange(4, dtype=np.int64) % SPEC.num_classes

    def upload(self) -> tuple[EGrad, Act]:
        act = self.edge.produce(self.x, self.y)
        assert isinstance(act, Act) and act.egrad is None
        egrad = self.edge.leading.popleft()
        assert egrad.seq == act.seq  # its own batch's gradient, sent just before it
        return wire(egrad), wire(act)  # type: ignore[return-value]

    def apply(self, egrad: EGrad, act: Act) -> list[Frame]:
        """The cloud takes one batch; its replies, through the codec."""
        assert self.cloud.on_egrad("e", egrad) == []
        return [wire(frame) for _, frame in self.cloud.on_act("e", act)]

    def deliver(self, replies: list[Frame]) -> None:
        for frame in replies:
            if isinstance(frame, Delta):
                self.edge.on_delta(frame)
            elif isinstance(frame, Ack):
                self.edge.on_ack(frame)
            else:
                assert isinstance(frame, Snap)
                self.edge.on_snap(frame)

    def forward(self, weights: VersionedWeights | None = None) -> torch.Tensor:
        replica = self.edge.replica
        assert replica is not None
        x = torch.from_numpy(self.x)
        return replica.forward(0, x, weights=weights).activations.detach()

    @property
    def local(self) -> LocalUpdates:
        assert isinstance(self.edge, LocalSyntheticEdgeRuntime)
        assert self.edge.local_updates is not None
        return self.edge.local_updates


def test_a_batch_is_applied_whole_once_and_answered_without_a_grad() -> None:
    pair = Pair()
    egrad, act = pair.upload()
    assert pair.cloud.on_egrad("e", egrad) == []  # waits for its ACT
    replies = [frame for _, frame in pair.cloud.on_act("e", act)]
    assert [type(f) for f in replies] == [Delta, Ack]  # M and the edge stage, no GRAD
    assert not any(isinstance(f, Grad) for f in replies)
    assert pair.master.version == 2 and pair.master.staleness.total == 1
    assert pair.cloud.synthetic.steps == 1
    # Re-sent after a reconnect: dropped and counted, nothing applied twice.
    assert pair.cloud.on_egrad("e", egrad) == []
    assert pair.cloud.on_act("e", act) == []
    assert pair.master.version == 2 and pair.cloud.synthetic.steps == 1
    assert pair.cloud.sessions["e"].duplicates == 2
    # The edge takes the delta: its replica now holds M as trained on the cloud.
    pair.edge.on_delta(wire(replies[0]))  # type: ignore[arg-type]
    mirror = pair.cloud.synthetic.weights()
    held = pair.edge.replica.current.tensors  # type: ignore[union-attr]
    assert all(torch.equal(held[n], t) for n, t in mirror.items())


def test_an_act_whose_egrad_was_lost_is_not_acknowledged_until_it_comes() -> None:
    pair = Pair()
    egrad, act = pair.upload()
    assert pair.cloud.on_act("e", act) == []  # cloud step applied, batch not whole: no ACK
    assert pair.master.version == 1
    pair.cloud.on_egrad("e", egrad)
    replies = [frame for _, frame in pair.cloud.on_act("e", act)]  # the edge re-sends both
    assert isinstance(replies[-1], Ack) and replies[-1].seq == act.seq
    assert pair.master.version == 2  # the edge gradient now; the cloud step not again
    assert pair.cloud.synthetic.steps == 1


def test_a_bad_egrad_changes_nothing() -> None:
    pair = Pair()
    egrad, act = pair.upload()
    name = next(iter(egrad.grads))
    bad = EGrad(seq=egrad.seq, edge_version=egrad.edge_version, grads={name: egrad.grads[name]})
    pair.cloud.on_egrad("e", bad)
    with pytest.raises(TrainingError):
        pair.cloud.on_act("e", act)
    assert pair.master.version == 0
    assert pair.cloud.synthetic.steps == 0


def test_the_in_process_driver_trains_the_edge_from_synthetic_gradients(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = np.arange(128) % 3
    x = rng.normal(size=(128, 6, 32)).astype(np.float32) + y[:, None, None]
    np.savez(tmp_path / "imu.npz", X=x, y=y)
    steps = 12
    config = RunConfig(mode="synthetic", dataset=f"npz:{tmp_path / 'imu.npz'}", steps=steps)
    result = run_in_process(config)
    edge = result.edges["edge-0"]
    assert result.samples == steps * 32 and result.master_version == 2 * steps
    assert result.staleness["batches"] == steps  # every edge gradient accounted
    assert edge.losses == [] and not hasattr(edge, "in_flight")  # no GRAD ever awaited
    assert isinstance(edge, LocalSyntheticEdgeRuntime) and edge.local_steps == steps
    held = edge.replica.current.tensors  # type: ignore[union-attr]
    assert torch.count_nonzero(held["synthetic.out.weight"]) > 0  # M learned, and shipped
    assert result.bytes_down < result.bytes_up  # no cut gradients come down


# --- the edge's own stage, updated at once (docs/SYNTHETIC.md) ------------------------------


def plus(weights: VersionedWeights, *steps: dict[str, torch.Tensor]) -> VersionedWeights:
    """``weights`` with local steps added, name by name, in the order given."""
    out = {}
    for name, t in weights.tensors.items():
        w = t.detach()
        for step in steps:
            if name in step:
                w = w + step[name]
        out[name] = w
    return VersionedWeights(weights.version, freeze(out))


def same(a: VersionedWeights, b: VersionedWeights) -> bool:
    return a.tensors.keys() == b.tensors.keys() and all(
        torch.equal(a.tensors[n], b.tensors[n]) for n in a.tensors
    )


def test_the_edge_steps_its_stage_at_once_and_forwards_the_next_batch_with_it() -> None:
    pair = Pair(window=4, optimizer_name="sgd", optimizer_lr=0.05)
    pair.deliver(pair.apply(*pair.upload()))  # M has learned one step, and reached the edge
    replica = pair.edge.replica
    assert replica is not None
    egrad, act = pair.upload()
    step = pair.local.step_of(act.seq)
    # The run's rule (SGD, lr 0.05) on the very gradient the edge sends; M is not stepped.
    sent = state_from_wire(egrad.grads)
    assert set(step) == {f"stage.{n}" for n in sent}
    for name, g in sent.items():
        torch.testing.assert_close(step[f"stage.{name}"], -0.05 * g)
    assert any(torch.count_nonzero(t) for t in step.values())
    # No DELTA yet: the next batch is computed at the replica plus exactly that step.
    _, next_act = pair.upload()
    working = plus(replica.current, step)
    assert torch.equal(from_wire(next_act.activations), pair.forward(working))
    assert not torch.equal(pair.forward(working), pair.forward())
    # Versions still speak of the replica: the master's staleness accounting is unchanged.
    assert next_act.edge_version == replica.version == pair.master.version


def test_the_ack_after_the_masters_delta_drops_the_step_and_the_replica_stays_exact() -> None:
    pair = Pair(window=4)
    pair.deliver(pair.apply(*pair.upload()))
    replica = pair.edge.replica
    assert replica is not None
    before = replica.current
    egrad, act = pair.upload()
    step = pair.local.step_of(act.seq)
    delta, ack = pair.apply(egrad, act)
    assert isinstance(delta, Delta) and isinstance(ack, Ack)
    pair.edge.on_delta(delta)
    # The replica is the master's exact copy (its checksum holds) ...
    assert checksum_of(replica.current.tensors) == delta.checksum
    assert pair.edge.checksum_failures == 0 and not pair.edge.replica_corrupt
    # ... but until the ACK the forward base stays where it was: the batch counts once.
    working = pair.local.working()
    assert working.pending == (act.seq,) and same(working.weights, plus(before, step))
    pair.edge.on_ack(ack)
    working = pair.local.working()
    assert working.pending == () and working.weights is replica.current  # bit for bit


def test_a_reconciliation_keeps_the_pending_steps_and_a_resync_drops_them() -> None:
    pair = Pair(window=4, reconcile_every=1)
    pair.deliver(pair.apply(*pair.upload()))
    first = pair.upload()
    _, second = pair.upload()  # two batches pending on the edge
    replies = pair.apply(*first)
    assert [type(f) for f in replies] == [Delta, Ack, Snap]  # R = 1: a reconciliation too
    pair.deliver(replies)
    replica = pair.edge.replica
    assert replica is not None and pair.edge.reconciliations == 2
    assert pair.edge.checksum_failures == 0  # the blended replica is still the cloud's mirror
    # Batch `second` is not in the master: its step goes on top of the blended replica.
    working = pair.local.working()
    assert working.pending == (second.seq,)
    assert same(working.weights, plus(replica.current, pair.local.step_of(second.seq)))
    # A new session: the cloud's SNAP, and `second` will be sent again.
    _, snap = pair.cloud.open_session("e")
    pair.edge.on_snap(wire(snap))  # type: ignore[arg-type]
    resend = pair.edge.resume(first[1].seq)
    assert [seq for seq, _ in resend] == [second.seq]
    working = pair.local.working()
    assert working.pending == () and working.weights is replica.current
    assert pair.local.steps_dropped == 1
    # The re-sent batch takes a new step at the new session's weights, and is applied once.
    frame = pair.edge.resend(*resend[0])
    assert isinstance(frame, Act) and pair.local.pending == (second.seq,)
    replies = pair.apply(wire(pair.edge.leading.popleft()), wire(frame))  # type: ignore[arg-type]
    pair.deliver(replies)
    assert pair.cloud.sessions["e"].samples_applied == 3 * 4
    assert pair.local.working().weights is replica.current


def test_the_ablation_moves_the_edge_stage_only_with_the_masters_deltas() -> None:
    assert RunConfig(mode="synthetic").schedule().local_step
    ablation = RunConfig(mode="synthetic-nolocal", window=4).schedule()
    assert ablation.edge_role is EdgeRole.SYNTHETIC and not ablation.local_step
    with pytest.raises(ConfigError, match="only the synthetic mode"):
        Schedule("simultrain", EdgeRole.SPLIT, 4, None, 10, 0.9, 5, "none", local_step=True)
    pair = Pair(mode="synthetic-nolocal", window=4)
    pair.deliver(pair.apply(*pair.upload()))
    pair.upload()
    _, act = pair.upload()
    assert not isinstance(pair.edge, LocalSyntheticEdgeRuntime) and pair.edge.local_steps == 0
    assert torch.equal(from_wire(act.activations), pair.forward())  # the replica, as before


def test_a_local_step_refuses_a_gradient_that_is_not_the_edge_stages() -> None:
    pair = Pair(window=4)
    working = pair.local.working()
    zeros = {
        n: torch.zeros_like(t.detach())
        for n, t in working.weights.tensors.items()
        if n.startswith("stage.")
    }
    name = next(iter(zeros))
    with pytest.raises(TrainingError, match="not finite"):
        pair.local.step(0, working, {**zeros, name: torch.full_like(zeros[name], float("nan"))})
    with pytest.raises(TrainingError, match="names"):
        pair.local.step(0, working, {**zeros, "synthetic.out.weight": torch.zeros(3)})
    with pytest.raises(TrainingError, match="shape"):
        pair.local.step(0, working, {**zeros, name: torch.zeros(3)})
    assert pair.local.pending == () and pair.local.working().weights is working.weights
