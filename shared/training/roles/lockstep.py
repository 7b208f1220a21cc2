"""The whole-model roles (syncsgd, fedavg): every edge computes on the whole model, in rounds.

The edge holds the whole model (:class:`WholeModel`) and uploads, per round, its gradient of
one batch (syncsgd: :class:`FullGradientEdgeRuntime`) or its model after E local steps
(fedavg: :class:`LocalStepsEdgeRuntime`). The cloud waits for every connected edge, then
takes one step on the sample-weighted mean of the round's gradients or replaces the model by
the weighted average of the uploaded ones (PROTOCOL.md §6.6). With a round deadline
(``round_deadline_s``) a round closes with whoever reported (partial aggregation).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simultrain.shared.errors import ConfigError
from simultrain.shared.protocol import EGrad
from simultrain.shared.protocol.tensorcodec import Codec
from simultrain.shared.tensors import state_from_wire, state_to_wire
from simultrain.shared.training.gradcoding import combine
from simultrain.shared.training.master import CloudMaster
from simultrain.shared.training.options import Codecs, OptimizerConfig
from simultrain.shared.training.runtime import (
    CloudRuntime,
    CloudSessionState,
    EdgeRuntime,
    Outgoing,
)
from simultrain.shared.training.schedule import Schedule
from simultrain.shared.training.weights import EdgeReplica

__all__ = [
    "FullGradientCloudRuntime",
    "FullGradientEdgeRuntime",
    "LocalStepsCloudRuntime",
    "LocalStepsEdgeRuntime",
    "WholeModel",
    "whole_model_weights",
]


class WholeModel(nn.Module):
    """Edge and cloud stages as one module with ``edge.*`` / ``cloud.*`` names.

    The whole-model baselines (syncsgd, fedavg) run this on the edge; the names match
    :meth:`CloudMaster.full_state`.
    """

    def __init__(self, edge: nn.Module, cloud: nn.Module) -> None:
        super().__init__()
        self.edge = edge
        self.cloud = cloud

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.cloud(self.edge(x))
        return out


def whole_model_weights(master: CloudMaster) -> dict[str, Tensor]:
    """A whole-model edge's replica: both stages, copied to the CPU."""
    return {n: t.detach().to("cpu", copy=True) for n, t in master.full_state().items()}


