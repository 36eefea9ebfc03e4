"""`rose up` as a user runs it: real processes, the embedded PostgreSQL, signed CLI calls."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from apps.sumup_sandbox.app import DEFAULT_API_KEY, DEFAULT_MERCHANT_CODE
from ops.stack.pgserver import free_port, port_is_free
from tests.e2e.conftest import rose_cli as rose
from tests.e2e.conftest import rose_up

PORT_OFFSET = 20000


@pytest.fixture
def running_stack(tmp_path: Path, request: pytest.FixtureRequest):
    """``rose up --only relations`` (more options by indirect parametrization)."""
    extra: list[str] = list(getattr(request, "param", []))
    home = tmp_path / "rose-home"
    pg_port = free_port()
    args = ["--fresh", "--pg-port", str(pg_port), "--port-offset", str(PORT_OFFSET)]
    with rose_up(home, *args, "--only", "relations", *extra, timeout=60) as running:
        yield home, running.process, running.state, pg_port


def test_rose_up_runs_relations_and_cli_calls_reach_it(running_stack):
    home, process, state, pg_port = running_stack
    relations_url = state["services"]["relations"]
    assert relations_url.endswith(str(8008 + PORT_OFFSET))
    assert httpx.get(relations_url + "/readyz").status_code == 200
    assert state["database_url"].startswith("postgresql://postgres:")

    attached = rose(
        home,
        "action",
        "relations",
        "attach-child",
        # Page 3: relations' demo data attaches the demo pages' (1 and 2) markets and calendars.
        '{"parent_type":"page","parent_id":3,"child_type":"market","child_id":7}',
    )
    relation = json.loads(attached.stdout)
    children = rose(home, "data", "relations", "get-children", "parent_type=page", "parent_id=3")
    assert [child["child_id"] for child in json.loads(children.stdout)] == [7]
    assert [child["id"] for child in json.loads(children.stdout)] == [relation["id"]]

    bad = rose(home, "action", "relations", "attach-child", '{"parent_type":"page"}', check=False)
    assert bad.returncode == 1
    assert "422" in bad.stderr

    check = rose(home, "db", "check")
    assert check.returncode == 0, check.stdout

    # Ctrl-C / SIGTERM stops everything: services, database, state file.
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert not (home / "stack.json").exists()
    # (The kernel may take a moment to release a port on a busy machine.)
    assert wait_for(lambda: port_is_free(8008 + PORT_OFFSET), timeout=10)
    assert wait_for(lambda: port_is_free(pg_port), timeout=10)
    log = (home / "rose.log").read_text()
    assert "relations  http://127.0.0.1:28008  ready" in log
    assert "embedded PostgreSQL stopped" in log
    # Audit O15: the logs (every request line; the server's) are for their owner only.
    for name in ("rose.log", "pgdata.log"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
    if os.geteuid() == 0:
        # The server's system user needed to traverse the test's folder (pytest makes it
        # 0700): an ACL entry lets it alone in, others' bits stay shut (audit O15), and the
        # change is said, in the log and on stderr.
        change = f"embedded_postgres: {home.parent}: traverse (x) for this user alone"
        assert change in log
        assert change in home.with_name("rose-home.out").read_text()
        assert stat.S_IMODE(home.parent.stat().st_mode) & 0o007 == 0


def children_of(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def service_pid(up_pid: int, service: str) -> int:
    return child_pid(up_pid, f"ops.stack.serve\0{service}\0")


def child_pid(up_pid: int, command: str) -> int:
    """The child of ``up_pid`` whose command line has ``command`` (arguments joined by NULs)."""
    [pid] = [child for child in children_of(up_pid) if command in command_line(child)]
    return pid


def command_line(pid: int) -> str:
    """``pid``'s command line; empty for a process gone since it was listed (a short-lived
    child of rose up's exits between the listing and this read)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def wait_for(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.3)
    return False


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_killed_service_is_restarted_and_the_log_says_so(running_stack):
    """Issue 12 item 6: kill -9 of a service no longer stops the stack; it comes back."""
    home, process, state, _pg_port = running_stack
    relations_url = state["services"]["relations"]
    first = service_pid(process.pid, "relations")
    os.kill(first, signal.SIGKILL)

    assert wait_for(
        lambda: (
            "relations restarted" in (home / "rose.log").read_text()
            and answers(relations_url + "/healthz")
        )
    ), (home / "rose.log").read_text()
    assert process.poll() is None  # the stack kept running
    second = service_pid(process.pid, "relations")
    assert second != first
    log = (home / "rose.log").read_text()
    assert "relations exited with code -9; restarting in 1s (restart 1)" in log
    assert answers(relations_url + "/readyz")


