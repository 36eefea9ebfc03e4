"""Public routes of events: calendars and their entries (HTML, and JSON under /api), bookings,
tickets, and the editors' admin routes for calendars, their pages and their entries.

Writes take form fields (``application/x-www-form-urlencoded``), from browsers and API clients
alike. Browsers (``Accept: text/html``) are sent back to the page with a 303; API clients get
the JSON of what changed. Errors are problems (problem+json, or an error page for browsers).
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from litestar import Request, Response, Router, get, post
from litestar.di import NamedDependency
from litestar.params import Parameter
from litestar.response import Template

from apps.common.deps import AppSettings, CurrentIdentity, DbSession
from apps.common.identity import Identity
from apps.common.settings import Settings
from apps.common.web import (
    FORM_BODY,
    client_network,
    editors_only,
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


@get("/", operation_id="calendars_html")
async def calendars_page(
    request: Request,
    db_session: DbSession,
    identity: CurrentIdentity,
    settings: AppSettings,
    page_id: PageIdParam = None,
    added: Annotated[int | None, Parameter(ge=1, le=2**63 - 1)] = None,
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
    pages = [c.container_id for c in calendars if c.container_type == "page" and c.container_id]
    titles = await service.page_titles(db_session, [*pages, *([page_id] if page_id else [])])
    return render(
        request,
        "calendars.html",
        calendars=calendars,
        page_id=page_id,
        page_titles=titles,
        added=added_entry,
        is_editor=is_editor(settings, identity),
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
    own_settings: OwnSettings,
    entry_id: IdParam,
) -> Response[Any]:
    # An anonymous hold records its client network, which holds so many at once at most; an
    # account holds so many at once at most.
    limit = service.HoldLimit(
        client_network(request),
        own_settings.anonymous_holds_per_address,
        own_settings.holds_per_account,
    )
    booked = await service.book_entry(
        db_session, entry_id, owner(identity), own_settings.hold, limit
    )
    await db_session.commit()
    return await answer(request, booked, added=entry_id)


@post("/entries/{entry_id:int}/tickets/", operation_id="entry_tickets_add", status_code=201)
async def add_tickets(
    request: Request,
    db_session: DbSession,
    identity: CurrentIdentity,
    own_settings: OwnSettings,
    entry_id: IdParam,
    data: NewTicketsForm,
) -> Response[Any]:
    tickets = await service.add_tickets(
        db_session, entry_id, owner(identity), data, own_settings.hold
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
