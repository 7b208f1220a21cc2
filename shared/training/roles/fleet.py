"""The split role with the cloud scheduling its fleet: mixed steps and per-edge copies.

docs/FLEET.md. The edges do what the split role's edges do (shared/training/roles/split.py);
the cloud differs in two ways, each optional, chosen when the run is assembled:

- **mixed steps** (`CloudMixer`, shared/training/mixing.py): a first-time ACT waits to be
  mixed with other edges' ACTs into one cloud-stage step, each edge getting its slice of the
  cut gradient; the edge stage steps once on the members' EGRADs. With one edge in session
  the mixer is never asked, so such a run is the split role's bit for bit.
- **per-edge copies** (`EdgeCopies`, shared/training/edge_copies.py): each edge's EGRAD
  steps that edge's own copy of the edge stage, its replica follows its copy, and each
  reconciliation makes the master the copies' mean (SplitFed).

A mixed step waits at most ``mix_wait_s``; the wait runs out on the clock the cloud is built
with, read when the caller asks (`round_due_in` and `close_round_if_due`, as lockstep rounds'
deadlines are), so the runtime keeps no timers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from simultrain.shared.protocol import Act, EGrad, Snap
from simultrain.shared.protocol.tensorcodec import Codec
from simultrain.shared.tensors import state_to_wire
from simultrain.shared.training.edge_copies import EdgeCopies
from simultrain.shared.training.master import CloudMaster
from simultrain.shared.training.mixing import CloudMixer
from simultrain.shared.training.options import Codecs
from simultrain.shared.training.roles.split import SplitCloudRuntime
from simultrain.shared.training.runtime import CloudSessionState, Outgoing, checksum_of
from simultrain.shared.training.schedule import Schedule
from simultrain.shared.training.weights import blend

__all__ = ["FleetCloudRuntime"]


class FleetCloudRuntime(SplitCloudRuntime):
    """The split role's cloud with a mixer, edge copies, or both (module docstring)."""

    def __init__(
        self,
        master: CloudMaster,
        schedule: Schedule,
        codecs: Codecs,
        *,
        mixer: CloudMixer | None = None,
        copies: EdgeCopies | None = None,
    ) -> None:
        super().__init__(master, schedule, codecs)
        self.mixer = mixer
        self.copies = copies
        self._left_mixes: list[Outgoing] = []  # what an edge's leaving let step

    # --- sessions ----------------------------------------------------------------------
    def open_session(
        self, edge_id: str, *, reconcile_offset: int = 0, code_row: int | None = None
    ) -> tuple[CloudSessionState, Snap]:
        if self.copies is not None and code_row is None:
            self.copies.open(edge_id)
        return super().open_session(edge_id, reconcile_offset=reconcile_offset, code_row=code_row)

    def _fleet_changed(self) -> list[Outgoing]:
        return [*self._left_mixes, *super()._fleet_changed()]

    def _left(self, edge_id: str) -> None:
        # What waited for the edge that left steps without it (`CloudMixer.drop_edge`); the
        # frames go out with `_fleet_changed`'s.
        self._left_mixes = self.mixer.drop_edge(self, edge_id) if self.mixer is not None else []

    # --- ACT and EGRAD -----------------------------------------------------------------
    def on_act(self, edge_id: str, act: Act) -> list[Outgoing]:
        mixer = self.mixer
        state = self.sessions[edge_id]
        if (
            mixer is None
            or act.seq <= state.highest_cloud_step_seq  # a re-send: answered alone
            or not mixer.takes(len(self.connected))
        ):
            return super().on_act(edge_id, act)
        # Checked whole (`CloudMixer.accept`) before its piggybacked EGRAD lands.
        waiting = mixer.accept(edge_id, act)
        out = self.on_egrad(edge_id, act.egrad) if act.egrad is not None else []
        state.last_edge_version = act.edge_version
        return [*out, *mixer.add(self, waiting)]

    def _on_egrad(self, state: CloudSessionState, egrad: EGrad) -> list[Outgoing]:
        if self.mixer is not None and self.mixer.holds(state.edge_id, egrad.seq):
            return self.mixer.on_egrad(self, state, egrad)
        return super()._on_egrad(state, egrad)

    def _apply_edge_gradient(
        self,
        state: CloudSessionState,
        grads: Mapping[str, Tensor],
        edge_version: int,
        *,
        samples: int,
    ) -> None:
        if self.copies is None:
            super()._apply_edge_gradient(state, grads, edge_version, samples=samples)
            return
        result = self.copies.apply(state.edge_id, grads, edge_version, samples=samples)
        if result.applied:
            state.staleness.record(result.staleness, samples=result.staleness_samples)
        else:
            state.staleness.dropped += 1

    # --- the mix's wait bound ------------------------------------------------------------
    def step_waiting(self, *, force: bool = False) -> list[Outgoing]:
        """Step what waits to be mixed once the oldest has waited its bound (``force``: now)."""
        return self.mixer.step_if_due(self, force=force) if self.mixer is not None else []

    def round_due_in(self) -> float | None:
        """Seconds until the oldest ACT waiting to be mixed has waited its bound: a service
        asks, as for a lockstep round's deadline, and calls `close_round_if_due` then."""
        return self.mixer.due_in() if self.mixer is not None else None

    def close_round_if_due(self) -> list[Outgoing]:
        return self.step_waiting()

    # --- a checkpoint: each copy and its optimizer (services/cloud/checkpoint.py) ----------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        mine = super().optimizers()
        if self.copies is not None:
            mine.update(self.copies.optimizers())
        return mine

    def role_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors, meta = super().role_state()
        if self.copies is not None:
            copies_tensors, copies_meta = self.copies.state()
            tensors.update(copies_tensors)
            meta.update(copies_meta)
        return tensors, meta

    def load_role_state(self, meta: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> None:
        super().load_role_state(meta, tensors)
        if self.copies is not None:
            self.copies.load_state(meta, tensors)

    # --- what a replica holds ------------------------------------------------------------
    def _replica_weights(self, state: CloudSessionState) -> Mapping[str, Tensor]:
        if self.copies is None:
            return super()._replica_weights(state)
        return self.copies.weights(state.edge_id)

    def _reconcile(self, state: CloudSessionState) -> Snap:
        """With copies: the master becomes the copies' mean, sent as the reconciliation's
        target, and this edge's copy becomes the blend the edge computes."""
        if self.copies is None:
            return super()._reconcile(state)
        master = self.copies.average()
        state.mirror = {n: blend(state.mirror[n], master[n], self.schedule.beta) for n in master}
        self.copies.set(state.edge_id, state.mirror)
        state.mirror_version = self.master.version
        return Snap(
            master_version=self.master.version,
            tensors=state_to_wire(master, Codec.LZ4.value),
            reconcile=True,
            checksum=checksum_of(state.mirror),
        )

    def settle(self) -> None:
        """With copies, the master's edge stage becomes their mean (the fleet's model)."""
        if self.copies is not None:
            self.copies.average()
