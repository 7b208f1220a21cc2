"""Mixed steps through the cloud service: frames for other edges, refused ACTs, stale sessions.

docs/FLEET.md, "Mixed steps". With ``mix_edges`` > 1 one edge's frame can step other edges'
batches: its ACT completes a mix (every member gets a GRAD), its EGRAD completes a mixed
step's edge gradients (every member gets its DELTA and ACK), and the wait bound
(`CloudRuntime.round_due_in`, the timer the service arms) steps a mix with no frame at all.
So the service

- **addresses** each frame on the compute thread, to the connection whose session the
  runtime answered (`Addressed`): a partner that reconnects meanwhile starts from its own
  SNAP and never gets the old session's GRAD, DELTA or ACK;
- sends to a partner without letting the partner's failure become the sender's: a send to a
  connection that went away closes that connection (`PARTNER_SEND_FAILURES`; a partner that is
  leaving, `partner_is_leaving`, is left to close as it asked), and the edge whose frame
  triggered the step keeps its session;
- closes the session of an edge whose ACT a mixed step refused (`CloudMixer.refused`: labels
  out of range, a loss that is not finite), as it does for any refused frame;
- forgets what a previous session of a reconnecting edge left waiting or gathering before the
  new one opens (`close_stale_session`): the edge sends those batches again on the new one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from starlette.websockets import WebSocketDisconnect

from simultrain.shared.errors import ProtocolError
from simultrain.shared.protocol import CloudSession, SessionState
from simultrain.shared.training.mixing import CloudMixer
from simultrain.shared.training.roles.fleet import FleetCloudRuntime
from simultrain.shared.training.runtime import CloudRuntime, Outgoing

__all__ = [
    "PARTNER_SEND_FAILURES",
    "Addressed",
    "close_stale_session",
    "mixer_of",
    "partner_is_leaving",
    "take_refused",
]

C = TypeVar("C")

# What a send to a connection that went away raises: Starlette's disconnect (a reset socket
# is OSError underneath), a send after the close (RuntimeError), a session already closed
# (ProtocolError).
PARTNER_SEND_FAILURES = (WebSocketDisconnect, RuntimeError, OSError, ProtocolError)


@dataclass
class Addressed(Generic[C]):
    """A step's frames, each with the connection it goes to, fixed on the compute thread;
    and the ACTs the step refused, ``(edge id, seq, reason)``."""

    outgoing: list[Outgoing]
    connections: list[C | None]
    refused: list[tuple[str, int, str]] = field(default_factory=list)


def partner_is_leaving(session: CloudSession) -> bool:
    """Whether a partner's session refuses frames because it ends (it said BYE, or its
    connection closed): a frame for it is moot, and its own handler closes it as it asked."""
    return session.state in (SessionState.CLOSING, SessionState.CLOSED)


def mixer_of(runtime: CloudRuntime) -> CloudMixer | None:
    """The mixer of a fleet cloud whose run mixes edges (``mix_edges`` > 1), else None."""
    return runtime.mixer if isinstance(runtime, FleetCloudRuntime) else None


def take_refused(runtime: CloudRuntime) -> list[tuple[str, int, str]]:
    """The ACTs a mixed step left out since the last call (`CloudMixer.refused`), once each.
    Call it on the compute thread."""
    mixer = mixer_of(runtime)
    if mixer is None or not mixer.refused:
        return []
    refused = list(mixer.refused)
    mixer.refused.clear()
    return refused


def close_stale_session(runtime: CloudRuntime, edge_id: str) -> list[Outgoing]:
    """Before a new session of ``edge_id`` opens while its previous one is still in session
    (a reconnect whose old connection is not known dead yet), close the previous one in the
    runtime when it mixes: its waiting ACTs and its place in gatherings go, the others step
    without it, and the edge sends those batches again on the new session, where they are
    answered exactly once (docs/FLEET.md, "Mixed steps", exactly once). Frames for the edge
    itself are dropped: they answered the old session. Call it on the compute thread."""
    if mixer_of(runtime) is None or edge_id not in runtime.connected:
        return []
    return [(e, frame) for e, frame in runtime.close_session(edge_id) if e != edge_id]
