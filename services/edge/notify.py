"""systemd's notification protocol (sd_notify(3)), the few lines of it the agent needs.

Under ``Type=notify`` the service manager waits for ``READY=1``; with ``WatchdogSec=`` it
restarts the agent unless ``WATCHDOG=1`` arrives at least every ``WATCHDOG_USEC``;
``STOPPING=1`` tells it the agent is leaving (draining after SIGTERM, or done with its
steps), so ``systemctl status`` shows "deactivating" rather than a hung service. Outside
systemd (``NOTIFY_SOCKET`` unset) everything here is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["SystemdNotifier"]

log = logging.getLogger("simultrain.edge")


class SystemdNotifier:
    def __init__(self, address: str, watchdog_usec: int | None) -> None:
        # A leading "@" names a socket in the abstract namespace (sd_notify(3)).
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval_s = watchdog_usec / 1e6 if watchdog_usec else None
        self._ready_sent = False
        self._stopping_sent = False

    @classmethod
    def from_environment(cls) -> SystemdNotifier | None:
        address = os.environ.get("NOTIFY_SOCKET")
        if not address:
            return None
        usec = os.environ.get("WATCHDOG_USEC")
        return cls(address, int(usec) if usec and usec.isdigit() else None)

    def send(self, message: str) -> None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self._address)
                sock.sendall(message.encode())
        except OSError as exc:
            log.warning("sd_notify(%s) failed: %s", message, exc)

    def ready(self) -> None:
        if not self._ready_sent:
            self.send("READY=1\nSTATUS=streaming to the cloud")
            self._ready_sent = True

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        if not self._stopping_sent:
            self.send("STOPPING=1\nSTATUS=draining in-flight batches, then leaving")
            self._stopping_sent = True
