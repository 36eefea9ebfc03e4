"""The installed package is the product: our wheel, installed (not editable) into a fresh virtual
environment away from the checkout, provisions, migrates and checks a fresh PostgreSQL from the
SQL and migrations it carries, runs every service and the SumUp sandbox, and sells one thing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ops.db.credentials import Credentials
from ops.stack.pgserver import free_ports
from ops.stack.processes import SANDBOX, LogSink, ProcessGroup, service_environment
from tests.e2e.conftest import buy_in_the_browser
from tests.integration.commerce_fixtures import ALL_SERVICES, cart_rows, open_shop
from tests.integration.orders_fixtures import order_rows
from tests.pg import TestServer, embedded_server
from tests.waiting import eventually_sync

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def run(*command: str | Path, cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"{command}: {result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment outside the repository with our wheel installed in it."""
    base = tmp_path_factory.mktemp("installed")
    assert not base.resolve().is_relative_to(REPO)
    wheels = base / "wheels"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "-w",
        wheels,
        REPO,
        cwd=base,
        env=env,
    )
    (wheel,) = wheels.glob("rose_ash-*.whl")
    venv = base / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=base, env=env)
    run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel, cwd=base, env=env)
    return venv


@pytest.fixture(scope="module")
def fresh_server() -> Iterator[TestServer]:
    """A PostgreSQL of its own: everything in it comes from the installed package."""
    with embedded_server() as server:
        yield server


def test_the_installed_wheel_provisions_migrates_checks_runs_and_sells(
    installed: Path, fresh_server: TestServer, tmp_path: Path, page
) -> None:
    python = installed / "bin" / "python"
    rose = installed / "bin" / "rose"
    # Nothing of the checkout is importable from there.
    where = run(
        python, "-c", "import ops.paths as p; print(p.DB_DIR, p.REPO_ROOT)", cwd=tmp_path, env={}
    )
    db_dir, repo_root = where.split()
    assert Path(db_dir).is_relative_to(installed)
    assert repo_root == "None"

    home = tmp_path / "rose-home"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "ROSE_HOME": str(home),
        "ROSE_ADMIN_URL": fresh_server.admin_url,
    }
    provisioned = run(rose, "db", "provision", cwd=tmp_path, env=env)
    created = re.search(r"provisioned: (\d+) created", provisioned)
    assert created is not None, provisioned
    assert int(created.group(1)) > 0, provisioned
    migrated = run(rose, "db", "migrate", cwd=tmp_path, env=env)
    assert "orders" in migrated
    checked = run(rose, "db", "check", cwd=tmp_path, env=env)
    assert "ok: roles, databases, privileges and FDW edges as db/ declares" in checked

    # The services and the sandbox, run by the installed interpreter from a folder that holds
    # no source, with the credentials `rose db provision` generated in ROSE_HOME.
    credentials = Credentials(home / "credentials.json", environ={})
    *service_ports, sandbox_port = free_ports(len(ALL_SERVICES) + 1)
    ports = dict(zip(ALL_SERVICES, service_ports, strict=True))
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    environment = service_environment(
        fresh_server.topology, credentials, ports, extra={"ORDERS_SUMUP_BASE_URL": sandbox_url}
    )
    environment["PYTHONPATH"] = ""
    sink = LogSink(None, echo=sys.stderr)
    group = ProcessGroup(sink, environment, python=str(python), cwd=tmp_path)
    try:
        group.start_sandbox(sandbox_port)
        for name in ALL_SERVICES:
            group.start_service(name, ports[name])
        assert not group.wait_ready([SANDBOX, *ALL_SERVICES], timeout=90)

        open_shop(fresh_server)
        urls = {name: f"http://localhost:{ports[name]}" for name in ("market", "cart", "orders")}
        buy_in_the_browser(page, urls, sandbox_url, user_id=31, product=3)

        assert eventually_sync(lambda: [row[1] for row in order_rows(fresh_server)] == ["paid"])
        assert eventually_sync(lambda: not [row for row in cart_rows(fresh_server) if row[6]])
        deliveries = httpx.get(f"{sandbox_url}/_sandbox/deliveries").json()
        assert [entry["outcome"] for entry in deliveries] == ["delivered"]
        page.goto(f"{urls['cart']}/")
        assert page.locator("#empty-cart").count() == 1
    finally:
        group.stop()
        sink.close()
