"""The synthetic role (Chen et al., HotEdge 2019): edge updates from learned synthetic gradients.

The edge backpropagates M's synthetic cut gradient through its stage at once and sends the
resulting gradient together with the batch's activations: its EGRAD goes just before its ACT
(the protocol piggybacks only earlier batches' EGRADs, and refuses an EGRAD after its own ACT
until a GRAD answered it; none will). The cloud applies the two together, trains M on the
true cut gradient, and sends no GRAD: M reaches the edge with the deltas. With local steps
(the ``synthetic`` mode; ``synthetic-nolocal`` is the ablation) the edge also moves its own
working weights at once. shared/training/synthetic.py holds M and the local updates;
docs/SYNTHETIC.md the rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from simultrain.shared.errors import TrainingError
from simultrain.shared.protocol import Act, EGrad, Snap
from simultrain.shared.protocol.tensorcodec import Codec
from simultrain.shared.tensors import from_wire, state_from_wire, state_to_wire, to_wire
from simultrain.shared.training.master import CloudMaster, PreparedCloudStep
from simultrain.shared.training.options import Codecs
from simultrain.shared.training.roles.act import ActCloudRuntime
from simultrain.shared.training.runtime import CloudSessionState, EdgeRuntime, Outgoing
from simultrain.shared.training.schedule import Schedule
from simultrain.shared.training.synthetic import (
    STAGE_PREFIX,
    LocalUpdates,
    SyntheticEdge,
    SyntheticGradientTrainer,
    WorkingWeights,
    predict_cut_grad,
    stage_grads,
)
from simultrain.shared.training.weights import EdgeReplica

__all__ = ["LocalSyntheticEdgeRuntime", "SyntheticCloudRuntime", "SyntheticEdgeRuntime"]

_PREFIX = "synthetic/"  # checkpoint tensors: M's state, by name


class SyntheticCloudRuntime(ActCloudRuntime):
    """EGRAD then ACT of one batch, applied together; M trained on every batch."""

    def __init__(
        self,
        master: CloudMaster,
        schedule: Schedule,
        codecs: Codecs,
        *,
        trainer: SyntheticGradientTrainer,
    ) -> None:
        super().__init__(master, schedule, codecs)
        self.synthetic = trainer  # the cut-gradient model M

    def _session_weights(self) -> Mapping[str, Tensor]:
        # The edge stage and M travel together in one replica (shared/training/synthetic.py).
        stage = self.master.edge_weights_for_replica()
        return {
            **{STAGE_PREFIX + n: t.cpu() for n, t in stage.items()},
            **self.synthetic.weights(),
        }

    def _on_egrad(self, state: CloudSessionState, egrad: EGrad) -> list[Outgoing]:
        # Its ACT follows at once; the two are applied together there.
        if len(state.leading_egrads) > self.schedule.window:
            raise TrainingError("synthetic mode: EGRAD frames without their ACTs")
        state.leading_egrads[egrad.seq] = egrad
        return []

    def _act(
        self,
        state: CloudSessionState,
        act: Act,
        prepared: PreparedCloudStep | None,
        labels: Tensor,
    ) -> list[Outgoing]:
        """ACT k with its EGRAD, which arrived just before: apply the edge gradient the edge
        took from M's synthetic cut gradient (with the run's compensation), commit the
        cloud-stage step, and train M on the true cut gradient. No GRAD goes back: M reaches
        the edge with the deltas, then the ACK."""
        assert prepared is not None
        leading = state.leading_egrads.pop(act.seq, None)
        for seq in [s for s in state.leading_egrads if s < act.seq]:
            del state.leading_egrads[seq]
        batch = int(labels.shape[0])
        if leading is not None:
            # Checked (names, shapes, finiteness) before anything of this batch lands.
            self._apply_edge_gradient(
                state, state_from_wire(leading.grads), leading.edge_version, samples=batch
            )
        # A batch re-sent after a reconnect may have had its cloud-stage step applied already
        # (its EGRAD was lost): apply nothing twice.
        first_time = act.seq > state.highest_cloud_step_seq
        result = self.master.commit_cloud_step(prepared, apply=first_time)
        if first_time:
            device = self.master.device
            self.synthetic.train(
                from_wire(act.activations).to(device), labels.to(device), result.cut_grad
            )
            state.highest_cloud_step_seq = act.seq
            state.samples_received += batch
        else:
            state.duplicates += 1
        if leading is None:
            return []  # not applied whole: no ACK, the edge sends the batch again
        self._mark_applied(state, act.seq, batch)
        return self._after_update(state, act.seq)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {**super().optimizers(), "synthetic": self.synthetic.optimizer}

    def role_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """M trains on the cloud: a restart must not reset it to zero."""
        tensors = {
            _PREFIX + name: t.detach().to("cpu", copy=True).contiguous()
            for name, t in self.synthetic.model.state_dict().items()
        }
        return tensors, {"synthetic_steps": self.synthetic.steps}

    def load_role_state(self, meta: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> None:
        steps = meta.get("synthetic_steps")
        if steps is None:
            return  # written by a run without M: it starts anew
        own = self.synthetic.model.state_dict()
        saved = {k.removeprefix(_PREFIX): v for k, v in tensors.items() if k.startswith(_PREFIX)}
        if saved.keys() != own.keys() or any(saved[k].shape != own[k].shape for k in own):
            raise TrainingError("its synthetic-gradient model does not fit")
        self.synthetic.model.load_state_dict(saved)
        self.synthetic.steps = int(steps)


class SyntheticEdgeRuntime(EdgeRuntime):
    """Forward, backward from M's synthetic cut gradient at once, EGRAD and ACT together;
    nothing stays in flight waiting for a GRAD. The edge stage moves only with the DELTAs
    (the ``synthetic-nolocal`` ablation; :class:`LocalSyntheticEdgeRuntime` adds its own
    steps)."""

    def _frame(self, replica: EdgeReplica, seq: int | None, x: Tensor, y: Tensor) -> Act:
        assert seq is not None
        module = self._module
        if not isinstance(module, SyntheticEdge):
            raise TrainingError("the synthetic schedule runs a SyntheticEdge module")
        working = self._working()
        stash = replica.forward(seq, x, weights=working.weights if working is not None else None)
        cut_grad = predict_cut_grad(module.synthetic, stash.weights.tensors, stash.activations, y)
        all_grads = EdgeReplica.backward(stash, cut_grad)
        if working is not None:
            self._local_step(seq, working, all_grads)
        grads = stage_grads(all_grads)
        self.leading.append(
            EGrad(
                seq=seq,
                edge_version=stash.version,
                grads=state_to_wire(grads, self.codecs.egrad, topk_ratio=self.codecs.topk_ratio),
            )
        )
        return Act(
            seq=seq,
            edge_version=stash.version,
            activations=to_wire(
                stash.activations.detach(), self.codecs.act, topk_ratio=self.codecs.topk_ratio
            ),
            labels=to_wire(y, Codec.RAW.value),
        )

    def _working(self) -> WorkingWeights | None:
        """The weights to forward at, when not the replica's."""
        return None

    def _local_step(
        self, seq: int, working: WorkingWeights, all_grads: Mapping[str, Tensor]
    ) -> None:
        """This batch's own step on the working weights."""


