"""In-process screening of how the cloud schedules a fleet (docs/FLEET.md).

``python bench/fleet_screen.py [--grid full|quick] [--datasets imu,mnist] [--fleets 8,32]
[--methods …] [--seeds …] [--render]``: every case through the in-process driver
(`run_in_process`, deterministic, one torch thread), one JSON record per run appended to
``bench/results/fleet_screen.json`` as it finishes (``--resume`` is implicit: a case already
there is not run again), then the tables in ``bench/results/fleet_screen.md``.

Every method of one fleet trains on the same samples: IMU 51 200 (the issue's 1 600 batches of
32), MNIST one epoch of the full 60 000 rounded up to whole batches per edge; ``pooled`` — one
seeded shuffle of all of them — is the reference, and each cell reports the paired gap to it
(mean over the seeds of method − pooled on the same seed) and its standard error.

Credits are modelled: the fleet-wide total in flight is what `FlowController` settles at on a
cloud-bound loopback pipe (`shared/training/flowsim.py`) whose stage times are measured here,
once per dataset, and recorded in the JSON's ``meta``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simultrain.bench.records import FleetScreenRecord
from simultrain.shared.data import load_dataset
from simultrain.shared.protocol import (
    Ack,
    Act,
    Delta,
    EGrad,
    Grad,
    Snap,
    decode_frame,
    encode_frame,
)
from simultrain.shared.training.assembly import Shard, build_cloud, build_edge
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.driver import run_in_process
from simultrain.shared.training.flow import FlowController
from simultrain.shared.training.flowsim import FixedWindow, Pipe, simulate
from simultrain.shared.training.options import Codecs

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "fleet_screen.json"
BATCH = 32
PARTITIONS = {"imu": "groups", "mnist": "label-skew"}
WINDOW = 4
# Every frame still goes through the real encoder and decoder, uncompressed: lz4 is lossless,
# so the numbers are the same (checked: one run each way, equal to the bit), and it costs a
# quarter of a mixed run's time on a shared machine.
LOSSLESS = Codecs(act="raw", grad="raw", delta="raw", egrad="raw")


def total_samples(dataset: str, edges: int) -> int:
    """Samples every method of a fleet trains on: IMU 1 600 batches; MNIST one epoch of the
    full set, rounded up to whole batches per edge (so each edge sees all its batches)."""
    if dataset == "imu":
        return 1600 * BATCH
    per_edge = math.ceil(len(load_dataset(dataset).y_train) / (edges * BATCH))
    return per_edge * edges * BATCH


# --- methods: RunConfig fields on top of the fleet's base ------------------------------
# ``k`` mixes per step; ``credits`` is the modelled fleet-wide total in flight (batches of
# 32; for micro-batches the same samples, so k times as many).
Method = Callable[[int, int], dict[str, Any]]


def _mix(k: int, batch: str = "split") -> Method:
    return lambda edges, credits: {"mode": "simultrain", "mix_edges": k, "mix_batch": batch}


def _plus(*parts: Method) -> Method:
    def merged(edges: int, credits: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for part in parts:
            out.update(part(edges, credits))
        return out

    return merged


def _credits(edges: int, credits: int) -> dict[str, Any]:
    return {"mode": "simultrain", "fleet_in_flight": credits}


def _copies(beta: float) -> Method:
    return lambda edges, credits: {"mode": "simultrain", "edge_copies": True, "beta": beta}


METHODS: dict[str, Method] = {
    "pooled": lambda e, c: {"mode": "centralized", "pooled": True},
    "per-edge": lambda e, c: {"mode": "centralized"},
    "w4": lambda e, c: {"mode": "simultrain"},
    "credits": _credits,
    "mix2": _mix(2),
    "mix4": _mix(4),
    "mix8": _mix(8),
    "mix32": _mix(32),
    "mix4-stack": _mix(4, "stack"),
    "mix4-stack+credits": _plus(_mix(4, "stack"), _credits),
    "mix8-stack": _mix(8, "stack"),
    "mix4+credits": _plus(_mix(4), _credits),
    "mix8+credits": _plus(_mix(8), _credits),
    "mix2+credits": _plus(_mix(2), _credits),
    "copies": _copies(0.9),
    "copies+credits": _plus(_copies(0.9), _credits),
    "copies-b0": _copies(0.0),
    "copies-b0+credits": _plus(_copies(0.0), _credits),
    "copies-b0+mix8": _plus(_copies(0.0), _mix(8)),
    "copies-b0+mix8+credits": _plus(_copies(0.0), _mix(8), _credits),
}


@dataclass(frozen=True)
class Case:
    dataset: str
    edges: int
    method: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.edges}/{self.method}/{self.seed}"

    def config(self, credits: int) -> RunConfig:
        fields = METHODS[self.method](self.edges, credits)
        k = int(fields.get("mix_edges", 1))
        split = k > 1 and fields.get("mix_batch", "split") == "split"
        edge_batch = BATCH // min(k, self.edges) if split else BATCH
        if fields.get("fleet_in_flight") is not None and split:
            fields["fleet_in_flight"] = credits * min(k, self.edges)  # the same samples
        steps = total_samples(self.dataset, self.edges) // (self.edges * edge_batch)
        return RunConfig(
            dataset=self.dataset,
            edges=self.edges,
            codecs=LOSSLESS,
            partition=PARTITIONS[self.dataset],
            batch_size=BATCH,
            window=WINDOW,
            steps=steps,
            seed=self.seed,
            **fields,
        )


def run_one(case: Case, credits: int) -> FleetScreenRecord:
    config = case.config(credits)
    started = time.perf_counter()
    result = run_in_process(config)
    stale = result.staleness
    return FleetScreenRecord(
        dataset=case.dataset,
        edges=case.edges,
        method=case.method,
        seed=case.seed,
        accuracy=round(result.accuracy, 6),
        test_loss=round(result.test_loss, 6),
        samples=result.samples,
        steps_per_edge=int(result.fleet["steps_per_edge"]),
        edge_batch_size=config.mixing().edge_batch_size(config.batch_size, config.edges),
        staleness_mean=float(stale["mean"]),
        staleness_max=int(stale["max"]),
        staleness_samples_mean=float(result.staleness_samples["mean"]),
        staleness_samples_max=int(result.staleness_samples["max"]),
        master_version=result.master_version,
        seconds=round(time.perf_counter() - started, 1),
        config=config.to_mapping(driver=True),
        fleet=result.fleet,
    )


# --- credits: what the controller settles at on the cloud-bound loopback pipe --------------
def measure_pipe(dataset: str, *, reps: int = 40) -> dict[str, float]:
    """Median per-batch seconds of each stage (frames encoded and decoded on the way, as a
    service does) and the bytes of each message, one edge, batch of 32, window 0."""
    data = load_dataset(dataset)
    spec = data.model_spec()
    run = RunConfig(mode="simultrain", dataset=dataset, window=0)
    cloud = build_cloud(run, spec).runtime
    edge = build_edge(run, spec, Shard(data)).runtime
    _, snap = cloud.open_session("e")
    edge.on_snap(decode_frame(encode_frame(snap)))  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, *spec.input_shape)).astype(np.float32)
    y = (np.arange(BATCH) % spec.num_classes).astype(np.int64)
    times: dict[str, list[float]] = {k: [] for k in ("fwd", "step", "bwd", "apply")}
    sizes: dict[str, int] = {}
    for _ in range(reps):
        t0 = time.perf_counter()
        act_bytes = encode_frame(edge.produce(x, y))  # type: ignore[arg-type]
        t1 = time.perf_counter()
        act = decode_frame(act_bytes)
        assert isinstance(act, Act)
        (grad,) = [f for _, f in cloud.on_act("e", act) if isinstance(f, Grad)]
        grad_bytes = encode_frame(grad)
        t2 = time.perf_counter()
        decoded = decode_frame(grad_bytes)
        assert isinstance(decoded, Grad)
        egrad_bytes = encode_frame(edge.on_grad(decoded))
        t3 = time.perf_counter()
        egrad = decode_frame(egrad_bytes)
        assert isinstance(egrad, EGrad)
        down = [encode_frame(f) for _, f in cloud.on_egrad("e", egrad)]
        t4 = time.perf_counter()
        for raw in down:
            frame = decode_frame(raw)
            if isinstance(frame, Delta):
                edge.on_delta(frame)
            elif isinstance(frame, Ack):
                edge.on_ack(frame)
            elif isinstance(frame, Snap):
                edge.on_snap(frame)
        for key, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            times[key].append(seconds)
        sizes = {
            "act": len(act_bytes),
            "grad": len(grad_bytes),
            "egrad": len(egrad_bytes),
            "ack": sum(len(r) for r in down),
        }
    out = {f"{k}_s": statistics.median(v[5:]) for k, v in times.items()}
    out.update({f"{k}_bytes": float(v) for k, v in sizes.items()})
    return out


def loopback_pipe(stages: dict[str, float]) -> Pipe:
    """Loopback: 1 Gbit/s, 0.1 ms round trip, 0.2 ms of per-message work (the socket, the
    event loop) on top of the measured stages."""
    return Pipe(
        edge_forward_s=stages["fwd_s"],
        edge_backward_s=stages["bwd_s"],
        cloud_step_s=stages["step_s"],
        cloud_apply_s=stages["apply_s"],
        act_bytes=stages["act_bytes"],
        grad_bytes=stages["grad_bytes"],
        egrad_bytes=stages["egrad_bytes"],
        ack_bytes=stages["ack_bytes"],
        up_bits_per_s=1e9,
        down_bits_per_s=1e9,
        rtt_s=1e-4,
        overhead_s=2e-4,
    )


def settled_credits(pipe: Pipe, edges: int) -> dict[str, Any]:
    """Run the controller against ``pipe`` with ``edges`` edges; the fleet total it keeps in
    flight (rounded mean over the second half) and, for comparison, the fixed windows."""
    controller = FlowController()
    seconds = 400 * pipe.bottleneck_s(edges)
    auto = simulate(pipe, controller, edges=edges, seconds=seconds)
    return {
        "edges": edges,
        "credits": max(1, round(auto.mean_in_flight)),
        "auto": asdict(auto) | {"targets": auto.targets[-5:]},
        "controller": controller.summary(),
        "bottleneck_s": pipe.bottleneck_s(edges),
    }


# Two reference pipes (tests/core/test_flow.py holds the same): imu-thin on 4G with a
# Pi-class edge, as the services measured it (bench/results/report.md: edge 7 ms, uplink
# 6 ms, cloud 3 ms, downlink 6 ms, 30 ms RTT, ~109 ms batch → ACK), and a cloud-bound fleet
# on loopback (2 ms of cloud work per batch).
THIN_4G = Pipe(0.0035, 0.0035, 0.002, 0.001, 30e3, 30e3, 7.5e3, 7.5e3, 50e6, 50e6, 0.030, 0.0055)
LOOPBACK = Pipe(0.002, 0.002, 0.0015, 0.0005, 30e3, 30e3, 7.5e3, 7.5e3, 1e9, 1e9, 2e-4, 3e-4)
# A cloud slow against its edges (mnist-cnn's stages as measured on a loaded machine): a pipe
# of ~1.4 batches, where a few batches in flight move in convoys through a cloud that serves
# in arrival order.
SLOW_CLOUD = Pipe(0.040, 0.0015, 0.111, 0.001, 380e3, 400e3, 1e3, 2e3, 1e9, 1e9, 1e-4, 2e-4)


def flow_rows() -> list[dict[str, Any]]:
    """Credits against fixed windows on the reference pipes (deterministic, seconds)."""
    rows = []
    for name, pipe, edges, windows, seconds, egrad_first in (
        ("imu-thin 4G, 1 edge", THIN_4G, 1, (4, 8, 16, 32), 20.0, False),
        ("loopback, 8 edges", LOOPBACK, 8, (1, 2, 4), 8.0, False),
        ("loopback, 32 edges", LOOPBACK, 32, (1, 2, 4), 8.0, False),
        ("slow cloud, 8 edges", SLOW_CLOUD, 8, (1, 2, 3), 45.0, False),
        ("slow cloud, 8 edges, EGRADs first", SLOW_CLOUD, 8, (1, 2, 3), 45.0, True),
    ):
        bound = pipe.bottleneck_s(edges)
        policies: list[tuple[str, Any]] = [(f"W {w}", FixedWindow(w)) for w in windows]
        policies.append(("auto", FlowController()))
        for label, policy in policies:
            result = simulate(pipe, policy, edges=edges, seconds=seconds, egrad_first=egrad_first)
            rows.append(
                {
                    "pipe": name,
                    "policy": label,
                    "interval_ms": round(1000 / result.batches_per_s, 2),
                    "bound_ms": round(1000 * bound, 2),
                    "batches_per_s": round(result.batches_per_s, 1),
                    "in_flight": round(result.mean_in_flight, 1),
                    "staleness": round(result.mean_staleness, 1),
                    "round_trip_ms": round(1000 * result.round_trip_s, 1),
                    "pipe_estimate": None
                    if not isinstance(policy, FlowController)
                    else policy.pipe,
                }
            )
    return rows


# --- the grid --------------------------------------------------------------------------
# Phases of (methods, first seed, last seed + 1), run in order, each seed by seed across the
# fleets: the decomposition (pooled → per-edge order → simultrain at window 4) and the
# candidates on every seed; each part of a candidate off in turn (mixing without credits) and
# the other mechanisms in between. A screen stopped early has the same seeds for every method
# of a phase.
CORE = ("pooled", "w4", "credits", "mix4+credits", "per-edge")
ABLATIONS = ("mix4", "copies-b0", "copies", "mix8+credits")
Phase = tuple[tuple[str, ...], int, int]
GRIDS: dict[str, list[Phase]] = {
    "full": [
        (CORE, 0, 2),
        (ABLATIONS, 0, 1),
        (CORE, 2, 3),
        (ABLATIONS, 1, 2),
        (CORE, 3, 5),
        (("mix4-stack+credits", "copies+credits"), 0, 1),
    ],
    "quick": [(("pooled", "w4", "credits", "mix4+credits"), 0, 1)],
}


def cases(grid: str, fleets: list[int], datasets: list[str]) -> list[Case]:
    """The grid's cases in the order they run: phase, seed, fleet, dataset, method."""
    out: list[Case] = []
    for methods, first, last in GRIDS[grid]:
        for seed in range(first, last):
            for edges in fleets:
                for dataset in datasets:
                    out += [Case(dataset, edges, method, seed) for method in methods]
    return list({c.key: c for c in out}.values())  # each once, where it first comes


