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
from sqlalchemy.dialects.postgresql.psycopg import PGDialectAsync_psycopg
from sqlalchemy.exc import DBAPIError, InvalidRequestError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import ValuesBase
from sqlalchemy.sql.elements import ClauseElement

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
                result = cursor.pgresult
                if not fetch or result is None or result.status != ExecStatus.TUPLES_OK:
                    return [], cursor.rowcount
                rows = await cursor.fetchall()
                return self._rows(rows, cursor), cursor.rowcount
        except psycopg.Error as exc:
            invalidated = connection.dialect.is_disconnect(cast(Any, exc), cast(Any, driver), None)
            if invalidated:
                await connection.invalidate(exc)
            raise DBAPIError.instance(
                self.sql,
                values,
                exc,
                psycopg.Error,
                connection_invalidated=invalidated,
                dialect=connection.dialect,
            ) from exc

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
