"""Link profiles: what the emulated link between an edge device and the cloud looks like.

A :class:`LinkProfile` is one device's mobile link: a :class:`DirectionProfile` for the
uplink (edge → cloud, the client → upstream direction of the proxy) and one for the downlink
(cloud → edge), plus an optional :class:`DisconnectSchedule` for fault tests.

The named profiles keep the paper's numbers (docs/DESIGN.md §10): ``4g`` is
50 Mbit/s with a 30 ms RTT and ``5g`` is 300 Mbit/s with a 10 ms RTT, both ways. Real 4G
uplinks are slower than their downlinks; use a custom spec (``up=10mbit,down=50mbit,…``) for
that. The spec grammar is documented in ``docs/NETEM.md`` and in :func:`parse_profile`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

__all__ = [
    "PROFILES",
    "DirectionProfile",
    "DisconnectSchedule",
    "InvalidProfile",
    "LinkProfile",
    "parse_duration_s",
    "parse_loss",
    "parse_profile",
    "parse_rate_bps",
    "tc_netem_commands",
]


class InvalidProfile(ValueError):
    """A link profile or a custom spec string is malformed or out of range."""


@dataclass(frozen=True, slots=True)
class DirectionProfile:
    """How one direction of the link shapes traffic.

    ``rate_bps`` is the bottleneck rate in bits per second of TCP payload (``None``: no rate
    limit). ``delay_s`` is the one-way propagation delay, ``jitter_s`` the half-width of a
    uniform variation added to it per segment (the ``tc netem`` default distribution), and
    ``loss`` the probability that one packet (one MSS) is lost; a loss is not a missing byte
    but a delay of one retransmission timeout, because TCP retransmits (see ``shaper.py``).
    """

    rate_bps: float | None = None
    delay_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0

    def __post_init__(self) -> None:
        if self.rate_bps is not None and not (math.isfinite(self.rate_bps) and self.rate_bps > 0):
            raise InvalidProfile(f"rate must be a positive number of bit/s, not {self.rate_bps}")
        for name, value in (("delay", self.delay_s), ("jitter", self.jitter_s)):
            if not (math.isfinite(value) and value >= 0):
                raise InvalidProfile(f"{name} must be a finite duration ≥ 0 s, not {value}")
        # loss = 1 would never deliver a byte; TCP would give the connection up instead.
        if not (0.0 <= self.loss < 1.0):
            raise InvalidProfile(f"loss must be a probability in [0, 1), not {self.loss}")

    @property
    def shaped(self) -> bool:
        """Whether this direction changes the traffic at all."""
        return self.rate_bps is not None or self.delay_s > 0 or self.jitter_s > 0 or self.loss > 0


@dataclass(frozen=True, slots=True)
class DisconnectSchedule:
    """Periodic outages for fault tests (independent of the profile's rates).

    Outage ``k`` (k = 1, 2, …) starts ``k * every_s`` after the emulator starts and lasts
    ``for_s``: every open connection is cut at its start and new connections are refused
    until its end. The first ``every_s`` seconds are always clean, so a run can start.
    """

    every_s: float
    for_s: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.every_s) and self.every_s > 0):
            raise InvalidProfile(f"disconnect_every must be a duration > 0 s, not {self.every_s}")
        if not (math.isfinite(self.for_s) and 0 < self.for_s < self.every_s):
            raise InvalidProfile(
                f"disconnect_for must be > 0 s and shorter than disconnect_every "
                f"({self.every_s} s), not {self.for_s}"
            )

    def outage_start_s(self, index: int) -> float:
        """Seconds after start at which outage ``index`` (1-based) begins."""
        if index < 1:
            raise ValueError(f"outages are numbered from 1, not {index}")
        return index * self.every_s

    def is_down(self, elapsed_s: float) -> bool:
        """Whether the link is in an outage ``elapsed_s`` seconds after start."""
        index = math.floor(elapsed_s / self.every_s)
        return index >= 1 and elapsed_s - index * self.every_s < self.for_s


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """One device's link: both directions and an optional outage schedule."""

    name: str
    uplink: DirectionProfile = field(default_factory=DirectionProfile)
    downlink: DirectionProfile = field(default_factory=DirectionProfile)
    disconnect: DisconnectSchedule | None = None

    @classmethod
    def symmetric(
        cls,
        name: str,
        *,
        rate_bps: float | None,
        rtt_s: float,
        jitter_s: float = 0.0,
        loss: float = 0.0,
    ) -> LinkProfile:
        """The same rate both ways, the RTT split evenly into two one-way delays."""
        direction = DirectionProfile(
            rate_bps=rate_bps, delay_s=rtt_s / 2, jitter_s=jitter_s, loss=loss
        )
        return cls(name=name, uplink=direction, downlink=direction)

    @property
    def rtt_s(self) -> float:
        """Base round-trip time: the two one-way delays, without jitter or serialization."""
        return self.uplink.delay_s + self.downlink.delay_s

    def with_disconnects(self, every_s: float | None, for_s: float | None) -> LinkProfile:
        """This profile with an outage schedule (``every_s=None`` removes it)."""
        if every_s is None:
            return replace(self, disconnect=None)
        if for_s is None:
            raise InvalidProfile("disconnect_every needs disconnect_for (how long each outage is)")
        return replace(self, disconnect=DisconnectSchedule(every_s=every_s, for_s=for_s))

    def spec(self) -> str:
        """A canonical custom spec string; ``parse_profile(p.spec())`` gives back ``p``'s link."""
        parts = [
            f"up={_format_rate(self.uplink.rate_bps)}",
            f"down={_format_rate(self.downlink.rate_bps)}",
            f"delay_up={_format_duration(self.uplink.delay_s)}",
            f"delay_down={_format_duration(self.downlink.delay_s)}",
        ]
        if self.uplink.jitter_s or self.downlink.jitter_s:
            parts.append(f"jitter_up={_format_duration(self.uplink.jitter_s)}")
            parts.append(f"jitter_down={_format_duration(self.downlink.jitter_s)}")
        if self.uplink.loss or self.downlink.loss:
            parts.append(f"loss_up={self.uplink.loss!r}")
            parts.append(f"loss_down={self.downlink.loss!r}")
        if self.disconnect is not None:
            parts.append(f"disconnect_every={_format_duration(self.disconnect.every_s)}")
            parts.append(f"disconnect_for={_format_duration(self.disconnect.for_s)}")
        return ",".join(parts)


# The paper's links (docs/DESIGN.md §10): 4G 50 Mbit/s, 30 ms RTT; 5G 300 Mbit/s, 10 ms RTT.
PROFILES: Mapping[str, LinkProfile] = MappingProxyType(
    {
        "4g": LinkProfile.symmetric("4g", rate_bps=50e6, rtt_s=0.030),
        "5g": LinkProfile.symmetric("5g", rate_bps=300e6, rtt_s=0.010),
        "lan": LinkProfile.symmetric("lan", rate_bps=1e9, rtt_s=0.0002),
        "none": LinkProfile(name="none"),
    }
)

# ---------------------------------------------------------------------------------------------
# Custom spec strings: "[BASE,]key=value,key=value,…"

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?"
_QUANTITY = re.compile(rf"^(?P<number>{_NUMBER})\s*(?P<unit>[a-z%/]*)$")

# Decimal prefixes, as tc(8) reads "kbit", "mbit", "gbit".
_RATE_UNITS = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
# Divisors rather than factors: 15 / 1e3 is exactly the float 0.015, 15 * 1e-3 is not.
_TIME_UNITS_PER_S = {"us": 1e6, "ms": 1e3, "s": 1.0}

# Every key, and the field(s) it sets. Aliases map onto the same canonical keys.
_KEY_ALIASES = {
    "rate_up": "up",
    "rate_down": "down",
    "every": "disconnect_every",
    "for": "disconnect_for",
}
_KEYS = (
    "rate",
    "up",
    "down",
    "rtt",
    "delay",
    "delay_up",
    "delay_down",
    "jitter",
    "jitter_up",
    "jitter_down",
    "loss",
    "loss_up",
    "loss_down",
    "disconnect_every",
    "disconnect_for",
)


def _split_quantity(text: str, what: str) -> tuple[float, str]:
    match = _QUANTITY.match(text.strip().lower())
    if match is None:
        raise InvalidProfile(f"cannot read {what} {text!r}")
    return float(match.group("number")), match.group("unit")


def parse_rate_bps(text: str) -> float | None:
    """``"50mbit"`` → 50e6 bit/s; ``"unlimited"`` → ``None``. Units: bit, kbit, mbit, gbit."""
    if text.strip().lower() in {"unlimited", "none", "inf"}:
        return None
    value, unit = _split_quantity(text, "rate")
    unit = unit.removesuffix("/s").removesuffix("ps")
    if unit in {"b", "kb", "mb", "gb", "k", "m", "g"}:
        # tc(8) reads "mbps" as megaBYTES per second; people usually mean megabits.
        raise InvalidProfile(
            f"rate {text!r} is ambiguous: write it in bits, e.g. {value:g}mbit "
            "(units: bit, kbit, mbit, gbit)"
        )
    if unit not in _RATE_UNITS:
        raise InvalidProfile(f"rate {text!r} needs a unit: bit, kbit, mbit or gbit (e.g. 50mbit)")
    rate = value * _RATE_UNITS[unit]
    if rate <= 0:
        raise InvalidProfile(f"rate must be > 0, not {text!r} (use 'unlimited' for no limit)")
    return rate


def parse_duration_s(text: str) -> float:
    """``"15ms"`` → 0.015. Units: us, ms, s; a bare ``0`` is allowed."""
    value, unit = _split_quantity(text, "duration")
    if unit == "" and value == 0:
        return 0.0
    if unit not in _TIME_UNITS_PER_S:
        # tc(8) reads a bare number as microseconds; refuse to guess.
        raise InvalidProfile(f"duration {text!r} needs a unit: us, ms or s (e.g. 15ms)")
    return value / _TIME_UNITS_PER_S[unit]


def parse_loss(text: str) -> float:
    """``"0.01"`` or ``"1%"`` → 0.01: the probability that one packet is lost."""
    value, unit = _split_quantity(text, "loss")
    if unit == "%":
        value /= 100
    elif unit:
        raise InvalidProfile(f"loss {text!r} must be a fraction (0.01) or a percentage (1%)")
    if not 0 <= value < 1:
        raise InvalidProfile(f"loss must be in [0, 1), not {text!r}")
    return value


def parse_profile(spec: str) -> LinkProfile:
    """A named profile (``4g``, ``5g``, ``lan``, ``none``) or a custom spec.

    A custom spec is ``[BASE,]key=value,…``: it starts from the named profile ``BASE`` (or
    from ``none``) and overrides what it names. Keys: ``rate`` (both ways), ``up`` / ``down``
    (one direction each); ``rtt`` (split evenly), ``delay`` (one-way, both),
    ``delay_up`` / ``delay_down``; ``jitter``, ``jitter_up``, ``jitter_down`` (one-way);
    ``loss``, ``loss_up``, ``loss_down`` (per packet, ``0.01`` or ``1%``);
    ``disconnect_every`` / ``disconnect_for``.
    Example: ``rate=20mbit,rtt=40ms,jitter=5ms,loss=0.01``.
    """
    text = spec.strip()
    if not text:
        raise InvalidProfile("empty link profile")
    tokens = [token.strip() for token in text.split(",")]
    base = PROFILES["none"]
    if "=" not in tokens[0]:
        name = tokens.pop(0).lower()
        if name not in PROFILES:
            raise InvalidProfile(
                f"unknown link profile {name!r}; named profiles: {', '.join(PROFILES)}"
            )
        base = PROFILES[name]
        if not tokens:
            return base
    values = _parse_assignments(tokens)
    return _apply(base, values, name=text)


def _parse_assignments(tokens: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        key = _KEY_ALIASES.get(key.strip().lower(), key.strip().lower())
        if not sep or not value.strip():
            raise InvalidProfile(f"expected key=value in the link spec, got {token!r}")
        if key not in _KEYS:
            raise InvalidProfile(f"unknown link spec key {key!r}; keys: {', '.join(_KEYS)}")
        if key in values:
            raise InvalidProfile(f"link spec key {key!r} given twice")
        values[key] = value.strip()
    # A general key and its specific form in one spec would leave the winner to key order.
    for general, specific in (
        ("rate", ("up", "down")),
        ("rtt", ("delay", "delay_up", "delay_down")),
        ("delay", ("delay_up", "delay_down")),
        ("jitter", ("jitter_up", "jitter_down")),
        ("loss", ("loss_up", "loss_down")),
    ):
        clash = [key for key in specific if key in values]
        if general in values and clash:
            raise InvalidProfile(f"link spec gives both {general!r} and {clash[0]!r}")
    return values


def _set_rate(direction: DirectionProfile, text: str) -> DirectionProfile:
    return replace(direction, rate_bps=parse_rate_bps(text))


def _set_delay(direction: DirectionProfile, text: str) -> DirectionProfile:
    return replace(direction, delay_s=parse_duration_s(text))


def _set_half_rtt(direction: DirectionProfile, text: str) -> DirectionProfile:
    return replace(direction, delay_s=parse_duration_s(text) / 2)


def _set_jitter(direction: DirectionProfile, text: str) -> DirectionProfile:
    return replace(direction, jitter_s=parse_duration_s(text))


def _set_loss(direction: DirectionProfile, text: str) -> DirectionProfile:
    return replace(direction, loss=parse_loss(text))


_BOTH = ("uplink", "downlink")
# key → (the directions it sets, how). _parse_assignments refuses a spec that gives both a
# general key ("rate") and a specific one ("up"), so the order here never decides a winner.
_SETTERS: tuple[
    tuple[str, tuple[str, ...], Callable[[DirectionProfile, str], DirectionProfile]], ...
] = (
    ("rate", _BOTH, _set_rate),
    ("up", ("uplink",), _set_rate),
    ("down", ("downlink",), _set_rate),
    ("rtt", _BOTH, _set_half_rtt),
    ("delay", _BOTH, _set_delay),
    ("delay_up", ("uplink",), _set_delay),
    ("delay_down", ("downlink",), _set_delay),
    ("jitter", _BOTH, _set_jitter),
    ("jitter_up", ("uplink",), _set_jitter),
    ("jitter_down", ("downlink",), _set_jitter),
    ("loss", _BOTH, _set_loss),
    ("loss_up", ("uplink",), _set_loss),
    ("loss_down", ("downlink",), _set_loss),
)


def _apply(base: LinkProfile, values: dict[str, str], *, name: str) -> LinkProfile:
    directions = {"uplink": base.uplink, "downlink": base.downlink}
    for key, targets, setter in _SETTERS:
        if key in values:
            for target in targets:
                directions[target] = setter(directions[target], values[key])
    profile = LinkProfile(
        name=name,
        uplink=directions["uplink"],
        downlink=directions["downlink"],
        disconnect=base.disconnect,
    )
    if "disconnect_every" in values or "disconnect_for" in values:
        if "disconnect_every" not in values:
            raise InvalidProfile("disconnect_for needs disconnect_every (how often to cut)")
        profile = profile.with_disconnects(
            parse_duration_s(values["disconnect_every"]),
            parse_duration_s(values["disconnect_for"]) if "disconnect_for" in values else None,
        )
    return profile


def _format_rate(rate_bps: float | None) -> str:
    if rate_bps is None:
        return "unlimited"
    for unit, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if rate_bps >= scale:
            return f"{rate_bps / scale:.12g}{unit}"
    return f"{rate_bps:.12g}bit"


def _format_duration(seconds: float) -> str:
    if seconds == 0:
        return "0"
    if seconds >= 1:
        return f"{seconds:.12g}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.12g}ms"
    return f"{seconds * 1e6:.12g}us"


def _tc_netem_args(direction: DirectionProfile) -> str:
    args = ["netem"]
    if direction.delay_s or direction.jitter_s:
        args += ["delay", _format_duration(direction.delay_s)]
        if direction.jitter_s:
            args.append(_format_duration(direction.jitter_s))
    if direction.rate_bps is not None:
        args += ["rate", _format_rate(direction.rate_bps)]
    if direction.loss:
        args += ["loss", f"{direction.loss * 100:.12g}%"]
    return " ".join(args)


def tc_netem_commands(profile: LinkProfile, *, dev: str = "eth0", ifb: str = "ifb0") -> list[str]:
    """The ``tc netem`` commands that shape ``dev`` like ``profile``, on a host that has it.

    Run on the edge host: the uplink is ``dev``'s egress; the downlink is its ingress,
    redirected through the ``ifb`` device because netem only shapes egress. Outages have no
    netem equivalent (use ``ip link set dev DEV down`` / ``up``).
    """
    return [
        f"tc qdisc add dev {dev} root {_tc_netem_args(profile.uplink)}",
        "modprobe ifb numifbs=1",
        f"ip link set dev {ifb} up",
        f"tc qdisc add dev {dev} handle ffff: ingress",
        f"tc filter add dev {dev} parent ffff: protocol all u32 match u32 0 0 "
        f"action mirred egress redirect dev {ifb}",
        f"tc qdisc add dev {ifb} root {_tc_netem_args(profile.downlink)}",
    ]
