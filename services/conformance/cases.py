"""The conformance cases: what the kit does to a client, and what the client must do then.

Each :class:`Case` is one run of the client under test against the real cloud, through the
kit's proxy with one :class:`~.proxy.Fault`; its checks read what the kit recorded (an
:class:`Observation`) and say, each, whether the client did what PROTOCOL.md requires.
docs/CONFORMANCE.md lists them with the sections they come from.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from simultrain.shared.protocol import Ack, Act, Bye, Delta
from simultrain.shared.protocol.versions import subprotocol_version

from .proxy import Fault, Link

__all__ = ["CASES", "Case", "Check", "End", "Observation", "Token"]


class End(enum.Enum):
    """When the kit stops watching a case."""

    EXIT = "exit"  # the client trains its steps and exits on its own
    STOPPED = "stopped"  # the client must stop trying: exit, or the watch time runs out
    FAULT_CLOSED = "fault-closed"  # the session the fault struck is over


class Token(enum.Enum):
    VALID = "valid"  # issued for the case's edge id by the cloud's key
    FORGED = "forged"  # the same claims, signed with another key


@dataclasses.dataclass(frozen=True)
class Observation:
    """Everything the kit saw of one case."""

    edge_id: str
    steps: int
    spec: Mapping[str, Any]
    links: Sequence[Link]
    exit_code: int | None  # None: the kit had to stop the client
    edge: Mapping[str, Any] | None  # the cloud's /v1/status row of the edge

    @property
    def accepted(self) -> list[Link]:
        """The connections that got past the upgrade."""
        return [link for link in self.links if link.http_status is None]

    @property
    def struck(self) -> Link | None:
        return next((link for link in self.links if link.fault_at is not None), None)


Outcome = tuple[bool, str]


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    test: Callable[[Observation], Outcome]


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    title: str
    sections: str
    fault: Fault
    end: End
    checks: tuple[Check, ...]
    token: Token = Token.VALID


# -- checks -------------------------------------------------------------------------------


def _offers_current_version(obs: Observation) -> Outcome:
    newest = max(int(v) for v in obs.spec["protocol_versions"])
    for link in obs.links:
        versions = {subprotocol_version(name) for name in link.offered}
        if newest not in versions:
            return False, f"connection {link.index} offered {list(link.offered) or 'nothing'}"
    return True, f"offered {list(obs.links[0].offered)}" if obs.links else "no connection"


def _hello_first(obs: Observation) -> Outcome:
    spec = obs.spec
    for link in obs.accepted:
        if not link.from_client:
            continue
        hello = link.hello
        if hello is None:
            return False, f"connection {link.index} opened with {link.from_client[0].type}"
        wrong = []
        if hello.edge_id != obs.edge_id:
            wrong.append(f"edge_id {hello.edge_id!r}")
        if hello.model_id != spec["model_id"]:
            wrong.append(f"model_id {hello.model_id!r}")
        if list(hello.cut_shape) != list(spec["cut_shape"]):
            wrong.append(f"cut_shape {list(hello.cut_shape)}")
        if hello.model_fingerprint not in (None, spec["model_fingerprint"]):
            wrong.append("model_fingerprint is not the session spec's")
        if wrong:
            return False, f"HELLO of connection {link.index}: " + ", ".join(wrong)
    return True, "edge_id, model_id, cut_shape and fingerprint as the session spec says"


def _rules_kept(obs: Observation) -> Outcome:
    for link in obs.links:
        if link.violations:
            return False, f"connection {link.index}: {link.violations[0]}"
    return True, "every frame the client sent was legal when it sent it"


def _no_cloud_error(obs: Observation) -> Outcome:
    for link in obs.links:
        if link.cloud_error is not None:
            error = link.cloud_error
            return False, f"the cloud refused connection {link.index}: {error.code} {error.reason}"
    return True, "the cloud refused nothing"


def _window_kept(obs: Observation) -> Outcome:
    window = obs.spec["window"]
    most = max((link.max_in_flight for link in obs.links), default=0)
    if window is not None and most > max(int(window), 1):
        return False, f"{most} batches in flight, window {window}"
    return True, f"at most {most} in flight (window {window})"


def _trains_once(obs: Observation) -> Outcome:
    edge = obs.edge
    if edge is None:
        return False, "the cloud applied nothing for this edge"
    steps, highest = edge.get("steps_applied"), edge.get("highest_applied_seq")
    if steps != obs.steps or highest != obs.steps - 1:
        return False, f"{steps} batches applied up to seq {highest}, expected {obs.steps}"
    return True, f"{steps} batches applied, each once"


def _leaves_cleanly(obs: Observation) -> Outcome:
    last = obs.accepted[-1].from_client[-1:] if obs.accepted else []
    if not last or not isinstance(last[0], Bye):
        return False, "the last session did not end with BYE"
    if obs.exit_code != 0:
        return False, f"exit status {obs.exit_code}"
    return True, "BYE, exit status 0"


def _no_resync(obs: Observation) -> Outcome:
    resyncs = [link.index for link in obs.links if (link.client_close or (0,))[0] == 4002]
    if resyncs:
        return False, f"asked for a resync (4002) on connection(s) {resyncs}: wrong arithmetic?"
    return True, "every DELTA and SNAP checksum matched"


def _one_session(obs: Observation) -> Outcome:
    return len(obs.links) == 1, f"{len(obs.links)} connection(s)"


def _resumes(obs: Observation) -> Outcome:
    accepted = obs.accepted
    if len(accepted) < 2:
        return False, "did not reconnect after the 1012 close"
    acks = [frame.seq for frame in accepted[0].to_client if isinstance(frame, Ack)]
    hello = accepted[1].hello
    expected = max(acks) if acks else None
    if hello is None or hello.resume != expected:
        said = None if hello is None else hello.resume
        return False, f"second HELLO's resume is {said}, the last ACK it got was {expected}"
    return True, f"reconnected with resume {expected}"


def _resyncs(obs: Observation) -> Outcome:
    link = obs.struck
    if link is None:
        return False, "the fault never struck (no DELTA or SNAP came)"
    close = link.client_close
    if close is None or close[0] != 4002:
        return False, f"after the bad checksum the client closed with {close}, not 4002"
    return True, f"closed with 4002 ({close[1]!r})"


def _no_forward_after_mismatch(obs: Observation) -> Outcome:
    link = obs.struck
    if link is None or link.fault_frame is None:
        return False, "the fault never struck"
    frame = link.fault_frame
    acts = [f for f in link.after_fault() if isinstance(f, Act)]
    if isinstance(frame, Delta):
        # An ACT at the DELTA's to_version was computed after applying it.
        acts = [f for f in acts if f.edge_version >= frame.to_version]
    # A session's first SNAP comes before any ACT may: every ACT after it used it.
    late = [f.seq for f in acts]
    if late:
        return False, f"sent ACT {late} computed on the replica that failed its checksum"
    return True, "no forward on the replica that failed its checksum"


def _repaired(obs: Observation) -> Outcome:
    link = obs.struck
    later = [other for other in obs.accepted if link is not None and other.index > link.index]
    if not later:
        return False, "no new session after the resync request"
    again = [other.index for other in later if (other.client_close or (0,))[0] == 4002]
    if again:
        return False, f"the new session's replica failed again (connections {again})"
    return True, f"resynced in connection {later[0].index}"


def _refuses_oversize(obs: Observation) -> Outcome:
    link = obs.struck
    if link is None:
        return False, "the fault never struck (no GRAD came)"
    close = link.client_close
    if close is None or close[0] != 1009:
        return False, f"the client closed with {close}, not 1009"
    error = link.client_error
    if error is not None and error.code != "frame_too_large":
        return False, f"its ERROR says {error.code}, not frame_too_large"
    return True, "closed 1009" + (" after ERROR frame_too_large" if error else "")


def _sends_nothing(obs: Observation) -> Outcome:
    sent = [frame.type for link in obs.links for frame in link.from_client]
    if sent:
        return False, f"sent {sent} to a cloud that selected none of its versions"
    return True, "sent no frame"


def _presents_token(obs: Observation) -> Outcome:
    first = obs.links[0] if obs.links else None
    if first is None:
        return False, "never connected"
    hello = first.hello
    if first.authorization or (hello is not None and hello.token):
        return True, "presented its token"
    return False, "presented no token (header or HELLO)"


def _no_retry(obs: Observation) -> Outcome:
    link = obs.struck or (obs.links[0] if obs.links else None)
    if link is None:
        return False, "never connected"
    retries = [other.index for other in obs.links if other.index > link.index]
    if retries:
        return False, f"tried again ({len(retries)} more connection(s))"
    return True, "did not try again"


def _stops(obs: Observation) -> Outcome:
    if obs.exit_code is None:
        return False, "still running when the kit stopped watching"
    if obs.exit_code == 0:
        return False, "exited with status 0 as if it had trained"
    return True, f"exited with status {obs.exit_code}"


HANDSHAKE = (
    Check("offers the current version", _offers_current_version),
    Check("HELLO first, as the session spec says", _hello_first),
    Check("session rules kept", _rules_kept),
)
TRAINS = (
    Check("nothing refused", _no_cloud_error),
    Check("every batch applied once", _trains_once),
    Check("leaves with BYE", _leaves_cleanly),
)
CHECKSUM = (
    *HANDSHAKE,
    Check("asks for a resync (4002)", _resyncs),
    Check("no forward on a bad replica", _no_forward_after_mismatch),
    Check("resynced", _repaired),
    *TRAINS,
)

CASES: tuple[Case, ...] = (
    Case(
        "handshake",
        "Negotiates, says HELLO, trains, keeps every checksum",
        "§1.1, §3, §3.1, §6.2",
        Fault.NONE,
        End.EXIT,
        (
            *HANDSHAKE,
            Check("one session", _one_session),
            Check("no resync", _no_resync),
            *TRAINS,
        ),
    ),
    Case(
        "window",
        "Keeps at most W batches in flight while ACKs come late",
        "§6.3",
        Fault.DELAY_ACKS,
        End.EXIT,
        (*HANDSHAKE, Check("window kept", _window_kept), *TRAINS),
    ),
    Case(
        "resume",
        "Reconnects after 1012 with resume and sends no batch twice",
        "§6.5, §7",
        Fault.RESTART,
        End.EXIT,
        (*HANDSHAKE, Check("resumes", _resumes), *TRAINS),
    ),
    Case(
        "checksum-delta",
        "A DELTA that misses its checksum: 4002, no forward, resync",
        "§3.1",
        Fault.CORRUPT_DELTA,
        End.EXIT,
        CHECKSUM,
    ),
    Case(
        "checksum-snap",
        "A session's first SNAP misses its checksum: 4002 before any ACT",
        "§3.1",
        Fault.BAD_SNAP_CHECKSUM,
        End.EXIT,
        CHECKSUM,
    ),
    Case(
        "oversize",
        "A message over max_frame_bytes is refused with 1009",
        "§1, §5",
        Fault.OVERSIZE,
        End.FAULT_CLOSED,
        (*HANDSHAKE, Check("refuses it with 1009", _refuses_oversize)),
    ),
    Case(
        "version",
        "A cloud of another major version: no HELLO, no retry, stop",
        "§1.1, §7",
        Fault.FOREIGN_VERSION,
        End.STOPPED,
        (
            Check("offers the current version", _offers_current_version),
            Check("sends nothing", _sends_nothing),
            Check("does not retry", _no_retry),
            Check("stops", _stops),
        ),
    ),
    Case(
        "unauthorized",
        "A refused token: no retry with it, stop",
        "§1, §7",
        Fault.NONE,
        End.STOPPED,
        (
            Check("presents its token", _presents_token),
            Check("does not retry", _no_retry),
            Check("stops", _stops),
        ),
        token=Token.FORGED,
    ),
    Case(
        "revoked",
        "A session closed 1008 for a revoked token: no retry, stop",
        "§7",
        Fault.REVOKE,
        End.STOPPED,
        (
            *HANDSHAKE,
            Check("does not retry", _no_retry),
            Check("stops", _stops),
        ),
    ),
)
