"""The gradient-coded role (syncsgd with ``gradient_coding_s`` > 0; Tandon et al.
2017): rounds that decode without their stragglers.

Edge i of n holds the s + 1 partitions of its code row and uploads one coded gradient
``c_i = Σ_k B[i,k] g_k`` per round, the round being the master version (each of its
partitions' batch v in round v, so every holder of a partition takes the same batch). The
cloud decodes the full gradient from the first ``n − s`` uploads and takes the step an
uncoded round of n edges, one partition each, would take (PROTOCOL.md §6.6;
shared/training/gradcoding.py is the code).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from simultrain.shared.data import BatchStream
from simultrain.shared.errors import TrainingError
from simultrain.shared.protocol import Act, EGrad
from simultrain.shared.tensors import state_from_wire, state_to_wire
from simultrain.shared.training.gradcoding import GradientCode, combine
from simultrain.shared.training.master import CloudMaster
from simultrain.shared.training.options import Codecs, OptimizerConfig
from simultrain.shared.training.roles.lockstep import FullGradientEdgeRuntime, whole_model_weights
from simultrain.shared.training.runtime import CloudRuntime, CloudSessionState, Outgoing
from simultrain.shared.training.schedule import Schedule
from simultrain.shared.training.weights import EdgeReplica

__all__ = ["CodedCloudRuntime", "CodedEdgeRuntime"]


class CodedCloudRuntime(CloudRuntime):
    """Coded uploads gathered by code row; a round decodes from its first ``n − s``."""

    def __init__(
        self, master: CloudMaster, schedule: Schedule, codecs: Codecs, *, code: GradientCode
    ) -> None:
        super().__init__(master, schedule, codecs)
        self.code = code
        # The open round's coded uploads by code row: (edge, seq, gradient, samples).
        self._coded: dict[int, tuple[str, int, dict[str, Tensor], int]] = {}

    def _admit(self, edge_id: str, code_row: int | None) -> None:
        """The edge names the row of the code it computes; two connected edges cannot hold
        one row."""
        code = self.code
        assert code is not None
        if code_row is None or not 0 <= code_row < code.n:
            raise TrainingError(
                f"gradient coding ({code.identity}): the edge must name its code row "
                f"0 … {code.n - 1}, got {code_row}"
            )
        for other in self.connected - {edge_id}:
            if self.sessions[other].code_row == code_row:
                raise TrainingError(f"code row {code_row} is held by the connected edge {other}")

    def _session_weights(self) -> Mapping[str, Tensor]:
        return whole_model_weights(self.master)

    def _on_egrad(self, state: CloudSessionState, egrad: EGrad) -> list[Outgoing]:
        """A coded gradient ``c_i = Σ_k B[i,k] g_k`` of the round at ``egrad.edge_version``.

        The round is the master version: every coded gradient of it was computed at those
        weights, on the round's batch of each partition. The first ``n − s`` decode the
        full gradient; one that comes after its round decoded is dropped (its partitions are
        in the master already) and answered, so its edge moves on to the current round.
        Round v always takes batch v of each partition, so a cloud that resumes from an older
        checkpoint redoes its lost rounds on the same batches: each applied once.
        """
        tensors = state_from_wire(egrad.grads)
        code = self.code
        assert code is not None and state.code_row is not None
        version = self.master.version
        per_partition, rest = divmod(egrad.samples, code.s + 1)
        if per_partition < 1 or rest:
            raise TrainingError(
                f"a coded gradient covers s + 1 = {code.s + 1} equal batches, not "
                f"{egrad.samples} samples"
            )
        checked = self.master.check_full_gradient(tensors)
        state.samples_received += egrad.samples
        if egrad.edge_version != version:
            # Late: its round decoded without it. (Above the master's version: kept by the
            # edge across a cloud that resumed from an older checkpoint; that round is done
            # again, at the same version with the same batches, so it is not lost either.)
            self.late_uploads_dropped += 1
            state.late_dropped += 1
            # Settled, not applied: acknowledged so the edge neither waits nor re-sends it.
            state.highest_applied_seq = max(state.highest_applied_seq, egrad.seq)
            return self._after_update(state, egrad.seq)
        if state.code_row in self._coded:
            state.duplicates += 1  # this row's gradient of this round is here already
            return []
        if self._coded:
            _, _, _, samples = next(iter(self._coded.values()))
            if samples != egrad.samples:
                raise TrainingError(
                    f"coded gradients of one round cover equal batches: {egrad.samples} "
                    f"samples against {samples}"
                )
        self._coded[state.code_row] = (state.edge_id, egrad.seq, checked, egrad.samples)
        if len(self._coded) < code.n - code.s:
            return []
        return self._decode_round()

    def _decode_round(self) -> list[Outgoing]:
        """``g = Σ_i a_i c_i`` over the arrivals (``aᵀB_F = 1ᵀ``), applied as the mean
        ``g / n`` of the ``n`` partition gradients: the step an uncoded round of ``n`` edges,
        one partition each, would take. ``n`` partition batches are applied, each once."""
        code = self.code
        assert code is not None
        a = code.decoding_vector(self._coded)
        rows = sorted(a)
        mean = combine([a[r] / code.n for r in rows], [self._coded[r][2] for r in rows])
        batch = self._coded[rows[0]][3] // (code.s + 1)
        self.master.apply_full_gradient(mean, samples=code.n * batch)
        self.coded_rounds += 1
        out: list[Outgoing] = []
        for row in rows:
            edge_id, seq, _, samples = self._coded[row]
            state = self.sessions[edge_id]
            self._mark_applied(state, seq, samples)
            out.extend(self._after_update(state, seq))
        self._coded.clear()
        return out


class CodedEdgeRuntime(FullGradientEdgeRuntime):
    """One coded gradient per round from the batches of the row's partitions."""

    def __init__(
        self,
        module: nn.Module,
        schedule: Schedule,
        codecs: Codecs,
        *,
        optimizer: OptimizerConfig,
        verify_checksums: bool = True,
        code: GradientCode,
        code_row: int,
        partitions: Mapping[int, BatchStream],
    ) -> None:
        super().__init__(
            module, schedule, codecs, optimizer=optimizer, verify_checksums=verify_checksums
        )
        code.partitions(code_row)  # a row of the code, or TrainingError
        if sorted(partitions) != sorted(code.partitions(code_row)):
            raise TrainingError(f"code row {code_row} holds partitions {code.partitions(code_row)}")
        self.code = code
        self.code_row = code_row
        self.partitions = dict(partitions)  # partition → the stream its holders all draw from

    def round_partitions(self) -> tuple[int, ...]:
        """The partitions this edge computes each round (``s + 1``)."""
        assert self.code is not None and self.code_row is not None
        return self.code.partitions(self.code_row)

    def produce_next(
        self, stream: BatchStream, *, taken: Callable[[], None] | None = None
    ) -> Act | EGrad | None:
        """This round's coded gradient: the batch of each partition the edge holds, numbered
        by the master version, as every holder of it takes (the edge's own ``stream`` is not
        read: its data is its partitions')."""
        batches = {}
        for k in self.round_partitions():
            partition = self.partitions[k]
            partition.seek(max(self.version, 0))
            batches[k] = next(partition)
        if taken is not None:
            taken()
        return self.produce_coded(batches)

    def produce_coded(self, batches: Mapping[int, tuple[np.ndarray, np.ndarray]]) -> EGrad:
        """The coded gradient ``Σ_k B[i,k] g_k`` of this round.

        ``batches`` holds the round's batch of each of :meth:`round_partitions` — the batch
        every edge holding that partition takes at this master version, so the cloud's
        decode is the gradient of one well-defined set of ``n`` batches. The upload is kept
        as a frame (not as data): a lost one is a straggler, which the code tolerates.
        """
        replica = self._require_replica()
        assert self.code is not None and self.code_row is not None
        wanted = self.round_partitions()
        if sorted(batches) != sorted(wanted):
            raise TrainingError(f"a coded round needs the batches of partitions {list(wanted)}")
        seq = self._take_seq()
        partial = {}
        samples = 0
        for k in wanted:
            x = torch.from_numpy(np.ascontiguousarray(batches[k][0]))
            y = torch.from_numpy(np.ascontiguousarray(batches[k][1]))
            partial[k] = self._full_gradient(replica, seq, x, y)
            samples += int(y.shape[0])
        coded = self.code.encode(self.code_row, partial)
        self.batches_produced += 1
        self.samples_produced += samples
        upload = EGrad(
            seq=seq,
            edge_version=replica.version,
            grads=state_to_wire(coded, self.codecs.egrad, topk_ratio=self.codecs.topk_ratio),
            samples=samples,
        )
        self.unacked[seq] = upload
        return upload

    def _frame(self, replica: EdgeReplica, seq: int | None, x: Tensor, y: Tensor) -> EGrad:
        raise TrainingError("a coded edge uploads whole rounds (produce_coded), not batches")
