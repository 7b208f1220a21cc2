"""A fleet at parity? Staleness compensation measured through the real services (SPEC "Fleets").

Each case is one ``simultrain demo --json`` run: coordinator, cloud and E edge processes on
127.0.0.1, every edge a shard (IMU: one subject per edge; MNIST: ``--partition
label-skew``), ``steps`` batches per edge, so every method — centralized training included —
trains the same samples. The cases run ``workers`` at a time (each is E + 2 processes),
fleets above ``LARGE_FLEET`` edges one at a time. ``--targets`` runs the committed grid
(``TARGET_GRID``): ``simultrain fleet-parity --targets --resume`` adds what the results
file lacks.

Outputs, in ``out_dir``:

- ``fleet_parity.json`` — ``{"meta", "records"}``; one record per run with ``dataset,
  partition, edges, window, steps`` (batches per edge), ``method`` (``centralized`` or a
  compensation chain; ``default`` is the run configuration's), ``compensation`` (the chain
  the cloud ran), ``seed, accuracy, test_loss, mean_staleness, max_staleness`` (edge-stage
  steps the gradient missed, the master's histogram), ``master_version, samples, seconds``
  and the ``command``. Rewritten after every run; ``--resume`` skips what it holds.
- ``fleet_parity.md`` — mean ± std over seeds per (dataset, edges, window, method) and the
  gap to centralized training of the same cell, in accuracy points.

``simultrain fleet-parity`` calls :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from threading import Lock
from typing import Any

__all__ = ["Case", "main", "render_table"]

JSON_NAME = "fleet_parity.json"
MD_NAME = "fleet_parity.md"

# Batches per edge by dataset at 8 edges: IMU 1 600 batches in all (the 51 200
# samples); MNIST 600 (the study's MNIST budget, docs/STALENESS.md "The study").
TOTAL_BATCHES = {"imu": 1600, "mnist": 600}
PARTITIONS = {"imu": "groups", "mnist": "label-skew"}
# The targets: the largest gap to centralized training, in points, by (edges, window)
# (docs/STALENESS.md, "A fleet").
TARGETS = {(8, 4): 0.5, (1, 16): 0.5, (32, 4): 1.0}
# ``--targets``: every run behind bench/results/fleet_parity.{json,md}, as
# (datasets, edges, window, methods, seeds). docs/STALENESS.md, "A fleet", reads them.
TARGET_GRID: tuple[tuple[tuple[str, ...], int, int, tuple[str, ...], tuple[int, ...]], ...] = (
    (
        ("imu", "mnist"),
        8,
        4,
        ("centralized", "default", "delay-beta1+dana", "delay-beta1+dana:lookahead=0"),
        (0, 1, 2, 3, 4),
    ),
    (
        ("imu",),
        8,
        4,
        (
            "delay-beta1+fleet-batch",
            "delay-beta1+fleet-batch:lr_power=0.5",
            "delay-beta1:cap=0+fleet-batch",
            "delay-beta1+lookahead",
        ),
        (0, 1, 2),
    ),
    (("mnist",), 8, 4, ("delay-beta1+lookahead",), (0, 1, 2)),
    (("imu", "mnist"), 1, 16, ("centralized", "default", "delay-beta1+dana"), (0, 1, 2)),
    (
        ("imu", "mnist"),
        32,
        4,
        ("centralized", "default", "delay-beta1+fleet-batch:k=8"),
        (0, 1, 2),
    ),
    (("imu",), 32, 4, ("delay-beta1+dana",), (0, 1, 2)),
)
# Fleets above this size run one at a time, whatever ``--workers`` says: 32 edge processes
# already share the cores, and two such runs would not fit a 24 GiB machine (MNIST).
LARGE_FLEET = 8


@dataclass(frozen=True)
class Case:
    dataset: str
    edges: int
    window: int
    method: str  # "centralized", "default" or a compensation chain
    seed: int

    @property
    def steps(self) -> int:
        return max(1, TOTAL_BATCHES[self.dataset] // self.edges)

    @property
    def key(self) -> tuple[str, int, int, str, int]:
        return (self.dataset, self.edges, self.window, self.method, self.seed)

    def command(self) -> list[str]:
        args = [
            "demo",
            "--dataset",
            self.dataset,
            "--edges",
            str(self.edges),
            "--steps",
            str(self.steps),
            "--window",
            str(self.window),
            "--seed",
            str(self.seed),
            "--json",
            # One evaluation, at the end: a periodic one reads the whole test split every few
            # seconds (10 000 images on MNIST), which dominates a fleet run on two cores.
            "--eval-every",
            "0",
        ]
        if self.edges > 1:
            args += ["--partition", PARTITIONS[self.dataset]]
        if self.method == "centralized":
            args += ["--mode", "centralized"]
        elif self.method != "default":
            args += ["--compensation", self.method]
        return args


def _run(case: Case, timeout_s: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "simultrain.cli", *case.command()]
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        # Ctrl-C, not a kill: the demo stops the services it started (each in a session of
        # its own, out of reach of a signal to the demo alone) before it exits.
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise
    seconds = time.perf_counter() - started
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (stderr or stdout)[-2000:]
        raise RuntimeError(f"{' '.join(case.command())} failed ({proc.returncode}): {tail}")
    summary = json.loads(lines[-1])
    return {
        "dataset": case.dataset,
        "partition": PARTITIONS[case.dataset] if case.edges > 1 else "none",
        "edges": case.edges,
        "window": case.window,
        "steps": case.steps,
        "method": case.method,
        "mode": summary["mode"],
        "compensation": summary["compensation"],
        "seed": case.seed,
        "accuracy": summary["accuracy"],
        "test_loss": summary["test_loss"],
        "mean_staleness": summary["mean_staleness"],
        "max_staleness": summary["max_staleness"],
        "master_version": summary["master_version"],
        "samples": summary["samples"],
        "seconds": round(seconds, 1),
        "command": "simultrain " + " ".join(case.command()),
    }


def render_table(records: Sequence[dict[str, Any]]) -> str:
    """Mean ± std per cell and the gap to centralized training of the same cell."""
    cells: dict[tuple[str, int, int], dict[str, list[dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in records:
        cells[(r["dataset"], r["edges"], r["window"])][r["method"]].append(r)
    out = [
        "# A fleet at parity? Services, held-out accuracy (%)",
        "",
        "Produced by `simultrain fleet-parity` (services/bench/fleet_parity.py); every run in",
        f"`{JSON_NAME}`. Gap: points to centralized training on the same samples (mean of the",
        "seeds both have). Staleness: edge-stage steps a gradient missed (mean / max over seeds).",
        "",
    ]
    out += _targets(cells)
    for (dataset, edges, window), methods in sorted(cells.items()):
        reference = {r["seed"]: r["accuracy"] for r in methods.get("centralized", [])}
        out += [
            f"## {dataset} · {edges} edge{'s' if edges > 1 else ''} × W {window}",
            "",
            "| method | compensation | per seed | mean ± std | gap | staleness | seconds |",
            "|---|---|---|---|---|---|---|",
        ]
        order = sorted(methods, key=lambda m: (m != "centralized", m != "default", m))
        for method in order:
            runs = sorted(methods[method], key=lambda r: r["seed"])
            accs = [100 * r["accuracy"] for r in runs]
            mean = statistics.fmean(accs)
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            diffs = _paired_gaps(runs, reference)
            gap = f"{statistics.fmean(diffs):+.1f}" if diffs and method != "centralized" else "–"
            seeds = " / ".join(f"{a:.1f} (s{r['seed']})" for a, r in zip(accs, runs, strict=True))
            stale = (
                f"{statistics.fmean(r['mean_staleness'] for r in runs):.1f} / "
                f"{max(r['max_staleness'] for r in runs)}"
                if method != "centralized"
                else "–"
            )
            secs = f"{statistics.fmean(r['seconds'] for r in runs):.0f}"
            out.append(
                f"| {method} | {runs[0]['compensation'] if method != 'centralized' else '–'} "
                f"| {seeds} | {mean:.1f} ± {std:.1f} | {gap} | {stale} | {secs} |"
            )
        out.append("")
    return "\n".join(out)


def _paired_gaps(runs: Sequence[dict[str, Any]], reference: dict[int, float]) -> list[float]:
    return [100 * (r["accuracy"] - reference[r["seed"]]) for r in runs if r["seed"] in reference]


def _targets(cells: dict[tuple[str, int, int], dict[str, list[dict[str, Any]]]]) -> list[str]:
    """One row per (cell, method) that has a target: the gap, its standard error over the
    seeds (paired with centralized on the same seed) and whether the target holds."""
    rows = []
    for (dataset, edges, window), methods in sorted(cells.items()):
        target = TARGETS.get((edges, window))
        reference = {r["seed"]: r["accuracy"] for r in methods.get("centralized", [])}
        if target is None or not reference:
            continue
        for method in sorted(m for m in methods if m != "centralized"):
            gaps = _paired_gaps(methods[method], reference)
            if not gaps:
                continue
            mean = statistics.fmean(gaps)
            sem = f"{statistics.stdev(gaps) / len(gaps) ** 0.5:.1f}" if len(gaps) > 1 else "–"
            rows.append(
                f"| {dataset} | {edges} × W {window} | {method} | {len(gaps)} | {mean:+.1f} "
                f"| {sem} | −{target} | {'yes' if mean >= -target else '**no**'} |"
            )
    if not rows:
        return []
    return [
        "## Targets",
        "",
        "Gap: mean over seeds of (method − centralized on the same seed), points; ± is its",
        "standard error. The target holds when the mean gap is no lower than −target.",
        "",
        "| dataset | fleet | method | seeds | gap | ± | target | holds |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def _save(out_dir: Path, records: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    records.sort(key=lambda r: (r["dataset"], r["edges"], r["window"], r["method"], r["seed"]))
    (out_dir / JSON_NAME).write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    (out_dir / MD_NAME).write_text(render_table(records) + "\n")


def _strs(text: str) -> list[str]:
    return [s for s in text.split(",") if s]


def _ints(text: str) -> list[int]:
    return [int(s) for s in _strs(text)]


def main(argv: Sequence[str] | None = None) -> int:
    """``simultrain fleet-parity [--targets | --datasets imu,mnist --methods …] [--resume]``;
    0 on success."""
    parser = argparse.ArgumentParser(
        prog="simultrain fleet-parity", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    parser.add_argument("--datasets", type=_strs, default=["imu", "mnist"])
    parser.add_argument(
        "--methods",
        type=_strs,
        default=["centralized", "default", "delay-beta1+fleet-batch"],
        help="centralized, default, or compensation chains (comma-separated)",
    )
    parser.add_argument("--edges", type=_ints, default=[8])
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2, help="runs at once")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--resume", action="store_true", help="skip runs already in the JSON")
    parser.add_argument(
        "--targets",
        action="store_true",
        help="run the committed grid (every fleet, method and seed of the results file) "
        "instead of --datasets/--edges/--window/--methods/--seeds",
    )
    args = parser.parse_args(argv)
    unknown = set(args.datasets) - set(TOTAL_BATCHES)
    if unknown:
        parser.error(f"unknown dataset(s) {sorted(unknown)}; choose from {list(TOTAL_BATCHES)}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / JSON_NAME
    records: list[dict[str, Any]] = []
    if args.resume and path.exists():
        records = json.loads(path.read_text())["records"]
    done = {(r["dataset"], r["edges"], r["window"], r["method"], r["seed"]) for r in records}
    if args.targets:
        grid = TARGET_GRID
    else:
        grid = tuple(
            (tuple(args.datasets), edges, args.window, tuple(args.methods), tuple(args.seeds))
            for edges in args.edges
        )
    # Seed-major, so that an interrupted run leaves whole seeds of every method.
    cases = [
        Case(dataset, edges, window, method, seed)
        for datasets, edges, window, methods, seeds in grid
        for dataset in datasets
        for seed in seeds
        for method in methods
    ]
    todo = [c for c in cases if c.key not in done]
    meta = {"command": "simultrain fleet-parity " + " ".join(argv or sys.argv[1:])}
    lock = Lock()
    failures = 0
    print(f"{len(todo)} of {len(cases)} runs to do", flush=True)
    small = [c for c in todo if c.edges <= LARGE_FLEET]
    large = [c for c in todo if c.edges > LARGE_FLEET]
    for batch, workers in ((small, args.workers), (large, 1)):
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = {pool.submit(_run, case, args.timeout): case for case in batch}
            for future in as_completed(futures):
                case = futures[future]
                try:
                    record = future.result()
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    failures += 1
                    print(f"FAILED {case}: {exc}", file=sys.stderr, flush=True)
                    continue
                with lock:
                    records.append(record)
                    _save(args.out_dir, records, meta)
                print(
                    f"{case.dataset} E{case.edges} W{case.window} {case.method} s{case.seed}: "
                    f"{100 * record['accuracy']:.1f} % (τ mean {record['mean_staleness']}) "
                    f"in {record['seconds']:.0f} s",
                    flush=True,
                )
    _save(args.out_dir, records, meta)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
