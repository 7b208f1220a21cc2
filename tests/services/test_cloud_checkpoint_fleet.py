"""A restart keeps what the fleet's scheduling adds to the cloud's state (docs/FLEET.md):
staleness in samples, and each per-edge edge-stage copy with its optimizer."""

from __future__ import annotations

from pathlib import Path

import torch
from fastapi.testclient import TestClient

from simultrain.cloud.app import create_app
from simultrain.cloud.checkpoint import latest_checkpoint, restore, save_checkpoint
from simultrain.cloud.settings import CloudSettings
from simultrain.shared.contracts import CloudStatus
from simultrain.shared.models import get_model_spec
from simultrain.shared.training.assembly import CloudAssembly, build_cloud
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.roles.fleet import FleetCloudRuntime

SPEC = get_model_spec("imu-cnn1d")


def test_staleness_in_samples_survives_a_restart(tmp_path: Path) -> None:
    """Counted in the master and in each session, kept by the checkpoint, reported by the
    cloud's status after the restart."""
    run = RunConfig(mode="simultrain", dataset="imu", window=2)
    settings = CloudSettings(checkpoint_dir=tmp_path)
    with TestClient(create_app(settings, run=run)) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        state, _ = service.runtime.open_session("edge-a")
        for behind, samples in ((1, 32), (3, 96), (0, 0)):
            service.master.staleness.record(behind, samples=samples)
            state.staleness.record(behind, samples=samples)
        service.master.version = 7  # a checkpoint is written for a version not yet saved
        save_checkpoint(tmp_path, service.master, service.runtime)
    with TestClient(create_app(settings, run=run)) as client:
        status = CloudStatus.model_validate_json(client.get("/v1/status").content)
    for summary in (status.staleness, status.edges["edge-a"].staleness):
        assert (summary.batches, summary.samples_sum, summary.samples_max) == (3, 128, 96)
        assert summary.samples_mean == round(128 / 3, 3)


def _copies_cloud() -> CloudAssembly:
    run = RunConfig(mode="simultrain", dataset="imu", window=2, edges=2, edge_copies=True)
    return build_cloud(run, SPEC)


def test_each_edge_copy_and_its_optimizer_survive_a_restart(tmp_path: Path) -> None:
    cloud = _copies_cloud()
    runtime = cloud.runtime
    assert isinstance(runtime, FleetCloudRuntime) and runtime.copies is not None
    copies = runtime.copies
    torch.manual_seed(0)
    for edge_id in ("edge-a", "edge-b"):
        runtime.open_session(edge_id)
    for step in range(3):  # each copy stepped on its own gradients, edge-a's one more
        for edge_id in ("edge-a", "edge-b")[: 1 if step == 2 else 2]:
            grads = {n: torch.randn_like(p) for n, p in cloud.master.edge_stage.named_parameters()}
            weights_at = cloud.master.version
            assert copies.apply(edge_id, grads, weights_at, samples=32).applied
    save_checkpoint(tmp_path, cloud.master, runtime)
    found = latest_checkpoint(tmp_path)
    assert found is not None

    again = _copies_cloud()
    restore(found, again.master, again.runtime)
    assert isinstance(again.runtime, FleetCloudRuntime) and again.runtime.copies is not None
    restored = again.runtime.copies
    assert list(restored.copies) == ["edge-a", "edge-b"]
    for edge_id, copy in copies.copies.items():
        back = restored.copies[edge_id]
        assert (back.steps, back.samples) == (copy.steps, copy.samples)
        for name, t in copy.tensors.items():
            assert torch.equal(back.tensors[name], t), (edge_id, name)
        before, after = copy.optimizer.state_dict(), back.optimizer.state_dict()
        assert before["state"].keys() == after["state"].keys() and before["state"]
        for index, entries in before["state"].items():
            for key, value in entries.items():
                assert torch.equal(
                    torch.as_tensor(after["state"][index][key]), torch.as_tensor(value)
                )
    # The two copies differ (edge-a stepped once more): each was kept, not one for both.
    a, b = restored.copies["edge-a"].tensors, restored.copies["edge-b"].tensors
    assert any(not torch.equal(a[n], b[n]) for n in a)


def test_copies_through_the_service_are_kept_by_its_checkpoint(tmp_path: Path) -> None:
    """Two edges stream to a cloud with ``edge_copies``: each edge's EGRADs step its own copy;
    the cloud's last checkpoint (on shutdown) holds both, and the restarted cloud has them."""
    from tests.services.test_cloud_mixing import MixEdge

    run = RunConfig(mode="simultrain", dataset="imu", window=2, edges=2, edge_copies=True)
    settings = CloudSettings(checkpoint_dir=tmp_path)
    with TestClient(create_app(settings, run=run)) as client:
        runtime = client.app.state.service.runtime  # type: ignore[attr-defined]
        with (
            client.websocket_connect("/v1/stream") as a,
            client.websocket_connect("/v1/stream") as b,
        ):
            edges = [MixEdge(a, "edge-a", run), MixEdge(b, "edge-b", run)]
            for edge in edges:
                edge.hello()
            for steps in (2, 1):  # edge-a steps its copy twice, edge-b once
                for edge in edges[:steps]:
                    edge.act()
                    edge.until_acked()
            kept = {
                e: ({n: t.clone() for n, t in c.tensors.items()}, c.steps)
                for e, c in runtime.copies.copies.items()
            }
            a.close(1000)
            b.close(1000)
    assert {e: s for e, (_, s) in kept.items()} == {"edge-a": 2, "edge-b": 1}
    with TestClient(create_app(settings, run=run)) as client:
        restored = client.app.state.service.runtime.copies  # type: ignore[attr-defined]
        assert {e: c.steps for e, c in restored.copies.items()} == {"edge-a": 2, "edge-b": 1}
        for edge_id, (tensors, _) in kept.items():
            for name, t in tensors.items():
                assert torch.equal(restored.copies[edge_id].tensors[name], t), (edge_id, name)
