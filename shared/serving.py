"""Running an ASGI app under uvicorn with a readiness line and clean signal handling.

Used by the cloud and the coordinator (the edge is no server and never imports this module:
uvicorn is not installed on a Pi). Once the socket accepts connections the process prints
exactly one line ``LISTENING http://HOST:PORT`` on stdout (the real port when ``port=0``), so
a parent process waits on that event instead of sleeping. Logs go to stderr only.
"""

from __future__ import annotations

import asyncio
import copy
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

__all__ = ["listening_line", "log_config", "run_until_signal", "serve_app"]


def listening_line(url: str) -> None:
    """The default readiness announcement: one flushed line on stdout."""
    print(f"LISTENING {url}", flush=True)


def _url_of(sock: socket.socket, scheme: str) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server, announcing the bound address once startup has completed."""

    def __init__(self, config: uvicorn.Config, on_listening: Callable[[str], None]) -> None:
        super().__init__(config)
        self._on_listening = on_listening
        self.url: str | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.servers and self.servers[0].sockets:
            scheme = "https" if self.config.is_ssl else "http"
            self.url = _url_of(self.servers[0].sockets[0], scheme)
            self._on_listening(self.url)


def log_config(level: str) -> dict[str, Any]:
    config = copy.deepcopy(LOGGING_CONFIG)
    # stdout is reserved for the LISTENING line; a parent that only reads that line must
    # never block on a full pipe because of access logs.
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    config["loggers"]["simultrain"] = {
        "handlers": ["default"],
        "level": level.upper(),
        "propagate": False,
    }
    return config


async def serve_app(
    app: Any,
    *,
    host: str,
    port: int,
    log_level: str = "info",
    access_log: bool = False,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    graceful_shutdown_s: float = 10.0,
    ws_max_size: int = 1 << 26,
    ws_max_queue: int = 32,
    on_listening: Callable[[str], None] = listening_line,
) -> None:
    """Serve ``app`` until uvicorn is told to exit (SIGINT/SIGTERM).

    uvicorn's graceful shutdown closes WebSockets with 1012 (service restart), so edges
    reconnect at once to the restarted service.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        log_config=log_config(log_level),
        access_log=access_log,
        lifespan="on",
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        ssl_cert_reqs=ssl.CERT_NONE,
        timeout_graceful_shutdown=int(graceful_shutdown_s),
        # PROTOCOL.md §1: no permessage-deflate (tensors are lz4-compressed already, and a
        # deflate bomb would inflate before our limits see it); messages no larger than
        # the protocol's max_frame_bytes.
        ws_max_size=ws_max_size,
        ws_per_message_deflate=False,
        # Messages read off the socket but not yet handled, per connection: past this the
        # server stops reading and TCP pushes back on the sender (queue depth limit).
        ws_max_queue=ws_max_queue,
    )
    await _Server(config, on_listening).serve()


class _Stop(BaseException):
    """Raised by our signal handler; a BaseException so no ``except Exception`` eats it."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


def run_until_signal(main: Coroutine[Any, Any, None]) -> int:
    """Run ``main`` until SIGINT or SIGTERM, return the exit status (0).

    uvicorn replaces the signal handlers while it serves and, after its graceful shutdown,
    re-raises the signal it caught to the handler that was there before. With the default
    handler a SIGTERM would then kill the process (status -15) after a clean shutdown;
    installing our own handler first turns that re-raised signal into a normal return.
    """
    handled = (signal.SIGINT, signal.SIGTERM)
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, _stop) for sig in handled}
    try:
        asyncio.run(main)
    except _Stop:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    sys.stdout.flush()
    return 0
