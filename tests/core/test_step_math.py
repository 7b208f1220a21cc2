"""Step math without I/O: stashing, copy-on-write, forecast, reconciliation, deltas, history."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from simultrain.shared.errors import ConfigError, TrainingError
from simultrain.shared.training.compensation import (
    DCASGD,
    Compensation,
    Forecast,
    StalenessLR,
    parse_compensation,
)
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.deltas import DeltaSequencer, GapStatus, VersionStep
from simultrain.shared.training.master import CloudMaster
from simultrain.shared.training.options import OptimizerConfig
from simultrain.shared.training.schedule import EdgeRole, Schedule
from simultrain.shared.training.weights import EdgeReplica, blend, module_weights


def tiny_edge() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh())


def tiny_cloud() -> nn.Module:
    torch.manual_seed(1)
    return nn.Linear(4, 2)


# --- compensation arithmetic against hand-computed values ------------------------------


def _correct(part: Forecast | DCASGD, g: torch.Tensor, staleness: int) -> torch.Tensor:
    now = torch.tensor([0.5, 0.5])
    then = torch.tensor([0.25, 1.0])
    return part.corrector().correct({"w": g}, {"w": now}, {"w": then}, staleness)["w"]


def test_forecast_matches_hand_computed_values() -> None:
    out = _correct(Forecast(alpha=0.5), torch.tensor([1.0, -2.0]), 3)
    # g + 0.5 * (now - then) = [1 + 0.125, -2 - 0.25]
    assert torch.equal(out, torch.tensor([1.125, -2.25]))


def test_dcasgd_matches_hand_computed_values() -> None:
    out = _correct(DCASGD(lam=2.0), torch.tensor([1.0, -2.0]), 1)
    # g + 2 * g*g * (now - then) = [1 + 2*1*0.25, -2 + 2*4*(-0.5)]
    assert torch.equal(out, torch.tensor([1.5, -6.0]))


@pytest.mark.parametrize("chain", ["forecast", "dcasgd", "none", "staleness-lr"])
def test_every_compensation_is_plain_at_staleness_zero(chain: str) -> None:
    comp = parse_compensation(chain)
    g = torch.randn(5)
    now, then = torch.randn(5), torch.randn(5)
    for corrector in comp.correctors():
        assert torch.equal(corrector.correct({"w": g}, {"w": now}, {"w": then}, 0)["w"], g)
    assert comp.lr_scale(0, "edge") == 1.0


def test_alpha_zero_is_no_forecast() -> None:
    g = torch.randn(4)
    assert torch.equal(_correct(Forecast(0.0), g, 5), g)
    assert parse_compensation("forecast", alpha=0.0) == Compensation(name="forecast")


def test_staleness_lr_scale() -> None:
    assert StalenessLR().lr_scale(3, "edge") == 0.25


def test_unknown_compensation_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown compensation"):
        parse_compensation("magic")


# --- reconciliation ----------------------------------------------------------------------


def test_reconciliation_matches_hand_computed_values() -> None:
    edge = torch.tensor([1.0, 2.0])
    master = torch.tensor([3.0, -2.0])
    assert torch.allclose(blend(edge, master, 0.9), torch.tensor([1.2, 1.6]))


def test_beta_one_is_no_reconciliation_bit_for_bit() -> None:
    edge = torch.randn(7)
    assert torch.equal(blend(edge, torch.randn(7), 1.0), edge)


def test_replica_reconcile_swaps_reference_and_keeps_old_version_alive() -> None:
    module = tiny_edge()
    replica = EdgeReplica(module, module_weights(module), version=0)
    x = torch.randn(2, 3)
    stash = replica.forward(0, x)
    before = {n: t.detach().clone() for n, t in stash.weights.tensors.items()}
    master = {n: torch.zeros_like(t) for n, t in before.items()}
    replica.reconcile(master, beta=0.5, version=7)
    assert replica.version == 7
    for name, t in before.items():
        assert torch.equal(stash.weights.tensors[name].detach(), t)  # untouched
        assert torch.allclose(replica.current.tensors[name].detach(), 0.5 * t)


# --- weight stashing ---------------------------------------------------------------------


def test_stashed_gradient_equals_fresh_autograd_at_the_weights_used() -> None:
    module = tiny_edge()
    replica = EdgeReplica(module, module_weights(module), version=0)
    x = torch.randn(5, 3)
    stash = replica.forward(0, x)
    used = {n: t.detach().clone() for n, t in stash.weights.tensors.items()}
    # Later updates arrive while batch 0 is in flight.
    for v in range(1, 4):
        replica.add({n: torch.full_like(t, 0.1) for n, t in used.items()}, version=v)
    cut_grad = torch.randn(5, 4)
    grads = EdgeReplica.backward(stash, cut_grad)

    fresh = tiny_edge()
    fresh.load_state_dict(used)
    fresh(x).backward(cut_grad)
    for name, p in fresh.named_parameters():
        assert p.grad is not None
        assert torch.equal(grads[name], p.grad), name


def test_two_in_flight_batches_at_one_version_do_not_mix_gradients() -> None:
    module = tiny_edge()
    replica = EdgeReplica(module, module_weights(module), version=0)
    x1, x2 = torch.randn(2, 3), torch.randn(2, 3)
    s1, s2 = replica.forward(1, x1), replica.forward(2, x2)
    g1 = EdgeReplica.backward(s1, torch.ones(2, 4))
    g2 = EdgeReplica.backward(s2, torch.ones(2, 4))
    alone = EdgeReplica.backward(
        EdgeReplica(module, module_weights(module), 0).forward(2, x2), torch.ones(2, 4)
    )
    for name in g2:
        assert torch.equal(g2[name], alone[name])
    assert not all(torch.equal(g1[n], g2[n]) for n in g1)


def test_cut_grad_shape_mismatch_is_refused() -> None:
    module = tiny_edge()
    replica = EdgeReplica(module, module_weights(module), version=0)
    stash = replica.forward(0, torch.randn(2, 3))
    with pytest.raises(TrainingError, match="cut gradient"):
        EdgeReplica.backward(stash, torch.randn(3, 4))


def test_replica_refuses_foreign_weights() -> None:
    module = tiny_edge()
    replica = EdgeReplica(module, module_weights(module), version=0)
    with pytest.raises(TrainingError, match="unknown"):
        replica.add({"nope": torch.zeros(1)}, version=1)
    with pytest.raises(TrainingError, match="shape"):
        replica.add({"0.weight": torch.zeros(1)}, version=1)
    assert replica.version == 0


# --- in-order deltas ---------------------------------------------------------------------


def test_out_of_order_deltas_are_applied_in_version_order() -> None:
    seq: DeltaSequencer[str] = DeltaSequencer(0, gap_timeout_s=1.0)
    assert seq.offer(VersionStep(2, 3), "c", now=0.0) == []
    assert seq.offer(VersionStep(1, 2), "b", now=0.1) == []
    assert seq.status(now=0.2) is GapStatus.WAITING
    ready = seq.offer(VersionStep(0, 1), "a", now=0.3)
    assert [p for _, p in ready] == ["a", "b", "c"]
    assert seq.version == 3
    assert seq.status(now=0.3) is GapStatus.IN_ORDER


def test_a_gap_that_does_not_fill_is_reported() -> None:
    seq: DeltaSequencer[str] = DeltaSequencer(0, gap_timeout_s=1.0)
    seq.offer(VersionStep(1, 2), "b", now=10.0)
    assert seq.status(now=10.5) is GapStatus.WAITING
    assert seq.status(now=11.0) is GapStatus.RESYNC
    seq.reset(2)
    assert seq.status(now=11.0) is GapStatus.IN_ORDER
    assert seq.pending == 0


def test_duplicates_are_ignored_and_counted() -> None:
    seq: DeltaSequencer[str] = DeltaSequencer(0)
    assert len(seq.offer(VersionStep(0, 1), "a", now=0)) == 1
    assert seq.offer(VersionStep(0, 1), "a", now=0) == []
    assert seq.duplicates == 1


def test_overflowing_reorder_buffer_asks_for_resync() -> None:
    seq: DeltaSequencer[int] = DeltaSequencer(0, max_pending=2)
    for v in range(5, 8):
        seq.offer(VersionStep(v, v + 1), v, now=0)
    assert seq.status(now=0) is GapStatus.RESYNC


# --- master history and staleness -------------------------------------------------------


def make_master(comp: Compensation | None = None, history: int = 256) -> CloudMaster:
    return CloudMaster(
        tiny_edge(),
        tiny_cloud(),
        optimizer=OptimizerConfig(lr=0.1),
        compensation=comp,
        history_versions=history,
    )


def edge_grads(master: CloudMaster) -> dict[str, torch.Tensor]:
    return {n: torch.ones_like(p) for n, p in master.edge_stage.named_parameters()}


def test_master_applies_forecast_against_its_history() -> None:
    master = make_master(Compensation((Forecast(alpha=0.5),)))
    w0 = {n: t.clone() for n, t in master.edge_weights().items()}
    master.apply_edge_gradient(edge_grads(master), edge_version=0)
    w1 = {n: t.clone() for n, t in master.edge_weights().items()}
    # A gradient taken at version 0, applied at version 1 (one edge update later).
    result = master.apply_edge_gradient(edge_grads(master), edge_version=0)
    assert result.applied and result.staleness == 1
    for name, now in w1.items():
        expected = now - 0.1 * (1.0 + 0.5 * (now - w0[name]))
        assert torch.allclose(master.edge_weights()[name], expected, atol=1e-7)


def test_gradient_older_than_history_is_dropped_and_counted() -> None:
    master = make_master(history=2)
    for _ in range(4):
        master.apply_edge_gradient(edge_grads(master), edge_version=master.version)
    before = {n: t.clone() for n, t in master.edge_weights().items()}
    result = master.apply_edge_gradient(edge_grads(master), edge_version=0)
    assert not result.applied
    assert master.staleness.dropped == 1
    for n, t in master.edge_weights().items():
        assert torch.equal(t, before[n])


class _CountingHistory(deque):  # type: ignore[type-arg]
    """A history that counts the entries a lookup reads and refuses a full scan."""

    reads = 0

    def __getitem__(self, index: object) -> object:
        type(self).reads += 1
        return super().__getitem__(index)  # type: ignore[index]

    def __iter__(self) -> Iterator[object]:
        raise AssertionError("a history lookup read every entry")


def test_history_lookup_reads_a_logarithmic_number_of_entries() -> None:
    """The history grows with the fleet (≈ 8·2·(W + 1)·E versions): finding the weights a
    gradient was taken at is a binary search, not a scan of every entry (docs/DESIGN.md §6.3)."""
    master = make_master(history=10_000)
    for _ in range(1000):
        master.apply_edge_gradient(edge_grads(master), edge_version=master.version)
    expected = {v: master.edge_weights_at(v) for v in (0, 1, 499, 500, 998, 999, 1000)}
    master._history = _CountingHistory(master._history)  # type: ignore[assignment]
    for version, weights in expected.items():
        _CountingHistory.reads = 0
        assert master.edge_weights_at(version) is weights
        assert _CountingHistory.reads <= 2 * math.ceil(math.log2(1001)) + 2


def test_bad_edge_gradient_leaves_master_unchanged() -> None:
    master = make_master()
    before = {n: t.clone() for n, t in master.edge_weights().items()}
    bad = edge_grads(master)
    bad["0.weight"] = torch.ones(1)
    with pytest.raises(TrainingError):
        master.apply_edge_gradient(bad, edge_version=0)
    assert master.version == 0
    for n, t in master.edge_weights().items():
        assert torch.equal(t, before[n])


# --- schedules -----------------------------------------------------------------------------


def schedule(mode: str, **keys: object) -> Schedule:
    return RunConfig.from_mapping({"mode": mode, **keys}).schedule()


def test_modes_are_schedules() -> None:
    assert schedule("split-sync").window == 0
    assert schedule("simultrain", window=4).pipelined
    assert schedule("simultrain-noforecast", compensation="forecast").compensation == "none"
    assert not schedule("simultrain-noforecast", compensation="forecast").forecasts
    assert schedule("simultrain-noreconcile").reconcile_every is None
    assert schedule("fedavg", local_steps=5).local_steps == 5
    assert schedule("centralized").edge_role is EdgeRole.RAW
    assert schedule("syncsgd", edges=3, gradient_coding_s=1).edge_role is EdgeRole.CODED_GRADIENT
    with pytest.raises(ConfigError, match="'mode': 'bogus' is not one of"):
        schedule("bogus")


def test_a_schedule_takes_every_value_from_the_run() -> None:
    """No defaults of its own: the schedule of the default run is the run's defaults (an
    old schedule said ``forecast`` where the run said ``delay-beta1``)."""
    run = RunConfig()
    assert schedule("simultrain") == Schedule(
        "simultrain",
        EdgeRole.SPLIT,
        run.fixed_window,  # window auto: the schedule keeps the window no credits size
        alpha=run.alpha,
        reconcile_every=run.reconcile_every,
        beta=run.beta,
        local_steps=run.local_steps,
        compensation=run.compensation,
        local_step=False,
    )
    assert schedule("simultrain").compensation == "delay-beta1"
    with pytest.raises(TypeError):
        Schedule("simultrain", EdgeRole.SPLIT, 4)  # type: ignore[call-arg]


def test_reconcile_schedule_every_r_steps_with_offset() -> None:
    s = schedule("simultrain", reconcile_every=10)
    assert [k for k in range(1, 31) if s.reconcile_due(k)] == [10, 20, 30]
    assert [k for k in range(1, 31) if s.reconcile_due(k, offset=5)] == [5, 15, 25]
    assert not any(schedule("simultrain-noreconcile").reconcile_due(k) for k in range(100))
