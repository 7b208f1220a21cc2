"""``python -m simultrain.cloud``: serve the cloud with settings from the environment."""

from __future__ import annotations

from simultrain.shared.run_settings import serve_from_environment

from .server import run
from .settings import CloudSettings


def main() -> int:
    return serve_from_environment(CloudSettings, run, "simultrain cloud")


if __name__ == "__main__":
    raise SystemExit(main())
