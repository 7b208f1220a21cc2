"""The emulator's shaping arithmetic, checked with a fake clock: no sockets, no event loop."""

from __future__ import annotations

import random

import pytest

from simultrain.netem.profiles import DirectionProfile, LinkProfile
from simultrain.netem.shaper import (
    DirectionShaper,
    LinkShaper,
    retransmission_timeout_s,
    segment_loss_probability,
    serialization_s,
)

MBIT = 1e6


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_direction(
    profile: DirectionProfile,
    clock: FakeClock,
    *,
    seed: int = 0,
    rto_s: float = 0.2,
    segment_bytes: int = 16384,
    mss_bytes: int = 1448,
) -> DirectionShaper:
    return DirectionShaper(
        profile,
        rto_s=rto_s,
        rng=random.Random(seed),
        clock=clock,
        segment_bytes=segment_bytes,
        mss_bytes=mss_bytes,
    )


def test_serialization_time_is_bits_over_rate() -> None:
    assert serialization_s(1250, 1 * MBIT) == pytest.approx(0.010)
    assert serialization_s(1_000_000, 10 * MBIT) == pytest.approx(0.8)
    assert serialization_s(10**9, None) == 0.0
    with pytest.raises(ValueError):
        serialization_s(-1, MBIT)


def test_one_segment_is_serialized_then_delayed() -> None:
    clock = FakeClock(5.0)
    shaper = make_direction(DirectionProfile(rate_bps=1 * MBIT, delay_s=0.015), clock)
    tx = shaper.transmit(shaper.open_stream(), 1250)
    assert tx.arrived_at == tx.started_at == 5.0
    assert tx.finished_at == pytest.approx(5.010)
    assert tx.deliver_at == pytest.approx(5.010 + 0.015)
    assert not tx.lost
    assert shaper.link_free_at == pytest.approx(5.010)


def test_back_to_back_segments_queue_behind_each_other() -> None:
    clock = FakeClock()
    shaper = make_direction(DirectionProfile(rate_bps=8 * MBIT, delay_s=0.001), clock)
    stream = shaper.open_stream()
    first = shaper.transmit(stream, 10_000)  # 10 ms at 8 Mbit/s
    second = shaper.transmit(stream, 10_000)
    assert second.started_at == pytest.approx(first.finished_at)
    assert second.finished_at == pytest.approx(0.020)
    assert second.deliver_at == pytest.approx(0.021)


def test_an_idle_link_starts_at_arrival() -> None:
    clock = FakeClock()
    shaper = make_direction(DirectionProfile(rate_bps=8 * MBIT), clock)
    stream = shaper.open_stream()
    shaper.transmit(stream, 1000)  # busy until 1 ms
    clock.advance(0.5)
    later = shaper.transmit(stream, 1000)
    assert later.started_at == 0.5
    assert later.finished_at == pytest.approx(0.501)


def test_streams_share_the_bottleneck() -> None:
    clock = FakeClock()
    shaper = make_direction(DirectionProfile(rate_bps=8 * MBIT), clock)
    a, b = shaper.open_stream(), shaper.open_stream()
    tx_a = shaper.transmit(a, 10_000)
    tx_b = shaper.transmit(b, 10_000)
    assert tx_b.started_at == pytest.approx(tx_a.finished_at)


def test_unlimited_rate_adds_only_the_delay() -> None:
    clock = FakeClock(1.0)
    shaper = make_direction(DirectionProfile(delay_s=0.025), clock)
    stream = shaper.open_stream()
    for _ in range(3):
        tx = shaper.transmit(stream, 1_000_000)
        assert tx.finished_at == 1.0
        assert tx.deliver_at == pytest.approx(1.025)


def test_large_writes_are_segmented_and_the_first_byte_arrives_early() -> None:
    clock = FakeClock()
    shaper = make_direction(
        DirectionProfile(rate_bps=10 * MBIT, delay_s=0.005), clock, segment_bytes=16384
    )
    sent = shaper.send(shaper.open_stream(), 40_000)
    assert [tx.nbytes for tx in sent] == [16384, 16384, 40_000 - 2 * 16384]
    assert sent[-1].finished_at == pytest.approx(40_000 * 8 / (10 * MBIT))
    assert sent[0].deliver_at < sent[-1].finished_at
    assert shaper.send(shaper.open_stream(), 0) == []


def test_jitter_varies_the_delay_but_never_reorders_a_stream() -> None:
    clock = FakeClock()
    profile = DirectionProfile(rate_bps=1000 * MBIT, delay_s=0.010, jitter_s=0.008)
    shaper = make_direction(profile, clock, seed=7)
    stream = shaper.open_stream()
    deliveries = []
    raw_delays = []
    for _ in range(500):
        tx = shaper.transmit(stream, 1000)
        deliveries.append(tx.deliver_at)
        raw_delays.append(tx.deliver_at - tx.finished_at)
        clock.advance(0.0005)  # segments closer together than the jitter
    assert deliveries == sorted(deliveries)
    # Jitter is in effect: delays spread over the band, never below delay - jitter.
    assert min(raw_delays) >= 0.010 - 0.008 - 1e-12
    assert max(raw_delays) - min(raw_delays) > 0.008


def test_jitter_never_makes_the_delay_negative() -> None:
    clock = FakeClock()
    shaper = make_direction(DirectionProfile(delay_s=0.001, jitter_s=0.050), clock, seed=3)
    for _ in range(200):
        tx = shaper.transmit(shaper.open_stream(), 100)
        assert tx.deliver_at >= tx.finished_at


def test_rto_is_linux_minimum_or_two_rtts() -> None:
    assert retransmission_timeout_s(0.030) == 0.2
    assert retransmission_timeout_s(0.300) == pytest.approx(0.6)