class _LockstepCloudRuntime(CloudRuntime):
    """Rounds: an upload from every connected edge, then one update of the whole model."""

    def __init__(
        self,
        master: CloudMaster,
        schedule: Schedule,
        codecs: Codecs,
        *,
        round_deadline_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if round_deadline_s is not None and not round_deadline_s > 0:
            raise ConfigError(f"round_deadline_s must be > 0 or None, got {round_deadline_s}")
        super().__init__(master, schedule, codecs)
        self._round: dict[str, tuple[int, dict[str, Tensor], int]] = {}  # edge → its upload
        # Straggler mitigation (RunConfig.round_deadline_s): a round closes this long after
        # it started (the previous round's close) with whoever reported; the caller asks
        # ``round_due_in`` and calls ``close_round_if_due`` then (the runtime keeps no
        # timers: it only reads ``clock``).
        self.round_deadline_s = round_deadline_s
        self._clock = clock
        self._round_opened_at: float | None = None

    def _session_weights(self) -> Mapping[str, Tensor]:
        return whole_model_weights(self.master)

    def _check_upload(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """An upload checked (names, shapes, finite) before it waits in a round."""
        raise NotImplementedError

    def _aggregate(self, uploads: list[tuple[dict[str, Tensor], int]]) -> None:
        """The round's one update of the master from its uploads and their samples."""
        raise NotImplementedError

    def _on_egrad(self, state: CloudSessionState, egrad: EGrad) -> list[Outgoing]:
        # Checked now, so a bad upload never waits in a round.
        checked = self._check_upload(state_from_wire(egrad.grads))
        state.samples_received += egrad.samples
        if self._round_opened_at is None:  # the first round starts with its first upload
            self._round_opened_at = self._clock()
        self._round[state.edge_id] = (egrad.seq, checked, egrad.samples)
        return self._maybe_close_round()

    def _left(self, edge_id: str) -> None:
        self._round.pop(edge_id, None)

    def _fleet_changed(self) -> list[Outgoing]:
        return self._maybe_close_round()  # it may have waited only for the edge that left

    def round_due_in(self) -> float | None:
        if self.round_deadline_s is None or not self._round or self._round_opened_at is None:
            return None
        return self._round_opened_at + self.round_deadline_s - self._clock()

    def close_round_if_due(self) -> list[Outgoing]:
        """Partial aggregation, as Flower's and NVFlare's round timeouts do: a round past
        its deadline averages the uploads it has. A straggler's upload is not lost: it
        arrives later, joins the next round and is acknowledged with it."""
        due = self.round_due_in()
        if due is None or due > 0:
            return []
        partial = not self.connected <= set(self._round)
        out = self._maybe_close_round(force=True)
        self.partial_rounds += int(partial)
        return out

    def _maybe_close_round(self, *, force: bool = False) -> list[Outgoing]:
        """Aggregate once every connected edge reported (or the deadline forces it)."""
        if not self._round or (not force and not self.connected <= set(self._round)):
            return []
        self._aggregate([(w, n) for _, w, n in self._round.values()])
        out: list[Outgoing] = []
        for edge_id, (seq, _, samples) in sorted(self._round.items()):
            state = self.sessions[edge_id]
            self._mark_applied(state, seq, samples)
            out.extend(self._after_update(state, seq))
        self._round.clear()
        # The next round starts now, when the edges get the new model: its deadline counts
        # from here, as a server's round timeout does, not from its first upload (which may
        # be a straggler's late one from the round before).
        self._round_opened_at = self._clock()
        return out


class FullGradientCloudRuntime(_LockstepCloudRuntime):
    """Synchronous SGD: one step with the sample-weighted mean of the round's gradients."""

    def _check_upload(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.master.check_full_gradient(tensors)

    def _aggregate(self, uploads: list[tuple[dict[str, Tensor], int]]) -> None:
        self.master.apply_full_gradient(_weighted_mean(uploads), samples=sum(n for _, n in uploads))


class LocalStepsCloudRuntime(_LockstepCloudRuntime):
    """FedAvg: the model becomes the sample-weighted average of the round's models."""

    def _check_upload(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.master.check_full_weights(tensors)

    def _aggregate(self, uploads: list[tuple[dict[str, Tensor], int]]) -> None:
        self.master.average_in(uploads)


def _weighted_mean(uploads: list[tuple[dict[str, Tensor], int]]) -> dict[str, Tensor]:
    """The sample-weighted mean of a round's gradients (equal weights if none has samples);
    one upload is used as it is, so one edge trains exactly as without rounds."""
    if len(uploads) == 1:
        return uploads[0][0]
    total = sum(n for _, n in uploads)
    weights = [n / total if total > 0 else 1 / len(uploads) for _, n in uploads]
    return dict(combine(weights, [g for g, _ in uploads]))


class FullGradientEdgeRuntime(EdgeRuntime):
    """syncsgd: the whole model's gradient of one batch per round."""

    def _frame(self, replica: EdgeReplica, seq: int | None, x: Tensor, y: Tensor) -> EGrad:
        assert seq is not None
        return EGrad(
            seq=seq,
            edge_version=replica.version,
            grads=state_to_wire(
                self._full_gradient(replica, seq, x, y),
                self.codecs.egrad,
                topk_ratio=self.codecs.topk_ratio,
            ),
            samples=int(y.shape[0]),
        )

    def _full_gradient(
        self, replica: EdgeReplica, seq: int, x: Tensor, y: Tensor
    ) -> dict[str, Tensor]:
        """The whole model's gradient of the mean loss of one batch."""
        stash = replica.forward(seq, x)
        loss = F.cross_entropy(stash.activations, y)
        self.losses.append(float(loss.detach()))
        logit_grad = torch.autograd.grad(loss, stash.activations, retain_graph=True)[0]
        return EdgeReplica.backward(stash, logit_grad)


class LocalStepsEdgeRuntime(EdgeRuntime):
    """FedAvg: E local optimizer steps from the replica, then the local model uploaded. The
    upload frame is what is kept (the batches of a round are not)."""

    def _init_role(self) -> None:
        self._local: _LocalRound | None = None

    def _number(self, inputs: np.ndarray, labels: np.ndarray) -> int | None:
        return None  # the upload takes a number, not the batch

    def _frame(self, replica: EdgeReplica, seq: int | None, x: Tensor, y: Tensor) -> EGrad | None:
        if self._local is None or self._local.base_version != replica.version:
            self._local = _LocalRound(self._module, replica, self._optimizer)
        loss = self._local.step(x, y)
        self.losses.append(loss)
        if self._local.steps < self.schedule.local_steps:
            return None
        local, self._local = self._local, None
        upload = EGrad(
            seq=self._take_seq(),
            edge_version=replica.version,
            grads=state_to_wire(local.weights(), Codec.LZ4.value),
            samples=local.samples,
        )
        self.unacked[upload.seq] = upload
        return upload


class _LocalRound:
    """One FedAvg round on the edge: a private copy of the model and a fresh optimizer."""

    def __init__(self, module: nn.Module, replica: EdgeReplica, optimizer: OptimizerConfig) -> None:
        self.base_version = replica.version
        self.model = copy.deepcopy(module)
        self.model.load_state_dict({n: t.detach() for n, t in replica.current.tensors.items()})
        self.opt = optimizer.build(list(self.model.parameters()), stage="full")
        self.steps = 0
        self.samples = 0

    def step(self, x: Tensor, y: Tensor) -> float:
        loss = F.cross_entropy(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.steps += 1
        self.samples += int(y.shape[0])
        return float(loss.detach())

    def weights(self) -> dict[str, Tensor]:
        return {n: t.detach().clone() for n, t in self.model.state_dict().items()}
