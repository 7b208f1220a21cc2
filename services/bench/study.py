"""The staleness study: compensation × optimizer × window × dataset × seed (docs/STALENESS.md).

Every run goes through the in-process driver (:func:`run_in_process`): the real runtimes and
every frame through the real codec, with a deterministic event order in which a window of W
makes each edge gradient exactly W edge-stage updates stale. Window 0 is run once per
(dataset, optimizer, seed) and shared by every compensation: each compensation is the plain
update at staleness 0, bit for bit (tests/core/test_driver.py), so their window-0 runs would
be the same run.

Outputs, in ``out_dir``:

- ``staleness.json`` — :class:`~simultrain.bench.records.StudyFile`: ``default`` names the
  run configuration's default compensation chain; one :class:`StudyRecord` per run of the
  grid, one ablation record per run of the ablations. Rewritten after every run, so an
  interrupted study keeps what it finished and ``resume`` skips it.
- ``staleness.md`` — mean ± std over seeds per cell, and the gap to the same optimizer's
  window 0, in accuracy points; then the ablations.
- ``staleness.png`` — accuracy against window per compensation, one panel per dataset and
  optimizer.

``simultrain study`` (services/bench/cli.py) and ``run_study`` run :class:`Study`, the
experiment (:mod:`simultrain.bench.harness`).
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from simultrain.bench.harness import Experiment, Progress, run
from simultrain.bench.records import (
    AblationRecord,
    ForecastAblation,
    ReconcileAblation,
    StudyFile,
    StudyMeta,
    StudyRecord,
)
from simultrain.shared.training.compensation import (
    Compensation,
    DelayMomentum,
    parse_compensation,
)
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.driver import run_in_process
from simultrain.shared.training.options import OptimizerConfig

__all__ = [
    "OPTIMIZERS",
    "Study",
    "StudyConfig",
    "render_table",
    "run_study",
    "summarize",
]

OPTIMIZERS: dict[str, OptimizerConfig] = {
    # The pilot's reference: robust to staleness, but not what people train with.
    "sgd": OptimizerConfig("sgd", lr=0.05),
    "momentum": OptimizerConfig("sgd", lr=0.01, momentum=0.9),
    "adam": OptimizerConfig("adam", lr=1e-3),
}
"""The study's optimizers, the same on both stages and in every mode (no strawmen:
docs/DESIGN.md §10)."""

DEFAULT_COMPENSATIONS = (
    "none",
    "forecast",
    "forecast-adaptive",
    "dcasgd-a",
    "staleness-lr",
    "predict",
    "delay-momentum:stages=both",
    "delay-momentum",
    "delay-beta1",
    "lookahead",
    "delay-beta1+lookahead",
)


@dataclass(frozen=True)
class StudyConfig:
    datasets: tuple[str, ...] = ("imu", "mnist")
    compensations: tuple[str, ...] = DEFAULT_COMPENSATIONS
    optimizers: tuple[str, ...] = ("sgd", "momentum", "adam")
    windows: tuple[int, ...] = (0, 2, 4, 8)
    seeds: tuple[int, ...] = (0, 1, 2)
    # Fleet sizes. With E edges the master moves once per batch of every edge, so an edge's
    # gradient lands about E·(W+1) edge-stage updates late (docs/DESIGN.md §6.2): the fleet, not the
    # window alone, sets the staleness a compensation must hold at.
    edges: tuple[int, ...] = (1,)
    # How a fleet's shards are dealt (Dataset.shard): one IMU subject per edge, MNIST skewed
    # by label, so that edges disagree as real ones do (docs/STALENESS.md, "A fleet").
    partitions: Mapping[str, str] = field(
        default_factory=lambda: {"imu": "groups", "mnist": "label-skew"}
    )
    # Batches per run, all edges together: E edges train ``steps // E`` batches each, so every
    # fleet size sees the same samples as one edge (and as centralized training).
    steps: Mapping[str, int] = field(default_factory=lambda: {"imu": 1500, "mnist": 600})
    # Per-dataset overrides of the grid where compute is short: {"mnist": ("none", ...)}.
    dataset_compensations: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    ablations: bool = True
    ablation_steps: int = 1500
    ablation_seeds: tuple[int, ...] = (0, 1, 2)
    ablation_optimizers: tuple[str, ...] = ("sgd", "momentum")
    ablation_windows: tuple[int, ...] = (4, 8)
    # (delta codec, fraction of deltas lost) for the R = ∞ ablation.
    ablation_deltas: tuple[tuple[str, float], ...] = (
        ("lz4", 0.0),
        ("fp16", 0.0),
        ("int8", 0.0),
        ("topk", 0.0),
        ("fp16", 0.05),
    )
    base: RunConfig = field(default_factory=RunConfig)  # α, β, R, batch size, codecs

    @classmethod
    def tiny(cls) -> StudyConfig:
        """Seconds, for the test: two compensations, one optimizer, two windows and seeds."""
        return cls(
            datasets=("imu",),
            compensations=("none", "forecast"),
            optimizers=("momentum",),
            windows=(0, 2),
            seeds=(0, 1),
            steps={"imu": 12},
            ablations=True,
            ablation_steps=12,
            ablation_seeds=(0,),
            ablation_optimizers=("momentum",),
            ablation_windows=(2,),
            ablation_deltas=(("fp16", 0.5),),
        )


@dataclass(frozen=True)
class _Job:
    kind: str  # "grid" or an ablation name
    labels: dict[str, Any]  # what the record says about the job besides its result
    config: RunConfig


def plain_for(compensation: str, optimizer: str) -> bool:
    """Whether ``compensation`` is exactly the plain update with ``optimizer`` at any window.

    Delay-matched momentum only changes momentum, so with momentum-free SGD it *is* ``none``
    (``delay_matched_momentum(0, τ) = 0``), and ``delay-beta1`` only changes Adam's β₁, so
    with any SGD it is ``none``: such cells are not run again; the table shows the ``none``
    runs for them and says so.
    """
    comp = parse_compensation(compensation)
    rules = comp.step_rules
    # Nothing but delay-matched momentum in the chain (at least one part of it).
    momentum_only = (
        bool(rules)
        and all(isinstance(r, DelayMomentum) for r in rules)
        and comp == Compensation(step_rules=rules, name=comp.name)
    )
    opt = OPTIMIZERS[optimizer]
    if opt.name != "sgd" or not momentum_only:
        return False
    return opt.momentum == 0.0 or all(
        isinstance(r, DelayMomentum) and r.optimizers == "adam" for r in rules
    )


def _grid_jobs(study: StudyConfig) -> list[_Job]:
    jobs = []
    for dataset in study.datasets:
        comps = study.dataset_compensations.get(dataset, study.compensations)
        for optimizer, edges, window in itertools.product(
            study.optimizers, study.edges, study.windows
        ):
            # Window 0 is one run for every compensation (module docstring), and so is a
            # compensation that is the plain update for this optimizer (plain_for).
            runs = [c for c in comps if c == "none" or not plain_for(c, optimizer)]
            if any(plain_for(c, optimizer) for c in comps) and "none" not in runs:
                runs.insert(0, "none")
            for comp in ("none",) if window == 0 else runs:
                for seed in study.seeds:
                    config = replace(
                        study.base,
                        mode="simultrain",
                        dataset=dataset,
                        edges=edges,
                        partition=study.partitions.get(dataset, "auto"),
                        steps=max(study.steps[dataset] // edges, 1),
                        window=window,
                        seed=seed,
                        compensation=comp,
                        optimizer=OPTIMIZERS[optimizer],
                    )
                    labels = {
                        "compensation": comp,
                        "optimizer": optimizer,
                        "edges": edges,
                        "window": window,
                        "dataset": dataset,
                        "seed": seed,
                    }
                    if edges > 1:
                        labels["partition"] = config.partition
                    jobs.append(_Job("grid", labels, config))
    return jobs


def _ablation_jobs(study: StudyConfig) -> list[_Job]:
    """The paper's ablations as it states them (docs/DESIGN.md §10).

    - no forecast: α = 0 against the paper's α = 0.5, learning curves every 100 steps, to see
      whether α = 0 diverges after ~500 steps;
    - no reconciliation: R = ∞ against R = 10, with lossless, fp16, int8 and top-k deltas and
      with 5 % of (fp16) deltas lost, to see whether the loss is ~12 % higher.
    """
    jobs = []
    steps = study.ablation_steps
    every = max(steps // 15, 1)
    for optimizer in study.ablation_optimizers:
        for window in study.ablation_windows:
            for comp in ("none", "forecast"):
                for seed in study.ablation_seeds:
                    config = replace(
                        study.base,
                        mode="simultrain",
                        dataset="imu",
                        steps=steps,
                        window=window,
                        seed=seed,
                        compensation=comp,
                        optimizer=OPTIMIZERS[optimizer],
                        eval_every=every,
                    )
                    labels: dict[str, Any] = {
                        "ablation": "forecast",
                        "compensation": comp,
                        # The α that acts: the run's, else the forecast part's own (0.5).
                        "alpha": (0.5 if study.base.alpha is None else study.base.alpha)
                        if comp == "forecast"
                        else 0.0,
                        "optimizer": optimizer,
                        "window": window,
                        "dataset": "imu",
                        "seed": seed,
                    }
                    jobs.append(_Job("forecast", labels, config))
    for codec, loss in study.ablation_deltas:
        for reconcile in (10, None):
            for seed in study.ablation_seeds:
                config = replace(
                    study.base,
                    mode="simultrain",
                    dataset="imu",
                    steps=steps,
                    window=4,
                    seed=seed,
                    optimizer=OPTIMIZERS["momentum"],
                    reconcile_every=reconcile,
                    codecs=replace(study.base.codecs, delta=codec),
                    delta_loss=loss,
                )
                labels = {
                    "ablation": "reconcile",
                    "compensation": config.compensation,
                    "optimizer": "momentum",
                    "window": 4,
                    "dataset": "imu",
                    "seed": seed,
                    "delta_codec": codec,
                    "delta_loss": loss,
                    "reconcile_every": reconcile,
                }
                jobs.append(_Job("reconcile", labels, config))
    return jobs


def _job_key(labels: Mapping[str, Any]) -> str:
    """A run's identity: its labels, without what the run measured."""
    keep = {k: v for k, v in labels.items() if k not in _RESULT_FIELDS}
    return json.dumps(keep, sort_keys=True)


