"""``rose db psql`` and ``rose db pgcli``: a DBA's session in a service database, as one of its
roles, over TCP. The password goes through a passfile (mode 0600, in a private directory,
removed afterwards), never on the command line, where any user of the machine could read it.

Roles: ``owner`` (the superuser of the admin DSN, under ``SET ROLE <svc>_owner`` from the start:
what migrations run as; ``RESET ROLE`` gives the superuser back), ``app`` (``<svc>_app``, what the
service runs as) and ``reader:<consumer>`` (``<svc>_ro_<consumer>``, what that consumer's FDW
edge logs in as).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from apps.registry import service_spec
from ops.db.binaries import pg_binary
from ops.db.credentials import Credentials
from ops.db.manifest import load_edges
from ops.db.topology import Topology

ROLE_HELP = "owner, app or reader:<consumer>"


class DbaError(ValueError):
    """Bad input to a DBA command: the message names what was wrong."""


@dataclass(frozen=True)
class Login:
    host: str
    port: int
    database: str
    user: str
    password: str
    # A role to switch to at connection start (PGOPTIONS="-c role=..."), for the owner.
    set_role: str | None = None


def login_for(topology: Topology, credentials: Credentials, service: str, as_role: str) -> Login:
    spec = service_spec(service)
    admin = make_url(topology.admin_url(service))
    host, port = admin.host or "127.0.0.1", admin.port or 5432
    if as_role == "owner":
        if not admin.username or admin.password is None:
            raise DbaError("the admin DSN names no user and password")
        return Login(host, port, spec.database, admin.username, admin.password, spec.owner_role)
    if as_role == "app":
        return Login(
            host, port, spec.database, spec.app_role, credentials.role_password(spec.app_role)
        )
    if as_role.startswith("reader:"):
        consumer = as_role.split(":", 1)[1]
        edge = next(
            (e for e in load_edges() if e.provider == service and e.consumer == consumer), None
        )
        if edge is None:
            readers = [f"reader:{e.consumer}" for e in load_edges() if e.provider == service]
            raise DbaError(
                f"no FDW edge {consumer} <- {service} in db/fdw/manifest.toml "
                f"(readers of {service}: {', '.join(readers) or 'none'})"
            )
        return Login(
            host, port, spec.database, edge.reader_role, credentials.role_password(edge.reader_role)
        )
    raise DbaError(f"--as {as_role!r}: expected {ROLE_HELP}")


def _major_version(binary: str) -> int:
    try:
        output = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    match = re.search(r"(\d+)(?:\.\d+)?", output)
    return int(match[1]) if match else 0


def psql_binary() -> str:
    """``ROSE_PSQL``, else the psql on PATH when it is as new as the embedded distribution's,
    else the embedded distribution's own psql."""
    chosen = os.environ.get("ROSE_PSQL")
    if chosen:
        # Checked here, so that one naming no program is a line, not a traceback from exec.
        found = shutil.which(chosen)
        if found is None:
            raise DbaError(
                f"ROSE_PSQL={chosen} is no program this user can run: name a psql, or unset "
                "it for the psql on PATH (or the embedded one)"
            )
        return found
    embedded = str(pg_binary("psql"))
    on_path = shutil.which("psql")
    if on_path and _major_version(on_path) >= _major_version(embedded):
        return on_path
    return embedded


def pgcli_binary() -> str:
    found = shutil.which("pgcli") or shutil.which("pgcli", path=str(Path(sys.executable).parent))
    if not found:
        raise DbaError("pgcli is not installed: pip install -e '.[dba]' (the optional dba extra)")
    return found


def _passfile_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@contextmanager
def passfile(login: Login) -> Iterator[Path]:
    """A libpq password file for this one login, readable by us alone, removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="rose-pass-"))  # mode 0700
    path = directory / "pgpass"
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        fields = [login.host, str(login.port), login.database, login.user, login.password]
        with os.fdopen(descriptor, "w") as handle:
            handle.write(":".join(_passfile_field(value) for value in fields) + "\n")
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def command(binary: str, login: Login, extra: Sequence[str]) -> list[str]:
    """The client's argv: where and who, never the password."""
    return [
        binary,
        "-h", login.host,
        "-p", str(login.port),
        "-U", login.user,
        "-d", login.database,
        "-w",  # never prompt: the passfile answers
        *extra,
    ]  # fmt: skip


def environment(login: Login, passfile_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "PGPASSWORD"}
    env["PGPASSFILE"] = str(passfile_path)
    env["PGAPPNAME"] = "rose db"
    if login.set_role:
        env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} -c role={login.set_role}".strip()
    return env


# After SIGTERM or SIGHUP is passed on, how long the client has to end before it is killed.
CLIENT_GRACE_SECONDS = 5


def run_client(binary: str, login: Login, extra: Sequence[str]) -> int:
    """Run the client attached to this terminal; its exit code. Ctrl-C is the client's.

    SIGTERM and SIGHUP (a closed terminal) are passed on to the client, and the passfile is
    removed once it has ended (by default Python would end at once and leave it behind)."""
    ended: list[int] = []
    process: subprocess.Popen[bytes] | None = None

    def kill() -> None:
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    def pass_on(signum: int, _frame: object) -> None:
        ended.append(signum)
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)
        if len(ended) == 1:  # a client that does not end on it is killed after a while
            timer = threading.Timer(CLIENT_GRACE_SECONDS, kill)
            timer.daemon = True
            timer.start()

    with passfile(login) as path:
        previous = {
            signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
            signal.SIGTERM: signal.signal(signal.SIGTERM, pass_on),
            signal.SIGHUP: signal.signal(signal.SIGHUP, pass_on),
        }
        try:
            process = subprocess.Popen(command(binary, login, extra), env=environment(login, path))
            if ended:  # it came before the client existed
                process.send_signal(ended[0])
            code = process.wait()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
    return 128 + ended[0] if ended else code
