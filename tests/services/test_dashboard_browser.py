"""The dashboard in a real headless Chromium, against a real run of ``simultrain demo``
(coordinator, cloud and edge as OS processes on 127.0.0.1, port 0), at the URL it prints.

Marked ``browser`` (starting three processes and a browser takes 30-60 s on a loaded CI
machine, more than the default suite's budget allows); ``make test`` runs it after the default
suite: ``.venv/bin/python -m pytest -m browser``. Chromium comes from the Debian packages
``chromium`` and ``chromium-driver``, which ``make`` installs.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from simultrain.procs import ServiceGroup

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.timeout(600)]

HOSTILE_NAME = "<img src=x onerror=\"document.title='pwned'\">"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("no chromium on PATH: `make` installs it (apt-get install chromium)")


def dump_dom(url: str, *, virtual_ms: int) -> str:
    """The page's DOM after ``virtual_ms`` of virtual time (its timers run; fetches to the
    real services complete in real time)."""
    with tempfile.TemporaryDirectory(prefix="simultrain-chromium-") as profile:
        done = subprocess.run(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                f"--virtual-time-budget={virtual_ms}",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class Page(HTMLParser):
    """What the dumped DOM shows: edge rows, cloud figures, the poll counter, the title."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self.figures: dict[str, str] = {}
        self.polls = 0
        self.title = ""
        self.bars = 0
        self.chart_points = 0
        self._row: str | None = None
        self._cell: list[str] | None = None
        self._figure: str | None = None
        self._in_title = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-edge-id"):
            self._row = a["data-edge-id"]
            self.rows[self._row] = []
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "dd" and a.get("data-figure"):
            self._figure = a["data-figure"]
            self.figures[self._figure] = ""
        elif a.get("id") == "polls":
            self.polls = int(a.get("data-count") or 0)
        elif tag == "title" and not self.title:  # the document's; SVG bars have titles too
            self._in_title = True
        elif tag == "rect" and "bar" in (a.get("class") or ""):
            self.bars += 1
        elif tag == "polyline" and a.get("class") == "accuracy":
            self.chart_points = int(a.get("data-points") or 0)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            self.rows[self._row].append("".join(self._cell))
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "dd":
            self._figure = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._figure is not None:
            self.figures[self._figure] += data
        if self._in_title:
            self.title += data


def wait_for(what: str, check: Callable[[], Any], *, timeout_s: float) -> Any:
    """Poll ``check`` until it returns something true; bounded."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    pytest.fail(f"{what}: not within {timeout_s:.0f}s")


@pytest.fixture
def run(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``simultrain demo`` (coordinator, cloud and one edge, training until interrupted):
    the dashboard URL it prints, and the id of its edge once it trains."""
    group = ServiceGroup(tmp_path / "logs")
    with group:
        demo = group.start(
            "demo",
            "simultrain.cli",
            {"COLUMNS": "200", "SIMULTRAIN_CLOUD_EVAL_INTERVAL_S": "0.5"},
            args=("demo", "--steps", "1000000", "--log-dir", str(tmp_path / "demo-logs")),
        )
        url = demo.wait_for_line("live dashboard: ", timeout_s=240).split()[0]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/dashboard"), url
        coordinator_url = url.removesuffix("/dashboard")

        def trained() -> str | None:
            data = httpx.get(f"{coordinator_url}/v1/dashboard", timeout=10).json()
            evaluated = any(len(c["history"]) >= 2 for c in data["clouds"])
            for edge in data["edges"]:
                if edge["connected"] and edge["steps_applied"] >= 20 and evaluated:
                    return str(edge["edge_id"])
            return None

        edge_id = wait_for("the edge trains and the cloud evaluates", trained, timeout_s=240)
        try:
            yield coordinator_url, edge_id
        finally:
            # `kill` stops the demo as Ctrl-C does: every service it started stops with it
            # (docs/CONFIGURATION.md, "Commands"); none is left running on its own.
            pid = demo.popen.pid
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            assert len(children) == 3, children  # coordinator, cloud, edge
            demo.popen.send_signal(signal.SIGTERM)
            demo.popen.wait(timeout=60)
            left = [c for c in children if Path(f"/proc/{c}").exists()]
            assert left == [], f"the demo left {left} running"


def test_the_dashboard_shows_the_edges_of_a_real_run_and_updates(run: tuple[str, str]) -> None:
    coordinator_url, edge_id = run
    # An edge whose name is markup: the page must show it as text, never run it.
    hostile = httpx.post(
        f"{coordinator_url}/v1/edges", json={"name": HOSTILE_NAME}, timeout=10
    ).json()["edge_id"]
    # The feed builds its snapshot at most once a second (docs/CONFIGURATION.md, "Watching a run"):
    # a browser opened within that second of the registration may not see the edge yet.
    wait_for(
        "the feed lists the new edge",
        lambda: any(
            e["edge_id"] == hostile
            for e in httpx.get(f"{coordinator_url}/v1/dashboard", timeout=10).json()["edges"]
        ),
        timeout_s=30,
    )
    url = f"{coordinator_url}/dashboard?interval=300"

    first = Page(dump_dom(url, virtual_ms=3000))
    # The page polled by itself, more than once.
    assert first.polls >= 3, first.polls
    row = first.rows[edge_id]
    # edge, name, cloud, state, session, steps, steps/s, replica, lag, staleness, up, down,
    # reconciliations
    assert row[3] == "up" and row[4] == "connected", row
    assert int(row[5]) >= 20 and float(row[6]) > 0, row
    # the edge's own staleness distribution: bars (each titled "τ = k: n batches"), mean / max
    assert "τ = " in row[9] and " / " in row[9], row
    assert row[10].endswith(("kB", "MB")) and row[11].endswith(("kB", "MB")), row
    assert int(row[12]) >= 1, row  # R = 10 and ≥ 20 steps: reconciled at least once
    assert first.rows[hostile][1] == HOSTILE_NAME and first.title == "SimulTrain dashboard"
    assert first.figures["mode"] == "simultrain" and first.figures["heartbeat"] == "up"
    assert first.figures["held-out accuracy"].endswith("%"), first.figures
    assert first.figures["compute busy"].endswith("%"), first.figures
    assert first.bars >= 1 and first.chart_points >= 2
    version = int(first.figures["master version"])

    def moved_on() -> bool:
        status = httpx.get(f"{coordinator_url}/v1/dashboard", timeout=10).json()
        return bool(status["clouds"][0]["master_version"] >= version + 10)

    wait_for("the master moves on", moved_on, timeout_s=120)
    second = Page(dump_dom(url, virtual_ms=1000))
    assert int(second.figures["master version"]) >= version + 10
    assert int(second.rows[edge_id][5]) > int(row[5])
