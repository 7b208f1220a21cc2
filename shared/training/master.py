"""The cloud's master: the whole model, its optimizers, the version counter and its history.

SPEC "Roles" (Cloud) and steps 2 and 4. The master is the only place where updates are
applied, and it applies them immediately. ``version`` (``v_c``) counts every applied update:
a cloud-stage step on an ACT and an edge gradient on an EGRAD each add one. ``edge_updates``
counts edge-stage *steps*: one per edge gradient, or — with a compensation that batches the
fleet's edge gradients (``fleet-batch``) — one per K gradients, averaged; a gradient taken
into that average is applied (it adds its version, its samples and its staleness at once)
though the weights move only with the K-th. Staleness is counted in edge-stage steps.

The edge-stage history is what the forecast needs: ``w_c@v`` for the version an edge gradient
was taken at. It is sized in master versions, not per edge, because with several edges the
master moves faster than any one edge's window (SPEC step 4). A gradient older than the
history is dropped and counted, never applied blindly.

With a compensation that keeps one edge-stage momentum per edge (``dana``: DANA-Zero,
Hakimi et al., 2019), each edge gradient steps the edge stage with its own edge's momentum
(``shared/training/dana.py``), named by ``edge_id`` (None: one implicit edge), and the
weights sent to the edges look ahead along the sum of those momenta.

Not thread-safe by design: a service runs every master operation on one compute thread.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simultrain.shared.errors import ConfigError, TrainingError
from simultrain.shared.training.compensation import Compensation, NoCompensation
from simultrain.shared.training.dana import EdgeMomenta, check_edge_id
from simultrain.shared.training.keys import Key

__all__ = [
    "CloudMaster",
    "CloudStepResult",
    "EdgeUpdateResult",
    "OptimizerConfig",
    "StalenessStats",
]


@dataclass(frozen=True, slots=True)
class OptimizerConfig:
    """One optimizer family for every mode (SPEC: baselines are never strawmen).

    ``cloud_momentum`` overrides the cloud stage's momentum: the pilot found that a cloud
    stage updated at once with high momentum over-corrects for an edge that answers late.
    """

    # Each field is a flat run configuration key ``optimizer_<field>`` (shared/training/keys.py).
    name: Annotated[Literal["sgd", "adam"], Key("Optimizer family.")] = "sgd"
    lr: Annotated[float, Key("Learning rate.", gt=0)] = 0.05
    momentum: Annotated[float, Key("SGD momentum.", ge=0, lt=1)] = 0.0
    cloud_momentum: Annotated[
        float | None, Key("Cloud-stage momentum override (default: momentum).", ge=0, lt=1)
    ] = None
    weight_decay: Annotated[float, Key("Weight decay.", ge=0)] = 0.0

    def build(
        self, params: Sequence[Tensor], *, stage: Literal["edge", "cloud", "full"]
    ) -> torch.optim.Optimizer:
        if self.lr <= 0:
            raise ConfigError(f"learning rate must be positive, got {self.lr}")
        if self.name == "sgd":
            momentum = self.momentum
            if stage == "cloud" and self.cloud_momentum is not None:
                momentum = self.cloud_momentum
            return torch.optim.SGD(
                params, lr=self.lr, momentum=momentum, weight_decay=self.weight_decay
            )
        if self.name == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        raise ConfigError(f"unknown optimizer {self.name!r}; choose sgd or adam")


@dataclass(frozen=True, slots=True)
class CloudStepResult:
    cut_grad: Tensor
    loss: float
    correct: int
    version: int


@dataclass(frozen=True, slots=True)
class PreparedCloudStep:
    """A cloud-stage forward and backward whose update is not applied yet (see
    :meth:`CloudMaster.prepare_cloud_step`); the gradients sit on the cloud stage."""

    cut_grad: Tensor
    loss: Tensor
    correct: int


@dataclass(frozen=True, slots=True)
class EdgeUpdateResult:
    applied: bool
    version: int
    staleness: int  # edge-stage updates the gradient missed; -1 when dropped
    staleness_versions: int  # v_c − v_e(k) at application, the SPEC's τ


@dataclass
class StalenessStats:
    """Per-batch staleness records, summarised (SPEC: the cloud records τ per batch)."""

    counts: dict[int, int] = field(default_factory=dict)
    dropped: int = 0

    def record(self, staleness: int) -> None:
        self.counts[staleness] = self.counts.get(staleness, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def max(self) -> int:
        return max(self.counts, default=0)

    @property
    def mean(self) -> float:
        n = self.total
        return sum(k * v for k, v in self.counts.items()) / n if n else 0.0

    def summary(self) -> dict[str, object]:
        return {
            "batches": self.total,
            "max": self.max,
            "mean": round(self.mean, 3),
            "dropped": self.dropped,
            "histogram": {str(k): v for k, v in sorted(self.counts.items())},
        }


@dataclass(frozen=True, slots=True)
class _HistoryEntry:
    version: int  # master version at which the edge stage took these values
    index: int  # how many edge-stage updates the master had applied by then
    weights: Mapping[str, Tensor]


class CloudMaster:
    def __init__(
        self,
        edge_stage: nn.Module,
        cloud_stage: nn.Module,
        *,
        optimizer: OptimizerConfig,
        compensation: Compensation | None = None,
        history_versions: int = 256,
    ) -> None:
        if history_versions < 1:
            raise ConfigError("history_versions must be at least 1")
        self.edge_stage = edge_stage
        self.cloud_stage = cloud_stage
        self.optimizer_config = optimizer
        self.compensation: Compensation = compensation or NoCompensation()
        self._edge_params = dict(edge_stage.named_parameters())
        self._edge_opt = optimizer.build(list(self._edge_params.values()), stage="edge")
        self._cloud_opt = optimizer.build(list(cloud_stage.parameters()), stage="cloud")
        self._full_opt: torch.optim.Optimizer | None = None
        self._base_edge_lr = [g["lr"] for g in self._edge_opt.param_groups]
        self._base_cloud_lr = [g["lr"] for g in self._cloud_opt.param_groups]
        self._base_edge_momentum = [_momentum_of(g) for g in self._edge_opt.param_groups]
        self._base_cloud_momentum = [_momentum_of(g) for g in self._cloud_opt.param_groups]
        # The staleness of the last applied edge gradient: what the cloud stage's momentum
        # and the weight prediction are sized by (with several edges it exceeds one window).
        self.observed_staleness = 0
        self.version = 0
        self.edge_updates = 0
        self.history_versions = history_versions
        self._history: deque[_HistoryEntry] = deque()
        self.staleness = StalenessStats()
        self.samples_applied = 0
        self.loss_ema: float | None = None  # training loss, smoothed over ~50 batches
        # Edges in session (the runtime keeps it current): a compensation that batches the
        # fleet's edge gradients (``Compensation.edge_batch``) steps once per that many.
        self.edges_in_session = 1
        # The batch being gathered: the sum of its (compensated) gradients, how many, and the
        # largest staleness among them (what the step's learning rate and momentum are set by).
        self.edge_accumulation: dict[str, Tensor] = {}
        self.edge_accumulated = 0
        self.edge_accumulated_staleness = 0
        # DANA: one edge-stage momentum per edge (None: the optimizer's one, shared).
        per_edge = self.compensation.per_edge_momentum()
        self.edge_momenta = (
            EdgeMomenta(self._edge_opt, self._edge_params, max_edges=per_edge) if per_edge else None
        )
        # The look-ahead of the newest edge-stage entry, computed once per version.
        self._lookahead: tuple[_HistoryEntry, int, float, Mapping[str, Tensor]] | None = None
        self._record_edge_history()

    # --- the edge stage's versions ------------------------------------------------------

    def edge_weights(self) -> Mapping[str, Tensor]:
        """The current edge-stage master weights (an immutable snapshot)."""
        return self._history[-1].weights

    def edge_weights_for_replica(self) -> Mapping[str, Tensor]:
        """The edge-stage weights to send to an edge replica (deltas and reconciliation).

        The master's own weights, or — with a compensation that predicts weights (SpecTrain,
        PipeMare, a look-ahead) — those weights extrapolated by ``h`` edge-stage updates along
        the mean of the last ``k`` updates, ``ŵ = w + h·(w − w_{−k})/k``: ``h`` and ``k`` are
        the compensation's horizon and span for the observed staleness (``k`` = 1: the last
        update). Fewer than ``k`` updates in the history: the oldest entry there. Buffers are
        never extrapolated.
        """
        current = self.edge_weights()
        scale = self.compensation.momentum_lookahead(self.observed_staleness)
        if scale and self.edge_momenta is not None:
            return self._momentum_lookahead(scale)
        horizon = self.compensation.prediction_horizon(self.observed_staleness)
        if horizon == 0.0 or len(self._history) < 2:
            return current
        span = self.compensation.prediction_span(self.observed_staleness)
        newest = self._history[-1]
        # Entries newest first: one per edge-stage update (whole-model updates add one each).
        previous = next(
            (e for e in reversed(self._history) if e.index <= newest.index - span),
            self._history[0],
        )
        updates = newest.index - previous.index
        if updates < 1 or (span == 1 and updates != 1):
            return current  # no update to extrapolate along, or not one update apart
        rate = horizon / updates
        return {
            n: (t + rate * (t - previous.weights[n])) if n in self._edge_params else t
            for n, t in current.items()
        }

    def _momentum_lookahead(self, scale: float) -> Mapping[str, Tensor]:
        """DANA's look-ahead ``θ̂ = θ − s·η·γ·Σ_j v_j`` (Adam: the first moments through the
        shared denominator; ``shared/training/dana.py``) with the edge stage's base η and
        γ (β₁), ``s`` = ``scale``; buffers are sent as they are."""
        assert self.edge_momenta is not None
        newest = self._history[-1]
        cached = self._lookahead
        if cached is not None and cached[0] is newest and cached[1:3] == (self.version, scale):
            return cached[3]
        step = self.edge_momenta.lookahead(self._base_edge_lr[0], self._base_edge_momentum[0])
        weights = {n: (t + scale * step[n]) if n in step else t for n, t in newest.weights.items()}
        self._lookahead = (newest, self.version, scale, weights)
        return weights

    def edge_weights_at(self, version: int) -> Mapping[str, Tensor] | None:
        entry = self._lookup(version)
        return entry.weights if entry is not None else None

    @property
    def oldest_known_version(self) -> int:
        return self._history[0].version

    def _lookup(self, version: int) -> _HistoryEntry | None:
        if version > self.version:
            return None
        # Binary search on the deque itself: the history holds up to ~8·2·(W + 1)·E versions
        # (it grows with the fleet, SPEC "Fleets"), so one gradient must not read every entry.
        i = bisect.bisect_right(self._history, version, key=_entry_version) - 1
        if i < 0:
            return None  # older than the history
        return self._history[i]

    def reset_history(self) -> None:
        """Forget the history (after loading a checkpoint): only the current version is known,
        so gradients of batches computed before the restart are dropped, never misapplied."""
        self._history.clear()
        self._record_edge_history()

    def _record_edge_history(self) -> None:
        snapshot = {n: p.detach().clone() for n, p in self.edge_stage.state_dict().items()}
        self._history.append(_HistoryEntry(self.version, self.edge_updates, snapshot))
        # Keep every entry a gradient of the last ``history_versions`` versions may need:
        # the newest entry at or below the horizon stays, older ones go.
        horizon = self.version - self.history_versions
        while len(self._history) > 1 and self._history[1].version <= horizon:
            self._history.popleft()

    # --- SPEC step 2: cloud stage --------------------------------------------------------

    def cloud_step(
        self, activations: Tensor, labels: Tensor, *, apply: bool = True
    ) -> CloudStepResult:
        """Forward and backward of the cloud stage, update applied at once; the cut gradient.

        ``apply=False`` computes the cut gradient without updating: for a batch re-sent after
        a reconnect whose cloud-stage update was applied before (exactly-once).
        """
        return self.commit_cloud_step(self.prepare_cloud_step(activations, labels), apply=apply)

    def prepare_cloud_step(self, activations: Tensor, labels: Tensor) -> PreparedCloudStep:
        """The checks, forward and backward of :meth:`cloud_step`, nothing applied: raises on
        a batch the master must refuse, before anything changes.

        The cloud stage's forward and backward do not read the edge stage, so an edge
        gradient may be applied between this and :meth:`commit_cloud_step` without changing
        a number — which is how a frame carrying both is checked whole before either lands.
        """
        self._check_batch(activations, labels)
        labels = labels.to(self.device)
        cut = activations.detach().to(self.device, self._dtype).requires_grad_(True)
        logits = self.cloud_stage(cut)
        _check_labels(labels, int(logits.shape[1]))
        loss = F.cross_entropy(logits, labels)
        self._cloud_opt.zero_grad(set_to_none=True)
        loss.backward()
        # Finite inputs can still overflow (an activation of 3e38): refuse before stepping,
        # so one hostile batch never turns the master into NaN (issue 5, item 3).
        try:
            _require_finite(
                [loss, cut.grad, *(p.grad for p in self.cloud_stage.parameters())], "cloud step"
            )
        except TrainingError:
            self._cloud_opt.zero_grad(set_to_none=True)
            raise
        assert cut.grad is not None
        correct = int((logits.detach().argmax(dim=1) == labels).sum())
        return PreparedCloudStep(cut.grad.detach(), loss.detach(), correct)

    def commit_cloud_step(
        self, prepared: PreparedCloudStep, *, apply: bool = True
    ) -> CloudStepResult:
        """Apply a prepared cloud-stage update (``apply=False``: only its cut gradient)."""
        if apply:
            _set_stage(
                self._cloud_opt,
                self._base_cloud_lr,
                self._base_cloud_momentum,
                self.compensation,
                self.observed_staleness,
                "cloud",
            )
            self._cloud_opt.step()
            self.version += 1
        self._cloud_opt.zero_grad(set_to_none=True)
        loss = float(prepared.loss)
        self._track_loss(loss)
        return CloudStepResult(prepared.cut_grad, loss, prepared.correct, self.version)

    def _track_loss(self, loss: float) -> None:
        self.loss_ema = loss if self.loss_ema is None else 0.98 * self.loss_ema + 0.02 * loss

    # --- SPEC step 4: edge stage, with staleness compensation ----------------------------

    def apply_edge_gradient(
        self,
        grads: Mapping[str, Tensor],
        edge_version: int,
        *,
        samples: int = 0,
        edge_id: str | None = None,
    ) -> EdgeUpdateResult:
        """SPEC step 4: apply edge ``edge_id``'s gradient taken at ``edge_version``.

        ``edge_id`` names the edge whose momentum the step uses when the compensation keeps
        one per edge (``dana``); None is one implicit edge. Refused (`TrainingError`, nothing
        changed): an edge id that is not a non-empty printable string, gradients that do not
        fit the edge stage or are not finite.
        """
        edge_key = check_edge_id(edge_id)
        self._check_edge_grads(grads)
        entry = self._lookup(edge_version)
        if entry is None:
            self.staleness.dropped += 1
            return EdgeUpdateResult(False, self.version, -1, self.version - edge_version)
        staleness = self.edge_updates - entry.index
        _set_stage(
            self._edge_opt,
            self._base_edge_lr,
            self._base_edge_momentum,
            self.compensation,
            staleness,
            "edge",
        )
        applied = {n: grads[n].to(p.device, p.dtype) for n, p in self._edge_params.items()}
        _require_finite(applied.values(), "edge gradient")  # 1e300 in float64 is inf here
        if staleness > 0:
            # A compensation is the plain update at staleness 0 by contract; not calling it
            # there keeps window 0 bit-identical to sequential split training.
            now = {n: p.detach() for n, p in self._edge_params.items()}
            applied = self.compensation.edge_gradients(applied, now, entry.weights, staleness)
        batch = self.compensation.edge_batch(self.edges_in_session)
        if batch > 1 or self.edge_accumulated:
            self._accumulate(applied, staleness)
        else:
            for name, param in self._edge_params.items():
                param.grad = applied[name].clone()
            if self.edge_momenta is not None:
                self.edge_momenta.step(edge_key)  # DANA: this edge's momentum only
            else:
                self._edge_opt.step()
            self._edge_opt.zero_grad(set_to_none=True)
            self.edge_updates += 1
        self.version += 1
        self.samples_applied += samples
        self.staleness.record(staleness)
        self.observed_staleness = staleness
        if not self.edge_accumulated:
            self._record_edge_history()  # the edge stage moved (one entry per step)
        return EdgeUpdateResult(True, self.version, staleness, self.version - 1 - edge_version)

    def _accumulate(self, grads: Mapping[str, Tensor], staleness: int) -> None:
        """Add one gradient to the fleet batch; step once it holds ``edge_batch`` of them."""
        if not self.edge_accumulated:
            self.edge_accumulation = {n: g.clone() for n, g in grads.items()}
        else:
            for name, g in grads.items():
                self.edge_accumulation[name].add_(g)
        self.edge_accumulated += 1
        self.edge_accumulated_staleness = max(self.edge_accumulated_staleness, staleness)
        if self.edge_accumulated >= self.compensation.edge_batch(self.edges_in_session):
            self._step_accumulated()

    def _step_accumulated(self) -> None:
        """One edge-stage step on the mean of the gathered gradients; the batch starts anew."""
        count = self.edge_accumulated
        _set_stage(
            self._edge_opt,
            self._base_edge_lr,
            self._base_edge_momentum,
            self.compensation,
            self.edge_accumulated_staleness,
            "edge",
        )
        scale = self.compensation.batch_lr_scale(count)
        for group in self._edge_opt.param_groups:
            group["lr"] *= scale
        for name, param in self._edge_params.items():
            param.grad = self.edge_accumulation[name] / count
        self._edge_opt.step()
        self._edge_opt.zero_grad(set_to_none=True)
        self.edge_updates += 1
        self.edge_accumulation = {}
        self.edge_accumulated = 0
        self.edge_accumulated_staleness = 0

    def set_edges_in_session(self, edges: int) -> bool:
        """The fleet changed (an edge joined or left). When it shrank, a batch that already
        holds as many gradients as the new fleet size steps now, and when the last edge left,
        whatever was gathered steps, so no applied gradient is left out of the weights. A
        joining edge never steps it (after a restart the fleet reconnects one by one). True
        if it stepped."""
        shrank = edges < self.edges_in_session
        self.edges_in_session = max(1, edges)
        return shrank and self.flush_edge_batch(only_if_full=edges > 0)

    def flush_edge_batch(self, *, only_if_full: bool = False) -> bool:
        """Step the edge stage on a partly gathered fleet batch (end of a run); True if it did."""
        if not self.edge_accumulated:
            return False
        full = self.edge_accumulated >= self.compensation.edge_batch(self.edges_in_session)
        if only_if_full and not full:
            return False
        self._step_accumulated()
        self.version += 1  # the weights moved: a version of their own, so lookups stay exact
        self._record_edge_history()
        return True

    # --- updates applied by other cloud replicas (docs/REPLICAS.md) ------------------------

    def absorb(self, delta: Mapping[str, Tensor], *, versions: int, edge_updates: int) -> int:
        """Add other replicas' parameter deltas (``full_state`` names; absent names are left
        alone) and count their updates: ``versions`` master versions, of which
        ``edge_updates`` edge-stage ones. The version counter then reads in global versions,
        so the staleness of a gradient includes the updates other replicas applied.

        The optimizer state stays local: each replica's optimizer has seen only its own
        edges' gradients, as each edge node of a hierarchical system does (seed 004).
        """
        if versions < 0 or edge_updates < 0:
            raise TrainingError("a replica merge cannot take updates back")
        state = self.full_state()
        unknown = set(delta) - set(state)
        if unknown:
            raise TrainingError(f"replica delta has unknown tensors {sorted(unknown)[:3]}")
        checked = _checked_like(delta, {n: state[n] for n in delta}, "replica delta")
        with torch.no_grad():
            for name, value in checked.items():
                state[name].add_(value)
        self.version += versions
        self.edge_updates += edge_updates
        self._record_edge_history()
        return self.version

    # --- whole-model baselines -----------------------------------------------------------

    def _full_optimizer(self) -> torch.optim.Optimizer:
        if self._full_opt is None:
            params = list(self.edge_stage.parameters()) + list(self.cloud_stage.parameters())
            self._full_opt = self.optimizer_config.build(params, stage="full")
        return self._full_opt

    def full_step(self, inputs: Tensor, labels: Tensor) -> CloudStepResult:
        """Centralized mode: the cloud trains the whole model on a raw batch."""
        opt = self._full_optimizer()
        self._check_batch(inputs, labels)
        labels = labels.to(self.device)
        logits = self.cloud_stage(self.edge_stage(inputs.to(self.device, self._dtype)))
        _check_labels(labels, int(logits.shape[1]))
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _require_finite([loss, *(p.grad for p in self.full_parameters().values())], "full step")
        opt.step()
        return self._after_full_update(loss, logits, labels, samples=int(labels.shape[0]))

    def check_full_gradient(self, grads: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A whole-model gradient checked (names, shapes, finite) before it waits in a round."""
        return _checked_like(grads, self.full_parameters(), "full gradient")

    def check_full_weights(self, weights: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A FedAvg upload checked (names, shapes, finite) before it waits in a round."""
        return _checked_like(weights, self.full_state(), "FedAvg upload")

    def apply_full_gradient(
        self, grads: Mapping[str, Tensor], *, samples: int, loss: float = 0.0
    ) -> int:
        """SyncSGD: apply a whole-model gradient computed by an edge at the current weights."""
        opt = self._full_optimizer()
        if loss:
            self._track_loss(loss)
        params = self.full_parameters()
        checked = _checked_like(grads, params, "full gradient")
        for name, param in params.items():
            param.grad = checked[name]
        opt.step()
        opt.zero_grad(set_to_none=True)
        self._bump_full(samples)
        return self.version

    def average_in(self, updates: Sequence[tuple[Mapping[str, Tensor], int]]) -> int:
        """FedAvg: replace the model by the sample-weighted mean of edge models."""
        total = sum(n for _, n in updates)
        if total <= 0:
            raise TrainingError("FedAvg round with no samples")
        state = self.full_state()
        checked = [(_checked_like(w, state, "FedAvg upload"), n) for w, n in updates]
        with torch.no_grad():
            for name, param in state.items():
                acc = torch.zeros_like(param, dtype=torch.float64)
                for weights, n in checked:
                    acc += weights[name].to(param.device, torch.float64) * (n / total)
                param.copy_(acc.to(param.dtype))
        self._bump_full(total)
        return self.version

    def _after_full_update(
        self, loss: Tensor, logits: Tensor, labels: Tensor, *, samples: int
    ) -> CloudStepResult:
        self._bump_full(samples)
        self._track_loss(float(loss.detach()))
        correct = int((logits.detach().argmax(dim=1) == labels).sum())
        return CloudStepResult(torch.empty(0), float(loss.detach()), correct, self.version)

    def _bump_full(self, samples: int) -> None:
        self.version += 1
        self.edge_updates += 1
        self.samples_applied += samples
        self._record_edge_history()

    def full_parameters(self) -> dict[str, Tensor]:
        named: dict[str, Tensor] = {f"edge.{n}": p for n, p in self.edge_stage.named_parameters()}
        named.update({f"cloud.{n}": p for n, p in self.cloud_stage.named_parameters()})
        return named

    def full_state(self) -> dict[str, Tensor]:
        named = {f"edge.{n}": t for n, t in self.edge_stage.state_dict().items()}
        named.update({f"cloud.{n}": t for n, t in self.cloud_stage.state_dict().items()})
        return named

    # --- evaluation and checks -----------------------------------------------------------

    @torch.no_grad()
    def evaluate(
        self, inputs: Tensor, labels: Tensor, *, batch_size: int = 512
    ) -> tuple[float, float]:
        """Held-out accuracy and mean loss of the master model."""
        self.edge_stage.eval()
        self.cloud_stage.eval()
        correct, loss_sum = 0, 0.0
        try:
            for i in range(0, int(labels.shape[0]), batch_size):
                x = inputs[i : i + batch_size].to(self.device)
                y = labels[i : i + batch_size].to(self.device)
                logits = self.cloud_stage(self.edge_stage(x))
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(dim=1) == y).sum())
        finally:
            self.edge_stage.train()
            self.cloud_stage.train()
        n = max(int(labels.shape[0]), 1)
        return correct / n, loss_sum / n

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.cloud_stage.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """Where the master computes: its stages' device. Tensors from the wire arrive on
        the CPU and are moved here; what goes back is moved to the CPU by ``to_wire``."""
        return next(self.cloud_stage.parameters()).device

    def _check_batch(self, activations: Tensor, labels: Tensor) -> None:
        if activations.shape[0] != labels.shape[0]:
            raise TrainingError(f"{activations.shape[0]} activations for {labels.shape[0]} labels")
        if activations.dtype not in (torch.float16, torch.float32):
            raise TrainingError(f"activations must be float32 or float16, got {activations.dtype}")
        if labels.dtype != torch.int64 or labels.ndim != 1:
            raise TrainingError(f"labels must be int64 of shape (batch,), got {labels.dtype}")

    def _check_edge_grads(self, grads: Mapping[str, Tensor]) -> None:
        for name, param in self._edge_params.items():
            g = grads.get(name)
            if g is None:
                raise TrainingError(f"edge gradient lacks {name}")
            if g.shape != param.shape:
                raise TrainingError(
                    f"edge gradient {name} has shape {tuple(g.shape)}, "
                    f"expected {tuple(param.shape)}"
                )
        unknown = set(grads) - set(self._edge_params)
        if unknown:
            raise TrainingError(f"edge gradient has unknown tensors {sorted(unknown)}")


def _entry_version(entry: _HistoryEntry) -> int:
    return entry.version


def _momentum_of(group: Mapping[str, object]) -> float:
    """SGD's momentum or Adam's β₁: the fraction of the previous step a new one keeps."""
    if "betas" in group:
        betas = group["betas"]
        assert isinstance(betas, tuple)
        return float(betas[0])
    return float(group.get("momentum", 0.0))  # type: ignore[arg-type]


def _set_stage(
    opt: torch.optim.Optimizer,
    base_lr: Sequence[float],
    base_momentum: Sequence[float],
    compensation: Compensation,
    staleness: int,
    stage: Literal["edge", "cloud"],
) -> None:
    """Learning rate and momentum of one stage's next step, as the compensation sets them.

    At staleness 0 every compensation returns the base values, so the step is the plain one.
    """
    scale = compensation.lr_scale(staleness, stage)
    for group, lr, momentum in zip(opt.param_groups, base_lr, base_momentum, strict=True):
        group["lr"] = lr * scale
        kind: Literal["sgd", "adam"] = "adam" if "betas" in group else "sgd"
        mu = compensation.momentum(momentum, staleness, stage, kind=kind)
        if "betas" in group:
            group["betas"] = (mu, group["betas"][1])
        elif "momentum" in group:
            group["momentum"] = mu


def _check_labels(labels: Tensor, num_classes: int) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise TrainingError(f"labels outside [0, {num_classes})")


def _require_finite(tensors: Iterable[Tensor | None], what: str) -> None:
    for t in tensors:
        if t is not None and not bool(torch.isfinite(t).all()):
            raise TrainingError(f"{what}: not finite (NaN or infinity); nothing applied")


def _checked_like(
    tensors: Mapping[str, Tensor], like: Mapping[str, Tensor], what: str
) -> dict[str, Tensor]:
    """``tensors`` cast to ``like``'s dtypes, with exactly its names and shapes, all finite."""
    if tensors.keys() != like.keys():
        missing, unknown = set(like) - set(tensors), set(tensors) - set(like)
        raise TrainingError(f"{what}: missing {sorted(missing)[:3]}, unknown {sorted(unknown)[:3]}")
    out = {}
    for name, ref in like.items():
        t = tensors[name]
        if t.shape != ref.shape:
            raise TrainingError(
                f"{what}: {name} has shape {tuple(t.shape)}, not {tuple(ref.shape)}"
            )
        out[name] = t.to(ref.device, ref.dtype, copy=True)
    _require_finite(out.values(), what)
    return out
