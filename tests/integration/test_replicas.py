"""Cloud replicas as real processes: a gloo group on 127.0.0.1, one replica killed mid-run.

docs/REPLICAS.md. Two cloud replicas (three behind the bench marker: ``pytest -m bench
tests/integration/test_replicas.py``) rendezvous as torchrun does (MASTER_ADDR, MASTER_PORT,
RANK, WORLD_SIZE); the coordinator gives each edge its own replica. The last replica is
killed with SIGKILL while its edge trains: the coordinator marks it down and moves the edge,
the survivors form the next generation of the group, and every edge ends with each of its
samples applied exactly once — counted through the survivors' ``/v1/status``, where the
edge's session on its last replica carries the batches the sync rounds brought over.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from simultrain.demo import _coordinator_env
from simultrain.procs import ServiceGroup, ServiceProcess
from simultrain.shared.training.config import RunConfig

from .waiting import free_port, status, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS = 100
BATCH = 32


class ReplicaCluster:
    def __init__(
        self,
        tmp: Path,
        run: RunConfig,
        replicas: int,
        *,
        steps: int = STEPS,
        failover_s: float | None = 1.5,
        sync_every: int = 20,
        sync_interval_s: float = 0.3,
        merge: str = "mean",
    ) -> None:
        """``failover_s``: the coordinator's heartbeat timeout, short so that a killed
        replica's edge moves quickly (None: the default, for runs that kill nothing)."""
        self.steps = steps
        self.group = ServiceGroup(tmp / "logs")
        env = _coordinator_env(run, tmp / "coordinator.db")
        if failover_s is not None:
            env["SIMULTRAIN_COORDINATOR_HEARTBEAT_INTERVAL_S"] = str(failover_s / 5)
            env["SIMULTRAIN_COORDINATOR_HEARTBEAT_TIMEOUT_S"] = str(failover_s)
        coordinator = self.group.start("coordinator", "simultrain.coordinator", env)
        self.coordinator_url = coordinator.wait_listening()
        store_port = free_port()
        self.clouds: list[ServiceProcess] = []
        for rank in range(replicas):
            self.clouds.append(
                self.group.start(
                    f"cloud-{rank}",
                    "simultrain.cloud",
                    {
                        "SIMULTRAIN_CLOUD_PORT": "0",
                        "SIMULTRAIN_CLOUD_COORDINATOR_URL": self.coordinator_url,
                        "SIMULTRAIN_CLOUD_HEARTBEAT_INTERVAL_S": "0.3",
                        "SIMULTRAIN_CLOUD_REPLICA_SYNC_EVERY": str(sync_every),
                        "SIMULTRAIN_CLOUD_REPLICA_SYNC_INTERVAL_S": str(sync_interval_s),
                        "SIMULTRAIN_CLOUD_REPLICA_MERGE": merge,
                        "SIMULTRAIN_CLOUD_REPLICA_TIMEOUT_S": "10",
                        "SIMULTRAIN_CLOUD_REPLICA_JOIN_WINDOW_S": "1.0",
                        "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(store_port),
                        "RANK": str(rank),
                        "WORLD_SIZE": str(replicas),
                    },
                )
            )
        self.urls = [c.wait_listening(timeout_s=120) for c in self.clouds]
        wait_until(
            lambda: replicas == 1 or all(self.formed(url, replicas) for url in self.urls),
            timeout_s=120,
            what="the replica group",
        )
        wait_until(
            lambda: (
                len(httpx.get(f"{self.coordinator_url}/v1/clouds", timeout=10).json()) == replicas
            ),
            timeout_s=60,
            what="every replica registered",
        )

    @staticmethod
    def formed(url: str, size: int) -> bool:
        replica = status(url)["replica"]
        return bool(replica["size"] == size)

    def start_edge(self, index: int, shards: int) -> ServiceProcess:
        return self.group.start(
            f"edge-{index}",
            "simultrain.edge",
            {
                "SIMULTRAIN_EDGE_COORDINATOR_URL": self.coordinator_url,
                "SIMULTRAIN_EDGE_STEPS": str(self.steps),
                "SIMULTRAIN_EDGE_SHARD_INDEX": str(index),
                "SIMULTRAIN_EDGE_SHARD_COUNT": str(shards),
                "SIMULTRAIN_EDGE_RECONNECT_MAX_S": "0.5",
                "SIMULTRAIN_EDGE_HEARTBEAT_INTERVAL_S": "0.3",
            },
        )


