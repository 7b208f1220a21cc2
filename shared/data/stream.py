"""`BatchStream`: the edge's endless, resumable source of training batches.

Epoch ``e`` visits the samples in the order ``default_rng([seed, e]).permutation(n)``. Because
the order of any epoch is a pure function of ``(seed, e)``, the stream's whole state is two
integers — the epoch and the position in it — and batch number ``k`` of the stream is always the
same batch. An edge that restarts resumes with `restore` (or `seek` to its next batch sequence
number) and neither repeats nor skips a batch, which the exactly-once accounting relies on.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["BatchStream"]

Batch = tuple[NDArray[np.float32], NDArray[np.int64]]


class BatchStream(Iterator[Batch]):
    """Endless iterator of ``(x_batch, y_batch)`` numpy copies, reshuffled every epoch.

    With ``drop_last`` (the default) every batch has exactly ``batch_size`` samples and the
    remainder of each epoch's permutation is skipped (it is a different remainder every
    epoch); without it an epoch ends with a smaller batch.
    """

    def __init__(
        self,
        x: NDArray[np.float32],
        y: NDArray[np.int64],
        *,
        batch_size: int,
        seed: int,
        drop_last: bool = True,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if len(y) == 0 or (drop_last and len(y) < batch_size):
            raise ValueError(
                f"{len(y)} samples cannot fill one batch of {batch_size}"
                + (" (drop_last)" if drop_last else "")
            )
        self._x = x
        self._y = y
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        full, rest = divmod(len(y), batch_size)
        self.batches_per_epoch = full + (1 if rest and not drop_last else 0)
        self._epoch = 0
        self._position = 0
        self._order = self._permutation(0)

    @property
    def epoch(self) -> int:
        """Epoch of the next batch (0-based)."""
        return self._epoch

    @property
    def position(self) -> int:
        """Index of the next batch within its epoch."""
        return self._position

    @property
    def batch_index(self) -> int:
        """Number of batches served so far = stream index of the next batch."""
        return self._epoch * self.batches_per_epoch + self._position

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Batch:
        start = self._position * self.batch_size
        rows = self._order[start : start + self.batch_size]
        self._position += 1
        if self._position == self.batches_per_epoch:
            self._epoch, self._position = self._epoch + 1, 0
            self._order = self._permutation(self._epoch)
        # Sorted rows read memory in order; the sample order inside a batch does not matter.
        rows = np.sort(rows)
        return self._x[rows], self._y[rows]

    def seek(self, batch_index: int) -> None:
        """Position the stream so that the next batch is stream batch ``batch_index``."""
        if batch_index < 0:
            raise ValueError(f"batch_index must be ≥ 0, got {batch_index}")
        epoch, position = divmod(batch_index, self.batches_per_epoch)
        if epoch != self._epoch:
            self._order = self._permutation(epoch)
        self._epoch, self._position = epoch, position

    def state(self) -> dict[str, int | bool]:
        """A small JSON-able record from which `restore` continues exactly here."""
        return {
            "seed": self.seed,
            "num_samples": len(self._y),
            "batch_size": self.batch_size,
            "drop_last": self.drop_last,
            "epoch": self._epoch,
            "position": self._position,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from `state`; refuses a state taken from a differently configured stream."""
        mine = self.state()
        for key in ("seed", "num_samples", "batch_size", "drop_last"):
            if state.get(key) != mine[key]:
                raise ValueError(
                    f"stream state has {key}={state.get(key)!r}, this stream has {mine[key]!r}"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.batches_per_epoch:
            raise ValueError(f"invalid stream position epoch={epoch} position={position}")
        self.seek(epoch * self.batches_per_epoch + position)

    def _permutation(self, epoch: int) -> NDArray[np.intp]:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self._y))
