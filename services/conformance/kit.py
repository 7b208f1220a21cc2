"""``simultrain conformance``: PROTOCOL.md's edge cases, run against any edge client.

The kit starts a real cloud (``python -m simultrain.cloud``, port 0 of 127.0.0.1, tokens
on), and for each case a proxy in front of it (:mod:`.proxy`) and one run of the client
under test, given as a command. It never looks inside the client: it reads what the client
sends and when it stops, and the cloud's own account of what it applied. docs/CONFORMANCE.md
says what a client command receives and what each case checks.

Cases run ``--jobs`` at a time, each with its own edge id, so they share the one cloud.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from simultrain.procs import ServiceGroup, ServiceProcess
from simultrain.shared import auth

from .cases import CASES, Case, End, Observation, Token
from .proxy import Fault, Proxy

__all__ = [
    "KIT_RUN",
    "CaseResult",
    "Client",
    "KitCloud",
    "command_client",
    "main",
    "reference_client",
    "run_cases",
]

# The run the kit's cloud trains (docs/CONFIGURATION.md): small batches, a window of 2 so
# that it fills, a reconciling SNAP every second batch. A client reads it from the session
# spec; the reference agent is given it as its run settings.
KIT_RUN: Mapping[str, str] = {"window": "2", "batch_size": "8", "reconcile_every": "2"}
DEFAULT_STEPS = 6
STOP_WITHIN_S = 30.0  # a refused client must exit within this, without a new connection
STOP_GRACE_S = 5.0


@dataclasses.dataclass(frozen=True)
class Client:
    """How to start the client under test: argv and environment, with ``{placeholders}``."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # Variables of the kit's own environment the client must not inherit (the reference
    # agent would take a developer's SIMULTRAIN_EDGE_COORDINATOR_URL, say).
    unset_prefix: str | None = None

    def command(self, values: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
        argv = [arg.format_map(values) for arg in self.argv]
        env = {key: value.format_map(values) for key, value in self.env.items()}
        conformance = {f"SIMULTRAIN_CONFORMANCE_{k.upper()}": v for k, v in values.items()}
        inherited = {
            key: value
            for key, value in os.environ.items()
            if self.unset_prefix is None or not key.startswith(self.unset_prefix)
        }
        return argv, {**inherited, **conformance, **env}


def command_client(command: str, *, name: str = "client") -> Client:
    """A client given as one command line (split like a shell would, without a shell)."""
    return Client(name=name, argv=tuple(shlex.split(command)))


def reference_client() -> Client:
    """The project's own edge agent, configured for the kit's cloud."""
    run = {f"SIMULTRAIN_EDGE_RUN_{key.upper()}": value for key, value in KIT_RUN.items()}
    return Client(
        name="reference",
        argv=(sys.executable, "-m", "simultrain.edge"),
        unset_prefix="SIMULTRAIN_EDGE_",
        env={
            "SIMULTRAIN_EDGE_CLOUD_URL": "{url}",
            "SIMULTRAIN_EDGE_EDGE_ID": "{edge_id}",
            "SIMULTRAIN_EDGE_STEPS": "{steps}",
            "SIMULTRAIN_EDGE_TOKEN": "{token}",
            "SIMULTRAIN_EDGE_WATCHDOG": "false",
            "SIMULTRAIN_EDGE_RECONNECT_MAX_S": "1",
            "SIMULTRAIN_EDGE_COMPUTE_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            **run,
        },
    )


class KitCloud:
    """The real cloud the cases run against: one process, tokens on, the kit's run."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.token_key = secrets.token_urlsafe(32)
        self.group = ServiceGroup(log_dir)
        self.process: ServiceProcess | None = None
        self.url = ""
        self.spec: dict[str, Any] = {}

    def start(self, *, timeout_s: float = 120.0) -> None:
        env = {
            "SIMULTRAIN_CLOUD_PORT": "0",
            "SIMULTRAIN_CLOUD_TOKEN_KEY": self.token_key,
            "SIMULTRAIN_CLOUD_EVAL_INTERVAL_S": "0",
            "SIMULTRAIN_CLOUD_COMPUTE_THREADS": "1",
            "SIMULTRAIN_CLOUD_GRACEFUL_SHUTDOWN_S": "1",
            **{f"SIMULTRAIN_CLOUD_RUN_{key.upper()}": value for key, value in KIT_RUN.items()},
        }
        self.process = self.group.start("cloud", "simultrain.cloud", env)
        self.url = self.process.wait_listening(timeout_s=timeout_s)
        reply = httpx.get(f"{self.url}/v1/session-spec", timeout=30)
        reply.raise_for_status()
        self.spec = reply.json()

    def stop(self) -> None:
        self.group.stop_all()

    def token(self, edge_id: str, kind: Token) -> str:
        key = self.token_key if kind is Token.VALID else secrets.token_urlsafe(32)
        return auth.issue_token(edge_id, key, ttl_s=3600)

    async def edge_status(self, edge_id: str) -> dict[str, Any] | None:
        async with httpx.AsyncClient(timeout=30) as http:
            body = (await http.get(f"{self.url}/v1/status")).json()
        row: dict[str, Any] | None = body.get("edges", {}).get(edge_id)
        return row

    def __enter__(self) -> KitCloud:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclasses.dataclass(frozen=True)
class CaseResult:
    case: Case
    client: str
    outcomes: tuple[tuple[str, bool, str], ...]  # check name, passed, what was seen
    exit_code: int | None
    seconds: float
    log_path: Path

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.outcomes)


async def run_case(
    case: Case,
    client: Client,
    cloud: KitCloud,
    *,
    steps: int = DEFAULT_STEPS,
    timeout_s: float = 120.0,
    stop_within_s: float = STOP_WITHIN_S,
) -> CaseResult:
    """One run of ``client`` with ``case``'s fault; the checks applied to what was seen.

    A client that must stop is watched until it exits, tries again, or ``stop_within_s``
    passed since the refusal.
    """
    started = time.monotonic()
    edge_id = f"conf-{client.name}-{case.id}-{secrets.token_hex(3)}"
    proxy = Proxy(cloud.url, case.fault, cloud.spec)
    url = await proxy.start()
    values = {
        "url": url,
        "ws_url": url.replace("http://", "ws://", 1) + "/v1/stream",
        "edge_id": edge_id,
        "steps": str(steps),
        "token": cloud.token(edge_id, case.token),
    }
    argv, env = client.command(values)
    log_path = cloud.log_dir / f"{client.name}-{case.id}.log"
    try:
        with log_path.open("wb") as log:
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            except OSError as exc:
                seconds = time.monotonic() - started
                unstarted = (("starts", False, f"{argv[0]}: {exc}"),)
                return CaseResult(case, client.name, unstarted, None, seconds, log_path)
            try:
                await _watch(case, process, proxy, timeout_s, stop_within_s)
            finally:
                exit_code = await _stop(process)
    finally:
        await proxy.stop()
    observation = Observation(
        edge_id=edge_id,
        steps=steps,
        spec=cloud.spec,
        links=proxy.links,
        exit_code=exit_code,
        edge=await cloud.edge_status(edge_id),
    )
    outcomes = tuple((check.name, *check.test(observation)) for check in case.checks)
    return CaseResult(case, client.name, outcomes, exit_code, time.monotonic() - started, log_path)


async def _watch(
    case: Case,
    process: asyncio.subprocess.Process,
    proxy: Proxy,
    timeout_s: float,
    stop_within_s: float,
) -> None:
    """Until the case's end: the client's exit, or what the case waits for (bounded)."""
    exited = asyncio.ensure_future(process.wait())
    deadline = time.monotonic() + timeout_s
    try:
        while not exited.done():
            fault_closed = any(link.fault_at is not None and link.closed_at for link in proxy.links)
            if case.end is End.FAULT_CLOSED and fault_closed:
                return
            if case.end is End.STOPPED and (refused := _refused_at(proxy)) is not None:
                if any(link.opened_at > refused for link in proxy.links):
                    return  # it tried again: the verdict is in
                if time.monotonic() > refused + stop_within_s:
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            proxy.changed.clear()
            changed = asyncio.ensure_future(proxy.changed.wait())
            await asyncio.wait({exited, changed}, timeout=min(remaining, 0.5))
            changed.cancel()
    finally:
        if not exited.done():
            exited.cancel()


def _refused_at(proxy: Proxy) -> float | None:
    """When the session the case refuses ended: the fault's, or else the first one."""
    struck = [link for link in proxy.links if link.fault_at is not None]
    link = struck[0] if struck else (proxy.links[0] if proxy.links else None)
    if link is None or (link.fault_at is None and proxy.fault is not Fault.NONE):
        return None
    return link.closed_at


async def _stop(process: asyncio.subprocess.Process) -> int | None:
    """The client's exit status, or None when the kit had to stop it (SIGTERM, SIGKILL)."""
    if process.returncode is not None:
        return process.returncode
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), STOP_GRACE_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
    return None


