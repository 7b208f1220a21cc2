"""A reconnect while the old session's frames still wait for the compute thread (PROTOCOL.md
§6.5): what WELCOME's ``acked_seq`` says is exactly what the master holds, and a re-sent
batch is answered on the new session.

Under load (64 edges on two cores) the compute thread runs seconds behind the sockets, so an
edge may reconnect while an EGRAD of its old session is still queued. Applied after the new
session's WELCOME, that EGRAD made the batch's re-sent ACT a duplicate the cloud drops without
an answer: the edge waited for it until its drain timed out.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from starlette.websockets import WebSocketState

from simultrain.cloud.service import CloudService, Connection
from simultrain.cloud.settings import CloudSettings
from simultrain.shared.data import BatchStream, load_dataset
from simultrain.shared.models import get_model_spec
from simultrain.shared.protocol import (
    Ack,
    CloudSession,
    Delta,
    EdgeSession,
    Frame,
    Grad,
    Hello,
    Limits,
    Snap,
    Welcome,
)
from simultrain.shared.training.assembly import Shard, build_edge
from simultrain.shared.training.config import RunConfig

RUN = RunConfig(mode="simultrain", dataset="imu", window=2)
SPEC = get_model_spec("imu-cnn1d")


class FakeSocket:
    """What the service uses of a WebSocket: bytes out, and a close."""

    def __init__(self) -> None:
        self.application_state = WebSocketState.CONNECTED
        self.sent: list[bytes] = []
        self.closed: tuple[int, str] | None = None

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)
        self.application_state = WebSocketState.DISCONNECTED


class Link:
    """One session: the cloud's Connection on a fake socket, the edge's EdgeSession."""

    def __init__(self, service: CloudService) -> None:
        self.socket = FakeSocket()
        self.conn = Connection(
            self.socket,  # type: ignore[arg-type]
            CloudSession(limits=service.limits, egrad_needs_grad=service.schedule.egrad_needs_grad),
        )
        self.edge = EdgeSession(limits=Limits(window=RUN.window))
        self.read = 0

    def up(self, frame: Frame) -> Frame:
        """The edge sends ``frame``; what the cloud's session hands to the service."""
        frames = self.conn.session.receive_data(self.edge.send(frame))
        assert len(frames) == 1
        return frames[0]

    def down(self) -> list[Any]:
        """Everything the cloud sent since the last call, through the edge's session."""
        frames = [f for data in self.socket.sent[self.read :] for f in self.edge.receive_data(data)]
        self.read = len(self.socket.sent)
        return frames


def hello() -> Hello:
    return Hello(edge_id="edge-a", model_id=SPEC.model_id, cut_shape=tuple(SPEC.cut_shape))


async def test_a_queued_frame_of_a_superseded_session_is_not_applied_behind_welcome() -> None:
    service = await asyncio.to_thread(CloudService, CloudSettings(), RUN)
    try:
        data = load_dataset("imu")
        runtime = build_edge(RUN, SPEC, Shard(data)).runtime
        x, y = next(BatchStream(data.x_train, data.y_train, batch_size=32, seed=1))

        old = Link(service)
        await service.open(old.conn, old.up(hello()))
        for frame in old.down():
            if isinstance(frame, Snap):
                runtime.on_snap(frame)
        await service.handle(old.conn, old.up(runtime.produce(x, y)))  # ACT 0
        (grad,) = [f for f in old.down() if isinstance(f, Grad)]
        egrad = old.up(runtime.on_grad(grad))  # EGRAD 0: read off the socket, not yet applied

        # The compute thread is behind: the edge reconnects before EGRAD 0 gets its turn.
        release = threading.Event()
        service._executor.submit(release.wait)
        new = Link(service)
        opening = asyncio.create_task(service.open(new.conn, new.up(hello())))
        for _ in range(100):  # a few loop turns: open() closes the old socket, then registers
            if service.connections.get("edge-a") is new.conn:
                break
            await asyncio.sleep(0)
        assert service.connections.get("edge-a") is new.conn
        await asyncio.sleep(0)  # the new session's SNAP is queued ...
        late = asyncio.create_task(service.handle(old.conn, egrad))
        await asyncio.sleep(0)  # ... and the old session's EGRAD behind it
        release.set()
        await opening
        await late

        assert old.socket.closed is not None and old.socket.closed[0] == 1008
        assert old.down() == []  # nothing more went to the superseded session
        opened = new.down()
        assert [type(f) for f in opened] == [Welcome, Snap]  # and none of the old session's
        welcome, snap = opened
        state = service.runtime.sessions["edge-a"]
        # WELCOME says what is applied, and it is exactly that: batch 0 is not.
        assert welcome.acked_seq is None and state.samples_applied == 0
        runtime.on_snap(snap)
        resend = runtime.resume(welcome.acked_seq)
        assert [seq for seq, _ in resend] == [0]

        # The re-sent batch is answered on the new session, and applied once.
        await service.handle(new.conn, new.up(runtime.resend(*resend[0])))  # type: ignore[arg-type]
        (grad,) = [f for f in new.down() if isinstance(f, Grad)]
        await service.handle(new.conn, new.up(runtime.on_grad(grad)))
        answers = new.down()
        assert [f.seq for f in answers if isinstance(f, Ack)] == [0]
        assert any(isinstance(f, Delta) for f in answers)
        assert state.samples_applied == 32 and state.steps_applied == 1
        assert state.duplicates == 1  # the cloud-stage step of batch 0 was not applied twice
    finally:
        await asyncio.to_thread(service.shutdown)
