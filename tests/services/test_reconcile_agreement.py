"""The coordinator reports exactly the steps at which the cloud reconciles (docs/DESIGN.md §8.2).

Both sides run their own code: the coordinator's HTTP API (in process) says when each edge
of a four-edge fleet reconciles next; the cloud's runtime, fed the same number of applied
steps, decides when to send a SNAP. The two lists must be equal.
"""

from __future__ import annotations

import httpx
import pytest

from simultrain.shared.data import load_dataset
from simultrain.shared.protocol.frames import Snap
from simultrain.shared.training.assembly import build_cloud
from simultrain.shared.training.config import RunConfig

STEPS = 40


def _cloud_snap_steps(offset: int) -> list[int]:
    run = RunConfig(edges=4)
    runtime = build_cloud(run, load_dataset("imu").model_spec()).runtime
    state, _ = runtime.open_session("edge", reconcile_offset=offset)
    due = []
    for step in range(1, STEPS + 1):
        state.steps_applied = step  # what _mark_applied leaves after the step-th update
        if any(isinstance(frame, Snap) for _, frame in runtime._after_update(state, step)):
            due.append(step)
    return due


@pytest.mark.parametrize("shard_index", [0, 1, 2, 3])
async def test_coordinator_shows_the_steps_the_cloud_reconciles(
    coordinator_client: httpx.AsyncClient, shard_index: int
) -> None:
    cloud = await coordinator_client.post("/v1/clouds", json={"url": "http://cloud.test:1"})
    assert cloud.status_code == 201
    response = await coordinator_client.post(
        "/v1/edges", json={"shard_index": shard_index, "shard_count": 4}
    )
    assert response.status_code == 201
    edge = response.json()
    upcoming = list(edge["next_reconciliations"])
    beat = await coordinator_client.post(
        f"/v1/edges/{edge['edge_id']}/heartbeat", json={"edge_version": 0, "step": upcoming[-1]}
    )
    upcoming += beat.json()["next_reconciliations"]
    snaps = _cloud_snap_steps(edge["reconcile_offset"])
    assert upcoming[: len(snaps)] == snaps
    assert len(snaps) == STEPS // 10
