"""One convergence (provisioning, migrations) at a time per server. Two at once (two operators'
``rose db migrate``, a deploy's migrate job beside a by-hand ``rose db provision``) raced each
other's statements: one failed half way on the catalog's own constraint (``duplicate key value
violates unique constraint "pg_authid_rolname_index"``). A session-level advisory lock on each
server's maintenance database, taken in one order, makes the second wait and then find the work
done; nested holders in one process (a restore's provisioning, then its convergence) share it."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from sqlalchemy.engine import make_url

from ops.db.connections import connect, scalar
from ops.db.provision import servers
from ops.db.topology import Topology

LOCK_KEY = "rose:converge"
# (server, thread) -> how many holders deep: nesting is per thread; another thread waits.
_held: dict[tuple[str, int], int] = {}
_guard = threading.Lock()


# Whether another session of this thread (by its application_name) holds the lock.
_HELD_BY = (
    "SELECT EXISTS (SELECT FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = %s "
    "AND a.pid <> pg_backend_pid())"
)


@contextmanager
def _server_lock(url: str, say: Callable[[str], None]) -> Iterator[None]:
    holder = (url, threading.get_ident())
    with _guard:
        nested = holder in _held
        if nested:
            _held[holder] += 1
    if nested:
        try:
            yield
        finally:
            with _guard:
                _held[holder] -= 1
        return
    connection = connect(url)
    try:
        # Named for this thread: a server another of its locks holds under another address
        # (localhost and 127.0.0.1) is known as held, not waited for by the thread itself.
        name = f"rose-converge:{os.getpid()}:{threading.get_ident()}"
        connection.execute("SELECT set_config('application_name', %s, false)", (name,))
        taken = "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))"
        locked = scalar(connection, taken, (LOCK_KEY,))
        if not locked and scalar(connection, _HELD_BY, (name,)):
            yield
            return
        if not locked:
            server = make_url(url)
            say(
                "waiting: another rose provisioning or migration is converging "
                f"{server.host}:{server.port or 5432}"
            )
            connection.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (LOCK_KEY,))
        with _guard:
            _held[holder] = 1
        try:
            yield
        finally:
            with _guard:
                del _held[holder]
    finally:
        # The session's end releases its advisory lock, also when the process is killed.
        connection.close()


@contextmanager
def converging_alone(topology: Topology, say: Callable[[str], None]) -> Iterator[None]:
    """Hold every server of ``topology`` for one convergence (in one order: no deadlock)."""
    with ExitStack() as stack:
        for url in sorted({server.maintenance_url for server in servers(topology)}):
            stack.enter_context(_server_lock(url, say))
        yield
