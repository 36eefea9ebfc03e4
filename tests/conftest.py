"""Fixtures shared by every test: one PostgreSQL per session, provisioned and migrated once;
in-process stacks of real apps talking to each other over real (ASGI) HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from litestar import Litestar

from apps.common.internal_client import InternalClient
from apps.common.settings import Settings
from apps.registry import SERVICES, dev_app_urls, service_spec
from ops.db.credentials import Credentials
from ops.db.lifecycle import converge_databases
from ops.db.migrate import services_with_migrations
from ops.stack.processes import available_services
from tests.integration.db_fixtures import Cluster, start_cluster
from tests.pg import TestServer, session_server

INTERNAL_SECRET = "test-internal-secret-0123456789"
SESSION_SECRET = "test-session-secret-0123456789"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[TestServer]:
    with session_server() as server:
        yield server


@pytest.fixture(scope="session")
def db_cluster() -> Iterator[Cluster]:
    """A provisioned cluster of its own, for tests that break it on purpose (and repair it)."""
    yield from start_cluster()


@pytest.fixture(scope="session")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    return Credentials(tmp_path_factory.mktemp("credentials") / "credentials.json", environ={})


@pytest.fixture(scope="session")
def provisioned(pg_server: TestServer, credentials: Credentials) -> TestServer:
    converge_databases(pg_server.topology, credentials, say=lambda _: None)
    return pg_server


def admin_connect(server: TestServer, service: str | None = None) -> psycopg.Connection:
    database = service_spec(service).database if service else "postgres"
    return psycopg.connect(server.topology.admin_url(service, database), autocommit=True)


def lock_waiters(server: TestServer, service: str) -> int:
    """Connections of ``service``'s database waiting on a lock (a row lock or an advisory one):
    how a race test sees that a call has reached the lock it is made to wait on."""
    with admin_connect(server, service) as watcher:
        row = watcher.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return int(row[0]) if row else 0


def truncate_all(server: TestServer) -> None:
    """Empty every service table (not the migration versions), so tests do not see each other."""
    for name in services_with_migrations():
        with admin_connect(server, name) as connection:
            tables = connection.execute(
                """
                SELECT format('%%I.%%I', schemaname, tablename) FROM pg_tables
                WHERE schemaname = %s AND tablename <> 'alembic_version'
                """,
                (name,),
            ).fetchall()
            if tables:
                names = ", ".join(row[0] for row in tables)
                connection.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")


@pytest.fixture
def clean_db(provisioned: TestServer) -> Iterator[TestServer]:
    truncate_all(provisioned)
    yield provisioned
    truncate_all(provisioned)


def make_settings(
    server: TestServer,
    credentials: Credentials,
    service: str,
    *,
    env: str = "dev",
    **overrides: Any,
) -> Settings:
    values: dict[str, Any] = {
        "service": service,
        "public": service_spec(service).public,
        "dev_app_urls": dev_app_urls(),
        "env": env,
        "database_url": server.topology.app_url(service, credentials),
        "internal_secret": INTERNAL_SECRET,
        "session_secret": SESSION_SECRET if service_spec(service).public else None,
        "editor_user_ids": frozenset({1}),
        # Every test starts its own apps: opening each one's whole pool (and its FDW
        # connections) would cost a login per connection per test. tests/integration/
        # test_pool_warm.py turns it on.
        "database_pool_warm": False,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class InProcessStack:
    """Real apps of several services in this process; internal calls go over ASGI HTTP.

    Everything runs on the test's event loop (Litestar's AsyncTestClient would run the app on a
    loop of its own, and connection pools must not be shared across loops)."""

    apps: dict[str, Litestar]
    # What tests call the apps with, signed.
    internal: InternalClient
    # Each service's own client (and the tests'): routing changes apply to all of them.
    all_internal: list[InternalClient] = field(default_factory=list)
    clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)

    def client(self, service: str) -> httpx.AsyncClient:
        return self.clients[service]

    def browser(self, service: str, address: str = "127.0.0.1") -> httpx.AsyncClient:
        """A cookie-keeping client of one public service, like a browser tab, connecting from
        ``address``."""
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.apps[service], client=(address, 50000)),
            base_url=f"http://{service}.test",
            follow_redirects=False,
        )


@asynccontextmanager
async def lifespan_running(app: Litestar) -> AsyncIterator[None]:
    """Run the app's lifespan (start-up, shut-down) in a task of its own on this loop, so it is
    entered and exited in the same task whatever task the test's fixtures run in."""
    started, stop = asyncio.Event(), asyncio.Event()

    async def run() -> None:
        async with app.lifespan():
            started.set()
            await stop.wait()

    task = asyncio.create_task(run())
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        task.result()  # start-up failed: raise its error
    try:
        yield
    finally:
        stop.set()
        await task


@asynccontextmanager
async def in_process_stack(
    server: TestServer,
    credentials: Credentials,
    services: list[str] | None = None,
    *,
    env: str = "dev",
    settings_overrides: dict[str, dict[str, Any]] | None = None,
) -> AsyncIterator[InProcessStack]:
    import importlib

    names = services or available_services()
    apps: dict[str, Litestar] = {}
    # The tests' own client, and each service's (signing with its own secret), all routed to
    # the apps in this process (filled in below).
    client = InternalClient(caller="tests", secret=INTERNAL_SECRET, asgi_apps=apps)
    clients = [client]
    for name in names:
        overrides = (settings_overrides or {}).get(name, {})
        settings = make_settings(server, credentials, name, env=env, **overrides)
        # A service not in this process is reached at its URL in the settings, if any.
        own = InternalClient(
            caller=name,
            secret=settings.internal_secret,
            asgi_apps=apps,
            base_urls=settings.internal_urls,
        )
        clients.append(own)
        module = importlib.import_module(SERVICES[name].app_module)
        apps[name] = module.create_app(settings, internal_client=own)
    stack = InProcessStack(apps, client, clients)
    try:
        async with AsyncExitStack() as exits:
            for name, app in apps.items():
                await exits.enter_async_context(lifespan_running(app))
                stack.clients[name] = await exits.enter_async_context(stack.browser(name))
            if "orders" in apps:
                # Orders' pass at start-up runs beside the test otherwise, and a row it holds
                # is skipped by the work a test then waits for (``reconciler.quiet()``).
                await asyncio.wait_for(apps["orders"].state.reconciler.started_up.wait(), 30)
            yield stack
    finally:
        for each in clients:
            await each.aclose()


@pytest.fixture
async def stack(clean_db: TestServer, credentials: Credentials) -> AsyncIterator[InProcessStack]:
    async with in_process_stack(clean_db, credentials) as running:
        yield running


REPO_ROOT = Path(__file__).resolve().parent.parent
