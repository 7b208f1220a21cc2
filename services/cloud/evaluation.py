"""Periodic held-out evaluation of the master, for the dashboard and ``/metrics``.

The master's held-out accuracy over time is what tells a watcher whether a run is learning
(SPEC, "What the paper claims": accuracy is the figure every mode is judged by). Evaluating
takes the compute thread, so it runs on a timer, never per step, and only when the master
moved since the last evaluation: an idle cloud costs nothing, and a training one pays one
forward pass over the held-out set every ``eval_interval_s`` (the ``eval_seconds`` histogram
shows what that costs).
"""

from __future__ import annotations

import asyncio
import logging
import time

from .service import CloudService

__all__ = ["run_periodic_evaluation"]

log = logging.getLogger("simultrain.cloud")


async def run_periodic_evaluation(service: CloudService, interval_s: float) -> None:
    """Evaluate the master every ``interval_s`` seconds while it changes; runs until cancelled."""
    evaluated_version: int | None = None
    while True:
        await asyncio.sleep(interval_s)
        if service.master.version == evaluated_version:
            continue
        started = time.perf_counter()
        result = await service.evaluate()
        seconds = time.perf_counter() - started
        evaluated_version = result["master_version"]
        service.metrics.observe_evaluation(
            result, train_loss=service.master.loss_ema, seconds=seconds
        )
        log.debug(
            "evaluated master v%d: accuracy %.4f (%.3fs)",
            evaluated_version,
            result["accuracy"],
            seconds,
        )
