"""Running the coordinator: uvicorn, programmatically, with a readiness line on stdout.

``serve(settings)`` is the coroutine; ``run(settings)`` the blocking entry point used by
``python -m simultrain.coordinator`` and the CLI. Once the socket accepts connections the
process prints exactly one line ``LISTENING http://HOST:PORT`` on stdout (the real port when
``port=0``), so a parent process waits on that event instead of sleeping. Serving and signal
handling are shared with the cloud (``simultrain.shared.serving``).
"""

from __future__ import annotations

from collections.abc import Callable

from simultrain.shared.serving import listening_line, run_until_signal, serve_app

from .app import create_app
from .registry import Clock
from .settings import CoordinatorSettings
from .store import CoordinatorStore

__all__ = ["listening_line", "run", "serve"]


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
    await serve_app(
        create_app(settings, store, clock=clock),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        # HTTPS when given a certificate and key (SECURITY.md, "TLS"); clients are not asked
        # for certificates: edges authenticate with tokens, clouds with the admin token.
        ssl_certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
        ssl_keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
        # Edges reconnecting after a coordinator restart should not wait on old sockets.
        graceful_shutdown_s=5,
        on_listening=on_listening,
    )


def run(settings: CoordinatorSettings) -> int:
    """Serve until SIGINT or SIGTERM, shut down gracefully, return the exit status (0)."""
    return run_until_signal(serve(settings))
