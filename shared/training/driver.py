"""A whole training run in one process, every frame through the real encoder and decoder.

The fast path for tests and the basis of the simulation mode. Edges and the cloud are built by
the assembly the services build theirs with (shared/training/assembly.py): the same runtimes,
master, limits and codecs; between them sits an in-memory link that carries *bytes*: each
frame is encoded by the sender's protocol session and decoded and validated by the
receiver's, exactly as over a WebSocket.

Timing is a deterministic event order, not a clock: each edge produces its next batch as soon
as its window allows, and otherwise the cloud and the edges take turns handling one message
each. With window ``W`` (max(W, 1) batches in flight, from ACT to ACK) a batch's gradient
therefore misses exactly the edge updates of the ``W − 1`` batches before it, and with
``W = 0`` or ``W = 1`` the run is plain sequential split training (docs/DESIGN.md §6.2).
"""

from __future__ import annotations

import functools
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from simultrain.shared.data import Dataset, load_dataset
from simultrain.shared.errors import TrainingError
from simultrain.shared.models import ModelSpec
from simultrain.shared.protocol import (
    Ack,
    Act,
    CloudSession,
    Delta,
    EdgeSession,
    EGrad,
    Frame,
    Grad,
    Hello,
    Snap,
    Welcome,
)
from simultrain.shared.protocol.tensorcodec import Codec
from simultrain.shared.tensors import as_received, state_from_wire, state_to_wire
from simultrain.shared.training.assembly import (
    CloudAssembly,
    EdgeAssembly,
    Shard,
    build_cloud,
    build_edge,
)
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.fleet import Credits
from simultrain.shared.training.master import CloudMaster
from simultrain.shared.training.runtime import CloudRuntime, EdgeRuntime, Outgoing

__all__ = ["RunConfig", "RunResult", "run_in_process"]


@dataclass
class RunResult:
    config: RunConfig
    accuracy: float
    test_loss: float
    samples: int
    steps: int
    seconds: float
    bytes_up: int
    bytes_down: int
    max_staleness: int
    staleness: dict[str, Any]
    train_loss: float
    curve: list[tuple[int, float]] = field(default_factory=list)  # (samples, accuracy)
    master_version: int = 0
    loss_curve: list[tuple[int, float]] = field(default_factory=list)  # (samples, test loss)
    deltas_lost: int = 0  # RunConfig.delta_loss fault injection
    # Staleness in samples (mean, max) beside ``staleness`` in updates (docs/FLEET.md).
    staleness_samples: dict[str, float] = field(default_factory=dict)
    # The fleet's scheduling (docs/FLEET.md): batches per edge, mixed steps, copy averages.
    fleet: dict[str, Any] = field(default_factory=dict)
    master: CloudMaster | None = field(default=None, repr=False)
    edges: dict[str, EdgeRuntime] = field(default_factory=dict, repr=False)

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("master", "config", "edges")}
        out["mode"] = self.config.mode
        out["dataset"] = self.config.dataset
        return out


class _Link:
    """Two byte queues and their counters: what a WebSocket would carry."""

    def __init__(self) -> None:
        self.up: deque[bytes] = deque()
        self.down: deque[bytes] = deque()
        self.bytes_up = 0
        self.bytes_down = 0

    def send_up(self, data: bytes) -> None:
        self.up.append(data)
        self.bytes_up += len(data)

    def send_down(self, data: bytes) -> None:
        self.down.append(data)
        self.bytes_down += len(data)


@dataclass
class LinkedEdge:
    """An edge in process: its assembly, both ends of its session and the link between."""

    edge_id: str
    assembly: EdgeAssembly
    session: EdgeSession
    cloud_session: CloudSession
    link: _Link
    delta_loss: float = 0.0
    rng: random.Random = field(default_factory=random.Random)
    deltas_lost: int = 0

    @property
    def runtime(self) -> EdgeRuntime:
        return self.assembly.runtime


