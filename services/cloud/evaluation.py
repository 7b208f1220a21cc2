"""Periodic held-out evaluation of the master, for the dashboard and ``/metrics``.

The master's held-out accuracy over time is what tells a watcher whether a run is learning
(docs/DESIGN.md §10: accuracy is the figure every mode is judged by). It must not
slow the run it watches: a forward pass over MNIST's 10 000 held-out images takes seconds on
a CPU, and every ACT and EGRAD waits on the one compute thread (docs/DESIGN.md §2: the cloud
applies updates immediately). So the compute thread only copies the master's weights, which
is consistent (between two updates) and takes milliseconds; the forward pass runs on a
thread of its own, on a private copy of the model. It runs every ``eval_interval_s``, and
only when the master moved since the last evaluation: an idle cloud costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .service import CloudService

__all__ = ["PeriodicEvaluator"]

log = logging.getLogger("simultrain.cloud")


@dataclass(frozen=True, slots=True)
class _Snapshot:
    master_version: int
    samples_applied: int
    train_loss: float | None
    state: dict[str, Tensor]


class PeriodicEvaluator:
    """Evaluates copies of the master on the held-out set, off the compute thread."""

    def __init__(self, service: CloudService, interval_s: float, *, batch_size: int = 512) -> None:
        self.service = service
        self.interval_s = interval_s
        self.batch_size = batch_size
        # The same architecture as the master; its weights are overwritten before each use.
        model = service.spec.build(service.run.seed)
        self.model = nn.ModuleDict({"edge": model.edge_stage, "cloud": model.cloud_stage})
        self.model.to(service.device).eval()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cloud-eval")

    async def run(self) -> None:
        """Evaluate every ``interval_s`` seconds while the master changes; until cancelled."""
        evaluated_version: int | None = None
        loop = asyncio.get_running_loop()
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                if self.service.master.version == evaluated_version:
                    continue
                started = time.perf_counter()
                snapshot = await self.service.compute(self._snapshot)
                accuracy, loss = await loop.run_in_executor(
                    self._executor, self._evaluate, snapshot.state
                )
                seconds = time.perf_counter() - started
                evaluated_version = snapshot.master_version
                self.service.metrics.observe_evaluation(
                    {
                        "accuracy": accuracy,
                        "loss": loss,
                        "master_version": snapshot.master_version,
                        "samples_applied": snapshot.samples_applied,
                    },
                    train_loss=snapshot.train_loss,
                    seconds=seconds,
                )
                log.debug(
                    "evaluated master v%d: accuracy %.4f (%.3fs)",
                    snapshot.master_version,
                    accuracy,
                    seconds,
                )
        finally:
            # Not waiting: a forward pass under way must not hold up the cloud's shutdown
            # (its drain and last checkpoint); the thread ends with that pass.
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _snapshot(self) -> _Snapshot:
        """On the compute thread, between two updates: a copy of the master as it is."""
        master = self.service.master
        return _Snapshot(
            master_version=master.version,
            samples_applied=master.samples_applied,
            train_loss=master.loss_ema,
            state={name: t.detach().clone() for name, t in master.full_state().items()},
        )

    @torch.no_grad()
    def _evaluate(self, state: dict[str, Tensor]) -> tuple[float, float]:
        """Held-out accuracy and mean loss of ``state``, as ``CloudMaster.evaluate`` computes
        them for the master itself."""
        self.model.load_state_dict(state)
        inputs, labels = self.service.x_test, self.service.y_test
        device = self.service.device
        correct, loss_sum = 0, 0.0
        for i in range(0, int(labels.shape[0]), self.batch_size):
            x = inputs[i : i + self.batch_size].to(device)
            y = labels[i : i + self.batch_size].to(device)
            logits = self.model["cloud"](self.model["edge"](x))
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
        n = max(int(labels.shape[0]), 1)
        return correct / n, loss_sum / n
