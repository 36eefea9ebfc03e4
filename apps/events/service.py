"""Domain logic of events: calendars on pages, bookings of entries, tickets, and their
confirmation when an order is paid.

Attachments live in two places: the calendar's own container columns (which page it belongs to)
and the relations service (which other services read). Every change to an attachment calls
relations *inside* the open local transaction, after the local rows are written and flushed, and
the caller commits only once relations has answered: a relations failure leaves nothing local
behind (the transaction rolls back), and a local failure before the call means relations is never
asked. The one gap left, a commit that fails after relations changed, is closed by
:func:`commit_or_revert`, which undoes the relations change.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, NoReturn

import msgspec
from sqlalchemy import (
    ColumnElement,
    Subquery,
    and_,
    any_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    text,
    union,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, INET
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from apps.common.admission import lock_network
from apps.common.adoption import (
    SessionAdoption,
    adopt_session,
    adopted_by,
    forget_old_adoptions,
    given_away,
    refuse_another_account,
    refuse_if_adopted,
)
from apps.common.contracts import Adopted, SignIn
from apps.common.db import lock_live_row
from apps.common.fdw import ProviderUnavailable, remote_read
from apps.common.inputs import CURRENCY, decimal_number, one_line_name, whole_pattern
from apps.common.problems import Conflict, InvalidInput, NotFound, Problem, TooManyRequests
from apps.events.contract import (
    MAX_HOLDING_ORDERS,
    MAX_ORDER_HOLD,
    ConfirmForOrder,
    ConfirmResult,
    Held,
    HoldForOrder,
    HoldsEnded,
    PendingBooking,
    ReleaseBooking,
    Released,
    ReleaseForOrder,
    Unconfirmed,
)
from apps.events.models import (
    DEFAULT_CURRENCY,
    NETWORK_HOLD_ROWS,
    Calendar,
    CalendarEntry,
    GivenBackOrder,
    ReleasedHold,
    Ticket,
    adopted_sessions,
    foreign_pages,
)
from apps.relations import contract as relations
from apps.relations.contract import (
    RelationsCall,
    RelationsLink,
    call_relations,
    commit_or_revert_relations,
    revert_relations,
    unanswered,
)

logger = logging.getLogger("rose.events")

PAGE = "page"
CALENDAR = "calendar"
MAX_COST = Decimal("99999999.99")  # numeric(10, 2)
# A ticket's title in the cart: entry name, en dash, ticket type (as in the export view).
TICKET_TITLE_SEPARATOR = " \u2013 "

DbId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
Slug = Annotated[str, msgspec.Meta(pattern=whole_pattern("[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?"))]
TicketType = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Currency = Annotated[str, msgspec.Meta(pattern=CURRENCY)]


# -- inputs -----------------------------------------------------------------------------------
# Form structs ignore unknown fields: browser forms also carry the CSRF field and `next`.


class NewCalendar(msgspec.Struct):
    name: Name
    slug: Slug
    page_id: DbId


class PageChoice(msgspec.Struct):
    page_id: DbId


class NewEntry(msgspec.Struct):
    name: Name
    # ISO 8601; a time without an offset (what <input type="datetime-local"> sends) is UTC.
    starts_at: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    # Text, read by :func:`check_cost`: msgspec's Decimal takes whatever Decimal() takes
    # (full-width digits, exponents).
    cost: Annotated[str, msgspec.Meta(max_length=64)]
    currency: Currency = DEFAULT_CURRENCY


class NewTickets(msgspec.Struct):
    ticket_type: TicketType
    quantity: Annotated[int, msgspec.Meta(ge=1, le=20)] = 1


@dataclass(frozen=True)
class BookingOwner:
    """Who books: a signed-in user, else the anonymous session (``Identity.as_params()``)."""

    user_id: int | None = None
    session_id: str | None = None

    def __post_init__(self) -> None:
        if (self.user_id is None) == (self.session_id is None):
            raise ValueError("a booking owner is a user id or a session id, exactly one")

    def owns(self, model: type[CalendarEntry] | type[Ticket]) -> ColumnElement[bool]:
        if self.user_id is not None:
            return model.user_id == self.user_id
        return and_(model.session_id == self.session_id, model.user_id.is_(None))


def held(model: type[CalendarEntry] | type[Ticket]) -> ColumnElement[bool]:
    """Pending and still held: what blocks others and sits in a cart."""
    return and_(model.state == "pending", model.hold_expires_at > func.now())


def hold_ended(model: type[CalendarEntry] | type[Ticket]) -> ColumnElement[bool]:
    """Pending in name only: the hold ended, the slot is free for anyone."""
    return and_(model.state == "pending", model.hold_expires_at <= func.now())


# -- outputs ----------------------------------------------------------------------------------


class CalendarOut(msgspec.Struct):
    id: int
    slug: str
    name: str
    container_type: str | None
    container_id: int | None
    created_at: datetime
    updated_at: datetime


class EntryOut(msgspec.Struct):
    id: int
    calendar_id: int
    name: str
    starts_at: datetime
    cost: Decimal
    currency: str
    state: str
    # Open and not started yet.
    bookable: bool
    # Pending or confirmed for the identity asking.
    booked_by_you: bool
    # The asking identity's tickets of this entry still in its cart: ticket type -> how many.
    your_tickets: dict[str, int] = {}


class CalendarWithEntries(CalendarOut):
    entries: list[EntryOut]


class TicketOut(msgspec.Struct):
    id: int
    calendar_entry_id: int
    ticket_type: str
    price: Decimal
    currency: str
    state: str


def to_calendar(row: Calendar) -> CalendarOut:
    return CalendarOut(
        id=row.id,
        slug=row.slug,
        name=row.name,
        container_type=row.container_type,
        container_id=row.container_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def to_entry(row: CalendarEntry, owner: BookingOwner | None, now: datetime) -> EntryOut:
    # A pending entry whose hold ended is open to anyone (whether or not it was swept yet).
    ended = row.state == "pending" and (row.hold_expires_at is None or row.hold_expires_at <= now)
    state = "open" if ended else row.state
    booked_by_you = (
        owner is not None
        and state in ("pending", "confirmed")
        and (row.user_id, row.session_id) == (owner.user_id, owner.session_id)
    )
    return EntryOut(
        id=row.id,
        calendar_id=row.calendar_id,
        name=row.name,
        starts_at=row.starts_at,
        cost=row.cost,
        currency=row.currency,
        state=state,
        bookable=state == "open" and row.starts_at > now,
        booked_by_you=booked_by_you,
    )


def to_ticket(row: Ticket) -> TicketOut:
    return TicketOut(
        id=row.id,
        calendar_entry_id=row.calendar_entry_id,
        ticket_type=row.ticket_type,
        price=row.price,
        currency=row.currency,
        state=row.state,
    )


async def database_now(session: AsyncSession) -> datetime:
    """The transaction's clock, so "upcoming" and "started" agree with the SQL that books."""
    return (await session.execute(select(func.now()))).scalar_one()