@pytest.mark.parametrize("running_stack", [["--workers", "2"]], indirect=True)
def test_workers_run_several_processes_on_one_port_and_replace_a_dead_one(running_stack):
    _home, process, state, _pg_port = running_stack
    relations_url = state["services"]["relations"]
    supervisor = service_pid(process.pid, "relations")
    # uvicorn's supervisor and its two workers (each a process of its own).
    workers = [
        pid
        for pid in children_of(supervisor)
        if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()
    ]
    assert len(workers) == 2
    assert answers(relations_url + "/readyz")

    os.kill(workers[0], signal.SIGKILL)

    def replaced() -> bool:
        now = [
            pid
            for pid in children_of(supervisor)
            if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()
        ]
        return len(now) == 2 and workers[0] not in now

    assert wait_for(replaced)
    assert answers(relations_url + "/readyz")
    # Any worker answers /metrics for all of them (prometheus_client's multiprocess mode): the
    # count of 6 requests spread over both workers is the same whichever worker is scraped.
    for _ in range(6):
        assert httpx.get(relations_url + "/schema/openapi.json", timeout=5).status_code == 200
    wanted = (
        'rose_requests_total{app_name="relations",method="GET",'
        'path="/schema/openapi.json",status_code="200"} 6.0'
    )
    for _ in range(4):
        metrics = httpx.get(relations_url + "/metrics", timeout=5)
        assert metrics.status_code == 200
        assert wanted in metrics.text, metrics.text


def postmaster_pid(home: Path) -> int:
    return int((home / "pgdata" / "postmaster.pid").read_text().splitlines()[0])


