"""The raw role (centralized): the edge uploads its raw batch, the cloud trains the model.

The edge computes nothing; the cut sits at the model's input, so an ACT carries the batch
itself. The cloud takes one whole-model step per batch. The edge's replica is not kept
current (it trains nothing with it): no DELTA goes back, only the ACK.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor

from simultrain.shared.protocol import Act, Delta
from simultrain.shared.protocol.tensorcodec import Codec
from simultrain.shared.tensors import from_wire, to_wire
from simultrain.shared.training.master import PreparedCloudStep
from simultrain.shared.training.roles.act import ActCloudRuntime
from simultrain.shared.training.runtime import CloudSessionState, EdgeRuntime, Outgoing
from simultrain.shared.training.weights import EdgeReplica

__all__ = ["RawCloudRuntime", "RawEdgeRuntime"]


class RawCloudRuntime(ActCloudRuntime):
    """ACT: one whole-model step on the raw batch."""

    def _prepare(self, act: Act, labels: Tensor) -> PreparedCloudStep | None:
        return None  # nothing split: the whole model steps in `_act`

    def _act(
        self,
        state: CloudSessionState,
        act: Act,
        prepared: PreparedCloudStep | None,
        labels: Tensor,
    ) -> list[Outgoing]:
        batch = int(labels.shape[0])
        state.samples_received += batch
        self.master.full_step(from_wire(act.activations), labels)
        self._mark_applied(state, act.seq, batch)
        return self._after_update(state, act.seq)

    def _deltas_for(self, state: CloudSessionState) -> Iterator[Delta]:
        return iter(())


class RawEdgeRuntime(EdgeRuntime):
    """The batch as it is, in an ACT."""

    def _frame(self, replica: EdgeReplica, seq: int | None, x: Tensor, y: Tensor) -> Act:
        assert seq is not None
        return Act(
            seq=seq,
            edge_version=replica.version,
            activations=to_wire(x, self.codecs.act),
            labels=to_wire(y, Codec.RAW.value),
        )
