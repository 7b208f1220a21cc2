"""``python -m simultrain.bench.probe``: the real edge agent, with a step timeline.

The benchmark needs per-batch timestamps the edge's ``DONE`` report does not carry: when each
batch was taken, when its compute sections ran, and when its acknowledgement came back.
This entry point runs the unchanged :class:`~simultrain.edge.agent.EdgeAgent` (same settings,
same event loop, same frames on the wire) with a :class:`StepTimeline` as its
:class:`~simultrain.edge.agent.EdgeObserver`: a batch starts when the agent takes it from
its stream; the frame a compute section returns carries the batches taken since the last
frame; after every ACK it notes the time and the wire byte counters.

Its report line is the agent's ``DONE {json}`` with one more key, ``timeline``. All times are
``time.monotonic()`` seconds, which every process on one host shares, so the benchmark can
line them up with its own polls of the cloud.

Deferred start (``SIMULTRAIN_BENCH_SETTINGS_FIFO``): the benchmark starts this process before
the coordinator and cloud, so that importing torch and loading the dataset
(``SIMULTRAIN_BENCH_PRELOAD=DATASET:SEED``, the loader caches it) overlap their start-up. The
probe then prints ``WAITING`` and reads one JSON object of ``SIMULTRAIN_EDGE_*`` variables
from the named pipe — the addresses only known once the others listen — before it builds its
settings. Without the variable it starts at once, like ``python -m simultrain.edge``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from simultrain.edge.agent import EdgeAgent, EdgeObserver, EdgeReport
from simultrain.edge.settings import EdgeSettings
from simultrain.shared.data import load_dataset
from simultrain.shared.errors import SimulTrainError

__all__ = ["PRELOAD_VAR", "SETTINGS_FIFO_VAR", "StepTimeline"]

SETTINGS_FIFO_VAR = "SIMULTRAIN_BENCH_SETTINGS_FIFO"
PRELOAD_VAR = "SIMULTRAIN_BENCH_PRELOAD"

log = logging.getLogger("simultrain.bench.probe")


@dataclass
class StepTimeline(EdgeObserver):
    """What the benchmark's metrics are computed from (see ``metrics.py``).

    ``batch_start[i]``: when batch i (0-based, new batches only) was taken from the stream;
    ``batch_frame[i]``: the sequence number of the frame that carried it (FedAvg: the round's
    upload, so E batches share one); ``acks``: ``[t, acked_seq, bytes_up, bytes_down,
    edge_compute_s]`` after every ACK; ``sections``: ``[start, end, kind]`` per compute
    section (``end − start`` includes waiting for the compute slot and the emulation's sleep).
    """

    batch_start: list[float] = field(default_factory=list)
    batch_frame: list[int] = field(default_factory=list)
    acks: list[list[float]] = field(default_factory=list)
    sections: list[list[Any]] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)  # batches not yet in a frame

    def batch_taken(self) -> None:
        self.pending.append(len(self.batch_start))
        self.batch_start.append(time.monotonic())
        self.batch_frame.append(-1)

    def compute_section(self, kind: str, started: float, ended: float, result: object) -> None:
        self.sections.append([started, ended, kind])
        seq = getattr(result, "seq", None)
        if self.pending and isinstance(seq, int):
            # The frame that carries the batches taken since the last one (one batch, or a
            # FedAvg round of E batches). A re-sent batch takes nothing from the stream.
            for index in self.pending:
                self.batch_frame[index] = seq
            self.pending.clear()

    def acked(self, acked_seq: int, report: EdgeReport) -> None:
        self.acks.append(
            [
                time.monotonic(),
                acked_seq,
                report.bytes_up,
                report.bytes_down,
                report.compute_seconds,
            ]
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch_start": [round(t, 6) for t in self.batch_start],
            "batch_frame": self.batch_frame,
            "acks": [[round(v, 6) for v in row] for row in self.acks],
            "sections": [[round(a, 6), round(b, 6), kind] for a, b, kind in self.sections],
        }


async def _run_agent(settings: EdgeSettings) -> tuple[dict[str, Any], StepTimeline]:
    timeline = StepTimeline()
    agent = EdgeAgent(settings, observer=timeline)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, agent.stop)
    try:
        report = await agent.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return asdict(report), timeline


def _deferred_environment() -> None:
    """Preload, say ``WAITING``, then take the rest of the settings from the named pipe."""
    fifo = os.environ.get(SETTINGS_FIFO_VAR)
    if not fifo:
        return
    preload = os.environ.get(PRELOAD_VAR)
    if preload:
        name, _, seed = preload.rpartition(":")
        load_dataset(name, seed=int(seed))
    # O_RDWR on a FIFO never blocks and never sees end-of-file while we wait (Linux fifo(7)):
    # the benchmark can open it for writing as soon as it has read WAITING.
    fd = os.open(fifo, os.O_RDWR)
    print("WAITING", flush=True)
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        line = b""
        while not line.endswith(b"\n"):
            chunk = pipe.read(1)
            if not chunk:
                break
            line += chunk
    os.environ.update({str(k): str(v) for k, v in json.loads(line).items()})


def main() -> int:
    """As ``python -m simultrain.edge``, plus ``timeline`` in the ``DONE`` line."""
    _deferred_environment()
    settings = EdgeSettings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        report, timeline = asyncio.run(_run_agent(settings))
    except SimulTrainError as exc:
        log.error("%s", exc)
        return 1
    report["timeline"] = timeline.as_dict()
    print("DONE " + json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