def running(pid: int) -> bool:
    """A process that exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_killed_postgres_is_restarted_and_status_says_while_it_is_down(running_stack):
    """Audit O16: kill -9 of the embedded postmaster went unnoticed; every service answered 503
    for good. The supervisor now starts it again; `rose status` says when the database is down."""
    home, process, state, _pg_port = running_stack
    relations_url = state["services"]["relations"]
    first = postmaster_pid(home)
    # Held still, the supervisor cannot restart it before `rose status` has looked.
    process.send_signal(signal.SIGSTOP)
    try:
        os.kill(first, signal.SIGKILL)
        assert wait_for(lambda: not running(first), timeout=30)
        down = rose(home, "status")
        assert re.search(r"database\s.*\sdown", down.stdout), down.stdout
    finally:
        process.send_signal(signal.SIGCONT)

    assert wait_for(
        lambda: (
            "PostgreSQL restarted" in (home / "rose.log").read_text()
            and answers(relations_url + "/readyz")
        ),
        timeout=90,
    ), (home / "rose.log").read_text()
    log = (home / "rose.log").read_text()
    assert f"PostgreSQL exited ({home / 'pgdata'}); restarting in 1s (restart 1)" in log
    assert postmaster_pid(home) != first
    assert process.poll() is None
    up = rose(home, "status")
    assert re.search(r"database\s.*\sready", up.stdout), up.stdout


def test_a_killed_rose_up_takes_its_services_along_and_sighup_stops_cleanly(tmp_path: Path):
    """Audit O7: `rose up` killed (SIGKILL, the OOM killer) left its services running orphaned,
    and SIGHUP (a closed terminal, a dropped ssh session) killed it without cleanup. Now the
    services die with it, the next `rose up` restarts the PostgreSQL it left (and says so), and
    SIGHUP stops everything like SIGTERM."""
    home = tmp_path / "rose-home"
    pg_port = free_port()
    args = ["--pg-port", str(pg_port), "--port-offset", str(PORT_OFFSET), "--only", "relations"]
    with rose_up(home, "--fresh", *args, timeout=90) as first:
        relations = service_pid(first.process.pid, "relations")
        left = postmaster_pid(home)
        first.process.kill()
        first.process.wait(30)
        assert wait_for(lambda: not running(relations), timeout=30)
    assert running(left)  # the embedded PostgreSQL outlives it: the next `rose up` takes it over

    with rose_up(home, *args, timeout=90) as second:
        assert not running(left)
        log = (home / "rose.log").read_text()
        assert f"a PostgreSQL server left running in {home / 'pgdata'} (pid {left})" in log
        assert answers(second.state["services"]["relations"] + "/readyz")
        relations = service_pid(second.process.pid, "relations")
        second.process.send_signal(signal.SIGHUP)
        assert second.process.wait(timeout=60) == 0
    assert not running(relations)
    assert "embedded PostgreSQL stopped" in (home / "rose.log").read_text()
    assert wait_for(lambda: port_is_free(pg_port), timeout=10)


@pytest.mark.parametrize(
    ("name", "command", "port", "ready"),
    [
        ("relations", "ops.stack.serve\0relations\0", 8008, "/readyz"),
        ("sumup", "sumup-sandbox\0", 8099, "/_sandbox/controls"),
    ],
)
def test_a_service_port_stays_the_stacks_while_its_service_is_down(
    running_stack, name, command, port, ready
):
    """Probe B: `rose up` checked that a service's port was free, then let go of it until the
    service bound it, after provisioning, migrations, the demo data and the service's own pool
    warm-up (dozens of connections to PostgreSQL, each with an ephemeral local port), and again
    for as long as a killed service waited to be restarted. A port in the kernel's ephemeral
    range (32768-60999 on Linux: ``--port-offset 33000``) was then taken by a client
    connection: ``[Errno 98] ... address already in use``, and `rose up` gave up ("not ready:
    events, orders"), or the restarted service failed for as long as that connection lived.
    `rose up` now binds every service's port when it checks it and keeps it bound (not
    listening: a bound port is never a connection's ephemeral one), and hands each start of
    the service a listening socket of its own on it. Review M2: the first version kept the
    listening socket itself, and a client of a service that was down waited (the kernel
    queued its connection) instead of being refused at once; now it is refused."""
    home, process, _state, _pg_port = running_stack
    port += PORT_OFFSET
    url = f"http://127.0.0.1:{port}"
    first = child_pid(process.pid, command)
    # Held still, the supervisor cannot restart the service before the port is tried.
    process.send_signal(signal.SIGSTOP)
    try:
        os.kill(first, signal.SIGKILL)
        assert wait_for(lambda: not running(first), timeout=30)
        assert port in bound_not_listening(process.pid), f"{name}'s port was let go"
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection(("127.0.0.1", port), timeout=5),
        ):
            pass
    finally:
        process.send_signal(signal.SIGCONT)

    assert wait_for(
        lambda: f"{name} restarted" in (home / "rose.log").read_text() and answers(url + ready)
    ), (home / "rose.log").read_text()
    assert child_pid(process.pid, command) != first
    assert process.poll() is None


def bound_not_listening(pid: int) -> set[int]:
    """The local ports of the TCP sockets process ``pid`` holds bound and not listening: what
    keeps a port from being any connection's ephemeral one. Such a socket is in no table
    /proc/net/tcp or this ss show: each of the process's sockets is copied here
    (pidfd_getfd(2), Linux 5.6+) and asked."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd_getfd = 438  # the syscall's number, the same on every architecture since 5.6
    ports = set()
    pidfd = os.pidfd_open(pid)
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if not os.readlink(fd).startswith("socket:["):
                    continue
            copy = libc.syscall(pidfd_getfd, pidfd, int(fd.name), 0)
            if copy < 0:
                error = ctypes.get_errno()
                if error in (errno.EPERM, errno.ENOSYS):
                    pytest.skip(f"reading another process's sockets: {os.strerror(error)}")
                continue
            with socket.socket(fileno=copy) as sock:
                if sock.type != socket.SOCK_STREAM or sock.family != socket.AF_INET:
                    continue
                if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    ports.add(sock.getsockname()[1])
    finally:
        os.close(pidfd)
    return ports


def test_a_killed_rose_ups_state_is_no_stack_once_another_process_has_its_pid(tmp_path: Path):
    """Probe B: `rose up` killed (SIGKILL, the OOM killer, a reboot, a container stopped) leaves
    `.rose/stack.json`, which named the stack by its pid alone. Once another process had that
    pid (after a reboot; in a container started again, the new `rose up` itself, pid 1), every
    later `rose up` refused, "a stack already runs (pid N); stop it first", pointing at a
    process that is no stack, and `rose status` and `rose data` reported the dead stack. The
    state now records the process's start (the boot and the start time), and a pid another
    process has taken counts as no stack."""
    home = tmp_path / "rose-home"
    pg_port = free_port()
    args = ["--pg-port", str(pg_port), "--port-offset", str(PORT_OFFSET), "--only", "relations"]
    with rose_up(home, "--fresh", *args, timeout=90) as first:
        relations = service_pid(first.process.pid, "relations")
        first.process.kill()
        first.process.wait(30)
        assert wait_for(lambda: not running(relations), timeout=30)
    state_file = home / "stack.json"
    state = json.loads(state_file.read_text())
    # The dead stack's pid, given to another process.
    other = subprocess.Popen(["sleep", "600"])
    try:
        state["pid"] = other.pid
        state_file.write_text(json.dumps(state))
        status = rose(home, "status", check=False)
        assert status.returncode == 1
        assert "no stack is running" in status.stderr

        with rose_up(home, *args, timeout=90) as second:
            assert answers(second.state["services"]["relations"] + "/readyz")
            assert json.loads(state_file.read_text())["pid"] == second.process.pid
        assert running(other.pid)  # nobody stopped it
    finally:
        other.kill()
        other.wait()


def test_ctrl_c_while_starting_stops_without_finishing_the_start(tmp_path: Path):
    """Ctrl-C while `rose up` starts: before, it went on with migrations, demo data and every
    service until all were ready, and only then stopped (about 5 s more, every service started
    for nothing). Now it stops at the next step: no service is started, the database is
    stopped, the home holds no state. Probe (2026-12-06): it then exited 0, as if the start
    had done its work (`rose up && next` went on); now it exits 130, as a shell expects of a
    command that SIGINT stopped."""
    home = tmp_path / "rose-home"
    pg_port = free_port()
    output = tmp_path / "rose-home.out"
    with output.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ops.cli",
                "up",
                "--fresh",
                "--pg-port",
                str(pg_port),
                "--port-offset",
                str(PORT_OFFSET),
                "--only",
                "relations",
            ],
            env={**os.environ, "ROSE_HOME": str(home)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            assert wait_for(
                lambda: (
                    (home / "rose.log").exists()
                    and "starting embedded PostgreSQL" in (home / "rose.log").read_text()
                ),
                timeout=60,
            ), output.read_text()
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=60) == 128 + signal.SIGINT, output.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    rose_log = (home / "rose.log").read_text()
    assert "stopped before the stack was ready" in rose_log
    assert "ready" not in rose_log.replace("stopped before the stack was ready", "")
    sources = {line.split(" ", 2)[1] for line in rose_log.splitlines() if " | " in line}
    assert sources == {"rose"}, rose_log  # no line from relations or the sandbox: never started
    assert "embedded PostgreSQL stopped" in rose_log
    assert not (home / "stack.json").exists()
    assert wait_for(lambda: port_is_free(8008 + PORT_OFFSET), timeout=10)
    assert wait_for(lambda: port_is_free(pg_port), timeout=10)


