"""Print the third-party requirements of ``pyproject.toml``, one per line, for ``pip -r``.

The images install dependencies in their own layer, before the code is copied, so that an
edit to the code rebuilds only the last, small layer (``pip install --no-deps .``). This reads
the one list of dependencies there is, ``pyproject.toml``, so the images cannot drift from it.

    python pyproject_deps.py pyproject.toml server,data     # core + extras
    python pyproject_deps.py pyproject.toml "" --only pydantic pydantic-settings

``torch`` is left out unless ``--with-torch`` is given: the images install it first, from the
index the build argument names (CPU or CUDA wheels), and pip must not replace that build.
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(
    pyproject: Path, extras: list[str], *, only: set[str] | None = None, with_torch: bool = False
) -> list[str]:
    project = tomllib.loads(pyproject.read_text("utf-8"))["project"]
    own_name = _canonical(project["name"])
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise SystemExit(f"pyproject_deps: no such extra(s): {', '.join(unknown)}")
    lines = list(project.get("dependencies", []))
    for extra in extras:
        lines.extend(optional[extra])
    selected: list[str] = []
    seen: set[str] = set()
    for line in lines:
        match = _NAME.match(line)
        if match is None:
            raise SystemExit(f"pyproject_deps: cannot read requirement {line!r}")
        name = _canonical(match.group(1))
        if name == own_name:
            raise SystemExit(f"pyproject_deps: extra refers to the project itself: {line!r}")
        if name == "torch" and not with_torch:
            continue
        if only is not None and name not in only:
            continue
        seen.add(name)
        if line not in selected:
            selected.append(line)
    if only is not None:
        missing = only - seen
        if missing:
            raise SystemExit(f"pyproject_deps: not dependencies of the project: {sorted(missing)}")
    return selected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("extras", help="comma-separated extras, or an empty string")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="keep only these packages")
    parser.add_argument("--with-torch", action="store_true", help="keep torch in the list")
    args = parser.parse_args(argv)
    extras = [extra for extra in args.extras.split(",") if extra]
    only = {_canonical(name) for name in args.only} if args.only else None
    for line in requirements(args.pyproject, extras, only=only, with_torch=args.with_torch):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
