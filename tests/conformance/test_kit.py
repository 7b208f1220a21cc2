"""The conformance kit (docs/CONFORMANCE.md) against real clients and a real cloud process.

One cloud for the module. In one batch, run together as the kit runs them: every case
against the project's own agent and against the PROTOCOL.md-only client (``doc_edge.py``),
and each case against a copy of that client that breaks the case's rule — which the case
must catch. Then the command line, and the first release's frames over a real socket.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from simultrain.conformance.cases import CASES, Case
from simultrain.conformance.kit import (
    CaseResult,
    Client,
    KitCloud,
    command_client,
    main,
    reference_client,
    render,
    run_case,
)
from simultrain.edge.main import EXIT_CONFIG

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOC_EDGE = f"{sys.executable} {ROOT / 'tests' / 'conformance' / 'doc_edge.py'}"
BY_ID = {case.id: case for case in CASES}
# Each defect of doc_edge.py, the cases that must catch it, and the check that fails.
DEFECTS = [
    ("no-subprotocol", "handshake", "offers the current version"),
    ("skip-checksum", "checksum-delta", "asks for a resync (4002)"),
    ("skip-checksum", "checksum-snap", "asks for a resync (4002)"),
    ("ignore-window", "window", "session rules kept"),
    ("no-resume", "resume", "resumes"),
    ("accept-oversize", "oversize", "refuses it with 1009"),
    ("retry-always", "version", "does not retry"),
    ("retry-always", "unauthorized", "does not retry"),
    ("retry-always", "revoked", "does not retry"),
]


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KitCloud]:
    with KitCloud(tmp_path_factory.mktemp("conformance")) as kit_cloud:
        yield kit_cloud


@pytest.fixture(scope="module")
def results(cloud: KitCloud) -> dict[tuple[str, str], CaseResult]:
    """Every run of this module, ``jobs`` at a time like the kit: (client, case) → result."""
    doc = command_client(DOC_EDGE, name="doc")
    runs: list[tuple[Client, Case]] = [(reference_client(), case) for case in CASES]
    runs += [(doc, case) for case in CASES]
    runs += [
        (command_client(f"{DOC_EDGE} --defect {defect}", name=defect), BY_ID[case])
        for defect, case, _ in DEFECTS
    ]

    async def all_runs() -> list[CaseResult]:
        # The agent's runs are CPU-bound (each starts a process that imports torch), the
        # document-only client's mostly wait: each kind gets its own slots.
        heavy, light = asyncio.Semaphore(3), asyncio.Semaphore(4)

        async def one(client: Client, case: Case) -> CaseResult:
            async with heavy if client.name == "reference" else light:
                return await run_case(case, client, cloud)

        return list(await asyncio.gather(*(one(client, case) for client, case in runs)))

    return {(result.client, result.case.id): result for result in asyncio.run(all_runs())}


def _of(results: dict[tuple[str, str], CaseResult], client: str) -> list[CaseResult]:
    return [results[(client, case.id)] for case in CASES]


def test_the_project_s_agent_passes_every_case(
    results: dict[tuple[str, str], CaseResult],
) -> None:
    ours = _of(results, "reference")
    assert all(result.passed for result in ours), render(ours, verbose=True)


def test_the_agent_stops_on_another_version_with_78_and_one_line(
    results: dict[tuple[str, str], CaseResult],
) -> None:
    """PROTOCOL.md §1.1: no HELLO, no retry, exit status 78, one clear line in its log."""
    version = results[("reference", "version")]
    assert version.exit_code == EXIT_CONFIG == 78
    errors = [line for line in version.log_path.read_text().splitlines() if " ERROR " in line]
    assert len(errors) == 1, errors
    assert "protocol version mismatch" in errors[0] and "simultrain.v99" in errors[0]
    assert "(not retrying)" in errors[0]
    # And systemd does not restart it: the unit prevents a restart on exactly that status.
    unit = (ROOT / "deploy" / "systemd" / "simultrain-edge.service").read_text()
    assert f"RestartPreventExitStatus={EXIT_CONFIG}" in unit


def test_the_document_only_client_passes_every_case(
    results: dict[tuple[str, str], CaseResult],
) -> None:
    docs = _of(results, "doc")
    assert all(result.passed for result in docs), render(docs, verbose=True)


@pytest.mark.parametrize(("defect", "case", "check"), DEFECTS)
def test_each_case_catches_the_client_that_breaks_its_rule(
    results: dict[tuple[str, str], CaseResult], defect: str, case: str, check: str
) -> None:
    result = results[(defect, case)]
    failed = [name for name, ok, _ in result.outcomes if not ok]
    assert check in failed, render([result], verbose=True)


def test_the_command_line_lists_the_cases() -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "simultrain.cli", "conformance", "--list"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    heads = [line.split()[0] for line in listed.stdout.splitlines() if not line.startswith(" ")]
    assert heads == [case.id for case in CASES]


def test_a_failed_case_is_printed_and_exits_1(
    cloud: KitCloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--client-cmd", f"{DOC_EDGE} --defect no-subprotocol", "--case", "handshake"]
    code = main([*argv, "--log-dir", str(tmp_path)], cloud=cloud)
    printed = capsys.readouterr().out
    assert code == 1, printed
    assert "FAIL  handshake" in printed and "0/1 cases passed" in printed
    assert "offers the current version: connection 0 offered nothing" in printed
    assert main(["--client-cmd", DOC_EDGE, "--case", "handshake"], cloud=cloud) == 0
    assert main(["--client-cmd", "/no/such/client", "--case", "version"], cloud=cloud) == 1
    assert "starts: /no/such/client" in capsys.readouterr().out


def test_the_real_cloud_refuses_a_version_it_does_not_speak_before_any_frame(
    cloud: KitCloud,
) -> None:
    """RFC 6455 §4.2.2 through uvicorn: accepted without a subprotocol, refused unasked."""
    url = cloud.url.replace("http://", "ws://") + "/v1/stream"
    with connect(url, subprotocols=[Subprotocol("simultrain.v1")], open_timeout=30) as ws:
        assert ws.subprotocol is None
        error = msgpack.unpackb(ws.recv(timeout=30), raw=False)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert error["v"] == 1 and error["code"] == "protocol_version_mismatch"
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000


def test_the_real_cloud_tells_the_first_release_to_upgrade(cloud: KitCloud) -> None:
    """The recorded first-release HELLO over a real socket, offering no subprotocol as that
    release did: ERROR in version 1, close 4000 (PROTOCOL.md §1.1)."""
    hello = ROOT / "tests" / "protocol" / "vectors" / "first_release" / "001-s1-e2c-hello.msgpack"
    url = cloud.url.replace("http://", "ws://") + "/v1/stream"
    with connect(url, open_timeout=30) as ws:
        assert ws.subprotocol is None
        ws.send(hello.read_bytes())
        error = msgpack.unpackb(ws.recv(timeout=30), raw=False)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert error["v"] == 1 and error["code"] == "protocol_version_mismatch"
    assert "upgrade the edge" in error["reason"]
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
