"""What the edge agent's report says about a session that ended and a drain that timed out:
the fleet benchmark tells a sample the cloud lost from one the agent gave up on with them."""

from __future__ import annotations

import asyncio
import socket

import numpy as np

from simultrain.edge.agent import ENDED_REASONS_KEPT, EdgeAgent, EdgeObserver, EdgeReport
from simultrain.edge.settings import EdgeSettings
from simultrain.shared.data import load_dataset
from simultrain.shared.models import get_model_spec
from simultrain.shared.training.assembly import Shard, build_edge
from simultrain.shared.training.config import RunConfig


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class _Ended(EdgeObserver):
    """Sets ``enough`` once ``count`` sessions ended."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.reasons: list[str] = []
        self.enough = asyncio.Event()

    def session_ended(self, reason: str, report: EdgeReport) -> None:
        self.reasons.append(reason)
        if len(self.reasons) >= self.count:
            self.enough.set()


async def test_the_report_says_why_each_session_ended() -> None:
    settings = EdgeSettings(
        cloud_url=f"http://127.0.0.1:{_closed_port()}",
        reconnect_initial_s=0.01,
        reconnect_max_s=0.02,
        drain_timeout_s=0.0,
        watchdog=False,
        log_level="critical",
    )
    observer = _Ended(count=3)
    agent = EdgeAgent(settings, observer=observer)
    task = asyncio.create_task(agent.run())
    await asyncio.wait_for(observer.enough.wait(), timeout=60)
    agent.stop()
    report = await asyncio.wait_for(task, timeout=30)
    assert len(report.session_ends) >= 3  # the last one may end the agent, not reconnect
    assert report.reconnects >= len(report.session_ends) - 1
    assert observer.reasons[: len(report.session_ends)] == report.session_ends
    assert report.session_ends  # the refused connections, with their reason
    assert all("refused" in why.lower() or "errno" in why.lower() for why in report.session_ends)
    assert len(report.session_ends) == min(len(report.errors), ENDED_REASONS_KEPT)
    assert report.undelivered == 0  # nothing was produced


async def test_a_drain_that_times_out_counts_the_batches_not_applied() -> None:
    """Kept batches above the last ACK are undelivered; those at or below it are applied and
    only wait to become durable."""
    agent = EdgeAgent(EdgeSettings(cloud_url="http://127.0.0.1:9", drain_timeout_s=0.0))
    run = RunConfig(mode="simultrain", dataset="imu")
    runtime = build_edge(run, get_model_spec("imu-cnn1d"), Shard(load_dataset("imu"))).runtime
    runtime.unacked = {s: (np.zeros(1, np.float32), np.zeros(1, np.int64)) for s in range(2, 7)}
    runtime.highest_acked = 3
    runtime.next_seq = 7
    agent.runtime = runtime
    assert not agent._finished()  # still producing
    agent.stop()
    assert agent._finished()  # the drain bound (0 s) is over
    assert agent.report.undelivered == 3  # batches 4, 5 and 6
