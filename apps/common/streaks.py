"""Failures of a background loop (the outbox relay, reconciliation, the sweeper), logged once
per streak: a dependency that is down (the database, for as long as it is down) would otherwise
log a full traceback on every pass, every few seconds.

The first failure of a streak is logged with its traceback, its first line naming the cause;
later ones of the same streak as one line at most every ``repeat_seconds``; the first success
after a streak says how many passes failed."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout


def cause_of(exc: BaseException) -> str:
    """One line naming what failed, for the line before a traceback (whose cause is its last
    line, some 60 lines down for a database that went away)."""

    def first_line(text: object) -> str:
        return str(text).strip().split("\n", 1)[0]

    if isinstance(exc, PoolTimeout):
        return f"every database connection stayed busy ({first_line(exc.args[0])})"
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return f"{type(exc).__name__}: {first_line(exc.orig)}"
    said = first_line(exc.args[0] if isinstance(exc, SQLAlchemyError) and exc.args else exc)
    return f"{type(exc).__name__}: {said}" if said else type(exc).__name__


class FailureStreak:
    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        repeat_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._what = what
        self._repeat = repeat_seconds
        self._clock = clock
        self._failures = 0
        self._said_at = 0.0

    @property
    def count(self) -> int:
        """Passes failed in a row, now."""
        return self._failures

    def failed(self, exc: BaseException) -> None:
        """A pass failed (call from the ``except`` block)."""
        self._failures += 1
        now = self._clock()
        if self._failures == 1:
            self._logger.error("%s failed: %s", self._what, cause_of(exc), exc_info=exc)
            self._said_at = now
        elif now - self._said_at >= self._repeat:
            self._logger.error(
                "%s still failing (%d passes in a row): %s",
                self._what,
                self._failures,
                cause_of(exc),
            )
            self._said_at = now

    def succeeded(self) -> None:
        if self._failures:
            self._logger.warning(
                "%s works again after %d failed passes", self._what, self._failures
            )
        self._failures = 0