# -- reading ----------------------------------------------------------------------------------


async def list_calendars(
    session: AsyncSession, *, owner: BookingOwner | None = None, page_id: int | None = None
) -> list[CalendarWithEntries]:
    """Calendars (of one page, or all) with their upcoming entries in time order."""
    now = await database_now(session)
    query = select(Calendar).where(Calendar.deleted_at.is_(None))
    if page_id is not None:
        query = query.where(Calendar.container_type == PAGE, Calendar.container_id == page_id)
    calendars = list(await session.scalars(query.order_by(Calendar.name, Calendar.id)))
    if not calendars:
        return []
    # One query for the entries of every calendar listed, not one per calendar.
    entries = await session.scalars(
        select(CalendarEntry)
        .where(
            CalendarEntry.calendar_id.in_([calendar.id for calendar in calendars]),
            CalendarEntry.starts_at >= now,
            CalendarEntry.deleted_at.is_(None),
        )
        .order_by(CalendarEntry.starts_at, CalendarEntry.id)
    )
    listed = list(entries)
    yours = await _tickets_in_cart(session, owner, [entry.id for entry in listed])
    by_calendar: dict[int, list[EntryOut]] = {calendar.id: [] for calendar in calendars}
    for entry in listed:
        shown = to_entry(entry, owner, now)
        shown.your_tickets = yours.get(entry.id, {})
        by_calendar[entry.calendar_id].append(shown)
    return [
        CalendarWithEntries(**msgspec.structs.asdict(to_calendar(c)), entries=by_calendar[c.id])
        for c in calendars
    ]


async def page_titles(session: AsyncSession, page_ids: Iterable[int]) -> dict[int, str]:
    """Blog's titles of these pages that are published (through FDW); none when blog cannot be
    reached. A draft's title is not the public's to read: the page shows its number."""
    wanted = sorted(set(page_ids))
    if not wanted:
        return {}
    try:
        async with remote_read(session, "blog"):
            rows = await session.execute(
                select(foreign_pages.c.id, foreign_pages.c.title).where(
                    foreign_pages.c.id.in_(wanted), foreign_pages.c.published
                )
            )
            return {row.id: row.title for row in rows}
    except ProviderUnavailable:
        return {}


async def _tickets_in_cart(
    session: AsyncSession, owner: BookingOwner | None, entry_ids: list[int]
) -> dict[int, dict[str, int]]:
    """Entry id -> ticket type -> how many of ``owner``'s tickets are held in their cart."""
    if owner is None or not entry_ids:
        return {}
    rows = await session.execute(
        select(Ticket.calendar_entry_id, Ticket.ticket_type, func.count())
        .where(
            Ticket.calendar_entry_id.in_(entry_ids),
            owner.owns(Ticket),
            held(Ticket),
            Ticket.deleted_at.is_(None),
        )
        .group_by(Ticket.calendar_entry_id, Ticket.ticket_type)
        .order_by(Ticket.calendar_entry_id, Ticket.ticket_type)
    )
    found: dict[int, dict[str, int]] = {}
    for entry_id, ticket_type, count in rows:
        found.setdefault(entry_id, {})[ticket_type] = count
    return found


def _pending_bookings_query() -> Subquery:
    """The same rows as the export view ``export.pending_bookings`` (the app role cannot read
    the export schema; a test checks that the two agree)."""
    entries = (
        select(
            literal("entry").label("kind"),
            CalendarEntry.id,
            CalendarEntry.user_id,
            CalendarEntry.session_id,
            CalendarEntry.name.label("title"),
            CalendarEntry.cost.label("price"),
            CalendarEntry.currency,
            CalendarEntry.calendar_id,
            CalendarEntry.starts_at,
            Calendar.container_type,
            Calendar.container_id,
        )
        .join(Calendar, Calendar.id == CalendarEntry.calendar_id)
        .where(
            held(CalendarEntry),
            CalendarEntry.deleted_at.is_(None),
            Calendar.deleted_at.is_(None),
        )
    )
    tickets = (
        select(
            literal("ticket").label("kind"),
            Ticket.id,
            Ticket.user_id,
            Ticket.session_id,
            (CalendarEntry.name + TICKET_TITLE_SEPARATOR + Ticket.ticket_type).label("title"),
            Ticket.price.label("price"),
            Ticket.currency,
            CalendarEntry.calendar_id,
            CalendarEntry.starts_at,
            Calendar.container_type,
            Calendar.container_id,
        )
        .join(CalendarEntry, CalendarEntry.id == Ticket.calendar_entry_id)
        .join(Calendar, Calendar.id == CalendarEntry.calendar_id)
        .where(
            held(Ticket),
            Ticket.deleted_at.is_(None),
            CalendarEntry.deleted_at.is_(None),
            Calendar.deleted_at.is_(None),
        )
    )
    return union_all(entries, tickets).subquery("pending_bookings")


async def pending_bookings(
    session: AsyncSession, *, user_id: int | None = None, session_id: str | None = None
) -> list[PendingBooking]:
    """The pending bookings of one identity: exactly one of user_id and session_id."""
    if user_id is None and session_id is None:
        raise InvalidInput("user_id or session_id is required", field="user_id")
    if user_id is not None and session_id is not None:
        raise InvalidInput("give user_id or session_id, not both", field="session_id")
    bookings = _pending_bookings_query()
    owner_column = bookings.c.user_id if user_id is not None else bookings.c.session_id
    rows = await session.execute(
        select(bookings)
        .where(owner_column == (user_id if user_id is not None else session_id))
        .order_by(bookings.c.starts_at, bookings.c.kind, bookings.c.id)
    )
    return [PendingBooking(**row._asdict()) for row in rows]


