"""A fleet at parity? Staleness compensation measured through the real services (docs/DESIGN.md §8).

Each case is one ``simultrain demo`` run, called as a function (:func:`simultrain.demo.run_demo`):
coordinator, cloud and E edge processes on 127.0.0.1, every edge a shard (IMU: one subject per
edge; MNIST: ``--partition label-skew``), ``steps`` batches per edge, so every method —
centralized training included — trains the same samples. The cases run ``workers`` at a time
(each is E + 2 processes), fleets above ``LARGE_FLEET`` edges one at a time. ``--targets`` runs
the committed grid (``TARGET_GRID``): ``simultrain fleet-parity --targets --resume`` adds what
the results file lacks.

Outputs, in ``out_dir``:

- ``fleet_parity.json`` — :class:`~simultrain.bench.records.FleetParityFile`: one record per
  run (``method`` is ``centralized``, ``default`` — the run configuration's chain — or a
  compensation chain; ``compensation`` the chain the cloud ran; ``command`` the demo command
  that runs the same case). Rewritten after every run; ``--resume`` skips what it holds.
- ``fleet_parity.md`` — mean ± std over seeds per (dataset, edges, window, method) and the
  gap to the cell's reference, in accuracy points: ``pooled`` training where the cell has it
  (all the fleet's data on one shuffled stream, docs/FLEET.md "The yardstick"), else
  ``centralized`` (the fleet's batches fed edge by edge: the per-edge-order diagnostic).

A method is a name in :data:`METHODS` (the run keys it sets, and how it trains a case), or
else a compensation chain; a new kind of case is one entry there.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from simultrain.bench.harness import Experiment
from simultrain.bench.records import FleetParityFile, FleetParityMeta, FleetParityRecord
from simultrain.shared.errors import SimulTrainError

__all__ = ["METHODS", "Case", "FleetParity", "Method", "grid_cases", "render_table"]

JSON_NAME = "fleet_parity.json"
MD_NAME = "fleet_parity.md"

# Batches in all, dealt to the edges: IMU 1 600 (51 200 samples, docs/STALENESS.md "A fleet");
# MNIST 600 (the study's MNIST budget, docs/STALENESS.md "The study").
TOTAL_BATCHES = {"imu": 1600, "mnist": 600}
# One epoch of each training split in batches of 32, rounded up: IMU 2 832 windows, MNIST
# 60 000 images. ``--epoch`` trains at least this much (the fleet targets' MNIST budget).
EPOCH_BATCHES = {"imu": 89, "mnist": 1875}
PARTITIONS = {"imu": "groups", "mnist": "label-skew"}
# The targets: the largest gap to centralized training, in points, by (edges, window)
# (docs/STALENESS.md, "A fleet").
TARGETS = {(8, 4): 0.5, (1, 16): 0.5, (32, 4): 1.0}
# The method every other is compared with, on the same seed (the table's gap): pooled
# training where a cell has it (docs/FLEET.md, "The yardstick"), else the per-edge order.
REFERENCES = ("pooled", "centralized")

GridRow = tuple[tuple[str, ...], int, int, tuple[str, ...], tuple[int, ...]]
"""(datasets, edges, window, methods, seeds): every combination is a case."""

# ``--targets``: every run behind bench/results/fleet_parity.{json,md}. docs/STALENESS.md,
# "A fleet", reads them.
TARGET_GRID: tuple[GridRow, ...] = (
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
    method: str  # a name of METHODS or a compensation chain
    seed: int
    epoch: bool = False  # at least one epoch of the training split (``--epoch``)

    @property
    def steps(self) -> int:
        """Batches per edge: the dataset's total dealt to the edges; a method that splits
        each batch among ``m`` mixed edges sends ``m`` times as many, of ``1/m`` the size, so
        every method trains the same samples. With ``epoch`` the total is at least one epoch
        and each edge's share is rounded up, so the fleet's batches cover the split."""
        if self.epoch:
            total = max(TOTAL_BATCHES[self.dataset], EPOCH_BATCHES[self.dataset])
            per_edge = -(-total // self.edges)
        else:
            per_edge = max(1, TOTAL_BATCHES[self.dataset] // self.edges)
        return per_edge * method_of(self.method).micro_batches(self.edges)

    @property
    def key(self) -> tuple[str, int, int, str, int]:
        return (self.dataset, self.edges, self.window, self.method, self.seed)

    @property
    def partition(self) -> str:
        return PARTITIONS[self.dataset] if self.edges > 1 else "none"

    def run_keys(self) -> dict[str, Any]:
        """The run configuration's keys this case sets (the rest keep their defaults)."""
        keys: dict[str, Any] = {
            "dataset": self.dataset,
            "edges": self.edges,
            "steps": self.steps,
            "window": self.window,
            "seed": self.seed,
        }
        if self.edges > 1:
            keys["partition"] = PARTITIONS[self.dataset]
        return {**keys, **method_of(self.method).run}

    def command(self) -> list[str]:
        """The ``simultrain demo`` arguments that run the same case by hand."""
        keys = self.run_keys()
        args = ["demo"]
        for key in ("dataset", "edges", "steps", "window", "seed"):
            args += [f"--{key}", str(keys.pop(key))]
        # One evaluation, at the end: a periodic one reads the whole test split every few
        # seconds (10 000 images on MNIST), which dominates a fleet run on two cores.
        args += ["--json", "--eval-every", "0"]
        for key, value in keys.items():  # every demo flag is its run key's name
            if isinstance(value, bool):  # a flag: given when set
                args += [f"--{key.replace('_', '-')}"] if value else []
            else:
                args += [f"--{key.replace('_', '-')}", str(value)]
        return args


