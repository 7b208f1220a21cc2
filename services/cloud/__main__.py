"""``python -m simultrain.cloud``: serve the cloud with settings from the environment."""

from __future__ import annotations

import sys

from simultrain.shared.run_settings import SettingsError, load_settings

from .server import run
from .settings import CloudSettings


def main() -> int:
    try:
        settings = load_settings(CloudSettings)
    except SettingsError as exc:
        print(f"simultrain cloud: {exc}", file=sys.stderr)
        return 2
    return run(settings)


if __name__ == "__main__":
    raise SystemExit(main())