# -- booking ----------------------------------------------------------------------------------


# Sign-in's adoptions of anonymous sessions (apps.common.adoption).
ADOPTIONS = SessionAdoption(adopted_sessions, lock_namespace="events-adopt")


async def _refuse_if_signed_in(session: AsyncSession, owner: BookingOwner) -> None:
    """An anonymous booking waits for sign-in adopting its session, then is refused if it did:
    held for the session, it would block the place for nobody the buyer can see."""
    if owner.user_id is None and owner.session_id is not None:
        await refuse_if_adopted(
            session,
            ADOPTIONS,
            owner.session_id,
            "Nothing was booked",
            "book it again",
        )


# What an entry whose hold ended or was let go of becomes (open, nobody's, its network not
# kept), and a ticket (cancelled): release_booking's and sweep_ended_holds' one answer.
ENTRY_OPEN_AGAIN: dict[str, Any] = {
    "state": "open",
    "user_id": None,
    "session_id": None,
    "hold_network": None,
}
TICKET_LET_GO: dict[str, Any] = {"state": "cancelled"}


@dataclass(frozen=True)
class HoldLimit:
    """Where an anonymous booking comes from (``apps.common.web.client_network``: an address,
    an IPv6 client's /64; None when unknown), how many live anonymous holds one network may
    have at once, and how many live holds one signed-in account may have at once (0: no
    limit)."""

    network: str | None = None
    per_network: int = 0
    per_account: int = 0


# Of the advisory lock per client network: its live anonymous holds are counted and a new one
# is made under it, so concurrent bookings from one network count exactly.
HOLDS_LOCK_NAMESPACE = "events-anonymous-holds"
# The same per account, for a signed-in buyer's holds.
ACCOUNT_HOLDS_LOCK_NAMESPACE = "events-account-holds"


def network_hold_of(network: str) -> ColumnElement[bool]:
    """A live hold made from ``network`` without signing in, in a cart or for an order not
    paid yet (a checkout keeps the entry from everyone else as a cart does), pending and held
    still, whether sign-in adopted it since or not: an account adopting a network's holds
    freed its places, and one account held as many as it signed in and out for (review 3).
    The rows of the partial index ``ix_calendar_entries_network_holds``, named in the SQL as
    its predicate is (not as bound parameters: a generic plan could not use the index with
    those)."""
    return and_(
        text(NETWORK_HOLD_ROWS),
        CalendarEntry.hold_network == cast(network, INET),
        CalendarEntry.hold_expires_at > func.now(),
    )


def account_hold_of(user_id: int) -> ColumnElement[bool]:
    """A live hold of a signed-in buyer, in their cart or for their order not paid yet (the
    rows of ``ix_calendar_entries_pending_user``)."""
    return and_(
        CalendarEntry.state == "pending",
        CalendarEntry.user_id == user_id,
        CalendarEntry.hold_expires_at > func.now(),
    )


async def _refuse_over_the_limit(
    session: AsyncSession,
    entry_id: int,
    held: ColumnElement[bool],
    limit: int,
    whose: str,
    otherwise: str,
) -> None:
    """Under the lock of whoever's holds ``held`` are (a network's, an account's), after the
    booking's update: the other live holds. At the limit, the booking is rolled back and
    refused (429, Retry-After the seconds until enough of them have ended for one more)."""
    others = and_(held, CalendarEntry.id != entry_id)
    count = await session.scalar(select(func.count()).where(others)) or 0
    if count < limit:
        return
    # One more fits once count - limit + 1 of them have ended (more than the limit are held
    # where it was lowered, or the release before counted nothing).
    row = (
        await session.execute(
            select(CalendarEntry.hold_expires_at, func.now())
            .where(others)
            .order_by(CalendarEntry.hold_expires_at)
            .offset(count - limit)
            .limit(1)
        )
    ).first()
    if row is None:
        return  # enough of them ended (or were let go of) since they were counted
    place_free: datetime | None = row.hold_expires_at
    now: datetime = row[1]
    assert place_free is not None  # a live hold has an end (hold_expires_at > now())
    await session.rollback()
    retry_after = max(1, math.ceil((place_free - now).total_seconds()))
    raise TooManyRequests(
        f"Nothing was booked: {limit} entries are held {whose}, the most there may be at "
        f"once. Try again in {wait_in_words(retry_after)}, when enough of those holds have "
        f"ended (sooner if one is taken out of its cart or paid for){otherwise}.",
        retry_after=retry_after,
    )


def wait_in_words(seconds: int) -> str:
    """A wait as a person reads it: seconds under two minutes, else minutes, rounded up (a
    hold lasts 15 minutes: "830 s" was the refusal's)."""
    return f"{seconds} s" if seconds < 120 else f"{math.ceil(seconds / 60)} minutes"