async def run_cases(
    cloud: KitCloud,
    client: Client,
    cases: Sequence[Case] = CASES,
    *,
    steps: int = DEFAULT_STEPS,
    jobs: int = 1,
    timeout_s: float = 120.0,
) -> list[CaseResult]:
    """Every case against ``client``, ``jobs`` at a time; results in the cases' order."""
    slots = asyncio.Semaphore(max(jobs, 1))

    async def one(case: Case) -> CaseResult:
        async with slots:
            return await run_case(case, client, cloud, steps=steps, timeout_s=timeout_s)

    return list(await asyncio.gather(*(one(case) for case in cases)))


def render(results: Sequence[CaseResult], *, verbose: bool = False) -> str:
    """One line per case (PASS/FAIL, id, title), then the failed checks, then the count."""
    lines = []
    for result in results:
        mark = "PASS" if result.passed else "FAIL"
        case = result.case
        lines.append(
            f"{mark}  {case.id:<15} {case.title} ({case.sections}) [{result.seconds:.1f} s]"
        )
        for name, ok, seen in result.outcomes:
            if verbose or not ok:
                lines.append(f"        {'ok  ' if ok else 'FAIL'} {name}: {seen}")
        if not result.passed:
            lines.append(f"        client log: {result.log_path}")
    passed = sum(result.passed for result in results)
    lines.append(f"{passed}/{len(results)} cases passed")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, *, cloud: KitCloud | None = None) -> int:
    """The command line; 0 when every case passed. ``cloud``: one already started (tests)."""
    parser = argparse.ArgumentParser(
        prog="simultrain conformance",
        description="Run the wire protocol's edge conformance cases against an edge client, "
        "through a real cloud started on 127.0.0.1.",
    )
    who = parser.add_mutually_exclusive_group()
    who.add_argument(
        "--client-cmd",
        metavar="CMD",
        help="the client under test, as a command line; {url}, {ws_url}, {edge_id}, {steps} "
        "and {token} are replaced, and SIMULTRAIN_CONFORMANCE_URL, _WS_URL, _EDGE_ID, _STEPS "
        "and _TOKEN are set",
    )
    who.add_argument(
        "--reference", action="store_true", help="the project's own edge agent (the default)"
    )
    parser.add_argument(
        "--case",
        action="append",
        choices=[case.id for case in CASES],
        help="run only this case (repeatable)",
    )
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="batches per run")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    parser.add_argument("--log-dir", type=Path, help="keep the cloud's and clients' logs here")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="show every check")
    args = parser.parse_args(argv)
    if args.list:
        for case in CASES:
            print(f"{case.id:<15} {case.title} ({case.sections})")
            for check in case.checks:
                print(f"                  - {check.name}")
        return 0
    client = command_client(args.client_cmd) if args.client_cmd else reference_client()
    cases = [case for case in CASES if not args.case or case.id in args.case]
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="simultrain-conformance-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if cloud is None:
            cloud = stack.enter_context(KitCloud(log_dir))
        cloud.log_dir = log_dir
        print(
            f"cloud {cloud.url} ({', '.join(cloud.spec['subprotocols'])}; "
            f"window {cloud.spec['window']}, R {cloud.spec['config'].get('reconcile_every')}); "
            f"client: {' '.join(client.argv)}",
            flush=True,
        )
        results = asyncio.run(
            run_cases(
                cloud, client, cases, steps=args.steps, jobs=args.jobs, timeout_s=args.timeout
            )
        )
    print(render(results, verbose=args.verbose), flush=True)
    passed = all(result.passed for result in results)
    if passed and args.log_dir is None:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 0 if passed else 1
