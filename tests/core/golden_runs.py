"""Golden in-process runs: what the training core computes, pinned bit for bit.

Each case is a short deterministic run of the in-process driver (`run_in_process`): every
frame through the real encoder and decoder, a fixed event order, one torch thread. Its
digest holds the final held-out accuracy and loss, a SHA-256 of the master's weights (both
stages, every buffer), of each edge's replica, the version counters, the staleness record and
the bytes on the wire. A refactoring of the runtimes, the master, the compensation or the
assembly must leave every digest as it is (tests/core/test_golden_runs.py replays them).

Re-record only when a change of behaviour is intended, and say so in the commit:
``python -m tests.core.golden_runs --write``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.driver import run_in_process

GOLDEN = Path(__file__).with_name("golden_runs.json")

_SGD_MOMENTUM = {"optimizer_name": "sgd", "optimizer_lr": 0.01, "optimizer_momentum": 0.9}
_SGD = {"optimizer_name": "sgd", "optimizer_lr": 0.05}

CASES: dict[str, dict[str, Any]] = {
    # One edge, the run defaults (Adam, delay-beta1), lockstep and pipelined.
    "imu-1edge-w0": {"window": 0, "steps": 16},
    "imu-1edge-w4": {"window": 4, "steps": 16},
    "imu-8edges-w4": {"edges": 8, "window": 4, "steps": 8},
    "imu-3edges-w2-iid": {"edges": 3, "window": 2, "steps": 10, "partition": "iid"},
    # Every compensation part, alone, at window 4 (SGD with momentum where a part acts on it).
    **{
        f"comp-{name}{suffix}": {"window": 4, "steps": 16, "compensation": name, **opt}
        for name, opt, suffix in [
            ("none", {}, ""),
            ("forecast", {}, ""),
            ("forecast-adaptive", {}, ""),
            ("dcasgd", {}, ""),
            ("dcasgd-a", {}, ""),
            ("staleness-lr", {}, ""),
            ("delay-momentum", _SGD_MOMENTUM, ""),
            ("delay-momentum:stages=both", _SGD_MOMENTUM, ""),
            ("delay-momentum:stages=edge,cap=0.7", _SGD_MOMENTUM, ""),
            ("delay-beta1", {}, ""),
            ("delay-beta1:cap=0.3", {}, ""),
            ("predict", _SGD_MOMENTUM, ""),
            ("predict:scale=0.5", {}, ""),
            ("lookahead", _SGD_MOMENTUM, ""),
            ("lookahead:scale=0.5", {}, ""),
            ("fleet-batch", {}, ""),
            ("dana", _SGD_MOMENTUM, "-sgd"),
            ("dana", {}, ""),
        ]
    },
    "comp-forecast-alpha": {"window": 4, "steps": 16, "compensation": "forecast", "alpha": 0.2},
    "comp-forecast-alpha0": {"window": 4, "steps": 16, "compensation": "forecast", "alpha": 0.0},
    "comp-forecast-inline-alpha": {
        "window": 4,
        "steps": 16,
        "compensation": "forecast:alpha=0.1",
    },
    "comp-dcasgd-lam": {"window": 4, "steps": 16, "compensation": "dcasgd:lam=1"},
    # Chains, on a fleet where fleet-batch and dana act.
    **{
        f"chain-{name}": {"edges": 3, "window": 2, "steps": 8, "compensation": name, **opt}
        for name, opt in [
            ("delay-beta1+forecast", {}),
            ("delay-beta1+lookahead", {}),
            ("delay-beta1+predict", {}),
            ("delay-beta1+dana", {}),
            ("delay-beta1+dana:lookahead=0+lookahead", {}),
            ("dana:max_edges=2", _SGD_MOMENTUM),
            ("dana:lookahead=0.5", _SGD_MOMENTUM),
            ("delay-beta1+fleet-batch", {}),
            ("delay-beta1+fleet-batch:lr_power=0.5", {}),
            ("fleet-batch:k=2,lr_power=1", _SGD_MOMENTUM),
            ("forecast+fleet-batch", {}),
            ("forecast-adaptive+delay-momentum+predict", _SGD_MOMENTUM),
            ("dcasgd-a:lam=1+delay-momentum", _SGD_MOMENTUM),
            ("staleness-lr:power=0.5+delay-momentum:stages=both+lookahead", _SGD_MOMENTUM),
            ("forecast+dcasgd+staleness-lr", {}),
        ]
    },
    # Every mode, on one edge and on a fleet.
    **{
        f"mode-{mode}": {"mode": mode, "window": 4, "steps": 12}
        for mode in (
            "centralized",
            "syncsgd",
            "split-sync",
            "fedavg",
            "simultrain-noforecast",
            "simultrain-noreconcile",
            "synthetic",
            "synthetic-nolocal",
        )
    },
    **{
        f"mode-{mode}-3edges": {"mode": mode, "edges": 3, "window": 2, "steps": 8}
        for mode in ("centralized", "syncsgd", "fedavg", "synthetic", "split-sync")
    },
    # Gradient coding (syncsgd): in process the last s edges of each round are its stragglers.
    "coded-4edges-s1": {"mode": "syncsgd", "edges": 4, "gradient_coding_s": 1, "steps": 6},
    "coded-5edges-s2-sgd": {
        "mode": "syncsgd",
        "edges": 5,
        "gradient_coding_s": 2,
        "steps": 5,
        **_SGD,
    },
    # A round deadline closes nothing in process: every edge reports at once.
    "fedavg-deadline-3edges": {"mode": "fedavg", "edges": 3, "steps": 10, "round_deadline_s": 30.0},
    "mode-fedavg-local3-sgd": {"mode": "fedavg", "local_steps": 3, "steps": 9, **_SGD},
    "mode-noforecast-chain": {
        "mode": "simultrain-noforecast",
        "window": 4,
        "steps": 12,
        "compensation": "delay-beta1+forecast",
    },
    "mode-synthetic-forecast": {
        "mode": "synthetic",
        "window": 2,
        "steps": 12,
        "compensation": "forecast",
        "reconcile_every": 3,
    },
    # Reconciliation, codecs and the R = ∞ ablation with lost deltas.
    "reconcile-3": {"window": 4, "steps": 16, "reconcile_every": 3, "beta": 0.5},
    "codec-fp16": {"window": 2, "steps": 12, "delta_codec": "fp16", "act_codec": "fp16"},
    "codec-topk": {
        "window": 2,
        "steps": 12,
        "delta_codec": "topk",
        "topk_ratio": 0.2,
        "egrad_codec": "int8",
        "grad_codec": "fp16",
        "reconcile_every": 4,
    },
    "delta-loss": {
        "window": 2,
        "steps": 12,
        "delta_codec": "fp16",
        "delta_loss": 0.3,
        "reconcile_every": 0,
    },
    # Optimizer variants and a seed.
    "sgd-cloud-momentum": {
        "window": 4,
        "steps": 12,
        **_SGD_MOMENTUM,
        "optimizer_cloud_momentum": 0.5,
        "optimizer_weight_decay": 1e-3,
    },
    "seed-3-batch-16": {"window": 4, "steps": 12, "seed": 3, "batch_size": 16},
    "mnist-w2": {"dataset": "mnist", "window": 2, "steps": 6},
}


def _sha(tensors: Mapping[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(t.dtype).encode())
        digest.update(repr(tuple(t.shape)).encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def run_case(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """One case's digest (one torch thread: reductions in one order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_in_process(RunConfig.from_mapping(mapping))
    finally:
        torch.set_num_threads(threads)
    master = result.master
    assert master is not None
    edges = {}
    for edge_id, runtime in sorted(result.edges.items()):
        replica = runtime.replica
        assert replica is not None
        edges[edge_id] = {
            "version": replica.version,
            "replica": _sha(replica.current.tensors),
            "losses": len(runtime.losses),
        }
    return {
        "accuracy": repr(result.accuracy),
        "test_loss": repr(result.test_loss),
        "train_loss": repr(result.train_loss),
        "master": _sha(master.full_state()),
        "master_version": master.version,
        "edge_updates": master.edge_updates,
        "samples": result.samples,
        "staleness": result.staleness,
        "bytes_up": result.bytes_up,
        "bytes_down": result.bytes_down,
        "deltas_lost": result.deltas_lost,
        "edges": edges,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--write", action="store_true", help=f"rewrite {GOLDEN.name}")
    parser.add_argument("cases", nargs="*", help="case names (default: every case)")
    args = parser.parse_args(argv)
    names = args.cases or list(CASES)
    recorded = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    results = {}
    differ = []
    for name in names:
        results[name] = {"config": CASES[name], "digest": run_case(CASES[name])}
        same = recorded.get(name) == results[name]
        differ += [] if same else [name]
        print(f"{name}: {'same' if same else 'DIFFERS'} {results[name]['digest']['accuracy']}")
    if args.write:
        GOLDEN.write_text(json.dumps({**recorded, **results}, indent=1, sort_keys=True) + "\n")
    masters: dict[str, list[str]] = {}
    for name, entry in results.items():
        masters.setdefault(entry["digest"]["master"], []).append(name)
    for group in masters.values():
        if len(group) > 1:
            print("same master weights:", ", ".join(group))
    return 1 if differ and not args.write else 0


if __name__ == "__main__":
    sys.exit(main())
