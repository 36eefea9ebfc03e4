"""``rose up``: the whole system on this machine. The embedded PostgreSQL (or a given server),
its databases brought to the declared state, demo data, the SumUp sandbox and every service as
a process of its own (``workers`` processes each, on one port), one log. It supervises: a
service process that exits, or the embedded PostgreSQL's postmaster, is started again after a
backoff (1 s, doubling up to 30 s; back to 1 s once it has stayed up for a minute), and the log
says so. It runs until SIGINT, SIGTERM or SIGHUP (a closed terminal), then stops everything it
started. Killed without a chance to stop them (SIGKILL, the OOM killer), it still takes the
services and the sandbox with it (``ProcessGroup``: they get SIGTERM when it dies); the embedded
PostgreSQL is left running, and the next ``rose up`` stops and starts it again (the log says so).
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import psycopg
from alembic.util import CommandError

from apps.common.settings import ConfigError
from apps.registry import SERVICES, service_spec
from ops.db.backup import BackupError, check_backup, restore
from ops.db.connections import NotASuperuser, require_superusers
from ops.db.credentials import Credentials, rose_environment
from ops.db.lifecycle import converge_databases
from ops.db.migrate import MigrateError
from ops.db.sqlfiles import ConvergeError
from ops.db.topology import Topology, check_dsn, refuse_development_elsewhere
from ops.paths import rose_home
from ops.stack.demo import seed_demo_data
from ops.stack.pgserver import (
    DATA_DIR_FILES,
    DEFAULT_PG_PORT,
    MAX_PORT,
    MIN_PORT,
    LocalPostgres,
    port_is_free,
    reserved_port,
)
from ops.stack.processes import (
    SANDBOX,
    SUMUP_SANDBOX_PORT,
    LogSink,
    ProcessGroup,
    available_services,
    service_environment,
)
from ops.stack.proxy import PROXY, LocalProxy, ProxyError
from ops.stack.state import read_state, remove_state, write_state


class _StoppedStarting(Exception):
    """A stop (Ctrl-C, SIGTERM, SIGHUP) was asked for while the stack started."""


class StackError(Exception):
    """Why the stack cannot start or run, in one line."""


@dataclass(frozen=True)
class StackOptions:
    fresh: bool = False
    database_url: str | None = None
    pg_port: int = DEFAULT_PG_PORT
    # Services to run (default: every service whose package exists).
    only: list[str] | None = None
    demo: bool = True
    port_offset: int = 0
    # A real Caddy in front of the public services on this port (ops.stack.proxy); None: none.
    proxy_port: int | None = None
    # Processes per service (uvicorn workers sharing the service's port).
    workers: int = 1
    # A `rose db backup` directory restored into the empty database before anything else
    # (ops.db.backup.restore); None: none.
    restore: Path | None = None


RESTART_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
# A process that stayed up this long before it exited starts over at the first delay.
STABLE_SECONDS = 60.0
# In the rose home: held (flock) by the `rose up` that runs there, from its options' check on.
STACK_LOCK = "stack.lock"
# The sandbox's port, as refusals name it.
SANDBOX_PORT_NAME = "sumup sandbox"

# How long the sandbox and every service have, together, to answer their ready paths.
READY_SECONDS = 90.0
# The local SumUp sandbox's checkouts, in the home: a restart of the stack still knows them.
SANDBOX_STATE_FILE = "sumup-sandbox.json"
# In the home, naming the backup: a --restore under way (or cut off), and one that finished
# (no demo data is added to a restored home's empty tables).
RESTORE_UNFINISHED = "restore-unfinished"
RESTORED_FROM = "restored-from"


# The embedded PostgreSQL's name in the supervisor's log lines.
POSTGRES = "PostgreSQL"


class Supervisor:
    """Restarts the exited processes of a group, and the embedded PostgreSQL when it is given
    and stops running, with backoff, saying so in the log."""

    def __init__(
        self,
        group: ProcessGroup,
        say: Callable[[str], None],
        database: LocalPostgres | None = None,
    ) -> None:
        self._group = group
        self._say = say
        self._database = database
        self._failures: dict[str, int] = {}
        now = time.monotonic()
        self._started: dict[str, float] = {name: now for name in group.processes}
        if database is not None:
            self._started[POSTGRES] = now
        self._due: dict[str, float] = {}

    def _schedule(self, name: str, now: float) -> float:
        """The backoff for ``name``'s next start (marks it due then); returns the delay."""
        if now - self._started.get(name, now) >= STABLE_SECONDS:
            self._failures[name] = 0
        failures = self._failures.get(name, 0)
        delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
        self._failures[name] = failures + 1
        self._due[name] = now + delay
        return delay

    def tick(self) -> None:
        now = time.monotonic()
        database = self._database
        if database is not None:
            # Its log is bounded by this check (several times a second while `rose up` runs).
            database.rotate_log_if_full()
        if database is not None and POSTGRES not in self._due and not database.is_running():
            delay = self._schedule(POSTGRES, now)
            self._say(
                f"{POSTGRES} exited ({database.data_dir}); restarting in {delay:g}s "
                f"(restart {self._failures[POSTGRES]})"
            )
        for entry in self._group.exited():
            if entry.name in self._due:
                continue
            code = entry.process.returncode if entry.process else None
            delay = self._schedule(entry.name, now)
            self._say(
                f"{entry.name} exited with code {code}; restarting in {delay:g}s "
                f"(restart {self._failures[entry.name]})"
            )
        for name, due in list(self._due.items()):
            if now < due:
                continue
            del self._due[name]
            if name == POSTGRES:
                self._restart_database()
                continue
            restarted = self._group.restart(name)
            self._started[name] = time.monotonic()
            pid = restarted.process.pid if restarted.process else None
            self._say(f"{name} restarted (pid {pid})")

    def _restart_database(self) -> None:
        assert self._database is not None
        self._started[POSTGRES] = time.monotonic()
        if not self._database.initialized:
            # Deleted under it: start() would make a new, empty cluster (no roles, no data).
            self._say(
                f"{POSTGRES}'s data directory {self._database.data_dir} is gone; not restarting "
                "it (stop the stack and run `rose up` again)"
            )
            self._database = None
            return
        try:
            self._database.start(timeout=30)
        except RuntimeError as exc:
            # (Its backends may still hold the old shared memory for a moment.) Next tick
            # finds it not running and schedules it again, with the next delay.
            reason = str(exc).strip().splitlines()[0]
            self._say(f"{POSTGRES} did not start: {reason} (see {self._database.log_file})")
            return
        self._say(f"{POSTGRES} restarted (pid {self._database.pid()})")


