"""``rose outbox``: the outbox messages their receiver refused for good (dead, never sent again:
apps.common.outbox), listed, and made due again once a person has put right what they were
refused for. Each service's outbox is read and changed as its owner (the admin DSN under
``SET LOCAL ROLE <svc>_owner``, as migrations and ``rose db psql`` do)."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.errors import UndefinedColumn, UndefinedTable
from sqlalchemy import Connection, Table, create_engine, pool, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

from apps.common.outbox import OUTBOX, dead_messages, messages_among, resend_dead
from apps.registry import SERVICES, service_spec
from ops.db.schema_drift import declared_metadata
from ops.db.topology import Topology


class OutboxError(ValueError):
    """A request ``rose outbox`` refuses: the message names what was wrong."""


@dataclass(frozen=True)
class DeadMessage:
    service: str  # whose outbox
    id: int
    target: str  # the service it calls
    action: str
    attempts: int
    dead_at: datetime
    last_error: str | None
    payload: dict[str, Any]


def outbox_tables() -> dict[str, Table]:
    """Each service that sends by an outbox, and its outbox table (from its models)."""
    tables = {}
    for name in SERVICES:
        table = declared_metadata(name).tables.get(f"{service_spec(name).name}.{OUTBOX}")
        if table is not None:
            tables[name] = table
    return tables


def outbox_of(service: str) -> Table:
    service_spec(service)  # an unknown service: its own error, naming the known ones
    tables = outbox_tables()
    if service not in tables:
        raise OutboxError(
            f"{service} has no outbox (services with one: {', '.join(sorted(tables))})"
        )
    return tables[service]


@contextmanager
def as_owner(topology: Topology, service: str) -> Iterator[Connection]:
    """One transaction in ``service``'s database as its owner, committed at the end."""
    url = make_url(topology.admin_url(service)).set(drivername="postgresql+psycopg")
    engine = create_engine(url, poolclass=pool.NullPool, connect_args={"connect_timeout": 10})
    try:
        try:
            connection = engine.connect()
        except OperationalError as exc:  # libpq's own words, as every rose command gives them
            raise (exc.orig or exc) from None
        owner = service_spec(service).owner_role
        with connection, connection.begin():
            try:
                connection.execute(text(f'SET LOCAL ROLE "{owner}"'))
            except DBAPIError as exc:  # a login that may not act as the owner, or no owner
                raise OutboxError(
                    f"{service}'s outbox is read and changed as {owner}: "
                    f"{' '.join(str(exc.orig).split())}"
                ) from None
            try:
                yield connection
            except ProgrammingError as exc:
                # No outbox table, or one without a column rose reads: the service's
                # migrations are behind this rose (an upgrade not migrated yet).
                if not isinstance(exc.orig, UndefinedTable | UndefinedColumn):
                    raise
                problem = str(exc.orig).splitlines()[0]
                raise OutboxError(
                    f"{service}'s outbox is not as this rose reads it ({problem}): "
                    f"its migrations are behind; run rose db migrate"
                ) from None
    finally:
        engine.dispose()


def dead(topology: Topology, services: Collection[str]) -> list[DeadMessage]:
    """The dead messages of each of ``services``' outboxes, by service, oldest first."""
    found = []
    for service in services:
        table = outbox_of(service)
        with as_owner(topology, service) as connection:
            rows = connection.execute(dead_messages(table)).all()
        found += [
            DeadMessage(
                service,
                row.id,
                row.service,
                row.action,
                row.attempts,
                row.dead_at,
                row.last_error,
                row.payload,
            )
            for row in rows
        ]
    return found


def resend(topology: Topology, service: str, ids: Collection[int] | None) -> list[int]:
    """Make dead messages of ``service``'s outbox due again, in one transaction: those of
    ``ids``, or every one (None). An id that is no message, or one that is not dead, refuses
    them all (OutboxError naming each), and nothing is changed. The ids made due."""
    table = outbox_of(service)
    with as_owner(topology, service) as connection:
        if ids is not None:
            states = {row[0]: row[1:] for row in connection.execute(messages_among(table, ids))}
            wrong = []
            for message in dict.fromkeys(ids):
                if message not in states:
                    wrong.append(f"{service} has no outbox message {message}")
                elif not states[message][1]:
                    state = "delivered" if states[message][0] else "waiting to be sent"
                    wrong.append(f"message {message} is not dead ({state})")
            if wrong:
                raise OutboxError(f"nothing resent: {'; '.join(wrong)}")
        return sorted(connection.scalars(resend_dead(table, ids)))