def through_services(case: Case, timeout_s: float) -> FleetParityRecord:
    """Train ``case`` with the demo's processes (:func:`simultrain.demo.run_demo`)."""
    from rich.console import Console

    from simultrain.demo import DemoOptions, run_demo
    from simultrain.shared.training.config import RunConfig

    run = RunConfig.from_mapping(case.run_keys())
    options = DemoOptions(
        run=run, steps=run.steps, edges=run.edges, eval_every_s=0.0, timeout_s=timeout_s
    )
    started = time.perf_counter()
    summary = run_demo(options, console=Console(quiet=True))
    return FleetParityRecord(
        dataset=case.dataset,
        partition=case.partition,
        edges=case.edges,
        window=case.window,
        steps=case.steps,
        method=case.method,
        mode=summary.mode,
        compensation=summary.compensation,
        seed=case.seed,
        accuracy=summary.accuracy,
        test_loss=summary.test_loss,
        mean_staleness=summary.mean_staleness,
        mean_staleness_samples=summary.mean_staleness_samples,
        max_staleness=summary.max_staleness,
        master_version=summary.master_version,
        samples=summary.samples,
        seconds=round(time.perf_counter() - started, 1),
        command="simultrain " + " ".join(case.command()),
        mix_mean_members=None if summary.mixing is None else summary.mixing.mean_members,
        most_in_flight=None if summary.credits is None else summary.credits.most_in_flight,
        samples_per_s=summary.samples_per_s,
    )


@dataclass(frozen=True)
class Method:
    """A column of the table: the run keys it sets on a case, and how it trains one."""

    run: Mapping[str, Any] = field(default_factory=dict)
    train: Callable[[Case, float], FleetParityRecord] = through_services

    def micro_batches(self, edges: int) -> int:
        """Edge batches per batch of the run's size: ``m`` for split mixed steps of ``m``
        edges (docs/FLEET.md, "Mixed steps"), else 1."""
        mixed = min(int(self.run.get("mix_edges", 1)), edges)
        return mixed if mixed > 1 and self.run.get("mix_batch", "split") == "split" else 1


# Every method but the paced ones sets ``pace_lead = off``: they are what was measured before
# the cloud paced its fleets (docs/FLEET.md, "Pacing"), whatever the default is now.
_UNPACED = {"pace_lead": "off"}