def run_in_process(
    config: RunConfig,
    *,
    progress: Callable[[int, RunResult | None], None] | None = None,
) -> RunResult:
    """Train ``config`` in this process: its cloud and edges assembled as the services
    assemble theirs (shared/training/assembly.py), every frame through the real codec."""
    started = time.perf_counter()
    dataset = load_dataset(config.dataset, seed=config.seed)
    spec = dataset.model_spec(config.model_id)
    # The driver's time counts messages (`MessageClock`): what a mixed step's wait reads.
    clock = MessageClock()
    cloud = build_cloud(config, spec, clock=clock)
    edges = {
        edge.edge_id: edge
        for edge in (
            connect_edge(config, cloud, shard.index, build_edge(config, spec, shard), spec)
            for shard in shards(config, dataset)
        )
    }
    x_test = torch.tensor(dataset.x_test)
    y_test = torch.tensor(dataset.y_test).long()
    master = cloud.master
    curve: list[tuple[int, float]] = []
    loss_curve: list[tuple[int, float]] = []
    step_once = functools.partial(pump, edges, cloud.runtime, clock=clock)
    unblock = functools.partial(release, edges, cloud.runtime)
    steps = config.steps * (config.edges if config.pooled else 1)  # pooled: the fleet's total
    for step in range(steps):
        produce_round(edges, step_once, credits=cloud.credits, unblock=unblock, cloud=cloud.runtime)
        if config.eval_every and (step + 1) % config.eval_every == 0:
            cloud.runtime.settle()
            acc, loss = master.evaluate(x_test, y_test)
            curve.append((master.samples_applied, acc))
            loss_curve.append((master.samples_applied, loss))
        if progress is not None:
            progress(step + 1, None)
    drain(edges, step_once, unblock=unblock)
    master.flush_edge_step()  # gradients gathered and not yet stepped (``fleet-batch``) step
    cloud.runtime.settle()  # per-edge copies: the fleet's model is their mean
    accuracy, test_loss = master.evaluate(x_test, y_test)
    losses = [loss for e in edges.values() for loss in e.runtime.losses[-50:]]
    return RunResult(
        config=config,
        accuracy=accuracy,
        test_loss=test_loss,
        samples=master.samples_applied,
        steps=steps,
        seconds=time.perf_counter() - started,
        bytes_up=sum(e.link.bytes_up for e in edges.values()),
        bytes_down=sum(e.link.bytes_down for e in edges.values()),
        max_staleness=master.staleness.max,
        staleness=master.staleness.summary(),
        train_loss=float(np.mean(losses)) if losses else float("nan"),
        curve=curve,
        master_version=master.version,
        loss_curve=loss_curve,
        deltas_lost=sum(e.deltas_lost for e in edges.values()),
        staleness_samples=master.staleness.in_samples(),
        fleet=_fleet_summary(cloud, edges, steps),
        master=master,
        edges={edge_id: e.runtime for edge_id, e in edges.items()},
    )


def shards(config: RunConfig, dataset: Dataset) -> list[Shard]:
    """Edge ``i`` of the run's ``edges`` trains on shard ``i`` (one edge: all the data). A
    ``pooled`` run is one edge holding every edge's data (shared/training/pooled.py)."""
    if config.pooled:
        return [Shard(dataset, 0, 1)]
    return [Shard(dataset, i, config.edges) for i in range(config.edges)]


class MessageClock:
    """The driver's time: one millisecond per message handled, a deterministic stand-in for
    the clock the services read (a mixed step's wait bound is read against it)."""

    def __init__(self) -> None:
        self.messages = 0

    def __call__(self) -> float:
        return self.messages * 1e-3


def _fleet_summary(
    cloud: CloudAssembly, edges: Mapping[str, LinkedEdge], steps: int
) -> dict[str, Any]:
    runtime = cloud.runtime
    out: dict[str, Any] = {"edges": len(edges), "steps_per_edge": steps}
    mixer = getattr(runtime, "mixer", None)
    if mixer is not None:
        out["mixing"] = mixer.summary()
    copies = getattr(runtime, "copies", None)
    if copies is not None:
        out["copy_averages"] = copies.averages
    if cloud.credits is not None:
        out["credits"] = cloud.credits.total
    return out


