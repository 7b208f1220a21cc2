"""``python -m simultrain.edge``: run the edge agent with settings from the environment."""

from __future__ import annotations

from simultrain.shared.run_settings import serve_from_environment

from .main import run
from .settings import EdgeSettings


def main() -> int:
    return serve_from_environment(EdgeSettings, run, "simultrain edge")


if __name__ == "__main__":
    raise SystemExit(main())