METHODS: dict[str, Method] = {
    # The reference: one edge streams the union of the fleet's shards for steps × edges
    # batches (docs/FLEET.md, "The yardstick"; the demo starts that one edge).
    "pooled": Method({"mode": "centralized", "pooled": True, **_UNPACED}),
    # The fleet's batches fed edge by edge (the per-edge order): a diagnostic.
    "centralized": Method({"mode": "centralized", **_UNPACED}),
    "default": Method(_UNPACED),  # the run configuration's compensation chain, the cell's W
    # Mixed steps of 4 edges, split micro-batches (docs/FLEET.md, "Mixed steps").
    "mix4": Method({"mix_edges": 4, **_UNPACED}),
    # The cloud's credits size what is in flight (``window = auto``, docs/FLEET.md "Credits"),
    # whatever window the cell names; with mixed steps of 4 edges: the pair the in-process
    # screen found to meet the targets on both data sets.
    "auto": Method({"window": "auto", **_UNPACED}),
    "mix4+auto": Method({"mix_edges": 4, "window": "auto", **_UNPACED}),
    # A fixed total in flight fleet-wide instead of the controller's estimate: 4 batches, what
    # the in-process screen's credits held (docs/FLEET.md, "Results"); with split mixed steps
    # of 4 edges the same samples are 16 micro-batches.
    "credits4": Method({"fleet_in_flight": 4, **_UNPACED}),
    "mix4+credits4": Method({"mix_edges": 4, "fleet_in_flight": 16, **_UNPACED}),
    # The cloud holds the ACKs of an edge more than 2 batches ahead of the slowest
    # (docs/FLEET.md, "Pacing"); auto+pace is the services' default.
    "auto+pace": Method({"window": "auto", "pace_lead": 2}),
    "credits4+pace": Method({"fleet_in_flight": 4, "pace_lead": 2}),
    # Mixed steps with both: the lead in micro-batches, the same 2 batches' samples.
    "mix4+credits4+pace": Method({"mix_edges": 4, "fleet_in_flight": 16, "pace_lead": 8}),
}


def method_of(name: str) -> Method:
    """The method ``name``: one of :data:`METHODS`, else the compensation chain ``name``."""
    return METHODS.get(name) or Method({"compensation": name})


def grid_cases(grid: Sequence[GridRow], *, epoch: bool = False) -> list[Case]:
    """Every case of ``grid``, seed-major: an interrupted run leaves whole seeds."""
    return [
        Case(dataset, edges, window, method, seed, epoch)
        for datasets, edges, window, methods, seeds in grid
        for dataset in datasets
        for seed in seeds
        for method in methods
    ]


@dataclass
class FleetParity(Experiment[Case, FleetParityRecord]):
    """``simultrain fleet-parity``: the cases of a grid, their records and table."""

    out_dir: Path
    grid: Sequence[GridRow]
    timeout_s: float = 1800.0
    command: str = "simultrain fleet-parity"
    epoch: bool = False

    failures = (SimulTrainError, httpx.HTTPError)
    pool = "process"  # the cases are processes; Ctrl-C reaches each worker's demo

    def cases(self) -> list[Case]:
        return grid_cases(self.grid, epoch=self.epoch)

    def case_key(self, case: Case) -> tuple[str, int, int, str, int]:
        return case.key

    def record_key(self, record: FleetParityRecord) -> tuple[str, int, int, str, int]:
        return (record.dataset, record.edges, record.window, record.method, record.seed)

    def alone(self, case: Case) -> bool:
        return case.edges > LARGE_FLEET

    def run_one(self, case: Case) -> FleetParityRecord:
        return method_of(case.method).train(case, self.timeout_s)

    def describe(self, case: Case) -> str:
        return f"{case.dataset} E{case.edges} W{case.window} {case.method} s{case.seed}"

    def summary(self, record: FleetParityRecord) -> str:
        return (
            f"{100 * record.accuracy:.1f} % (τ mean {record.mean_staleness}) "
            f"in {record.seconds:.0f} s"
        )

    def load(self) -> list[FleetParityRecord]:
        path = self.out_dir / JSON_NAME
        return FleetParityFile.read(path).records if path.exists() else []

    def save(self, records: Sequence[FleetParityRecord]) -> None:
        ordered = sorted(records, key=self.record_key)
        results = FleetParityFile(meta=FleetParityMeta(command=self.command), records=ordered)
        results.write(self.out_dir / JSON_NAME)
        (self.out_dir / MD_NAME).write_text(render_table(ordered) + "\n")


# --- the table ---------------------------------------------------------------------------

Cells = dict[tuple[str, int, int], dict[str, list[FleetParityRecord]]]


def reference_of(methods: Mapping[str, object]) -> str:
    """A cell's reference: pooled training where the cell has it, else centralized."""
    return next((m for m in REFERENCES if m in methods), REFERENCES[-1])


