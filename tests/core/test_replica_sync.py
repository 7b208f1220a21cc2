"""The sync-round arithmetic of cloud replicas (shared/training/replica_sync.py), in-process.

Replicas here are masters in one process and the all-reduce is a sum taken by hand: what
the collective computes, without sockets. The properties: after a round every update any
replica applied is in every replica exactly once; updates applied during a round survive
it; versions count globally; a round that completed elsewhere is not counted twice; a
replica that takes over an edge starts from what the rounds carried.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from simultrain.shared.errors import TrainingError
from simultrain.shared.training.master import CloudMaster
from simultrain.shared.training.options import OptimizerConfig
from simultrain.shared.training.replica_sync import (
    TRAILER,
    SyncLedger,
    Watermark,
    decode_watermarks,
    encode_watermarks,
)
from simultrain.shared.training.runtime import CloudSessionState


def make_master() -> CloudMaster:
    torch.manual_seed(0)  # every replica builds the same initial model from the run's seed
    edge = nn.Sequential(nn.Linear(4, 3))
    cloud = nn.Sequential(nn.ReLU(), nn.Linear(3, 2))
    return CloudMaster(edge, cloud, optimizer=OptimizerConfig(lr=0.1))


def step(master: CloudMaster, seed: int) -> None:
    """One cloud-stage and one edge-stage update from a batch drawn by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 3, generator=g)
    y = torch.randint(0, 2, (8,), generator=g)
    master.cloud_step(x, y)
    grads = {n: torch.randn(p.shape, generator=g) for n, p in master.edge_stage.named_parameters()}
    master.apply_edge_gradient(grads, master.version, samples=8)


def weights(master: CloudMaster) -> dict[str, torch.Tensor]:
    return {n: t.clone() for n, t in master.full_state().items()}


def all_reduce(ledgers: list[SyncLedger], masters: list[CloudMaster]) -> torch.Tensor:
    contributions = [ledger.snapshot(m, {}) for ledger, m in zip(ledgers, masters, strict=True)]
    return torch.stack([c.packed() for c in contributions]).sum(dim=0)


@pytest.mark.parametrize("merge", ["mean", "sum"])
def test_a_round_puts_every_update_in_every_replica_once(merge: str) -> None:
    masters = [make_master(), make_master()]
    start = weights(masters[0])
    ledgers = [SyncLedger(m, merge=merge) for m in masters]  # type: ignore[arg-type]
    for i in range(3):
        step(masters[0], seed=i)
    step(masters[1], seed=10)
    own = [{n: t - start[n] for n, t in weights(m).items()} for m in masters]
    total = all_reduce(ledgers, masters)
    for ledger, master in zip(ledgers, masters, strict=True):
        ledger.merge(master, total, [], {})
    weight = 0.5 if merge == "mean" else 1.0  # each update, in every replica
    for master in masters:
        for name, value in master.full_state().items():
            expected = start[name] + weight * (own[0][name] + own[1][name])
            torch.testing.assert_close(value, expected, rtol=0, atol=1e-6)
        # 4 updates per step() call: 3 + 1 calls, 2 updates each.
        assert master.version == 8
        assert master.edge_updates == 4
    assert ledgers[0].mark_version == ledgers[1].mark_version == 8
    assert ledgers[0].rounds == 1


def test_replicas_that_took_the_same_steps_apply_them_once() -> None:
    """The defect behind 4 replicas' lost accuracy (docs/REPLICAS.md, "Why the mean"): the
    replicas' steps are taken in parallel from one model, so a round must move the model as
    far as one replica's steps did — as local SGD and FedAvg average — not R times as far.
    With identical data every replica computes the same steps: the sum applied them four
    times over (a step of 4·lr computed at one point, Downpour's staleness at its worst)."""
    masters = [make_master() for _ in range(4)]
    ledgers = [SyncLedger(m) for m in masters]
    alone = make_master()
    for i in range(3):
        for master in [*masters, alone]:
            step(master, seed=i)
    total = all_reduce(ledgers, masters)
    for ledger, master in zip(ledgers, masters, strict=True):
        ledger.merge(master, total, [], {})
    for master in masters:
        for name, value in master.full_state().items():
            torch.testing.assert_close(value, alone.full_state()[name], rtol=0, atol=1e-6)
        assert master.version == 4 * alone.version  # every update is counted, once
    # A replica with no updates in the round does not dilute the others' step.
    idle = [make_master(), make_master()]
    idle_ledgers = [SyncLedger(m) for m in idle]
    step(idle[0], seed=0)
    total = all_reduce(idle_ledgers, idle)
    for ledger, master in zip(idle_ledgers, idle, strict=True):
        ledger.merge(master, total, [], {})
    one = make_master()
    step(one, seed=0)
    for name, value in idle[1].full_state().items():
        torch.testing.assert_close(value, one.full_state()[name], rtol=0, atol=1e-6)


