"""Public routes of events: calendars and their entries (HTML, and JSON under /api), bookings,
tickets, and the editors' admin routes for calendars, their pages and their entries.

Writes take form fields (``application/x-www-form-urlencoded``), from browsers and API clients
alike. Browsers (``Accept: text/html``) are sent back to the page with a 303; API clients get
the JSON of what changed. Errors are problems (problem+json, or an error page for browsers);
a buyer's booking or tickets form that is refused is the calendars page again instead, the
problem beside the form and what was typed in it kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from litestar import Request, Response, Router, get, post
from litestar.di import NamedDependency
from litestar.params import Parameter
from litestar.response import Template
from sqlalchemy.ext.asyncio import AsyncSession

from apps.common.adoption import START_AFRESH
from apps.common.app_factory import platform_of
from apps.common.db import request_session
from apps.common.deps import AppSettings, CurrentIdentity, DbSession
from apps.common.identity import Identity, identity_from_scope
from apps.common.problems import Problem, said_to_a_person
from apps.common.settings import Settings
from apps.common.web import (
    FORM_BODY,
    REFUSED_FORM_PAGE,
    client_network,
    editors_only,
    form_as_sent,
    read_form,
    redirect_back,
    render,
    safe_next,
    see_other,
    wants_html,
)
from apps.events import service
from apps.events.settings import EventsSettings
from apps.relations.contract import Relations

OwnSettings = NamedDependency[EventsSettings]

PageIdParam = Annotated[int | None, Parameter(ge=1, le=2**63 - 1)]
IdParam = Annotated[int, Parameter(ge=1, le=2**63 - 1)]


# Request bodies are forms (URL-encoded or multipart).
NewTicketsForm = Annotated[service.NewTickets, FORM_BODY]
NewCalendarForm = Annotated[service.NewCalendar, FORM_BODY]
PageChoiceForm = Annotated[service.PageChoice, FORM_BODY]
NewEntryForm = Annotated[service.NewEntry, FORM_BODY]


def owner(identity: Identity) -> service.BookingOwner:
    return service.owner_of(identity.as_params())


def is_editor(settings: Settings, identity: Identity) -> bool:
    return identity.user_id is not None and identity.user_id in settings.editor_user_ids


async def answer(
    request: Request, body: Any, *, status_code: int = 200, added: int | None = None
) -> Response[Any]:
    """JSON for API clients; back to the page the form was on for browsers (``added``: the
    entry whose booking or tickets went into the cart, which that page then confirms)."""
    if wants_html(request):
        if added is None:
            return await redirect_back(request, "/")
        target = (await read_form(request)).get("next")
        back = safe_next(target if isinstance(target, str) else None, "/")
        return see_other(with_added(back, added))
    return Response(body, status_code=status_code)


def with_added(target: str, entry_id: int) -> str:
    """``target`` with ``added=<entry id>`` (replacing any earlier one) and the entry's anchor."""
    parts = urlsplit(target)
    query = [(key, value) for key, value in parse_qsl(parts.query) if key != "added"]
    query.append(("added", str(entry_id)))
    return urlunsplit(("", "", parts.path, urlencode(query), f"entry-{entry_id}"))


