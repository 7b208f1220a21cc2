#!/usr/bin/env python3
"""Container health check for the SimulTrain images: exit 0 when healthy, 1 when not.

    simultrain-healthcheck coordinator   # GET /readyz of the coordinator in this container
    simultrain-healthcheck cloud         # GET /readyz of the cloud (https when it serves TLS)
    simultrain-healthcheck netem         # GET /healthz of the cloud *through* the emulated link
    simultrain-healthcheck edge          # the agent's status file was written recently
    simultrain-healthcheck rendezvous    # the replicas' store accepts connections (MASTER_PORT)

It reads the same ``SIMULTRAIN_*`` variables as the service it checks, so a port or TLS
change in the environment needs no change here. Docker's HEALTHCHECK, compose's
``depends_on: condition: service_healthy`` and the compose topology test all run it.
Standard library only, and quick: the edge image runs on a Raspberry Pi.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

TIMEOUT_S = 5.0
_WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


def _local_host(host_var: str) -> str:
    host = os.environ.get(host_var, "")
    # A wildcard bind is reached on loopback; a specific address only on itself.
    if host in _WILDCARDS:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _get(url: str) -> str | None:
    """None when ``url`` answers 2xx, else why not."""
    context = ssl.create_default_context()
    # The check runs inside the container against its own loopback: the certificate names
    # the public host, and authenticity is not what a liveness check is about.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S, context=context) as response:
            if 200 <= response.status < 300:
                return None
            return f"{url} answered {response.status}"
    except urllib.error.HTTPError as exc:
        # The services say why in {"error": {"message": …}}: pass it on, on the same line.
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (OSError, ValueError, KeyError, TypeError):
            return f"{url} answered {exc.code}"
        return f"{url} answered {exc.code}: {' '.join(str(message).split())}"
    except (OSError, ValueError) as exc:
        return f"{url} unreachable: {exc}"


def check(service: str) -> str | None:
    """None when ``service`` is healthy, else the reason it is not."""
    env = os.environ
    if service == "coordinator":
        host = _local_host("SIMULTRAIN_COORDINATOR_HOST")
        port = env.get("SIMULTRAIN_COORDINATOR_PORT", "8700")
        return _get(f"http://{host}:{port}/readyz")
    if service == "cloud":
        host = _local_host("SIMULTRAIN_CLOUD_HOST")
        port = env.get("SIMULTRAIN_CLOUD_PORT", "8800")
        scheme = "https" if env.get("SIMULTRAIN_CLOUD_SSL_CERTFILE") else "http"
        return _get(f"{scheme}://{host}:{port}/readyz")
    if service == "netem":
        host = _local_host("SIMULTRAIN_NETEM_LISTEN_HOST")
        port = env.get("SIMULTRAIN_NETEM_LISTEN_PORT", "")
        if not port or port == "0":
            return "SIMULTRAIN_NETEM_LISTEN_PORT is not set to a fixed port"
        scheme = env.get("SIMULTRAIN_HEALTHCHECK_UPSTREAM_SCHEME", "http")
        return _get(f"{scheme}://{host}:{port}/healthz")
    if service == "edge":
        status_file = env.get("SIMULTRAIN_EDGE_STATUS_FILE")
        if not status_file:
            return "SIMULTRAIN_EDGE_STATUS_FILE is not set"
        max_age_s = float(env.get("SIMULTRAIN_HEALTHCHECK_MAX_AGE_S", "120"))
        try:
            age_s = time.time() - Path(status_file).stat().st_mtime
        except OSError as exc:
            return f"no status yet: {exc}"
        if age_s > max_age_s:
            return f"no batch acknowledged for {age_s:.0f} s (limit {max_age_s:.0f} s)"
        return None
    if service == "rendezvous":
        # The store of docker-compose.replicas.yml (python -m simultrain.cloud.replicas PORT):
        # healthy while it accepts connections, which is all its replicas need of it.
        port = env.get("MASTER_PORT", "29500")
        try:
            with socket.create_connection(("127.0.0.1", int(port)), timeout=TIMEOUT_S):
                return None
        except (OSError, ValueError) as exc:
            return f"rendezvous store on port {port} unreachable: {exc}"
    return f"unknown service {service!r} (coordinator, cloud, netem, edge or rendezvous)"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(
            "usage: simultrain-healthcheck coordinator|cloud|netem|edge|rendezvous",
            file=sys.stderr,
        )
        return 1
    problem = check(argv[1])
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