@pytest.mark.parametrize(
    "replicas",
    [2, pytest.param(3, marks=pytest.mark.bench, id="3-bench")],
)
def test_a_killed_replica_moves_its_edges_and_loses_no_sample(
    tmp_path: Path, replicas: int
) -> None:
    run = RunConfig(mode="simultrain", edges=replicas)
    cluster = ReplicaCluster(tmp_path, run, replicas)
    try:
        edges = [cluster.start_edge(i, replicas) for i in range(replicas)]
        victim = cluster.urls[-1]
        # Its edge has trained a while and some of its batches went through sync rounds.
        wait_until(
            lambda: (
                status(victim)["samples_applied"] >= STEPS * BATCH // 3
                and status(victim)["replica"]["rounds"] >= 2
            ),
            timeout_s=240,
            what="progress on the replica to kill",
        )
        moved = set(status(victim)["edges"])
        cluster.clouds[-1].kill()
        reports = [json.loads(e.wait_for_line("DONE ", timeout_s=300)) for e in edges]
        for edge in edges:
            assert edge.popen.wait(timeout=60) == 0
        survivors = cluster.urls[:-1]
        # Once the edges are done the survivors agree: same rounds, same global version.
        wait_until(
            lambda: len({status(u)["master_version"] for u in survivors}) == 1,
            timeout_s=30,
            what="the survivors to agree on the global version",
        )
        finals = [status(u) for u in survivors]
        assert all(f["replica"]["size"] == replicas - 1 for f in finals)
        assert all(f["replica"]["generation"] >= 1 for f in finals)
        for report in reports:
            sessions = [
                f["edges"][report["edge_id"]] for f in finals if report["edge_id"] in f["edges"]
            ]
            last = max(sessions, key=lambda s: s["highest_applied_seq"])
            sent = report["samples_sent"]
            assert sent == STEPS * BATCH
            assert last["highest_applied_seq"] == STEPS - 1
            assert last["samples_applied"] == sent  # none lost, none applied twice
            committed = finals[0]["replica"]["committed_edges"][report["edge_id"]]
            assert committed == {"applied_seq": STEPS - 1, "samples": sent}
        assert moved and all(m in {r["edge_id"] for r in reports} for m in moved)
        moved_report = next(r for r in reports if r["edge_id"] in moved)
        assert moved_report["reconnects"] >= 1
        accuracy = [httpx.get(f"{u}/v1/eval", timeout=60).json()["accuracy"] for u in survivors]
        # One model: the survivors evaluate the same weights, up to float32 rounding.
        assert max(accuracy) - min(accuracy) <= 0.01
        assert min(accuracy) > 0.4
    finally:
        cluster.group.stop_all()


# --- the study: accuracy and aggregate step rate at 1, 2 and 4 replicas -------------------

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