_RESULT_FIELDS = frozenset(
    {
        "accuracy",
        "final_loss",
        "train_loss",
        "max_staleness",
        "mean_staleness",
        "seconds",
        "steps",
        "curve",
        "loss_curve",
        "train_curve",
        "deltas_lost",
        "replica_drift",
    }
)

StudyResult = StudyRecord | ForecastAblation | ReconcileAblation


def _run_job(job: _Job) -> StudyResult:
    """One run in this process (a worker sets one torch thread: runs share the cores)."""
    import torch

    torch.set_num_threads(1)
    result = run_in_process(job.config)
    record: dict[str, Any] = {
        **job.labels,
        "steps": job.config.steps,
        "accuracy": round(result.accuracy, 6),
        "final_loss": round(result.test_loss, 6),
        "train_loss": round(result.train_loss, 6),
        "max_staleness": result.max_staleness,
        "mean_staleness": round(result.master.staleness.mean, 3) if result.master else 0.0,
        "seconds": round(result.seconds, 2),
    }
    if job.kind == "grid":
        return StudyRecord.model_validate(record)
    losses = [x for e in result.edges.values() for x in e.losses]
    every = max(job.config.eval_every, 1)
    record["curve"] = [[s, round(a, 4)] for s, a in result.curve]
    record["loss_curve"] = [[s, round(v, 4)] for s, v in result.loss_curve]
    record["train_curve"] = [
        round(statistics.fmean(losses[i : i + every]), 4) for i in range(0, len(losses), every)
    ]
    record["deltas_lost"] = result.deltas_lost
    record["replica_drift"] = round(_replica_drift(result), 6)
    kind = ForecastAblation if job.kind == "forecast" else ReconcileAblation
    return kind.model_validate(record)


