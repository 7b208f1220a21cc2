"""``python -m simultrain.coordinator``: settings from ``SIMULTRAIN_COORDINATOR_*``."""

from __future__ import annotations

from simultrain.shared.run_settings import serve_from_environment

from .server import run
from .settings import CoordinatorSettings


def main() -> int:
    return serve_from_environment(CoordinatorSettings, run, "simultrain coordinator")


if __name__ == "__main__":
    raise SystemExit(main())
