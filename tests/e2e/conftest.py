"""Real processes and a real browser.

``live_stack(...)`` starts services as real uvicorn processes (``python -m ops.stack.serve``)
against the test session's database, on free ports; ``browser`` is Debian's chromium driven by
Playwright (never a browser a tool downloads).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ops.db.credentials import Credentials
from ops.stack.pgserver import free_ports
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
    log_file: Path | None = None,
) -> Iterator[LiveStack]:
    """Services as real processes; with ``sandbox``, the SumUp sandbox as one more process,
    delivering its webhooks to the orders process over HTTP. Their output goes to stderr, or
    to ``log_file`` when given (for tests that read the log)."""
    *service_ports, sandbox_port = free_ports(len(services) + 1)
    ports = dict(zip(services, service_ports, strict=True))
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


def no_script_view(html: str) -> str:
    """A page's HTML as a browser without JavaScript shows it, for a browser with it: no
    ``<script>``, the ``<noscript>`` content shown, its refresh not followed."""
    html = re.sub(r"<script\b[^>]*>.*?</script>", "", html, flags=re.S | re.I)
    html = re.sub(r"<meta\b[^>]*http-equiv=\"refresh\"[^>]*>", "", html, flags=re.I)
    return re.sub(r"</?noscript\b[^>]*>", "", html, flags=re.I)


def axe_violations_without_scripts(browser, url: str, html: str, shows: str) -> list[dict]:
    """axe-core's serious and critical violations of ``html``, a page a browser without
    JavaScript rendered at ``url``. axe cannot run in that browser (its run waits on timers
    such a page never runs): the same markup is served at ``url`` to a browser with scripts
    (its styles loaded from the live server), as that browser would have shown it, and
    ``shows`` (a selector) is visible there. Its refresh is left out (axe's meta-refresh rule
    would flag it): the page says it reloads and offers to stop, which the rule cannot see."""
    context = browser.new_context(bypass_csp=True)
    try:
        page = context.new_page()
        page.route(
            url,
            lambda route: route.fulfill(
                status=200, content_type="text/html; charset=utf-8", body=no_script_view(html)
            ),
        )
        page.goto(url)
        assert page.locator(shows).is_visible(), f"{shows} is not shown in the page axe checks"
        return axe_violations(page, axe_source())
    finally:
        context.close()


def rose_cli(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``rose ARGS`` as an operator runs it, with ``ROSE_HOME=home``."""
    result = subprocess.run(
        [sys.executable, "-m", "ops.cli", *args],
        env={**os.environ, "ROSE_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert result.returncode == 0, f"rose {' '.join(args)}: {result.stdout}{result.stderr}"
    return result


@contextmanager
def rose_up(home: Path, *args: str, timeout: float = 180) -> Iterator[RoseUp]:
    """``rose up ARGS`` as a process of its own; yields once ``rose status`` answers. Stops it
    (SIGTERM) at the end unless the test did. Its output goes beside ``home``, which ``rose up``
    makes itself (the embedded server, running as its own user when we are root, must reach
    its data folder through it)."""
    output = home.with_name(f"{home.name}.out")
    log = output.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "up", *args],
        env={**os.environ, "ROSE_HOME": str(home)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    state = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        status = rose_cli(home, "status", "--json", check=False)
        if status.returncode == 0:
            state = json.loads(status.stdout)
            break
        time.sleep(0.5)
    try:
        assert state is not None, output.read_text()
        yield RoseUp(process, state)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        log.close()


@dataclass
class RoseUp:
    process: subprocess.Popen[bytes]
    # What `rose status --json` said: database_url, services.
    state: dict[str, Any]


def buy_in_the_browser(
    page: Any, urls: dict[str, str], sandbox: str, *, user_id: int, product: int
) -> int:
    """Sign in on market, add shop product ``product`` (open_shop's) to the cart, check out, pay
    on SumUp's hosted page (under ``sandbox``), come back to orders; returns the order id."""
    slug = f"shop-{product:03d}"
    page.goto(f"{urls['market']}/auth/dev-login?user_id={user_id}&next=/product/{slug}/")
    assert page.locator("h1").inner_text() == f"Item {product:03d}"
    page.locator("#add-to-cart").click()
    page.wait_for_url(f"{urls['cart']}/")
    assert page.locator(".line").count() == 1
    page.locator("#checkout").click()
    page.wait_for_url(re.compile(re.escape(sandbox) + r"/pay/.+"))
    page.get_by_role("button", name=re.compile("Pay", re.I)).first.click()
    page.wait_for_url(re.compile(re.escape(urls["orders"]) + r"/checkout/return/\d+/"))
    match = re.search(r"/checkout/return/(\d+)/", page.url)
    assert match is not None
    return int(match.group(1))
