"""One edge-stage momentum per edge on the master: DANA-Zero (Hakimi et al., 2019).

The compensation part ``dana`` (``shared/training/compensation.py``) is an edge-step strategy
(`DanaEdgeStep`: each edge's gradients step with that edge's own momentum) and, unless its
look-ahead is 0, a replica position (`DanaLookAheadPosition`: the edges are sent
``θ̂ = θ − s·η·γ·Σ_j v_j``); this is their arithmetic. The edge stage keeps its one torch
optimizer: its shared state
(Adam's second moment and step count; nothing for SGD) stays in it, and before each step
the stepping edge's own momentum — SGD's ``momentum_buffer``, Adam's ``exp_avg`` — is put in
its place, so torch's own update does ``v_i ← γ·v_i + g, θ ← θ − η·v_i`` (SGD) or Adam's
step with ``m_i`` (docs/STALENESS.md, "Compensations", has the equations). With one edge
the one momentum *is* the optimizer's, and the step is the plain one bit for bit.

Adam debiases ``m_i`` by the edge's own count ``n_i`` (``1 − β₁^{n_i}``) while torch
debiases by the shared step ``t``: the step's learning rate is scaled by
``(1 − β₁^t)/(1 − β₁^{n_i})`` (exactly 1 when ``n_i = t``, as with one edge).

Memory: one edge-stage-sized tensor per edge and parameter (the first moment only), e.g.
64 edges × 6 144 IMU parameters × 4 B = 1.5 MiB; beyond ``max_edges`` edges the least
recently updated edge's momentum is dropped (counted in ``evicted``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from simultrain.shared.errors import TrainingError
from simultrain.shared.protocol.codec import MAX_NAME_BYTES
from simultrain.shared.training.compensation import Dana, DanaLookAhead, HistoryEntry
from simultrain.shared.training.stage import StageOptimizer

__all__ = [
    "IMPLICIT_EDGE",
    "DanaEdgeStep",
    "DanaLookAheadPosition",
    "EdgeMomenta",
    "check_edge_id",
]

_META = "edge_momenta"  # checkpoint metadata: {"edges", "counts", "evicted"}
_PREFIX = "edge_momentum/"  # checkpoint tensors: "<index of the edge>/<parameter name>"

IMPLICIT_EDGE = ""
"""The edge of a caller that names none (a single edge)."""


def check_edge_id(edge_id: object) -> str:
    """``edge_id`` as the key of an edge's state: None is the implicit single edge; anything
    but what the protocol accepts as an id (HELLO's ``edge_id``: 1 to MAX_NAME_BYTES bytes of
    UTF-8) is refused."""
    if edge_id is None:
        return IMPLICIT_EDGE
    if not isinstance(edge_id, str):
        raise TrainingError(f"edge id must be a string, got {type(edge_id).__name__}")
    try:
        size = len(edge_id.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates
        size = -1
    if not 0 < size <= MAX_NAME_BYTES:
        raise TrainingError(
            f"edge id must be 1 to {MAX_NAME_BYTES} bytes of UTF-8, got {edge_id!r:.80}"
        )
    return edge_id


class EdgeMomenta:
    """Per-edge momenta of the edge stage's optimizer (SGD with momentum, or Adam)."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, params: Mapping[str, Tensor], *, max_edges: int
    ) -> None:
        if max_edges < 1:
            raise TrainingError("per-edge momenta need max_edges ≥ 1")
        self.optimizer = optimizer
        self.params = dict(params)
        self.adam = "betas" in optimizer.param_groups[0]
        self.key = "exp_avg" if self.adam else "momentum_buffer"
        self.max_edges = max_edges
        # Least recently updated first; each edge's buffers by parameter name.
        self.buffers: OrderedDict[str, dict[str, Tensor]] = OrderedDict()
        self.counts: dict[str, int] = {}  # gradients applied per edge (Adam's debiasing)
        self.evicted = 0

    # --- one step --------------------------------------------------------------------------

    def step(self, edge_id: str) -> None:
        """One optimizer step of the edge stage (gradients, lr and momentum already set)
        with ``edge_id``'s momentum in place of the optimizer's."""
        own = self.buffers.get(edge_id)
        for name, param in self.params.items():
            state = self.optimizer.state[param]
            if own is not None and name in own:
                state[self.key] = own[name]
            elif self.adam and state:
                # A new edge's first moment starts at zero; the shared moments stay.
                state[self.key] = torch.zeros_like(param, memory_format=torch.preserve_format)
            else:
                state.pop(self.key, None)  # torch starts SGD's buffer at g, Adam's state anew
        count = self.counts.get(edge_id, 0) + 1
        scale = self._debias_scale(count)
        groups = self.optimizer.param_groups
        if scale != 1.0:
            for group in groups:
                group["lr"] *= scale
        self.optimizer.step()
        self.buffers[edge_id] = {
            name: buf
            for name, param in self.params.items()
            if (buf := self.optimizer.state[param].get(self.key)) is not None
        }
        self.buffers.move_to_end(edge_id)
        self.counts[edge_id] = count
        while len(self.buffers) > self.max_edges:
            gone, _ = self.buffers.popitem(last=False)
            self.counts.pop(gone, None)
            self.evicted += 1

    def _debias_scale(self, count: int) -> float:
        """Adam: ``(1 − β₁^t)/(1 − β₁^{n_i})`` for the step about to be taken; SGD: 1."""
        if not self.adam:
            return 1.0
        first = next(iter(self.params.values()))
        step = self.optimizer.state[first].get("step")
        shared = int(step) + 1 if step is not None else 1
        if shared == count:
            return 1.0
        beta1 = float(self.optimizer.param_groups[0]["betas"][0])
        if beta1 == 0.0:
            return 1.0
        return float((1.0 - beta1**shared) / (1.0 - beta1**count))

    # --- the look-ahead -------------------------------------------------------------------

    def lookahead(self, lr: float, momentum: float) -> dict[str, Tensor]:
        """The displacement ``θ̂ − θ`` of the look-ahead, per parameter name.

        SGD: ``−η·γ·Σ_j v_j``; Adam: ``−η·β₁·Σ_j m̂_j/(√û + ε)`` with each ``m̂_j`` debiased
        by its own edge's count and ``û`` by the shared step (the denominator the next step
        of any edge divides by). Zero before any edge has stepped.
        """
        out: dict[str, Tensor] = {}
        for name, param in self.params.items():
            total = torch.zeros_like(param, dtype=torch.float64)
            for edge_id, buffers in self.buffers.items():
                buf = buffers.get(name)
                if buf is None:
                    continue
                weight = 1.0
                if self.adam and momentum > 0.0:
                    weight = 1.0 / (1.0 - momentum ** self.counts[edge_id])
                total += weight * buf.double()
            if self.adam:
                state = self.optimizer.state[param]
                if "exp_avg_sq" not in state:
                    out[name] = torch.zeros_like(param)
                    continue
                t = float(state["step"])
                eps = float(self.optimizer.param_groups[0]["eps"])
                beta2 = float(self.optimizer.param_groups[0]["betas"][1])
                denom = (state["exp_avg_sq"].double() / (1.0 - beta2**t)).sqrt() + eps
                total = total / denom
            out[name] = (-lr * momentum * total).to(param.dtype)
        return out

    # --- checkpoints ----------------------------------------------------------------------

    def state(self) -> tuple[list[str], list[int], dict[str, Tensor]]:
        """Edges (least recently updated first), their counts, and their buffers as
        ``<index of the edge>/<parameter name>`` → tensor (edge ids stay out of the names)."""
        edges = list(self.buffers)
        tensors = {
            f"{i}/{name}": buf.detach().to("cpu", copy=True).contiguous()
            for i, edge_id in enumerate(edges)
            for name, buf in self.buffers[edge_id].items()
        }
        return edges, [self.counts[e] for e in edges], tensors

    def load(
        self, edges: Sequence[object], counts: Sequence[object], tensors: Mapping[str, Tensor]
    ) -> None:
        """Replace the per-edge state by a checkpoint's (:meth:`state`); raises
        `TrainingError` for one that does not fit the edge stage or is not finite."""
        if len(edges) != len(counts) or len(set(map(str, edges))) != len(edges):
            raise TrainingError("per-edge momenta: edges and counts do not match")
        buffers: OrderedDict[str, dict[str, Tensor]] = OrderedDict()
        loaded: dict[str, int] = {}
        for i, (edge, count) in enumerate(zip(edges, counts, strict=True)):
            edge_id = check_edge_id(edge)
            if not isinstance(count, int) or count < 1:
                raise TrainingError(f"per-edge momenta: edge {edge_id!r} has count {count!r}")
            own: dict[str, Tensor] = {}
            for name, param in self.params.items():
                t = tensors.get(f"{i}/{name}")
                if t is None:
                    continue
                if t.shape != param.shape or not bool(torch.isfinite(t).all()):
                    raise TrainingError(
                        f"per-edge momenta: {edge_id!r}'s {name} does not fit or is not finite"
                    )
                own[name] = t.to(param.device, param.dtype, copy=True)
            buffers[edge_id] = own
            loaded[edge_id] = count
        expected = {f"{i}/{n}" for i in range(len(edges)) for n in self.params}
        unknown = set(tensors) - expected
        if unknown:
            raise TrainingError(f"per-edge momenta: unknown tensors {sorted(unknown)[:3]}")
        self.buffers, self.counts = buffers, loaded


