"""Gradient coding (Tandon et al. 2017; Tang et al. 2024): any n − s coded gradients decode to the
full gradient sum."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from simultrain.shared.errors import ConfigError, TrainingError
from simultrain.shared.training.gradcoding import GradientCode, HierarchicalGradientCode


def _grads(count: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Per-partition gradients of a small model: two named tensors each."""
    gen = torch.Generator().manual_seed(seed)
    return [
        {
            "w": torch.randn(4, 3, generator=gen, dtype=torch.float64),
            "b": torch.randn(3, generator=gen, dtype=torch.float64),
        }
        for _ in range(count)
    ]


def _total(grads: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {
        name: sum((g[name] for g in grads), torch.zeros_like(grads[0][name])) for name in grads[0]
    }


def _coded(code: GradientCode, grads: list[dict[str, torch.Tensor]]) -> dict[int, object]:
    return {w: code.encode(w, {k: grads[k] for k in code.partitions(w)}) for w in range(code.n)}


@pytest.mark.parametrize(("n", "s"), [(1, 0), (4, 0), (4, 1), (5, 2), (8, 1), (8, 2), (8, 3)])
def test_every_subset_of_n_minus_s_workers_decodes_the_full_gradient(n: int, s: int) -> None:
    code = GradientCode.cyclic(n, s, seed=n * 10 + s)
    grads = _grads(n, seed=n + s)
    coded = _coded(code, grads)
    want = _total(grads)
    for survivors in itertools.combinations(range(n), n - s):
        got = code.decode({w: coded[w] for w in survivors})
        for name in want:
            # float64 gradients: exact up to rounding (the code's coefficients are float64)
            torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-9)


def test_each_worker_computes_s_plus_one_partitions_and_every_partition_is_covered() -> None:
    code = GradientCode.cyclic(8, 2)
    loads = [code.partitions(w) for w in range(8)]
    assert all(len(p) == 3 for p in loads)
    # each partition is held by s + 1 workers: lose any s and it still has a holder
    assert sorted(k for p in loads for k in p) == sorted(list(range(8)) * 3)
    # a worker's row of B touches only its own partitions
    for w in range(8):
        outside = [k for k in range(8) if k not in loads[w]]
        assert np.all(code.matrix[w, outside] == 0)


@pytest.mark.parametrize(("n", "s"), [(4, 1), (8, 2)])
def test_fewer_than_n_minus_s_workers_is_a_clear_error(n: int, s: int) -> None:
    code = GradientCode.cyclic(n, s)
    coded = _coded(code, _grads(n))
    with pytest.raises(TrainingError, match=f"tolerates {s} straggler"):
        code.decode({w: coded[w] for w in range(n - s - 1)})
    with pytest.raises(TrainingError, match="cannot be decoded"):
        code.decode({})


def test_uncoded_workers_do_not_decode_without_all_of_them() -> None:
    """s = 0 is plain synchronous SGD: one straggler and the sum is out of reach."""
    code = GradientCode.cyclic(4, 0)
    coded = _coded(code, _grads(4))
    with pytest.raises(TrainingError):
        code.decode({w: coded[w] for w in range(3)})


def test_bad_parameters_and_inputs_are_refused() -> None:
    with pytest.raises(ConfigError):
        GradientCode.cyclic(4, 4)
    with pytest.raises(ConfigError):
        GradientCode.cyclic(0, 0)
    code = GradientCode.cyclic(4, 1)
    with pytest.raises(TrainingError, match="lacks the gradients"):
        code.encode(0, {0: torch.zeros(2)})
    with pytest.raises(TrainingError, match="not one of"):
        code.partitions(4)
    with pytest.raises(TrainingError, match="not one of"):
        code.decode({7: torch.zeros(2), 0: torch.zeros(2), 1: torch.zeros(2)})


def test_plain_tensors_decode_too_and_keep_their_dtype() -> None:
    code = GradientCode.cyclic(5, 2, seed=3)
    parts = [torch.randn(6, dtype=torch.float32) for _ in range(5)]
    coded = {w: code.encode(w, {k: parts[k] for k in code.partitions(w)}) for w in range(5)}
    got = code.decode({w: coded[w] for w in (0, 2, 4)})
    assert got.dtype == torch.float32
    # float32 in, float32 out: the coded values' rounding, amplified by the decoding weights
    torch.testing.assert_close(got, torch.stack(parts).sum(0), rtol=1e-4, atol=1e-4)


def test_hierarchical_code_decodes_from_any_tolerated_stragglers_at_both_tiers() -> None:
    nodes, s_e, workers, s_w = 3, 1, 4, 1
    code = HierarchicalGradientCode.build(nodes, s_e, workers, s_w, seed=7)
    gen = torch.Generator().manual_seed(1)
    sub = {
        (k, l): torch.randn(5, generator=gen, dtype=torch.float64)
        for k in range(nodes)
        for l in range(workers)  # noqa: E741
    }
    want = torch.stack(list(sub.values())).sum(0)
    coded = {
        j: {
            i: code.encode(j, i, {kl: sub[kl] for kl in code.partitions(j, i)})
            for i in range(workers)
        }
        for j in range(nodes)
    }
    # a worker computes (s_e + 1)(s_w + 1) of the n_e·n_w sub-partitions
    assert len(code.partitions(0, 0)) == (s_e + 1) * (s_w + 1)
    for live_nodes in itertools.combinations(range(nodes), nodes - s_e):
        for live_workers in itertools.combinations(range(workers), workers - s_w):
            got = code.decode({j: {i: coded[j][i] for i in live_workers} for j in live_nodes})
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    # A node missing s_w + 1 workers straggles as a whole; with s_e such nodes it still decodes.
    arrived = {j: dict(coded[j]) for j in range(nodes)}
    arrived[0] = {i: coded[0][i] for i in range(workers - s_w - 1)}
    torch.testing.assert_close(code.decode(arrived), want, rtol=1e-9, atol=1e-9)
    # Two nodes short of workers is more than s_e = 1: a clear error, not a wrong gradient.
    arrived[1] = {0: coded[1][0]}
    with pytest.raises(TrainingError, match="edge nodes"):
        code.decode(arrived)
