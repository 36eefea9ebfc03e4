"""Sign-in's adoption of an anonymous session, against writes that still carry that session.

At sign-in a service gives the anonymous session's things (cart lines, bookings) to the user,
and from then on the browser carries the user's session. A write sent with the anonymous
session just before (an add, a booking) would land for a session nobody uses again, where
sign-in did not look. So a service records each session it adopts (a table of its own,
``adopted_sessions_table``) under the session's advisory lock, which its anonymous writes
share: such a write waits for an adoption in progress, then is refused (409) if the session was
adopted. A record is kept a day: no write is in flight that long.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    MetaData,
    String,
    Table,
    delete,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as upsert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from apps.common.problems import Conflict

KEPT = timedelta(days=1)
# The key, set to true, of the 409 problem that says the session was given to another account
# (sign-in tells it from other refusals: apps.common.web.adopt_anonymous_on_sign_in).
GIVEN_TO_ANOTHER_ACCOUNT = "session_given_to_another_account"
# The key of a problem whose way out may be to start afresh: its value is where a browser
# signs out (POST), which gives even an anonymous browser a new session; the error page shows
# the form (apps/common/templates/error.html).
START_AFRESH = "start_afresh"
SIGN_OUT_PATH = "/auth/logout"
SESSION_ID_LENGTH = 64

# hashtext of "<namespace>:<session id>": cart's sign-in took this lock before the record existed.
_LOCK = "SELECT {function}(hashtext(:space || ':' || :sid))"
_EXCLUSIVE = text(_LOCK.format(function="pg_advisory_xact_lock"))
_SHARED = text(_LOCK.format(function="pg_advisory_xact_lock_shared"))


def adopted_sessions_table(metadata: MetaData) -> Table:
    """A service's record of the anonymous sessions sign-in adopted (in its schema)."""
    return Table(
        "adopted_sessions",
        metadata,
        Column("session_id", String(SESSION_ID_LENGTH), primary_key=True),
        Column("user_id", BigInteger, nullable=False),
        Column("adopted_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
        Index("ix_adopted_sessions_adopted_at", "adopted_at"),
    )


@dataclass(frozen=True)
class SessionAdoption:
    """One service's adoptions: its table and the namespace of its lock per session."""

    table: Table
    lock_namespace: str


async def adopt_session(
    session: AsyncSession, adoption: SessionAdoption, session_id: str, user_id: int
) -> None:
    """Sign-in, before it moves anything: the session's lock, alone, and the record (the first
    sign-in's user stays). Anonymous writes of the session in progress finish first."""
    await session.execute(_EXCLUSIVE, {"space": adoption.lock_namespace, "sid": session_id})
    await record_adoption(session, adoption, session_id, user_id)


async def record_adoption(
    session: AsyncSession, adoption: SessionAdoption, session_id: str, user_id: int
) -> None:
    """The record alone, for a service whose sign-in and anonymous writes already take one
    lock of their own (orders: its buyer lock). A session is given to one account: a sign-in
    of it as another (a sign-in that did not finish everywhere, then another account on the
    same browser) is a 409 before anything moves, so the visitor's things are never split
    between two users."""
    record = upsert(adoption.table).values(session_id=session_id, user_id=user_id)
    await session.execute(
        record.on_conflict_do_update(
            index_elements=["session_id"],
            # A record past KEPT is forgotten (:func:`adopted_by`), whether or not it was swept.
            set_={"user_id": record.excluded.user_id, "adopted_at": func.now()},
            where=~_kept(adoption),
        )
    )
    await refuse_another_account(session, adoption, session_id, user_id)


async def refuse_another_account(
    session: AsyncSession, adoption: SessionAdoption, session_id: str, user_id: int
) -> None:
    """409 if sign-in gave the session to an account other than ``user_id``."""
    owner = await adopted_by(session, adoption, session_id)
    if owner is not None and owner != user_id:
        raise Conflict(
            "This browser's session was handed to another account at an earlier sign-in (one "
            "that may not have finished): sign in as that account, or sign out and sign in again.",
            session_given_to_another_account=True,  # GIVEN_TO_ANOTHER_ACCOUNT
        )


def given_away(nothing_done: str, again: str, *, what_went: str = "", **extra: Any) -> Conflict:
    """The 409 of an anonymous write (or checkout) carrying a session that sign-in gave to an
    account. Who sends it is not known here, so it says what is true for each of them and what
    works for each: the visitor who has just signed in (the browser carries their account's
    session now: ``again``), one whose sign-in did not finish (still signed out; signing in
    again as that account finishes it, where signing out would leave behind what the services
    not reached yet hold), and one whose browser carries a session someone else signed in
    with (a planted cookie, a shared browser: signing in works, or signing out starts afresh).
    Not a new session on its own: the same answer reaches the visitor who has just signed in,
    whose browser would be signed out by it, and one whose sign-in did not finish, whose
    things some services still hold for this session alone (audit M1). ``what_went``: what
    went with the session, said after it."""
    return Conflict(
        f"{nothing_done}: this browser's session was given to an account when it signed in"
        f"{what_went}, and "
        "takes nothing more while signed out. If that sign-in was yours: once it has finished, "
        f"{again}; if it did not finish (you are still signed out), sign in again as that "
        "account to finish it. If it was not yours: sign in, or sign out to start afresh.",
        **{START_AFRESH: SIGN_OUT_PATH, **extra},
    )


async def refuse_if_adopted(
    session: AsyncSession,
    adoption: SessionAdoption,
    session_id: str,
    nothing_done: str,
    again: str,
) -> None:
    """An anonymous write: wait for an adoption of its session in progress, then refuse it
    (409, :func:`given_away`) if sign-in adopted the session. The lock is shared with other
    writes and held until the write commits, so an adoption never starts in between."""
    await session.execute(_SHARED, {"space": adoption.lock_namespace, "sid": session_id})
    if await adopted_by(session, adoption, session_id) is not None:
        raise given_away(nothing_done, again)


async def adopted_by(
    session: AsyncSession, adoption: SessionAdoption, session_id: str
) -> int | None:
    """The user sign-in gave the session to, if it did within the last KEPT. Older records
    count as forgotten when read, not when a service's sweep deletes them: every service
    forgets a sign-in at the same moment (audit s20c: events, swept first, took the session's
    writes again while cart and orders still said it was given away)."""
    user_id = await session.scalar(
        select(adoption.table.c.user_id).where(
            adoption.table.c.session_id == session_id, _kept(adoption)
        )
    )
    return None if user_id is None else int(user_id)


def _kept(adoption: SessionAdoption) -> ColumnElement[bool]:
    return adoption.table.c.adopted_at >= func.now() - KEPT


async def forget_old_adoptions(session: AsyncSession, adoption: SessionAdoption) -> None:
    await session.execute(
        delete(adoption.table).where(adoption.table.c.adopted_at < func.now() - KEPT)
    )
