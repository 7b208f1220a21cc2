"""The edge's durable state: one suite that every store passes, then what only SQLite does.

The SQLite-only tests reopen the store the way a restarted agent does (a new object on the
same directory), including after the writing process was killed with SIGKILL mid-stream.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from simultrain.edge.agent import EdgeAgent, _state_binding
from simultrain.edge.coordinator_client import (
    Assignment,
    CoordinatorClient,
    EdgeRemoved,
    ForeignRun,
)
from simultrain.edge.main import run as run_edge
from simultrain.edge.settings import EdgeSettings
from simultrain.edge.state import (
    DB_NAME,
    EXIT_STATE_ERROR,
    Cursor,
    EdgeIdentity,
    EdgeState,
    EdgeStateError,
    EdgeStateFull,
    ForeignEdgeState,
    KeptBatch,
    MemoryEdgeState,
    SqliteEdgeState,
)
from simultrain.shared.data import load_dataset
from simultrain.shared.models import get_model_spec
from simultrain.shared.protocol import Ack
from simultrain.shared.training.assembly import Shard, build_edge
from simultrain.shared.training.config import RunConfig

BINDING = {"coordinator_url": "http://127.0.0.1:1", "shard_index": 0, "shard_count": 3}


def batch(seq: int, samples: int = 4) -> KeptBatch:
    rng = np.random.default_rng(seq)
    return KeptBatch(
        seq,
        rng.standard_normal((samples, 3, 8)).astype(np.float32),
        rng.integers(0, 6, samples).astype(np.int64),
    )


def cursor_after(seq: int, samples: int = 4) -> Cursor:
    return Cursor(
        next_seq=seq + 1,
        stream_index=seq + 1,
        batches_produced=seq + 1,
        samples_produced=(seq + 1) * samples,
    )


IDENTITY = EdgeIdentity(
    edge_id="edge-7",
    cloud_url="http://127.0.0.1:2",
    run_config={"mode": "simultrain", "window": 4},
    reconcile_offset=3,
    heartbeat_interval_s=0.5,
    token="tok",
)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EdgeState]:
    made: EdgeState
    if request.param == "memory":
        made = MemoryEdgeState(BINDING, max_bytes=None)
    else:
        made = SqliteEdgeState(tmp_path / "state", BINDING, max_bytes=None)
    yield made
    made.close()


# --- the shared suite ------------------------------------------------------------------


def test_a_new_store_is_empty(store: EdgeState) -> None:
    assert store.identity() is None
    assert store.cursor() == Cursor()
    assert store.kept() == []
    assert store.kept_bytes() == 0


def test_identity_round_trips_and_is_replaced(store: EdgeState) -> None:
    store.save_identity(IDENTITY)
    assert store.identity() == IDENTITY
    newer = EdgeIdentity(**{**IDENTITY.__dict__, "token": "tok-2"})
    store.save_identity(newer)
    assert store.identity() == newer


def test_kept_batches_come_back_exactly_in_order(store: EdgeState) -> None:
    for seq in (0, 1, 2):
        store.keep(batch(seq), cursor_after(seq))
    assert store.cursor() == cursor_after(2)
    kept = store.kept()
    assert [b.seq for b in kept] == [0, 1, 2]
    for got in kept:
        want = batch(got.seq)
        assert got.inputs.dtype == want.inputs.dtype and got.labels.dtype == want.labels.dtype
        np.testing.assert_array_equal(got.inputs, want.inputs)
        np.testing.assert_array_equal(got.labels, want.labels)
    assert store.kept_bytes() == sum(b.nbytes for b in kept)


def test_forget_below_drops_only_what_is_durable(store: EdgeState) -> None:
    for seq in range(5):
        store.keep(batch(seq), cursor_after(seq))
    assert store.forget_below(3) == 3
    assert [b.seq for b in store.kept()] == [3, 4]
    assert store.forget_below(3) == 0
    assert store.kept_bytes() == batch(3).nbytes + batch(4).nbytes
    assert store.cursor() == cursor_after(4)  # forgetting never moves the data back


def test_the_bound_refuses_a_batch_and_changes_nothing(tmp_path: Path) -> None:
    one = batch(0).nbytes
    for store in (
        MemoryEdgeState(BINDING, max_bytes=2 * one),
        SqliteEdgeState(tmp_path / "bounded", BINDING, max_bytes=2 * one),
    ):
        store.keep(batch(0), cursor_after(0))
        store.keep(batch(1), cursor_after(1))
        with pytest.raises(EdgeStateFull, match="state_max_bytes"):
            store.keep(batch(2), cursor_after(2))
        assert [b.seq for b in store.kept()] == [0, 1]
        assert store.cursor() == cursor_after(1)
        store.forget_below(1)
        store.keep(batch(2), cursor_after(2))  # room again once the cloud made one durable
        assert [b.seq for b in store.kept()] == [1, 2]
        store.close()


# --- SQLite only -----------------------------------------------------------------------


def test_sqlite_state_survives_reopening(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    store = SqliteEdgeState(directory, BINDING, max_bytes=None)
    store.save_identity(IDENTITY)
    for seq in range(4):
        store.keep(batch(seq), cursor_after(seq))
    store.forget_below(2)
    store.close()
    again = SqliteEdgeState(directory, BINDING, max_bytes=None)
    assert again.identity() == IDENTITY
    assert again.cursor() == cursor_after(3)
    assert [b.seq for b in again.kept()] == [2, 3]
    assert again.kept_bytes() == batch(2).nbytes + batch(3).nbytes
    again.close()


def test_sqlite_commits_in_wal_with_full_sync(tmp_path: Path) -> None:
    store = SqliteEdgeState(tmp_path / "state", BINDING, max_bytes=None)
    store.keep(batch(0), cursor_after(0))
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()


_WRITER = """
import sys
from pathlib import Path
import numpy as np
from simultrain.edge.state import Cursor, KeptBatch, SqliteEdgeState
store = SqliteEdgeState(Path(sys.argv[1]), {"coordinator_url": "x"}, max_bytes=None)
seq = 0
while True:
    x = np.full((4, 3, 8), seq, np.float32)
    cursor = Cursor(seq + 1, seq + 1, seq + 1, 4 * seq + 4)
    store.keep(KeptBatch(seq, x, np.full(4, seq, np.int64)), cursor)
    if seq == 20:
        print("COMMITTED", flush=True)
    seq += 1
