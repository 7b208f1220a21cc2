"""Fixtures for the service tests. Coordinator fixtures are named ``coordinator_*``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI

from simultrain.bench.pgserver import PostgresUnavailable, TemporaryPostgres
from simultrain.coordinator import (
    CoordinatorSettings,
    CoordinatorStore,
    InMemoryStore,
    SQLiteStore,
    create_app,
)
from simultrain.coordinator.postgres import PostgresStore

# --- coordinator ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CoordinatorCredentials:
    """The secrets of ``coordinator_auth_settings``, and the headers that present them."""

    enrollment_secret: str = "enroll-me-please"
    token_key: str = "k" * 40
    admin_token: str = "admin-token-for-tests"

    @property
    def enroll_headers(self) -> dict[str, str]:
        return {"X-Enrollment-Secret": self.enrollment_secret}

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}


@pytest.fixture
def coordinator_credentials() -> CoordinatorCredentials:
    return CoordinatorCredentials()


class CoordinatorFakeClock:
    """Seconds since the epoch that move only when a test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def coordinator_clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SIMULTRAIN_COORDINATOR_* variable of the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("SIMULTRAIN_COORDINATOR_"):
            monkeypatch.delenv(name)


@pytest.fixture
def coordinator_clock() -> CoordinatorFakeClock:
    return CoordinatorFakeClock()


@pytest.fixture
def coordinator_settings(coordinator_clean_env: None) -> CoordinatorSettings:
    """Development mode (no auth), in-memory state."""
    return CoordinatorSettings(
        db_path=":memory:", heartbeat_interval_s=1.0, heartbeat_timeout_s=5.0
    )


@pytest.fixture
def coordinator_auth_settings(
    coordinator_clean_env: None, coordinator_credentials: CoordinatorCredentials
) -> CoordinatorSettings:
    """Authentication on (enrollment secret, token key, admin token), in-memory state."""
    return CoordinatorSettings(
        db_path=":memory:",
        heartbeat_interval_s=1.0,
        heartbeat_timeout_s=5.0,
        enrollment_secret=coordinator_credentials.enrollment_secret,
        token_key=coordinator_credentials.token_key,
        admin_token=coordinator_credentials.admin_token,
        token_ttl_s=600,
    )


@pytest.fixture(scope="session")
def coordinator_postgres() -> Iterator[TemporaryPostgres]:
    """One real PostgreSQL server for the whole session (initdb on a unix socket in a
    temporary directory), each test in a database of its own. A server that cannot start
    fails the tests that need it: the PostgreSQL tier never skips silently."""
    try:
        server = TemporaryPostgres().start()
    except PostgresUnavailable as exc:
        pytest.fail(f"the PostgreSQL store tier needs a PostgreSQL server: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def coordinator_postgres_url(coordinator_postgres: TemporaryPostgres) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL server, dropped afterwards."""
    url = coordinator_postgres.create_database()
    yield url
    coordinator_postgres.drop_database(urlsplit(url).path.lstrip("/"))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that needs the PostgreSQL server is of the ``postgres`` tier: kept out of
    the default run (the server and the process tests take tens of seconds) and run by
    ``make postgres-test``, which CI runs after ``make test``."""
    for item in items:
        if "coordinator_postgres" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def coordinator_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CoordinatorStore]:
    """Each store implementation in turn: the one shared suite runs against all three."""
    store: CoordinatorStore
    if request.param == "memory":
        store = InMemoryStore()
    elif request.param == "sqlite":
        store = SQLiteStore(tmp_path / "coordinator.db")
    else:
        store = PostgresStore(request.getfixturevalue("coordinator_postgres_url"))
    with store:
        yield store


def _never_500(response: httpx.Response) -> None:
    # A 500 is a bug whatever the input; fail the test at the response that produced it.
    assert response.status_code != 500, response.read()


async def _never_500_async(response: httpx.Response) -> None:
    _never_500(response)


@contextlib.asynccontextmanager
async def coordinator_serve_in_process(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan (health monitor) and talk to it through ASGITransport."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://coordinator.test",
            event_hooks={"response": [_never_500_async]},
        ) as client,
    ):
        yield client


@pytest.fixture
def coordinator_serve() -> Callable[
    [FastAPI], contextlib.AbstractAsyncContextManager[httpx.AsyncClient]
]:
    """``async with coordinator_serve(app) as client``: lifespan running, 500s fail the test."""
    return coordinator_serve_in_process


@pytest.fixture
def coordinator_app(
    coordinator_settings: CoordinatorSettings, coordinator_clock: CoordinatorFakeClock
) -> FastAPI:
    return create_app(coordinator_settings, InMemoryStore(), clock=coordinator_clock)


@pytest.fixture
async def coordinator_client(coordinator_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with coordinator_serve_in_process(coordinator_app) as client:
        yield client


@pytest.fixture
def coordinator_auth_app(
    coordinator_auth_settings: CoordinatorSettings, coordinator_clock: CoordinatorFakeClock
) -> FastAPI:
    return create_app(coordinator_auth_settings, InMemoryStore(), clock=coordinator_clock)


@pytest.fixture
async def coordinator_auth_client(
    coordinator_auth_app: FastAPI,
) -> AsyncIterator[httpx.AsyncClient]:
    async with coordinator_serve_in_process(coordinator_auth_app) as client:
        yield client
