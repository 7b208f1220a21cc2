"""The synthetic-gradient mode (seed 003): M learns the cut gradient on the cloud, reaches the
edge with the deltas, and the edge's stage is updated from M's prediction, never from a GRAD."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from simultrain.shared.errors import TrainingError
from simultrain.shared.models import get_model_spec
from simultrain.shared.protocol import (
    Ack,
    Act,
    Delta,
    EGrad,
    Frame,
    Grad,
    decode_frame,
    encode_frame,
)
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.driver import run_in_process
from simultrain.shared.training.factory import build_master, build_synthetic, edge_module
from simultrain.shared.training.master import OptimizerConfig
from simultrain.shared.training.runtime import CloudRuntime, EdgeRuntime
from simultrain.shared.training.schedule import EdgeRole, make_schedule
from simultrain.shared.training.synthetic import (
    SyntheticGradientModel,
    SyntheticGradientTrainer,
    predict_cut_grad,
)

SPEC = get_model_spec("imu-cnn1d")


def wire(frame: Frame) -> Frame:
    """Through the real encoder and decoder, as on a socket."""
    return decode_frame(encode_frame(frame))


def test_the_mode_is_a_schedule() -> None:
    schedule = make_schedule("synthetic", window=4)
    assert schedule.edge_role is EdgeRole.SYNTHETIC and schedule.window == 4
    # Its EGRAD precedes its ACT and is answered by an ACK: one batch must fit in flight.
    assert make_schedule("synthetic", window=0).window == 1


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

    def __init__(self) -> None:
        run = RunConfig(mode="synthetic", window=2)
        schedule = run.schedule()
        self.master = build_master(run, SPEC, schedule)
        self.cloud = CloudRuntime(
            self.master, schedule, run.codecs, synthetic=build_synthetic(run, SPEC, schedule)
        )
        self.edge = EdgeRuntime(edge_module(SPEC.build(0), schedule), schedule, run.codecs)
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


def test_a_batch_is_applied_whole_once_and_answered_without_a_grad() -> None:
    pair = Pair()
    egrad, act = pair.upload()
    assert pair.cloud.on_egrad("e", egrad) == []  # waits for its ACT
    replies = [frame for _, frame in pair.cloud.on_act("e", act)]
    assert [type(f) for f in replies] == [Delta, Ack]  # M and the edge stage, no GRAD
    assert not any(isinstance(f, Grad) for f in replies)
    assert pair.master.version == 2 and pair.master.staleness.total == 1
    assert pair.cloud.synthetic is not None and pair.cloud.synthetic.steps == 1
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
    assert pair.cloud.synthetic is not None and pair.cloud.synthetic.steps == 1


def test_a_bad_egrad_changes_nothing() -> None:
    pair = Pair()
    egrad, act = pair.upload()
    name = next(iter(egrad.grads))
    bad = EGrad(seq=egrad.seq, edge_version=egrad.edge_version, grads={name: egrad.grads[name]})
    pair.cloud.on_egrad("e", bad)
    with pytest.raises(TrainingError):
        pair.cloud.on_act("e", act)
    assert pair.master.version == 0
    assert pair.cloud.synthetic is not None and pair.cloud.synthetic.steps == 0


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
    assert edge.losses == [] and not edge.in_flight  # no GRAD ever came, none was awaited
    held = edge.replica.current.tensors  # type: ignore[union-attr]
    assert torch.count_nonzero(held["synthetic.out.weight"]) > 0  # M learned, and shipped
    assert result.bytes_down < result.bytes_up  # no cut gradients come down
