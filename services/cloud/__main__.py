"""``python -m simultrain.cloud``: serve the cloud with settings from the environment."""

from __future__ import annotations

import sys

from .server import run
from .settings import CloudSettings

if __name__ == "__main__":
    sys.exit(run(CloudSettings()))
