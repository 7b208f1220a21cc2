"""A throwaway PostgreSQL server for the coordinator's tests and the control-plane bench.

``initdb`` into a fresh directory, serve on a unix socket only (no TCP port: nothing else on
the machine can reach it, and no port can clash), stop and delete everything on exit::

    with TemporaryPostgres() as server:
        url = server.create_database("fleet")   # postgresql://…?host=/tmp/…
        ...

The server binaries are found on ``PATH`` or in Debian's ``/usr/lib/postgresql/<major>/bin``.
When they are missing and this process runs as root, Debian's ``postgresql`` package is
installed with ``apt-get`` (as the Makefile installs Chromium for the browser test); if that is
impossible too, :class:`PostgresUnavailable` says why, so a test tier that needs the server
fails loudly instead of skipping.

PostgreSQL refuses to run as root. As root, the data directory is handed to an unprivileged
system user (``nobody`` unless told otherwise) and ``initdb``/``pg_ctl`` run as that user
(``subprocess``'s ``user=``, no ``su`` or ``sudo``); clients connect as the database
superuser ``simultrain`` with trust authentication, which the unix socket inside a private
directory limits to this machine's root and that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

from simultrain.shared.errors import SimulTrainError

__all__ = ["PostgresUnavailable", "TemporaryPostgres", "find_server_binaries", "postgres_pids"]

SUPERUSER = "simultrain"
PORT = 5432  # names the socket file (.s.PGSQL.5432) only: the server listens on no TCP port


class PostgresUnavailable(SimulTrainError):
    """No PostgreSQL server could be found, installed or started."""


def find_server_binaries() -> Path | None:
    """The directory holding ``postgres``, ``initdb`` and ``pg_ctl``, or ``None``."""
    candidates: list[Path] = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    # Debian keeps the server binaries of each major version off PATH.
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(Path(p) for p in debian)
    for directory in candidates:
        if all((directory / name).is_file() for name in ("postgres", "initdb", "pg_ctl")):
            return directory
    return None


def postgres_pids(data_dir: Path) -> list[int]:
    """The postmaster of ``data_dir`` and its children (backends, background workers)."""
    try:
        postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    pids = [postmaster]
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == postmaster:
                pids.append(int(Path(stat).parent.name))
    return pids


def _install_with_apt() -> None:
    if os.geteuid() != 0:
        raise PostgresUnavailable(
            "PostgreSQL server binaries not found and not root: install Debian's "
            "`postgresql` package (or put postgres, initdb and pg_ctl on PATH)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
    ):
        try:
            subprocess.run(command, check=True, env=env, capture_output=True, timeout=900)
        except (OSError, subprocess.SubprocessError) as exc:
            raise PostgresUnavailable(
                f"cannot install postgresql: {' '.join(command)}: {exc}"
            ) from exc


class TemporaryPostgres:
    """One PostgreSQL server in a temporary directory, for as long as the context lasts.

    ``fsync``: ``False`` (tests) skips flushing to disk, which makes ``initdb`` and commits
    fast and only matters on an OS crash; the bench keeps PostgreSQL's durable defaults.
    ``run_as``: the unprivileged user the server runs as when this process is root.
    """

    def __init__(
        self,
        *,
        fsync: bool = False,
        run_as: str = "nobody",
        install: bool = True,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.fsync = fsync
        self.run_as = run_as
        self.install = install
        self.settings = dict(settings or {})
        self.bindir: Path | None = None
        self.root: Path | None = None
        self._user: pwd.struct_passwd | None = None
        self._databases = 0

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> Self:
        bindir = find_server_binaries()
        if bindir is None and self.install:
            _install_with_apt()
            bindir = find_server_binaries()
        if bindir is None:
            raise PostgresUnavailable("PostgreSQL server binaries not found after installing")
        self.bindir = bindir
        if os.geteuid() == 0:
            try:
                self._user = pwd.getpwnam(self.run_as)
            except KeyError as exc:
                raise PostgresUnavailable(f"no user {self.run_as!r} to run PostgreSQL as") from exc
        # /tmp rather than pytest's per-user directories: those are private to root, and the
        # server's user must be able to reach its data directory and socket.
        self.root = Path(tempfile.mkdtemp(prefix="simultrain-pg-"))
        if self._user is not None:
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        try:
            self._initdb()
            self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.log_path), "-o", self._options())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its directory. Idempotent."""
        if self.root is None:
            return
        if (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(PostgresUnavailable):
                # Its data goes with it: no shutdown checkpoint to wait for.
                self._pg_ctl("stop", "-w", "-t", "60", "-m", "immediate")
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- where things are ------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        assert self.root is not None, "the server is not started"
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.root is not None, "the server is not started"
        return self.root

    @property
    def log_path(self) -> Path:
        assert self.root is not None, "the server is not started"
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        """A libpq URL for ``database`` over the unix socket."""
        return (
            f"postgresql://{SUPERUSER}@/{quote(database)}"
            f"?host={quote(str(self.socket_dir))}&port={PORT}"
        )

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; returns its URL."""
        if name is None:
            self._databases += 1
            name = f"db{self._databases}"
        import psycopg  # the `server` extra

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database (closing whatever connections are left on it)."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def server_pids(self) -> list[int]:
        """The postmaster and its children (backends, background workers)."""
        return postgres_pids(self.data_dir)

    # --- helpers ---------------------------------------------------------------------------

    def _options(self) -> str:
        settings = {
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "port": str(PORT),
            "max_connections": "200",
            "fsync": "on" if self.fsync else "off",
            "full_page_writes": "on" if self.fsync else "off",
            **self.settings,
        }
        return " ".join(f"-c {key}={value}" for key, value in settings.items())

    def _run(self, *command: str) -> None:
        user = self._user
        try:
            subprocess.run(
                command,
                check=True,
                capture_output=True,
                text=True,
                timeout=120,
                cwd=self.root,
                user=None if user is None else user.pw_uid,
                group=None if user is None else user.pw_gid,
                extra_groups=None if user is None else [],
                env={**os.environ, "LC_ALL": "C.UTF-8"},
            )
        except subprocess.CalledProcessError as exc:
            log = ""
            if self.root is not None and self.log_path.exists():
                log = "\n" + self.log_path.read_text(errors="replace")[-2000:]
            raise PostgresUnavailable(
                f"{Path(command[0]).name} failed ({exc.returncode}): "
                f"{(exc.stderr or exc.stdout or '').strip()[-2000:]}{log}"
            ) from exc
        except (OSError, subprocess.SubprocessError) as exc:
            raise PostgresUnavailable(f"{Path(command[0]).name} failed: {exc}") from exc

    def _initdb(self) -> None:
        assert self.bindir is not None
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            *(() if self.fsync else ("--no-sync",)),
        )

    def _pg_ctl(self, *args: str) -> None:
        assert self.bindir is not None
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), *args)