def test_rose_up_prints_each_public_service_where_a_browser_keeps_its_session(tmp_path: Path):
    """Probe docs: `rose up` printed every service as `http://127.0.0.1:PORT` only. A new user
    opening the printed market signed in on 127.0.0.1, while every link of the pages (their
    navigation, "Add to cart"'s redirect) goes to the services' public URLs on `localhost`, a
    host the session cookie was not set for: the cart they landed on was an empty anonymous
    one. A public service's line now also names its public URL, the one its pages link to."""
    home = tmp_path / "rose-home"
    args = ["--fresh", "--no-demo", "--pg-port", str(free_port()), "--only", "blog,relations"]
    with rose_up(home, *args, "--port-offset", str(PORT_OFFSET), timeout=90) as running:
        public = f"http://localhost:{8001 + PORT_OFFSET}"
        line = f"blog       http://127.0.0.1:{8001 + PORT_OFFSET}  ready  public: {public}"
        assert wait_for(lambda: line in (home / "rose.log").read_text(), timeout=30)
        page = httpx.get(running.state["services"]["blog"] + "/")
        assert page.status_code == 200
        assert f'href="{public}/"' in page.text  # the navigation's link to blog itself
        # An internal service has no public URL: its line is the address alone.
        relations = f"relations  http://127.0.0.1:{8008 + PORT_OFFSET}  ready\n"
        assert relations in (home / "rose.log").read_text()


