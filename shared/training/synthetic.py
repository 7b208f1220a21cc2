"""The ``synthetic`` mode: decoupled edge updates from learned synthetic gradients (seed 003).

Seed 003 (Chen et al., HotEdge 2019) applies synthetic gradients (Jaderberg et al. 2017,
"Decoupled Neural Interfaces") across cloud and edge: a small model M predicts the gradient
at the cut from the cut activations and the labels, ``ĝ = M(a_k, y_k) ≈ ∂ℓ/∂a_k``, so the
edge stage can be updated without waiting for the cloud's backward pass. Here:

- the cloud computes the true cut gradient of every batch anyway (its own backward, SPEC
  step 2) and trains M on it by regression, ``min ‖M(a_k, y_k) − g_a‖²``
  (:class:`SyntheticGradientTrainer`);
- M's weights ride in the edge's replica under the ``synthetic.`` prefix (the edge stage's
  under ``stage.``), so they reach the edge with the ordinary deltas, snapshots and soft
  reconciliations (SPEC steps 5 and 6) and the exactly-once and version machinery needs no
  new message;
- the edge backpropagates ``ĝ`` through its stage at once and sends the resulting gradient
  with the batch's ACT itself (piggybacked EGRAD of the same ``seq``): it never waits for a
  GRAD, and the cloud sends none. The master applies that gradient on arrival with the
  run's forecast/compensation at its staleness, as in every other mode — the cloud stays
  the only place where updates are applied (SPEC "Roles").

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

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from simultrain.shared.errors import TrainingError
from simultrain.shared.training.master import OptimizerConfig

__all__ = [
    "STAGE_PREFIX",
    "SYNTHETIC_PREFIX",
    "SyntheticEdge",
    "SyntheticGradientModel",
    "SyntheticGradientTrainer",
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