def render_table(records: Sequence[FleetParityRecord]) -> str:
    """Mean ± std per cell and the gap to the cell's reference (`reference_of`)."""
    cells: Cells = defaultdict(lambda: defaultdict(list))
    for r in records:
        cells[(r.dataset, r.edges, r.window)][r.method].append(r)
    out = [
        "# A fleet at parity? Services, held-out accuracy (%)",
        "",
        "Produced by `simultrain fleet-parity` (services/bench/fleet_parity.py); every run in",
        f"`{JSON_NAME}`. Gap: points to the cell's reference on the same samples (mean of the",
        "seeds both have): pooled training where the cell has it, else centralized training fed",
        "edge by edge. Staleness: edge-stage steps a gradient missed (mean / max over seeds).",
        "",
    ]
    out += _targets(cells)
    out += _throughput(records)
    for (dataset, edges, window), methods in sorted(cells.items()):
        ref_name = reference_of(methods)
        reference = {r.seed: r.accuracy for r in methods.get(ref_name, [])}
        out += [
            f"## {dataset} · {edges} edge{'s' if edges > 1 else ''} × W {window}",
            "",
            "| method | compensation | per seed | mean ± std | gap | staleness | seconds |",
            "|---|---|---|---|---|---|---|",
        ]
        order = sorted(
            methods, key=lambda m: (m != ref_name, m not in REFERENCES, m != "default", m)
        )
        for method in order:
            runs = sorted(methods[method], key=lambda r: r.seed)
            accs = [100 * r.accuracy for r in runs]
            mean = statistics.fmean(accs)
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            diffs = _paired_gaps(runs, reference)
            gap = f"{statistics.fmean(diffs):+.1f}" if diffs and method != ref_name else "–"
            seeds = " / ".join(f"{a:.1f} (s{r.seed})" for a, r in zip(accs, runs, strict=True))
            stale = (
                f"{statistics.fmean(r.mean_staleness for r in runs):.1f} / "
                f"{max(r.max_staleness for r in runs)}"
                if method != ref_name
                else "–"
            )
            secs = f"{statistics.fmean(r.seconds for r in runs):.0f}"
            out.append(
                f"| {method} | {runs[0].compensation if method != ref_name else '–'} "
                f"| {seeds} | {mean:.1f} ± {std:.1f} | {gap} | {stale} | {secs} |"
            )
        out.append("")
    return "\n".join(out)


def _paired_gaps(runs: Sequence[FleetParityRecord], reference: dict[int, float]) -> list[float]:
    return [100 * (r.accuracy - reference[r.seed]) for r in runs if r.seed in reference]


def _throughput(records: Sequence[FleetParityRecord]) -> list[str]:
    """Samples per second of each fleet method against the best fixed window of the same
    fleet (method ``default``, the window its cell names), on the seeds both ran."""
    rates: dict[tuple[str, int], dict[tuple[str, int], dict[int, float]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    for r in records:
        if r.samples_per_s is not None and r.method not in REFERENCES:
            rates[(r.dataset, r.edges)][(r.method, r.window)][r.seed] = r.samples_per_s
    rows = []
    for (dataset, edges), runs in sorted(rates.items()):
        fixed = {key: seeds for key, seeds in runs.items() if key[0] == "default"}
        if not fixed:
            continue
        for (method, _), seeds in sorted(runs.items()):
            if method == "default":
                continue
            # The best fixed window on each seed this method ran, then the mean ratio.
            ratios = [
                seeds[seed] / best
                for seed in sorted(seeds)
                if (best := max((f[seed] for f in fixed.values() if seed in f), default=0.0))
            ]
            if ratios:
                row = f"| {dataset} | {edges} | {method} | {len(ratios)} | "
                rows.append(row + f"{statistics.fmean(ratios) - 1:+.1%} |")
        for (_, window), seeds in sorted(fixed.items()):
            rate = statistics.fmean(seeds.values())
            rows.append(f"| {dataset} | {edges} | window {window} | {len(seeds)} | {rate:.0f}/s |")
    if not rows:
        return []
    return [
        "## Throughput",
        "",
        "Samples the cloud applied per second, first batch applied to last (start-up left out).",
        "A fleet method: its mean ratio to the best fixed window (method `default`) on the same",
        "seed; a fixed window: its samples per second. The target: within 5 % of the best.",
        "",
        "| dataset | edges | method | seeds | vs best fixed window, or samples/s |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]


def _targets(cells: Cells) -> list[str]:
    """One row per (cell, method) that has a target: the gap, its standard error over the
    seeds (paired with centralized on the same seed) and whether the target holds."""
    rows = []
    for (dataset, edges, window), methods in sorted(cells.items()):
        target = TARGETS.get((edges, window))
        ref_name = reference_of(methods)
        reference = {r.seed: r.accuracy for r in methods.get(ref_name, [])}
        if target is None or not reference:
            continue
        for method in sorted(m for m in methods if m != ref_name):
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
        "Gap: mean over seeds of (method − the reference on the same seed), points; ± is its",
        "standard error. The target holds when the mean gap is no lower than −target.",
        "",
        "| dataset | fleet | method | seeds | gap | ± | target | holds |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
