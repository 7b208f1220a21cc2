"""The cloud of an earlier commit and of the working tree, side by side in one run.

    python bench/fleet_before_after.py BASE_COMMIT OUT_DIR [--edges 8,64] [--duration 45]

For each fleet size, one case with the cloud built from ``BASE_COMMIT`` ("before") and one
with the working tree's ("after"), interleaved so both see the same load on the machine. The
edges, the worker processes and the measurement are the working tree's
(:mod:`simultrain.bench.fleet`); only the cloud process imports the other code, through
``PYTHONPATH`` (``git archive`` of the commit, with the package layout of the build
backend's mapping: ``simultrain`` → ``services/``, ``simultrain.shared`` → ``shared/``).
Writes ``OUT_DIR/fleet-before-after.json``.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from simultrain.bench.fleet import FleetOptions, run_fleet_case
from simultrain.bench.records import BeforeAfterFile, BeforeAfterRecord
from simultrain.procs import ServiceGroup, ServiceProcess


def _tree_of(commit: str, into: Path) -> Path:
    """``commit``'s sources under ``into``, importable as ``simultrain``: the PYTHONPATH."""
    src, pkg = into / "src", into / "pkg" / "simultrain"
    src.mkdir(parents=True)
    pkg.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    for service in (src / "services").iterdir():
        (pkg / service.name).symlink_to(service)
    (pkg / "shared").symlink_to(src / "shared")
    return into / "pkg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="the commit whose cloud is 'before'")
    parser.add_argument("out", type=Path)
    parser.add_argument("--edges", default="8,64")
    parser.add_argument("--duration", type=float, default=45.0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    which = {"cloud": "after"}
    start = ServiceGroup.start

    def start_with_cloud(
        group: ServiceGroup, name: str, module: str, env: Mapping[str, str], **kw: Any
    ) -> ServiceProcess:
        if module == "simultrain.cloud" and which["cloud"] == "before":
            env = {**env, "PYTHONPATH": str(before_path)}
        return start(group, name, module, env, **kw)

    records: list[BeforeAfterRecord] = []
    command = shlex.join(["python", *sys.argv])
    with tempfile.TemporaryDirectory(prefix="fleet-before-") as tmp:
        before_path = _tree_of(args.base, Path(tmp))
        ServiceGroup.start = start_with_cloud  # type: ignore[method-assign]
        for edges in (int(n) for n in args.edges.split(",")):
            for cloud in ("before", "after"):
                which["cloud"] = cloud
                started = time.monotonic()
                options = FleetOptions(
                    out_dir=args.out, edge_counts=(edges,), duration_s=args.duration
                )
                fields = run_fleet_case(edges, options).to_json()
                del fields["rss_mib"]
                record = BeforeAfterRecord.model_validate(
                    {
                        **fields,
                        "cloud_code": args.base if cloud == "before" else "working tree",
                        "case_wall_s": round(time.monotonic() - started, 1),
                    }
                )
                records.append(record)
                print(edges, cloud, record.cloud_cpu_ms_per_update, flush=True)
                results = BeforeAfterFile(base=args.base, command=command, records=records)
                results.write(args.out / "fleet-before-after.json")


if __name__ == "__main__":
    main()
