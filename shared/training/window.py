"""Automatic window sizing: the smallest window that keeps the pipeline's bottleneck busy.

docs/DESIGN.md §3 and §6.3. Staleness costs accuracy, so the window
should be no larger than the link needs. One batch occupies a window slot from its edge
forward until the cloud's acknowledgement of its edge-stage update (docs/DESIGN.md §3.1–§3.5)::

    edge fwd → ACT up → cloud step → GRAD down → edge bwd → EGRAD up → cloud apply → ACK down

so a slot is held for two round trips plus every transfer and compute time on the way, the
*cycle* ``L``. In steady state each resource — edge CPU, uplink, cloud, downlink — serves one
batch per period, so the pipeline runs at the pace of the slowest, ``T = max(stage times)``.
By Little's law ``⌈L / T⌉`` batches must be in flight to keep that bottleneck busy, and a
window of ``W`` allows ``W`` in flight, from ACT to ACK (PROTOCOL.md §6.3)::

    W = ⌈L / T⌉   (1 is written 0: lockstep, the same thing)

When the link is the bottleneck this is the bandwidth-delay product counted in batches:
``T = bytes per batch / bandwidth`` and ``L ≈ 2·RTT + …``, so ``W ≈ BDP / bytes per
batch`` plus the transfer and compute times themselves. Larger windows add staleness and no
throughput; smaller ones leave the bottleneck idle.

Everything here is a pure function of measured numbers (the services measure stage times and
payload sizes; ``docs/NETEM.md`` gives the links), so it is tested with hand-computed values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from simultrain.shared.errors import ConfigError

__all__ = [
    "LINK_4G",
    "LINK_5G",
    "LinkProfile",
    "StageTimes",
    "WindowPlan",
    "auto_window",
    "bandwidth_delay_product",
]


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """One edge's link: bandwidth each way in bits per second, round-trip time in seconds."""

    up_bits_per_s: float
    down_bits_per_s: float
    rtt_s: float

    def __post_init__(self) -> None:
        if self.up_bits_per_s <= 0 or self.down_bits_per_s <= 0:
            raise ConfigError("link bandwidth must be positive")
        if self.rtt_s < 0:
            raise ConfigError("round-trip time must be ≥ 0")


LINK_4G = LinkProfile(50e6, 50e6, 0.030)
LINK_5G = LinkProfile(300e6, 300e6, 0.010)


@dataclass(frozen=True, slots=True)
class StageTimes:
    """Measured per-batch times in seconds and bytes on the wire per batch.

    ``up_bytes`` is an ACT and its piggybacked EGRAD; ``down_bytes`` a GRAD, a DELTA and an
    ACK (amortised snapshots may be added in).
    """

    edge_forward_s: float
    edge_backward_s: float
    cloud_step_s: float  # cloud-stage forward, backward and update (docs/DESIGN.md §3.2)
    cloud_apply_s: float  # edge-stage update with compensation (docs/DESIGN.md §3.4)
    up_bytes: float
    down_bytes: float

    def __post_init__(self) -> None:
        values = (
            self.edge_forward_s,
            self.edge_backward_s,
            self.cloud_step_s,
            self.cloud_apply_s,
            self.up_bytes,
            self.down_bytes,
        )
        if min(values) < 0 or not all(math.isfinite(v) for v in values):
            raise ConfigError("stage times and payload sizes must be finite and ≥ 0")


@dataclass(frozen=True, slots=True)
class WindowPlan:
    window: int  # the schedule's W
    in_flight: int  # batches in flight needed: W (before any cap; 1 is written W = 0)
    cycle_s: float  # L: how long one batch holds a window slot
    period_s: float  # T: the bottleneck's time per batch
    bottleneck: str  # "edge", "uplink", "cloud" or "downlink"
    batches_per_s: float  # 1 / T: the throughput the window buys


def bandwidth_delay_product(link: LinkProfile) -> float:
    """Bytes the uplink holds in one round trip (``bandwidth × RTT / 8``)."""
    return link.up_bits_per_s * link.rtt_s / 8.0


def auto_window(
    link: LinkProfile, stages: StageTimes, *, max_window: int | None = None
) -> WindowPlan:
    """The smallest window that keeps the bottleneck busy (module docstring), capped.

    ``max_window`` caps it (``None``: no cap): a staleness bound is also an accuracy choice.
    """
    up_s = stages.up_bytes * 8.0 / link.up_bits_per_s
    down_s = stages.down_bytes * 8.0 / link.down_bits_per_s
    busy = {
        "edge": stages.edge_forward_s + stages.edge_backward_s,
        "uplink": up_s,
        "cloud": stages.cloud_step_s + stages.cloud_apply_s,
        "downlink": down_s,
    }
    bottleneck = max(busy, key=lambda k: busy[k])
    period = busy[bottleneck]
    cycle = sum(busy.values()) + 2.0 * link.rtt_s
    if period <= 0.0:
        raise ConfigError("every stage time and payload is zero: nothing to pipeline")
    # A tiny tolerance keeps an exact multiple (L = 3T) from rounding up by float error.
    in_flight = max(1, math.ceil(cycle / period - 1e-9))
    window = in_flight if in_flight > 1 else 0  # W in flight (PROTOCOL.md §6.3); 1 ≡ 0
    if max_window is not None:
        if max_window < 0:
            raise ConfigError(f"max_window must be ≥ 0, got {max_window}")
        window = min(window, max_window)
    return WindowPlan(window, in_flight, cycle, period, bottleneck, 1.0 / period)
