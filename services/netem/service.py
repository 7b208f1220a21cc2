"""The link emulator as a process: start, print the listening line, stop on a signal."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from simultrain.netem.proxy import LinkEmulator
from simultrain.netem.settings import NetemSettings

__all__ = ["emulator_from_settings", "run", "serve"]

logger = logging.getLogger(__name__)


def emulator_from_settings(settings: NetemSettings) -> LinkEmulator:
    return LinkEmulator(
        settings.listen_host,
        settings.listen_port,
        settings.upstream_host,
        settings.upstream_port,
        settings.link_profile(),
        seed=settings.seed,
        segment_bytes=settings.segment_bytes,
        max_inflight_bytes=settings.max_inflight_bytes,
        connect_timeout_s=settings.connect_timeout_s,
    )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def serve(settings: NetemSettings) -> None:
    """Run the emulator until SIGTERM or SIGINT.

    Prints one line ``LISTENING tcp://HOST:PORT`` on stdout once it accepts connections, so a
    parent process can wait for that line instead of sleeping (``ARCHITECTURE.md``).
    """
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, stop_requested.set)
    emulator = emulator_from_settings(settings)
    try:
        port = await emulator.start()
        host = settings.listen_host
        print(f"LISTENING tcp://{_url_host(host)}:{port}", file=sys.stdout, flush=True)
        await stop_requested.wait()
        logger.info("stopping on signal")
    finally:
        await emulator.stop()
        for signum in signals:
            loop.remove_signal_handler(signum)


def run(settings: NetemSettings) -> None:
    """Run :func:`serve` in a fresh event loop (the entry point of ``simultrain netem``)."""
    asyncio.run(serve(settings))
