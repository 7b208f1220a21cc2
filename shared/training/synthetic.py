"""The ``synthetic`` mode: decoupled edge updates from learned synthetic gradients.

Chen et al. (HotEdge 2019; docs/SYNTHETIC.md) apply synthetic gradients (Jaderberg et al.
2017, "Decoupled Neural Interfaces") across cloud and edge: a small model M predicts the gradient
at the cut from the cut activations and the labels, ``ĝ = M(a_k, y_k) ≈ ∂ℓ/∂a_k``, so the
edge stage can be updated without waiting for the cloud's backward pass. Here:

- the cloud computes the true cut gradient of every batch anyway (its own backward,
  docs/DESIGN.md §3.2) and trains M on it by regression, ``min ‖M(a_k, y_k) − g_a‖²``
  (:class:`SyntheticGradientTrainer`);
- M's weights ride in the edge's replica under the ``synthetic.`` prefix (the edge stage's
  under ``stage.``), so they reach the edge with the ordinary deltas, snapshots and soft
  reconciliations (docs/DESIGN.md §3.5, §3.6) and the exactly-once and version machinery needs no
  new message;
- the edge backpropagates ``ĝ`` through its stage at once and sends the resulting gradient
  with the batch's ACT itself (piggybacked EGRAD of the same ``seq``): it never waits for a
  GRAD, and the cloud sends none. The master applies that gradient on arrival with the
  run's forecast/compensation at its staleness, as in every other mode — the cloud stays
  the only place where updates are applied (docs/DESIGN.md §2).

The edge's own stage is updated at once (DNI's point: the layer below the cut does not wait
for the layer above). The master stays the only place updates are *applied*; the edge keeps
the checksummed replica exactly as in every other mode and, beside it, its **working
weights** = replica + the local optimizer steps of its own synthetic gradients that the
master has not yet acknowledged (:class:`LocalUpdates`). It forwards with the working
weights; once the ACK of batch k arrives, the DELTA before it carries the master's own
application of batch k's gradient, so the local step of k is dropped. docs/SYNTHETIC.md has
the rules for reconciliation and resync.

M is deliberately small: per cut channel (the cut's first dimension; the rest are positions)
a one-hidden-layer MLP over the channel vector and the label, ``ĝ = W₂·relu(W₁·a + E·y)``,
shared across positions like a 1×1 convolution. ``W₂`` starts at zero, as in DNI, so the
edge stage does not move until M has learned something. M predicts the per-sample gradient
(the batch-mean loss's cut gradient times the batch size) so its targets do not shrink with
the batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from simultrain.shared.errors import TrainingError
from simultrain.shared.training.options import OptimizerConfig
from simultrain.shared.training.weights import VersionedWeights, freeze

__all__ = [
    "STAGE_PREFIX",
    "SYNTHETIC_PREFIX",
    "LocalUpdates",
    "SyntheticEdge",
    "SyntheticGradientModel",
    "SyntheticGradientTrainer",
    "WorkingWeights",
    "predict_cut_grad",
    "stage_grads",
]

STAGE_PREFIX = "stage."
SYNTHETIC_PREFIX = "synthetic."


class SyntheticGradientModel(nn.Module):
    """M: ``(activations (B, C, *S), labels (B,)) → predicted cut gradient (B, C, *S)``."""

    def __init__(self, cut_shape: tuple[int, ...], num_classes: int, *, seed: int = 0) -> None:
        super().__init__()
        if not cut_shape:
            raise TrainingError("a synthetic-gradient model needs a cut with ≥ 1 dimension")
        channels = int(cut_shape[0])
        hidden = 2 * channels
        self.num_classes = num_classes
        self.features = nn.Linear(channels, hidden)
        self.label = nn.Linear(num_classes, hidden, bias=False)
        self.out = nn.Linear(hidden, channels)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            bound = 1.0 / math.sqrt(channels)
            self.features.weight.uniform_(-bound, bound, generator=generator)
            self.features.bias.zero_()
            self.label.weight.uniform_(-1.0, 1.0, generator=generator)
            self.out.weight.zero_()  # DNI: ĝ = 0 until M has learned
            self.out.bias.zero_()

    def forward(self, activations: Tensor, labels: Tensor) -> Tensor:
        a = activations.movedim(1, -1)  # (B, *S, C): channels last, positions shared
        onehot = F.one_hot(labels, self.num_classes).to(a.dtype)
        label = self.label(onehot).reshape(a.shape[0], *([1] * (a.dim() - 2)), -1)
        hidden = torch.relu(self.features(a) + label)
        out: Tensor = self.out(hidden).movedim(-1, 1)
        return out


class SyntheticEdge(nn.Module):
    """The edge's module in the synthetic mode: the edge stage (``stage.*``) and M
    (``synthetic.*``). Its forward is the edge stage's; M is read by `predict_cut_grad`."""

    def __init__(self, stage: nn.Module, synthetic: SyntheticGradientModel) -> None:
        super().__init__()
        self.stage = stage
        self.synthetic = synthetic

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.stage(x)
        return out


