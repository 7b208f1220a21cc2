"""``simultrain bench``: the command line of the benchmark (a Typer sub-app).

Imports only typer at module level, so ``simultrain --help`` stays fast; the benchmark, torch
and matplotlib load when the command runs.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["bench_app", "main"]

bench_app = typer.Typer(
    name="bench",
    help="Every mode through the real services over emulated links; report and plots.",
    pretty_exceptions_enable=False,
)


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
            help="Only these suites: systems, accuracy, ablation, compression, window; or fleet "
            "(N edges against one cloud), stragglers (8 edges, 1-2 slowed 5×) or control-plane "
            "(the coordinator under N simulated edges, HTTP only), each alone.",
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
    """Run modes × links × datasets × seeds through the real services; write results."""
    from simultrain.bench.bench import (
        VARIANTS,
        WORKLOADS,
        BenchOptions,
        parse_list,
        run_bench,
    )
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
        from simultrain.bench.report import write_report

        records = json.loads((out / "results.json").read_text())
        meta_path = out / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        typer.echo(str(write_report(records, meta, out, plots=not no_plots)))
        return
    if "control-plane" in (parse_list(suites) or ()):
        if failover:
            _failover(out, coordinator_tree, label)
            return
        _control_plane(out, suites or "", fleet_edges, stores, duration, coordinator_tree, label)
        return
    if {"fleet", "stragglers"} & set(parse_list(suites) or ()):
        _fleet(
            quick,
            out,
            suites or "",
            fleet_edges,
            duration,
            slowdown,
            log_dir,
            round_deadline,
            parse_list(modes, known=MODES),
        )
        return
    try:
        options = BenchOptions(
            out_dir=out,
            quick=quick,
            modes=parse_list(modes, known=MODES),
            links=parse_list(links),
            datasets=parse_list(datasets, known=WORKLOADS),
            seeds=seeds,
            steps=steps,
            variants=parse_list(variants, known=VARIANTS),
            suites=parse_list(
                suites, known=("systems", "accuracy", "ablation", "compression", "window")
            ),
            slowdown=slowdown,
            edge_threads=edge_threads,
            log_dir=log_dir,
            plots=not no_plots,
            append=append,
            command=shlex.join(["simultrain", *sys.argv[1:]]),
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
    failed = sum(1 for r in records if "error" in r)
    typer.echo(f"{len(records) - failed}/{len(records)} cases; report: {out / 'report.md'}")
    if failed:
        raise typer.Exit(1)


def _fleet(
    quick: bool,
    out: Path,
    suites: str,
    fleet_edges: str | None,
    duration: float | None,
    slowdown: float | None,
    log_dir: Path | None,
    round_deadline: float | None,
    modes: tuple[str, ...] | None = None,
) -> None:
    from simultrain.bench.bench import parse_list
    from simultrain.bench.fleet import (
        FULL_EDGE_COUNTS,
        QUICK_EDGE_COUNTS,
        FleetOptions,
        run_fleet,
        run_stragglers,
        straggler_plan,
    )
    from simultrain.shared.errors import SimulTrainError

    names = parse_list(suites)
    if names not in (("fleet",), ("stragglers",)):
        typer.echo("error: the fleet and stragglers suites each run alone", err=True)
        raise typer.Exit(2)
    try:
        counts = (
            tuple(int(n) for n in parse_list(fleet_edges) or ())
            if fleet_edges
            else (QUICK_EDGE_COUNTS if quick else FULL_EDGE_COUNTS)
        )
        options = FleetOptions(
            out_dir=out,
            edge_counts=counts,
            duration_s=duration if duration is not None else (5.0 if quick else 60.0),
            slowdown=slowdown or 1.0,
            log_dir=log_dir,
            command=shlex.join(["simultrain", *sys.argv[1:]]),
        )
        if names == ("stragglers",):
            plan = straggler_plan(options, deadline_s=round_deadline, modes=modes)
            records = run_stragglers(
                [replace(case, evaluate=True) for case in plan], progress=typer.echo
            )
        else:
            records = run_fleet(options, progress=typer.echo)
    except ValueError as exc:
        typer.echo(f"error: --fleet-edges: {exc}", err=True)
        raise typer.Exit(2) from exc
    except SimulTrainError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    failed = [r for r in records if "error" in r or r["errors"] or r["lost_samples"]]
    typer.echo(f"{len(records) - len(failed)}/{len(records)} cases clean; results in {out}")
    if failed:
        raise typer.Exit(1)


def _control_plane(
    out: Path,
    suites: str,
    edges: str | None,
    stores: str | None,
    duration: float | None,
    coordinator_tree: Path | None,
    label: str,
) -> None:
    from simultrain.bench.bench import parse_list
    from simultrain.bench.control_plane import (
        BACKENDS,
        ControlPlaneOptions,
        run_control_plane,
    )
    from simultrain.shared.errors import SimulTrainError

    if parse_list(suites) != ("control-plane",):
        typer.echo("error: the control-plane suite runs alone", err=True)
        raise typer.Exit(2)
    try:
        defaults = ControlPlaneOptions()
        options = ControlPlaneOptions(
            out_dir=out if out != Path("bench/results") else defaults.out_dir,
            edge_counts=tuple(int(n) for n in parse_list(edges) or defaults.edge_counts),
            backends=parse_list(stores, known=tuple(BACKENDS)) or defaults.backends,
            steady_s=duration if duration is not None else defaults.steady_s,
            coordinator_tree=coordinator_tree,
            label=label,
            command=shlex.join(["simultrain", *sys.argv[1:]]),
        )
        records = run_control_plane(options, progress=typer.echo)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except SimulTrainError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    failed = [r for r in records if r.get("error")]
    typer.echo(f"{len(records) - len(failed)}/{len(records)} cases; results in {options.out_dir}")
    if failed:
        raise typer.Exit(1)


def _failover(out: Path, coordinator_tree: Path | None, label: str) -> None:
    from simultrain.bench.failover import FailoverOptions, run_failover

    defaults = FailoverOptions()
    options = FailoverOptions(
        out_dir=out if out != Path("bench/results") else defaults.out_dir,
        coordinator_tree=coordinator_tree,
        label=label,
        command=shlex.join(["simultrain", *sys.argv[1:]]),
    )
    records = run_failover(options, progress=typer.echo)
    if any(r.get("error") for r in records):
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> None:
    """``python -m simultrain.bench [OPTIONS]``."""
    bench_app(args=argv, prog_name="simultrain bench")
