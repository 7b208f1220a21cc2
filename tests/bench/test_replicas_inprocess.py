"""The in-process replica reproduction (simultrain.bench.replicas_inprocess) at toy scale:
the harness that located the summed merge's loss keeps the scheme's invariants."""

from __future__ import annotations

import pytest

from simultrain.bench.replicas_inprocess import run_replicated
from simultrain.shared.training.config import RunConfig


@pytest.mark.parametrize("merge", ["mean", "sum"])
def test_replicated_run_applies_every_batch_once_and_ends_as_one_model(merge: str) -> None:
    run = RunConfig(edges=4, steps=6, seed=0)
    result = run_replicated(run, 2, sync_every=2, merge=merge, lag=3)  # type: ignore[arg-type]
    assert result["samples_applied"] == 4 * 6 * run.batch_size  # none lost, none twice
    assert result["global_version"] == 2 * 4 * 6  # a cloud- and an edge-stage update each
    assert result["rounds"] >= 2
    assert len(set(result["accuracy"])) == 1  # the last round left one model
