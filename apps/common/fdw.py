"""Reading another service's data through postgres_fdw foreign tables.

Every FDW query path runs inside :func:`remote_read`: a savepoint with a statement timeout, so
a slow or unreachable provider costs a bounded wait and leaves the local transaction usable. A
failure to reach the provider raises :class:`ProviderUnavailable`, which callers turn into a
degraded answer (``X-Rose-Degraded``) or, when they cannot answer without it, a 503 problem.

Foreign tables are never in a service's MetaData (migrations do not manage them): a consumer
builds them from the provider's contract (``ExportView.foreign_table``) in its models module.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import ColumnElement, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from apps.common.db import set_for_the_transaction
from apps.common.direct import DirectStatement
from apps.common.observability import FDW_DEGRADED_READS
from apps.common.problems import DependencyUnavailable

logger = logging.getLogger("rose.fdw")

DEFAULT_REMOTE_TIMEOUT_MS = 2000
DEGRADED_HEADER = "X-Rose-Degraded"

# SQLSTATEs meaning "the provider could not answer": connection failures (class 08), our
# statement timeout (57014), and a remote server shutting down or out of connections.
UNAVAILABLE_SQLSTATES = frozenset({"57014", "57P01", "57P03", "53300"})


class ProviderUnavailable(DependencyUnavailable):
    def __init__(self, provider: str, reason: str) -> None:
        super().__init__(
            f"The {provider} data is unavailable right now ({reason}); try again shortly",
            provider=provider,
        )
        self.provider = provider


# Built once (a text() construct parses its text for parameters each time it is made), run
# directly on the session's connection: every FDW read sets its timeout (apps.common.direct).
DEFAULT_TIMEOUT = DirectStatement(text("SET LOCAL statement_timeout TO DEFAULT"))


@functools.cache
def _timeout_statement(timeout_ms: int) -> DirectStatement:
    return DirectStatement(text(f"SET LOCAL statement_timeout = {timeout_ms}"))


@functools.cache
def timeout_for_next_reads(timeout_ms: int = DEFAULT_REMOTE_TIMEOUT_MS) -> ColumnElement[str]:
    """A column for the statement just before FDW reads outside a :func:`remote_read` block: it
    sets the timeout as ``SET LOCAL`` does (a statement's own timeout is armed when it starts,
    so it bounds the statements after it), without a round trip of its own."""
    return set_for_the_transaction("statement_timeout", str(int(timeout_ms)))


def _sqlstate(exc: DBAPIError) -> str:
    return getattr(exc.orig, "sqlstate", None) or ""


@asynccontextmanager
async def remote_read(
    session: AsyncSession,
    provider: str,
    *,
    timeout_ms: int = DEFAULT_REMOTE_TIMEOUT_MS,
    isolate: bool = True,
) -> AsyncIterator[None]:
    """Bound (and by default isolate) the FDW queries run inside the block.

    ``isolate=False`` is for requests that cannot answer at all without the provider: no
    savepoint (two local and two remote round trips fewer), the timeout stays on until the
    transaction ends, and a failure leaves the transaction to be rolled back by the caller."""
    savepoint = await session.begin_nested() if isolate else None
    await _timeout_statement(int(timeout_ms)).rowcount(session)
    try:
        yield
    except DBAPIError as exc:
        if savepoint is not None:
            await savepoint.rollback()
        unavailable = provider_unavailable(exc, provider)
        if unavailable is not None:
            raise unavailable from exc
        raise
    else:
        if savepoint is not None:
            # Back to the session's own timeout for whatever the transaction does next.
            await DEFAULT_TIMEOUT.rowcount(session)
            await savepoint.commit()


def provider_unavailable(exc: DBAPIError, provider: str) -> ProviderUnavailable | None:
    """What a failed FDW read of ``provider`` means for the caller: ProviderUnavailable when
    the provider could not answer (connection, timeout: logged and counted), None for any
    other error. For a read that is not in a :func:`remote_read` block (sent with other
    statements, its own error told from theirs by the statement)."""
    state = _sqlstate(exc)
    if not (state.startswith("08") or state in UNAVAILABLE_SQLSTATES):
        return None
    logger.warning("%s unavailable through FDW: %s %s", provider, state, exc.orig)
    reason = "timeout" if state == "57014" else state
    FDW_DEGRADED_READS.labels(provider, reason).inc()
    return ProviderUnavailable(provider, reason)
