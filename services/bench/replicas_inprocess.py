"""Cloud replicas in one process: the sync scheme without sockets, timing or processes.

``simultrain replicas [--seeds 0] [--cases NAME,...] [--jobs 2] [--resume]``

docs/REPLICAS.md's scheme, driven deterministically: R clouds assembled as the cloud service
assembles its one (``build_cloud``), the same edges as the in-process driver (``build_edge``,
every frame through the real encoder and decoder), and the
:class:`SyncLedger` arithmetic of shared/training/replica_sync.py with the all-reduce taken
as a sum in memory. A round starts when one replica has applied ``sync_every`` updates
since its last snapshot (the service's ``updated()`` kick); every replica snapshots then,
and merges ``lag`` updates later (0: at once) — the service merges when its collective
returns, and its replicas go on applying updates meanwhile. Edge ``i`` is served by replica
``i mod R``; with the IMU data's subject partition, each replica trains on its own subject
group between rounds (non-IID).

If the services lost accuracy where this does not, the loss would be a services defect;
where this loses it too, it is the scheme's arithmetic. bench/results/replicas.md reads
the results (``replicas-inprocess.{json,md}`` in ``--out``, rewritten after each case;
:class:`~simultrain.bench.records.ReplicaFile`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from simultrain.bench.harness import Experiment
from simultrain.bench.records import ReplicaFile, ReplicaMeta, ReplicaRecord
from simultrain.shared.data import load_dataset
from simultrain.shared.errors import TrainingError
from simultrain.shared.training.assembly import Shard, build_cloud, build_edge
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.driver import (
    LinkedEdge,
    cloud_handle,
    connect_edge,
    drain,
    edge_receive,
    produce_round,
)
from simultrain.shared.training.replica_sync import MERGES, Merge, SyncLedger
from simultrain.shared.training.runtime import CloudRuntime

__all__ = ["CASES", "Case", "ReplicaCase", "Replicas", "render_table", "run_replicated"]

SGD = {"optimizer_name": "sgd", "optimizer_lr": 0.05, "optimizer_momentum": 0.0}


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    replicas: int
    merge: Merge = "mean"
    sync_every: int = 20
    lag: int = 0
    sgd: bool = False


CASES = {
    c.name: c
    for c in [
        Case("1", 1),
        Case("4-sum-k20", 4, "sum", 20),
        Case("4-mean-k20", 4, "mean", 20),
        Case("4-sum-k4-lag12", 4, "sum", 4, 12),
        Case("4-mean-k4-lag12", 4, "mean", 4, 12),
        Case("sgd-1", 1, sgd=True),
        Case("sgd-4-sum-k20", 4, "sum", 20, sgd=True),
        Case("sgd-4-mean-k20", 4, "mean", 20, sgd=True),
        Case("4-sum-k4", 4, "sum", 4),
        Case("4-sum-k10-lag40", 4, "sum", 10, 40),
        Case("4-mean-k10-lag40", 4, "mean", 10, 40),
    ]
}


def run_replicated(
    config: RunConfig,
    replicas: int,
    *,
    sync_every: int = 20,
    merge: Merge = "mean",
    lag: int = 0,
) -> dict[str, Any]:
    """One run; the replicas' held-out accuracy after a last round (one model again).

    Long because a sync round's steps (start, finish, count) are closures over this run's
    replicas and edges, read beside the loop that drives them."""
    if merge not in MERGES:
        raise TrainingError(f"merge must be one of {MERGES}")
    dataset = load_dataset(config.dataset, seed=config.seed)
    spec = dataset.model_spec(config.model_id)
    assemblies = [build_cloud(config, spec) for _ in range(replicas)]
    clouds = [a.runtime for a in assemblies]
    ledgers = [SyncLedger(c.master, merge=merge) for c in clouds]
    # Edge i is served by replica i mod R; every edge holds its own shard (non-IID by subject).
    edges: dict[str, LinkedEdge] = {}
    owner: dict[str, CloudRuntime] = {}
    for i in range(config.edges):
        shard = Shard(dataset, i, config.edges)
        edge = connect_edge(
            config, assemblies[i % replicas], i, build_edge(config, spec, shard), spec
        )
        edges[edge.edge_id] = edge
        owner[edge.edge_id] = clouds[i % replicas]

    rounds = 0
    in_flight: list[Any] = []  # [total, watermark tables, updates until the merge]

    def start_round() -> None:
        nonlocal rounds
        contributions = [
            ledger.snapshot(c.master, c.sessions) for ledger, c in zip(ledgers, clouds, strict=True)
        ]
        total = torch.stack([c.packed() for c in contributions]).sum(dim=0)
        in_flight[:] = [total, [c.watermarks for c in contributions], lag]
        rounds += 1

    def finish_round() -> None:
        total, tables, _ = in_flight
        in_flight.clear()
        for ledger, cloud in zip(ledgers, clouds, strict=True):
            ledger.merge(cloud.master, total, tables, cloud.sessions)

    def updated(cloud: CloudRuntime) -> None:
        if replicas == 1:
            return
        if in_flight:
            in_flight[2] -= 1
            if in_flight[2] <= 0:
                finish_round()
            return
        ledger = ledgers[clouds.index(cloud)]
        if ledger.local_updates(cloud.master) >= sync_every:
            start_round()
            if lag == 0:
                finish_round()

    def pump() -> bool:
        moved = False
        for edge in edges.values():
            if edge.link.up:
                cloud = owner[edge.edge_id]
                for frame in edge.cloud_session.receive_data(edge.link.up.popleft()):
                    for edge_id, reply in cloud_handle(cloud, edge.edge_id, frame):
                        target = edges[edge_id]
                        target.link.send_down(target.cloud_session.send(reply))
                    updated(cloud)
                moved = True
            if edge.link.down:
                edge_receive(edge)
                moved = True
        return moved

    for _ in range(config.steps):
        produce_round(edges, pump)
    drain(edges, pump)
    if replicas > 1:
        if in_flight:
            finish_round()
        start_round()
        finish_round()
    x_test = torch.tensor(dataset.x_test)
    y_test = torch.tensor(dataset.y_test).long()
    accuracy = [c.master.evaluate(x_test, y_test)[0] for c in clouds]
    return {
        "accuracy": [round(a, 4) for a in accuracy],
        "global_version": clouds[0].master.version,
        "samples_applied": sum(c.master.samples_applied for c in clouds),
        "rounds": rounds,
        "staleness_mean": round(clouds[0].master.staleness.mean, 2),
    }


@dataclass(frozen=True, slots=True)
class ReplicaCase:
    case: str  # a name of CASES
    seed: int


@dataclass
class Replicas(Experiment[ReplicaCase, ReplicaRecord]):
    """The cases × seeds; ``replicas-inprocess.{json,md}`` in ``out_dir`` after each."""

    names: Sequence[str]
    seeds: Sequence[int]
    steps: int = 300  # batches per edge
    out_dir: Path = Path("bench/results")
    command: str = "simultrain replicas"

    failures = ()  # a run that raises is a defect: the whole run stops

    def cases(self) -> list[ReplicaCase]:
        return [ReplicaCase(name, seed) for seed in self.seeds for name in self.names]

    def record_key(self, record: ReplicaRecord) -> ReplicaCase:
        return ReplicaCase(record.case, record.seed)

    def run_one(self, case: ReplicaCase) -> ReplicaRecord:
        spec = CASES[case.case]
        torch.set_num_threads(1)
        run = RunConfig.from_mapping(
            {"edges": 4, "steps": self.steps, "seed": case.seed, **(SGD if spec.sgd else {})}
        )
        started = time.perf_counter()
        result = run_replicated(
            run, spec.replicas, sync_every=spec.sync_every, merge=spec.merge, lag=spec.lag
        )
        return ReplicaRecord(
            case=spec.name,
            seed=case.seed,
            replicas=spec.replicas,
            merge=spec.merge,
            sync_every=spec.sync_every,
            lag=spec.lag,
            sgd=spec.sgd,
            optimizer=run.optimizer.name,
            steps_per_edge=self.steps,
            accuracy=result["accuracy"],
            global_version=result["global_version"],
            samples_applied=result["samples_applied"],
            rounds=result["rounds"],
            staleness_mean=result["staleness_mean"],
            seconds=round(time.perf_counter() - started, 1),
        )

    def describe(self, case: ReplicaCase) -> str:
        return f"{case.case} s{case.seed}"

    def summary(self, record: ReplicaRecord) -> str:
        return f"accuracy {record.accuracy[0]:.3f} after {record.rounds} rounds"

    def load(self) -> list[ReplicaRecord]:
        path = self.out_dir / "replicas-inprocess.json"
        return ReplicaFile.read(path).rows if path.exists() else []

    def save(self, records: Sequence[ReplicaRecord]) -> None:
        rows = sorted(records, key=lambda r: (r.seed, list(CASES).index(r.case)))
        meta = ReplicaMeta(command=self.command, cpus=os.cpu_count())
        ReplicaFile(meta=meta, rows=rows).write(self.out_dir / "replicas-inprocess.json")
        (self.out_dir / "replicas-inprocess.md").write_text(render_table(rows))


def render_table(rows: Sequence[ReplicaRecord]) -> str:
    lines = [
        "| case | seed | replicas | merge | sync every | lag | optimizer | accuracy "
        "| rounds | mean staleness | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        merge = r.merge if r.replicas > 1 else "–"
        lines.append(
            f"| {r.case} | {r.seed} | {r.replicas} | {merge} | "
            f"{r.sync_every if r.replicas > 1 else '–'} | {r.lag} | {r.optimizer} "
            f"| {r.accuracy[0]:.3f} | {r.rounds} | {r.staleness_mean} "
            f"| {r.seconds} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # the earlier entry point: ``simultrain replicas`` is the same
    import typer

    from simultrain.bench.cli import replicas

    typer.run(replicas)