@pytest.mark.bench
@pytest.mark.timeout(7200)
def test_replica_scaling_study(tmp_path: Path) -> None:
    """The same 4 edges and samples against 1, 2 and 4 cloud replicas; writes
    bench/results/replicas.{json,md}. ``STUDY_STEPS`` (default 300) and ``STUDY_SEEDS``
    (default "0") size it, ``STUDY_REPLICAS`` (default "1,2,4") and ``STUDY_SYNC_EVERY`` /
    ``STUDY_SYNC_INTERVAL_S`` (20, 0.3) and ``STUDY_MERGE`` (mean; sum is the scheme before
    the mean) vary it; the command is in docs/REPLICAS.md."""
    steps = int(os.environ.get("STUDY_STEPS", "300"))
    seeds = [int(s) for s in os.environ.get("STUDY_SEEDS", "0").split(",")]
    sync_every = int(os.environ.get("STUDY_SYNC_EVERY", "20"))
    sync_interval_s = float(os.environ.get("STUDY_SYNC_INTERVAL_S", "0.3"))
    merge = os.environ.get("STUDY_MERGE", "mean")
    optimizer = {  # STUDY_OPTIMIZER=sgd: SGD lr 0.05, no momentum (the pilot's stable row)
        "sgd": {"optimizer_name": "sgd", "optimizer_lr": 0.05, "optimizer_momentum": 0.0},
        "adam": {},
    }[os.environ.get("STUDY_OPTIMIZER", "adam")]
    edges = 4
    rows: list[dict[str, Any]] = []
    meta = {
        "cpus": os.cpu_count(),
        "command": f"STUDY_STEPS={steps} STUDY_SEEDS={','.join(map(str, seeds))} "
        f"STUDY_SYNC_EVERY={sync_every} STUDY_SYNC_INTERVAL_S={sync_interval_s} "
        f"STUDY_MERGE={merge} .venv/bin/python -m pytest -m bench "
        "tests/integration/test_replicas.py -k study -s -p no:cacheprovider",
    }
    for seed in seeds:
        for replicas in [int(r) for r in os.environ.get("STUDY_REPLICAS", "1,2,4").split(",")]:
            run = RunConfig.from_mapping(
                {"mode": "simultrain", "edges": edges, "seed": seed, **optimizer}
            )
            cluster = ReplicaCluster(
                tmp_path / f"r{replicas}s{seed}",
                run,
                replicas,
                steps=steps,
                failover_s=None,
                sync_every=sync_every,
                sync_interval_s=sync_interval_s,
                merge=merge,
            )
            try:
                started = time.monotonic()
                procs = [cluster.start_edge(i, edges) for i in range(edges)]
                reports = [json.loads(p.wait_for_line("DONE ", timeout_s=1800)) for p in procs]
                elapsed = time.monotonic() - started
                urls = cluster.urls
                if replicas > 1:  # one more round after the last update: one model again
                    wait_until(
                        lambda urls=urls: len({status(u)["master_version"] for u in urls}) == 1,
                        timeout_s=60,
                        what="the replicas to agree",
                    )
                finals = [status(u) for u in cluster.urls]
                evals = [httpx.get(f"{u}/v1/eval", timeout=120).json() for u in cluster.urls]
            finally:
                cluster.group.stop_all()
            applied = sum(
                max(
                    (
                        f["edges"][r["edge_id"]]["samples_applied"]
                        for f in finals
                        if r["edge_id"] in f["edges"]
                    ),
                    default=0,
                )
                for r in reports
            )
            row = {
                "replicas": replicas,
                "seed": seed,
                "edges": edges,
                "steps_per_edge": steps,
                "samples_sent": sum(r["samples_sent"] for r in reports),
                "samples_applied": applied,
                "accuracy": [round(e["accuracy"], 4) for e in evals],
                "global_version": finals[0]["master_version"],
                "staleness_mean": [f["staleness"]["mean"] for f in finals],
                "rounds": finals[0]["replica"]["rounds"] if replicas > 1 else 0,
                "sync_every": sync_every,
                "sync_interval_s": sync_interval_s,
                "merge": merge,
                "optimizer": run.optimizer.name,
                "seconds": round(elapsed, 2),
                "aggregate_steps_per_s": round(edges * steps / elapsed, 2),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
            _write_study(rows, meta)
    for r in rows:
        assert r["samples_applied"] == r["samples_sent"]


def _write_study(rows: list[dict[str, Any]], meta: dict[str, object]) -> None:
    """replicas.{json,md}, rewritten after every configuration: a study cut short keeps the
    rows it measured."""
    out = os.environ.get("STUDY_OUT")
    target = Path(out) if out else RESULTS
    target.mkdir(parents=True, exist_ok=True)
    (target / "replicas.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        "| replicas | seed | accuracy (each replica) | samples sent / applied | global version "
        "| mean staleness | rounds | wall s | aggregate steps/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['replicas']} | {r['seed']} | {', '.join(f'{a:.3f}' for a in r['accuracy'])} "
            f"| {r['samples_sent']} / {r['samples_applied']} | {r['global_version']} "
            f"| {', '.join(str(m) for m in r['staleness_mean'])} | {r['rounds']} "
            f"| {r['seconds']} | {r['aggregate_steps_per_s']} |"
        )
    (target / "replicas.md").write_text("\n".join(lines) + "\n")
