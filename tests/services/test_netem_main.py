"""``python -m simultrain.netem`` as a real process: the LISTENING line, relaying, SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys

import pytest

pytestmark = pytest.mark.integration

START_BOUND_S = 30.0  # a cold interpreter importing pydantic on a loaded CI machine
BOUND_S = 10.0


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionResetError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _spawn(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simultrain.netem",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )


async def _reap(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.kill()
    await asyncio.wait_for(process.communicate(), BOUND_S)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_module_listens_relays_and_stops_on_a_signal(sig: signal.Signals) -> None:
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    echo_port = echo.sockets[0].getsockname()[1]
    # Settings from the environment and from flags at once.
    process = await _spawn(
        "--listen-port",
        "0",
        "--profile",
        "rtt=10ms,rate=100mbit",
        env={"SIMULTRAIN_NETEM_UPSTREAM_PORT": str(echo_port)},
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), START_BOUND_S)
        match = re.fullmatch(rb"LISTENING tcp://127\.0\.0\.1:(\d+)\n", line)
        assert match, line
        port = int(match.group(1))

        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), BOUND_S)
        writer.write(b"hello through the link")
        await writer.drain()
        reply = await asyncio.wait_for(reader.readexactly(22), BOUND_S)
        assert reply == b"hello through the link"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

        process.send_signal(sig)
        stdout, stderr = await asyncio.wait_for(process.communicate(), BOUND_S)
        assert process.returncode == 0, stderr.decode()
        assert stdout == b""  # the LISTENING line was the only one
    finally:
        await _reap(process)
        echo.close()
        await echo.wait_closed()


async def test_module_refuses_bad_settings() -> None:
    process = await _spawn("--upstream-port", "80", "--profile", "rate=fast", env={})
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), START_BOUND_S)
        assert process.returncode == 2
        assert stdout == b""
        assert b"rate" in stderr
    finally:
        await _reap(process)
