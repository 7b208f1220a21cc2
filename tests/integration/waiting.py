"""What the real-process tests share: a port a restarted service can bind again, a bounded
wait on a condition (never a bare sleep), and the cloud's ``/v1/status``."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx


def free_port() -> int:
    """A port a restarted service can bind again (asked of the kernel with port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        pause.wait(0.05)


def status(url: str) -> dict[str, Any]:
    """The cloud's ``GET /v1/status``."""
    reply: dict[str, Any] = httpx.get(f"{url}/v1/status", timeout=30).json()
    return reply
