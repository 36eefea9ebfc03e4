"""Real processes and a real browser.

``live_stack(...)`` starts services as real uvicorn processes (``python -m ops.stack.serve``)
against the test session's database, on free ports; ``browser`` is Debian's chromium driven by
Playwright (never a browser a tool downloads).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from ops.db.credentials import Credentials
from ops.stack.pgserver import free_port
from ops.stack.processes import SANDBOX, LogSink, ProcessGroup, service_environment
from ops.stack.screenshots import CHROMIUM_FLAGS
from tests.pg import TestServer


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
) -> Iterator[LiveStack]:
    """Services as real processes; with ``sandbox``, the SumUp sandbox as one more process,
    delivering its webhooks to the orders process over HTTP."""
    ports = {name: free_port() for name in services}
    sandbox_port = free_port()
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    extra = {"ORDERS_SUMUP_BASE_URL": sandbox_url, **(extra_env or {})}
    environment = service_environment(server.topology, credentials, ports, env="dev", extra=extra)
    sink = LogSink(None, echo=sys.stderr)
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


# axe-core from npm (ops/test.sh installs it; else the first test that needs it does), injected
# by Playwright into the page under test. Never a copy in the repository.
AXE_DIR = Path(__file__).resolve().parents[2] / ".cache" / "axe"
AXE_VERSION = "4.10"
AXE_SCRIPT = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
# What counts: violations of these impacts fail a page.
AXE_FAILING = ("serious", "critical")


def axe_source() -> str:
    if not AXE_SCRIPT.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("axe-core is not installed and npm is missing: run ops/test.sh")
        AXE_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "install", "--prefix", str(AXE_DIR), "--no-audit", "--no-fund", "--silent",
             f"axe-core@{AXE_VERSION}"],
            check=True,
        )  # fmt: skip
    return AXE_SCRIPT.read_text()


AXE_RUN = """async () => {
  const result = await axe.run(document, {resultTypes: ['violations']});
  return result.violations.map(v => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 5).map(n => n.target.join(' ')),
  }));
}"""


def axe_violations(page, source: str) -> list[dict]:
    """axe-core's serious and critical violations of the page as it is now."""
    page.evaluate(source)
    found = page.evaluate(AXE_RUN)
    return [violation for violation in found if violation["impact"] in AXE_FAILING]
