"""The ``simultrain`` command: run a service, the demo, the benchmark and the other
experiments, the link emulator.

Every service option is also an environment variable (docs/CONFIGURATION.md); the flags
here are the ones people type most. Services are imported lazily, so ``simultrain edge`` on a
Pi never imports FastAPI.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="simultrain",
    help="Pipelined split training across an edge device and a cloud service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

MODES_HELP = (
    "centralized, syncsgd, split-sync, fedavg, simultrain, simultrain-noforecast, "
    "simultrain-noreconcile, synthetic, synthetic-nolocal"
)


def _env(prefix: str, **values: object) -> None:
    """Pass CLI flags to a service's settings through its environment variables."""
    for key, value in values.items():
        if value is not None:
            os.environ[f"{prefix}{key.upper()}"] = str(value)


@app.command()
def coordinator(
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (0: any free port).")] = None,
    db: Annotated[str | None, typer.Option(help="SQLite file (:memory: for none).")] = None,
) -> None:
    """Run the coordinator (registry, versions, schedule, health)."""
    _env("SIMULTRAIN_COORDINATOR_", host=host, port=port, db_path=db)
    from simultrain.coordinator.__main__ import main as coordinator_main

    raise typer.Exit(coordinator_main())


@app.command()
def cloud(
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (0: any free port).")] = None,
    coordinator_url: Annotated[str | None, typer.Option(help="Coordinator base URL.")] = None,
    public_url: Annotated[
        str | None, typer.Option(help="ws:// URL edges use to reach this cloud.")
    ] = None,
) -> None:
    """Run the cloud service (master weights, one WebSocket session per edge)."""
    _env(
        "SIMULTRAIN_CLOUD_",
        host=host,
        port=port,
        coordinator_url=coordinator_url,
        public_url=public_url,
    )
    from simultrain.cloud.__main__ import main as cloud_main

    raise typer.Exit(cloud_main())


