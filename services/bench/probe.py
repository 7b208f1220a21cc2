"""``python -m simultrain.bench.probe``: the real edge agent, with a step timeline.

The benchmark needs per-batch timestamps the edge's ``DONE`` report does not carry: when each
batch was taken, when its compute sections ran, and when its acknowledgement came back.
This entry point runs the unchanged :class:`~simultrain.edge.agent.EdgeAgent` (same settings,
same event loop, same frames on the wire) through a subclass that only *observes* two of its
seams:

- its batch stream (``self.stream``, wrapped after ``_prepare``): a batch starts when the
  agent takes it from the stream;
- ``_in_compute`` (every edge compute section, dilated by the CPU emulation factor): the frame
  a compute section returns carries the batches taken since the last frame;
- ``_write_status`` (called right after every ACK is applied): the ACK time and the wire
  byte counters at that moment.

A first-class hook in the agent (an observer with ``on_batch_taken``, ``on_frame`` and
``on_ack``) would make this subclass unnecessary.

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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from simultrain.edge.agent import EdgeAgent
from simultrain.edge.settings import EdgeSettings
from simultrain.shared.data import load_dataset
from simultrain.shared.errors import SimulTrainError

__all__ = ["PRELOAD_VAR", "SETTINGS_FIFO_VAR", "ProbedEdgeAgent", "StepTimeline"]

SETTINGS_FIFO_VAR = "SIMULTRAIN_BENCH_SETTINGS_FIFO"
PRELOAD_VAR = "SIMULTRAIN_BENCH_PRELOAD"

log = logging.getLogger("simultrain.bench.probe")
T = TypeVar("T")


@dataclass
class StepTimeline:
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

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch_start": [round(t, 6) for t in self.batch_start],
            "batch_frame": self.batch_frame,
            "acks": [[round(v, 6) for v in row] for row in self.acks],
            "sections": [[round(a, 6), round(b, 6), kind] for a, b, kind in self.sections],
        }


class _TimedStream:
    """The agent's batch stream, stamping the time each batch is taken."""

    def __init__(self, stream: Iterator[Any], timeline: StepTimeline) -> None:
        self._stream = stream
        self._timeline = timeline

    def __iter__(self) -> _TimedStream:
        return self

    def __next__(self) -> Any:
        batch = next(self._stream)
        timeline = self._timeline
        timeline.pending.append(len(timeline.batch_start))
        timeline.batch_start.append(time.monotonic())
        timeline.batch_frame.append(-1)
        return batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class ProbedEdgeAgent(EdgeAgent):
    """:class:`EdgeAgent` that records a :class:`StepTimeline`; behaviour unchanged."""

    def __init__(self, settings: EdgeSettings) -> None:
        super().__init__(settings)
        self.timeline = StepTimeline()

    async def _prepare(self) -> None:
        await super()._prepare()
        self.stream = _TimedStream(self.stream, self.timeline)  # type: ignore[assignment]

    async def _in_compute(self, fn: Callable[..., T], *args: Any) -> T:
        started = time.monotonic()
        result = await super()._in_compute(fn, *args)
        timeline = self.timeline
        timeline.sections.append([started, time.monotonic(), getattr(fn, "__name__", "?")])
        seq = getattr(result, "seq", None)
        if timeline.pending and isinstance(seq, int):
            # The frame that carries the batches taken since the last one (one batch, or a
            # FedAvg round of E batches). A re-sent batch takes nothing from the stream.
            for index in timeline.pending:
                timeline.batch_frame[index] = seq
            timeline.pending.clear()
        return result

    def _write_status(self) -> None:
        super()._write_status()
        runtime = self.runtime
        acked = runtime.highest_acked if runtime is not None else -1
        report = self.report
        self.timeline.acks.append(
            [time.monotonic(), acked, report.bytes_up, report.bytes_down, report.compute_seconds]
        )


async def _run_agent(settings: EdgeSettings) -> tuple[dict[str, Any], StepTimeline]:
    agent = ProbedEdgeAgent(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, agent.stop)
    try:
        report = await agent.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return asdict(report), agent.timeline


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
