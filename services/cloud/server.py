"""Running the cloud: uvicorn, programmatically, with the ``LISTENING`` readiness line."""

from __future__ import annotations

import sys

from simultrain.shared.errors import ConfigError
from simultrain.shared.serving import listening_line, run_until_signal, serve_app
from simultrain.shared.training.assembly import resolve_device
from simultrain.shared.training.config import RunConfig

from .app import create_app
from .settings import CloudSettings

__all__ = ["ERROR_HEADROOM_BYTES", "run", "serve", "transport_max_size"]

# PROTOCOL.md §5: a message over max_frame_bytes gets ERROR frame_too_large and close 1009,
# which only the session can send. The WebSocket layer's own limit sits this far above it,
# so a message that is too large by up to 1 MiB still reaches the session; past that, the
# WebSocket library refuses it alone (close 1009, no ERROR) without buffering it whole.
ERROR_HEADROOM_BYTES = 1 << 20


def transport_max_size(max_frame_bytes: int) -> int:
    """The WebSocket message limit for a protocol limit of ``max_frame_bytes``."""
    return max_frame_bytes + ERROR_HEADROOM_BYTES


async def serve(settings: CloudSettings, *, run: RunConfig | None = None) -> None:
    app = create_app(settings, run=run)

    def on_listening(url: str) -> None:
        service = getattr(app.state, "service", None)
        if service is not None and not service.bound_url.done():
            service.bound_url.set_result(url)
        listening_line(url)

    await serve_app(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        ssl_certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
        ssl_keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
        graceful_shutdown_s=settings.graceful_shutdown_s,
        ws_max_size=transport_max_size(settings.max_frame_bytes),
        ws_max_queue=settings.max_queued_messages,
        on_listening=on_listening,
    )


def run(settings: CloudSettings) -> int:
    # A device that is not there is an operator's mistake: say so in one line and exit 2
    # before anything loads, not with a traceback from inside the server's start-up.
    try:
        resolve_device(settings.device)
    except ConfigError as exc:
        print(f"simultrain cloud: {exc}", file=sys.stderr, flush=True)
        return 2
    return run_until_signal(serve(settings))