# -- reading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """A form of the calendars page the server refused, shown beside that form (``beside``:
    the page shows that form) with what was typed in it."""

    entry_id: int
    form: str  # "book" or "tickets"
    message: str
    invalid: str | None = None  # the field it names
    typed: dict[str, str] = field(default_factory=dict)
    beside: bool = False


# Refusals of a form a buyer can act on where it is (its values, a conflict, a limit): the page
# again. Anything else (no such entry, a dependency down) is the error page, and so is a session
# sign-in gave away, whose way out (a form to sign out and start afresh) that page offers.
REFUSED_HERE = (409, 422, 429)


def shown_beside_the_form(request: Request, problem: Problem) -> bool:
    return (
        wants_html(request)
        and problem.status_code in REFUSED_HERE
        and not problem.body_extra.get(START_AFRESH)
    )


@get("/", operation_id="calendars_html")
async def calendars_page(
    request: Request,
    db_session: DbSession,
    identity: CurrentIdentity,
    settings: AppSettings,
    page_id: PageIdParam = None,
    added: Annotated[int | None, Parameter(ge=1, le=2**63 - 1)] = None,
) -> Template:
    return await calendars_view(
        request, db_session, identity, settings, page_id=page_id, added=added
    )


async def calendars_view(
    request: Request,
    db_session: AsyncSession,
    identity: Identity,
    settings: Settings,
    *,
    page_id: int | None,
    added: int | None = None,
    refusal: Refusal | None = None,
    back: str | None = None,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Template:
    calendars = await service.list_calendars(db_session, owner=owner(identity), page_id=page_id)
    # What the last form put in the cart, as the database has it (never what the URL claims).
    added_entry = next(
        (
            entry
            for calendar in calendars
            for entry in calendar.entries
            if entry.id == added and (entry.your_tickets or entry.booked_by_you)
        ),
        None,
    )
    if refusal is not None:
        shown = [entry for calendar in calendars for entry in calendar.entries]
        beside = any(
            entry.id == refusal.entry_id
            and (entry.bookable if refusal.form == "book" else entry.state != "cancelled")
            for entry in shown
        )
        refusal = replace(refusal, beside=beside)
    pages = [c.container_id for c in calendars if c.container_type == "page" and c.container_id]
    titles = await service.page_titles(db_session, [*pages, *([page_id] if page_id else [])])
    return render(
        request,
        "calendars.html",
        status_code=status_code,
        headers=headers,
        calendars=calendars,
        page_id=page_id,
        page_titles=titles,
        added=added_entry,
        refusal=refusal,
        form_back=back,
        is_editor=is_editor(settings, identity),
    )


async def refused_page(
    request: Request,
    db_session: AsyncSession,
    identity: Identity,
    settings: Settings,
    entry_id: int,
    form: str,
    problem: Problem,
) -> Template:
    """The calendars page the refused form was on (its ``next``), the problem beside it, with
    the problem's status and headers (a hold limit's Retry-After)."""
    sent = await form_as_sent(request)
    target = sent.get("next")
    back = safe_next(target if isinstance(target, str) else None, "/")
    typed = {
        name: value
        for name in ("ticket_type", "quantity")
        if isinstance(value := sent.get(name), str)
    }
    errors = problem.body_extra.get("errors") or []
    refusal = Refusal(
        entry_id,
        form,
        said_to_a_person(problem),
        invalid=str(errors[0]["field"]) if errors else problem.field,
        typed=typed,
    )
    return await calendars_view(
        request,
        db_session,
        identity,
        settings,
        page_id=page_of(back),
        refusal=refusal,
        back=back,
        status_code=problem.status_code,
        headers=dict(problem.headers or {}),
    )


def page_of(target: str) -> int | None:
    """The ``page_id`` of a calendars page's address, when it names one."""
    value = dict(parse_qsl(urlsplit(target).query)).get("page_id", "")
    if value.isascii() and value.isdigit() and 1 <= int(value) <= 2**63 - 1:
        return int(value)
    return None


async def refused_tickets_form(request: Request, problem: Problem) -> Template | None:
    """A browser's tickets form Litestar would refuse before the handler (its values do not
    convert): the page again (apps.common.web.read_form_body_first)."""
    entry_id = int(request.path_params["entry_id"])
    if not 1 <= entry_id <= 2**63 - 1:
        return None  # the address names no entry: Litestar's 404 (NothingHere), as for JSON
    platform = platform_of(request.app)
    return await refused_page(
        request,
        request_session(platform.sessionmaker, request.scope),
        identity_from_scope(request.scope),
        platform.settings,
        entry_id,
        "tickets",
        problem,
    )


@get("/api/calendars", operation_id="calendars")
async def api_calendars(
    db_session: DbSession, identity: CurrentIdentity, page_id: PageIdParam = None
) -> list[service.CalendarWithEntries]:
    return await service.list_calendars(db_session, owner=owner(identity), page_id=page_id)


