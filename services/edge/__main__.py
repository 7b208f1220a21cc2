"""``python -m simultrain.edge``: run the edge agent with settings from the environment."""

from __future__ import annotations

import sys

from simultrain.shared.run_settings import SettingsError, load_settings

from .main import run
from .settings import EdgeSettings


def main() -> int:
    try:
        settings = load_settings(EdgeSettings)
    except SettingsError as exc:
        print(f"simultrain edge: {exc}", file=sys.stderr)
        return 2
    return run(settings)


if __name__ == "__main__":
    raise SystemExit(main())
