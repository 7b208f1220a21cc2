"""``python -m simultrain.netem``: the link emulator, configured by flags or environment.

Flags override the ``SIMULTRAIN_NETEM_*`` variables (listed in ``settings.py``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from simultrain.netem.service import run
from simultrain.netem.settings import NetemSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simultrain.netem",
        description="User-space emulator of a mobile link between an edge and the cloud.",
    )
    parser.add_argument("--listen-host")
    parser.add_argument("--listen-port", type=int)
    parser.add_argument("--upstream-host")
    parser.add_argument("--upstream-port", type=int)
    parser.add_argument("--profile", help="4g, 5g, lan, none, or e.g. rate=20mbit,rtt=40ms")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--disconnect-every-s", type=float)
    parser.add_argument("--disconnect-for-s", type=float)
    parser.add_argument(
        "--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr)
    overrides = {
        name: value
        for name, value in vars(args).items()
        if name != "log_level" and value is not None
    }
    try:
        settings = NetemSettings(**overrides)
    except ValidationError as exc:
        print(f"invalid netem settings:\n{exc}", file=sys.stderr)
        return 2
    run(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
