"""Superuser connections as the database tools use them (autocommit, a connect timeout), kept
open by DSN, and the one value a catalog query or an aggregate returns."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, LiteralString

import psycopg
from psycopg import sql
from psycopg.abc import Params

if TYPE_CHECKING:
    from ops.db.topology import Topology

# What Connection.execute takes (psycopg.abc.Query also names t-strings, which it does not).
Query = LiteralString | sql.SQL | sql.Composed


def connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True, connect_timeout=10)


def not_a_superuser(url: str) -> str | None:
    """The role ``url`` logs in as, when it is no superuser (None when it is). rose's database
    tools read pg_authid, SET ROLE to every service role and read every table: a role with
    CREATEROLE and CREATEDB gets part way, then a permission error deep inside."""
    with connect(url) as connection:
        role, superuser = one_row(
            connection, "SELECT rolname, rolsuper FROM pg_roles WHERE rolname = current_user"
        )
    return None if superuser else str(role)


class NotASuperuser(Exception):
    """A command that needs a superuser was given a lesser role (the one-line reason)."""


def require_superusers(topology: Topology, command: str) -> None:
    """Each server's admin DSN, checked once, up front: a lesser role is one line naming it,
    not a permission error half way through (``rose db``, ``rose split``, ``rose up``)."""
    from apps.registry import SERVICES

    checked = {
        topology.maintenance_url(name): topology.admin_urls.get(name, topology.default_admin_url)
        for name in SERVICES
    }
    for url, given in checked.items():
        try:
            role = not_a_superuser(url)
        except psycopg.OperationalError as refused:
            # A superuser may connect to `postgres` whatever its grants; rose revokes CONNECT
            # there from everyone else. A role refused there (a service's own DSN, given as
            # the admin one) is named as what it is when the database it was given lets it in;
            # else the first error stands (the server, the password, the address).
            try:
                role = not_a_superuser(given)
            except psycopg.Error:
                raise refused from None
            if role is None:
                raise
        if role is not None:
            raise NotASuperuser(f"{command} needs a superuser connection: {role} is not one")


class Connections:
    """Superuser connections by DSN, each opened once (a check visits every database twice).
    Threads may share it as long as each uses its own DSN."""

    def __init__(self) -> None:
        self._open: dict[str, psycopg.Connection] = {}
        self._lock = threading.Lock()

    def get(self, url: str) -> psycopg.Connection:
        with self._lock:
            known = self._open.get(url)
        if known is None or known.closed:
            known = connect(url)
            with self._lock:
                self._open[url] = known
        return known

    def close(self) -> None:
        with self._lock:
            for connection in self._open.values():
                connection.close()
            self._open.clear()

    def __enter__(self) -> Connections:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def one_row(connection: psycopg.Connection[Any], query: Query, params: Params | None = None) -> Any:
    """The row a query that always returns one (an aggregate, ``SELECT format(...)``) returns."""
    row = connection.execute(query, params).fetchone()
    if row is None:
        raise LookupError(f"no row from {query!r}")
    return row


def scalar(connection: psycopg.Connection[Any], query: Query, params: Params | None = None) -> Any:
    """The first value of that row."""
    return one_row(connection, query, params)[0]


def services_connected(
    topology: Topology, servers: Connections, services: Iterable[str] | None = None
) -> list[str]:
    """The services' own logins connected to their databases (of ``services``; default every
    service), as "db_cart: cart_app (2 sessions)": a service running. What `rose db restore`
    and the `rose split` steps that write the services' tables refuse to run beside."""
    from apps.registry import SERVICES, service_spec

    found = []
    for service in dict.fromkeys(SERVICES if services is None else services):
        spec = service_spec(service)
        sessions = scalar(
            servers.get(topology.maintenance_url(service)),
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND usename = %s",
            (spec.database, spec.app_role),
        )
        if sessions:
            plural = "" if sessions == 1 else "s"
            found.append(f"{spec.database}: {spec.app_role} ({sessions} session{plural})")
    return found
