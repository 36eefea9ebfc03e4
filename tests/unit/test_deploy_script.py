"""ops/deploy/deploy.sh run for real, against a stand-in for the docker CLI (no container engine
runs on this machine): the commands it gives docker, in their order, and where it stops when a
step fails. The stand-in records each call and answers as docker would; `sleep` is another, so a
readiness wait that never ends takes no time."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Providers before their callers by default (events before orders and cart: a release that
# adds a request field, as ReleaseForOrder.paid_back, goes out provider first).
APPS = ["relations", "likes", "blog", "market", "events", "orders", "cart"]
COMPOSE = "compose -f compose.yaml"

# Answers as docker would: an image known or not, a backup job that fails, a service that never
# becomes ready (its readiness probe, `compose exec -T <app> python -c ...`, fails).
DOCKER = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$DOCKER_CALLS"
case "$*" in
    "image inspect "*) [ -n "${IMAGE_PRESENT:-}" ] ;;
    *"--entrypoint rose migrate db backup"*) [ -z "${BACKUP_FAILS:-}" ] ;;
    *"exec -T ${NEVER_READY:-none} python"*) exit 1 ;;
    *) exit 0 ;;
esac
"""


@pytest.fixture
def stand_ins(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("docker", DOCKER), ("sleep", "#!/bin/sh\nexit 0\n")):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "DOCKER_CALLS": str(tmp_path / "calls"),
        "ROSE_BACKUP_DIR": str(tmp_path / "backups"),
        "ROSE_TAG": "t1",
    }


def deploy(
    env: dict[str, str], *apps: str, **extra: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    done = subprocess.run(
        ["bash", str(REPO / "ops" / "deploy" / "deploy.sh"), *apps],
        env={**env, **extra},
        capture_output=True,
        text=True,
        timeout=60,
    )
    calls = Path(env["DOCKER_CALLS"])
    return done, calls.read_text().splitlines() if calls.exists() else []


def rolled_out(apps: list[str]) -> list[str]:
    """What deploying each app in turn asks of docker: start it, then probe it until ready."""
    steps = []
    for app in apps:
        steps += [f"{COMPOSE} up -d --no-deps {app}", f"{COMPOSE} exec -T {app} python -c"]
    return steps


def shape(calls: list[str]) -> list[str]:
    """The calls with what changes from run to run (a time stamp, the probe's code) left out."""
    shaped = []
    for call in calls:
        call = re.sub(r"/backup/t1-\d{8}T\d{6}Z", "/backup/t1-STAMP", call)
        call = re.sub(r"(exec -T \S+ python -c) .*", r"\1", call)
        call = re.sub(r"--user \d+ -v \S+:/backup", "--user UID -v BACKUPS:/backup", call)
        shaped.append(call)
    return shaped


def test_a_deploy_builds_backs_up_migrates_then_rolls_out_every_service(stand_ins, tmp_path):
    done, calls = deploy(stand_ins)

    assert done.returncode == 0, done.stderr
    assert shape(calls) == [
        "image inspect rose-ash:t1",
        f"{COMPOSE} build",
        f"{COMPOSE} up -d postgres",
        f"{COMPOSE} run --rm --user UID -v BACKUPS:/backup --entrypoint rose migrate db backup "
        "--keep 10 /backup/t1-STAMP",
        f"{COMPOSE} run --rm migrate",
        *rolled_out(APPS),
        f"{COMPOSE} up -d caddy",
        f"{COMPOSE} exec -T caddy caddy reload --config /etc/caddy/Caddyfile --adapter caddyfile",
    ]
    assert (tmp_path / "backups").is_dir()
    assert [f"{app} is ready" for app in APPS] == [
        line for line in done.stdout.splitlines() if line.endswith(" is ready")
    ]


def test_a_failed_backup_stops_the_deploy_before_anything_migrates(stand_ins):
    done, calls = deploy(stand_ins, BACKUP_FAILS="1")

    assert done.returncode != 0
    assert f"{COMPOSE} run --rm migrate" not in calls
    assert not any("up -d --no-deps" in call for call in calls)


def test_a_service_that_never_becomes_ready_stops_the_roll_out_and_says_how_to_roll_back(
    stand_ins,
):
    done, calls = deploy(stand_ins, NEVER_READY="orders")

    assert done.returncode == 1
    assert "orders did not become ready" in done.stderr
    assert "roll back: ROSE_TAG=<the previous tag> ROSE_MIGRATE=0 ops/deploy/deploy.sh orders" in (
        done.stderr
    )
    # Those before it were rolled out; none after it, and Caddy is not reloaded.
    started = [call.split()[-1] for call in calls if "up -d --no-deps" in call]
    assert started == APPS[: APPS.index("orders") + 1]
    assert sum("exec -T orders python" in call for call in calls) == 60  # its wait, then stop
    assert not any("caddy" in call for call in calls)


def test_a_roll_back_reuses_its_image_and_migrates_nothing(stand_ins):
    done, calls = deploy(stand_ins, "orders", "cart", IMAGE_PRESENT="1", ROSE_MIGRATE="0")

    assert done.returncode == 0, done.stderr
    assert "using the existing image rose-ash:t1" in done.stdout
    assert shape(calls) == [
        "image inspect rose-ash:t1",
        f"{COMPOSE} up -d postgres",
        *rolled_out(["orders", "cart"]),
        f"{COMPOSE} up -d caddy",
        f"{COMPOSE} exec -T caddy caddy reload --config /etc/caddy/Caddyfile --adapter caddyfile",
    ]