def connect_edge(
    config: RunConfig, cloud: CloudAssembly, index: int, assembly: EdgeAssembly, spec: ModelSpec
) -> LinkedEdge:
    """Open edge ``index``'s session with the cloud: HELLO through the codec, then WELCOME
    and the first SNAP over the link, received by the edge."""
    edge_id = f"edge-{index}"
    edge = LinkedEdge(
        edge_id,
        assembly,
        assembly.session(),
        cloud.session(),
        _Link(),
        delta_loss=config.delta_loss,
        rng=random.Random(config.seed * 7919 + index),
    )
    schedule = cloud.schedule
    hello = Hello(
        edge_id=edge_id,
        model_id=spec.model_id,
        cut_shape=assembly.cut_shape,
        config={"mode": schedule.mode, "window": schedule.window},
    )
    for frame in edge.cloud_session.receive_data(edge.session.send(hello)):
        assert isinstance(frame, Hello)
    _, snap = cloud.runtime.open_session(
        edge_id,
        reconcile_offset=schedule.reconcile_offset(index, config.edges),
        code_row=assembly.runtime.code_row,
    )
    welcome = Welcome(
        session_id=edge_id,
        master_version=cloud.master.version,
        cut_shape=assembly.cut_shape,
        window=cloud.limits.window,
    )
    for frame in (welcome, snap):
        edge.link.send_down(edge.cloud_session.send(frame))
    while edge.link.down:
        edge_receive(edge)
    return edge


def produce_round(
    edges: Mapping[str, LinkedEdge],
    step_once: Callable[[], bool],
    *,
    credits: Credits | None = None,
    unblock: Callable[[], bool] | None = None,
    cloud: CloudRuntime | None = None,
) -> None:
    """Each edge produces its next batch as soon as its window allows; until then the
    cloud and the edges take turns handling one message each (``step_once``: `pump`), and
    when nothing moves, what waits for something that cannot come goes (``unblock``:
    `release`). With fleet-wide ``credits`` an edge also waits for the fleet's room, and the
    grant brings its replica to the master before it computes (`CloudRuntime.grant`)."""
    for edge in edges.values():
        while not edge.runtime.can_produce() or (
            credits is not None and credits.room(_in_flight(edge), _fleet_in_flight(edges)) < 1
        ):
            if not step_once() and (unblock is None or not unblock()):
                raise TrainingError("pipeline stalled: window full and nothing in flight")
        if credits is not None and cloud is not None:
            for _, delta in cloud.grant(edge.edge_id):
                edge.link.send_down(edge.cloud_session.send(delta))
            while edge.link.down:
                edge_receive(edge)
                if edge.runtime.needs_resync(now=0.0):
                    edge.link.send_down(edge.cloud_session.send(cloud.resync(edge.edge_id)))
        upload = edge.runtime.produce_next(edge.assembly.stream)
        while edge.runtime.leading:  # synthetic role: a batch's EGRAD precedes its ACT
            edge.link.send_up(edge.session.send(edge.runtime.leading.popleft()))
        if upload is not None:
            edge.link.send_up(edge.session.send(upload))


def drain(
    edges: Mapping[str, LinkedEdge],
    step_once: Callable[[], bool],
    *,
    unblock: Callable[[], bool] | None = None,
) -> None:
    """Every batch answered, every gradient applied. No ACT will come to carry a
    piggybacked EGRAD any more, so each goes alone."""
    while True:
        for edge in edges.values():
            while edge.runtime.pending_egrads:
                edge.link.send_up(edge.session.send(edge.runtime.pending_egrads.popleft()))
        if not step_once() and (unblock is None or not unblock()):
            break


def release(edges: Mapping[str, LinkedEdge], cloud: CloudRuntime) -> bool:
    """Nothing moved: what waits for something that will not come goes now. An EGRAD kept
    to ride on an ACT its edge cannot send yet (credits hold it) goes alone; then work the
    cloud holds for a bounded wait (a mixed step waiting for more edges) goes with what it
    has: nothing else can arrive. True if anything was sent."""
    moved = False
    for edge in edges.values():
        while edge.runtime.pending_egrads:
            edge.link.send_up(edge.session.send(edge.runtime.pending_egrads.popleft()))
            moved = True
    if not moved:
        for edge_id, reply in cloud.step_waiting(force=True):
            target = edges[edge_id]
            target.link.send_down(target.cloud_session.send(reply))
            moved = True
    return moved


