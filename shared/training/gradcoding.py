"""Gradient coding against stragglers: flat and hierarchical (Tang et al. 2024; Tandon et al. 2017).

**Flat code** (Tandon, Lei, Dimakis, Karampatziakis, "Gradient Coding", ICML 2017, cyclic
repetition scheme, Algorithm 2). The data is cut into ``n`` partitions and partition ``k``
has gradient ``g_k``; the full gradient is ``g = Σ_k g_k``. Worker ``i`` holds the ``s + 1``
partitions ``i, i+1, …, i+s (mod n)`` and sends one coded gradient ``c_i = Σ_k B[i,k] g_k``.
``B`` is built so that **any** ``n − s`` rows span the all-ones vector: for the workers ``F``
that answered there is ``a`` with ``aᵀ B_F = 1ᵀ``, hence ``Σ_{i∈F} a_i c_i = g`` exactly —
the master needs the fastest ``n − s`` workers, never the slowest ``s``. Construction: draw
``H`` (``s × n``) with ``H 1 = 0``; row ``i`` of ``B`` has ``B[i,i] = 1`` and its other ``s``
entries solve ``H b_i = 0``. Every row lies in ``null(H)`` (dimension ``n − s``), which holds
``1``; ``n − s`` generic rows are independent and so span it. The price is computation:
each worker does ``s + 1`` partitions' work (the trade-off the seed derives, its Theorem 1).

**Hierarchical code** (Tang et al. 2024: workers → edge nodes → master). ``n_e`` edge nodes with
``n_w`` workers each; the master tolerates ``s_e`` straggling edge nodes and every edge node
``s_w`` straggling workers. The data is cut into ``n_e × n_w`` sub-partitions ``g_{k,l}``.
The outer (edge-node) code makes node ``j`` responsible for ``c_j = Σ_k B_e[j,k] g_k`` with
``g_k = Σ_l g_{k,l}``; splitting that job by ``l`` gives ``n_w`` pieces
``h_{j,l} = Σ_k B_e[j,k] g_{k,l}`` with ``c_j = Σ_l h_{j,l}``, which the inner (worker) code
spreads over the node's workers: worker ``(j, i)`` sends ``Σ_l B_w[i,l] h_{j,l}``. A node
decodes ``c_j`` from any ``n_w − s_w`` of its workers, the master ``g`` from any
``n_e − s_e`` decoded nodes. A worker computes ``(s_e + 1)(s_w + 1)`` of the
``n_e · n_w`` sub-partitions.

Coefficients are float64 and every decode checks its own residual, so "decodes" means "to
rounding error": exact to ~1e-12 on float64 gradients; on float32 ones the coded values'
rounding is amplified by the decoding coefficients (up to ~1e-4 relative at n = 8, s = 3 with
this random construction), and a set of survivors that cannot decode raises :class:`TrainingError`
instead of returning a wrong gradient. Values may be tensors or mappings name → tensor (a
model's gradients); pure torch/numpy, no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from simultrain.shared.errors import ConfigError, TrainingError

__all__ = ["GradientCode", "HierarchicalGradientCode", "combine"]

G = TypeVar("G", Tensor, Mapping[str, Tensor])

_DECODE_TOLERANCE = 1e-8  # max |aᵀB_F − 1|: far above float64 rounding, far below a wrong decode


def combine(coefficients: Sequence[float], values: Sequence[G]) -> G:
    """``Σ_i coefficients[i] · values[i]`` in float64, returned in the values' dtype.

    ``values`` are all tensors of one shape or all mappings with the same names.
    """
    if len(coefficients) != len(values) or not values:
        raise ConfigError(f"{len(coefficients)} coefficients for {len(values)} values")
    first = values[0]
    if isinstance(first, Tensor):
        acc = torch.zeros_like(first, dtype=torch.float64)
        for c, v in zip(coefficients, values, strict=True):
            assert isinstance(v, Tensor)
            acc += float(c) * v.to(torch.float64)
        return acc.to(first.dtype)
    out: dict[str, Tensor] = {}
    for name in first:
        out[name] = combine(coefficients, [v[name] for v in values])
    return out


@dataclass(frozen=True)
class GradientCode:
    """The cyclic-repetition gradient code for ``n`` workers tolerating ``s`` stragglers."""

    n: int
    s: int
    matrix: np.ndarray  # B, n × n; row i supported on partitions i … i+s (mod n)
    seed: int = 0  # the draw of H: with n and s, all that two parties need to agree on B

    @property
    def identity(self) -> str:
        """What defines ``B``: an edge and a cloud with equal identities hold the same code."""
        return f"cyclic n={self.n} s={self.s} seed={self.seed}"

    @classmethod
    def cyclic(cls, n: int, s: int, *, seed: int = 0) -> GradientCode:
        if n < 1 or not 0 <= s < n:
            raise ConfigError(f"a gradient code needs n ≥ 1 and 0 ≤ s < n, got n={n}, s={s}")
        if s == 0:
            return cls(n, s, np.eye(n), seed)
        rng = np.random.default_rng(seed)
        # Tandon et al., Algorithm 2: H with H·1 = 0; a fresh draw in the (measure-zero)
        # case that some worker's s × s system is singular.
        for _ in range(16):
            h = rng.standard_normal((s, n))
            h[:, -1] = -h[:, :-1].sum(axis=1)
            b = np.zeros((n, n))
            try:
                for i in range(n):
                    others = [(i + j) % n for j in range(1, s + 1)]
                    b[i, i] = 1.0
                    b[i, others] = np.linalg.solve(h[:, others], -h[:, i])
            except np.linalg.LinAlgError:
                continue
            return cls(n, s, b, seed)
        raise ConfigError(f"could not build a gradient code for n={n}, s={s}")  # pragma: no cover

    def partitions(self, worker: int) -> tuple[int, ...]:
        """The partitions worker ``worker`` computes gradients on (``s + 1`` of them)."""
        self._check_worker(worker)
        return tuple((worker + j) % self.n for j in range(self.s + 1))

    def encode(self, worker: int, partial: Mapping[int, G]) -> G:
        """Worker ``worker``'s coded gradient from its partitions' gradients ``{k: g_k}``."""
        wanted = self.partitions(worker)
        missing = [k for k in wanted if k not in partial]
        if missing:
            raise TrainingError(f"worker {worker} lacks the gradients of partitions {missing}")
        return combine([self.matrix[worker, k] for k in wanted], [partial[k] for k in wanted])

    def decoding_vector(self, workers: Collection[int]) -> dict[int, float]:
        """Coefficients ``a_i`` with ``Σ a_i B[i] = 1`` over the given (surviving) workers."""
        survivors = sorted(set(workers))
        for w in survivors:
            self._check_worker(w)
        if len(survivors) < self.n - self.s:
            raise TrainingError(
                f"{len(survivors)} of {self.n} coded gradients cannot be decoded: the code "
                f"tolerates {self.s} straggler(s), so it needs {self.n - self.s}"
            )
        rows = self.matrix[survivors]  # |F| × n
        a, *_ = np.linalg.lstsq(rows.T, np.ones(self.n), rcond=None)
        residual = float(np.abs(a @ rows - 1.0).max())
        if residual > _DECODE_TOLERANCE:
            raise TrainingError(
                f"workers {survivors} do not decode (residual {residual:.2e}): ill-conditioned code"
            )
        return {w: float(c) for w, c in zip(survivors, a, strict=True)}

    def decode(self, coded: Mapping[int, G]) -> G:
        """The full gradient ``Σ_k g_k`` from the coded gradients that arrived."""
        a = self.decoding_vector(coded)
        return combine([a[w] for w in a], [coded[w] for w in a])

    def _check_worker(self, worker: int) -> None:
        if not 0 <= worker < self.n:
            raise TrainingError(f"worker {worker} is not one of 0 … {self.n - 1}")


@dataclass(frozen=True)
class HierarchicalGradientCode:
    """Seed 004's two-tier code: an outer code over edge nodes, an inner one in each node."""

    edge_code: GradientCode  # n_e edge nodes, s_e straggling nodes tolerated
    worker_code: GradientCode  # n_w workers per node, s_w straggling workers tolerated

    @classmethod
    def build(
        cls,
        nodes: int,
        node_stragglers: int,
        workers: int,
        worker_stragglers: int,
        *,
        seed: int = 0,
    ) -> HierarchicalGradientCode:
        return cls(
            GradientCode.cyclic(nodes, node_stragglers, seed=seed),
            GradientCode.cyclic(workers, worker_stragglers, seed=seed + 1),
        )

    @property
    def sub_partitions(self) -> int:
        return self.edge_code.n * self.worker_code.n

    def partitions(self, node: int, worker: int) -> tuple[tuple[int, int], ...]:
        """The sub-partitions ``(k, l)`` worker ``worker`` of node ``node`` computes."""
        return tuple(
            (k, l)
            for k in self.edge_code.partitions(node)
            for l in self.worker_code.partitions(worker)  # noqa: E741 (Tang et al.'s index)
        )

    def encode(self, node: int, worker: int, partial: Mapping[tuple[int, int], G]) -> G:
        """The coded gradient of worker ``(node, worker)`` from its ``{(k, l): g_{k,l}}``."""
        b_e, b_w = self.edge_code.matrix, self.worker_code.matrix
        wanted = self.partitions(node, worker)
        missing = [kl for kl in wanted if kl not in partial]
        if missing:
            raise TrainingError(f"worker ({node}, {worker}) lacks sub-partitions {missing}")
        coefficients = [b_w[worker, l] * b_e[node, k] for k, l in wanted]  # noqa: E741
        return combine(coefficients, [partial[kl] for kl in wanted])

    def decode_node(self, coded: Mapping[int, G]) -> G:
        """An edge node's coded gradient ``c_j`` from its workers that answered."""
        return self.worker_code.decode(coded)

    def decode(self, coded: Mapping[int, Mapping[int, G]]) -> G:
        """The full gradient from ``{node: {worker: coded gradient}}`` of whoever answered.

        A node with too few workers counts as a straggling node; too few decodable nodes
        raises :class:`TrainingError`.
        """
        need = self.worker_code.n - self.worker_code.s
        decoded = {j: self.decode_node(w) for j, w in coded.items() if len(w) >= need}
        if len(decoded) < self.edge_code.n - self.edge_code.s:
            raise TrainingError(
                f"only {len(decoded)} of {self.edge_code.n} edge nodes have the "
                f"{need} workers they need; the master needs "
                f"{self.edge_code.n - self.edge_code.s}"
            )
        return self.edge_code.decode(decoded)
