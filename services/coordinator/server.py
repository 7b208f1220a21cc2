"""Running the coordinator: uvicorn, programmatically, with a readiness line on stdout.

``serve(settings)`` is the coroutine; ``run(settings)`` the blocking entry point used by
``python -m simultrain.coordinator`` and the CLI. Once the socket accepts connections the
process prints exactly one line ``LISTENING http://HOST:PORT`` on stdout (``https://`` with
TLS; the real port when ``port=0``), so a parent process waits on that event instead of
sleeping (ARCHITECTURE.md "Settings and environment variables"). Logs go to stderr only, so
stdout carries nothing else.
"""

from __future__ import annotations

import asyncio
import copy
import signal
import socket
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from .app import create_app
from .registry import Clock
from .settings import CoordinatorSettings
from .store import CoordinatorStore

__all__ = ["listening_line", "run", "serve"]


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


def _log_config(settings: CoordinatorSettings) -> dict[str, Any]:
    config = copy.deepcopy(LOGGING_CONFIG)
    # stdout is reserved for the LISTENING line; a parent that only reads that line must
    # never block on a full pipe because of access logs.
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    config["loggers"]["simultrain"] = {
        "handlers": ["default"],
        "level": settings.log_level.upper(),
        "propagate": False,
    }
    return config


async def serve(
    settings: CoordinatorSettings,
    *,
    store: CoordinatorStore | None = None,
    clock: Clock | None = None,
    on_listening: Callable[[str], None] = listening_line,
) -> None:
    """Serve the coordinator until uvicorn is told to exit (SIGINT/SIGTERM).

    ``on_listening(url)`` is called once the socket listens (default: print the
    ``LISTENING`` line). A port that cannot be bound ends with ``SystemExit(3)`` (uvicorn).
    """
    app = create_app(settings, store, clock=clock)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=_log_config(settings),
        access_log=settings.access_log,
        lifespan="on",
        # Edges reconnecting after a coordinator restart should not wait on old sockets.
        timeout_graceful_shutdown=5,
        # HTTPS when given a certificate and key (issue 5 item 2); clients are not asked
        # for certificates: edges authenticate with tokens, clouds with the admin token.
        ssl_certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
        ssl_keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
    )
    await _Server(config, on_listening).serve()


class _Stop(BaseException):
    """Raised by our signal handler; a BaseException so no ``except Exception`` eats it."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


def run(settings: CoordinatorSettings) -> int:
    """Serve until SIGINT or SIGTERM, shut down gracefully, return the exit status (0).

    uvicorn replaces the signal handlers while it serves and, after its graceful shutdown,
    re-raises the signal it caught to the handler that was there before. With the default
    handler a SIGTERM would then kill the process (status -15) after a clean shutdown;
    installing our own handler first turns that re-raised signal into a normal return. A
    signal before uvicorn has taken over stops start-up the same way.
    """
    handled = (signal.SIGINT, signal.SIGTERM)
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, _stop) for sig in handled}
    try:
        asyncio.run(serve(settings))
    except _Stop:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    sys.stdout.flush()
    return 0