async def book_entry(
    session: AsyncSession,
    entry_id: int,
    owner: BookingOwner,
    hold: timedelta,
    limit: HoldLimit | None = None,
) -> EntryOut:
    """Make an open (or no longer held), not yet started entry pending for ``owner``, held for
    ``hold``. One conditional UPDATE, so of concurrent bookings of one entry exactly one wins;
    the others see it is held. Booking an entry one already holds answers it as it is.

    An anonymous owner's hold records its client network (``limit.network``), and a network
    has at most ``limit.per_network`` live anonymous holds; a signed-in owner's account has at
    most ``limit.per_account`` live holds. A new one past either is refused (a 429, nothing
    written), counted under the network's or the account's advisory lock."""
    await _refuse_if_signed_in(session, owner)
    network = limit.network if limit is not None and owner.user_id is None else None
    per_network = limit.per_network if limit is not None and network is not None else 0
    per_account = limit.per_account if limit is not None and owner.user_id is not None else 0
    if network is not None and per_network:
        await lock_network(session, HOLDS_LOCK_NAMESPACE, network)
    if owner.user_id is not None and per_account:
        await lock_network(session, ACCOUNT_HOLDS_LOCK_NAMESPACE, str(owner.user_id))
    booked = await session.scalar(
        update(CalendarEntry)
        .where(
            CalendarEntry.id == entry_id,
            or_(CalendarEntry.state == "open", hold_ended(CalendarEntry)),
            CalendarEntry.starts_at > func.now(),
            CalendarEntry.deleted_at.is_(None),
        )
        .values(
            state="pending",
            user_id=owner.user_id,
            session_id=owner.session_id,
            hold_expires_at=func.now() + hold,
            hold_order_id=None,
            hold_network=cast(network, INET) if network is not None else null(),
            updated_at=func.now(),
        )
        .returning(CalendarEntry)
    )
    if booked is not None and network is not None and per_network:
        await _refuse_over_the_limit(
            session,
            entry_id,
            network_hold_of(network),
            per_network,
            "from your network without signing in",
            ", or sign in: a signed-in buyer's bookings are counted for their account",
        )
    if booked is not None and owner.user_id is not None and per_account:
        await _refuse_over_the_limit(
            session, entry_id, account_hold_of(owner.user_id), per_account, "for your account", ""
        )
    now = await database_now(session)
    if booked is not None:
        return to_entry(booked, owner, now)
    entry = await session.get(CalendarEntry, entry_id)
    if entry is None or entry.deleted_at is not None:
        raise NotFound(f"There is no calendar entry {entry_id}")
    current = to_entry(entry, owner, now)
    if current.booked_by_you and current.state == "pending":
        return current
    if current.state != "open":
        held_note = " (held in someone's cart)" if current.state == "pending" else ""
        raise Conflict(
            f"Calendar entry {entry_id} cannot be booked: it is {current.state}{held_note}"
        )
    raise Conflict(f"Calendar entry {entry_id} cannot be booked: it has already started")


async def add_tickets(
    session: AsyncSession,
    entry_id: int,
    owner: BookingOwner,
    request: NewTickets,
    hold: timedelta,
) -> list[TicketOut]:
    """Pending tickets for an entry that is not cancelled and has not started, at its cost.
    The entry's row is locked, so a cancellation cannot slip in between check and insert."""
    ticket_type = one_line_name(request.ticket_type, "ticket_type")
    await _refuse_if_signed_in(session, owner)
    entry = await lock_live_row(session, CalendarEntry, entry_id, "calendar entry")
    if entry.state == "cancelled":
        raise Conflict(f"Calendar entry {entry_id} is cancelled: no tickets")
    if entry.starts_at <= await database_now(session):
        raise Conflict(f"Calendar entry {entry_id} has already started: no tickets")
    tickets = await session.scalars(
        insert(Ticket).returning(Ticket),
        [
            {
                "calendar_entry_id": entry.id,
                "ticket_type": ticket_type,
                "price": entry.cost,
                "currency": entry.currency,
                "state": "pending",
                "user_id": owner.user_id,
                "session_id": owner.session_id,
                "hold_expires_at": await database_now(session) + hold,
            }
        ]
        * request.quantity,
    )
    return [to_ticket(ticket) for ticket in tickets]


async def adopt_bookings(session: AsyncSession, request: SignIn) -> Adopted:
    """At sign-in, the anonymous session's held bookings become the user's, so they stay in
    the cart (which looks bookings up by user id once signed in). A second call adopts 0.

    So do its ended holds, swept or not, so that the user's cart still says which bookings
    left it, and its confirmed bookings (an order it paid: orders gives the order to the user
    at the same sign-in), whether events confirmed them before this or while it runs; and the
    sign-in is recorded, so that a checkout the session started before is told why its
    bookings are no longer held for the session (:func:`hold_for_order`). An anonymous
    booking of the session in progress finishes first; one that comes after is refused
    (apps.common.adoption).

    An entry keeps the network it was held from: it counts for that network's limit until its
    hold ends, it is let go of or confirmed, as it did before sign-in (review 3: adopting freed
    the network's places, and one account signing in and out held a network's limit again
    each time), and for the account's limit from now on."""
    if request.check_only:
        await refuse_another_account(session, ADOPTIONS, request.session_id, request.user_id)
        return Adopted(adopted=0)
    await adopt_session(session, ADOPTIONS, request.session_id, request.user_id)
    adopted = 0
    for model in (CalendarEntry, Ticket):
        to_user: dict[str, Any] = {
            "user_id": request.user_id,
            "session_id": None,
            "updated_at": func.now(),
        }
        sessions = and_(model.session_id == request.session_id, model.user_id.is_(None))
        result = await session.execute(
            update(model).where(sessions, held(model)).values(to_user).returning(model.id)
        )
        adopted += len(result.all())
        # Bookings first: a sweep that locked one of them has committed its released_holds
        # row before this goes on, so the update of released_holds below sees it; a sweep
        # after this finds the booking the user's.
        # Confirmed ones after the held ones, in a statement of its own: a confirmation that
        # had locked a held booking made the update above skip it once it committed (the row
        # was no longer held); this statement's snapshot, taken after, finds it confirmed. A
        # confirmation that comes after the update above finds the booking the user's, and
        # confirms it as it is.
        await session.execute(
            update(model)
            .where(sessions, or_(hold_ended(model), model.state == "confirmed"))
            .values(to_user)
        )
    await session.execute(
        update(ReleasedHold)
        .where(ReleasedHold.session_id == request.session_id, ReleasedHold.user_id.is_(None))
        .values(user_id=request.user_id, session_id=None)
    )
    return Adopted(adopted=adopted)


# -- confirming -------------------------------------------------------------------------------