class DanaEdgeStep:
    """The ``dana`` strategy: one edge-stage step per gradient, with its edge's momentum."""

    gathered = 0

    def __init__(self, part: Dana, stage: StageOptimizer, params: Mapping[str, Tensor]) -> None:
        self.stage = stage
        self.params = params
        self.momenta = EdgeMomenta(stage.optimizer, params, max_edges=int(part.max_edges))

    @staticmethod
    def held_by(meta: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> str | None:
        """``per-edge momenta`` when a checkpoint holds some."""
        if meta.get(_META) is not None or any(k.startswith(_PREFIX) for k in tensors):
            return "per-edge momenta (dana)"
        return None

    def apply(self, grads: Mapping[str, Tensor], staleness: int, edge_key: str) -> int:
        for name, param in self.params.items():
            param.grad = grads[name].clone()
        self.momenta.step(edge_key)  # this edge's momentum only
        self.stage.optimizer.zero_grad(set_to_none=True)
        return 1

    def resize(self, edges: int) -> None:
        pass

    def flush(self, *, only_if_full: bool) -> int:
        return 0

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The optimizer's own state holds the shared moments; each edge's momentum is here,
        by the edge's index in the metadata (edge ids stay out of tensor names)."""
        edges, counts, momenta = self.momenta.state()
        tensors = {_PREFIX + key: t for key, t in momenta.items()}
        return tensors, {_META: {"edges": edges, "counts": counts, "evicted": self.momenta.evicted}}

    def load(self, meta: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> None:
        """Each edge's momentum back; a checkpoint without any (written by a run without
        them) leaves every edge to start its momentum anew."""
        saved = meta.get(_META)
        if saved is None:
            return
        own = {k.removeprefix(_PREFIX): v for k, v in tensors.items() if k.startswith(_PREFIX)}
        try:
            if not isinstance(saved, dict):
                raise TrainingError("per-edge momenta: not a table")
            self.momenta.load(saved["edges"], saved["counts"], own)
            self.momenta.evicted = int(saved.get("evicted", 0))
        except (TrainingError, KeyError, TypeError, ValueError) as exc:
            raise TrainingError(f"its per-edge momenta do not fit: {exc}") from exc


class DanaLookAheadPosition:
    """DANA's look-ahead ``θ̂ = θ − s·η·γ·Σ_j v_j`` (Adam: the first moments through the
    shared denominator) with the edge stage's base η and γ (β₁), ``s`` the part's scale, when
    gradients arrive late; buffers are sent as they are. Computed once per edge-stage
    version: the momenta change only with a step, and every step is a new history entry."""

    def __init__(self, part: DanaLookAhead, step: DanaEdgeStep) -> None:
        self.part = part
        self.step = step
        self._cached: tuple[HistoryEntry, float, Mapping[str, Tensor]] | None = None

    def weights(
        self, history: Sequence[HistoryEntry], staleness: int, params: Collection[str]
    ) -> Mapping[str, Tensor]:
        newest = history[-1]
        scale = self.part.scale if staleness > 0 else 0.0
        if not scale:
            return newest.weights
        cached = self._cached
        if cached is not None and cached[0] is newest and cached[1] == scale:
            return cached[2]
        stage = self.step.stage
        step = self.step.momenta.lookahead(stage.base_lr[0], stage.base_momentum[0])
        weights = {n: (t + scale * step[n]) if n in step else t for n, t in newest.weights.items()}
        self._cached = (newest, scale, weights)
        return weights