def test_a_home_whose_credentials_are_gone_is_refused_before_new_ones_are_made(tmp_path: Path):
    """Probe (December 2026): with .rose/credentials.json removed (or lost) and its database
    still in .rose/pgdata, `rose up` generated new passwords into a new file, started the
    server and failed on "password authentication failed for user postgres", every later start
    the same, nothing saying why or what to do. The file holds the passwords the database was
    made with: it is refused before any is made, naming the way back."""
    home = tmp_path / "rose-home"
    args = ["--pg-port", str(free_port()), "--port-offset", str(PORT_OFFSET)]
    with rose_up(home, "--fresh", "--no-demo", *args, "--only", "relations", timeout=90):
        pass
    (home / "credentials.json").unlink()
    refused = rose(home, "up", *args, "--only", "relations", check=False)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    line = " ".join((refused.stdout + refused.stderr).split())
    assert f"{home / 'pgdata'} holds a database, and {home / 'credentials.json'} is missing" in (
        line
    ), line
    assert "--fresh" in line
    assert "password authentication failed" not in line
    assert not (home / "credentials.json").exists()


def test_a_second_rose_up_in_the_same_home_says_to_give_it_another_home(running_stack):
    """Probe docs: the README offers `--port-offset N` (with `--pg-port`) for "a second stack
    beside the first". Run as written, in the same checkout, it was refused with "a stack
    already runs (pid N); stop it first", which names no way to run the second one: each
    stack needs a home of its own (`ROSE_HOME`)."""
    home, _process, _state, _pg_port = running_stack
    second = rose(
        home,
        *("up", "--port-offset", str(PORT_OFFSET + 100), "--pg-port", str(free_port())),
        check=False,
    )
    assert second.returncode == 1
    assert "a stack already runs" in second.stderr
    assert "ROSE_HOME" in second.stderr, second.stderr


