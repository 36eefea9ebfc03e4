"""Hot Core statements run on the session's own psycopg connection.

SQLAlchemy builds and compiles every statement here, owns the session's transaction and the pool;
only the execution of a statement on the hot paths skips its per-call machinery: the async
session's greenlet, the ORM's execution bookkeeping, the cache-key lookup, the execution context
and the result object. Measured on this project's machine (bench/README.md, "ninth pass") that
machinery costs more client CPU per statement than psycopg's own execution of it.

What a :class:`DirectStatement` does is what a session's ``execute`` would do with the same
statement, and the tests hold it to that: the same SQL text (so psycopg prepares one statement
for both paths), SQLAlchemy's own bind and result processors for the statement's types, the
statement's defaults, and errors raised as SQLAlchemy's exceptions (``IntegrityError``,
``DBAPIError`` with ``orig``) with a lost connection invalidated. It runs in the session's
transaction, begun as the session begins it. It takes Core statements only: an ORM statement
keeps loaded objects in step, which this cannot.
"""

from __future__ import annotations

import keyword
from collections import namedtuple
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any, cast

import psycopg
from psycopg.pq import ExecStatus
from sqlalchemy import event
from sqlalchemy.dialects.postgresql.psycopg import PGDialectAsync_psycopg
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError, InvalidRequestError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import ValuesBase
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.util import await_only

# A row: a named tuple of the statement's result columns (``row.total``, ``row[0]``), typed
# loosely as SQLAlchemy's rows are.
DirectRow = Any

# The dialect every service's engine uses (apps.common.db.create_engine: postgresql+psycopg).
_DIALECT = PGDialectAsync_psycopg(dbapi=PGDialectAsync_psycopg.import_dbapi())


# Where a session keeps the connection of its current transaction for these statements.
_HELD = "rose_direct_connection"


# Where a statement runs: a session's transaction, or a connection in autocommit.
Runner = AsyncSession | AsyncConnection


async def _driver_of(runner: Runner) -> tuple[AsyncConnection, psycopg.AsyncConnection[Any]]:
    if isinstance(runner, AsyncConnection):
        return runner, _autocommit_driver(runner)
    return await _session_driver(runner)


def _autocommit_driver(connection: AsyncConnection) -> psycopg.AsyncConnection[Any]:
    """A connection's psycopg connection, in autocommit only: SQLAlchemy begins a connection's
    transaction when it runs a statement itself, and would not know of one begun here."""
    held = connection.sync_connection
    if held is None:
        raise TypeError("the connection has not started")
    driver = cast("psycopg.AsyncConnection[Any]", held.connection.driver_connection)
    if not driver.autocommit:
        raise TypeError("a connection outside autocommit: run the statement in a session")
    return driver


async def _session_driver(
    session: AsyncSession,
) -> tuple[AsyncConnection, psycopg.AsyncConnection[Any]]:
    """The session's connection and its psycopg connection, begun as the session begins one.
    A transaction keeps one connection to its end, so it is looked up once per transaction
    and savepoint: asking the session each time costs a greenlet of its own, as much as the
    saving."""
    # The innermost transaction: a savepoint begun since is emitted when the session first
    # hands out its connection, so a new savepoint asks the session again.
    sync = session.sync_session

    def innermost() -> Any:
        return sync.get_nested_transaction() or sync.get_transaction()

    transaction = innermost()
    held = session.info.get(_HELD)
    if (
        held is not None
        and transaction is not None
        and held[0] is transaction
        and transaction.is_active
    ):
        return held[1], held[2]
    connection = await session.connection()
    # Checked out already: no I/O to reach its driver.
    driver = cast(
        "psycopg.AsyncConnection[Any]",
        connection.sync_connection.connection.driver_connection,  # type: ignore[union-attr]
    )
    # Asked again: a session begins its transaction when it first hands out a connection.
    session.info[_HELD] = (innermost(), connection, driver)
    return connection, driver