def load(path: Path) -> dict[str, Any]:
    if path.exists():
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    return {"meta": {"credits": {}, "stages": {}}, "records": []}


def save(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def credits_for(data: dict[str, Any], dataset: str, edges: int) -> int:
    """The modelled total for (dataset, fleet): measured once, then read from the JSON."""
    meta = data["meta"]
    key = f"{dataset}/{edges}"
    if key not in meta["credits"]:
        if dataset not in meta["stages"]:
            meta["stages"][dataset] = measure_pipe(dataset)
        meta["credits"][key] = settled_credits(loopback_pipe(meta["stages"][dataset]), edges)
    return int(meta["credits"][key]["credits"])


def _key(record: dict[str, Any]) -> str:
    return f"{record['dataset']}/{record['edges']}/{record['method']}/{record['seed']}"


TARGETS = {8: 0.5, 32: 1.0}  # points below pooled a fleet may be (docs/FLEET.md)


def gap_of(runs: dict[int, dict[str, Any]], pooled: dict[int, float]) -> tuple[float, float, int]:
    """Mean paired gap to pooled in points, its standard error, and the seeds both have."""
    gaps = [100 * (r["accuracy"] - pooled[s]) for s, r in runs.items() if s in pooled]
    if not gaps:
        return float("nan"), float("nan"), 0
    se = statistics.stdev(gaps) / math.sqrt(len(gaps)) if len(gaps) > 1 else float("nan")
    return statistics.mean(gaps), se, len(gaps)


def targets_table(cells: dict[tuple[str, int], dict[str, dict[int, dict[str, Any]]]]) -> list[str]:
    """Each method against the targets, per fleet, and whether it holds on every fleet."""
    fleets = sorted(cells)
    lines = [
        "## Targets",
        "",
        "Gap to pooled (points, mean over seeds ± standard error, seeds); the target holds "
        "when the mean gap is no lower than −0.5 (8 edges) or −1 (32 edges).",
        "",
        "| method | " + " | ".join(f"{d} · {e}" for d, e in fleets) + " | holds everywhere |",
        "|---|" + "---|" * (len(fleets) + 1),
    ]
    for method in METHODS:
        if method == "pooled" or not any(method in cells[f] for f in fleets):
            continue
        row, everywhere = [], True
        for dataset, edges in fleets:
            pooled = {s: r["accuracy"] for s, r in cells[(dataset, edges)]["pooled"].items()}
            runs = cells[(dataset, edges)].get(method)
            if not runs:
                row.append("–")
                everywhere = False
                continue
            gap, se, n = gap_of(runs, pooled)
            holds = gap >= -TARGETS[edges]
            everywhere = everywhere and holds
            se_text = "–" if math.isnan(se) else f"{se:.1f}"
            row.append(f"{gap:+.1f} ± {se_text} ({n}){'' if holds else ' ✗'}")
        lines.append(
            f"| {method} | " + " | ".join(row) + f" | {'**yes**' if everywhere else 'no'} |"
        )
    return [*lines, ""]


def render(data: dict[str, Any]) -> str:
    records = data["records"]
    cells: dict[tuple[str, int], dict[str, dict[int, dict[str, Any]]]] = {}
    for r in records:
        cells.setdefault((r["dataset"], r["edges"]), {}).setdefault(r["method"], {})[r["seed"]] = r
    lines = [
        "# The fleet's scheduling, screened in-process",
        "",
        "Produced by `python bench/fleet_screen.py` (bench/fleet_screen.py); every run in",
        "`fleet_screen.json`. Held-out accuracy (%), mean over seeds; gap: mean over seeds of",
        "(method − pooled on the same seed), points, ± its standard error. Staleness: edge-stage",
        "updates a gradient missed, and samples applied meanwhile (mean over runs).",
        "Credits: the fleet-wide total in flight the controller settles at on a cloud-bound",
        "loopback pipe (batches of 32; for micro-batches the same samples).",
        "",
    ]
    if all("pooled" in methods for methods in cells.values()):
        lines += targets_table(cells)
    flow = data["meta"].get("flow", [])
    if flow:
        lines += [
            "## Credits against fixed windows (shared/training/flowsim.py)",
            "",
            "| pipe | policy | interval (ms) | bound (ms) | ÷ bound | in flight | staleness | "
            "batch → ACK (ms) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in flow:
            lines.append(
                f"| {row['pipe']} | {row['policy']} | {row['interval_ms']} | {row['bound_ms']} "
                f"| {row['interval_ms'] / row['bound_ms']:.2f} | {row['in_flight']} | "
                f"{row['staleness']} | {row['round_trip_ms']} |"
            )
        lines.append("")
    for (dataset, edges), methods in sorted(cells.items()):
        credits = data["meta"]["credits"].get(f"{dataset}/{edges}", {}).get("credits", "–")
        pooled = {s: r["accuracy"] for s, r in methods.get("pooled", {}).items()}
        lines += [
            f"## {dataset} · {edges} edges (credits: {credits} batches in flight)",
            "",
            "| method | seeds | accuracy | gap to pooled | ± | staleness (updates) | "
            "staleness (samples) | edge batch | seconds/run |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for method in METHODS:
            runs = methods.get(method)
            if not runs:
                continue
            acc = [100 * r["accuracy"] for r in runs.values()]
            gap, se, _ = gap_of(runs, pooled)
            rs = list(runs.values())
            lines.append(
                f"| {method} | {len(rs)} | {statistics.mean(acc):.1f} | "
                f"{'–' if method == 'pooled' else f'{gap:+.2f}'} | "
                f"{'–' if method == 'pooled' or math.isnan(se) else f'{se:.2f}'} | "
                f"{statistics.mean(r['staleness_mean'] for r in rs):.1f} | "
                f"{statistics.mean(r['staleness_samples_mean'] for r in rs):.0f} | "
                f"{rs[0]['edge_batch_size']} | "
                f"{statistics.mean(r['seconds'] for r in rs):.0f} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", default="full", choices=sorted(GRIDS))
    parser.add_argument("--datasets", default="imu,mnist")
    parser.add_argument("--fleets", default="8,32")
    parser.add_argument("--methods", default="", help="comma-separated (default: the grid's)")
    parser.add_argument("--seeds", default="", help="comma-separated (default: the grid's)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--render", action="store_true", help="only render the tables")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="*",
        default=[],
        help="other result files (runs split across processes) whose records join --out",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = load(args.out)
    for other in args.merge:
        extra = load(other)
        have = {_key(r) for r in data["records"]}
        data["records"] += [r for r in extra["records"] if _key(r) not in have]
        for part in ("credits", "stages"):
            data["meta"][part] = {**extra["meta"][part], **data["meta"][part]}
        save(args.out, data)
    if not args.render:
        done = {_key(r) for r in data["records"]}
        todo = cases(args.grid, [int(e) for e in args.fleets.split(",")], args.datasets.split(","))
        if args.methods:
            todo = [c for c in todo if c.method in args.methods.split(",")]
        if args.seeds:
            todo = [c for c in todo if str(c.seed) in args.seeds.split(",")]
        for case in todo:
            if case.key in done:
                continue
            credits = credits_for(data, case.dataset, case.edges)
            record = run_one(case, credits)
            data["records"].append(record.model_dump(mode="json"))
            done.add(case.key)
            save(args.out, data)
            print(
                f"{case.key}: {100 * record.accuracy:.2f} % staleness {record.staleness_mean} "
                f"/ {record.staleness_samples_mean} samples, {record.seconds} s",
                flush=True,
            )
    data["meta"]["flow"] = flow_rows()
    save(args.out, data)
    args.out.with_suffix(".md").write_text(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