def test_segment_loss_probability_counts_packets() -> None:
    assert segment_loss_probability(1000, 0.01, mss_bytes=1448) == pytest.approx(0.01)
    # 16 KiB is 12 packets of 1448 bytes.
    assert segment_loss_probability(16384, 0.01, mss_bytes=1448) == pytest.approx(1 - 0.99**12)
    assert segment_loss_probability(0, 0.5, mss_bytes=1448) == 0.0


def test_a_lost_segment_is_delivered_one_rto_late() -> None:
    clock = FakeClock()
    profile = DirectionProfile(rate_bps=100 * MBIT, delay_s=0.015, loss=0.3)
    shaper = make_direction(profile, clock, seed=11, rto_s=0.2)
    lost = 0
    trials = 4000
    for _ in range(trials):
        # One stream each, so no segment is held back by another's loss.
        tx = shaper.transmit(shaper.open_stream(), 1000)  # one packet
        expected = tx.finished_at + 0.015 + (0.2 if tx.lost else 0.0)
        assert tx.deliver_at == pytest.approx(expected)
        lost += tx.lost
        clock.advance(0.001)
    assert 0.27 < lost / trials < 0.33


def test_a_lost_segment_holds_back_its_stream_but_not_others() -> None:
    clock = FakeClock()
    profile = DirectionProfile(rate_bps=1000 * MBIT, delay_s=0.005, loss=0.5)
    shaper = make_direction(profile, clock, seed=1, rto_s=0.2)
    stream = shaper.open_stream()
    while not (first := shaper.transmit(stream, 100)).lost:
        clock.advance(0.001)
    behind = shaper.transmit(stream, 100)
    assert behind.deliver_at >= first.deliver_at  # head-of-line blocking on its stream
    # Another connection's segment, sent after the loss, is not blocked by it.
    while (independent := shaper.transmit(shaper.open_stream(), 100)).lost:
        pass
    assert independent.deliver_at < first.deliver_at


def test_fin_follows_the_data_and_is_never_lost() -> None:
    clock = FakeClock()
    profile = DirectionProfile(rate_bps=10 * MBIT, delay_s=0.010, jitter_s=0.005, loss=0.9)
    shaper = make_direction(profile, clock, seed=5)
    stream = shaper.open_stream()
    data = shaper.send(stream, 100_000)
    fin = shaper.transmit(stream, 0)
    assert not fin.lost
    assert fin.deliver_at >= max(tx.deliver_at for tx in data)


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_deterministic_for_a_seed(seed: int) -> None:
    profile = LinkProfile.symmetric("t", rate_bps=20 * MBIT, rtt_s=0.040, jitter_s=0.005, loss=0.02)

    def run(seed: int) -> list[tuple[float, bool]]:
        clock = FakeClock()
        link = LinkShaper(profile, seed=seed, clock=clock)
        up, down = link.open_connection()
        out = []
        for i in range(300):
            direction, stream = (link.uplink, up) if i % 3 else (link.downlink, down)
            tx = direction.transmit(stream, 1 + (i * 7919) % 16384)
            out.append((tx.deliver_at, tx.lost))
            clock.advance(0.002)
        return out

    assert run(seed) == run(seed)
    assert run(seed) != run(seed + 1)


def test_throughput_converges_to_the_rate() -> None:
    clock = FakeClock()
    rate = 50 * MBIT
    shaper = make_direction(DirectionProfile(rate_bps=rate, delay_s=0.015), clock)
    stream = shaper.open_stream()
    rng = random.Random(0)
    sent = []
    for _ in range(5000):
        # Offered about 80 Mbit/s in uneven writes: the link is the bottleneck.
        sent += shaper.send(stream, rng.randint(1, 20_000))
        clock.advance(0.001)
    total_bytes = sum(tx.nbytes for tx in sent)
    busy_s = sent[-1].finished_at - sent[0].started_at
    assert total_bytes * 8 / busy_s == pytest.approx(rate, rel=1e-9)  # never idle, never faster
    goodput = total_bytes * 8 / (sent[-1].deliver_at - sent[0].arrived_at)
    assert goodput == pytest.approx(rate, rel=0.01)


def test_an_underloaded_link_delivers_at_the_offered_rate() -> None:
    clock = FakeClock()
    shaper = make_direction(DirectionProfile(rate_bps=50 * MBIT, delay_s=0.015), clock)
    stream = shaper.open_stream()
    for _ in range(100):
        tx = shaper.transmit(stream, 1000)  # 1000 B per 10 ms = 0.8 Mbit/s
        assert tx.started_at == tx.arrived_at
        assert tx.deliver_at == pytest.approx(tx.arrived_at + 1000 * 8 / (50 * MBIT) + 0.015)
        clock.advance(0.010)


def test_a_new_connection_pays_the_handshake() -> None:
    clock = FakeClock(2.0)
    profile = LinkProfile(
        name="asym",
        uplink=DirectionProfile(delay_s=0.020),
        downlink=DirectionProfile(delay_s=0.010),
    )
    link = LinkShaper(profile, seed=0, clock=clock)
    up, down = link.open_connection()
    assert up.ready_at == pytest.approx(2.030)  # connect() returns after one RTT
    assert down.ready_at == pytest.approx(2.050)  # accept() returns when the ACK arrives
    request = link.uplink.transmit(up, 100)
    assert request.deliver_at == pytest.approx(2.050)
    reply = link.downlink.transmit(down, 100)
    assert reply.deliver_at == pytest.approx(2.060)  # two RTTs after connect() began
    assert link.rto_s == 0.2
