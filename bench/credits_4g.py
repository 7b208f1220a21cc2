"""``window = auto`` against window 4 and SyncSGD through the services (docs/FLEET.md, "Credits").

``nice -n 10 python bench/credits_4g.py [OUT] [--slowdown K]``: one edge, emulated 4G, a
Raspberry-Pi-class edge (``--slowdown``, default 3.02: the calibration of the committed
``bench/results/meta.json``), the ``imu-thin`` model, 200 batches, seed 0 — three cases of
``simultrain bench`` (the same ``run_case``: coordinator, cloud, link emulator and edge as real
processes), in one run: ``simultrain`` with the run's default window (``auto``), ``simultrain``
with window 4 and ``syncsgd``. Writes ``OUT/results.json`` (default
``bench/results/credits_4g``) and prints, per case, the steady-state step interval, the
pipeline bound the same run measured, their ratio and the staleness.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from simultrain.bench.bench import STEPS_SYSTEMS, BenchOptions, Suite, run_bench
from simultrain.bench.records import BenchRecord


@dataclass(frozen=True)
class _Options(BenchOptions):
    def plan(self) -> list[Suite]:
        shared = {"links": ("4g",), "datasets": ("imu-thin",), "seeds": (0,)}
        return [
            Suite("credits", ("simultrain", "syncsgd"), steps=STEPS_SYSTEMS, **shared),
            Suite("credits-w4", ("simultrain",), steps=STEPS_SYSTEMS, windows=(4,), **shared),
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path("bench/results/credits_4g"))
    parser.add_argument("--slowdown", type=float, default=3.02)
    args = parser.parse_args()
    options = _Options(out_dir=args.out, slowdown=args.slowdown, plots=False, command="credits_4g")
    records, _ = run_bench(options)
    runs = [r for r in records if isinstance(r, BenchRecord)]
    sync = next((r.step_interval_ms for r in runs if r.mode == "syncsgd"), None)
    for r in runs:
        window = (
            "auto" if r.window_override is None and r.mode == "simultrain" else r.window_override
        )
        versus = (
            "" if sync is None else f", {100 * (r.step_interval_ms / sync - 1):+.1f} % vs syncsgd"
        )
        print(
            f"{r.mode} window {window}: interval {r.step_interval_ms:.1f} ms, bound "
            f"{r.pipeline_bound_ms:.1f} ms ({r.bottleneck}), ÷ bound "
            f"{r.step_interval_ms / r.pipeline_bound_ms:.2f}{versus}; staleness mean "
            f"{r.mean_staleness} max {r.max_staleness}; accuracy {r.accuracy}"
        )


if __name__ == "__main__":
    main()
