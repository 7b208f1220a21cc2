"""Starting SimulTrain services as separate OS processes and waiting on their events.

The demo, the benchmark and the integration tests start the real services the same way:
``python -m simultrain.<service>`` with settings in the environment, port 0, and a wait on the
``LISTENING <url>`` line each prints once it accepts connections — never a sleep.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from simultrain.shared.errors import SimulTrainError

__all__ = ["ServiceGroup", "ServiceProcess", "ServiceStartError"]


class ServiceStartError(SimulTrainError):
    """A service exited or stayed silent before it said it was listening."""


@dataclass
class ServiceProcess:
    name: str
    popen: subprocess.Popen[str]
    log_path: Path | None
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    url: str | None = None
    stdout_tail: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def wait_for_line(self, prefix: str, *, timeout_s: float) -> str:
        """The first stdout line starting with ``prefix``; bounded in time."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServiceStartError(
                    f"{self.name}: no {prefix!r} line within {timeout_s:.0f}s{self._log_hint()}"
                )
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                code = self.popen.wait()
                raise ServiceStartError(
                    f"{self.name} exited with status {code} before printing {prefix!r}"
                    + self._log_hint()
                )
            if line.startswith(prefix):
                return line[len(prefix) :].strip()

    def wait_listening(self, *, timeout_s: float = 60.0) -> str:
        self.url = self.wait_for_line("LISTENING ", timeout_s=timeout_s)
        return self.url

    def _log_hint(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-15:]
        return f"; its log ({self.log_path}) ends with:\n  " + "\n  ".join(tail)

    def stop(self, *, timeout_s: float = 20.0) -> int:
        """SIGTERM (graceful drain), then SIGKILL if it does not exit in time."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout_s)
        self._join_reader()
        return self.popen.returncode

    def _join_reader(self) -> None:
        # The reader closes stdout at EOF, which follows the exit: wait for it so no pipe
        # outlives its process.
        if self.reader is not None:
            self.reader.join(timeout=10)

    def kill(self) -> None:
        """SIGKILL: the crash the fault tests inject."""
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=30)
        self._join_reader()


class ServiceGroup:
    """Processes started together and stopped together (reverse order), also on Ctrl-C."""

    def __init__(self, log_dir: Path | None = None) -> None:
        self.log_dir = log_dir
        self.processes: list[ServiceProcess] = []

    def start(
        self,
        name: str,
        module: str,
        env: Mapping[str, str],
        *,
        args: tuple[str, ...] = (),
    ) -> ServiceProcess:
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        log_file: IO[str] | int
        log_path: Path | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / f"{name}.log"
            log_file = log_path.open("w")
        else:
            log_file = subprocess.DEVNULL
        popen = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=subprocess.PIPE,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            env=full_env,
            text=True,
            # Own process group: a Ctrl-C in the terminal reaches the demo, which then stops
            # its children in order, instead of every child at once.
            start_new_session=True,
        )
        if not isinstance(log_file, int):
            log_file.close()  # the child holds its own descriptor
        proc = ServiceProcess(name, popen, log_path)
        proc.reader = threading.Thread(target=_pump, args=(popen.stdout, proc), daemon=True)
        proc.reader.start()
        self.processes.append(proc)
        return proc

    def stop_all(self, *, timeout_s: float = 20.0) -> dict[str, int]:
        codes = {}
        for proc in reversed(self.processes):
            codes[proc.name] = proc.stop(timeout_s=timeout_s)
        return codes

    def __enter__(self) -> ServiceGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def _pump(stream: IO[str] | None, proc: ServiceProcess) -> None:
    assert stream is not None
    with stream:
        for line in stream:
            line = line.rstrip("\n")
            proc.stdout_tail = [*proc.stdout_tail, line][-20:]
            proc.lines.put(line)
    proc.lines.put(None)
