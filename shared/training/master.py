"""The cloud's master: the whole model, its optimizers, the version counter and its history.

docs/DESIGN.md §2 (the cloud), §3.2 and §3.4. The master is the only place where updates are
applied, and it applies them immediately. ``version`` (``v_c``) counts every applied update:
a cloud-stage step on an ACT and an edge gradient on an EGRAD each add one. ``edge_updates``
counts edge-stage *steps*: how edge gradients become steps is the compensation's edge-step
strategy (shared/training/stage.py) — one step per gradient, or one per K gradients with
``fleet-batch``, where a gradient taken into the batch is applied (it adds its version, its
samples and its staleness at once) though the weights move only with the K-th. Staleness is
counted in edge-stage steps.

The edge-stage history is what the forecast needs: ``w_c@v`` for the version an edge gradient
was taken at. It is sized in master versions, not per edge, because with several edges the
master moves faster than any one edge's window (docs/DESIGN.md §6.2). A gradient older than the
history is dropped and counted, never applied blindly.

The compensation (shared/training/compensation.py) is a typed composition, resolved here
once: its corrections and step rules are applied to each update, its edge-step strategy
takes the edge gradients (named by ``edge_id``, None: one implicit edge, for the ``dana``
strategy's per-edge momenta), and its replica position says which weights the edges are
sent.

Not thread-safe by design: a service runs every master operation on one compute thread.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simultrain.shared.errors import ConfigError, TrainingError
from simultrain.shared.training.compensation import (
    Compensation,
    Dana,
    DanaLookAhead,
    FleetBatch,
    HistoryEntry,
    PlainStep,
)
from simultrain.shared.training.dana import DanaEdgeStep, DanaLookAheadPosition, check_edge_id
from simultrain.shared.training.fleet_batch import FleetBatchEdgeStep
from simultrain.shared.training.options import OptimizerConfig
from simultrain.shared.training.stage import EdgeStep, PlainEdgeStep, StageOptimizer

__all__ = [
    "CloudMaster",
    "CloudStepResult",
    "EdgeUpdateResult",
    "StalenessStats",
]


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
    staleness_versions: int  # v_c − v_e(k) at application, τ_v (docs/DESIGN.md §6.1)
    staleness_samples: int = 0  # samples applied since the version it was taken at


@dataclass
class StalenessStats:
    """Per-batch staleness records, summarised (docs/DESIGN.md §3.8: τ of every batch).

    In updates (``counts``: edge-stage steps a gradient missed) and in samples (the samples
    applied meanwhile, `in_samples`): a fleet that mixes or batches its gradients takes fewer,
    larger steps, and published parity results in asynchronous training are stated in samples
    in flight (docs/FLEET.md).
    """

    counts: dict[int, int] = field(default_factory=dict)
    dropped: int = 0
    samples_sum: int = 0
    samples_max: int = 0

    def record(self, staleness: int, *, samples: int = 0) -> None:
        self.counts[staleness] = self.counts.get(staleness, 0) + 1
        self.samples_sum += samples
        self.samples_max = max(self.samples_max, samples)

    def in_samples(self) -> dict[str, float]:
        """Staleness in samples: the mean and the largest number of samples applied between
        a gradient's version and its application."""
        n = self.total
        return {
            "mean": round(self.samples_sum / n, 3) if n else 0.0,
            "max": self.samples_max,
        }

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
    samples: int = 0  # samples the master had applied by then (staleness in samples)


class _Position(Protocol):
    """Where the weights sent to the edges stand (a compensation's replica position)."""

    def weights(
        self, history: Sequence[HistoryEntry], staleness: int, params: Collection[str]
    ) -> Mapping[str, Tensor]: ...