def _in_flight(edge: LinkedEdge) -> int:
    """The edge's batches in flight, ACT to ACK (PROTOCOL.md §6.3)."""
    return len(edge.runtime.unanswered)


def _fleet_in_flight(edges: Mapping[str, LinkedEdge]) -> int:
    return sum(_in_flight(e) for e in edges.values())


def pump(
    edges: Mapping[str, LinkedEdge], cloud: CloudRuntime, *, clock: MessageClock | None = None
) -> bool:
    """Every edge's link moves one message each way: the cloud handles one, the edge one;
    then held work whose wait ran out (a mixed step) goes. ``clock`` counts the messages."""
    moved = False
    for edge in edges.values():
        if edge.link.up:
            if clock is not None:
                clock.messages += 1
            for frame in edge.cloud_session.receive_data(edge.link.up.popleft()):
                for edge_id, reply in cloud_handle(cloud, edge.edge_id, frame):
                    target = edges[edge_id]
                    target.link.send_down(target.cloud_session.send(reply))
            moved = True
        if edge.link.down:
            if clock is not None:
                clock.messages += 1
            edge_receive(edge)
            if edge.runtime.needs_resync(now=0.0):
                # PROTOCOL.md §3.1: a replica that failed its checksum is replaced by the
                # master; in-process the cloud sends the SNAP at once.
                snap = cloud.resync(edge.edge_id)
                edge.link.send_down(edge.cloud_session.send(snap))
            moved = True
    for edge_id, reply in cloud.step_waiting():
        target = edges[edge_id]
        target.link.send_down(target.cloud_session.send(reply))
        moved = True
    return moved


def cloud_handle(cloud: CloudRuntime, edge_id: str, frame: Frame) -> list[Outgoing]:
    if isinstance(frame, Act):
        return cloud.on_act(edge_id, frame)
    if isinstance(frame, EGrad):
        return cloud.on_egrad(edge_id, frame)
    raise TrainingError(f"the cloud does not expect {type(frame).__name__} frames")


def edge_receive(edge: LinkedEdge) -> None:
    for frame in edge.session.receive_data(edge.link.down.popleft()):
        runtime = edge.runtime
        if isinstance(frame, Snap):
            runtime.on_snap(frame)
        elif isinstance(frame, Delta):
            runtime.on_delta(_maybe_lose(edge, frame))
        elif isinstance(frame, Ack):
            runtime.on_ack(frame)
        elif isinstance(frame, Grad):
            egrad = runtime.on_grad(frame)
            # Piggyback on the next ACT when the window lets one go out now; otherwise send
            # it alone (docs/DESIGN.md §3.3): waiting for an ACT the window forbids would deadlock.
            if runtime.schedule.window > 0 and runtime.can_produce():
                runtime.pending_egrads.append(egrad)
            else:
                # EGRADs go in sequence order (PROTOCOL.md §6.3): those still waiting for an
                # ACT go first (credits can hold an edge whose window has room).
                while runtime.pending_egrads:
                    edge.link.send_up(edge.session.send(runtime.pending_egrads.popleft()))
                edge.link.send_up(edge.session.send(egrad))
        elif isinstance(frame, Welcome):
            pass
        else:
            raise TrainingError(f"the edge does not expect {type(frame).__name__} frames")


def _maybe_lose(edge: LinkedEdge, delta: Delta) -> Delta:
    """Fault injection (``RunConfig.delta_loss``): a lost additive delta becomes an empty one.

    The version chain stays whole, so no resync is triggered, but the weights it carried never
    reach the replica: the drift that only reconciliation repairs (docs/DESIGN.md §4.5, the R = ∞
    ablation). XOR deltas are never lost this way: one missing XOR would corrupt every later
    one, and a real gap triggers a resync instead.
    """
    if edge.delta_loss <= 0.0 or delta.kind != "add" or edge.rng.random() >= edge.delta_loss:
        return delta
    edge.deltas_lost += 1
    zeros = {n: torch.zeros_like(t) for n, t in state_from_wire(delta.tensors).items()}
    return replace(delta, tensors=as_received(state_to_wire(zeros, Codec.RAW.value)))