"""


def test_sqlite_a_commit_survives_kill_9_of_the_writer(tmp_path: Path) -> None:
    """Every batch whose commit returned is there after SIGKILL, and the cursor matches it."""
    directory = tmp_path / "state"
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(directory)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() == "COMMITTED"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    writer.stdout.close()
    store = SqliteEdgeState(directory, {"coordinator_url": "x"}, max_bytes=None)
    kept = store.kept()
    cursor = store.cursor()
    assert len(kept) >= 21
    assert [b.seq for b in kept] == list(range(len(kept)))  # no hole, no torn batch
    assert cursor.next_seq == len(kept)  # batch and cursor were committed together
    for b in kept:
        assert (b.inputs == b.seq).all() and (b.labels == b.seq).all()
    store.close()


def test_sqlite_refuses_a_corrupt_file(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir()
    (directory / DB_NAME).write_bytes(b"this is not a database, it is a power cut" * 100)
    with pytest.raises(EdgeStateError, match="not a readable edge state"):
        SqliteEdgeState(directory, BINDING, max_bytes=None)


def test_sqlite_refuses_a_damaged_page(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    store = SqliteEdgeState(directory, BINDING, max_bytes=None)
    for seq in range(30):
        store.keep(batch(seq, samples=64), cursor_after(seq, 64))
    store.close()
    # Fold the WAL into the file, then overwrite the middle of it, as a bad SD card would.
    db = sqlite3.connect(directory / DB_NAME)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    path = directory / DB_NAME
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8192] = b"\xff" * 8192
    path.write_bytes(bytes(data))
    with pytest.raises(EdgeStateError):
        SqliteEdgeState(directory, BINDING, max_bytes=None).kept()


def test_sqlite_refuses_a_database_of_another_program(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir()
    other = sqlite3.connect(directory / DB_NAME)
    other.execute("CREATE TABLE photos (id INTEGER)")
    other.commit()
    other.close()
    with pytest.raises(ForeignEdgeState, match="another program"):
        SqliteEdgeState(directory, BINDING, max_bytes=None)


def test_sqlite_refuses_the_state_of_another_coordinator_or_shard(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    SqliteEdgeState(directory, BINDING, max_bytes=None).close()
    for other in (
        {**BINDING, "coordinator_url": "http://127.0.0.1:9"},
        {**BINDING, "shard_index": 1},
    ):
        with pytest.raises(ForeignEdgeState, match="was made for"):
            SqliteEdgeState(directory, other, max_bytes=None)


def test_sqlite_one_agent_per_directory(tmp_path: Path) -> None:
    first = SqliteEdgeState(tmp_path / "state", BINDING, max_bytes=None)
    with pytest.raises(EdgeStateError, match="in use by another agent"):
        SqliteEdgeState(tmp_path / "state", BINDING, max_bytes=None)
    first.close()
    SqliteEdgeState(tmp_path / "state", BINDING, max_bytes=None).close()


def test_sqlite_an_unusable_directory_is_a_clear_error(tmp_path: Path) -> None:
    """A path that cannot be a directory (here: under a file; alike for one without write
    permission, which root would not feel)."""
    (tmp_path / "a-file").write_text("")
    with pytest.raises(EdgeStateError, match="cannot use the edge state directory"):
        SqliteEdgeState(tmp_path / "a-file" / "state", BINDING, max_bytes=None)


def test_sqlite_a_full_disk_is_edge_state_full(tmp_path: Path) -> None:
    """SQLite's own page limit stands in for a full disk: the same SQLITE_FULL error."""
    store = SqliteEdgeState(tmp_path / "state", BINDING, max_bytes=None)
    page_size = store._db.execute("PRAGMA page_size").fetchone()[0]
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages + 2}")
    with pytest.raises(EdgeStateFull, match="full"):
        store.keep(batch(0, samples=4 * page_size), cursor_after(0))
    assert store.kept() == [] and store.cursor() == Cursor()  # nothing half-written
    store.close()