async def confirm_for_order(session: AsyncSession, request: ConfirmForOrder) -> ConfirmResult:
    """Bookings held for the order become confirmed for it.

    A booking is confirmed for the order when orders held it for this order, or (bookings held
    before orders held them for orders) when it is still held for the order's buyer. Never one
    whose hold ended and someone else took, nor one confirmed for another order: those are
    reported as unconfirmed, and orders gives their money back.

    Idempotent per order: the answer counts what is confirmed *for this order* among the ids, so
    a replay confirms nothing new and answers the same.

    An anonymous buyer's session that sign-in adopted since is the user now: its bookings are
    the user's (:func:`adopt_bookings`), and so is what this confirms. A sign-in still in
    progress gives the user what this confirmed once it commits.

    An order orders let go of (release-for-order; after its payment went back whole, one
    delivered before this confirm, which was retried late) has nothing confirmed: every id is
    reported unconfirmed."""
    await _lock_holds_of(session, request.order_id)
    if await session.scalar(
        select(GivenBackOrder.order_id).where(GivenBackOrder.order_id == request.order_id)
    ):
        logger.warning(
            "order %s: let go of before its confirm arrived; nothing confirmed", request.order_id
        )
        return ConfirmResult(
            confirmed=0,
            unconfirmed=Unconfirmed(
                entry_ids=sorted(set(request.entry_ids)), ticket_ids=sorted(set(request.ticket_ids))
            ),
        )
    buyer = _buyer(request.user_id, request.session_id)
    signed_in = None
    if request.user_id is None and request.session_id is not None:
        signed_in = await adopted_by(session, ADOPTIONS, request.session_id)
    confirm: dict[str, Any] = {
        "state": "confirmed",
        "order_id": request.order_id,
        "updated_at": func.now(),
    }
    if signed_in is not None:
        confirm.update(user_id=signed_in, session_id=None)
    results: dict[str, list[int]] = {}
    confirmed = 0
    for model, ids in ((CalendarEntry, request.entry_ids), (Ticket, request.ticket_ids)):
        # A booking confirmed is no hold: the network it was held from is not kept.
        values = {**confirm, "hold_network": None} if model is CalendarEntry else confirm
        wanted = sorted(set(ids))
        if not wanted:
            results[model.__tablename__] = []
            continue
        id_list = bindparam(f"{model.__tablename__}_ids", wanted, type_=ARRAY(model.id.type))
        held_for_it = model.hold_order_id == request.order_id
        if buyer is not None:
            owned = buyer.owns(model)
            if signed_in is not None:
                owned = or_(owned, BookingOwner(user_id=signed_in).owns(model))
            held_for_it = or_(held_for_it, and_(model.hold_order_id.is_(None), held(model), owned))
        await session.execute(
            update(model)
            .where(model.id == any_(id_list), model.state == "pending", held_for_it)
            .values(values)
        )
        mine = set(
            await session.scalars(
                select(model.id).where(
                    model.id == any_(id_list),
                    model.state == "confirmed",
                    model.order_id == request.order_id,
                )
            )
        )
        confirmed += len(mine)
        results[model.__tablename__] = [item for item in wanted if item not in mine]
    unconfirmed = Unconfirmed(entry_ids=results["calendar_entries"], ticket_ids=results["tickets"])
    if unconfirmed.entry_ids or unconfirmed.ticket_ids:
        logger.warning(
            "order %s: not confirmed for it (orders refunds them): entries %s, tickets %s",
            request.order_id,
            unconfirmed.entry_ids,
            unconfirmed.ticket_ids,
        )
    return ConfirmResult(confirmed=confirmed, unconfirmed=unconfirmed)


def _buyer(user_id: int | None, session_id: str | None) -> BookingOwner | None:
    if user_id is not None:
        return BookingOwner(user_id=user_id)
    if session_id is not None:
        return BookingOwner(session_id=session_id)
    return None


async def hold_for_order(session: AsyncSession, request: HoldForOrder) -> Held:
    """Hold the buyer's bookings for an order until ``until`` (when it can no longer be paid).
    Every booking must still be held for the buyer; otherwise nothing is held (409), saying
    which holds ended, or that an anonymous buyer signed in meanwhile and the bookings are in
    the account's cart."""
    buyer = _buyer(request.user_id, request.session_id)
    if buyer is None:
        raise InvalidInput("user_id or session_id is required", field="user_id")
    now = await database_now(session)
    if not now < request.until <= now + MAX_ORDER_HOLD:
        raise InvalidInput(
            f"until must be in the next {MAX_ORDER_HOLD}, not {request.until.isoformat()}",
            field="until",
        )
    await _lock_holds_of(session, request.order_id)
    if await session.scalar(
        select(GivenBackOrder.order_id).where(GivenBackOrder.order_id == request.order_id)
    ):
        raise Conflict(
            f"Nothing was held: order {request.order_id} was given up by orders (its holds "
            "were given back) before this hold arrived",
            field="order_id",
        )
    held_count = 0
    missing: list[tuple[type[CalendarEntry] | type[Ticket], str, list[int]]] = []
    for model, ids, label in (
        (CalendarEntry, request.entry_ids, "entries"),
        (Ticket, request.ticket_ids, "tickets"),
    ):
        wanted = sorted(set(ids))
        if not wanted:
            continue
        id_list = bindparam(f"{model.__tablename__}_ids", wanted, type_=ARRAY(model.id.type))
        got = set(
            await session.scalars(
                update(model)
                .where(
                    model.id == any_(id_list),
                    buyer.owns(model),
                    or_(held(model), model.hold_order_id == request.order_id),
                )
                .values(
                    hold_order_id=request.order_id,
                    hold_expires_at=func.greatest(model.hold_expires_at, request.until),
                    # The hold it had before this order's (SET reads the row as it was): what
                    # a rollback of the order puts back. Holding again for the same order
                    # keeps what it had before the first time.
                    prior_hold_order_id=case(
                        (model.hold_order_id == request.order_id, model.prior_hold_order_id),
                        else_=model.hold_order_id,
                    ),
                    prior_hold_expires_at=case(
                        (model.hold_order_id == request.order_id, model.prior_hold_expires_at),
                        else_=model.hold_expires_at,
                    ),
                    # Taken from the cart: its hold is kept, whatever orders hold it next.
                    cart_hold_expires_at=case(
                        (model.hold_order_id.is_(None), model.hold_expires_at),
                        else_=model.cart_hold_expires_at,
                    ),
                    updated_at=func.now(),
                )
                .returning(model.id)
            )
        )
        held_count += len(got)
        if absent := [item for item in wanted if item not in got]:
            missing.append((model, label, absent))
    if missing:
        await _refuse_missing(session, buyer, missing)
    return Held(held=held_count)