# -- booking ----------------------------------------------------------------------------------


@post("/entries/{entry_id:int}/book/", operation_id="entry_book", status_code=200)
async def book_entry(
    request: Request,
    db_session: DbSession,
    identity: CurrentIdentity,
    settings: AppSettings,
    own_settings: OwnSettings,
    entry_id: IdParam,
) -> Response[Any] | Template:
    # An anonymous hold records its client network, which holds so many at once at most; an
    # account holds so many at once at most.
    limit = service.HoldLimit(
        client_network(request),
        own_settings.anonymous_holds_per_address,
        own_settings.holds_per_account,
    )
    try:
        booked = await service.book_entry(
            db_session, entry_id, owner(identity), own_settings.hold, limit
        )
    except Problem as problem:
        if not shown_beside_the_form(request, problem):
            raise
        await db_session.rollback()
        return await refused_page(
            request, db_session, identity, settings, entry_id, "book", problem
        )
    await db_session.commit()
    return await answer(request, booked, added=entry_id)


@post(
    "/entries/{entry_id:int}/tickets/",
    operation_id="entry_tickets_add",
    status_code=201,
    opt={REFUSED_FORM_PAGE: refused_tickets_form},
)
async def add_tickets(
    request: Request,
    db_session: DbSession,
    identity: CurrentIdentity,
    settings: AppSettings,
    own_settings: OwnSettings,
    entry_id: IdParam,
    data: NewTicketsForm,
) -> Response[Any] | Template:
    try:
        tickets = await service.add_tickets(
            db_session, entry_id, owner(identity), data, own_settings.hold
        )
    except Problem as problem:
        # The buyer's form again, the problem beside it (an API client gets the problem).
        if not shown_beside_the_form(request, problem):
            raise
        await db_session.rollback()
        return await refused_page(
            request, db_session, identity, settings, entry_id, "tickets", problem
        )
    await db_session.commit()
    return await answer(request, tickets, status_code=201, added=entry_id)


# -- admin (editors only) ---------------------------------------------------------------------


@post("/calendars/", operation_id="calendar_create", status_code=201)
async def create_calendar(
    request: Request, db_session: DbSession, relations: Relations, data: NewCalendarForm
) -> Response[Any]:
    change = await service.create_calendar(db_session, relations, data)
    calendar = await service.commit_or_revert(db_session, relations, change)
    return await answer(request, calendar, status_code=201)


@post("/calendars/{calendar_id:int}/attach/", operation_id="calendar_attach", status_code=200)
async def attach_calendar(
    request: Request,
    db_session: DbSession,
    relations: Relations,
    calendar_id: IdParam,
    data: PageChoiceForm,
) -> Response[Any]:
    change = await service.attach_calendar(db_session, relations, calendar_id, data.page_id)
    calendar = await service.commit_or_revert(db_session, relations, change)
    return await answer(request, calendar)


@post("/calendars/{calendar_id:int}/detach/", operation_id="calendar_detach", status_code=200)
async def detach_calendar(
    request: Request, db_session: DbSession, relations: Relations, calendar_id: IdParam
) -> Response[Any]:
    change = await service.detach_calendar(db_session, relations, calendar_id)
    calendar = await service.commit_or_revert(db_session, relations, change)
    return await answer(request, calendar)


@post(
    "/calendars/{calendar_id:int}/entries/",
    operation_id="calendar_entry_create",
    status_code=201,
)
async def create_entry(
    request: Request,
    db_session: DbSession,
    own_settings: OwnSettings,
    calendar_id: IdParam,
    data: NewEntryForm,
) -> Response[Any]:
    entry = await service.create_entry(db_session, calendar_id, data, own_settings.currencies)
    await db_session.commit()
    return await answer(request, entry, status_code=201)


admin = Router(
    path="/admin",
    route_handlers=[create_calendar, attach_calendar, detach_calendar, create_entry],
    guards=[editors_only],
    tags=["events admin"],
)

handlers = [calendars_page, api_calendars, book_entry, add_tickets, admin]