def test_updates_applied_during_a_round_survive_it() -> None:
    masters = [make_master(), make_master()]
    ledgers = [SyncLedger(m) for m in masters]
    step(masters[0], seed=1)
    total = all_reduce(ledgers, masters)
    before = weights(masters[0])
    step(masters[0], seed=2)  # between the snapshot and the merge
    late = {n: t - before[n] for n, t in weights(masters[0]).items()}
    ledgers[0].merge(masters[0], total, [], {})
    ledgers[1].merge(masters[1], total, [], {})
    # Replica 0 = agreed model + its late update; the next round brings it to replica 1.
    for name, value in masters[0].full_state().items():
        torch.testing.assert_close(
            value, masters[1].full_state()[name] + late[name], atol=1e-6, rtol=0
        )
    assert masters[0].version == masters[1].version + 2
    assert ledgers[0].local_updates(masters[0]) == 2
    total = all_reduce(ledgers, masters)
    for ledger, master in zip(ledgers, masters, strict=True):
        ledger.merge(master, total, [], {})
    for name, value in masters[0].full_state().items():
        torch.testing.assert_close(value, masters[1].full_state()[name], atol=1e-6, rtol=0)
    assert masters[0].version == masters[1].version == 4


def test_staleness_counts_the_other_replicas_updates() -> None:
    masters = [make_master(), make_master()]
    ledgers = [SyncLedger(m) for m in masters]
    edge_version = masters[0].version  # a gradient taken before either replica moved
    for i in range(5):
        step(masters[1], seed=i)
    total = all_reduce(ledgers, masters)
    for ledger, master in zip(ledgers, masters, strict=True):
        ledger.merge(master, total, [], {})
    grads = {n: torch.zeros_like(p) for n, p in masters[0].edge_stage.named_parameters()}
    result = masters[0].apply_edge_gradient(grads, edge_version)
    assert result.applied
    assert result.staleness == 5  # replica 1's five edge-stage updates
    assert result.staleness_versions == 10


def test_rebase_does_not_count_twice_a_round_that_completed_elsewhere() -> None:
    masters = [make_master(), make_master()]
    ledgers = [SyncLedger(m) for m in masters]
    step(masters[0], seed=1)
    step(masters[1], seed=2)
    total = all_reduce(ledgers, masters)
    ledgers[0].merge(masters[0], total, [], {})  # replica 1 saw the round fail
    ref = ledgers[0].reference()
    ledgers[1].rebase(masters[1], ref, {})
    for name, value in masters[0].full_state().items():
        torch.testing.assert_close(value, masters[1].full_state()[name], atol=1e-6, rtol=0)
    assert masters[1].version == masters[0].version == 4
    assert ledgers[1].rounds == 1


def test_a_joiner_rebases_and_keeps_its_own_updates() -> None:
    old, joiner = make_master(), make_master()
    ledger_old, ledger_new = SyncLedger(old), SyncLedger(joiner)
    for i in range(3):
        step(old, seed=i)
    ledger_old.snapshot(old, {})
    total = ledger_old.pending.packed()  # type: ignore[union-attr]
    ledger_old.merge(old, total, [], {})  # a group of one ran a round
    start = weights(joiner)
    step(joiner, seed=7)  # an edge trained on the joiner before it joined
    own = {n: t - start[n] for n, t in weights(joiner).items()}
    ledger_new.rebase(joiner, ledger_old.reference(), {})
    for name, value in joiner.full_state().items():
        torch.testing.assert_close(value, old.full_state()[name] + own[name], atol=1e-6, rtol=0)
    assert joiner.version == old.version + 2


def test_watermarks_become_durable_and_seed_a_moved_edge() -> None:
    master = make_master()
    ledger = SyncLedger(master)
    here = {"e1": CloudSessionState("e1", highest_applied_seq=9, samples_applied=320)}
    ledger.snapshot(master, here)
    moved = {"e2": Watermark(applied_seq=41, cloud_step_seq=43, samples=1344, steps=42)}
    ledger.merge(master, ledger.pending.packed(), [moved], here)  # type: ignore[union-attr]
    assert here["e1"].durable_seq == 9
    sessions: dict[str, CloudSessionState] = {}
    state = ledger.adopt(sessions, "e2", reconcile_offset=3)
    assert state is not None and sessions["e2"] is state
    assert (state.highest_applied_seq, state.highest_cloud_step_seq) == (41, 43)
    assert (state.samples_applied, state.durable_seq, state.reconcile_offset) == (1344, 41, 3)
    assert ledger.adopt(sessions, "unknown") is None


def test_bad_round_results_are_refused_whole() -> None:
    master = make_master()
    ledger = SyncLedger(master)
    with pytest.raises(TrainingError, match="no round"):
        ledger.merge(master, torch.zeros(ledger.size + TRAILER + 1), [], {})
    ledger.snapshot(master, {})
    with pytest.raises(TrainingError, match="already in flight"):
        ledger.snapshot(master, {})
    with pytest.raises(TrainingError, match="values"):
        ledger.merge(master, torch.zeros(5), [], {})
    bad = torch.zeros(ledger.size + TRAILER + 1, dtype=torch.float64)
    bad[0] = float("nan")
    version = master.version
    with pytest.raises(TrainingError, match="not finite"):
        ledger.merge(master, bad, [], {})
    assert master.version == version
    with pytest.raises(TrainingError, match="unknown"):
        master.absorb({"nope": torch.zeros(1)}, versions=0, edge_updates=0)
    with pytest.raises(TrainingError, match="malformed"):
        decode_watermarks(b"[1, 2")
    marks = {"e": Watermark(1, 2, 3, 4)}
    assert decode_watermarks(encode_watermarks(marks)) == marks
    with pytest.raises(TrainingError, match="merge"):
        SyncLedger(master, merge="median")  # type: ignore[arg-type]
