"""A fleet's scheduling through the real processes (docs/FLEET.md): the pooled reference and
mixed steps with kill -9 of an edge and of the cloud, every sample applied exactly once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from simultrain.demo import DemoOptions, run_demo
from simultrain.procs import ServiceProcess
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.driver import run_in_process

from .test_chaos import Fleet
from .waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]


def test_a_pooled_demo_trains_one_edge_on_the_fleets_data_for_steps_times_edges(
    tmp_path: Path,
) -> None:
    """``simultrain demo --pooled --edges 2 --steps 10``: one edge process, 20 batches of the
    union of the two shards, in the order the in-process pooled run takes them (docs/FLEET.md,
    "The yardstick")."""
    run = RunConfig(mode="centralized", pooled=True, edges=2, steps=10, window=0)
    logs = tmp_path / "logs"
    summary = run_demo(
        DemoOptions(run=run, steps=10, edges=2, eval_every_s=0.0, log_dir=logs),
        console=Console(quiet=True),
    )
    started = sorted(p.name for p in logs.iterdir() if p.name.startswith("edge"))
    assert len(started) == 1, started  # one edge, not one per shard
    assert summary.steps == 20 and summary.samples == summary.samples_received == 20 * 32
    assert summary.duplicates_dropped == 0
    # The same run in process: one edge for steps × edges batches of the pooled stream.
    # Lockstep (window 0) and one edge: the services train the same batches in the same
    # order from the same initialisation, so the model is the in-process one.
    reference = run_in_process(run)
    assert reference.samples == summary.samples
    assert summary.accuracy == pytest.approx(reference.accuracy, abs=1e-4)


MIXED = RunConfig(edges=2, mix_edges=2, window=2)
MIX_BATCH = MIXED.batch_size // 2  # split micro-batches


class MixedFleet(Fleet):
    """The chaos test's two devices (tests/integration/test_chaos.py) with ``mix_edges = 2``."""

    def start_coordinator(self) -> ServiceProcess:
        self.run = MIXED
        return super().start_coordinator()

    def wait_until_applied(self, device: int, samples: int) -> None:
        wait_until(
            lambda: self.applied_by(device) >= samples,
            timeout_s=300,
            what=f"device {device} at {samples} samples",
        )


def test_mixed_steps_stay_exactly_once_through_kill_9_of_an_edge_and_of_the_cloud(
    tmp_path: Path,
) -> None:
    from .test_chaos import STEPS

    fleet = MixedFleet(tmp_path)
    try:
        threshold = int(0.3 * STEPS * MIX_BATCH)
        fleet.wait_until_applied(0, threshold)
        fleet.kill_edge(0)  # a partner gone mid-mix: the other keeps training
        fleet.restart_edge(0)
        fleet.wait_until_applied(1, 2 * threshold)
        fleet.cloud.kill()  # gatherings and waiting ACTs are lost; the edges send them again
        fleet.cloud = fleet.start_cloud()
        reports = []
        for edge in fleet.edges:
            reports.append(json.loads(edge.wait_for_line("DONE ", timeout_s=300)))
            assert edge.popen.wait(timeout=60) == 0
        final = fleet.status()
    finally:
        fleet.stop()
    produced = sum(r["samples_sent"] for r in reports)
    print(
        f"mixed fleet: edge starts {fleet.starts}, samples produced {produced}, applied "
        f"{final['samples_applied']}, re-sent {sum(r['resent'] for r in reports)}, "
        f"staleness {final['staleness']}"
    )
    assert produced == 2 * STEPS * MIX_BATCH
    assert final["samples_applied"] == produced  # none lost, none applied twice
    for edge_id, session in final["edges"].items():
        assert session["samples_applied"] == STEPS * MIX_BATCH, edge_id
        assert session["highest_applied_seq"] == STEPS - 1, edge_id