class DirectStatement:
    """One Core statement, compiled once, run with :meth:`rows`, :meth:`first`,
    :meth:`scalar` or :meth:`rowcount` in a session's transaction (or on a connection in
    autocommit)."""

    def __init__(self, statement: ClauseElement) -> None:
        if statement._propagate_attrs.get("compile_state_plugin") == "orm":
            raise TypeError("ORM statements keep loaded objects in step: use the session")
        if isinstance(statement, ValuesBase) and not (
            statement._values or statement._multi_values or statement._select_names
        ):
            # Its columns would come from each call's parameters: compiled once, it would name
            # every column of the table.
            raise TypeError("an INSERT or UPDATE names its columns with values(): use values()")
        compiled = statement.compile(dialect=_DIALECT)
        if not isinstance(compiled, SQLCompiler):
            raise TypeError("not a SQL statement")
        if compiled.escaped_bind_names or any(b.expanding for b in compiled.binds.values()):
            # Names psycopg cannot take as they are, and lists rendered per call: both need
            # SQLAlchemy's per-call rewriting of the text.
            raise TypeError("escaped or expanding parameters: use the session")
        self.sql = compiled.string
        self._compiled = compiled
        self._bind_processors: dict[str, Callable[[Any], Any]] = {
            name: processor
            for name, processor in compiled._bind_processors.items()
            if callable(processor)
        }
        keys = [column.keyname for column in compiled._result_columns]
        self._keys = keys
        self._row_class: Any = None
        self._result_processors: list[Callable[[Any], Any] | None] | None = None
        if (
            keys
            and len(set(keys)) == len(keys)
            and all(key.isidentifier() and not keyword.iskeyword(key) for key in keys)
            and not any(key.startswith("_") for key in keys)
        ):
            self._row_class = namedtuple("DirectRow", keys)  # type: ignore[misc]
        # Otherwise (unnamed or repeated columns) rows are plain tuples, read by position.

    def parameters(self, params: Mapping[str, Any] | None) -> MutableMapping[str, Any]:
        """The statement's parameters as SQLAlchemy would send them: its defaults filled in
        (a missing required value is an error), each value through its type's bind processor."""
        try:
            values = self._compiled.construct_params(dict(params) if params else None)
        except InvalidRequestError as exc:
            # As a session raises it: the statement named, the cause kept.
            raise StatementError(str(exc), self.sql, params, exc) from exc
        for name, processor in self._bind_processors.items():
            if name in values:
                values[name] = processor(values[name])
        return values

    async def _execute(
        self, runner: Runner, params: Mapping[str, Any] | None, fetch: bool
    ) -> tuple[list[DirectRow], int]:
        connection, driver = await _driver_of(runner)
        values = self.parameters(params)
        try:
            async with driver.cursor() as cursor:
                await cursor.execute(self.sql, values)
                return await self._read(cursor, fetch)
        except psycopg.Error as exc:
            raise await _as_sqlalchemys(connection, driver, self.sql, values, exc) from exc

    async def _read(
        self, cursor: psycopg.AsyncCursor[Any], fetch: bool
    ) -> tuple[list[DirectRow], int]:
        result = cursor.pgresult
        if not fetch or result is None or result.status != ExecStatus.TUPLES_OK:
            return [], cursor.rowcount
        rows = await cursor.fetchall()
        return self._rows(rows, cursor), cursor.rowcount

    def _rows(
        self, rows: Sequence[tuple[Any, ...]], cursor: psycopg.AsyncCursor[Any]
    ) -> list[DirectRow]:
        if self._result_processors is None:
            # Asked once: psycopg builds the description's columns anew on every access.
            description = cursor.description or []
            if len(description) != len(self._keys):
                raise TypeError(f"{len(description)} columns came back for {self._keys}")
            # Per column as SQLAlchemy picks them: from the statement's type and the type the
            # server reported; fixed for a statement, so found once.
            self._result_processors = [
                column.type._cached_result_processor(_DIALECT, described.type_code)
                for column, described in zip(
                    self._compiled._result_columns, description, strict=True
                )
            ]
        make = tuple if self._row_class is None else self._row_class._make
        processors = self._result_processors
        if not any(processors):
            return [make(row) for row in rows]
        return [
            make(
                value if processor is None else processor(value)
                for processor, value in zip(processors, row, strict=True)
            )
            for row in rows
        ]

    async def rows(
        self, runner: Runner, params: Mapping[str, Any] | None = None
    ) -> list[DirectRow]:
        return (await self._execute(runner, params, fetch=True))[0]

    async def first(
        self, runner: Runner, params: Mapping[str, Any] | None = None
    ) -> DirectRow | None:
        rows = await self.rows(runner, params)
        return rows[0] if rows else None

    async def scalar(self, runner: Runner, params: Mapping[str, Any] | None = None) -> Any:
        row = await self.first(runner, params)
        return None if row is None else row[0]

    async def rowcount(self, runner: Runner, params: Mapping[str, Any] | None = None) -> int:
        """Rows a DML statement without RETURNING changed."""
        return (await self._execute(runner, params, fetch=False))[1]


