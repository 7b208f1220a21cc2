"""``python -m simultrain.coordinator``: settings from ``SIMULTRAIN_COORDINATOR_*``."""

from __future__ import annotations

import sys

from .server import run
from .settings import SettingsError, load_settings


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"simultrain coordinator: {exc}", file=sys.stderr)
        return 2
    return run(settings)


if __name__ == "__main__":
    raise SystemExit(main())
