"""Link profiles, the custom spec grammar, the outage schedule and the settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from simultrain.netem.profiles import (
    PROFILES,
    DirectionProfile,
    DisconnectSchedule,
    InvalidProfile,
    LinkProfile,
    parse_profile,
    tc_netem_commands,
)
from simultrain.netem.settings import NetemSettings


def test_named_profiles_keep_the_spec_numbers() -> None:
    four_g, five_g = PROFILES["4g"], PROFILES["5g"]
    for direction in (four_g.uplink, four_g.downlink):
        assert direction == DirectionProfile(rate_bps=50e6, delay_s=0.015)
    assert four_g.rtt_s == pytest.approx(0.030)
    for direction in (five_g.uplink, five_g.downlink):
        assert direction == DirectionProfile(rate_bps=300e6, delay_s=0.005)
    assert five_g.rtt_s == pytest.approx(0.010)
    assert PROFILES["lan"].uplink.rate_bps == 1e9
    assert PROFILES["lan"].rtt_s == pytest.approx(0.0002)
    none = PROFILES["none"]
    assert not none.uplink.shaped and not none.downlink.shaped and none.disconnect is None


def test_a_name_parses_to_its_profile() -> None:
    assert parse_profile("4g") is PROFILES["4g"]
    assert parse_profile(" 5G ") is PROFILES["5g"]


def test_custom_spec() -> None:
    profile = parse_profile("rate=20mbit,rtt=40ms,jitter=5ms,loss=0.01")
    expected = DirectionProfile(rate_bps=20e6, delay_s=0.020, jitter_s=0.005, loss=0.01)
    assert profile.uplink == expected
    assert profile.downlink == expected
    assert profile.disconnect is None


def test_asymmetric_spec() -> None:
    profile = parse_profile("up=10mbit,down=50mbit,delay_up=20ms,delay_down=10ms,loss_down=1%")
    assert profile.uplink == DirectionProfile(rate_bps=10e6, delay_s=0.020)
    assert profile.downlink == DirectionProfile(rate_bps=50e6, delay_s=0.010, loss=0.01)
    assert profile.rtt_s == pytest.approx(0.030)


def test_spec_on_top_of_a_named_profile() -> None:
    profile = parse_profile("4g,loss=0.1%,disconnect_every=5s,disconnect_for=500ms")
    assert profile.uplink.rate_bps == 50e6
    assert profile.uplink.loss == pytest.approx(0.001)
    assert profile.disconnect == DisconnectSchedule(every_s=5.0, for_s=0.5)


@pytest.mark.parametrize(
    ("spec", "rate_bps"),
    [("rate=800kbit", 800e3), ("rate=1.5gbit", 1.5e9), ("rate=9600bit", 9600.0)],
)
def test_rate_units(spec: str, rate_bps: float) -> None:
    assert parse_profile(spec).uplink.rate_bps == pytest.approx(rate_bps)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "6g",
        "rate=50",  # no unit
        "rate=50mbps",  # ambiguous: tc reads it as megabytes
        "rate=0mbit",
        "rtt=30",  # no unit: tc would read microseconds
        "jitter=-1ms",
        "loss=1.5",
        "loss=100%",
        "loss=1ms",
        "colour=blue",
        "rate",
        "rate=1mbit,rate=2mbit",
        "rate=1mbit,up=2mbit",
        "rtt=10ms,delay_up=1ms",
        "disconnect_for=1s",
        "disconnect_every=1s",
        "disconnect_every=1s,disconnect_for=2s",
    ],
)
def test_bad_specs_are_refused(spec: str) -> None:
    with pytest.raises(InvalidProfile):
        parse_profile(spec)


@pytest.mark.parametrize(
    "profile",
    [
        *PROFILES.values(),
        parse_profile("up=12.5mbit,down=77kbit,delay_up=3ms,delay_down=250us,jitter=1ms"),
        parse_profile("5g,loss_up=0.002,disconnect_every=2s,disconnect_for=1.5s"),
    ],
)
def test_spec_round_trips(profile: LinkProfile) -> None:
    again = parse_profile(profile.spec())
    assert (again.uplink, again.downlink, again.disconnect) == (
        profile.uplink,
        profile.downlink,
        profile.disconnect,
    )


def test_outage_schedule_arithmetic() -> None:
    schedule = DisconnectSchedule(every_s=5.0, for_s=1.0)
    assert [schedule.outage_start_s(k) for k in (1, 2, 3)] == [5.0, 10.0, 15.0]
    assert not schedule.is_down(0.0)
    assert not schedule.is_down(0.5)  # the first period is always clean
    assert not schedule.is_down(4.999)
    assert schedule.is_down(5.0)
    assert schedule.is_down(5.999)
    assert not schedule.is_down(6.0)
    assert schedule.is_down(10.2)
    with pytest.raises(ValueError):
        schedule.outage_start_s(0)
    with pytest.raises(InvalidProfile):
        DisconnectSchedule(every_s=1.0, for_s=1.0)


def test_tc_netem_equivalent() -> None:
    commands = tc_netem_commands(parse_profile("4g,jitter=2ms,loss=0.1%"), dev="eth0")
    assert commands[0] == "tc qdisc add dev eth0 root netem delay 15ms 2ms rate 50mbit loss 0.1%"
    assert commands[-1] == "tc qdisc add dev ifb0 root netem delay 15ms 2ms rate 50mbit loss 0.1%"
    assert any("mirred egress redirect dev ifb0" in command for command in commands)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMULTRAIN_NETEM_UPSTREAM_PORT", "8123")
    monkeypatch.setenv("SIMULTRAIN_NETEM_PROFILE", "5g")
    monkeypatch.setenv("SIMULTRAIN_NETEM_SEED", "9")
    monkeypatch.setenv("SIMULTRAIN_NETEM_DISCONNECT_EVERY_S", "3")
    monkeypatch.setenv("SIMULTRAIN_NETEM_DISCONNECT_FOR_S", "0.5")
    settings = NetemSettings(**{})  # everything from the environment
    assert (settings.listen_host, settings.listen_port) == ("127.0.0.1", 0)
    assert (settings.upstream_port, settings.seed) == (8123, 9)
    profile = settings.link_profile()
    assert profile.uplink == PROFILES["5g"].uplink
    assert profile.disconnect == DisconnectSchedule(every_s=3.0, for_s=0.5)
    with pytest.raises(ValidationError):
        setattr(settings, "seed", 1)  # noqa: B010 (mypy does not know the model is frozen)


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # the upstream port is required
        {"upstream_port": 80, "profile": "rate=fast"},
        {"upstream_port": 80, "disconnect_every_s": 5.0},
        {"upstream_port": 80, "disconnect_every_s": 1.0, "disconnect_for_s": 2.0},
        {"upstream_port": 70000},
        {"upstream_port": 80, "unknown": 1},
    ],
)
def test_bad_settings_are_refused(
    overrides: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SIMULTRAIN_NETEM_UPSTREAM_PORT", raising=False)
    with pytest.raises(ValidationError):
        NetemSettings(**overrides)  # type: ignore[arg-type]
