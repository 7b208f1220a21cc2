"""In-order delta application with a reorder buffer and gap detection (docs/DESIGN.md §4.3).

Deltas form a chain ``v0 → v1 → v2 …`` (each names the version it starts from and the one it
reaches). The edge applies them strictly in that order. One that starts past the replica's
version waits in the buffer; a gap that does not fill within ``gap_timeout_s`` (or a buffer
that overflows) means deltas were lost, and the only safe repair is a full resync from the
master. Everything here is pure bookkeeping with an injected clock: no I/O, no sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

__all__ = ["DeltaSequencer", "GapStatus", "VersionStep"]


@dataclass(frozen=True, slots=True)
class VersionStep:
    """What the sequencer needs to know of a delta: where it starts and where it ends."""

    from_version: int
    to_version: int


P = TypeVar("P")


class GapStatus(Enum):
    IN_ORDER = "in_order"  # nothing waiting
    WAITING = "waiting"  # a gap, still within its time
    RESYNC = "resync"  # the gap did not fill in time, or the buffer overflowed


class DeltaSequencer(Generic[P]):
    """Orders deltas by version. ``offer`` returns the payloads that may be applied now."""

    def __init__(self, version: int, *, max_pending: int = 16, gap_timeout_s: float = 5.0) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self._version = version
        self._pending: dict[int, tuple[VersionStep, P]] = {}
        self._max_pending = max_pending
        self._gap_timeout_s = gap_timeout_s
        self._gap_since: float | None = None
        self._overflowed = False
        self.duplicates = 0
        self.applied = 0

    @property
    def version(self) -> int:
        return self._version

    @property
    def pending(self) -> int:
        return len(self._pending)

    def offer(self, step: VersionStep, payload: P, *, now: float) -> list[tuple[VersionStep, P]]:
        """Take one delta; return those now applicable, in version order."""
        if step.to_version <= step.from_version:
            raise ValueError(f"delta must move forward, got {step.from_version}→{step.to_version}")
        if step.to_version <= self._version:
            self.duplicates += 1  # already reflected (e.g. re-sent after a reconnect)
            return []
        if step.from_version < self._version:
            # Overlaps what we have but reaches further: it cannot be applied on top of our
            # version (the base differs), so it is a gap only a resync can close.
            self._overflowed = True
            return []
        if step.from_version in self._pending:
            self.duplicates += 1
            return []
        self._pending[step.from_version] = (step, payload)
        ready: list[tuple[VersionStep, P]] = []
        while self._version in self._pending:
            item = self._pending.pop(self._version)
            ready.append(item)
            self._version = item[0].to_version
        self.applied += len(ready)
        if self._pending:
            if self._gap_since is None or ready:
                self._gap_since = now
            if len(self._pending) > self._max_pending:
                self._overflowed = True
        else:
            self._gap_since = None
        return ready

    def status(self, *, now: float) -> GapStatus:
        if self._overflowed:
            return GapStatus.RESYNC
        if self._gap_since is None:
            return GapStatus.IN_ORDER
        if now - self._gap_since >= self._gap_timeout_s:
            return GapStatus.RESYNC
        return GapStatus.WAITING

    def reset(self, version: int) -> None:
        """After a full resync to ``version``: drop what waited, start the chain anew."""
        self._version = version
        # Buffered deltas that start at or after the resync point still apply; drop the rest.
        self._pending = {k: v for k, v in self._pending.items() if k >= version}
        self._gap_since = None
        self._overflowed = False