async def _refuse_missing(
    session: AsyncSession,
    buyer: BookingOwner,
    missing: list[tuple[type[CalendarEntry] | type[Ticket], str, list[int]]],
) -> NoReturn:
    """Why bookings could not be held for the buyer (a 409): their hold ended and they may
    have been taken, or, for an anonymous buyer, its session signed in meanwhile and sign-in
    adopted them to the user (held or paid for by them: in their cart, not lost)."""
    user_id = None
    if buyer.session_id is not None:
        user_id = await adopted_by(session, ADOPTIONS, buyer.session_id)
    lost: list[str] = []
    adopted: list[str] = []
    for model, label, ids in missing:
        theirs: set[int] = set()
        if user_id is not None:
            id_list = bindparam(f"{model.__tablename__}_ids", ids, type_=ARRAY(model.id.type))
            theirs = set(
                await session.scalars(
                    select(model.id).where(
                        model.id == any_(id_list),
                        model.user_id == user_id,
                        or_(held(model), model.state == "confirmed"),
                    )
                )
            )
        if gone := [item for item in ids if item not in theirs]:
            lost.append(f"{label} {', '.join(map(str, gone))}")
        if moved := [item for item in ids if item in theirs]:
            adopted.append(f"{label} {', '.join(map(str, moved))}")
    if lost:
        raise Conflict(
            f"Your bookings are no longer held for you ({'; '.join(lost)}): their hold ended "
            "and they may have been taken. Book them again, then check out.",
            field="bookings",
        )
    raise given_away(
        "Nothing was ordered",
        "check out again",
        what_went=f" with its bookings ({'; '.join(adopted)}), held in that account's cart",
        field="bookings",
    )


async def release_booking(session: AsyncSession, request: ReleaseBooking) -> Released:
    """Take a booking out of its owner's cart: an entry is open again at once, a ticket is
    cancelled. Someone else's booking (or none) is a 404."""
    owner = _buyer(request.user_id, request.session_id)
    if owner is None:
        raise InvalidInput("user_id or session_id is required", field="user_id")
    model: type[CalendarEntry] | type[Ticket] = CalendarEntry if request.kind == "entry" else Ticket
    freed = ENTRY_OPEN_AGAIN if model is CalendarEntry else TICKET_LET_GO
    released = await session.scalar(
        update(model)
        .where(model.id == request.id, model.state == "pending", owner.owns(model))
        .values(**freed, hold_expires_at=None, hold_order_id=None, updated_at=func.now())
        .returning(model.id)
    )
    if released is None:
        raise NotFound(f"There is no {request.kind} {request.id} in your cart")
    return Released(released=True)


async def orders_holding(
    session: AsyncSession, *, held_before_seconds: int, after: int = 0
) -> list[int]:
    """The orders after ``after`` (lowest id first, at most MAX_HOLDING_ORDERS) holding
    pending bookings whose hold was made, or last changed, at least ``held_before_seconds``
    ago. An order being made holds its bookings a moment before it is committed: asked with a
    margin past orders' time to make one, an order orders does not have then is one it never
    will."""
    since = func.now() - timedelta(seconds=held_before_seconds)
    held = union(
        *(
            select(model.hold_order_id.label("order_id")).where(
                model.hold_order_id > after,
                model.state == "pending",
                model.hold_expires_at > func.now(),
                model.updated_at <= since,
            )
            for model in (CalendarEntry, Ticket)
        )
    ).subquery()
    return list(
        await session.scalars(
            select(held.c.order_id).order_by(held.c.order_id).limit(MAX_HOLDING_ORDERS)
        )
    )


async def release_for_order(session: AsyncSession, request: ReleaseForOrder) -> HoldsEnded:
    """The holds orders made for an order it expired end: each booking whose cart's own hold
    (``cart_hold_expires_at``) still runs goes back on it, in the buyer's cart and no order's
    (audit s21b B1: the payable time may be shorter than the cart's hold); the others end now,
    and the sweeper then frees them and records whose they were, as for any ended hold. A
    replay ends nothing more.

    ``rolled_back``: the order never existed (create-order failed after events held its
    bookings). Each booking goes back to the hold it had before (the buyer's cart's, or an
    earlier order's), for the buyer still, and no longer than then: it is still in their cart.
    A hold from before events kept that (no prior expiry) ends now. A replay changes nothing.

    Either way the order is let go of for good (``given_back_orders``): no later hold is taken
    for it, and a give-back of a later order never returns a booking to its hold (an order
    that expired while a later checkout held the booking: that checkout's failure gave the
    booking back to the expired order, which nobody can pay, until long past its time).

    ``paid_back``: the paid order's money went back whole; its confirmed bookings are let go
    too (:func:`_let_go_confirmed`), and confirm-for-order confirms none for it from now."""
    await _lock_holds_of(session, request.order_id)
    given_back = pg_insert(GivenBackOrder).values(
        order_id=request.order_id, paid_back=request.paid_back is True
    )
    await session.execute(
        given_back.on_conflict_do_update(
            index_elements=[GivenBackOrder.order_id],
            # Paid back once, kept for good; a replay without it forgets nothing.
            set_={"paid_back": GivenBackOrder.paid_back | given_back.excluded.paid_back},
        )
    )
    if request.rolled_back:
        return await _restore_holds_before(session, request.order_id)
    ended = await _let_go_confirmed(session, request.order_id) if request.paid_back is True else 0
    for model in (CalendarEntry, Ticket):
        cart_hold_runs = model.cart_hold_expires_at > func.now()
        result = await session.execute(
            update(model)
            .where(
                model.state == "pending",
                model.hold_order_id == request.order_id,
                model.hold_expires_at > func.now(),
            )
            .values(
                hold_order_id=case((cart_hold_runs, null()), else_=model.hold_order_id),
                hold_expires_at=case(
                    (cart_hold_runs, model.cart_hold_expires_at), else_=func.now()
                ),
                # Back in the cart: no order's hold to go back to (a hold for a new order
                # takes these anew from the cart's).
                prior_hold_order_id=case((cart_hold_runs, null()), else_=model.prior_hold_order_id),
                prior_hold_expires_at=case(
                    (cart_hold_runs, null()), else_=model.prior_hold_expires_at
                ),
                updated_at=func.now(),
            )
            .returning(model.id)
        )
        ended += len(result.all())
    return HoldsEnded(ended=ended)


