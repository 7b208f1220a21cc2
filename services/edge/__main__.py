"""``python -m simultrain.edge``: run the edge agent with settings from the environment."""

from __future__ import annotations

import sys

from .main import run
from .settings import EdgeSettings

if __name__ == "__main__":
    sys.exit(run(EdgeSettings()))
