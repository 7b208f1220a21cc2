"""The experiments' command lines: ``simultrain bench`` (a Typer sub-app), ``simultrain study``,
``simultrain fleet-parity`` and ``simultrain replicas`` (commands the main app adds).

Imports only typer at module level, so ``simultrain --help`` stays fast; the experiments,
torch and matplotlib load when a command runs. Every experiment runs through
:func:`simultrain.bench.harness.run`; a command exits 1 when a case failed or was not clean.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from simultrain.bench.suites import SUITES

if TYPE_CHECKING:
    from simultrain.bench.harness import Experiment, Outcome

__all__ = ["bench_app", "fleet_parity", "main", "replicas", "study"]

# The suites of the plan (bench.py); the others run alone (suites.py).
PLAN_SUITES = ("systems", "accuracy", "ablation", "compression", "window")

bench_app = typer.Typer(
    name="bench",
    help="Every mode through the real services over emulated links; report and plots.",
    pretty_exceptions_enable=False,
)


def _command() -> str:
    return shlex.join(["simultrain", *sys.argv[1:]])


def _names(text: str | None) -> tuple[str, ...] | None:
    """``"a,b"`` → ``("a", "b")``."""
    if text is None:
        return None
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _ints(text: str | None, option: str) -> tuple[int, ...] | None:
    names = _names(text)
    if names is None:
        return None
    try:
        return tuple(int(n) for n in names)
    except ValueError:
        raise typer.BadParameter(
            f"whole numbers, comma-separated: {text!r}", param_hint=option
        ) from None


def _finish(experiment: Experiment[Any, Any], outcome: Outcome[Any], where: Path) -> None:
    clean = sum(1 for r in outcome.records if experiment.clean(r))
    typer.echo(f"{clean}/{len(outcome.records)} cases clean; results in {where}")
    if outcome.failed or clean < len(outcome.records):
        raise typer.Exit(1)


@bench_app.callback(invoke_without_command=True)
def bench(
    quick: Annotated[bool, typer.Option(help="The small plan: under five minutes.")] = False,
    calibrate: Annotated[
        bool, typer.Option("--calibrate", help="Print the edge CPU calibration and exit.")
    ] = False,
    out: Annotated[Path, typer.Option(help="Where results, report and plots go.")] = Path(
        "bench/results"
    ),
    modes: Annotated[str | None, typer.Option(help="Only these modes (comma-separated).")] = None,
    links: Annotated[
        str | None, typer.Option(help="Links for every suite: 4g, 5g, lan, loopback or a spec.")
    ] = None,
    datasets: Annotated[
        str | None,
        typer.Option(help="Workloads: imu, imu-thin, mnist, video (comma-separated)."),
    ] = None,
    seeds: Annotated[int | None, typer.Option(help="Seeds 0..N-1 for every suite.")] = None,
    steps: Annotated[int | None, typer.Option(help="Batches per run for every suite.")] = None,
    variants: Annotated[
        str | None, typer.Option(help="Codec variants of the compression suite.")
    ] = None,
    suites: Annotated[
        str | None,
        typer.Option(
            "--suites",
            "--suite",
            help=f"Only these suites: {', '.join(PLAN_SUITES)}; or one that runs alone: "
            + "; ".join(f"{name} ({what})" for name, (_, what) in SUITES.items())
            + ".",
        ),
    ] = None,
    fleet_edges: Annotated[
        str | None,
        typer.Option(
            help="Fleet sizes of the fleet suite (default 1,8,32,64) or of the control-plane "
            "suite (default 100,1000,10000)."
        ),
    ] = None,
    stores: Annotated[
        str | None,
        typer.Option(help="Control plane: sqlite, postgres-1, postgres-2 (coordinator replicas)."),
    ] = None,
    coordinator_tree: Annotated[
        Path | None,
        typer.Option(help="Control plane: run the coordinator from this checkout (a baseline)."),
    ] = None,
    label: Annotated[str, typer.Option(help="Control plane: a label for the records.")] = "",
    failover: Annotated[
        bool,
        typer.Option(
            "--failover",
            help="Control plane: kill a cloud under real streaming edges and time the move.",
        ),
    ] = False,
    duration: Annotated[
        float | None,
        typer.Option(help="Fleet/stragglers: training seconds per case (default 60)."),
    ] = None,
    round_deadline: Annotated[
        float | None,
        typer.Option(
            help="Stragglers: the FedAvg round deadline, seconds (default: 1.5× the measured "
            "round without stragglers)."
        ),
    ] = None,
    slowdown: Annotated[
        float | None, typer.Option(help="Edge time dilation k (default: calibrate now).")
    ] = None,
    edge_threads: Annotated[int, typer.Option(help="Torch threads of the edge.")] = 1,
    log_dir: Annotated[Path | None, typer.Option(help="Keep every service's log here.")] = None,
    report_only: Annotated[
        bool, typer.Option(help="Rebuild report and plots from OUT/results.json.")
    ] = False,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Skip the PNG plots.")] = False,
    append: Annotated[
        bool, typer.Option("--append", help="Add to OUT/results.json instead of replacing it.")
    ] = False,
) -> None:
    """Run modes × links × datasets × seeds through the real services; write results.

    Long because the command has many options, a parameter each; the work is elsewhere."""
    from simultrain.bench.bench import VARIANTS, WORKLOADS, BenchOptions, parse_list, run_bench
    from simultrain.bench.calibrate import calibrate as measure
    from simultrain.shared.errors import SimulTrainError
    from simultrain.shared.training.schedule import MODES

    if calibrate:
        result = measure(threads=edge_threads)
        typer.echo(
            f"ResNet-18 forward (batch 1, 224×224, {result.threads} thread(s)): "
            f"{result.forward_ms:.1f} ms, fastest of {result.repeats} "
            f"(median {result.forward_ms_median:.1f} ms); Raspberry Pi 4: "
            f"{result.reference_ms:.0f} ms → edge slowdown k = {result.slowdown:.2f}"
        )
        typer.echo(json.dumps(result.as_dict()))
        return
    if report_only:
        from simultrain.bench.records import BenchMeta, BenchResults
        from simultrain.bench.report import write_report

        records = BenchResults.read(out / "results.json").records
        meta = BenchMeta.model_validate_json((out / "meta.json").read_bytes())
        typer.echo(str(write_report(records, meta, out, plots=not no_plots)))
        return
    names = _names(suites) or ()
    if failover and names == ("control-plane",):
        names = ("control-plane-failover",)
    alone = [name for name in names if name in SUITES]
    try:
        if alone:
            _suite_alone(
                names,
                out=out,
                quick=quick,
                modes=parse_list(modes, known=MODES),
                fleet_edges=fleet_edges,
                duration=duration,
                round_deadline=round_deadline,
                slowdown=slowdown,
                log_dir=log_dir,
                stores=stores,
                coordinator_tree=coordinator_tree,
                label=label,
            )
            return
        options = BenchOptions(
            out_dir=out,
            quick=quick,
            modes=parse_list(modes, known=MODES),
            links=parse_list(links),
            datasets=parse_list(datasets, known=WORKLOADS),
            seeds=seeds,
            steps=steps,
            variants=parse_list(variants, known=VARIANTS),
            suites=parse_list(suites, known=PLAN_SUITES),
            slowdown=slowdown,
            edge_threads=edge_threads,
            log_dir=log_dir,
            plots=not no_plots,
            append=append,
            command=_command(),
        )
        records, _ = run_bench(options)
    except SimulTrainError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        typer.echo(
            "interrupted: every service stopped; results.json has the finished cases", err=True
        )
        raise typer.Exit(130) from None
    from simultrain.bench.records import BenchFailure

    failed = sum(1 for r in records if isinstance(r, BenchFailure))
    typer.echo(f"{len(records) - failed}/{len(records)} cases; report: {out / 'report.md'}")
    if failed:
        raise typer.Exit(1)


def _suite_alone(
    names: tuple[str, ...],
    *,
    out: Path,
    quick: bool,
    modes: tuple[str, ...] | None,
    fleet_edges: str | None,
    duration: float | None,
    round_deadline: float | None,
    slowdown: float | None,
    log_dir: Path | None,
    stores: str | None = None,
    coordinator_tree: Path | None = None,
    label: str = "",
) -> None:
    """A suite of :data:`SUITES`: it runs alone, through the harness."""
    from simultrain.bench.harness import Lines, SuiteOptions, run, suite

    if len(names) != 1:
        typer.echo(f"error: the {', '.join(sorted(SUITES))} suites each run alone", err=True)
        raise typer.Exit(2)
    options = SuiteOptions(
        out_dir=out,
        quick=quick,
        modes=modes,
        edge_counts=_ints(fleet_edges, "--fleet-edges"),
        duration_s=duration,
        round_deadline_s=round_deadline,
        slowdown=slowdown,
        log_dir=log_dir,
        stores=_names(stores),
        coordinator_tree=coordinator_tree,
        label=label,
        command=_command(),
    )
    out.mkdir(parents=True, exist_ok=True)
    experiment = suite(names[0])(options)
    _finish(experiment, run(experiment, progress=Lines(typer.echo)), out)


def study(
    tiny: Annotated[bool, typer.Option("--tiny", help="A seconds-long configuration.")] = False,
    out_dir: Annotated[Path, typer.Option(help="Where staleness.json, .md, .png go.")] = Path(
        "bench/results"
    ),
    datasets: Annotated[str | None, typer.Option(help="imu, mnist (comma-separated).")] = None,
    compensations: Annotated[
        str | None, typer.Option(help="Compensation chains (comma-separated).")
    ] = None,
    optimizers: Annotated[
        str | None, typer.Option(help="Of sgd, momentum, adam (comma-separated).")
    ] = None,
    windows: Annotated[str | None, typer.Option(help="Windows W, e.g. 0,2,4,8.")] = None,
    edges: Annotated[
        str | None, typer.Option(help="Fleet sizes, e.g. 1,8,32 (each trains steps/E batches).")
    ] = None,
    seeds: Annotated[str | None, typer.Option(help="Seeds, e.g. 0,1,2.")] = None,
    steps: Annotated[
        str | None, typer.Option(help="Batches per dataset, e.g. imu=1500,mnist=600.")
    ] = None,
    no_ablations: Annotated[
        bool, typer.Option("--no-ablations", help="Only the grid, not the paper's ablations.")
    ] = False,
    ablation_seeds: Annotated[str | None, typer.Option(help="Seeds of the ablations.")] = None,
    workers: Annotated[int, typer.Option(help="Processes, one torch thread each.")] = 1,
    resume: Annotated[
        bool, typer.Option("--resume", help="Skip runs already in the JSON.")
    ] = False,
) -> None:
    """Staleness compensation study: compensation × optimizer × window, in-process."""
    from dataclasses import replace

    from simultrain.bench.harness import Lines
    from simultrain.bench.study import OPTIMIZERS, StudyConfig, run_study

    config = StudyConfig.tiny() if tiny else StudyConfig()
    overrides: dict[str, Any] = {}
    for name, value in (
        ("datasets", _names(datasets)),
        ("compensations", _names(compensations)),
        ("optimizers", _names(optimizers)),
        ("windows", _ints(windows, "--windows")),
        ("edges", _ints(edges, "--edges")),
        ("seeds", _ints(seeds, "--seeds")),
        ("ablation_seeds", _ints(ablation_seeds, "--ablation-seeds")),
    ):
        if value is not None:
            overrides[name] = value
    if steps:
        try:
            given = {k: int(v) for k, v in (s.split("=") for s in _names(steps) or ())}
        except ValueError:
            raise typer.BadParameter(
                f"DATASET=N, comma-separated: {steps!r}", param_hint="--steps"
            ) from None
        overrides["steps"] = {**config.steps, **given}
    if no_ablations:
        overrides["ablations"] = False
    unknown = set(overrides.get("optimizers", ())) - set(OPTIMIZERS)
    if unknown:
        raise typer.BadParameter(
            f"unknown optimizer(s) {sorted(unknown)}; choose from {list(OPTIMIZERS)}",
            param_hint="--optimizers",
        )
    run_study(
        replace(config, **overrides),
        out_dir,
        workers=workers,
        resume=resume,
        progress=Lines(typer.echo),
    )
    typer.echo(f"wrote {out_dir}/staleness.json, .md and .png")


def fleet_parity(
    out_dir: Annotated[Path, typer.Option(help="Where fleet_parity.json and .md go.")] = Path(
        "bench/results"
    ),
    datasets: Annotated[str, typer.Option(help="imu, mnist (comma-separated).")] = "imu,mnist",
    methods: Annotated[
        str,
        typer.Option(
            help="pooled, centralized, default, mix4, auto, mix4+auto, credits4, "
            "mix4+credits4, auto+pace, credits4+pace, mix4+credits4+pace, or compensation "
            "chains (comma-separated)."
        ),
    ] = "centralized,default,delay-beta1+fleet-batch",
    edges: Annotated[str, typer.Option(help="Fleet sizes (comma-separated).")] = "8",
    window: Annotated[int, typer.Option(help="In-flight window W.")] = 4,
    seeds: Annotated[str, typer.Option(help="Seeds (comma-separated).")] = "0,1,2",
    workers: Annotated[int, typer.Option(help="Runs at once.")] = 2,
    timeout: Annotated[float, typer.Option(help="Seconds per run.")] = 1800.0,
    resume: Annotated[
        bool, typer.Option("--resume", help="Skip runs already in the JSON.")
    ] = False,
    epoch: Annotated[
        bool,
        typer.Option(
            "--epoch",
            help="At least one epoch of the training split (MNIST: 1 875 batches, not 600).",
        ),
    ] = False,
    targets: Annotated[
        bool,
        typer.Option(
            "--targets",
            help="Run the committed grid (every fleet, method and seed of the results file) "
            "instead of --datasets/--edges/--window/--methods/--seeds.",
        ),
    ] = False,
) -> None:
    """A fleet against centralized training on the same samples, through the services."""
    from simultrain.bench.fleet_parity import TARGET_GRID, TOTAL_BATCHES, FleetParity
    from simultrain.bench.harness import Lines, run

    names = _names(datasets) or ()
    unknown = set(names) - set(TOTAL_BATCHES)
    if unknown:
        raise typer.BadParameter(
            f"unknown dataset(s) {sorted(unknown)}; choose from {list(TOTAL_BATCHES)}",
            param_hint="--datasets",
        )
    grid = (
        TARGET_GRID
        if targets
        else tuple(
            (names, size, window, _names(methods) or (), _ints(seeds, "--seeds") or ())
            for size in _ints(edges, "--edges") or ()
        )
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    experiment = FleetParity(out_dir, grid, timeout_s=timeout, command=_command(), epoch=epoch)
    outcome = run(
        experiment,
        earlier="resume" if resume else "replace",
        workers=workers,
        progress=Lines(typer.echo),
    )
    typer.echo(f"{outcome.skipped} run(s) kept from {out_dir / 'fleet_parity.json'}")
    _finish(experiment, outcome, out_dir)


def replicas(
    seeds: Annotated[str, typer.Option(help="Seeds (comma-separated).")] = "0",
    cases: Annotated[
        str | None, typer.Option(help="Cases (comma-separated; default: all of them).")
    ] = None,
    steps: Annotated[int, typer.Option(help="Batches per edge.")] = 300,
    jobs: Annotated[int, typer.Option(help="Cases run in parallel (processes).")] = 1,
    out: Annotated[Path, typer.Option(help="Where replicas-inprocess.json and .md go.")] = Path(
        "bench/results"
    ),
    resume: Annotated[
        bool, typer.Option("--resume", help="Skip runs already in the JSON.")
    ] = False,
) -> None:
    """Cloud replicas in one process: the sync scheme's arithmetic, deterministic."""
    from simultrain.bench.harness import Lines, run
    from simultrain.bench.replicas_inprocess import CASES, Replicas

    names = _names(cases) or tuple(CASES)
    unknown = [c for c in names if c not in CASES]
    if unknown:
        raise typer.BadParameter(
            f"unknown case(s) {unknown}; known: {', '.join(CASES)}", param_hint="--cases"
        )
    out.mkdir(parents=True, exist_ok=True)
    experiment = Replicas(names, _ints(seeds, "--seeds") or (), steps, out, command=_command())
    outcome = run(
        experiment,
        earlier="resume" if resume else "replace",
        workers=jobs,
        progress=Lines(typer.echo),
    )
    _finish(experiment, outcome, out)


def main(argv: list[str] | None = None) -> None:
    """``python -m simultrain.bench [OPTIONS]``."""
    bench_app(args=argv, prog_name="simultrain bench")
