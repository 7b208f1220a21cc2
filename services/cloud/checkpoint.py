"""Atomic checkpoints of the cloud's state, and resuming from the newest (docs/DESIGN.md §7.2).

One file per checkpoint, ``checkpoint-<master version>.safetensors``: every tensor (master
weights of both stages, optimizer buffers) in safetensors, and everything else (version
counters, per-edge highest applied sequence numbers, optimizer hyper-parameters) as JSON in
the file's metadata. Written to a temporary file, fsync-ed, renamed over, and the directory
fsync-ed: a crash at any point leaves either the old checkpoint or the new one, never half
of one. The two newest are kept; a file that fails to load is skipped for the one before.

Runs on the cloud's compute thread, between updates, so the snapshot is consistent.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from simultrain.shared.errors import SimulTrainError, TrainingError
from simultrain.shared.training.master import CloudMaster, StalenessStats
from simultrain.shared.training.runtime import CloudRuntime, CloudSessionState

__all__ = ["CheckpointError", "latest_checkpoint", "restore", "save_checkpoint"]

log = logging.getLogger("simultrain.cloud")

FORMAT = "simultrain-checkpoint/1"
_SESSION_FIELDS = (
    "reconcile_offset",
    "steps_applied",
    "samples_received",
    "samples_applied",
    "highest_applied_seq",
    "highest_cloud_step_seq",
    "duplicates",
    "last_edge_version",
    "bytes_in",
    "bytes_out",
)


class CheckpointError(SimulTrainError):
    """A checkpoint cannot be written or does not fit this run."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]


def save_checkpoint(
    directory: Path, master: CloudMaster, runtime: CloudRuntime, *, keep: int = 2
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {
        f"model/{name}": t.detach().to("cpu", copy=True).contiguous()
        for name, t in master.full_state().items()
    }
    # What the role trains besides the master (the synthetic role's M), and the state of the
    # compensation's edge-step strategy: a partly gathered fleet batch (acknowledged, so
    # durable with this file), or DANA's per-edge momenta.
    role_tensors, role_meta = runtime.role_state()
    step_tensors, step_meta = master.edge_step.state()
    tensors.update(role_tensors)
    tensors.update(step_tensors)
    optim_meta: dict[str, Any] = {}
    for name, opt in runtime.optimizers().items():
        state = opt.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for index, entries in state["state"].items():
            for key, value in entries.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim/{name}/{index}/{key}"] = (
                        value.detach().to("cpu", copy=True).contiguous()
                    )
                else:
                    scalars.setdefault(str(index), {})[key] = value
        optim_meta[name] = {"param_groups": state["param_groups"], "scalars": scalars}
    meta = {
        "format": FORMAT,
        "version": master.version,
        "edge_updates": master.edge_updates,
        "samples_applied": master.samples_applied,
        "staleness": _staleness_meta(master.staleness),
        **step_meta,
        "optimizers": optim_meta,
        **role_meta,
        "sessions": {
            edge_id: {
                **{f: getattr(state, f) for f in _SESSION_FIELDS},
                "staleness": _staleness_meta(state.staleness),
            }
            for edge_id, state in runtime.sessions.items()
        },
    }
    path = directory / f"checkpoint-{master.version:012d}.safetensors"
    fd, tmp_name = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        save_file(tensors, str(tmp), metadata={"simultrain": json.dumps(meta)})
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write checkpoint {path}: {exc}") from exc
    # What is in this checkpoint is durable: ACKs now tell edges they may forget it.
    for session in runtime.sessions.values():
        session.durable_seq = session.highest_applied_seq
    for old in sorted(directory.glob("checkpoint-*.safetensors"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def latest_checkpoint(directory: Path) -> Checkpoint | None:
    """The newest checkpoint that loads; None when there is none."""
    if not directory.is_dir():
        return None
    for path in sorted(directory.glob("checkpoint-*.safetensors"), reverse=True):
        try:
            tensors = load_file(str(path))
            with path.open("rb") as f:
                header_len = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(header_len))
            meta = json.loads(header["__metadata__"]["simultrain"])
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"unknown format {meta.get('format')!r}")
            return Checkpoint(path, tensors, meta)
        except (OSError, ValueError, KeyError, SafetensorError, CheckpointError) as exc:
            log.error("skipping unreadable checkpoint %s: %s", path, exc)
    return None


def restore(checkpoint: Checkpoint, master: CloudMaster, runtime: CloudRuntime) -> None:
    """Load ``checkpoint`` into a freshly built master and runtime of the same run."""
    meta, tensors = checkpoint.meta, checkpoint.tensors
    state = master.full_state()
    model = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    if model.keys() != state.keys() or any(model[k].shape != state[k].shape for k in state):
        raise CheckpointError(f"{checkpoint.path} does not fit this model")
    with torch.no_grad():
        for name, target in state.items():
            target.copy_(model[name])
    try:
        runtime.load_role_state(meta, tensors)
    except TrainingError as exc:
        raise CheckpointError(f"{checkpoint.path}: {exc}") from exc
    for name, opt in runtime.optimizers().items():
        saved = meta["optimizers"].get(name)
        if saved is None:
            continue
        opt_state: dict[int, dict[str, Any]] = {}
        prefix = f"optim/{name}/"
        for key, value in tensors.items():
            if key.startswith(prefix):
                index, entry = key[len(prefix) :].split("/", 1)
                opt_state.setdefault(int(index), {})[entry] = value
        for index, scalars in saved["scalars"].items():
            opt_state.setdefault(int(index), {}).update(scalars)
        opt.load_state_dict({"state": opt_state, "param_groups": saved["param_groups"]})
    master.version = int(meta["version"])
    master.edge_updates = int(meta["edge_updates"])
    master.samples_applied = int(meta["samples_applied"])
    _load_staleness(master.staleness, meta["staleness"])
    try:
        master.load_edge_step(meta, tensors)
    except TrainingError as exc:
        raise CheckpointError(f"{checkpoint.path}: {exc}") from exc
    master.reset_history()
    for edge_id, fields in meta["sessions"].items():
        session = CloudSessionState(
            edge_id, **{f: fields[f] for f in _SESSION_FIELDS if f in fields}
        )
        session.durable_seq = session.highest_applied_seq
        stale = fields.get("staleness")
        if isinstance(stale, dict):
            _load_staleness(session.staleness, stale)
        runtime.sessions[edge_id] = session
    log.info("resumed from %s at master version %d", checkpoint.path.name, master.version)


def _staleness_meta(stats: StalenessStats) -> dict[str, Any]:
    """A staleness record as JSON: in updates (``counts``) and in samples (docs/FLEET.md,
    "Staleness in samples")."""
    return {
        "counts": stats.counts,
        "dropped": stats.dropped,
        "samples_sum": stats.samples_sum,
        "samples_max": stats.samples_max,
    }


def _load_staleness(stats: StalenessStats, saved: dict[str, Any]) -> None:
    """`_staleness_meta` back; a checkpoint written before samples were kept has none (0)."""
    stats.counts = {int(k): int(v) for k, v in saved["counts"].items()}
    stats.dropped = int(saved["dropped"])
    stats.samples_sum = int(saved.get("samples_sum", 0))
    stats.samples_max = int(saved.get("samples_max", 0))
