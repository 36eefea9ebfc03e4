"""The container's migrate job in production mode (ROSE_ENV=prod), on a fresh server: every
password comes from the environment, nothing is generated, and a missing one is named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.pg import embedded_server

REPO = Path(__file__).resolve().parents[2]


def env_template() -> dict[str, str]:
    output = subprocess.run(
        [sys.executable, "-m", "ops.cli", "env-template"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


@pytest.fixture(scope="module")
def fresh_server():
    with embedded_server() as server:
        yield server


def run_job(server, secrets: dict[str, str], home: Path, *command: str):
    environment = {
        **{key: value for key, value in os.environ.items() if not key.startswith("ROSE_")},
        **secrets,
        "ROSE_ENV": "prod",
        "ROSE_HOME": str(home),
        "ROSE_ADMIN_URL": server.admin_url,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    return subprocess.run(
        list(command), env=environment, capture_output=True, text=True, cwd=REPO, timeout=300
    )


def test_missing_passwords_are_named_at_once_and_nothing_is_generated(fresh_server, tmp_path):
    secrets = env_template()
    del secrets["ROSE_DB_PASSWORD_CART_APP"]
    del secrets["ROSE_DB_PASSWORD_LIKES_RO_MARKET"]
    for job in ("provision", "migrate"):
        result = run_job(
            fresh_server, secrets, tmp_path, sys.executable, "-m", "ops.cli", "db", job
        )
        assert result.returncode != 0
        assert result.stdout == ""
        assert result.stderr.strip().splitlines() == [
            "error: ROSE_ENV=prod: missing required settings ROSE_DB_PASSWORD_CART_APP, "
            "ROSE_DB_PASSWORD_LIKES_RO_MARKET"
        ]
    assert not (tmp_path / "credentials.json").exists()


def test_migrate_job_provisions_migrates_and_leaves_no_drift(fresh_server, tmp_path):
    secrets = env_template()
    job = run_job(fresh_server, {**secrets, "APP": "migrate"}, tmp_path, "ops/deploy/entrypoint.sh")
    assert job.returncode == 0, job.stdout + job.stderr
    assert not (tmp_path / "credentials.json").exists()
    check = run_job(fresh_server, secrets, tmp_path, sys.executable, "-m", "ops.cli", "db", "check")
    assert check.returncode == 0, check.stdout + check.stderr

    password = secrets["ROSE_DB_PASSWORD_ORDERS_APP"]
    url = fresh_server.topology.app_url("orders", _FixedPasswords(password))
    with psycopg.connect(url) as orders:
        # The orders <- blog edge works with the readers' passwords from the environment.
        assert orders.execute("SELECT count(*) FROM blog.page_payment_configs").fetchone() == (0,)


class _FixedPasswords:
    def __init__(self, password: str) -> None:
        self.password = password

    def role_password(self, role: str) -> str:
        return self.password