@app.command()
def edge(
    coordinator_url: Annotated[str | None, typer.Option(help="Coordinator base URL.")] = None,
    cloud_url: Annotated[str | None, typer.Option(help="Cloud ws:// URL (no coordinator).")] = None,
    shard: Annotated[
        str | None, typer.Option(help="INDEX/COUNT of the data this edge holds.")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Batches to train (0: forever).")] = None,
    dataset: Annotated[str | None, typer.Option(help="imu, mnist, video or npz:PATH.")] = None,
) -> None:
    """Run the edge agent (streams local data through the edge stage)."""
    index = count = None
    if shard:
        index, _, count = shard.partition("/")
    _env(
        "SIMULTRAIN_EDGE_",
        coordinator_url=coordinator_url,
        cloud_url=cloud_url,
        shard_index=index,
        shard_count=count,
        steps=steps,
        dataset=dataset,
    )
    from simultrain.edge.__main__ import main as edge_main

    raise typer.Exit(edge_main())


@app.command()
def netem(
    upstream: Annotated[str, typer.Option(help="HOST:PORT to forward to (the cloud).")],
    listen: Annotated[str, typer.Option(help="HOST:PORT to listen on.")] = "127.0.0.1:0",
    profile: Annotated[str, typer.Option(help="4g, 5g, lan, none or a custom spec.")] = "4g",
    seed: Annotated[int, typer.Option(help="Seed for jitter and loss.")] = 0,
) -> None:
    """Run the user-space link emulator between edges and a cloud."""
    listen_host, _, listen_port = listen.rpartition(":")
    up_host, _, up_port = upstream.rpartition(":")
    _env(
        "SIMULTRAIN_NETEM_",
        listen_host=listen_host,
        listen_port=listen_port,
        upstream_host=up_host,
        upstream_port=up_port,
        profile=profile,
        seed=seed,
    )
    from simultrain.netem.service import run
    from simultrain.netem.settings import NetemSettings

    run(NetemSettings())


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_like_ctrl_c() -> None:
    """SIGTERM (`kill`, a supervisor) and SIGINT stop the demo as Ctrl-C does: every process
    it started is stopped before it exits. SIGINT is taken back even where the shell that
    started the demo in the background left it ignored."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)


@app.command()
def demo(
    dataset: Annotated[str | None, typer.Option(help="imu, mnist, video or npz:PATH.")] = None,
    mode: Annotated[str | None, typer.Option(help=MODES_HELP)] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Split model id (default: the dataset's own; e.g. imu-thin), or your own "
            "as package.module:factory."
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Batches per edge.")] = None,
    edges: Annotated[int | None, typer.Option(help="Edge processes (each a data shard).")] = None,
    partition: Annotated[
        str | None, typer.Option(help="How data is dealt to edges: auto, groups, iid, label-skew.")
    ] = None,
    window: Annotated[
        str | None,
        typer.Option(help="In-flight window W (staleness bound), or auto: the cloud's credits."),
    ] = None,
    compensation: Annotated[
        str | None,
        typer.Option(
            help="Staleness compensation chain, e.g. delay-beta1+forecast, or forecast (the "
            "paper's)."
        ),
    ] = None,
    alpha: Annotated[
        float | None,
        typer.Option(help="Forecast coefficient α (needs a forecast part; 0: off)."),
    ] = None,
    beta: Annotated[float | None, typer.Option(help="Reconciliation weight β.")] = None,
    reconcile_every: Annotated[
        int | None, typer.Option("--reconcile-every", "-R", help="R (0: never).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed for data order and initialisation.")
    ] = None,
    link: Annotated[
        str | None, typer.Option(help="Emulated link: 4g, 5g, lan (default: none).")
    ] = None,
    pooled: Annotated[
        bool,
        typer.Option(
            "--pooled",
            help="The fleet's reference (mode centralized): one edge streams all the edges' "
            "data for steps × edges batches.",
        ),
    ] = False,
    mix_edges: Annotated[
        int | None, typer.Option(help="Edges the cloud mixes into each step (docs/FLEET.md).")
    ] = None,
    mix_batch: Annotated[
        str | None, typer.Option(help="A mixed step's size: split or stack.")
    ] = None,
    edge_copies: Annotated[
        bool, typer.Option("--edge-copies", help="Per-edge edge-stage copies (SplitFed).")
    ] = False,
    fleet_in_flight: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="A fixed total of batches in flight fleet-wide, granted as credits instead "
            "of the cloud's estimate of the pipe (docs/FLEET.md).",
        ),
    ] = None,
    pace_lead: Annotated[
        str | None,
        typer.Option(
            help="Batches an edge may run ahead of the fleet's slowest before the cloud holds "
            "its ACKs, or off (docs/FLEET.md).",
        ),
    ] = None,
    edge_slowdown: Annotated[float, typer.Option(help="Edge CPU time dilation factor k.")] = 1.0,
    eval_every: Annotated[
        float,
        typer.Option(
            min=0, help="Seconds between held-out evaluations while training (0: only at the end)."
        ),
    ] = 3.0,
    json_output: Annotated[
        bool, typer.Option("--json", help="Last stdout line: one JSON object.")
    ] = False,
    log_dir: Annotated[Path | None, typer.Option(help="Keep each service's log here.")] = None,
) -> None:
    """Coordinator, cloud and edge as real processes on 127.0.0.1; train; evaluate.

    A run flag left out takes the run configuration's default. Long because each flag is
    declared in the signature (typer's way): the body itself is a dozen lines.
    """
    from simultrain.demo import DemoOptions, run_demo
    from simultrain.shared.errors import SimulTrainError
    from simultrain.shared.training.config import RunConfig

    given = {
        "mode": mode or ("centralized" if pooled else None),  # only centralized training pools
        "dataset": dataset,
        "model_id": model,
        "steps": steps,
        "edges": edges,
        "window": window,
        "alpha": alpha,
        "compensation": compensation,
        "beta": beta,
        "reconcile_every": reconcile_every,  # 0 = never
        "seed": seed,
        "partition": partition,
        "pooled": pooled or None,
        "mix_edges": mix_edges,
        "mix_batch": mix_batch,
        "edge_copies": edge_copies or None,
        "fleet_in_flight": fleet_in_flight,
        "pace_lead": pace_lead,
    }
    _stop_like_ctrl_c()
    try:
        keys = {key.name: key for key in RunConfig.declaration()}
        # A number or a word (`auto`, `off`), read as the run key reads its text.
        for name, text in (("window", window), ("pace_lead", pace_lead)):
            if text is not None:
                given[name] = keys[name].parse(text)
        run = RunConfig.from_mapping({k: v for k, v in given.items() if v is not None})
        if model is not None:
            # Refuse a model that does not exist or does not take the dataset's samples
            # before anything starts (the cloud would fail at start-up).
            from simultrain.shared.data import load_dataset

            load_dataset(run.dataset).model_spec(model)
        run_demo(
            DemoOptions(
                run=run,
                steps=run.steps,
                edges=run.edges,
                json_output=json_output,
                log_dir=log_dir,
                link_profile=link,
                edge_slowdown=edge_slowdown,
                eval_every_s=eval_every,
            )
        )
    except SimulTrainError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        typer.echo("interrupted: every service stopped", err=True)
        raise typer.Exit(130) from None


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def conformance(ctx: typer.Context) -> None:
    """The wire protocol's edge cases, run against an edge client; see --help."""
    from simultrain.conformance.kit import main as conformance_main

    raise typer.Exit(conformance_main(list(ctx.args)))


def _add_bench() -> None:
    """``simultrain bench`` (a Typer sub-app that imports only typer until it runs) and the
    other experiments' commands (services/bench/cli.py)."""
    from simultrain.bench.cli import bench_app, fleet_parity, replicas, study

    app.add_typer(bench_app, name="bench")
    app.command()(study)
    app.command(name="fleet-parity")(fleet_parity)
    app.command()(replicas)


_add_bench()


def main() -> None:
    # A user's model (``--model package.module:factory``) imports from the working
    # directory, as under ``python -m`` and as uvicorn's ``--app-dir`` default does; the
    # console script alone would put only its own bin folder on sys.path.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    app()


if __name__ == "__main__":
    main()