async def _let_go_confirmed(session: AsyncSession, order_id: int) -> int:
    """The bookings confirmed for ``order_id`` are let go, as a buyer's removal lets go of one
    in the cart: an entry is open again (nobody's), a ticket cancelled (it keeps its order)."""
    let_go = 0
    for model, freed in ((CalendarEntry, ENTRY_OPEN_AGAIN), (Ticket, TICKET_LET_GO)):
        values: dict[str, Any] = {**freed, "updated_at": func.now()}
        if model is CalendarEntry:
            values.update(
                order_id=None,
                hold_expires_at=None,
                hold_order_id=None,
                prior_hold_order_id=None,
                prior_hold_expires_at=None,
                cart_hold_expires_at=None,
            )
        result = await session.execute(
            update(model)
            .where(model.state == "confirmed", model.order_id == order_id)
            .values(values)
            .returning(model.id)
        )
        let_go += len(result.all())
    if let_go:
        logger.warning("order %s: paid back whole; %d booking(s) let go", order_id, let_go)
    return let_go


# A booking given back to its cart whose cart hold ran out while an order held it (a superseded
# order given back long after, a checkout that failed slowly) is held this long from then, so
# the buyer still finds it in the cart; never longer than the order held it.
GIVEN_BACK_HOLD = timedelta(minutes=15)


async def _lock_holds_of(session: AsyncSession, order_id: int) -> None:
    """Serialise the hold and the give-back of one order until the transaction ends: a
    give-back that commits first is seen by the hold (READ COMMITTED reads it after the lock),
    and a hold that commits first is given back."""
    await session.execute(
        select(
            func.pg_advisory_xact_lock(
                func.hashtextextended(literal(f"events-order-holds:{order_id}"), 0)
            )
        )
    )


async def _restore_holds_before(session: AsyncSession, order_id: int) -> HoldsEnded:
    """Each booking held for ``order_id`` goes back to the order hold it had before, unless
    that order was given back too (two checkouts failed in a row, audit s21 F1), and then to
    its cart's hold; when that ran out while the order held it (or events kept none), it is
    held :data:`GIVEN_BACK_HOLD` from now, no longer than the order held it."""
    restored = 0
    for model in (CalendarEntry, Ticket):
        # The order before it, when that one is still an order (not given back).
        order_before = case(
            (
                model.prior_hold_order_id.in_(select(GivenBackOrder.order_id)),
                null(),
            ),
            else_=model.prior_hold_order_id,
        )
        cart_hold = func.coalesce(model.cart_hold_expires_at, model.prior_hold_expires_at)
        result = await session.execute(
            update(model)
            .where(model.state == "pending", model.hold_order_id == order_id)
            .values(
                hold_order_id=order_before,
                hold_expires_at=case(
                    (order_before.is_not(None), model.prior_hold_expires_at),
                    # Back in the cart: its hold as it was, or a while from now when that ran
                    # out while the order held it, no longer than the order held it.
                    else_=case(
                        (cart_hold > func.now(), cart_hold),
                        else_=func.least(func.now() + GIVEN_BACK_HOLD, model.hold_expires_at),
                    ),
                ),
                prior_hold_order_id=None,
                prior_hold_expires_at=None,
                updated_at=func.now(),
            )
            .returning(model.id)
        )
        restored += len(result.all())
    return HoldsEnded(ended=restored)


# The sweeper keeps whose a released booking was this long (the cart says so for an hour), and
# which user a session signed in as.
RELEASED_HOLDS_KEPT = timedelta(days=1)


async def sweep_ended_holds(session: AsyncSession) -> int:
    """Tidy up: entries whose hold ended are open again, such tickets cancelled, and each one's
    owner recorded in released_holds (the entry's owner is taken off it), so its cart can say
    why it left. Correctness never waits for this (an ended hold blocks nobody)."""
    swept = 0
    for kind, model, freed in (
        ("entry", CalendarEntry, ENTRY_OPEN_AGAIN),
        ("ticket", Ticket, TICKET_LET_GO),
    ):
        # The owner is read before the update takes it off; rows locked, so a booking taken
        # again meanwhile is re-checked and left alone.
        ended = (
            select(model.id, model.user_id, model.session_id, model.hold_expires_at)
            .where(hold_ended(model))
            .with_for_update()
            .cte(f"ended_{kind}")
        )
        released = (
            update(model)
            .where(model.id == ended.c.id)
            .values(**freed, hold_expires_at=None, hold_order_id=None, updated_at=func.now())
            .returning(model.id)
            .cte(f"released_{kind}")
        )
        recorded = await session.execute(
            insert(ReleasedHold)
            .from_select(
                ["kind", "booking_id", "user_id", "session_id", "ended_at"],
                select(
                    literal(kind),
                    ended.c.id,
                    ended.c.user_id,
                    ended.c.session_id,
                    ended.c.hold_expires_at,
                ).join(released, released.c.id == ended.c.id),
            )
            .returning(ReleasedHold.booking_id)
        )
        swept += len(recorded.all())
    await session.execute(
        delete(ReleasedHold).where(ReleasedHold.released_at < func.now() - RELEASED_HOLDS_KEPT)
    )
    await session.execute(
        delete(GivenBackOrder).where(
            GivenBackOrder.given_back_at < func.now() - RELEASED_HOLDS_KEPT,
            GivenBackOrder.paid_back.is_(False),
        )
    )
    await forget_old_adoptions(session, ADOPTIONS)
    return swept


# -- calendars and their pages ----------------------------------------------------------------


@dataclass
class CalendarChange:
    """A local calendar change not committed yet, and what relations already did for it."""

    calendar: CalendarOut
    relations_calls: list[RelationsCall]
    doing: str = "changing a calendar"  # in words (a problem names it)


def _relation(calendar: Calendar, page_id: int) -> relations.DetachChild:
    return relations.DetachChild(
        parent_type=PAGE, parent_id=page_id, child_type=CALENDAR, child_id=calendar.id
    )


