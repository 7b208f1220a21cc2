"""The shaping arithmetic of the emulated link: pure, deterministic, no I/O.

This is the sans-I/O core of the emulator (the proxy in ``proxy.py`` only moves bytes at the
times computed here). Time comes from an injectable clock, randomness from a seeded
:class:`random.Random`, so every number can be checked with a fake clock.

The model, per direction (``docs/NETEM.md`` has the long form):

- **Serialization.** The direction is one bottleneck of ``rate_bps`` shared by every
  connection of the emulator (one emulator = one device's radio link). A segment of ``n``
  bytes that arrives at ``t`` starts when both it and the link are ready and is fully sent
  at ``finished = max(t, link_free_at) + 8 n / rate``; the link is then busy until
  ``finished``. This is a token bucket with no burst allowance, like ``tc netem rate``.
- **Propagation.** It reaches the far end ``delay + U(-jitter, +jitter)`` later (clamped at
  0; uniform is ``tc netem``'s default jitter distribution).
- **Loss.** TCP never loses bytes, it retransmits them: a segment spanning ``k`` packets of
  ``mss_bytes`` is hit with probability ``1 - (1 - loss)^k``, and a hit segment arrives one
  retransmission timeout ``RTO = max(200 ms, 2 RTT)`` late (Linux's minimum RTO; SACK
  recovers several losses of one segment in one episode). Retransmitted bytes are not charged
  to the link a second time, and congestion control is not modelled.
- **Order.** Bytes of one TCP stream are delivered in order: a segment is never delivered
  before the one ahead of it in its stream (head-of-line blocking). Jitter and loss therefore
  delay, never reorder. Different streams do not block each other.
- **Handshake.** A new connection pays the TCP handshake: the client may first send one RTT
  after it connects, the server one RTT plus the uplink delay after it (the proxy's own
  loopback handshakes are instant).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from simultrain.netem.profiles import DirectionProfile, LinkProfile

__all__ = [
    "DEFAULT_MSS_BYTES",
    "DEFAULT_SEGMENT_BYTES",
    "MIN_RTO_S",
    "Clock",
    "DirectionShaper",
    "LinkShaper",
    "StreamOrder",
    "Transmission",
    "retransmission_timeout_s",
    "segment_loss_probability",
    "serialization_s",
]

Clock = Callable[[], float]
"""Seconds on a monotonic clock (``loop.time`` in the proxy, a fake clock in tests)."""

DEFAULT_SEGMENT_BYTES = 16 * 1024
"""Large writes are cut into segments of this size, so the first byte of a large message is
delivered before its last byte has been serialized, as on a real link."""

DEFAULT_MSS_BYTES = 1448
"""TCP payload per packet on a 1500-byte MTU with timestamps: the unit that ``loss`` hits."""

MIN_RTO_S = 0.2
"""Linux's minimum retransmission timeout (``TCP_RTO_MIN``)."""


def serialization_s(nbytes: int, rate_bps: float | None) -> float:
    """Seconds to put ``nbytes`` on a link of ``rate_bps`` (0 when the rate is unlimited)."""
    if nbytes < 0:
        raise ValueError(f"nbytes must be ≥ 0, not {nbytes}")
    return 0.0 if rate_bps is None else nbytes * 8 / rate_bps


def retransmission_timeout_s(rtt_s: float) -> float:
    """The retransmission timeout charged for a lost segment: ``max(200 ms, 2 RTT)``."""
    return max(MIN_RTO_S, 2 * rtt_s)


def segment_loss_probability(nbytes: int, loss: float, *, mss_bytes: int) -> float:
    """Probability that at least one of the packets carrying ``nbytes`` is lost."""
    packets = math.ceil(nbytes / mss_bytes)
    return 1.0 - (1.0 - loss) ** packets


@dataclass(frozen=True, slots=True)
class Transmission:
    """When one segment went over the link; times are on the shaper's clock."""

    nbytes: int
    arrived_at: float
    """When the emulator received it from the sender."""
    started_at: float
    """When its first bit went on the link (after the link and its stream were ready)."""
    finished_at: float
    """When its last bit was on the link."""
    deliver_at: float
    """When the receiver may read it: propagation, jitter, a possible RTO, stream order."""
    lost: bool
    """Whether it was hit by loss (and so waited one RTO)."""


class StreamOrder:
    """Per-stream, per-direction state: TCP's in-order delivery on one connection."""

    __slots__ = ("last_deliver_at", "ready_at")

    def __init__(self, *, ready_at: float) -> None:
        self.ready_at = ready_at
        """Before this, the sender could not have sent (the handshake was not done)."""
        self.last_deliver_at = -math.inf
        """Delivery time of the latest segment of this stream."""


