"""How a run is put together: the one place its runtimes, master, limits and codecs are built.

Every participant of a run assembles what it trains from the run configuration here, and
only here: the cloud service and the edge agent, the in-process driver and the benchmarks
call :func:`build_cloud` and :func:`build_edge`. The configuration is resolved once, as a
server resolves its config when it loads it: the mode's schedule, the compensation's typed
composition, the role's runtimes (``ROLES``, by the schedule's `EdgeRole`), the window every
session's limits carry, the codecs, the gradient code, the data streams. What the builders
hand out holds resolved values only; nothing downstream reads the run configuration again.

Which run keys the builders read and which they do not is declared with each key
(``Key.inert``, shared/training/keys.py); a test runs every key through the builders.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import torch
from torch import nn

from simultrain.shared.data import BatchStream, Dataset
from simultrain.shared.errors import ConfigError
from simultrain.shared.models import ModelSpec, SplitModel
from simultrain.shared.protocol import CloudSession, EdgeSession, Limits
from simultrain.shared.training.compensation import parse_compensation
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.edge_copies import EdgeCopies
from simultrain.shared.training.fleet import Credits
from simultrain.shared.training.gradcoding import GradientCode
from simultrain.shared.training.master import CloudMaster
from simultrain.shared.training.mixing import CloudMixer
from simultrain.shared.training.pooled import pooled_training_set
from simultrain.shared.training.roles.coded import CodedCloudRuntime, CodedEdgeRuntime
from simultrain.shared.training.roles.fleet import FleetCloudRuntime
from simultrain.shared.training.roles.lockstep import (
    FullGradientCloudRuntime,
    FullGradientEdgeRuntime,
    LocalStepsCloudRuntime,
    LocalStepsEdgeRuntime,
    WholeModel,
)
from simultrain.shared.training.roles.raw import RawCloudRuntime, RawEdgeRuntime
from simultrain.shared.training.roles.split import SplitCloudRuntime, SplitEdgeRuntime
from simultrain.shared.training.roles.synthetic import (
    LocalSyntheticEdgeRuntime,
    SyntheticCloudRuntime,
    SyntheticEdgeRuntime,
)
from simultrain.shared.training.runtime import CloudRuntime, EdgeRuntime
from simultrain.shared.training.schedule import EdgeRole, Schedule
from simultrain.shared.training.synthetic import (
    SyntheticEdge,
    SyntheticGradientModel,
    SyntheticGradientTrainer,
)

__all__ = [
    "ROLES",
    "CloudAssembly",
    "EdgeAssembly",
    "Role",
    "Shard",
    "build_cloud",
    "build_edge",
    "build_master",
    "gradient_code",
    "history_versions",
    "resolve_device",
]


@dataclass(frozen=True, eq=False)
class Shard:
    """An edge's place in the run's data: shard ``index`` of ``count`` of ``dataset``
    (`Dataset.shard`, dealt by the run's ``partition``; one shard is the whole set)."""

    dataset: Dataset
    index: int = 0
    count: int = 1

    def data(self, run: RunConfig) -> Dataset:
        if run.pooled:  # the fleet's reference: every edge's data in one set (pooled.py)
            return pooled_training_set(self.dataset, run.edges, partition=run.partition)
        if self.count <= 1:
            return self.dataset
        return self.dataset.shard(self.index, self.count, partition=run.partition)


@dataclass(frozen=True, eq=False)
class CloudAssembly:
    """What a cloud trains with: the master, the runtime of the run's role, the limits."""

    schedule: Schedule
    master: CloudMaster
    runtime: CloudRuntime
    cut_shape: tuple[int, ...]  # what HELLO must name: the cut, or the input (raw role)
    limits: Limits
    # Fleet-wide in-flight credits (docs/FLEET.md): the grant every edge's batches share, on
    # top of each edge's window; None: the window alone.
    credits: Credits | None = None
    # How far an edge may run ahead of the fleet's slowest before the cloud service holds its
    # ACKs (docs/FLEET.md, "Pacing"); None: never. The in-process driver takes the edges in
    # turn, so its edges never drift apart and it has nothing to hold.
    pace_lead: int | None = None

    def session(self) -> CloudSession:
        """A new sans-I/O session for one edge's connection."""
        return CloudSession(limits=self.limits, egrad_needs_grad=self.schedule.egrad_needs_grad)


@dataclass(frozen=True, eq=False)
class EdgeAssembly:
    """What an edge trains with: the runtime of the run's role, its data, the limits."""

    schedule: Schedule
    runtime: EdgeRuntime
    stream: BatchStream  # the edge's own training batches
    samples: int  # training samples in the edge's shard
    cut_shape: tuple[int, ...]
    limits: Limits

    def session(self) -> EdgeSession:
        """A new sans-I/O session for one connection to the cloud."""
        return EdgeSession(limits=self.limits, egrad_needs_grad=self.schedule.egrad_needs_grad)


# --- the roles ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _CloudParts:
    """What a role's cloud runtime is built from."""

    run: RunConfig
    spec: ModelSpec
    schedule: Schedule
    master: CloudMaster
    device: torch.device
    clock: Callable[[], float]


CloudBuilder = Callable[[_CloudParts], CloudRuntime]
EdgeBuilder = Callable[[RunConfig, Schedule, nn.Module, Shard], EdgeRuntime]


@dataclass(frozen=True, slots=True)
class Role:
    """One role's cloud and edge runtimes, and what its edge computes with."""

    cloud: CloudBuilder
    edge: EdgeBuilder
    module: Callable[[SplitModel], nn.Module]  # from the model's structure
    uploads_input: bool = False  # the cut sits at the input: an ACT carries the batch itself


def _plain_cloud(kind: type[SplitCloudRuntime] | type[RawCloudRuntime]) -> CloudBuilder:
    def build(p: _CloudParts) -> CloudRuntime:
        return kind(p.master, p.schedule, p.run.codecs)

    return build


def _lockstep_cloud(
    kind: type[FullGradientCloudRuntime] | type[LocalStepsCloudRuntime],
) -> CloudBuilder:
    def build(p: _CloudParts) -> CloudRuntime:
        return kind(
            p.master,
            p.schedule,
            p.run.codecs,
            round_deadline_s=p.run.round_deadline_s,
            clock=p.clock,
        )

    return build


def _split_cloud(p: _CloudParts) -> CloudRuntime:
    """The split role's cloud; with mixed steps or per-edge copies, the cloud that schedules
    the fleet (shared/training/roles/fleet.py)."""
    run = p.run
    if run.mix_edges <= 1 and not run.edge_copies:
        return SplitCloudRuntime(p.master, p.schedule, run.codecs)
    mixer = None
    if run.mix_edges > 1:
        mixer = CloudMixer(run.mixing(), clock=p.clock, gather_edge_gradients=not run.edge_copies)
    copies = None
    if run.edge_copies:
        # Each copy keeps the versions its edge's window can still refer to.
        copies = EdgeCopies(p.master, run.optimizer, history=2 * max(p.schedule.window, 1) + 4)
    return FleetCloudRuntime(p.master, p.schedule, run.codecs, mixer=mixer, copies=copies)


def _synthetic_cloud(p: _CloudParts) -> CloudRuntime:
    run, spec = p.run, p.spec
    trainer = SyntheticGradientTrainer(
        spec.cut_shape, spec.num_classes, seed=run.seed, optimizer=run.optimizer, device=p.device
    )
    return SyntheticCloudRuntime(p.master, p.schedule, run.codecs, trainer=trainer)


def _coded_cloud(p: _CloudParts) -> CloudRuntime:
    code = gradient_code(p.run)
    assert code is not None  # the coded role is syncsgd with gradient_coding_s > 0
    return CodedCloudRuntime(p.master, p.schedule, p.run.codecs, code=code)


def _plain_edge(
    kind: type[SplitEdgeRuntime]
    | type[RawEdgeRuntime]
    | type[FullGradientEdgeRuntime]
    | type[LocalStepsEdgeRuntime],
) -> EdgeBuilder:
    def build(run: RunConfig, schedule: Schedule, module: nn.Module, _: Shard) -> EdgeRuntime:
        return kind(
            module,
            schedule,
            run.codecs,
            optimizer=run.optimizer,
            verify_checksums=_verifies(run),
        )

    return build


def _synthetic_edge(run: RunConfig, schedule: Schedule, module: nn.Module, _: Shard) -> EdgeRuntime:
    kind = LocalSyntheticEdgeRuntime if schedule.local_step else SyntheticEdgeRuntime
    return kind(
        module, schedule, run.codecs, optimizer=run.optimizer, verify_checksums=_verifies(run)
    )


def _coded_edge(run: RunConfig, schedule: Schedule, module: nn.Module, shard: Shard) -> EdgeRuntime:
    code = gradient_code(run)
    assert code is not None
    return CodedEdgeRuntime(
        module,
        schedule,
        run.codecs,
        optimizer=run.optimizer,
        verify_checksums=_verifies(run),
        code=code,
        code_row=shard.index,
        partitions=_partition_streams(run, shard.dataset, code, shard.index),
    )


def _edge_stage(structure: SplitModel) -> nn.Module:
    return structure.edge_stage


def _whole_model(structure: SplitModel) -> nn.Module:
    return WholeModel(structure.edge_stage, structure.cloud_stage)


def _stage_and_m(structure: SplitModel) -> nn.Module:
    spec = structure.spec
    return SyntheticEdge(
        structure.edge_stage, SyntheticGradientModel(spec.cut_shape, spec.num_classes)
    )


ROLES: Mapping[EdgeRole, Role] = {
    EdgeRole.SPLIT: Role(_split_cloud, _plain_edge(SplitEdgeRuntime), _edge_stage),
    EdgeRole.RAW: Role(
        _plain_cloud(RawCloudRuntime), _plain_edge(RawEdgeRuntime), _edge_stage, uploads_input=True
    ),
    EdgeRole.SYNTHETIC: Role(_synthetic_cloud, _synthetic_edge, _stage_and_m),
    EdgeRole.FULL_GRADIENT: Role(
        _lockstep_cloud(FullGradientCloudRuntime),
        _plain_edge(FullGradientEdgeRuntime),
        _whole_model,
    ),
    EdgeRole.LOCAL_STEPS: Role(
        _lockstep_cloud(LocalStepsCloudRuntime), _plain_edge(LocalStepsEdgeRuntime), _whole_model
    ),
    EdgeRole.CODED_GRADIENT: Role(_coded_cloud, _coded_edge, _whole_model),
}
"""Every role by the schedule's `EdgeRole` (shared/training/roles/ has what each does)."""


# --- the builders ---------------------------------------------------------------------------


def build_cloud(
    run: RunConfig,
    spec: ModelSpec,
    *,
    device: str | torch.device = "cpu",
    limits: Limits | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> CloudAssembly:
    """Everything a cloud of ``run`` trains ``spec`` with, on ``device``.

    ``limits`` are the sizes this cloud enforces (default: the protocol's); the window is
    the run's (PROTOCOL.md §6.3: one meaning everywhere). ``clock`` is what lockstep round
    deadlines are read on (the runtimes keep no timers).
    """
    schedule = run.schedule()
    device = torch.device(device)
    master = build_master(run, spec, schedule, device=device)
    parts = _CloudParts(run, spec, schedule, master, device, clock)
    runtime = ROLES[schedule.edge_role].cloud(parts)
    return CloudAssembly(
        schedule,
        master,
        runtime,
        _cut_shape(spec, schedule),
        replace(limits if limits is not None else Limits(), window=schedule.window),
        run.credits(),
        # Lockstep schedules (window 0) keep their edges in step: nothing to pace.
        None if run.pace_lead == "off" or schedule.window == 0 else run.pace_lead,
    )


def build_edge(run: RunConfig, spec: ModelSpec, shard: Shard) -> EdgeAssembly:
    """Everything an edge of ``run`` trains ``spec`` with, on its ``shard`` of the data.

    The edge's module is the model's structure only: its weights come in the first SNAP.
    Its batches are drawn in an order seeded by the run's seed and the shard's index, so
    each edge of a run, in process or not, trains on the same batches. An edge of a run that
    mixes split batches (``mix_batch`` split) sends its share of a batch; an edge of a
    ``pooled`` run streams all the fleet's data with the run's seed.
    """
    schedule = run.schedule()
    role = ROLES[schedule.edge_role]
    module = role.module(spec.build(run.seed))
    runtime = role.edge(run, schedule, module, shard)
    data = shard.data(run)
    stream = BatchStream(
        data.x_train,
        data.y_train,
        batch_size=run.mixing().edge_batch_size(run.batch_size, run.edges),
        seed=run.seed + (0 if run.pooled else 1000 * shard.index),
    )
    return EdgeAssembly(
        schedule,
        runtime,
        stream,
        len(data.y_train),
        _cut_shape(spec, schedule),
        Limits(window=schedule.window),
    )


def build_master(
    run: RunConfig, spec: ModelSpec, schedule: Schedule, *, device: str | torch.device = "cpu"
) -> CloudMaster:
    """The master for ``run``: model from the seed, optimizer, compensation, history depth."""
    model = spec.build(run.seed)  # drawn on the CPU: the same weights on every device
    model.edge_stage.to(device)
    model.cloud_stage.to(device)
    return CloudMaster(
        model.edge_stage,
        model.cloud_stage,
        optimizer=run.optimizer,
        compensation=parse_compensation(schedule.compensation, alpha=schedule.alpha),
        history_versions=history_versions(run, schedule),
    )


def history_versions(run: RunConfig, schedule: Schedule) -> int:
    """Master versions of edge-stage history the master keeps.

    The history must reach back to the oldest batch any edge may still have in flight: a
    window of W batches per edge (at least one; W = 0 is lockstep, PROTOCOL.md §6.3), two
    master versions per batch, every edge at once. Edges do not run at one speed, though: one
    that starts late, or a slow one, has its whole window in flight while the others apply
    dozens of updates. So the floor is generous (512 versions; the edge stages here are tens
    of kB each) and grows with windows and edges (docs/STALENESS.md, "A fleet").
    """
    return max(512, 8 * 2 * max(schedule.window, 1) * max(run.edges, 1))


def gradient_code(run: RunConfig) -> GradientCode | None:
    """The run's gradient code (Tandon et al. 2017), or None when coding is off. Every edge and the
    cloud build it from the same three numbers, so they hold the same ``B``."""
    if not run.gradient_coding_s:
        return None
    return GradientCode.cyclic(run.edges, run.gradient_coding_s, seed=run.seed)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → the first CUDA device when torch sees one, else the CPU; any other name
    (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``) as torch spells it, checked to exist here.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device {name!r}: {exc}") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {name!r}: torch {torch.__version__} sees no CUDA device (a CPU build, "
                "no driver, or no GPU given to this container)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r}: MPS is not available")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def _cut_shape(spec: ModelSpec, schedule: Schedule) -> tuple[int, ...]:
    """The per-sample shape of what an ACT carries: the cut, or the input when the edge
    uploads raw data (the cut sits at the input)."""
    if ROLES[schedule.edge_role].uploads_input:
        return tuple(spec.input_shape)
    return tuple(spec.cut_shape)


def _verifies(run: RunConfig) -> bool:
    """Whether edges check their replica's checksum (PROTOCOL.md §3.1). The driver's
    delta-loss fault injection models deltas lost silently, i.e. a client that does not
    check: with checks every loss would become a resync."""
    return run.delta_loss <= 0.0


def _partition_streams(
    run: RunConfig, dataset: Dataset, code: GradientCode, row: int
) -> dict[int, BatchStream]:
    """Gradient coding: the ``s + 1`` partitions code row ``row`` holds — shards
    ``row … row + s (mod n)`` of the run's ``n`` edges, the replicated data of an edge-node
    tier (Tang et al. 2024) — each with the stream every holder of that partition draws the same
    batches from."""
    return {
        k: BatchStream(
            shard.x_train, shard.y_train, batch_size=run.batch_size, seed=run.seed + 1000 * k
        )
        for k in code.partitions(row)
        for shard in [dataset.shard(k, code.n, partition=run.partition)]
    }
