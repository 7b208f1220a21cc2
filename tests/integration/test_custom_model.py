"""The bring-your-own-model example of docs/CONFIGURATION.md and the synthetic-gradient mode through
real processes, in one run (each start of the three services costs seconds): coordinator, cloud and
edge import ``examples.tiny_mobilenet:build`` themselves, the cloud accepts the edge's architecture
fingerprint, and the edge trains on an npz file from M's synthetic gradients, stepping its own stage
at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simultrain.shared.training.config import RunConfig

from .test_topology import done_report, start_topology

pytestmark = pytest.mark.integration

EXAMPLE = "examples.tiny_mobilenet:build"


def test_the_example_model_trains_in_synthetic_mode_through_the_services(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    y = np.arange(96) % 3
    x = rng.normal(0.0, 1.0, (96, 1, 28, 28)).astype(np.float32) + y[:, None, None, None]
    np.savez(tmp_path / "images.npz", X=x, y=y)
    run = RunConfig(mode="synthetic", dataset=f"npz:{tmp_path / 'images.npz'}", model_id=EXAMPLE)
    for topology in start_topology(tmp_path, run):
        report = done_report(topology.edge(0, 1, steps=8), timeout_s=120)
        status = topology.status()
        assert status["model_id"] == EXAMPLE
        session = status["edges"][report["edge_id"]]
        assert session["samples_applied"] == report["samples_sent"] == 8 * 32
        # Both stages stepped once per batch, each batch applied exactly once.
        assert status["master_version"] == 2 * 8
        assert session["duplicates_dropped"] == 0
        assert status["staleness"]["batches"] == 8
        # The edge stepped its own stage at once from every synthetic gradient (docs/SYNTHETIC.md),
        # and its replica still matched the master's checksum all along.
        assert report["local_steps"] == 8
        assert report["checksum_failures"] == 0 and report["resyncs"] == 0
