"""The background health sweep: a thin asyncio loop around :meth:`Coordinator.sweep`.

The decision (who is silent, who moves where) lives in the registry and is tested with a
fake clock; this loop only calls it every ``interval_s`` off the event loop and lets a test
wait for the next sweep instead of sleeping.
"""

from __future__ import annotations

import asyncio
import logging

from simultrain.shared.errors import SimulTrainError

from .registry import Coordinator, SweepResult

__all__ = ["HealthMonitor"]

logger = logging.getLogger("simultrain.coordinator")


class HealthMonitor:
    def __init__(self, coordinator: Coordinator, *, interval_s: float) -> None:
        self._coordinator = coordinator
        self.interval_s = interval_s
        self.sweeps = 0
        self._waiters: list[asyncio.Future[SweepResult]] = []

    async def run(self) -> None:
        """Sweep forever; cancel the task to stop."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                result = await asyncio.to_thread(self._coordinator.sweep)
            except SimulTrainError as exc:
                # A store hiccup must not end failure detection; try again next interval.
                logger.error("health sweep failed: %s", exc)
                continue
            self.sweeps += 1
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(result)

    async def next_sweep(self) -> SweepResult:
        """Wait for the next completed sweep and return what it changed."""
        waiter: asyncio.Future[SweepResult] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return await waiter