class LocalSyntheticEdgeRuntime(SyntheticEdgeRuntime):
    """The synthetic edge with local steps (Chen et al.'s point: the layer below the cut does
    not wait for the layer above). It forwards at the working weights (the replica plus the
    pending local steps) and this batch's own step joins them at once, so the next batch is
    computed with it; the replica stays the master's exact copy beside them."""

    def _init_role(self) -> None:
        # The edge's own local steps not yet in the master; made with the first SNAP.
        self.local_updates: LocalUpdates | None = None

    @property
    def local_steps(self) -> int:
        return self.local_updates.steps_taken if self.local_updates is not None else 0

    def _after_snap(self, replica: EdgeReplica, snap: Snap) -> None:
        # A reconciliation (after an ACK) blends in a master without the pending batches:
        # their local steps go on top of it. A resync starts a session whose unacknowledged
        # batches are sent again and take new steps: the old ones are dropped.
        if self.local_updates is None:
            self.local_updates = LocalUpdates(self._optimizer, replica.current)
        self.local_updates.include(replica.current, self.highest_acked, resync=not snap.reconcile)

    def _after_ack(self) -> None:
        if self.local_updates is not None and self.replica is not None:
            # The DELTA just before this ACK holds the master's own application of these
            # batches' gradients: their local steps are done.
            self.local_updates.include(self.replica.current, self.highest_acked)

    def _after_resume(self) -> None:
        if self.local_updates is not None and self.replica is not None:
            self.local_updates.include(self.replica.current, self.highest_acked, resync=True)

    def _working(self) -> WorkingWeights | None:
        return self.local_updates.working() if self.local_updates is not None else None

    def _local_step(
        self, seq: int, working: WorkingWeights, all_grads: Mapping[str, Tensor]
    ) -> None:
        assert self.local_updates is not None
        self.local_updates.step(
            seq, working, {n: g for n, g in all_grads.items() if n.startswith(STAGE_PREFIX)}
        )