_EDGE_STEPS: dict[type, type[PlainEdgeStep] | type[FleetBatchEdgeStep] | type[DanaEdgeStep]] = {
    PlainStep: PlainEdgeStep,
    FleetBatch: FleetBatchEdgeStep,
    Dana: DanaEdgeStep,
}
"""Each edge-step strategy's mechanism, by the compensation part that chooses it."""


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
        self.compensation = compensation if compensation is not None else Compensation()
        self._edge_params = dict(edge_stage.named_parameters())
        self._edge_opt = optimizer.build(list(self._edge_params.values()), stage="edge")
        self._cloud_opt = optimizer.build(list(cloud_stage.parameters()), stage="cloud")
        self._full_opt: torch.optim.Optimizer | None = None
        self._edge = StageOptimizer(self._edge_opt, self.compensation, "edge")
        self._cloud = StageOptimizer(self._cloud_opt, self.compensation, "cloud")
        self._corrections = self.compensation.correctors()
        # The staleness of the last applied edge gradient: what the cloud stage's momentum
        # and the replica position are sized by (with several edges it exceeds one window).
        self.observed_staleness = 0
        self.version = 0
        self.edge_updates = 0
        self.history_versions = history_versions
        self._history: deque[_HistoryEntry] = deque()
        self.staleness = StalenessStats()
        self.samples_applied = 0
        self.loss_ema: float | None = None  # training loss, smoothed over ~50 batches
        # Edges in session (the runtime keeps it current): a strategy that batches the fleet's
        # edge gradients (``fleet-batch``) steps once per that many.
        self.edges_in_session = 1
        strategy = self.compensation.edge_step
        self.edge_step: EdgeStep = _EDGE_STEPS[type(strategy)](
            strategy,  # type: ignore[arg-type]
            self._edge,
            self._edge_params,
        )
        position = self.compensation.position
        self._position: _Position
        if isinstance(position, DanaLookAhead):
            assert isinstance(self.edge_step, DanaEdgeStep)  # the composition pairs them
            self._position = DanaLookAheadPosition(position, self.edge_step)
        else:
            self._position = position
        self._record_edge_history()

    # --- the edge stage's versions ------------------------------------------------------

    def edge_weights(self) -> Mapping[str, Tensor]:
        """The current edge-stage master weights (an immutable snapshot)."""
        return self._history[-1].weights

    def edge_weights_for_replica(self) -> Mapping[str, Tensor]:
        """The edge-stage weights to send to an edge replica (deltas and reconciliation).

        The master's own weights, or where the compensation's replica position puts them for
        the observed staleness: extrapolated along the history (SpecTrain, PipeMare, a
        look-ahead) or along DANA's per-edge momenta. Buffers are never moved.
        """
        return self._position.weights(self._history, self.observed_staleness, self._edge_params)

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
        # (it grows with the fleet, docs/DESIGN.md §6.3), so one gradient must not read every entry.
        i = bisect.bisect_right(self._history, version, key=_entry_version) - 1
        if i < 0:
            return None  # older than the history
        return self._history[i]

    def staleness_of(self, version: int) -> tuple[int, int] | None:
        """A gradient taken at ``version`` applied now: (edge-stage updates, samples) it
        missed; None when ``version`` is older than the history (it would be dropped)."""
        entry = self._lookup(version)
        if entry is None:
            return None
        return self.edge_updates - entry.index, self.samples_applied - entry.samples

    @contextmanager
    def scaled_lr(self, factor: float) -> Iterator[None]:
        """The stage steps taken inside use ``factor`` × their learning rate (a mixed step
        of stacked batches, shared/training/mixing.py); 1 leaves every step as it is."""
        self._edge.lr_factor = self._cloud.lr_factor = factor
        try:
            yield
        finally:
            self._edge.lr_factor = self._cloud.lr_factor = 1.0

    def reset_history(self) -> None:
        """Forget the history (after loading a checkpoint): only the current version is known,
        so gradients of batches computed before the restart are dropped, never misapplied."""
        self._history.clear()
        self._record_edge_history()

    def _record_edge_history(self) -> None:
        snapshot = {n: p.detach().clone() for n, p in self.edge_stage.state_dict().items()}
        self._history.append(
            _HistoryEntry(self.version, self.edge_updates, snapshot, self.samples_applied)
        )
        # Keep every entry a gradient of the last ``history_versions`` versions may need:
        # the newest entry at or below the horizon stays, older ones go.
        horizon = self.version - self.history_versions
        while len(self._history) > 1 and self._history[1].version <= horizon:
            self._history.popleft()

    # --- docs/DESIGN.md §3.2: cloud stage ------------------------------------------------

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
        # so one hostile batch never turns the master into NaN (docs/DESIGN.md §7.1).
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
            self._cloud.set_for(self.observed_staleness)
            self._cloud_opt.step()
            self.version += 1
        self._cloud_opt.zero_grad(set_to_none=True)
        loss = float(prepared.loss)
        self._track_loss(loss)
        return CloudStepResult(prepared.cut_grad, loss, prepared.correct, self.version)

    def _track_loss(self, loss: float) -> None:
        self.loss_ema = loss if self.loss_ema is None else 0.98 * self.loss_ema + 0.02 * loss

    # --- docs/DESIGN.md §3.4: edge stage, with staleness compensation --------------------

    def apply_edge_gradient(
        self,
        grads: Mapping[str, Tensor],
        edge_version: int,
        *,
        samples: int = 0,
        edge_id: str | None = None,
    ) -> EdgeUpdateResult:
        """docs/DESIGN.md §3.4: apply edge ``edge_id``'s gradient taken at ``edge_version``.

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
        behind = self.samples_applied - entry.samples
        self._edge.set_for(staleness)
        applied = {n: grads[n].to(p.device, p.dtype) for n, p in self._edge_params.items()}
        _require_finite(applied.values(), "edge gradient")  # 1e300 in float64 is inf here
        if staleness > 0:
            # Every correction is the identity at staleness 0; not calling them there keeps
            # window 0 bit-identical to sequential split training.
            now = {n: p.detach() for n, p in self._edge_params.items()}
            for corrector in self._corrections:
                applied = corrector.correct(applied, now, entry.weights, staleness)
        self.edge_updates += self.edge_step.apply(applied, staleness, edge_key)
        self.version += 1
        self.samples_applied += samples
        self.staleness.record(staleness, samples=behind)
        self.observed_staleness = staleness
        if not self.edge_step.gathered:
            self._record_edge_history()  # the edge stage moved (one entry per step)
        return EdgeUpdateResult(
            True, self.version, staleness, self.version - 1 - edge_version, behind
        )

    def set_edges_in_session(self, edges: int) -> bool:
        """The fleet changed (an edge joined or left). When it shrank, gradients gathered for
        a batch that is now full step, and when the last edge left, whatever was gathered
        steps, so no applied gradient is left out of the weights. A joining edge never steps
        them (after a restart the fleet reconnects one by one). True if the stage stepped."""
        shrank = edges < self.edges_in_session
        self.edges_in_session = max(1, edges)
        self.edge_step.resize(self.edges_in_session)
        return shrank and self.flush_edge_step(only_if_full=edges > 0)

    def flush_edge_step(self, *, only_if_full: bool = False) -> bool:
        """Step the edge stage on gradients gathered and not yet stepped (a partly gathered
        fleet batch at the end of a run); True if it did."""
        if not self.edge_step.flush(only_if_full=only_if_full):
            return False
        self.edge_updates += 1
        self.version += 1  # the weights moved: a version of their own, so lookups stay exact
        self._record_edge_history()
        return True

    def load_edge_step(self, meta: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> None:
        """The edge-step strategy's state from a checkpoint (its ``state()``); `TrainingError`
        for state of a strategy this run does not use (it could not be applied) or that
        does not fit."""
        for kind in set(_EDGE_STEPS.values()) - {type(self.edge_step)}:
            held = kind.held_by(meta, tensors)
            if held is not None:
                raise TrainingError(f"it holds {held}, which this run's compensation keeps none of")
        self.edge_step.load(meta, tensors)

    # --- updates applied by other cloud replicas (docs/REPLICAS.md) ------------------------

    def absorb(self, delta: Mapping[str, Tensor], *, versions: int, edge_updates: int) -> int:
        """Add other replicas' parameter deltas (``full_state`` names; absent names are left
        alone) and count their updates: ``versions`` master versions, of which
        ``edge_updates`` edge-stage ones. The version counter then reads in global versions,
        so the staleness of a gradient includes the updates other replicas applied.

        The optimizer state stays local: each replica's optimizer has seen only its own
        edges' gradients, as each edge node of a hierarchical system does (Tang et al. 2024).
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

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The stages' optimizers by name (what a checkpoint keeps of them)."""
        named = {"edge": self._edge_opt, "cloud": self._cloud_opt}
        if self._full_opt is not None:
            named["full"] = self._full_opt
        return named

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
