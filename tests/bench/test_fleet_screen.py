"""bench/fleet_screen.py: every method of a fleet trains the same samples, the grid runs
seed-major, and a gap to pooled is paired by seed."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _screen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fleet_screen", ROOT / "bench/fleet_screen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fleet_screen"] = module
    spec.loader.exec_module(module)
    return module


screen = _screen()


@pytest.mark.parametrize("edges", [8, 32])
def test_every_method_of_a_fleet_trains_the_same_samples(edges: int) -> None:
    for method in screen.METHODS:
        config = screen.Case("imu", edges, method, 0).config(5)
        per_batch = config.mixing().edge_batch_size(config.batch_size, config.edges)
        # pooled: one edge, steps × edges batches; a fleet: steps batches on each edge.
        assert config.steps * config.edges * per_batch == 1600 * 32, method
        assert config.partition == "groups" and config.window == 4
        if config.fleet_in_flight is not None:  # micro-batches: the same samples in flight
            assert config.fleet_in_flight * per_batch == 5 * 32
    assert screen.Case("mnist", 8, "w4", 0).config(5).partition == "label-skew"


def test_the_grid_runs_seed_by_seed_and_each_case_once() -> None:
    cases = screen.cases("full", [8, 32], ["imu"])
    keys = [c.key for c in cases]
    assert len(keys) == len(set(keys))
    first = keys.index("imu/8/pooled/1")
    assert all(c.seed == 0 or c.method in screen.CORE for c in cases[: first + 1])
    assert {c.method for c in cases if c.seed == 0} >= set(screen.CORE) | set(screen.ABLATIONS)


def test_the_gap_to_pooled_is_paired_by_seed() -> None:
    runs = {0: {"accuracy": 0.80}, 1: {"accuracy": 0.90}, 2: {"accuracy": 0.5}}
    pooled = {0: 0.81, 1: 0.90}  # seed 2 has no pooled run: left out
    gap, se, n = screen.gap_of(runs, pooled)
    assert n == 2 and gap == pytest.approx(-0.5)
    assert se == pytest.approx(math.sqrt(((-1 + 0.5) ** 2 + (0 + 0.5) ** 2) / 1) / math.sqrt(2))
