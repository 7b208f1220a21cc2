"""User-space link emulator: an asyncio TCP proxy that makes loopback look like 4G or 5G.

- ``profiles``: :class:`LinkProfile` (per-direction rate, delay, jitter, loss; outages),
  the paper's named profiles (docs/NETEM.md) and the custom spec parser.
- ``shaper``: the pure shaping arithmetic (injectable clock, seeded randomness, no I/O).
- ``proxy``: :class:`LinkEmulator`, which relays bytes at the times the shaper computes.
- ``settings`` / ``service``: :class:`NetemSettings` (``SIMULTRAIN_NETEM_*``), :func:`serve`
  and :func:`run` for the ``simultrain netem`` command and ``python -m simultrain.netem``.

The model and the ``tc netem`` equivalents are in ``docs/NETEM.md``.
"""

from simultrain.netem.profiles import (
    PROFILES,
    DirectionProfile,
    DisconnectSchedule,
    InvalidProfile,
    LinkProfile,
    parse_profile,
    tc_netem_commands,
)
from simultrain.netem.proxy import EmulatorStats, IllegalState, LinkEmulator
from simultrain.netem.service import run, serve
from simultrain.netem.settings import NetemSettings
from simultrain.netem.shaper import LinkShaper, Transmission

__all__ = [
    "PROFILES",
    "DirectionProfile",
    "DisconnectSchedule",
    "EmulatorStats",
    "IllegalState",
    "InvalidProfile",
    "LinkEmulator",
    "LinkProfile",
    "LinkShaper",
    "NetemSettings",
    "Transmission",
    "parse_profile",
    "run",
    "serve",
    "tc_netem_commands",
]