async def _as_sqlalchemys(
    connection: AsyncConnection,
    driver: psycopg.AsyncConnection[Any],
    sql: str,
    values: Any,
    exc: psycopg.Error,
) -> StatementError:
    """``exc`` as a session would raise it; a lost connection is invalidated first."""
    invalidated = connection.dialect.is_disconnect(cast(Any, exc), cast(Any, driver), None)
    if invalidated:
        await connection.invalidate(exc)
    return _error(connection.dialect, sql, values, exc, invalidated)


def _error(
    dialect: Dialect, sql: str, values: Any, exc: psycopg.Error, invalidated: bool
) -> StatementError:
    return DBAPIError.instance(
        sql, values, exc, psycopg.Error, connection_invalidated=invalidated, dialect=dialect
    )


# One statement of a batch, and its parameters.
Call = tuple[DirectStatement, Mapping[str, Any] | None]

# A statement of a batch with its parameters as sent (:meth:`DirectStatement.parameters`).
_Bound = tuple[DirectStatement, MutableMapping[str, Any]]


async def _send_together(
    driver: psycopg.AsyncConnection[Any],
    bound: Sequence[_Bound],
    cursors: list[psycopg.AsyncCursor[Any]],
    *,
    then_commit: bool = False,
) -> None:
    """The statements sent in psycopg's pipeline mode, followed by COMMIT if asked, with one
    Sync at the end: one round trip. PostgreSQL runs them in order; once one fails, those
    after it (and the COMMIT) are skipped, and the first error is raised. Each statement's
    result is left on its cursor, appended to ``cursors`` (for the caller to close)."""
    async with driver.pipeline():
        for statement, parameters in bound:
            cursor = driver.cursor()
            cursors.append(cursor)
            await cursor.execute(statement.sql, parameters)
        if then_commit:
            # As a statement, not Connection.commit(): that syncs at once, and leaving the
            # pipeline would then cost a second round trip for its own Sync.
            await driver.execute(b"COMMIT", prepare=False)


def _failed(bound: Sequence[_Bound], cursors: list[psycopg.AsyncCursor[Any]]) -> tuple[str, Any]:
    """The statement of a batch that failed: the first without a result (the cursors may be
    fewer than the statements when sending failed); else the COMMIT."""
    for (statement, parameters), cursor in zip(bound, cursors, strict=False):
        if cursor.pgresult is None:
            return statement.sql, parameters
    return "COMMIT", None


async def _close(cursors: list[psycopg.AsyncCursor[Any]]) -> None:
    for cursor in cursors:
        await cursor.close()


