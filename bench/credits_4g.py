"""``window = auto`` against fixed windows and SyncSGD, one edge on 4G (docs/FLEET.md, "Credits").

``nice -n 10 python bench/credits_4g.py [OUT] [--slowdown K] [--steps N] [--seeds S]
[--windows W,…]``: one edge, emulated 4G, a Raspberry-Pi-class edge (``--slowdown``, default
3.02: the calibration of the committed ``bench/results/meta.json``), the ``imu-thin`` model,
``--steps`` batches (default 200), seeds 0 … S − 1 (default 1). Per seed, cases of
``simultrain bench`` (the same ``run_case``: coordinator, cloud, link emulator and edge as real
processes), in one run: ``simultrain`` with the run's default window (``auto``), ``simultrain``
with each fixed window of ``--windows`` (default 4), ``syncsgd`` and ``centralized``. With one
edge, centralized training *is* the pooled reference (one shuffled stream over all the fleet's
data, seeded alike: shared/training/assembly.py), so it gives the accuracy gap. Writes
``OUT/results.json`` (default ``bench/results/credits_4g``) and prints, per case, the
steady-state step interval, the pipeline bound the same run measured, their ratio, the
staleness and the accuracy; then, per window, the mean over seeds.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean

from simultrain.bench.bench import STEPS_SYSTEMS, BenchOptions, Suite, run_bench
from simultrain.bench.records import BenchRecord


@dataclass(frozen=True)
class _Options(BenchOptions):
    windows: tuple[int, ...] = (4,)

    def plan(self) -> list[Suite]:
        steps = {**STEPS_SYSTEMS, **({} if self.steps is None else {"imu-thin": self.steps})}
        seeds = tuple(range(self.seeds or 1))
        shared = {"links": ("4g",), "datasets": ("imu-thin",), "seeds": seeds, "steps": steps}
        return [
            Suite("credits", ("simultrain", "syncsgd", "centralized"), **shared),
            Suite("credits-w", ("simultrain",), windows=self.windows, **shared),
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path("bench/results/credits_4g"))
    parser.add_argument("--slowdown", type=float, default=3.02)
    parser.add_argument("--steps", type=int, default=None, help="batches per case (200)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0 … S − 1")
    parser.add_argument(
        "--windows", default="4", help="the fixed windows beside auto, comma-separated (4)"
    )
    args = parser.parse_args()
    options = _Options(
        out_dir=args.out,
        slowdown=args.slowdown,
        plots=False,
        command=" ".join(["python bench/credits_4g.py", *sys.argv[1:]]),
        steps=args.steps,
        seeds=args.seeds,
        windows=tuple(int(w) for w in args.windows.split(",")),
    )
    records, _ = run_bench(options)
    runs = [r for r in records if isinstance(r, BenchRecord)]
    sync = {r.seed: r.step_interval_ms for r in runs if r.mode == "syncsgd"}
    pooled = {r.seed: r.accuracy for r in runs if r.mode == "centralized"}
    means: dict[str, list[tuple[float, float | None, float | None]]] = defaultdict(list)
    for r in runs:
        if r.mode != "simultrain":
            interval = f"interval {r.step_interval_ms:.1f} ms"
            print(f"{r.mode} seed {r.seed}: {interval}; accuracy {r.accuracy}")
            continue
        window = "auto" if r.window_override is None else str(r.window_override)
        ratio = r.step_interval_ms / r.pipeline_bound_ms
        versus = None if r.seed not in sync else 100 * (r.step_interval_ms / sync[r.seed] - 1)
        gap = None if r.seed not in pooled else 100 * (r.accuracy - pooled[r.seed])
        means[window].append((ratio, versus, gap))
        print(
            f"simultrain window {window} seed {r.seed}: interval {r.step_interval_ms:.1f} ms, "
            f"bound {r.pipeline_bound_ms:.1f} ms ({r.bottleneck}), ÷ bound {ratio:.2f}, "
            f"{_signed(versus, ' %')} vs syncsgd; staleness mean {r.mean_staleness} max "
            f"{r.max_staleness}; accuracy {r.accuracy} ({_signed(gap, ' points')} vs pooled)"
            + _estimate(r)
        )
    for window, rows in means.items():
        ratios, versus, gaps = zip(*rows, strict=True)
        print(
            f"mean over {len(rows)} seeds, window {window}: ÷ bound {fmean(ratios):.2f}, "
            f"{_signed(_mean(versus), ' %')} vs syncsgd, {_signed(_mean(gaps), ' points')} "
            "vs pooled"
        )


def _estimate(r: BenchRecord) -> str:
    """The controller's estimate at the end of the run (auto only)."""
    credits = r.credits
    if credits is None or credits.pipe is None or credits.min_rtt_s is None:
        return ""
    return (
        f"; pipe {credits.pipe:.1f} batches, shortest loop {1e3 * credits.min_rtt_s:.0f} ms, "
        f"most in flight {credits.most_in_flight}"
    )


def _mean(values: tuple[float | None, ...]) -> float | None:
    known = [v for v in values if v is not None]
    return fmean(known) if known else None


def _signed(value: float | None, unit: str) -> str:
    return "–" if value is None else f"{value:+.1f}{unit}"


if __name__ == "__main__":
    main()
