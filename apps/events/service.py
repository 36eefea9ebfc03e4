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
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

import msgspec
from sqlalchemy import (
    Subquery,
    any_,
    bindparam,
    func,
    insert,
    literal,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from apps.common.internal_client import InternalCallError, call_action
from apps.common.problems import Conflict, InvalidInput, NotFound, Problem
from apps.events.models import (
    DEFAULT_CURRENCY,
    SESSION_ID_LENGTH,
    Calendar,
    CalendarEntry,
    Ticket,
)

logger = logging.getLogger("rose.events")

PAGE = "page"
CALENDAR = "calendar"
MAX_COST = Decimal("99999999.99")  # numeric(10, 2)
MAX_IDS_PER_ORDER = 1000
# A ticket's title in the cart: entry name, en dash, ticket type (as in the export view).
TICKET_TITLE_SEPARATOR = " \u2013 "

DbId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
Slug = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")]
TicketType = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]


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
    cost: Decimal
    currency: Currency = DEFAULT_CURRENCY


class NewTickets(msgspec.Struct):
    ticket_type: TicketType
    quantity: Annotated[int, msgspec.Meta(ge=1, le=20)] = 1


class ConfirmForOrder(msgspec.Struct, forbid_unknown_fields=True):
    order_id: DbId
    entry_ids: Annotated[list[DbId], msgspec.Meta(max_length=MAX_IDS_PER_ORDER)] = []
    ticket_ids: Annotated[list[DbId], msgspec.Meta(max_length=MAX_IDS_PER_ORDER)] = []


class AdoptBookings(msgspec.Struct, forbid_unknown_fields=True):
    user_id: DbId
    session_id: Annotated[str, msgspec.Meta(min_length=1, max_length=SESSION_ID_LENGTH)]


@dataclass(frozen=True)
class BookingOwner:
    """Who books: a signed-in user, else the anonymous session (``Identity.as_params()``)."""

    user_id: int | None = None
    session_id: str | None = None

    def __post_init__(self) -> None:
        if (self.user_id is None) == (self.session_id is None):
            raise ValueError("a booking owner is a user id or a session id, exactly one")


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


class CalendarWithEntries(CalendarOut):
    entries: list[EntryOut]


class TicketOut(msgspec.Struct):
    id: int
    calendar_entry_id: int
    ticket_type: str
    price: Decimal
    currency: str
    state: str


class PendingBooking(msgspec.Struct):
    """One row of ``export.pending_bookings`` (and of the ``pending-bookings`` data)."""

    kind: str
    id: int
    user_id: int | None
    session_id: str | None
    title: str
    price: Decimal
    currency: str
    calendar_id: int
    starts_at: datetime
    container_type: str | None
    container_id: int | None


class Unconfirmed(msgspec.Struct):
    entry_ids: list[int]
    ticket_ids: list[int]


