#!/usr/bin/env python3
"""Serve a wheelhouse as a package index (PEP 503, the "simple" API) on 127.0.0.1.

    python docker/serve_index.py build/wheelhouse [--port 0] [--stats FILE]
    # prints: LISTENING http://127.0.0.1:PORT/simple/

What an air-gapped site's PyPI mirror would be, made from a folder of wheels that
``docker/wheelhouse.sh`` filled on a connected machine: ``pip install --index-url URL``
reaches it, and so do the image builds (``PIP_INDEX_URL`` and ``TORCH_INDEX_URL``, with
``docker build --network host``; docker/build-images.sh does all of it). Every name pip asks
for is counted; on SIGTERM or SIGINT the counts go to ``--stats`` as JSON (project → pages
and files served), which is how the engine tests show that a build took its packages from
here and from nowhere else. Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import html
import http.server
import json
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

_SUFFIXES = (".whl", ".tar.gz", ".zip")


def canonical(name: str) -> str:
    """PEP 503 normalisation of a project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def project_of(filename: str) -> str | None:
    """The project a distribution file belongs to (wheel or sdist), or None."""
    if filename.endswith(".whl"):
        return canonical(filename.split("-", 1)[0])
    for suffix in (".tar.gz", ".zip"):
        if filename.endswith(suffix):
            return canonical(filename[: -len(suffix)].rsplit("-", 1)[0])
    return None


class Index:
    """The files of one folder, by project, and what was asked of them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files: dict[str, list[str]] = {}
        for path in sorted(folder.iterdir()):
            project = project_of(path.name)
            if path.is_file() and project is not None:
                self.files.setdefault(project, []).append(path.name)
        self.pages: Counter[str] = Counter()
        self.downloads: Counter[str] = Counter()
        self.missing: Counter[str] = Counter()
        self._lock = threading.Lock()

    def count(self, counter: Counter[str], key: str) -> None:
        with self._lock:
            counter[key] += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "projects": len(self.files),
                "pages": dict(sorted(self.pages.items())),
                "downloads": dict(sorted(self.downloads.items())),
                "missing": dict(sorted(self.missing.items())),
            }


def handler_for(index: Index) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _page(self, body: str) -> None:
            data = f"<!DOCTYPE html><html><body>\n{body}</body></html>\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            path = unquote(self.path.split("?", 1)[0])
            if path == "/simple/":
                links = "".join(
                    f'<a href="{quote(name)}/">{html.escape(name)}</a>\n' for name in index.files
                )
                return self._page(links)
            match = re.fullmatch(r"/simple/([^/]+)/?", path)
            if match:
                project = canonical(match[1])
                if project not in index.files:
                    index.count(index.missing, project)
                    return self.send_error(404, f"no project {project}")
                index.count(index.pages, project)
                links = "".join(
                    f'<a href="../../files/{quote(name)}">{html.escape(name)}</a>\n'
                    for name in index.files[project]
                )
                return self._page(links)
            match = re.fullmatch(r"/files/([^/]+)", path)
            if match and (index.folder / match[1]).is_file():
                name = match[1]
                index.count(index.downloads, project_of(name) or name)
                size = (index.folder / name).stat().st_size
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                with (index.folder / name).open("rb") as stream:
                    while chunk := stream.read(1 << 20):
                        self.wfile.write(chunk)
                return None
            return self.send_error(404)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the counts are the record; pip's own output names every file

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheelhouse", type=Path)
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any)")
    parser.add_argument("--stats", type=Path, help="write the request counts here on exit")
    args = parser.parse_args(argv)
    if not args.wheelhouse.is_dir():
        parser.error(f"no such folder: {args.wheelhouse}")
    index = Index(args.wheelhouse)
    if not index.files:
        parser.error(f"no wheels or sdists in {args.wheelhouse}")
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler_for(index))
    except OSError as exc:
        parser.error(f"cannot serve on 127.0.0.1:{args.port}: {exc.strerror} (--port)")

    def stop(*_: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    def stop_with_parent(parent: int) -> None:
        # The index lives only as long as the build that started it, even one killed hard.
        while os.getppid() == parent:
            time.sleep(1.0)
        stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=stop_with_parent, args=(os.getppid(),), daemon=True).start()
    print(f"LISTENING http://127.0.0.1:{server.server_address[1]}/simple/", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        if args.stats is not None:
            args.stats.write_text(json.dumps(index.stats(), indent=1) + "\n", "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
