"""The running stack, as the operator's other commands find it: ``rose up`` writes where its
database and services are (``.rose/stack.json``, mode 0600, with its pid and when that process
started) and removes it when it stops; a state whose process is gone, or whose pid another
process has since, counts as no stack."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NotRequired, TypedDict

import httpx
import psycopg

from apps.common.settings import ConfigError
from ops.paths import stack_state_path


class StackState(TypedDict):
    database_url: str
    services: dict[str, str]
    pid: int
    # Which process of that pid: ``process_start`` of it (absent in a state an earlier release
    # wrote, None where it cannot be known).
    started: NotRequired[str | None]


def process_start(pid: int) -> str | None:
    """What tells process ``pid`` from any other that has or had that pid: the boot and its start
    time (Linux's /proc); None where that cannot be read (no such process, not Linux)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return f"{boot}/{fields[19]}"  # field 22 of proc(5), starttime
    except (OSError, IndexError):
        return None


def write_state(database_url: str, services: Mapping[str, str], path: Path | None = None) -> None:
    path = path or stack_state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    state = StackState(
        database_url=database_url,
        services=dict(services),
        pid=os.getpid(),
        started=process_start(os.getpid()),
    )
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(state, indent=2))
    temporary.chmod(0o600)
    temporary.replace(path)


def read_state(path: Path | None = None) -> StackState | None:
    """The running stack's state, or None when no stack runs."""
    path = path or stack_state_path()
    if not path.exists():
        return None
    try:
        state: StackState = json.loads(path.read_text())
        pid = int(state["pid"])
        if not isinstance(state["database_url"], str) or not isinstance(state["services"], dict):
            raise ValueError("database_url or services of the wrong type")
    except (ValueError, KeyError, TypeError, OSError) as exc:
        # A crash or a full disk while writing it: say so, rather than guess whether a stack runs.
        raise ConfigError(
            f"{path} cannot be read ({exc}); delete it if no stack runs (else stop that stack)"
        ) from None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    # A stack killed without cleaning up (SIGKILL, a reboot, a container stopped) leaves its
    # state; its pid may since be another process's (ours included): that is no stack.
    if pid == os.getpid():
        return None
    recorded = state.get("started")
    if isinstance(recorded, str):
        now = process_start(pid)
        if now is not None and now != recorded:
            return None
    return state


def remove_state(path: Path | None = None) -> None:
    (path or stack_state_path()).unlink(missing_ok=True)


# Longer than a service's own wait for its database (apps.common.db.READY_WAIT_SECONDS), so
# that its /readyz says why it is not ready rather than this giving up first.
HEALTH_TIMEOUT_SECONDS = 7.0


def _readiness(client: httpx.Client, url: str, timeout: float) -> str:
    try:
        answer = client.get(url + "/readyz")
    except httpx.TimeoutException:
        # Up (it took the connection), not answering: not "down", which sent the on-call
        # to a process that ran, its pool busy.
        return f"no answer within {timeout:g} s"
    except httpx.HTTPError:
        return "down"
    if answer.status_code == 200:
        return "ready"
    try:
        body = answer.json()
    except ValueError:
        body = None
    # Whatever answers on the port may not be ours: only a problem's detail is said.
    detail = body.get("detail") if isinstance(body, dict) else None
    return f"not ready: {detail}" if detail else f"not ready ({answer.status_code})"


def health(services: Mapping[str, str], timeout: float = HEALTH_TIMEOUT_SECONDS) -> dict[str, str]:
    """Each service's ``/readyz``: ``ready``, ``not ready: <why>``, ``no answer within N s``
    or ``down``; asked all at once, so a slow one costs ``timeout`` once."""
    with (
        httpx.Client(timeout=timeout) as client,
        ThreadPoolExecutor(max_workers=max(len(services), 1)) as pool,
    ):
        futures = {
            name: pool.submit(_readiness, client, url, timeout) for name, url in services.items()
        }
        return {name: future.result() for name, future in futures.items()}


def database_health(database_url: str) -> str:
    """The stack's database: ``ready`` when it answers a query, else ``down``."""
    try:
        with psycopg.connect(database_url, connect_timeout=3) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error:
        return "down"
    return "ready"