class DirectionShaper:
    """One direction of the link: its serialization queue, delay, jitter and loss."""

    def __init__(
        self,
        profile: DirectionProfile,
        *,
        rto_s: float,
        rng: random.Random,
        clock: Clock,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        mss_bytes: int = DEFAULT_MSS_BYTES,
    ) -> None:
        if segment_bytes < 1 or mss_bytes < 1:
            raise ValueError("segment_bytes and mss_bytes must be ≥ 1")
        self.profile = profile
        self.rto_s = rto_s
        self.segment_bytes = segment_bytes
        self.mss_bytes = mss_bytes
        self._rng = rng
        self._clock = clock
        self._link_free_at = -math.inf

    @property
    def link_free_at(self) -> float:
        """When the last segment scheduled so far will have left the link."""
        return self._link_free_at

    def open_stream(self, *, ready_at: float | None = None) -> StreamOrder:
        """A new in-order stream (one direction of one connection)."""
        return StreamOrder(ready_at=self._clock() if ready_at is None else ready_at)

    def transmit(self, stream: StreamOrder, nbytes: int) -> Transmission:
        """Schedule one segment of ``nbytes`` arriving now; ``nbytes=0`` is a bare FIN."""
        if nbytes < 0:
            raise ValueError(f"nbytes must be ≥ 0, not {nbytes}")
        profile = self.profile
        arrived_at = self._clock()
        started_at = max(arrived_at, stream.ready_at)
        if profile.rate_bps is not None:
            started_at = max(started_at, self._link_free_at)
        finished_at = started_at + serialization_s(nbytes, profile.rate_bps)
        if profile.rate_bps is not None:
            self._link_free_at = finished_at

        one_way_s = profile.delay_s
        if profile.jitter_s > 0:
            one_way_s = max(0.0, one_way_s + self._rng.uniform(-profile.jitter_s, profile.jitter_s))
        lost = False
        if profile.loss > 0 and nbytes > 0:
            p_lost = segment_loss_probability(nbytes, profile.loss, mss_bytes=self.mss_bytes)
            lost = self._rng.random() < p_lost
        deliver_at = finished_at + one_way_s + (self.rto_s if lost else 0.0)
        # In-order delivery on the stream: late segments hold back those behind them.
        deliver_at = max(deliver_at, stream.last_deliver_at)
        stream.last_deliver_at = deliver_at
        return Transmission(
            nbytes=nbytes,
            arrived_at=arrived_at,
            started_at=started_at,
            finished_at=finished_at,
            deliver_at=deliver_at,
            lost=lost,
        )

    def send(self, stream: StreamOrder, nbytes: int) -> list[Transmission]:
        """Schedule a write of ``nbytes`` arriving now, cut into segments of ``segment_bytes``."""
        if nbytes < 0:
            raise ValueError(f"nbytes must be ≥ 0, not {nbytes}")
        full, rest = divmod(nbytes, self.segment_bytes)
        sizes = [self.segment_bytes] * full + ([rest] if rest else [])
        return [self.transmit(stream, size) for size in sizes]


class LinkShaper:
    """Both directions of one device's link; deterministic for a seed.

    Each direction draws from its own generator, so the uplink's jitter and loss samples do
    not depend on how much downlink traffic there was.
    """

    def __init__(
        self,
        profile: LinkProfile,
        *,
        seed: int,
        clock: Clock,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        mss_bytes: int = DEFAULT_MSS_BYTES,
    ) -> None:
        self.profile = profile
        self.rto_s = retransmission_timeout_s(profile.rtt_s)
        self._clock = clock
        self.uplink = DirectionShaper(
            profile.uplink,
            rto_s=self.rto_s,
            rng=random.Random(f"simultrain.netem:{seed}:uplink"),
            clock=clock,
            segment_bytes=segment_bytes,
            mss_bytes=mss_bytes,
        )
        self.downlink = DirectionShaper(
            profile.downlink,
            rto_s=self.rto_s,
            rng=random.Random(f"simultrain.netem:{seed}:downlink"),
            clock=clock,
            segment_bytes=segment_bytes,
            mss_bytes=mss_bytes,
        )

    def open_connection(self) -> tuple[StreamOrder, StreamOrder]:
        """The (uplink, downlink) streams of a connection the client opened now.

        The real handshake: SYN up, SYN-ACK down, then the client's ``connect()`` returns
        (one RTT after it began) and its ACK goes up (the server's ``accept()`` returns one
        uplink delay later). Nobody can send before that.
        """
        now = self._clock()
        client_ready_at = now + self.profile.rtt_s
        server_ready_at = client_ready_at + self.profile.uplink.delay_s
        return (
            self.uplink.open_stream(ready_at=client_ready_at),
            self.downlink.open_stream(ready_at=server_ready_at),
        )
