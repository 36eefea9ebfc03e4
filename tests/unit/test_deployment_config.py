"""compose.yaml, the Caddyfile and the env template agree with the services the code defines."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

from apps.common.settings import Settings
from apps.registry import CONTRACTS, SERVICES, settings_for
from ops.cli.db import db_app
from ops.db.manifest import load_edges
from ops.stack.proxy import host_of, production_caddyfile

REPO = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def env_template_names() -> set[str]:
    output = subprocess.run(
        [sys.executable, "-m", "ops.cli", "env-template"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    return {line.split("=", 1)[0] for line in output.splitlines() if "=" in line}


def test_every_service_runs_on_its_own_database_and_role():
    services = compose()["services"]
    for name in SERVICES:
        environment = services[name]["environment"]
        assert environment["APP"] == name
        assert re.fullmatch(
            rf"postgresql://{name}_app:\$\{{ROSE_DB_PASSWORD_{name.upper()}_APP\}}"
            rf"@postgres:5432/db_{name}",
            environment["DATABASE_URL"],
        ), environment["DATABASE_URL"]
        for peer in SERVICES:
            assert environment[f"INTERNAL_URL_{peer.upper()}"] == f"http://{peer}:8000"
        assert environment["ROSE_ENV"] == "prod"


def test_only_caddy_is_published_and_it_routes_every_public_site():
    services = compose()["services"]
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"caddy"}
    caddyfile = (REPO / "ops" / "deploy" / "Caddyfile").read_text()
    # What compose mounts is the template's production rendering (`rose caddyfile`).
    assert caddyfile == production_caddyfile()
    sites = re.findall(r"^([a-z0-9.-]+\.[a-z]+) \{", caddyfile, flags=re.MULTILINE)
    public = [name for name, contract in SERVICES.items() if contract.public]
    assert sites == [host_of(name, "rose-ash.com") for name in public]
    assert "orders.rose-ash.com" in sites
    for name in public:
        assert f"reverse_proxy {name}:8000" in caddyfile
    for name in set(SERVICES) - set(public):
        assert name not in sites
        assert f"reverse_proxy {name}:" not in caddyfile
    # The refused paths, for browsers and for the rest alike.
    refused = "path /internal /internal/* /metrics /metrics/* /schema /schema/*"
    assert caddyfile.count(refused) == 2
    assert set(services["caddy"]["depends_on"]) == set(public)


def test_services_trust_forwarded_headers_from_caddy_only():
    services = compose()["services"]
    caddy_address = services["caddy"]["networks"]["default"]["ipv4_address"]
    for name in SERVICES:
        assert services[name]["environment"]["FORWARDED_ALLOW_IPS"] == caddy_address


def test_every_secret_compose_needs_is_in_the_env_template():
    text = (REPO / "compose.yaml").read_text()
    needed = {
        match.group(1)
        for match in re.finditer(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}", text)
        if not re.search(rf"\$\{{{match.group(1)}:-", text)
    }
    assert needed <= env_template_names()
    assert {"ROSE_DB_PASSWORD_LIKES_RO_MARKET", "ROSE_DB_PASSWORD_BLOG_RO_ORDERS"} <= (
        env_template_names()
    )
    # The rotation windows, with how to use them.
    assert {"INTERNAL_SECRET_PREVIOUS", "SESSION_SECRET_PREVIOUS"} <= env_template_names()


def _secrets_given(service: dict) -> dict[str, str]:
    """The secrets of .env a container gets, by name: all of .env when compose gives it the
    file (less what its environment blanks), and those its environment interpolates."""
    environment = {name: str(value) for name, value in (service.get("environment") or {}).items()}
    secrets = env_template_names()
    given: dict[str, str] = {}
    if ".env" in (service.get("env_file") or []) or service.get("env_file") == ".env":
        given = {name: "from .env" for name in secrets}
    for name, value in environment.items():
        if value == "":
            given.pop(name, None)
        for used in re.findall(r"\$\{([A-Z0-9_]+)", value):
            if used in secrets:
                given[used] = name
    return given


def test_a_container_gets_no_secret_it_has_no_use_for():
    """One service broken into (its environment read) must not be the whole cluster: no
    service gets the superuser's password or another role's, relations and likes (no
    browser reaches them) not the session secret, and SumUp's stand-in none of rose's."""
    services = compose()["services"]
    for name, contract in SERVICES.items():
        needed = {
            "INTERNAL_SECRET",
            "INTERNAL_SECRET_PREVIOUS",
            f"ROSE_DB_PASSWORD_{name.upper()}_APP",
        }
        if contract.public:
            needed |= {"SESSION_SECRET", "SESSION_SECRET_PREVIOUS"}
        extra = set(_secrets_given(services[name])) - needed
        assert not extra, f"{name} gets {sorted(extra)}"
    assert _secrets_given(services["sumup-sandbox"]) == {}
    # The migrate job provisions every role: it alone has all of .env.
    assert set(_secrets_given(services["migrate"])) >= env_template_names() - {
        "INTERNAL_SECRET_PREVIOUS",
        "SESSION_SECRET_PREVIOUS",
    }


def test_every_service_starts_on_the_environment_compose_gives_it():
    """What a container's environment is: .env (when compose gives it) under the service's
    own entries, interpolated from .env as compose does. Each service takes it (a secret it
    is given blank is one it does without, not one it refuses to start with)."""
    output = subprocess.run(
        [sys.executable, "-m", "ops.cli", "env-template"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    dotenv = dict(
        line.split("=", 1) for line in output.splitlines() if "=" in line and line[0] != "#"
    )

    def interpolated(value: str) -> str:
        return re.sub(
            r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}",
            lambda match: dotenv.get(match.group(1)) or match.group(2) or "",
            value,
        )

    services = compose()["services"]
    for name, contract in CONTRACTS.items():
        service = services[name]
        environment = dict(dotenv) if service.get("env_file") else {}
        environment |= {
            key: interpolated(str(value)) for key, value in service["environment"].items()
        }
        settings_for(contract, environment)


def test_deploy_script_deploys_every_service():
    script = (REPO / "ops" / "deploy" / "deploy.sh").read_text()
    apps = re.search(r"^APPS=\(([^)]*)\)", script, flags=re.MULTILINE)
    assert apps is not None
    assert set(apps.group(1).split()) == set(SERVICES)


def test_the_image_runs_the_installed_wheel_not_a_source_tree():
    dockerfile = (REPO / "ops" / "deploy" / "Dockerfile").read_text()
    build, run = dockerfile.split("\nFROM python:3.11-slim\n")
    assert "COPY db ./db" in build  # db/ goes into the wheel (as rose_ash_db)
    assert "pip wheel" in build
    assert "pip install /wheels/*.whl" in run
    copied = re.findall(r"^COPY (?!--from)(\S+)", run, flags=re.MULTILINE)
    assert copied == ["ops/deploy/entrypoint.sh"]


def test_the_wheel_carries_db_and_the_caddyfile_template(tmp_path):
    import zipfile

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("rose_ash-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (REPO / "db").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            assert f"rose_ash_db/{path.relative_to(REPO / 'db')}" in names, path
    assert "ops/deploy/Caddyfile.j2" in names
    assert "apps/common/templates/base.html" in names
    assert not [name for name in names if "__pycache__" in name]


# Sessions besides the services': the migrate job, a DBA's psql, monitoring.
OTHER_SESSIONS = 20


def test_the_server_admits_every_pool_and_the_fdw_connections_of_its_sessions():
    """Each service process keeps its whole pool open, and each of its sessions opens one
    connection to every provider it reads through postgres_fdw: the server must admit them all
    at once, or a busy hour ends in "too many clients"."""
    services = compose()["services"]
    command = services["postgres"].get("command", [])
    settings = dict(part.split("=", 1) for part in command if "=" in part)
    max_connections = int(settings.get("max_connections", 100))  # PostgreSQL's default
    providers = Counter(edge.consumer for edge in load_edges())
    needed = OTHER_SESSIONS
    for name in SERVICES:
        environment = services[name]["environment"]
        processes = int(environment.get("WEB_CONCURRENCY", 1))
        pool = int(environment.get("DATABASE_POOL_SIZE", Settings.database_pool_size))
        needed += processes * pool * (1 + providers[name])
    assert needed <= max_connections, (needed, max_connections)


def test_the_deployment_guide_counts_the_connections_the_code_opens():
    """docs/deployment.md budgets ``max_connections`` with a figure for one process per
    service; it must be the figure the pools and the FDW edges make."""
    providers = Counter(edge.consumer for edge in load_edges())
    pool = Settings.database_pool_size
    expected = sum(pool * (1 + providers[name]) for name in SERVICES)
    guide = (REPO / "docs" / "deployment.md").read_text()
    stated = re.search(r"one\s+process\s+per\s+service\s+that\s+is\s+(\d+)\s+connections", guide)
    assert stated is not None, "docs/deployment.md no longer states the connection budget"
    assert int(stated.group(1)) == expected


def test_the_guides_backup_and_restore_lines_are_rose_commands():
    """docs/deployment.md backs up and restores with `rose db backup` / `rose db restore` run in
    the migrate job's image; both must be commands rose has, and take the same directory."""
    guide = (REPO / "docs" / "deployment.md").read_text()
    section = guide[guide.index("## Backups and a restore") :]
    section = section[: section.index("\n## ", 1)].replace("\\\n", "")
    used = re.findall(
        r"--entrypoint rose\s+migrate db (backup|restore)\s+\"(/backup/\$stamp)\"", section
    )
    assert sorted(used) == [("backup", "/backup/$stamp"), ("restore", "/backup/$stamp")], used
    commands = {command.name for command in db_app.registered_commands}
    assert {"backup", "restore"} <= commands


def test_a_deploy_backs_up_before_it_migrates():
    """Every database's rows are backed up (`rose db backup`, a new directory per deploy) before
    the migrate job changes them; ROSE_BACKUP=0 skips it, and a failed backup stops the deploy
    (set -e) before anything migrates."""
    script = (REPO / "ops" / "deploy" / "deploy.sh").read_text()
    assert script.startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in script
    backup = script.index("--entrypoint rose migrate db backup")
    migrate = script.index('"${COMPOSE[@]}" run --rm migrate\n')
    assert backup < migrate
    guard = script.rindex("\nif ", 0, backup)
    assert '"${ROSE_BACKUP:-1}" != "0"' in script[guard:backup]
    assert re.search(r"/backup/\$ROSE_TAG-\$\(date -u \+%Y%m%dT%H%M%SZ\)", script[backup:migrate])
    # The oldest go, so deploys do not fill the disk; never fewer than one.
    assert '--keep "${ROSE_BACKUP_KEEP:-10}"' in script[backup:migrate]
