"""The split role (simultrain, split-sync): the edge stage on the edge, the rest in the cloud.

PROTOCOL.md §6.4, message by message: the edge forwards its stage and sends the activations
(ACT), keeping the graph and the exact weights it used (weight stashing); the cloud steps its
stage at once and answers the cut gradient (GRAD); the edge backpropagates it through the
stashed graph and sends the edge-stage gradient (EGRAD, piggybacked on the next ACT), which
the master applies with the run's compensation.
"""

from __future__ import annotations

from torch import Tensor

from simultrain.shared.errors import TrainingError
from simultrain.shared.protocol import Act, EGrad, Grad
from simultrain.shared.protocol.tensorcodec import Codec
from simultrain.shared.tensors import from_wire, state_from_wire, state_to_wire, to_wire
from simultrain.shared.training.master import PreparedCloudStep
from simultrain.shared.training.roles.act import ActCloudRuntime
from simultrain.shared.training.runtime import CloudSessionState, EdgeRuntime, Outgoing
from simultrain.shared.training.weights import EdgeReplica, StashedForward

__all__ = ["SplitCloudRuntime", "SplitEdgeRuntime"]


class SplitCloudRuntime(ActCloudRuntime):
    """ACT: the cloud-stage step and the cut gradient; EGRAD: the edge-stage update."""

    def _act(
        self,
        state: CloudSessionState,
        act: Act,
        prepared: PreparedCloudStep | None,
        labels: Tensor,
    ) -> list[Outgoing]:
        assert prepared is not None
        batch = int(labels.shape[0])
        # A batch re-sent after a reconnect may have had its cloud-stage update applied
        # already (its EGRAD was lost): compute its cut gradient again, apply nothing twice.
        first_time = act.seq > state.highest_cloud_step_seq
        result = self.master.commit_cloud_step(prepared, apply=first_time)
        if first_time:
            state.highest_cloud_step_seq = act.seq
            state.samples_received += batch
        else:
            state.duplicates += 1
        state.batch_sizes[act.seq] = batch
        grad = Grad(
            seq=act.seq,
            master_version=result.version,
            cut_grad=to_wire(result.cut_grad, self.codecs.grad, topk_ratio=self.codecs.topk_ratio),
            loss=result.loss,
        )
        return [(state.edge_id, grad)]

    def _on_egrad(self, state: CloudSessionState, egrad: EGrad) -> list[Outgoing]:
        tensors = state_from_wire(egrad.grads)
        samples = state.batch_sizes.pop(egrad.seq, 0)
        self._apply_edge_gradient(state, tensors, egrad.edge_version, samples=samples)
        # A gradient older than the history is dropped and counted inside the master; the
        # batch is answered all the same so the edge moves on.
        self._mark_applied(state, egrad.seq, samples)
        return self._after_update(state, egrad.seq)


class SplitEdgeRuntime(EdgeRuntime):
    """Forward and ACT per batch; the backward of each GRAD through its stashed graph."""

    def _init_role(self) -> None:
        self.in_flight: dict[int, StashedForward] = {}  # batch → its forward, until its GRAD

    def _frame(self, replica: EdgeReplica, seq: int | None, x: Tensor, y: Tensor) -> Act:
        assert seq is not None
        stash = replica.forward(seq, x)
        self.in_flight[seq] = stash
        payload = to_wire(
            stash.activations.detach(), self.codecs.act, topk_ratio=self.codecs.topk_ratio
        )
        egrad = self.pending_egrads.popleft() if self.pending_egrads else None
        return Act(
            seq=seq,
            edge_version=replica.version,
            activations=payload,
            labels=to_wire(y, Codec.RAW.value),
            egrad=egrad,
        )

    def on_grad(self, grad: Grad) -> EGrad:
        """Backpropagate the cut gradient through the stashed graph of its batch."""
        stash = self.in_flight.pop(grad.seq, None)
        if stash is None:
            raise TrainingError(f"GRAD for batch {grad.seq}, which is not in flight")
        self.losses.append(grad.loss)
        grads = EdgeReplica.backward(stash, from_wire(grad.cut_grad))
        return EGrad(
            seq=grad.seq,
            edge_version=stash.version,
            grads=state_to_wire(grads, self.codecs.egrad, topk_ratio=self.codecs.topk_ratio),
        )

    def _after_resume(self) -> None:
        # Graphs of batches in flight belong to the old session: their GRADs never come.
        self.in_flight.clear()