def _replica_drift(result: Any) -> float:
    """‖replica − master‖ / ‖master‖ over the edge stage at the end of the run."""
    master, edges = result.master, result.edges
    replica = next(iter(edges.values())).replica if edges else None
    if master is None or replica is None:
        return float("nan")
    num = den = 0.0
    for name, w in master.edge_weights().items():
        r = replica.current.tensors[name].detach()
        num += float(((r - w) ** 2).sum())
        den += float((w**2).sum())
    return math.sqrt(num / den) if den else float("nan")


JSON_NAME = "staleness.json"


@dataclass
class Study(Experiment[_Job, StudyResult]):
    """The grid (and the ablations) of ``study``: ``staleness.json`` after every run, then
    ``staleness.md`` and ``staleness.png``. A study can be run in parts (resume): every
    part's grid is kept in the meta."""

    study: StudyConfig
    out_dir: Path
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))
    earlier_parts: list[dict[str, Any]] = field(default_factory=list)

    failures = ()  # a run that raises is a defect: the study stops (what it saved stays)

    def cases(self) -> list[_Job]:
        return _grid_jobs(self.study) + (_ablation_jobs(self.study) if self.study.ablations else [])

    def case_key(self, case: _Job) -> str:
        return _job_key(case.labels)

    def record_key(self, record: StudyResult) -> str:
        return _job_key(record.to_json())

    def run_one(self, case: _Job) -> StudyResult:
        return _run_job(case)

    def describe(self, case: _Job) -> str:
        keys = ("ablation", "dataset", "optimizer", "compensation", "edges", "window", "seed")
        return ", ".join(f"{k}={case.labels[k]}" for k in keys if k in case.labels)

    def summary(self, record: StudyResult) -> str:
        return f"accuracy {100 * record.accuracy:.1f} ({record.seconds:.0f} s)"

    def load(self) -> list[StudyResult]:
        path = self.out_dir / JSON_NAME
        if not path.exists():
            return []
        earlier = StudyFile.read(path)
        self.earlier_parts = list(earlier.meta.parts)
        return [*earlier.records, *earlier.ablations]

    def results(self, records: Sequence[StudyResult], *, finished: bool = False) -> StudyFile:
        described = _describe(self.study)
        meta = StudyMeta(
            study=described,
            optimizers={k: asdict(v) for k, v in OPTIMIZERS.items()},
            started=self.started,
            parts=[*self.earlier_parts, described],
        )
        if finished:
            meta = meta.model_copy(update={"finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        # "default": the chain every run uses unless told otherwise (RunConfig.compensation).
        return StudyFile(default=RunConfig().compensation, meta=meta, **StudyFile.split(records))

    def save(self, records: Sequence[StudyResult]) -> None:
        self.results(records).write(self.out_dir / JSON_NAME)

    def finish(self, records: Sequence[StudyResult]) -> None:
        results = self.results(records, finished=True)
        results.write(self.out_dir / JSON_NAME)
        (self.out_dir / "staleness.md").write_text(render_table(results))
        plot_study(results, self.out_dir / "staleness.png")


def run_study(
    study: StudyConfig,
    out_dir: Path | str = Path("bench/results"),
    *,
    workers: int = 1,
    resume: bool = False,
    progress: Progress | None = None,
) -> StudyFile:
    """Run the grid (and the ablations), writing JSON after every run, then table and plot.

    ``workers`` > 1 runs that many processes with one torch thread each. With ``resume``,
    records already in ``out_dir/staleness.json`` are kept and their runs skipped. Returns
    the results file as written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run(
        Study(study, out),
        earlier="resume" if resume else "replace",
        workers=workers,
        progress=progress,
    )
    return StudyFile.read(out / JSON_NAME)


def _describe(study: StudyConfig) -> dict[str, Any]:
    described = asdict(study)
    described["base"] = {
        k: v
        for k, v in study.base.to_mapping().items()
        if k in ("alpha", "beta", "reconcile_every", "batch_size", "compensation", "delta_codec")
    }
    return described


# --- the report --------------------------------------------------------------------------


Cell = tuple[str, str, str, int, int]
"""(dataset, optimizer, compensation, window, edges)."""


def _cells(records: Iterable[StudyRecord]) -> dict[Cell, list[float]]:
    cells: dict[Cell, list[float]] = defaultdict(list)
    for r in records:
        cells[(r.dataset, r.optimizer, r.compensation, r.window, r.edges)].append(
            100.0 * r.accuracy
        )
    return cells


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(records: Iterable[StudyRecord]) -> dict[Cell, dict[str, float]]:
    """Per (dataset, optimizer, compensation, window, edges): mean, std, n and the gap to
    window 0 of the same fleet (sequential split training on the same samples).

    Window 0 is shared: every compensation's window-0 cell is the ``none`` run.
    """
    cells = _cells(records)
    out: dict[Cell, dict[str, float]] = {}
    comps = sorted({k[2] for k in cells})
    # A compensation that is the plain update for an optimizer shares the none runs.
    for dataset, optimizer, comp, window, edges in list(cells):
        if comp != "none":
            continue
        for other in comps:
            if other != "none" and plain_for(other, optimizer):
                cells.setdefault(
                    (dataset, optimizer, other, window, edges),
                    cells[(dataset, optimizer, comp, window, edges)],
                )
    for (dataset, optimizer, comp, window, edges), values in cells.items():
        mean, std = _mean_std(values)
        base = cells.get((dataset, optimizer, "none", 0, edges))
        gap = mean - statistics.fmean(base) if base else float("nan")
        targets = comps if window == 0 else [comp]
        for target in targets:
            out[(dataset, optimizer, target, window, edges)] = {
                "mean": mean,
                "std": std,
                "n": len(values),
                "gap": gap,
            }
    return out


def render_table(results: StudyFile) -> str:
    """The markdown report: one table per dataset × optimizer, then the ablations."""
    summary = summarize(results.records)
    lines = ["# Staleness study", ""]
    study = results.meta.study
    if study:
        lines += [
            f"Held-out accuracy (%), mean ± std over seeds {tuple(study['seeds'])}; in brackets "
            "the gap to the same optimizer's window 0, in points. Window 0 is one run shared "
            "by every compensation (each is the plain update at staleness 0); so are the "
            "`none` runs by a compensation that is the plain update for that optimizer "
            "(`delay-momentum` with momentum-free SGD, `delay-beta1` with SGD). Batches per run, "
            "all edges together (E edges train a 1/E share each): "
            + ", ".join(f"{k} {v}" for k, v in study.get("steps", {}).items())
            + ".",
            "",
        ]
    datasets = sorted({k[0] for k in summary})
    optimizers = [o for o in OPTIMIZERS if any(k[1] == o for k in summary)]
    fleets = sorted({k[4] for k in summary})
    for dataset, optimizer, edges in itertools.product(datasets, optimizers, fleets):
        here = {k: v for k, v in summary.items() if k[:2] == (dataset, optimizer) and k[4] == edges}
        comps = sorted({k[2] for k in here if k[3] > 0}, key=_comp_order)
        if not comps:
            continue
        windows = sorted({k[3] for k in here})
        fleet = "" if edges == 1 else f" · {edges} edges"
        lines += [f"## {dataset} · {optimizer}{fleet}", ""]
        lines.append("| compensation | " + " | ".join(f"W = {w}" for w in windows) + " |")
        lines.append("|---|" + "---|" * len(windows))
        for comp in comps:
            row = [comp]
            for w in windows:
                row.append(_format_cell(here.get((dataset, optimizer, comp, w, edges)), w))
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    lines += _render_ablations(results.ablations)
    return "\n".join(lines).rstrip() + "\n"


def _comp_order(comp: str) -> tuple[int, str]:
    order = list(DEFAULT_COMPENSATIONS)
    return (order.index(comp) if comp in order else len(order), comp)


def _format_cell(cell: Mapping[str, float] | None, window: int) -> str:
    if cell is None:
        return "–"
    text = f"{cell['mean']:.1f} ± {cell['std']:.1f}"
    if window > 0 and not math.isnan(cell["gap"]):
        text += f" ({cell['gap']:+.1f})"
    return text


def _render_ablations(ablations: Sequence[AblationRecord]) -> list[str]:
    if not ablations:
        return []
    lines = ["## Ablation: no forecast (α = 0) against the paper's α", ""]
    groups: dict[tuple[str, int, float], list[ForecastAblation]] = defaultdict(list)
    for r in ablations:
        if isinstance(r, ForecastAblation):
            groups[(r.optimizer, r.window, r.alpha)].append(r)
    lines += [
        "| optimizer | W | α | accuracy (%) | held-out loss | train loss, steps 400–600 → last 200 "
        "| worst train loss after step 500 |",
        "|---|---|---|---|---|---|---|",
    ]
    for (optimizer, window, alpha), rs in sorted(groups.items()):
        acc = _mean_std([100 * r.accuracy for r in rs])
        loss = _mean_std([r.final_loss for r in rs])
        mid, last, worst = zip(*(_train_phases(r) for r in rs), strict=True)
        lines.append(
            f"| {optimizer} | {window} | {alpha} | {acc[0]:.1f} ± {acc[1]:.1f} | "
            f"{loss[0]:.3f} ± {loss[1]:.3f} | {statistics.fmean(mid):.3f} → "
            f"{statistics.fmean(last):.3f} | {max(worst):.3f} |"
        )
    lines += ["", "## Ablation: no reconciliation (R = ∞) against R = 10", ""]
    lines += [
        "| delta codec | deltas lost | R | accuracy (%) | held-out loss | train loss | "
        "loss ratio R=∞ / R=10 | replica drift ‖w_e − w_c‖/‖w_c‖ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rgroups: dict[tuple[str, float, int | None], list[ReconcileAblation]] = defaultdict(list)
    for r in ablations:
        if isinstance(r, ReconcileAblation):
            rgroups[(r.delta_codec, r.delta_loss, r.reconcile_every)].append(r)
    for (codec, lost, reconcile), runs in sorted(
        rgroups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] is None)
    ):
        acc = _mean_std([100 * r.accuracy for r in runs])
        held_out = statistics.fmean(r.final_loss for r in runs)
        train = statistics.fmean(r.train_loss for r in runs)
        ref = rgroups.get((codec, lost, 10))
        ratio = (
            f"{held_out / statistics.fmean(r.final_loss for r in ref):.3f}"
            if reconcile is None and ref
            else ""
        )
        drift = statistics.fmean(r.replica_drift for r in runs)
        lines.append(
            f"| {codec} | {lost:.0%} | {'∞' if reconcile is None else reconcile} | "
            f"{acc[0]:.1f} ± {acc[1]:.1f} | {held_out:.3f} | {train:.3f} | {ratio} | {drift:.2e} |"
        )
    return [*lines, ""]


def _train_phases(record: AblationRecord) -> tuple[float, float, float]:
    """Mean train loss around step 500, over the last 200 steps, and the worst after 500."""
    curve = record.train_curve or [float("nan")]
    steps = record.steps
    every = max(steps // 15, 1)

    def window(lo: int, hi: int) -> list[float]:
        return curve[lo // every : max(hi // every, lo // every + 1)] or curve[-1:]

    mid = statistics.fmean(window(400, 600))
    last = statistics.fmean(window(steps - 200, steps))
    worst = max(window(500, steps))
    return mid, last, worst


def plot_study(results: StudyFile, path: Path) -> None:
    """Accuracy against window per compensation; one panel per dataset × optimizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(results.records)
    summary = {k: v for k, v in summary.items() if k[4] == 1}  # the window axis, one edge
    panels = sorted(
        {(k[0], k[1]) for k in summary}, key=lambda p: (p[0], list(OPTIMIZERS).index(p[1]))
    )
    if not panels:
        return
    cols = len({p[1] for p in panels})
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, (dataset, optimizer) in zip(axes.flat, panels, strict=False):
        comps = sorted({k[2] for k in summary if k[:2] == (dataset, optimizer)}, key=_comp_order)
        for comp in comps:
            points = sorted(
                (k[3], v["mean"], v["std"])
                for k, v in summary.items()
                if k[:3] == (dataset, optimizer, comp)
            )
            ws, means, stds = zip(*points, strict=True)
            ax.errorbar(ws, means, yerr=stds, marker="o", capsize=2, label=comp, linewidth=1.2)
        ax.set_title(f"{dataset} · {optimizer}")
        ax.set_xlabel("window W (staleness in edge updates)")
        ax.set_ylabel("held-out accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8)
    fig.tight_layout(rect=(0, 0.08 if len(labels) > 4 else 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