async def _lock_calendar(session: AsyncSession, calendar_id: int) -> Calendar:
    """The calendar's row, locked until commit: changes of one calendar's page are serialised,
    so "which page is it on now" stays true while relations is called."""
    return await lock_live_row(session, Calendar, calendar_id, "calendar")


async def create_calendar(
    session: AsyncSession, link: RelationsLink, request: NewCalendar
) -> CalendarChange:
    """Insert the calendar on its page, then attach it in relations. The insert is flushed first
    (it needs its id, and a taken slug is refused before relations is asked)."""
    name = one_line_name(request.name, "name")
    calendar = Calendar(
        slug=request.slug, name=name, container_type=PAGE, container_id=request.page_id
    )
    session.add(calendar)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict(f"The slug {request.slug!r} is already used", field="slug") from exc
    await session.refresh(calendar)
    attach = RelationsCall(True, _relation(calendar, request.page_id), calendar.name)
    doing = f"attaching calendar {calendar.slug!r} to page {request.page_id}"
    await call_relations(session, link, attach, doing)
    return CalendarChange(to_calendar(calendar), [attach], doing)


async def attach_calendar(
    session: AsyncSession, link: RelationsLink, calendar_id: int, page_id: int
) -> CalendarChange:
    """Put the calendar on ``page_id``: attach it there first (the page never loses a calendar
    mid-move), then detach it from its previous page, then update the container columns.

    Attaching to the page it is already on still calls relations (a no-op there, or a repair
    when relations lost the row, as for the demo calendars)."""
    calendar = await _lock_calendar(session, calendar_id)
    previous_page = calendar.container_id if calendar.container_type == PAGE else None
    done: list[RelationsCall] = []
    attach = RelationsCall(True, _relation(calendar, page_id), calendar.name)
    doing = f"attaching calendar {calendar.id} to page {page_id}"
    await call_relations(
        session,
        link,
        attach,
        doing,
        # On its own page already: the attach only repeats (or repairs) what events stores.
        undo_if_unknown=previous_page != page_id,
    )
    if previous_page == page_id:
        # Nothing moved locally, so nothing would need undoing.
        return CalendarChange(to_calendar(calendar), [])
    done.append(attach)
    if previous_page is not None:
        detach = RelationsCall(False, _relation(calendar, previous_page), calendar.name)
        moving = f"moving calendar {calendar.id} from page {previous_page}"
        try:
            await call_relations(session, link, detach, moving)
        except Problem as exc:
            # Relations not answering the detach: the attach's undo is queued, not waited for.
            if not await revert_relations(link, done, now=not unanswered(exc)):
                # "Nothing was changed" is not true yet: relations shows it on the new page.
                raise Problem(
                    f"Not saved: {moving} needs the relations service, which failed. Relations "
                    f"shows it on page {page_id} as well until it answers again, when that "
                    "is undone.",
                    status_code=exc.status_code,
                    service=relations.SERVICE,
                ) from exc
            raise
        done.append(detach)
    calendar.container_type = PAGE
    calendar.container_id = page_id
    calendar.updated_at = await database_now(session)
    await session.flush()
    return CalendarChange(to_calendar(calendar), done, doing)


async def detach_calendar(
    session: AsyncSession, link: RelationsLink, calendar_id: int
) -> CalendarChange:
    """Take the calendar off its page (relations first, then the container columns). A calendar
    on no page is left as it is: detaching is idempotent."""
    calendar = await _lock_calendar(session, calendar_id)
    if calendar.container_type != PAGE or calendar.container_id is None:
        return CalendarChange(to_calendar(calendar), [])
    detach = RelationsCall(False, _relation(calendar, calendar.container_id), calendar.name)
    doing = f"detaching calendar {calendar.id} from its page"
    await call_relations(session, link, detach, doing)
    calendar.container_type = None
    calendar.container_id = None
    calendar.updated_at = await database_now(session)
    await session.flush()
    return CalendarChange(to_calendar(calendar), [detach], doing)


async def commit_or_revert(
    session: AsyncSession, link: RelationsLink, change: CalendarChange
) -> CalendarOut:
    """Commit a calendar change whose relations calls already succeeded (reversing them should
    the commit fail)."""
    await commit_or_revert_relations(session, link, change.relations_calls, change.doing)
    return change.calendar


async def create_entry(
    session: AsyncSession, calendar_id: int, request: NewEntry, currencies: tuple[str, ...]
) -> EntryOut:
    if request.currency not in currencies:
        raise InvalidInput(
            f"currency: entries are priced in {', '.join(currencies)} here "
            f"(EVENTS_CURRENCIES), not {request.currency}",
            field="currency",
        )
    calendar = await session.get(Calendar, calendar_id)
    if calendar is None or calendar.deleted_at is not None:
        raise NotFound(f"There is no calendar {calendar_id}")
    entry = CalendarEntry(
        calendar_id=calendar.id,
        name=one_line_name(request.name, "name"),
        starts_at=parse_starts_at(request.starts_at),
        cost=check_cost(request.cost),
        currency=request.currency,
        state="open",
    )
    session.add(entry)
    await session.flush()
    await session.refresh(entry)
    return to_entry(entry, None, await database_now(session))


def parse_starts_at(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.strip())
        # In UTC, as it is stored and read back: an offset that takes it past the year 9999 or
        # before the year 1 was stored, and then could not be read (a 500).
        return parsed.astimezone(UTC) if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidInput(
            f"starts_at must be an ISO 8601 date and time, not {value!r}", field="starts_at"
        ) from None


def check_cost(typed: str) -> Decimal:
    cost = decimal_number(typed, "cost")
    if not cost.is_finite() or cost < 0 or cost > MAX_COST:
        raise InvalidInput(f"cost must be between 0 and {MAX_COST}", field="cost")
    if cost != cost.quantize(Decimal("0.01")):
        raise InvalidInput("cost must have at most two decimal places", field="cost")
    return cost.quantize(Decimal("0.01"))


def owner_of(params: dict[str, Any]) -> BookingOwner:
    """The booking owner from ``Identity.as_params()``."""
    return BookingOwner(user_id=params.get("user_id"), session_id=params.get("session_id"))
