"""shared/protocol is sans-I/O: importing it pulls in no event loop, server or torch."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("asyncio", "websockets", "fastapi", "starlette", "uvicorn", "torch", "httpx")


def test_protocol_package_imports_no_io_frameworks_nor_torch() -> None:
    # A fresh interpreter: this test process has long imported pytest-asyncio and friends.
    code = (
        "import json, sys\n"
        "import simultrain.shared.protocol, simultrain.shared.errors\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}]\n"
        "print(json.dumps(sorted(bad)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(result.stdout) == []