def test_the_sumup_sandbox_keeps_its_checkouts_across_restarts_until_fresh(tmp_path: Path):
    """SumUp keeps every checkout it made, and orders flags an order whose checkout SumUp does
    not know (probe money, December 2026). The sandbox `rose up` runs forgot them at every
    restart, so each pending order of a dev stack was flagged at its expiry. It keeps them in
    the home now; `--fresh` (orders starts again from 1) starts it with none."""
    home = tmp_path / "rose-home"
    pg_port = free_port()
    args = ["--pg-port", str(pg_port), "--port-offset", str(PORT_OFFSET), "--only", "relations"]
    sandbox_url = f"http://127.0.0.1:{8099 + PORT_OFFSET}"
    api = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
    with rose_up(home, "--fresh", *args, timeout=90):
        made = httpx.post(
            f"{sandbox_url}/v0.1/checkouts",
            json={
                "checkout_reference": "rose-kept-1",
                "amount": 4.5,
                "currency": "EUR",
                "merchant_code": DEFAULT_MERCHANT_CODE,
            },
            headers=api,
        )
        assert made.status_code == 201, made.text
        checkout_id = made.json()["id"]
        assert httpx.post(f"{sandbox_url}/_sandbox/checkouts/{checkout_id}/pay").status_code == 200

    with rose_up(home, *args, timeout=90):
        kept = httpx.get(f"{sandbox_url}/v0.1/checkouts/{checkout_id}", headers=api)
        assert kept.status_code == 200, kept.text
        assert kept.json()["status"] == "PAID"

    with rose_up(home, "--fresh", *args, timeout=90):
        gone = httpx.get(f"{sandbox_url}/v0.1/checkouts/{checkout_id}", headers=api)
        assert gone.status_code == 404, gone.text


def test_a_backup_is_restored_into_the_homes_own_database_with_fresh_restore(tmp_path: Path):
    """An operator of one machine whose data went bad restores last night's `rose db backup`
    into the stack's own embedded database (operator probe, December 2026: `rose db restore`
    needs a server that runs and that no service uses, which the embedded one is only while
    `rose up` runs its services; the docs named no way). `rose up --restore DIR` refuses a home
    whose database holds the stack's rows, and a damaged backup (review H1: --fresh deleted the
    database before the backup's files were checked), deleting nothing; with --fresh it
    deletes the database and restores the backup before any service starts: the rows are the
    backup's, no demo data is added (then or in a later start), and the cluster is as db/
    declares."""
    import psycopg

    home = tmp_path / "rose-home"
    pg_port = free_port()
    args = ["--pg-port", str(pg_port), "--port-offset", str(PORT_OFFSET), "--only", "relations"]
    backup = tmp_path / "backup"

    def blog(database_url: str) -> psycopg.Connection:
        return psycopg.connect(database_url.rsplit("/", 1)[0] + "/db_blog", autocommit=True)

    def posts(database_url: str) -> list[str]:
        with blog(database_url) as connection:
            return [r[0] for r in connection.execute("SELECT slug FROM blog.posts ORDER BY slug")]

    def up_refused(*extra: str) -> str:
        refused = subprocess.run(
            [sys.executable, "-m", "ops.cli", "up", *extra, *args],
            env={**os.environ, "ROSE_HOME": str(home)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode != 0
        assert "Traceback" not in refused.stderr
        return refused.stdout + refused.stderr

    with rose_up(home, "--fresh", "--no-demo", *args, timeout=90) as running:
        url = running.state["database_url"]
        with blog(url) as connection:
            connection.execute(
                "INSERT INTO blog.posts (slug, title, status) VALUES ('kept', 'Kept', 'draft')"
            )
        rose(home, "db", "backup", str(backup))
        with blog(url) as connection:
            connection.execute("UPDATE blog.posts SET title = 'changed since'")

    assert "--restore needs an empty database" in up_refused("--restore", str(backup))
    damaged = tmp_path / "damaged"
    shutil.copytree(backup, damaged)
    dump = damaged / "db_blog.dump"
    dump.write_bytes(dump.read_bytes()[:-1] + bytes([dump.read_bytes()[-1] ^ 1]))
    said = up_refused("--fresh", "--restore", str(damaged))
    assert "nothing was changed" in said
    # The home's database, as it was.
    with rose_up(home, *args, timeout=90) as running, blog(running.state["database_url"]) as db:
        assert db.execute("SELECT title FROM blog.posts").fetchall() == [("changed since",)]

    with rose_up(home, "--fresh", "--restore", str(backup), *args, timeout=120) as running:
        assert posts(running.state["database_url"]) == ["kept"]
        check = rose(home, "db", "check", check=False)
        assert check.returncode == 0, check.stdout + check.stderr
    with rose_up(home, *args, timeout=90) as running:  # no demo data in a restored home
        assert posts(running.state["database_url"]) == ["kept"]