def predict_cut_grad(
    model: SyntheticGradientModel,
    replica: Mapping[str, Tensor],
    activations: Tensor,
    labels: Tensor,
) -> Tensor:
    """The synthetic cut gradient of the batch-mean loss, from M's weights in ``replica``."""
    weights = {
        name.removeprefix(SYNTHETIC_PREFIX): t.detach()
        for name, t in replica.items()
        if name.startswith(SYNTHETIC_PREFIX)
    }
    with torch.no_grad():
        per_sample: Tensor = functional_call(model, weights, (activations.detach(), labels))
    return per_sample / activations.shape[0]


def stage_grads(grads: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The edge-stage part of a `SyntheticEdge` gradient, under the master's names."""
    return {
        name.removeprefix(STAGE_PREFIX): g
        for name, g in grads.items()
        if name.startswith(STAGE_PREFIX)
    }


class SyntheticGradientTrainer:
    """The cloud's M and its optimizer: one regression step per batch on the true cut
    gradient the cloud stage's backward produced."""

    def __init__(
        self,
        cut_shape: tuple[int, ...],
        num_classes: int,
        *,
        seed: int,
        optimizer: OptimizerConfig,
        device: str | torch.device = "cpu",
    ) -> None:
        self.model = SyntheticGradientModel(cut_shape, num_classes, seed=seed).to(device)
        self.optimizer = optimizer.build(list(self.model.parameters()), stage="full")
        self.steps = 0
        self.last_loss = math.nan

    def train(self, activations: Tensor, labels: Tensor, cut_grad: Tensor) -> float:
        """One step of ``min ‖M(a, y) − B·g_a‖²``; returns the regression loss."""
        target = cut_grad.detach() * activations.shape[0]
        predicted = self.model(activations.detach(), labels)
        loss = F.mse_loss(predicted, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        self.last_loss = float(loss.detach())
        return self.last_loss

    def weights(self) -> dict[str, Tensor]:
        """M's weights as the replica holds them (``synthetic.``-prefixed, on the CPU)."""
        return {
            SYNTHETIC_PREFIX + name: t.detach().to("cpu", copy=True)
            for name, t in self.model.named_parameters()
        }


@dataclass(frozen=True, slots=True)
class _Included:
    """What the replica is known to hold: its weights as of the last ACK or SNAP, which
    contain the master's application of every batch up to ``acked_seq`` (a DELTA always goes
    out just ahead of the ACK it belongs to, PROTOCOL.md §6.3). ``epoch`` counts resyncs."""

    weights: VersionedWeights
    acked_seq: int
    epoch: int


@dataclass(frozen=True, slots=True)
class WorkingWeights:
    """The weights the edge forwards with: the replica ``weights.version`` reflects, plus the
    local steps of the batches in ``pending`` (oldest first)."""

    weights: VersionedWeights
    epoch: int
    pending: tuple[int, ...]


class LocalUpdates:
    """The edge's own updates in the synthetic mode, not yet in the master (docs/SYNTHETIC.md).

    Working weights = replica + Σ local steps of the batches the cloud has not acknowledged.
    A local step is the run's optimizer rule (SGD, momentum or Adam, with its lr) applied to
    the edge stage with the edge's own optimizer state: the same rule the master will apply
    to the same gradient, so the working weights predict where the master's edge stage is
    going. A plain ``−lr·g`` would be the simplest step, but with the default Adam (lr 1e-3)
    it is a thousand times smaller than the update the master actually makes and would
    change nothing. M's weights (``synthetic.*``) are never stepped locally: only the cloud
    trains M.

    Two sides, no lock (the replica's copy-on-write discipline, weights.py): the event loop
    only swaps one immutable reference (:meth:`include`, on every ACK and SNAP); the compute
    thread alone reads it once per batch and owns the pending steps and the optimizer
    (:meth:`working`, :meth:`step`). The base moves on the ACK, not on the DELTA before it,
    so a forward never sees a batch's update twice (the master's in the replica and the
    local step) or not at all.
    """

    def __init__(self, optimizer: OptimizerConfig, replica: VersionedWeights) -> None:
        self._config = optimizer
        self._included = _Included(replica, -1, 0)
        self._pending: dict[int, tuple[int, dict[str, Tensor]]] = {}  # seq → (epoch, step)
        self._params: dict[str, Tensor] = {}
        self._optimizer: torch.optim.Optimizer | None = None
        self.steps_taken = 0
        self.steps_dropped = 0  # local steps a resync threw away (their batches go again)

    @property
    def pending(self) -> tuple[int, ...]:
        """Batches whose local steps the last :meth:`working` or :meth:`step` holds."""
        return tuple(sorted(self._pending))

    def step_of(self, seq: int) -> dict[str, Tensor]:
        """The pending local step of batch ``seq`` (KeyError once it is dropped)."""
        return dict(self._pending[seq][1])

    def include(self, replica: VersionedWeights, acked_seq: int, *, resync: bool = False) -> None:
        """The replica now holds the master's application of every batch up to ``acked_seq``
        (an ACK, or a reconciliation after one); ``resync``: a session's fresh copy of the
        master (its batches above ``acked_seq`` will be sent again and take new steps, so
        every pending step is dropped)."""
        old = self._included
        self._included = _Included(replica, acked_seq, old.epoch + 1 if resync else old.epoch)

    def working(self) -> WorkingWeights:
        """The weights for the next forward (compute thread). Bit for bit the replica's when
        nothing is pending."""
        included = self._included  # read the reference exactly once
        for seq, (epoch, _) in list(self._pending.items()):
            if seq <= included.acked_seq or epoch != included.epoch:
                self.steps_dropped += int(epoch != included.epoch and seq > included.acked_seq)
                self._pending.pop(seq, None)
        base = included.weights
        pending = dict(self._pending)
        if not pending:
            return WorkingWeights(base, included.epoch, ())
        seqs = tuple(sorted(pending))
        tensors: dict[str, Tensor] = {}
        for name, t in base.tensors.items():
            w = t.detach()
            for seq in seqs:
                step = pending[seq][1].get(name)
                if step is not None:
                    w = w + step
            tensors[name] = w
        return WorkingWeights(VersionedWeights(base.version, freeze(tensors)), included.epoch, seqs)

    def step(
        self, seq: int, working: WorkingWeights, grads: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """One local optimizer step of batch ``seq`` from the edge-stage gradient ``grads``
        (replica names) taken at ``working``; it counts until the ACK of ``seq``."""
        if not self._params:
            self._params = {
                name: torch.zeros_like(t.detach()).requires_grad_(True)
                for name, t in working.weights.tensors.items()
                if name.startswith(STAGE_PREFIX)
            }
            self._optimizer = self._config.build(list(self._params.values()), stage="edge")
        if set(grads) != set(self._params):
            raise TrainingError("local step: the gradient's names are not the edge stage's")
        for name, g in grads.items():
            if g.shape != self._params[name].shape:
                raise TrainingError(f"local step: {name} has shape {tuple(g.shape)}")
            if not bool(torch.isfinite(g).all()):
                raise TrainingError(f"local step: the synthetic gradient of {name} is not finite")
        assert self._optimizer is not None
        current = {name: working.weights.tensors[name].detach() for name in self._params}
        with torch.no_grad():
            for name, param in self._params.items():
                param.copy_(current[name])
                param.grad = grads[name].detach().to(param.dtype).clone()
        self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)
        step = {name: param.detach() - current[name] for name, param in self._params.items()}
        self._pending[seq] = (working.epoch, step)
        self.steps_taken += 1
        return step
