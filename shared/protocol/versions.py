"""Which protocol a session speaks: major versions, their negotiation, capabilities.

PROTOCOL.md §1.1 and §10. Two mechanisms, one for each kind of change:

- A **major version** changes the wire incompatibly (a field added to or removed from a
  message, a meaning changed). Each is a WebSocket subprotocol, ``simultrain.v<N>``
  (RFC 6455 §1.9): the edge offers the versions it speaks in ``Sec-WebSocket-Protocol``,
  newest first; the cloud picks the newest it speaks too (§4.2.2), or accepts without a
  subprotocol and refuses at once with ``protocol_version_mismatch`` (close 4000) naming
  the versions it speaks. Every frame's envelope carries the version in force, ``v``.
  An edge that offers no ``simultrain.*`` subprotocol at all (the first release did not)
  is served by the ``v`` of its HELLO: a supported one opens the session, any other is
  refused with 4000, written in the edge's own ``v`` so that the edge can read it.
- A **capability** is an additive, optional extension inside a major version: a new
  message type, a new optional behaviour. HELLO's ``capabilities`` map says what the edge
  can do (name → a value the capability defines), WELCOME's the ones the cloud turned on
  for the session; nothing a capability defines is sent unless WELCOME granted it. Names
  a side does not know are ignored. :data:`CAPABILITIES` is the registry: a new capability
  is one entry there (and its section in PROTOCOL.md).

Pure: no I/O. The services call :func:`negotiate` on the offered subprotocols and
:func:`grant_capabilities` on HELLO's map; the sessions check the rest.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

from simultrain.shared.errors import ProtocolVersionMismatch
from simultrain.shared.protocol.frames import ConfigValue

__all__ = [
    "CAPABILITIES",
    "CREDITS",
    "FIRST_RELEASE_VERSION",
    "PROTOCOL_VERSION",
    "SUBPROTOCOL_PREFIX",
    "SUPPORTED_VERSIONS",
    "Capability",
    "Negotiation",
    "capability_of_frame",
    "grant_capabilities",
    "negotiate",
    "offered_subprotocols",
    "subprotocol_name",
    "subprotocol_version",
    "version_mismatch",
]

PROTOCOL_VERSION: Final = 2
"""The newest major version this implementation speaks (the ``v`` of the frames it writes)."""

SUPPORTED_VERSIONS: Final[tuple[int, ...]] = (2,)
"""Every major version this implementation speaks, oldest first."""

FIRST_RELEASE_VERSION: Final = 1
"""What an edge speaks that offers no subprotocol and writes ``v`` = 1: the first release
(its HELLO has no ``model_fingerprint``, its DELTA and SNAP no ``checksum``)."""

SUBPROTOCOL_PREFIX: Final = "simultrain.v"
_SUBPROTOCOL = re.compile(r"simultrain\.v([1-9][0-9]{0,8})")


def subprotocol_name(version: int) -> str:
    """``simultrain.v<version>``, the WebSocket subprotocol of one major version."""
    return f"{SUBPROTOCOL_PREFIX}{version}"


def subprotocol_version(name: str) -> int | None:
    """The major version a subprotocol names; None for any other subprotocol."""
    match = _SUBPROTOCOL.fullmatch(name.strip())
    return int(match.group(1)) if match else None


def offered_subprotocols(versions: Iterable[int] = SUPPORTED_VERSIONS) -> list[str]:
    """What an edge puts in ``Sec-WebSocket-Protocol``: its versions, newest first."""
    return [subprotocol_name(v) for v in sorted(set(versions), reverse=True)]


def _range(versions: Iterable[int]) -> str:
    ordered = sorted(set(versions))
    if not ordered:
        return "none"
    if ordered == list(range(ordered[0], ordered[-1] + 1)) and len(ordered) > 1:
        return f"{subprotocol_name(ordered[0])} to v{ordered[-1]}"
    return ", ".join(subprotocol_name(v) for v in ordered)


def version_mismatch(
    peer_versions: Iterable[int], *, supported: Sequence[int] = SUPPORTED_VERSIONS
) -> ProtocolVersionMismatch:
    """The cloud's 4000 refusal of an edge that speaks ``peer_versions`` (empty: none named).

    The reason (also the close reason, at most 123 bytes) names the versions the cloud
    speaks and which side to upgrade. ``peer_version`` is the version to write the ERROR
    in, so that the edge can read it (PROTOCOL.md §1.1).
    """
    theirs = sorted(set(peer_versions))
    ours = _range(supported)
    if theirs and max(theirs) > max(supported):
        advice = "upgrade this cloud or use an older edge"
    else:
        advice = "upgrade the edge"
    said = _range(theirs) if theirs else "named none"
    return ProtocolVersionMismatch(
        f"this cloud speaks {ours}, the edge {said}: {advice}, do not retry",
        peer_version=max(theirs) if theirs else None,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Negotiation:
    """What the cloud answers an upgrade request with (PROTOCOL.md §1.1).

    ``subprotocol`` goes into the response's ``Sec-WebSocket-Protocol`` (None: no header).
    ``version`` is the session's major version; None when the edge offered no
    ``simultrain.*`` subprotocol: its HELLO's ``v`` decides. ``refusal`` is set when the
    edge offered versions none of which this side speaks: accept, send nothing but the
    refusal (ERROR in ``refusal.peer_version``, close 4000).
    """

    subprotocol: str | None
    version: int | None
    refusal: ProtocolVersionMismatch | None = None


def negotiate(
    offered: Sequence[str], *, supported: Sequence[int] = SUPPORTED_VERSIONS
) -> Negotiation:
    """Pick the newest common major version among the offered subprotocols.

    Subprotocols that are not ``simultrain.v<N>`` are ignored (another application may
    share the port); so is the order the edge listed them in (RFC 6455 §4.2.2 leaves the
    choice to the server).
    """
    versions = {v for name in offered if (v := subprotocol_version(name)) is not None}
    if not versions:
        return Negotiation(subprotocol=None, version=None)
    common = versions & set(supported)
    if not common:
        return Negotiation(
            subprotocol=None, version=None, refusal=version_mismatch(versions, supported=supported)
        )
    chosen = max(common)
    return Negotiation(subprotocol=subprotocol_name(chosen), version=chosen)


# -- capabilities ------------------------------------------------------------------------


def _echo(offered: ConfigValue) -> ConfigValue:
    return offered


@dataclasses.dataclass(frozen=True, slots=True)
class Capability:
    """One optional extension of the current major version (PROTOCOL.md §10.2).

    ``frames``: message types (``t``) it adds; a session refuses them
    (``illegal_transition``) unless WELCOME granted the capability. ``grant`` turns the
    value an edge offered into the value the cloud grants (None: not granted); by default
    the cloud grants what was offered. ``section``: where PROTOCOL.md defines it.
    """

    name: str
    summary: str
    section: str
    frames: tuple[str, ...] = ()
    grant: Callable[[ConfigValue], ConfigValue] = _echo


def _offered_true(offered: ConfigValue) -> ConfigValue:
    """A capability an edge offers with ``true`` and nothing else to say."""
    return True if offered is True else None


CREDITS: Final = "credits"
"""In-flight credits (PROTOCOL.md §6.7): HELLO offers ``true``; WELCOME's value is the
edge's first grant, a uint ≥ 1, and every ACK may carry the grant in force (``credits``).
The cloud answers an offer with its grant, or not at all when its run has no credits
(:func:`grant_capabilities`' ``answers``); the registry's own answer is only the offer's
check."""


CAPABILITIES: Final[Mapping[str, Capability]] = {
    CREDITS: Capability(
        CREDITS,
        "a grant of batches in flight in WELCOME and ACK (`credits`)",
        "§6.7",
        grant=_offered_true,
    ),
}
"""Every capability this implementation speaks, by name (PROTOCOL.md §10.2's table)."""


def grant_capabilities(
    offered: Mapping[str, ConfigValue],
    *,
    registry: Mapping[str, Capability] = CAPABILITIES,
    answers: Mapping[str, ConfigValue] | None = None,
) -> dict[str, ConfigValue]:
    """WELCOME's ``capabilities``: the offered ones this side speaks and grants.

    Unknown names are ignored, never refused: a newer edge may offer more than this cloud
    knows. ``answers`` holds this cloud's own value for a capability whose value depends
    on the run (name → the value to grant, None: not granted this session); it replaces the
    registry's answer once the offer passed the registry's check.
    """
    granted: dict[str, ConfigValue] = {}
    for name, value in offered.items():
        capability = registry.get(name)
        if capability is None:
            continue
        answer = capability.grant(value)
        if answer is not None and answers is not None and name in answers:
            answer = answers[name]
        if answer is not None:
            granted[name] = answer
    return granted


def capability_of_frame(
    frame_type: str, *, registry: Mapping[str, Capability] = CAPABILITIES
) -> str | None:
    """The capability a message type belongs to; None for the major version's own types."""
    for capability in registry.values():
        if frame_type in capability.frames:
            return capability.name
    return None
