"""The acceptance run: pipelined training on the real IMU data at centralized accuracy."""

from __future__ import annotations

import pytest

from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.driver import run_in_process

pytestmark = pytest.mark.slow


def test_simultrain_window_4_matches_centralized_on_the_same_samples_and_seed() -> None:
    """simultrain with window 4, α = 0.5, β = 0.9, R = 10 and the default optimizer and
    compensation (Adam, delay-beta1; docs/STALENESS.md), against centralized training of the
    same model on the same 48 000 samples in the same order. The driver is deterministic, so
    these two numbers are exactly what the closing note reports."""
    common = {"steps": 1500, "seed": 0, "dataset": "imu"}
    centralized = run_in_process(RunConfig(mode="centralized", **common))  # type: ignore[arg-type]
    pipelined = run_in_process(
        RunConfig(mode="simultrain", window=4, beta=0.9, reconcile_every=10, **common)  # type: ignore[arg-type]
    )
    print(f"centralized {centralized.accuracy:.4f}  simultrain W=4 {pipelined.accuracy:.4f}")
    assert pipelined.samples == centralized.samples == 1500 * 32
    # Window W: at most W batches in flight (PROTOCOL.md §6.3), so a gradient misses at most
    # W − 1 edge-stage updates.
    assert pipelined.max_staleness == 3
    assert abs(pipelined.accuracy - centralized.accuracy) <= 0.01
