"""One-off migration of the committed fleet results to the byte counts' names.

    python bench/migrate_fleet_bytes.py [bench/results]

The cloud's ``/v1/status`` names a session's bytes from the edge's side, ``bytes_up`` (edge →
cloud) and ``bytes_down``, as the dashboard, the demo and the bench records always did
(shared/contracts.py); the fleet records still had the cloud's view, ``cloud_bytes_in_per_update``
and ``cloud_bytes_out_per_update``. This renames those two keys, in place, in every fleet
results file that has them (``fleet.json``, ``rss32/fleet.json``, ``fleet-before-after.json``)
and changes nothing else: the text is rewritten key for key, so formatting and every other
value stay byte for byte, and the result is checked to be the same JSON but for the names.
Running it again changes nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RENAMES = {
    "cloud_bytes_in_per_update": "cloud_bytes_up_per_update",
    "cloud_bytes_out_per_update": "cloud_bytes_down_per_update",
}
FILES = ("fleet.json", "rss32/fleet.json", "fleet-before-after.json")


def renamed(value: Any) -> Any:
    if isinstance(value, dict):
        return {RENAMES.get(k, k): renamed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [renamed(v) for v in value]
    return value


def migrate(path: Path) -> bool:
    """Rename the keys in ``path``; whether anything changed."""
    text = path.read_text()
    new = text
    for old, name in RENAMES.items():
        new = new.replace(f'"{old}":', f'"{name}":')
    if new == text:
        return False
    if json.loads(new) != renamed(json.loads(text)):
        raise SystemExit(f"{path}: the renamed text is not the same JSON; nothing written")
    path.write_text(new)
    return True


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results")
    for name in FILES:
        path = root / name
        if path.exists():
            print(f"{path}: {'renamed' if migrate(path) else 'already current'}")


if __name__ == "__main__":
    main()