def ephemeral_ports() -> tuple[int, int] | None:
    """The kernel's range of ports for client connections (Linux), or None where unknown."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return None


def _ephemeral_note(busy: list[int]) -> str:
    """Why ports nothing listens on can be in use: any client connection of the machine takes
    one of the kernel's ephemeral ports for a moment (and leaves it in TIME_WAIT a minute)."""
    span = ephemeral_ports()
    if span is None or not any(span[0] <= port <= span[1] for port in busy):
        return ""
    low, high = span
    return (
        f"; those in the kernel's ephemeral range ({low}-{high}) may be held by nothing but a "
        f"client connection of this machine, for a moment: choose a --port-offset that puts "
        f"every port below {low} (or above {high})"
    )


@contextmanager
def home_locked(home: Path) -> Iterator[None]:
    """The rose home, this process's alone while the block runs: a second ``rose up`` in it is
    refused before it checks a port or makes anything there, while the first starts as well
    as once it runs (its state, ``stack.json``, is written only once it is ready: before, a
    second ``rose up --fresh`` passed every check and deleted the starting stack's data
    directory). An exclusive flock on ``stack.lock``, which the kernel lets go of however the
    process ends."""
    path = home / STACK_LOCK
    with path.open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise StackError(
                f"another `rose up` is starting or running in {home} (pid {holder}); stop it "
                "first, or give this one another ROSE_HOME"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


def _refuse_fresh_over_orders(database_url: str) -> None:
    """--fresh deletes the embedded database and the SumUp sandbox's checkouts with it; a
    server given by DSN keeps its databases. Its orders name their checkouts, so forgetting
    them would leave a pending order unpayable (and flagged) and a paid one unrefundable."""
    database = service_spec("orders").database
    topology = Topology.single_server(database_url)
    with psycopg.connect(topology.maintenance_url("orders"), autocommit=True) as server:
        if (
            server.execute("SELECT FROM pg_database WHERE datname = %s", (database,)).fetchone()
            is None
        ):
            return
    with psycopg.connect(topology.admin_url("orders"), autocommit=True) as orders:
        if orders.execute("SELECT to_regclass('orders.orders')").fetchone() == (None,):
            return
        held = orders.execute("SELECT count(*) FROM orders.orders").fetchone()
    count = held[0] if held else 0
    if count:
        noun = "order" if count == 1 else "orders"
        raise StackError(
            f"--fresh empties only the embedded database: the server of --database-url keeps "
            f"its databases, and {database} there holds {count} {noun} whose SumUp checkouts "
            f"the sandbox keeps ({SANDBOX_STATE_FILE}); nothing was changed: drop the service "
            "databases there first, or leave out --fresh"
        )


def run_stack(options: StackOptions) -> int:
    """Run the stack until asked to stop (0), restarting service processes that exit; a stop
    asked for while it starts ends the start, 128 + the signal's number (130 for SIGINT).
    Raises StackError (after stopping what it started) when it cannot start."""
    home = rose_home()
    home.mkdir(parents=True, exist_ok=True)
    with ExitStack() as held:
        return _run_stack(options, home, lambda: held.enter_context(home_locked(home)))


def _run_stack(options: StackOptions, home: Path, lock_home: Callable[[], None]) -> int:
    """``lock_home`` takes the home's lock (``home_locked``) for the rest of the run: once the
    options are checked, which leave nothing behind when they refuse, and before anything is
    made in the home or checked against another stack (the ports, --fresh's deletion)."""
    running = read_state()
    if running is not None:
        raise StackError(
            f"a stack already runs (pid {running['pid']}) in {home}; stop it first, or run "
            "this one in another home (ROSE_HOME=DIR, with its own --port-offset and "
            "--pg-port)"
        )
    names = available_services()
    if options.only is not None:
        if not options.only:
            raise StackError(f"--only names no service; known services: {', '.join(names)}")
        for name in options.only:
            try:
                service_spec(name)
            except ValueError as exc:
                raise StackError(f"--only: {exc}") from None
        names = [name for name in names if name in options.only]
    if options.database_url is not None:
        check_dsn(options.database_url)
        # Before anything is made (credentials, the log): provisioning reads pg_authid.
        topology = Topology.single_server(options.database_url)
        try:
            refuse_development_elsewhere(topology)
            require_superusers(topology, "rose up")
        except (ConfigError, NotASuperuser) as exc:
            raise StackError(str(exc)) from None
        if options.fresh and options.restore is None:
            # A restore keeps the sandbox's checkouts (and resumes one cut off).
            _refuse_fresh_over_orders(options.database_url)
    ports = {name: SERVICES[name].dev_port + options.port_offset for name in names}
    sandbox_port = SUMUP_SANDBOX_PORT + options.port_offset
    outside = [
        f"{name} ({port})"
        for name, port in [*ports.items(), (SANDBOX_PORT_NAME, sandbox_port)]
        if not MIN_PORT <= port <= MAX_PORT
    ]
    if outside:
        raise StackError(
            f"--port-offset {options.port_offset} puts ports outside {MIN_PORT}-{MAX_PORT}: "
            f"{', '.join(outside)}"
        )
    proxy = None
    if options.proxy_port is not None:
        proxy = LocalProxy(options.proxy_port, home / "caddy")
    if options.restore is not None:
        # Every file checked before anything is deleted (--fresh): a damaged backup, or a
        # newer release's, leaves the home's database as it is.
        try:
            check_backup(options.restore)
        except BackupError as exc:
            raise StackError(f"--restore: {exc}; nothing was changed") from None

    lock_home()
    data_dir = home / "pgdata"
    credentials_file = home / "credentials.json"
    if (
        options.database_url is None
        and not options.fresh
        and rose_environment() != "prod"
        and all((data_dir / name).exists() for name in DATA_DIR_FILES)
        and not credentials_file.exists()
    ):
        # New passwords would not open the database made with the old ones: refused before
        # any is made (before, a new file was written and every start failed to log in). A
        # data directory initdb did not finish is named as such further on.
        raise StackError(
            f"{data_dir} holds a database, and {credentials_file} is missing: it held the "
            "passwords that database was made with (its superuser's among them), so new ones "
            "would not open it; put the file back, or start over with rose up --fresh, which "
            "deletes the database"
        )
    # Read (or made) before anything starts: a damaged file is refused here.
    credentials = Credentials.for_environment(home)
    embedded: LocalPostgres | None = None
    wanted = [*ports.items(), (SANDBOX_PORT_NAME, sandbox_port)]
    if proxy is not None:
        wanted.append((PROXY, proxy.port))
    if options.database_url is None:
        embedded = LocalPostgres(data_dir, options.pg_port, credentials.superuser_password())
        if options.restore is not None and embedded.initialized and not options.fresh:
            # A restore goes into databases that hold no rows (ops.db.backup): this home's hold
            # the stack's. Deleting them is the operator's call, said out loud.
            raise StackError(
                f"--restore needs an empty database, and {embedded.data_dir} holds this home's: "
                "add --fresh to delete it first (the SumUp sandbox's checkouts stay, as "
                "SumUp's would), or restore in another home (ROSE_HOME=DIR)"
            )
        # A server of this data directory left on that port (a killed stack) is restarted by
        # start(); anything else there is a refusal now, before --fresh deletes anything.
        if embedded.running_port() != options.pg_port:
            wanted.insert(0, ("PostgreSQL", options.pg_port))
    # A service's port is bound here and kept bound, not listening, until the stack stops
    # (each start of the service gets a listening socket of its own beside it): the service
    # listens on nothing for a while (provisioning, migrations, its pool's warm-up, a
    # restart's wait), while every connection made meanwhile takes a local port, one of the
    # kernel's ephemeral range (32768-60999) where --port-offset may have put ours; a bound
    # port is never one. Not listening, it lets a client of a service that is down be
    # refused at once rather than wait in a queue.
    reservations: dict[str, socket.socket] = {}
    busy: dict[str, int] = {}
    for name, port in wanted:
        if name in ports or name == SANDBOX_PORT_NAME:
            try:
                reservations[name] = reserved_port(port)
            except OSError:
                busy[name] = port
        elif not port_is_free(port):
            busy[name] = port
    if busy:
        for reservation in reservations.values():
            reservation.close()
        named = ", ".join(f"{name} ({port})" for name, port in busy.items())
        raise StackError(
            f"ports in use: {named}; stop what listens there or choose other ports "
            f"(--pg-port, --port-offset, --proxy-port){_ephemeral_note(list(busy.values()))}"
        )

    sink = LogSink(home / "rose.log")

    def say(message: str) -> None:
        sink.write("rose", message)

    stop_requested = False
    # The signal that asked for the stop: a start it ends exits 128 + its number (130 for
    # Ctrl-C), as a shell expects of a command a signal stopped (`rose up && next` stops).
    stop_signal = signal.SIGINT

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stop_requested, stop_signal
        if not stop_requested:
            stop_signal = signal.Signals(signum)
        stop_requested = True

    def unless_stopping() -> None:
        """Between the steps of the start: a stop asked for meanwhile (Ctrl-C) ends it here,
        not once every service is ready. Each step (a migration, the demo data) commits or
        rolls back as a whole, so a start stopped between them is one the next resumes."""
        if stop_requested:
            raise _StoppedStarting

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    # A closed terminal or a dropped ssh session: stop cleanly too (its default kills us only).
    signal.signal(signal.SIGHUP, request_stop)

    unfinished = home / RESTORE_UNFINISHED
    if unfinished.exists() and options.restore is None and not options.fresh:
        # Its databases may hold part of the backup: services (and demo data) on them would
        # build on rows that are not all there.
        raise StackError(
            f"a restore of {unfinished.read_text().strip()} did not finish in this home: run "
            "`rose up --fresh --restore DIR` again (or `rose up --fresh` to start empty)"
        )

    group: ProcessGroup | None = None
    database_url = options.database_url
    sandbox_state = home / SANDBOX_STATE_FILE
    restored_mark = home / RESTORED_FROM
    try:
        if options.fresh and embedded is not None:  # the database they speak of is deleted
            restored_mark.unlink(missing_ok=True)
            unfinished.unlink(missing_ok=True)
        if options.restore is not None:
            unfinished.write_text(f"{options.restore.resolve()}\n")
        # A restore keeps the sandbox's checkouts: it stands in for SumUp, which a restore of
        # rose's databases does not touch (the restored orders still name their checkouts).
        if options.fresh and options.restore is None and sandbox_state.exists():
            # Orders starts again from 1, and so do its checkout references: the sandbox
            # (which keeps its checkouts, as SumUp does) starts with none too.
            if embedded is None:
                say("--fresh: removing the SumUp sandbox's checkouts")
            sandbox_state.unlink()
        if embedded is not None:
            if options.fresh:
                if options.restore is None:
                    say("--fresh: removing the embedded database and the SumUp sandbox's checkouts")
                else:
                    say("--fresh: removing the embedded database (restoring it next)")
                embedded.destroy()
            left = embedded.pid()
            if left is not None:
                say(
                    f"a PostgreSQL server left running in {embedded.data_dir} (pid {left}) by a "
                    "stack that did not stop: stopping it and starting it again"
                )

            # In the log and on stderr: a permission change the operator should know of.
            embedded.notify = lambda line: sink.warn("rose", line)
            say(
                f"starting embedded PostgreSQL on 127.0.0.1:{options.pg_port} ({embedded.data_dir})"
            )
            try:
                embedded.start()
            except RuntimeError as exc:
                # Its first line (the reason); the server's own log has the rest.
                reason = str(exc).strip().splitlines()[0]
                raise StackError(f"{reason} (see {embedded.log_file})") from None
            database_url = embedded.superuser_url()
            unless_stopping()
        # (No embedded server exactly when a DSN was given.)
        assert database_url is not None
        topology = Topology.single_server(database_url)
        if options.restore is not None:
            say(f"restoring {options.restore}")
            try:
                restored = restore(topology, credentials, options.restore, say=say)
            except (BackupError, CommandError, ConvergeError, MigrateError) as exc:
                raise StackError(f"--restore: {exc}") from None
            for note in restored.notes:
                say(f"note: {note}")
            restored_mark.write_text(f"{options.restore.resolve()}\n")
            unfinished.unlink()
            unless_stopping()
        try:
            converge_databases(topology, credentials, say=say)
        except (MigrateError, ConvergeError) as exc:
            raise StackError(str(exc)) from None
        unless_stopping()
        # Demo data fills empty tables: a restored backup's empty ones stay as it had them,
        # in every start of this home until --fresh.
        if options.demo and not restored_mark.exists():
            seed_demo_data(topology, names, say)
            unless_stopping()

        sandbox_url = f"http://127.0.0.1:{sandbox_port}"
        extra = {"ORDERS_SUMUP_BASE_URL": sandbox_url}
        if proxy is not None:
            extra.update(proxy.service_environment(names))
        environment = service_environment(topology, credentials, ports, extra=extra)
        group = ProcessGroup(sink, environment)
        # The local SumUp sandbox stands in for SumUp (orders' SDK points at it).
        group.start_sandbox(
            sandbox_port,
            proxy.sandbox_environment() if proxy else None,
            listens=True,
            state_file=sandbox_state,
        )
        for name in names:
            group.start_service(name, ports[name], options.workers, listens=True)
        # One deadline for all: on a busy machine a process may take most of it to import
        # (the sandbox alone was once given 30 s, and missed it while the services were ready).
        not_ready = group.wait_ready(
            [SANDBOX, *names], timeout=READY_SECONDS, give_up=lambda: stop_requested
        )
        unless_stopping()
        if proxy is not None and not not_ready:
            proxy.start(group, {name: f"127.0.0.1:{port}" for name, port in ports.items()})
            if not proxy.wait_ready(group, names):
                not_ready.append(PROXY)
        if not_ready:
            for name in not_ready:
                for line in group.processes[name].last_lines[-10:]:
                    sink.write(name, line)
            raise StackError(f"not ready: {', '.join(not_ready)} (see {home / 'rose.log'})")
        urls = {name: group.processes[name].url for name in names}
        write_state(database_url, urls)
        # Where a browser goes: each public service's APP_URL (``localhost``, or the proxy's
        # host), the host its pages link to and the session cookie is set for; the printed
        # 127.0.0.1 address is the one the stack's own calls use.
        public = {
            name: environment[f"APP_URL_{name.upper()}"]
            for name in names
            if f"APP_URL_{name.upper()}" in environment
        }
        for name in names:
            shown = f"  public: {public[name]}" if name in public else ""
            say(f"{name:<10} {urls[name]}  ready{shown}")
        say(f"{SANDBOX:<10} {sandbox_url}  SumUp sandbox (hosted checkout pages, webhooks)")
        if options.workers > 1:
            say(f"{options.workers} worker processes per service")
        say(f"log: {home / 'rose.log'}; Ctrl-C stops everything")
        supervisor = Supervisor(group, say, embedded)
        while not stop_requested:
            supervisor.tick()
            time.sleep(0.3)
        say("stopping")
        return 0
    except _StoppedStarting:
        say("stopped before the stack was ready (a stop was asked for while it started)")
        return 128 + stop_signal
    except ProxyError as exc:
        raise StackError(str(exc)) from None
    finally:
        if group is not None:
            group.stop()
        for reservation in reservations.values():
            reservation.close()
        remove_state()
        if embedded is not None:
            embedded.stop()
            say("embedded PostgreSQL stopped")
        sink.close()
