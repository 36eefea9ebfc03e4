"""The local stack behind ``rose up``: one process (or one group of workers) per service, one
readable log.

Each service runs as ``python -m ops.stack.serve <svc>`` with its own environment (its app role's
DSN, the URLs of its peers, the shared secrets). Output of every process goes, line by line and
prefixed with the service name, to the terminal and to ``.rose/rose.log`` (mode 0600: it has
every request line; rotated at ``LOG_MAX_BYTES``, ``LOG_KEPT`` earlier files kept, as
``ops.stack.logfiles`` says). Stopping sends SIGTERM to every process, waits, then kills what
is left.
On Linux every process also gets SIGTERM from the kernel when the process that started it dies
(``PR_SET_PDEATHSIG``): a supervisor killed by SIGKILL or the OOM killer leaves no services behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO

import httpx

from apps.registry import SERVICES, service_spec
from ops.db.credentials import Credentials
from ops.db.topology import Topology
from ops.paths import APPS_DIR
from ops.stack.logfiles import LOG_KEPT, LOG_MAX_BYTES, shift_to_earlier
from ops.stack.pgserver import listening_socket

HOST = "127.0.0.1"
# The SumUp sandbox's process name in a group and in the log; it is ready when its controls answer.
SANDBOX = "sumup"
SUMUP_SANDBOX_PORT = 8099
SANDBOX_READY_PATH = "/_sandbox/controls"


# prctl(2): the signal the calling process gets when its parent dies (Linux).
PR_SET_PDEATHSIG = 1


def _listener_for(port: int) -> socket.socket | None:
    """A listening socket on ``port`` for one start of its service. None when another still
    listens there (the killed start's workers, for a moment): the service then binds the port
    itself, and fails and is restarted as any service whose port is taken."""
    for _ in range(20):
        try:
            return listening_socket(port, HOST)
        except OSError:
            time.sleep(0.1)
    return None


def _parent_death_signal() -> Callable[[], None] | None:
    """What a child runs between fork and exec so that it gets SIGTERM when its parent dies
    (strictly: when the parent's thread that started it ends; every caller starts processes
    from its main thread);
    None where prctl is missing (not Linux). libc is looked up here, in the parent: the child
    only calls it (no loading, no allocation between fork and exec)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        # The parent may have died between fork and prctl: no signal would ever come then.
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def available_services() -> list[str]:
    """Services whose package exists in this checkout."""
    return [name for name in SERVICES if (APPS_DIR / name / "app.py").exists()]


def service_environment(
    topology: Topology,
    credentials: Credentials,
    ports: Mapping[str, int],
    *,
    env: str = "dev",
    host: str = HOST,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment shared by every service process of a stack (each reads its own entries)."""
    values: dict[str, str] = {
        "ROSE_ENV": env,
        "INTERNAL_SECRET": credentials.internal_secret(),
        "SESSION_SECRET": credentials.session_secret(),
        # The dev sign-in's default user edits pages.
        "ROSE_EDITOR_USER_IDS": "1",
    }
    for name, port in ports.items():
        upper = name.upper()
        values[f"DATABASE_URL_{upper}"] = topology.app_url(name, credentials)
        values[f"INTERNAL_URL_{upper}"] = f"http://{host}:{port}"
        if service_spec(name).public:
            values[f"APP_URL_{upper}"] = f"http://localhost:{port}"
    values.update(extra or {})
    return values


@dataclass
class ServiceProcess:
    name: str
    port: int
    command: list[str]
    ready_path: str = "/readyz"
    # What this process adds to its group's environment (kept for a restart).
    environment: Mapping[str, str] | None = None
    # The service its ready answer must name: a port answering is not proof enough, since
    # another process may hold it (this one then fails to bind and exits).
    service: str | None = None
    # Whether each start of it is handed a listening socket on its port (``--fd``), made for
    # that start beside the port's reservation (``rose up``'s, pgserver.reserved_port).
    listens: bool = False
    process: subprocess.Popen[bytes] | None = None
    reader: threading.Thread | None = None
    last_lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


class LogSink:
    """Writes lines from many processes to the terminal and one log file, whole lines only.
    The file is bounded: a line that would take it past ``max_bytes`` goes to a fresh one, the
    full one becoming ``<name>.1`` (and ``.1`` ``.2``..., ``kept`` of them kept). Every file is
    for its owner only (mode 0600): the log has every request line."""

    def __init__(
        self,
        path: Path | None,
        echo: IO[str] | None = sys.stdout,
        *,
        max_bytes: int = LOG_MAX_BYTES,
        kept: int = LOG_KEPT,
    ) -> None:
        self._lock = threading.Lock()
        self._path = path
        self._max_bytes = max_bytes
        self._kept = kept
        self._descriptor: int | None = None
        self._size = 0
        if path is not None:
            self._open(path)
        self._echo = echo
        self._width = max(len(name) for name in [*SERVICES, "postgres", SANDBOX])

    def _open(self, path: Path) -> None:
        # Owner only whatever the umask, also when an earlier release left it readable by all.
        self._descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(self._descriptor, 0o600)
        self._size = os.fstat(self._descriptor).st_size

    def _rotate(self, path: Path) -> None:
        """rose.log becomes rose.log.1, .1 becomes .2 ..., the oldest beyond ``kept`` goes."""
        if self._descriptor is not None:
            os.close(self._descriptor)
        shift_to_earlier(path, self._kept)
        self._open(path)

    def _append(self, text: str) -> None:
        if self._path is None or self._descriptor is None:
            return
        data = (text + "\n").encode("utf-8", "replace")
        if len(data) > self._max_bytes:  # one line longer than the bound: cut to it
            cut = data[: self._max_bytes - 1].decode("utf-8", "ignore")  # whole characters
            data = cut.encode("utf-8") + b"\n"
        if self._size and self._size + len(data) > self._max_bytes:
            self._rotate(self._path)
        self._size += len(data)
        while data:
            data = data[os.write(self._descriptor, data) :]

    def write(self, source: str, line: str) -> None:
        self._emit(source, line, self._echo)

    def warn(self, source: str, line: str) -> None:
        """A line the operator should see even when the output goes elsewhere: to the log and
        to stderr (instead of the terminal's usual stream)."""
        self._emit(source, line, sys.stderr if self._echo is not None else None)

    def _emit(self, source: str, line: str, echo: IO[str] | None) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        text = f"{stamp} {source:<{self._width}} | {line.rstrip()}"
        with self._lock:
            if echo is not None:
                print(text, file=echo, flush=True)
            self._append(text)

    def close(self) -> None:
        with self._lock:
            if self._descriptor is not None:
                os.close(self._descriptor)
                self._descriptor = None


def _answers_as(answer: httpx.Response, service: str | None) -> bool:
    """A 200 from the ready path, from ``service`` when one is named."""
    if answer.status_code != 200:
        return False
    if service is None:
        return True
    try:
        body = answer.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("service") == service


class ProcessGroup:
    """Processes of one stack. ``python`` and ``cwd`` say which installation runs them (this
    interpreter by default; another virtual environment's, away from any checkout, to run an
    installed wheel)."""

    def __init__(
        self,
        sink: LogSink,
        environment: Mapping[str, str],
        *,
        python: str = sys.executable,
        cwd: Path | None = None,
    ) -> None:
        self.sink = sink
        self.environment = {**os.environ, **environment, "PYTHONUNBUFFERED": "1"}
        self.python = python
        self.cwd = cwd
        self.processes: dict[str, ServiceProcess] = {}

    def start(
        self,
        name: str,
        port: int,
        command: list[str],
        ready_path: str = "/readyz",
        environment: Mapping[str, str] | None = None,
        service: str | None = None,
        listens: bool = False,
    ) -> ServiceProcess:
        """Start one process; ``environment`` adds to the group's for this process only;
        ``service`` is the name its ready answer must carry (any 200 will do without it);
        ``listens``: it is handed a listening socket on ``port`` (``--fd``), made for it."""
        entry = ServiceProcess(
            name=name,
            port=port,
            command=command,
            ready_path=ready_path,
            environment=environment,
            service=service,
            listens=listens,
        )
        listener = _listener_for(port) if listens else None
        try:
            entry.process = subprocess.Popen(
                command if listener is None else [*command, "--fd", str(listener.fileno())],
                pass_fds=() if listener is None else (listener.fileno(),),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env={**self.environment, **(environment or {})},
                cwd=self.cwd,
                # Own process group: Ctrl-C reaches the manager, which stops children in order.
                process_group=0,
                # And SIGTERM when the manager dies without stopping them (SIGKILL, OOM killer).
                preexec_fn=_parent_death_signal(),
            )
        finally:
            # The process's own now: once it is gone, nothing listens, and a client is refused.
            if listener is not None:
                listener.close()
        entry.reader = threading.Thread(target=self._pump, args=(entry,), daemon=True)
        entry.reader.start()
        self.processes[name] = entry
        return entry

    def start_service(
        self, name: str, port: int, workers: int = 1, listens: bool = False
    ) -> ServiceProcess:
        """With ``listens``, each start of the service is handed a socket listening on ``port``
        (``--fd``), which the caller keeps reserved (pgserver.reserved_port): no connection
        takes it as its ephemeral port, nor a plain bind, before the service has started or
        while it is restarted (a server binding with SO_REUSEADDR still could)."""
        command = [
            self.python,
            "-m",
            "ops.stack.serve",
            name,
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            str(workers),
        ]
        return self.start(name, port, command, service=name, listens=listens)

    def restart(self, name: str) -> ServiceProcess:
        """Start an exited process again with the same command and environment; what is left
        of its process group (uvicorn's workers of a dead supervisor) is killed first."""
        old = self.processes[name]
        if old.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(old.process.pid, signal.SIGKILL)
            old.process.wait()
        if old.reader is not None:
            old.reader.join(timeout=2)
        return self.start(
            name,
            old.port,
            old.command,
            old.ready_path,
            old.environment,
            old.service,
            old.listens,
        )

    def start_sandbox(
        self,
        port: int,
        environment: Mapping[str, str] | None = None,
        listens: bool = False,
        state_file: Path | None = None,
    ) -> ServiceProcess:
        """The local SumUp sandbox (``rose sumup-sandbox``) as one more process, ``sumup``;
        ``listens`` as ``start_service``'s; its checkouts kept in ``state_file`` if given."""
        command = [self.python, "-m", "ops.cli", "sumup-sandbox", "--port", str(port)]
        if state_file is not None:
            command += ["--state-file", str(state_file)]
        return self.start(SANDBOX, port, command, SANDBOX_READY_PATH, environment, listens=listens)

    def _pump(self, entry: ServiceProcess) -> None:
        assert entry.process is not None
        assert entry.process.stdout is not None
        for raw in entry.process.stdout:
            line = raw.decode("utf-8", "replace")
            entry.last_lines = [*entry.last_lines[-19:], line.rstrip()]
            self.sink.write(entry.name, line)

    def wait_ready(
        self,
        names: Iterable[str],
        timeout: float = 60.0,
        give_up: Callable[[], bool] = lambda: False,
    ) -> list[str]:
        """Wait until each process answers 200 on its ready path, or ``give_up()`` says to stop
        waiting; returns those that did not answer."""
        deadline = time.monotonic() + timeout
        pending = list(names)
        with httpx.Client(timeout=2.0) as client:
            while pending and time.monotonic() < deadline and not give_up():
                for name in list(pending):
                    entry = self.processes[name]
                    assert entry.process is not None
                    if entry.process.poll() is not None:
                        return pending
                    try:
                        if _answers_as(client.get(entry.url + entry.ready_path), entry.service):
                            pending.remove(name)
                    except httpx.HTTPError:
                        pass
                if pending:
                    time.sleep(0.2)
        return pending

    def exited(self) -> list[ServiceProcess]:
        return [
            entry
            for entry in self.processes.values()
            if entry.process is not None and entry.process.poll() is not None
        ]

    def stop(self, timeout: float = 15.0) -> None:
        for entry in self.processes.values():
            if entry.process is not None and entry.process.poll() is None:
                entry.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for entry in self.processes.values():
            if entry.process is None:
                continue
            try:
                entry.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.sink.write(entry.name, "did not stop in time; killed")
                # Its whole group: a uvicorn supervisor killed alone leaves its workers
                # serving the port (one still importing keeps the supervisor in its ping,
                # deaf to SIGTERM, for up to serve.WORKER_PING_SECONDS).
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(entry.process.pid, signal.SIGKILL)
                entry.process.kill()
                entry.process.wait()
        for entry in self.processes.values():
            if entry.reader is not None:
                entry.reader.join(timeout=2)