async def run_together(runner: Runner, *calls: Call) -> list[list[DirectRow]]:
    """Several statements in one round trip, the rows of each returned (none for a statement
    without RETURNING). For statements whose parameters do not come from each other's rows:
    PostgreSQL runs them one after the other in the order given, so each sees what those
    before it did, and their locks are taken in that order. The first that fails raises as
    :class:`DirectStatement` does; those after it do not run (the transaction is then failed,
    for the caller to roll back)."""
    bound = [(statement, statement.parameters(params)) for statement, params in calls]
    connection, driver = await _driver_of(runner)
    cursors: list[psycopg.AsyncCursor[Any]] = []
    try:
        try:
            await _send_together(driver, bound, cursors)
        except psycopg.Error as exc:
            sql, values = _failed(bound, cursors)
            raise await _as_sqlalchemys(connection, driver, sql, values, exc) from exc
        return [
            (await statement._read(cursor, fetch=True))[0]
            for (statement, _), cursor in zip(bound, cursors, strict=True)
        ]
    finally:
        await _close(cursors)


# Where a connection keeps the writes at commit of its transaction: (that transaction,
# [(statement, parameters)]). On the connection, not the session: they go with the database's
# COMMIT, which only the connection's commit event sees whichever way the session commits.
_AT_COMMIT = "rose_direct_at_commit"


async def write_at_commit(
    session: AsyncSession, statement: DirectStatement, params: Mapping[str, Any] | None
) -> None:
    """A write of the session's transaction whose result nothing reads (a message for an
    outbox, an idempotency key's answer), sent with the transaction's COMMIT, in its round
    trip, whatever commits the session. A rollback forgets it. Nothing in the transaction
    sees it before the commit. Inside a savepoint (whose rollback must take it back) it is
    written now, as any statement; so is one made while the session is in no transaction (it
    begins the next)."""
    sync = session.sync_session
    transaction = sync.get_transaction()
    if (
        transaction is None
        or not transaction.is_active
        or sync.get_nested_transaction() is not None
    ):
        await statement.rows(session, params)
        return
    connection, _ = await _session_driver(session)
    engine_connection = connection.sync_connection
    assert engine_connection is not None  # handed out by the session: started
    root = engine_connection.get_transaction()
    held: tuple[Any, list[_Bound]] | None = engine_connection.info.get(_AT_COMMIT)
    if held is None or held[0] is not root:
        held = engine_connection.info[_AT_COMMIT] = (root, [])
    held[1].append((statement, statement.parameters(params)))


def _take_writes(connection: Connection) -> list[_Bound]:
    """The writes at commit of the connection's transaction, no longer held. Those of a
    transaction that ended without a commit are dropped."""
    held = connection.info.pop(_AT_COMMIT, None)
    if held is None or held[0] is not connection.get_transaction():
        return []
    return held[1]


@event.listens_for(Engine, "commit")
def _commit_with_the_writes(connection: Connection) -> None:
    """The database COMMIT of a transaction with writes at commit: the writes and COMMIT in one
    round trip. SQLAlchemy's own COMMIT after this finds psycopg's connection idle and sends
    nothing. The event comes once per database transaction, after the session's flush and
    savepoints, whichever way it commits (``session.commit()``, ``session.begin()``'s exit);
    it runs in the greenlet of the async session's commit, where SQLAlchemy's async bridge
    awaits. A failure fails the commit as SQLAlchemy's own would: the transaction is over,
    and the session needs its rollback before anything else."""
    writes = _take_writes(connection)
    if not writes:
        return
    driver = cast("psycopg.AsyncConnection[Any]", connection.connection.driver_connection)
    cursors: list[psycopg.AsyncCursor[Any]] = []
    try:
        await_only(_send_together(driver, writes, cursors, then_commit=True))
    except psycopg.Error as exc:
        invalidated = connection.dialect.is_disconnect(cast(Any, exc), cast(Any, driver), None)
        if invalidated:
            connection.invalidate(exc)
        sql, values = _failed(writes, cursors)
        raise _error(connection.dialect, sql, values, exc, invalidated) from exc
    finally:
        await_only(_close(cursors))


@event.listens_for(Engine, "rollback")
def _forget_the_writes(connection: Connection) -> None:
    """A rollback forgets them. (An invalidated connection's are left: they name a transaction
    that is over, which :func:`_take_writes` never sends.)"""
    if not connection.invalidated:
        connection.info.pop(_AT_COMMIT, None)
