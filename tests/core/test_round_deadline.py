"""FedAvg rounds with a deadline (``RunConfig.round_deadline_s``): partial aggregation."""

from __future__ import annotations

import pytest
import torch

from simultrain.shared.errors import ConfigError
from simultrain.shared.models import get_model_spec
from simultrain.shared.protocol import Ack, EGrad
from simultrain.shared.tensors import as_received, state_to_wire
from simultrain.shared.training.assembly import build_cloud
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.runtime import CloudRuntime

SPEC = get_model_spec("imu-cnn1d")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _runtime(deadline: float | None, clock: Clock) -> CloudRuntime:
    run = RunConfig(mode="fedavg", dataset="imu", round_deadline_s=deadline)
    runtime = build_cloud(run, SPEC, clock=clock).runtime
    for edge_id in ("fast", "slow"):
        runtime.open_session(edge_id)
    return runtime


def _upload(runtime: CloudRuntime, seq: int, shift: float) -> EGrad:
    weights = {n: t.detach() + shift for n, t in runtime.master.full_state().items()}
    wire = as_received(state_to_wire(weights, "raw"))
    return EGrad(seq=seq, edge_version=runtime.master.version, grads=wire, samples=160)


def _acked(out: list[tuple[str, object]]) -> dict[str, int]:
    return {edge_id: frame.seq for edge_id, frame in out if isinstance(frame, Ack)}


def test_a_round_past_its_deadline_closes_with_the_uploads_it_has() -> None:
    clock = Clock()
    runtime = _runtime(2.0, clock)
    assert runtime.round_due_in() is None  # no round open
    assert runtime.on_egrad("fast", _upload(runtime, 0, 1.0)) == []  # waits for "slow"
    assert runtime.round_due_in() == pytest.approx(2.0)
    clock.now += 1.0
    assert runtime.close_round_if_due() == []  # not yet
    clock.now += 1.5
    out = runtime.close_round_if_due()
    assert _acked(out) == {"fast": 0}  # partial aggregation: the straggler is not waited for
    assert runtime.partial_rounds == 1 and runtime.master.samples_applied == 160
    assert runtime.round_due_in() is None
    # The straggler's late upload is not lost: it joins the next round, whose deadline
    # counts from the previous close (when the edges got the new model), not from it.
    clock.now += 1.5
    assert runtime.on_egrad("slow", _upload(runtime, 0, 2.0)) == []
    assert runtime.round_due_in() == pytest.approx(0.5)
    out = runtime.on_egrad("fast", _upload(runtime, 1, 1.0))
    assert _acked(out) == {"fast": 1, "slow": 0}
    assert runtime.partial_rounds == 1 and runtime.master.samples_applied == 480


def test_without_a_deadline_a_round_waits_for_every_edge() -> None:
    clock = Clock()
    runtime = _runtime(None, clock)
    runtime.on_egrad("fast", _upload(runtime, 0, 1.0))
    clock.now += 1e6
    assert runtime.round_due_in() is None and runtime.close_round_if_due() == []
    before = {n: t.clone() for n, t in runtime.master.full_state().items()}
    out = runtime.on_egrad("slow", _upload(runtime, 0, 3.0))
    assert _acked(out) == {"fast": 0, "slow": 0} and runtime.partial_rounds == 0
    for name, value in runtime.master.full_state().items():
        torch.testing.assert_close(value, before[name] + 2.0)  # the mean of +1 and +3


def test_a_complete_round_closed_at_its_deadline_is_not_partial() -> None:
    clock = Clock()
    runtime = _runtime(1.0, clock)
    runtime.on_egrad("fast", _upload(runtime, 0, 1.0))
    runtime.close_session("slow")  # the only other edge left: the round is complete
    assert runtime.partial_rounds == 0 and runtime.round_due_in() is None


def test_a_non_positive_deadline_is_refused() -> None:
    with pytest.raises(ConfigError, match="round_deadline_s"):
        _runtime(0.0, Clock())
