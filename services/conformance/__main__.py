"""``python -m simultrain.conformance``: the same as ``simultrain conformance``."""

from __future__ import annotations

from .kit import main

if __name__ == "__main__":
    raise SystemExit(main())