# --- the agent on a bad or foreign state: a clear error, exit 78, never a new enrollment ---


def test_the_agent_exits_78_on_a_corrupt_state(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir()
    (directory / DB_NAME).write_bytes(b"\x00garbage" * 512)
    settings = EdgeSettings(cloud_url="http://127.0.0.1:9", state_dir=directory, watchdog=False)
    assert run_edge(settings) == EXIT_STATE_ERROR


def coordinator(handler: Callable[[httpx.Request], httpx.Response]) -> CoordinatorClient:
    client = CoordinatorClient(EdgeSettings(coordinator_url="http://coordinator.test"))
    client.client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return client


STORED = Assignment(
    edge_id="edge-7",
    cloud_url="ws://cloud.test",
    run_config={"mode": "simultrain", "window": 4},
    reconcile_offset=0,
    heartbeat_interval_s=1.0,
    token="t",
)


def replying(heartbeat: httpx.Response, run_config: object = STORED.run_config) -> Any:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        if request.url.path == "/v1/config":
            return httpx.Response(200, json={"run_config": run_config})
        if request.url.path.endswith("/heartbeat"):
            return heartbeat
        return httpx.Response(201, json={"edge_id": "edge-new"})  # an enrollment

    return handler, calls


async def test_resume_continues_as_the_stored_edge_with_a_fresh_token() -> None:
    handler, calls = replying(httpx.Response(200, json={"cloud_url": "ws://b", "token": "t2"}))
    client = coordinator(handler)
    resumed = await client.resume(STORED)
    assert (resumed.edge_id, resumed.cloud_url, resumed.token) == ("edge-7", "ws://b", "t2")
    assert calls == ["GET /v1/config", "POST /v1/edges/edge-7/heartbeat"]
    await client.close()


@pytest.mark.parametrize(
    ("heartbeat", "run_config", "error"),
    [
        (httpx.Response(404, json={"error": {"code": "unknown_edge"}}), None, EdgeRemoved),
        (httpx.Response(401, json={"error": {"code": "token_invalid"}}), None, EdgeRemoved),
        (httpx.Response(200, json={}), {"mode": "fedavg"}, ForeignRun),
    ],
    ids=["unknown-edge", "token-refused", "another-run"],
)
async def test_resume_refuses_a_state_of_another_coordinator_or_run(
    heartbeat: httpx.Response, run_config: object, error: type[Exception]
) -> None:
    handler, calls = replying(heartbeat, run_config or STORED.run_config)
    client = coordinator(handler)
    with pytest.raises(error):
        await client.resume(STORED)
    assert "POST /v1/edges" not in calls  # never a silent new enrollment
    await client.close()


async def test_resume_while_the_coordinator_is_down_uses_the_stored_assignment() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = coordinator(down)
    assert await client.resume(STORED, attempts=2) == STORED
    await client.close()


async def test_the_agent_with_a_state_of_a_forgetful_coordinator_stops_and_does_not_enroll(
    tmp_path: Path,
) -> None:
    settings = EdgeSettings(
        coordinator_url="http://coordinator.test", state_dir=tmp_path / "s", watchdog=False
    )
    store = SqliteEdgeState(settings.state_dir, _state_binding(settings), max_bytes=None)
    store.save_identity(EdgeIdentity(**{**IDENTITY.__dict__, "run_config": {"mode": "x"}}))
    store.close()
    agent = EdgeAgent(settings)
    assert agent.coordinator is not None
    handler, calls = replying(
        httpx.Response(404, json={"error": {"code": "unknown_edge"}}), {"mode": "x"}
    )
    agent.coordinator.client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    with pytest.raises(ForeignEdgeState, match="no longer knows edge edge-7"):
        await agent.run()
    assert "POST /v1/edges" not in calls


def test_a_reconnect_keeps_what_the_cloud_applied_but_has_not_made_durable() -> None:
    """WELCOME's ``acked_seq`` says applied, not durable: a cloud that crashes right after it
    resumes from an older checkpoint and needs those batches again (PROTOCOL.md, ``ack``)."""
    run = RunConfig(mode="simultrain", dataset="imu")
    runtime = build_edge(run, get_model_spec("imu-cnn1d"), Shard(load_dataset("imu"))).runtime
    runtime.unacked = {s: (np.zeros(1, np.float32), np.zeros(1, np.int64)) for s in range(6)}
    runtime.next_seq = 6
    assert [s for s, _ in runtime.resume(3)] == [4, 5]  # re-sent: the cloud lacks them
    assert sorted(runtime.unacked) == [0, 1, 2, 3, 4, 5]  # kept: not yet known durable
    runtime.on_ack(Ack(seq=5, master_version=9, durable_until=2))
    assert sorted(runtime.unacked) == [2, 3, 4, 5]


def test_an_edge_behind_the_clouds_acked_seq_continues_above_it() -> None:
    """FedAvg keeps its identity but not its uploads: its new numbers must not be refused."""
    run = RunConfig(mode="fedavg", dataset="imu")
    runtime = build_edge(run, get_model_spec("imu-cnn1d"), Shard(load_dataset("imu"))).runtime
    assert runtime.resume(7) == []
    assert runtime.next_seq == 8
