"""What the cloud does with an ACT before its role does: the roles whose edges send ACTs."""

from __future__ import annotations

from torch import Tensor

from simultrain.shared.protocol import Act
from simultrain.shared.tensors import from_wire
from simultrain.shared.training.master import PreparedCloudStep
from simultrain.shared.training.runtime import CloudRuntime, CloudSessionState, Outgoing

__all__ = ["ActCloudRuntime"]


class ActCloudRuntime(CloudRuntime):
    """An ACT is checked whole before any of it lands, its piggybacked EGRAD included."""

    def on_act(self, edge_id: str, act: Act) -> list[Outgoing]:
        state = self.sessions[edge_id]
        labels = from_wire(act.labels).long()
        duplicate = act.seq <= state.highest_applied_seq
        # A refused frame changes nothing: an EGRAD piggybacked on an ACT that must be
        # refused is not applied either. The cloud-stage forward and backward do not read
        # the edge stage, so computing them before the EGRAD is applied changes no number.
        prepared = None if duplicate else self._prepare(act, labels)
        out: list[Outgoing] = []
        if act.egrad is not None:
            out.extend(self.on_egrad(edge_id, act.egrad))
        state.last_edge_version = act.edge_version
        if duplicate:
            # Re-sent after a reconnect and applied before (exactly-once): drop and count. The
            # edge learns what is applied from WELCOME's acked_seq, so no ACK goes back.
            state.duplicates += 1
            return out
        return [*out, *self._act(state, act, prepared, labels)]

    def _prepare(self, act: Act, labels: Tensor) -> PreparedCloudStep | None:
        """The cloud stage's forward and backward of the batch, nothing applied yet."""
        return self.master.prepare_cloud_step(from_wire(act.activations), labels)

    def _act(
        self,
        state: CloudSessionState,
        act: Act,
        prepared: PreparedCloudStep | None,
        labels: Tensor,
    ) -> list[Outgoing]:
        """The role's work on a new ACT."""
        raise NotImplementedError
