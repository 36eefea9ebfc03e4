"""Real processes and a real browser.

``live_stack(...)`` starts services as real uvicorn processes (``python -m ops.stack.serve``)
against the test session's database, on free ports; ``browser`` is Debian's chromium driven by
Playwright (never a browser a tool downloads).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from ops.db.credentials import Credentials
from ops.stack.pgserver import free_port
from ops.stack.processes import SANDBOX, LogSink, ProcessGroup, service_environment
from tests.pg import TestServer

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@dataclass
class LiveStack:
    urls: dict[str, str]
    group: ProcessGroup
    internal_secret: str
    sandbox_url: str | None = None

    def url(self, service: str, path: str = "") -> str:
        return self.urls[service].rstrip("/") + path


@contextmanager
def live_stack(
    server: TestServer,
    credentials: Credentials,
    services: list[str],
    *,
    extra_env: dict[str, str] | None = None,
    sandbox: bool = False,
    log_file: Path | None = None,
) -> Iterator[LiveStack]:
    """Services as real processes; with ``sandbox``, the SumUp sandbox as one more process,
    delivering its webhooks to the orders process over HTTP. Their output goes to stderr, or
    to ``log_file`` when given (for tests that read the log)."""
    ports = {name: free_port() for name in services}
    sandbox_port = free_port()
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    extra = {"ORDERS_SUMUP_BASE_URL": sandbox_url, **(extra_env or {})}
    environment = service_environment(server.topology, credentials, ports, env="dev", extra=extra)
    sink = LogSink(log_file, echo=None if log_file else sys.stderr)
    group = ProcessGroup(sink, environment)
    try:
        if sandbox:
            group.start_sandbox(sandbox_port)
            assert not group.wait_ready([SANDBOX], timeout=30)
        for name in services:
            group.start_service(name, ports[name])
        not_ready = group.wait_ready(services, timeout=60)
        assert not not_ready, f"not ready: {not_ready}"
        # Browsers use "localhost" so the session cookie is shared by every service.
        urls = {name: f"http://localhost:{port}" for name, port in ports.items()}
        yield LiveStack(
            urls, group, credentials.internal_secret(), sandbox_url if sandbox else None
        )
    finally:
        group.stop()
        sink.close()


def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Debian's chromium is not installed: ops/test.sh installs it (apt-get)")
    return path


# Module scope: sync Playwright runs an event loop of its own, which must be gone before the
# async tests (on pytest-asyncio's loop) of other modules run.
@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    opened = context.new_page()
    opened.set_default_timeout(15_000)
    yield opened
    context.close()
