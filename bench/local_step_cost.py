"""The synthetic mode's local step, in edge compute per batch (bench/results/synthetic.md).

``python bench/local_step_cost.py [imu|mnist] [BATCHES]``: ``synthetic`` and
``synthetic-nolocal`` edges in one process, one thread, no link, interleaved batch by batch
so that the load of a shared machine hits both alike; three batches stay pending, as with
window 4 (an ACK frees the oldest). Prints the median and mean of ``EdgeRuntime.produce``.
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch

from simultrain.shared.data import load_dataset
from simultrain.shared.protocol import Ack, Snap, decode_frame, encode_frame
from simultrain.shared.training.assembly import Shard, build_cloud, build_edge
from simultrain.shared.training.config import RunConfig
from simultrain.shared.training.runtime import EdgeRuntime

WARM_UP = 20


def edge_for(mode: str, dataset: str) -> EdgeRuntime:
    data = load_dataset(dataset)
    spec = data.model_spec()
    run = RunConfig(mode=mode, dataset=dataset)
    cloud = build_cloud(run, spec).runtime
    edge = build_edge(run, spec, Shard(data)).runtime
    _, snap = cloud.open_session("e")
    welcome = decode_frame(encode_frame(snap))
    assert isinstance(welcome, Snap)
    edge.on_snap(welcome)
    return edge


def main() -> None:
    dataset = sys.argv[1] if len(sys.argv) > 1 else "imu"
    batches = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    torch.set_num_threads(1)
    spec = load_dataset(dataset).model_spec()
    edges = {mode: edge_for(mode, dataset) for mode in ("synthetic", "synthetic-nolocal")}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, *spec.input_shape)).astype(np.float32)
    y = (np.arange(32) % spec.num_classes).astype(np.int64)
    times: dict[str, list[float]] = {mode: [] for mode in edges}
    for k in range(batches):
        for mode, edge in edges.items():
            started = time.perf_counter()
            edge.produce(x, y)
            times[mode].append(time.perf_counter() - started)
            edge.leading.clear()
            if k >= 3:
                edge.on_ack(Ack(seq=k - 3, master_version=edge.version))
    for mode, seconds in times.items():
        kept = seconds[WARM_UP:]
        print(
            f"{dataset} {mode}: median {1000 * statistics.median(kept):.2f} ms, "
            f"mean {1000 * statistics.mean(kept):.2f} ms over {len(kept)} batches"
        )


if __name__ == "__main__":
    main()
