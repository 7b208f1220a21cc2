"""Record a session of the first release (README.md here): its cloud and edge agent as real
processes, a proxy between them that keeps every message and closes the first session with
1012 after its first ACK, so that the second opens with ``resume``.

    python tests/protocol/vectors/first_release/record.py FIRST_RELEASE_CHECKOUT OUT_DIR
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import msgpack
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

RUN = {"RUN_WINDOW": "1", "RUN_RECONCILE_EVERY": "2", "RUN_MODEL_ID": "imu-thin"}


def package_root(checkout: Path) -> Path:
    """``simultrain`` mapped onto the checkout's folders, as the editable install maps them."""
    root = Path(tempfile.mkdtemp()) / "simultrain"
    root.mkdir()
    for item in (checkout / "services").iterdir():
        (root / item.name).symlink_to(item)
    (root / "shared").symlink_to(checkout / "shared")
    return root.parent


def start_cloud(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """The first release's cloud on a free port, and its stream's URL."""
    cloud_env = {**env, "SIMULTRAIN_CLOUD_PORT": "0"}
    cloud_env.update({f"SIMULTRAIN_CLOUD_{k}": v for k, v in RUN.items()})
    cloud = subprocess.Popen(
        [sys.executable, "-m", "simultrain.cloud"], env=cloud_env, stdout=subprocess.PIPE, text=True
    )
    assert cloud.stdout is not None
    url = cloud.stdout.readline().split()[1]  # its LISTENING line
    return cloud, url.replace("http://", "ws://") + "/v1/stream"


async def record(env: dict[str, str], upstream: str, out: Path) -> None:
    count, sessions = 0, 0

    async def relay(edge: ServerConnection) -> None:
        nonlocal count, sessions
        sessions += 1
        session = sessions
        async with connect(upstream, max_size=None, compression=None) as cloud_ws:

            async def pump(source, sink, direction: str) -> None:  # type: ignore[no-untyped-def]
                nonlocal count
                async for message in source:
                    count += 1
                    kind = msgpack.unpackb(message, raw=False)["t"]
                    name = f"{count:03d}-s{session}-{direction}-{kind}.msgpack"
                    (out / name).write_bytes(message)
                    await sink.send(message)
                    if session == 1 and kind == "ack":
                        await edge.close(1012, "recorder: cloud restarting")
                        return

            tasks = {
                asyncio.create_task(pump(edge, cloud_ws, "e2c")),
                asyncio.create_task(pump(cloud_ws, edge, "c2e")),
            }
            _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()

    async with serve(relay, "127.0.0.1", 0, max_size=None, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        edge_env = {
            **env,
            "SIMULTRAIN_EDGE_CLOUD_URL": f"http://127.0.0.1:{port}",
            "SIMULTRAIN_EDGE_EDGE_ID": "pi-7",
            "SIMULTRAIN_EDGE_STEPS": "3",
            "SIMULTRAIN_EDGE_WATCHDOG": "false",
            "SIMULTRAIN_EDGE_RUN_BATCH_SIZE": "2",
            **{f"SIMULTRAIN_EDGE_{k}": v for k, v in RUN.items()},
        }
        edge = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "simultrain.edge", env=edge_env
        )
        await edge.wait()


if __name__ == "__main__":
    out_dir = Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    first_release = {
        **os.environ,
        "PYTHONPATH": str(package_root(Path(sys.argv[1]))),
        "PYTHONUNBUFFERED": "1",
    }
    cloud, stream = start_cloud(first_release)
    try:
        asyncio.run(record(first_release, stream, out_dir))
    finally:
        cloud.terminate()
        cloud.wait()