class ConfirmResult(msgspec.Struct):
    # Entries and tickets among the ids that are confirmed for this order (replays included).
    confirmed: int
    # Ids that are not confirmed for this order: confirmed for another order, never booked,
    # cancelled, or unknown. Reported, not refused: the order is paid either way, and refusing
    # would only make the caller's outbox retry for ever.
    unconfirmed: Unconfirmed


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
    booked_by_you = (
        owner is not None
        and row.state in ("pending", "confirmed")
        and (row.user_id, row.session_id) == (owner.user_id, owner.session_id)
    )
    return EntryOut(
        id=row.id,
        calendar_id=row.calendar_id,
        name=row.name,
        starts_at=row.starts_at,
        cost=row.cost,
        currency=row.currency,
        state=row.state,
        bookable=row.state == "open" and row.starts_at > now,
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
    by_calendar: dict[int, list[EntryOut]] = {calendar.id: [] for calendar in calendars}
    for entry in entries:
        by_calendar[entry.calendar_id].append(to_entry(entry, owner, now))
    return [
        CalendarWithEntries(**msgspec.structs.asdict(to_calendar(c)), entries=by_calendar[c.id])
        for c in calendars
    ]


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
            CalendarEntry.state == "pending",
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
            Ticket.state == "pending",
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


async def book_entry(session: AsyncSession, entry_id: int, owner: BookingOwner) -> EntryOut:
    """Make an open, not yet started entry pending for ``owner``. One conditional UPDATE, so of
    concurrent bookings of one entry exactly one wins; the others see it is no longer open."""
    booked = await session.scalar(
        update(CalendarEntry)
        .where(
            CalendarEntry.id == entry_id,
            CalendarEntry.state == "open",
            CalendarEntry.starts_at > func.now(),
            CalendarEntry.deleted_at.is_(None),
        )
        .values(
            state="pending",
            user_id=owner.user_id,
            session_id=owner.session_id,
            updated_at=func.now(),
        )
        .returning(CalendarEntry)
    )
    now = await database_now(session)
    if booked is not None:
        return to_entry(booked, owner, now)
    entry = await session.get(CalendarEntry, entry_id)
    if entry is None or entry.deleted_at is not None:
        raise NotFound(f"There is no calendar entry {entry_id}")
    if entry.state != "open":
        raise Conflict(f"Calendar entry {entry_id} cannot be booked: it is {entry.state}")
    raise Conflict(f"Calendar entry {entry_id} cannot be booked: it has already started")


async def add_tickets(
    session: AsyncSession, entry_id: int, owner: BookingOwner, request: NewTickets
) -> list[TicketOut]:
    """Pending tickets for an entry that is not cancelled and has not started, at its cost.
    The entry's row is locked, so a cancellation cannot slip in between check and insert."""
    entry = await session.scalar(
        select(CalendarEntry)
        .where(CalendarEntry.id == entry_id, CalendarEntry.deleted_at.is_(None))
        .with_for_update()
    )
    if entry is None:
        raise NotFound(f"There is no calendar entry {entry_id}")
    if entry.state == "cancelled":
        raise Conflict(f"Calendar entry {entry_id} is cancelled: no tickets")
    if entry.starts_at <= await database_now(session):
        raise Conflict(f"Calendar entry {entry_id} has already started: no tickets")
    tickets = await session.scalars(
        insert(Ticket).returning(Ticket),
        [
            {
                "calendar_entry_id": entry.id,
                "ticket_type": request.ticket_type,
                "price": entry.cost,
                "currency": entry.currency,
                "state": "pending",
                "user_id": owner.user_id,
                "session_id": owner.session_id,
            }
        ]
        * request.quantity,
    )
    return [to_ticket(ticket) for ticket in tickets]


async def adopt_bookings(session: AsyncSession, request: AdoptBookings) -> dict[str, int]:
    """At sign-in, the anonymous session's pending bookings become the user's, so they stay in
    the cart (which looks bookings up by user id once signed in). A second call adopts 0."""
    adopted = 0
    for model in (CalendarEntry, Ticket):
        result = await session.execute(
            update(model)
            .where(
                model.session_id == request.session_id,
                model.user_id.is_(None),
                model.state == "pending",
            )
            .values(user_id=request.user_id, session_id=None, updated_at=func.now())
            .returning(model.id)
        )
        adopted += len(result.all())
    return {"adopted": adopted}


# -- confirming -------------------------------------------------------------------------------


async def confirm_for_order(session: AsyncSession, request: ConfirmForOrder) -> ConfirmResult:
    """Pending entries and tickets among the ids become confirmed for the order.

    Idempotent per order: the answer counts what is confirmed *for this order* among the ids, so
    a replay confirms nothing new and answers the same. A row pending for nobody or confirmed
    for another order is never taken over (the UPDATE only matches ``state = 'pending'``)."""
    results: dict[str, list[int]] = {}
    confirmed = 0
    for model, ids in ((CalendarEntry, request.entry_ids), (Ticket, request.ticket_ids)):
        wanted = sorted(set(ids))
        if not wanted:
            results[model.__tablename__] = []
            continue
        id_list = bindparam(f"{model.__tablename__}_ids", wanted, type_=ARRAY(model.id.type))
        await session.execute(
            update(model)
            .where(model.id == any_(id_list), model.state == "pending")
            .values(state="confirmed", order_id=request.order_id, updated_at=func.now())
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
            "order %s: not confirmed for it: entries %s, tickets %s",
            request.order_id,
            unconfirmed.entry_ids,
            unconfirmed.ticket_ids,
        )
    return ConfirmResult(confirmed=confirmed, unconfirmed=unconfirmed)


# -- calendars and their pages ----------------------------------------------------------------


@dataclass(frozen=True)
class RelationsCall:
    """One attach-child or detach-child of a calendar on a page; :meth:`undo` reverses it."""

    action: str
    relation: dict[str, Any]
    label: str | None = None

    @property
    def payload(self) -> dict[str, Any]:
        if self.action == "attach-child":
            return {**self.relation, "label": self.label}
        return dict(self.relation)

    def undo(self) -> RelationsCall:
        opposite = "detach-child" if self.action == "attach-child" else "attach-child"
        return RelationsCall(opposite, self.relation, self.label)


@dataclass
class CalendarChange:
    """A local calendar change not committed yet, and what relations already did for it."""

    calendar: CalendarOut
    relations_calls: list[RelationsCall]


def _relation(calendar: Calendar, page_id: int) -> dict[str, Any]:
    return {
        "parent_type": PAGE,
        "parent_id": page_id,
        "child_type": CALENDAR,
        "child_id": calendar.id,
    }


async def _call_relations(call: RelationsCall, doing: str) -> None:
    # A fresh key per call: the client may then retry a timeout or a 503 safely, and relations
    # applies the call once. (attach/detach are no-ops when repeated, but a key makes it exact.)
    try:
        await call_action(
            "relations", call.action, call.payload, idempotency_key=f"events-{uuid.uuid4()}"
        )
    except InternalCallError as exc:
        raise Problem(
            f"Nothing was changed: {doing} needs the relations service, which failed ({exc})",
            status_code=exc.http_status,
            service="relations",
        ) from exc


async def _lock_calendar(session: AsyncSession, calendar_id: int) -> Calendar:
    """The calendar's row, locked until commit: changes of one calendar's page are serialised,
    so "which page is it on now" stays true while relations is called."""
    calendar = await session.scalar(
        select(Calendar)
        .where(Calendar.id == calendar_id, Calendar.deleted_at.is_(None))
        .with_for_update()
    )
    if calendar is None:
        raise NotFound(f"There is no calendar {calendar_id}")
    return calendar


async def create_calendar(session: AsyncSession, request: NewCalendar) -> CalendarChange:
    """Insert the calendar on its page, then attach it in relations. The insert is flushed first
    (it needs its id, and a taken slug is refused before relations is asked)."""
    calendar = Calendar(
        slug=request.slug, name=request.name, container_type=PAGE, container_id=request.page_id
    )
    session.add(calendar)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict(f"The slug {request.slug!r} is already used", field="slug") from exc
    await session.refresh(calendar)
    attach = RelationsCall("attach-child", _relation(calendar, request.page_id), calendar.name)
    await _call_relations(attach, f"attaching calendar {calendar.slug!r} to page {request.page_id}")
    return CalendarChange(to_calendar(calendar), [attach])


async def attach_calendar(session: AsyncSession, calendar_id: int, page_id: int) -> CalendarChange:
    """Put the calendar on ``page_id``: attach it there first (the page never loses a calendar
    mid-move), then detach it from its previous page, then update the container columns.

    Attaching to the page it is already on still calls relations (a no-op there, or a repair
    when relations lost the row, as for the demo calendars)."""
    calendar = await _lock_calendar(session, calendar_id)
    previous_page = calendar.container_id if calendar.container_type == PAGE else None
    done: list[RelationsCall] = []
    attach = RelationsCall("attach-child", _relation(calendar, page_id), calendar.name)
    await _call_relations(attach, f"attaching calendar {calendar.id} to page {page_id}")
    if previous_page == page_id:
        # Nothing moved locally, so nothing would need undoing.
        return CalendarChange(to_calendar(calendar), [])
    done.append(attach)
    if previous_page is not None:
        detach = RelationsCall("detach-child", _relation(calendar, previous_page), calendar.name)
        try:
            await _call_relations(
                detach, f"moving calendar {calendar.id} from page {previous_page}"
            )
        except Problem:
            await revert_relations(done)
            raise
        done.append(detach)
    calendar.container_type = PAGE
    calendar.container_id = page_id
    calendar.updated_at = await database_now(session)
    await session.flush()
    return CalendarChange(to_calendar(calendar), done)


async def detach_calendar(session: AsyncSession, calendar_id: int) -> CalendarChange:
    """Take the calendar off its page (relations first, then the container columns). A calendar
    on no page is left as it is: detaching is idempotent."""
    calendar = await _lock_calendar(session, calendar_id)
    if calendar.container_type != PAGE or calendar.container_id is None:
        return CalendarChange(to_calendar(calendar), [])
    detach = RelationsCall(
        "detach-child", _relation(calendar, calendar.container_id), calendar.name
    )
    await _call_relations(detach, f"detaching calendar {calendar.id} from its page")
    calendar.container_type = None
    calendar.container_id = None
    calendar.updated_at = await database_now(session)
    await session.flush()
    return CalendarChange(to_calendar(calendar), [detach])


async def revert_relations(calls: Sequence[RelationsCall]) -> None:
    """Undo relations calls, newest first. Best effort: a failure is logged, not raised, because
    the caller is already reporting the error that made it revert."""
    for call in reversed(calls):
        undo = call.undo()
        try:
            await call_action("relations", undo.action, undo.payload)
        except InternalCallError:
            logger.exception(
                "could not revert relations %s %s; relations and events disagree until the "
                "calendar is attached again",
                call.action,
                call.payload,
            )


async def commit_or_revert(session: AsyncSession, change: CalendarChange) -> CalendarOut:
    """Commit a calendar change whose relations calls already succeeded. Should the commit fail,
    reverse those calls, so relations does not keep an attachment events never stored."""
    try:
        await session.commit()
    except Exception:
        await revert_relations(change.relations_calls)
        raise
    return change.calendar


async def create_entry(session: AsyncSession, calendar_id: int, request: NewEntry) -> EntryOut:
    calendar = await session.get(Calendar, calendar_id)
    if calendar is None or calendar.deleted_at is not None:
        raise NotFound(f"There is no calendar {calendar_id}")
    entry = CalendarEntry(
        calendar_id=calendar.id,
        name=request.name,
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
    except ValueError:
        raise InvalidInput(
            f"starts_at must be an ISO 8601 date and time, not {value!r}", field="starts_at"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def check_cost(cost: Decimal) -> Decimal:
    if not cost.is_finite() or cost < 0 or cost > MAX_COST:
        raise InvalidInput(f"cost must be between 0 and {MAX_COST}", field="cost")
    if cost != cost.quantize(Decimal("0.01")):
        raise InvalidInput("cost must have at most two decimal places", field="cost")
    return cost.quantize(Decimal("0.01"))


def owner_of(params: dict[str, Any]) -> BookingOwner:
    """The booking owner from ``Identity.as_params()``."""
    return BookingOwner(user_id=params.get("user_id"), session_id=params.get("session_id"))
