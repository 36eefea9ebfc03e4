"""events over real HTTP (in-process ASGI) against its real database, with relations running
beside it: calendars on pages kept in step with relations, bookings, tickets, the export view
cart reads through postgres_fdw, and confirm-for-order."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import make_url

from apps.common.asgi import read_body, replaying_receive, send_problem
from apps.common.identity import COOKIE_NAME, CSRF_FIELD, SessionCodec
from tests.conftest import SESSION_SECRET, admin_connect, in_process_stack, lock_waiters
from tests.integration.blog_fixtures import insert_post
from tests.integration.commerce_fixtures import AnswersLost, sweep_ended_holds_now
from tests.signed import internal_get, internal_post
from tests.waiting import eventually

JSON = {"Accept": "application/json"}
HTML = {"Accept": "text/html"}


# -- helpers ----------------------------------------------------------------------------------


async def sign_in(stack, user_id: int, service: str = "events") -> httpx.AsyncClient:
    """A browser-like client of events (or ``service``) signed in as ``user_id``, sending its
    CSRF token."""
    client = stack.browser(service)
    response = await client.get("/auth/dev-login", params={"user_id": user_id}, headers=JSON)
    assert response.status_code == 200, response.text
    client.headers["X-CSRF-Token"] = response.json()["csrf_token"]
    return client


async def anonymous(stack) -> httpx.AsyncClient:
    client = stack.browser("events")
    response = await client.get("/auth/session", headers=JSON)
    assert response.status_code == 200
    client.headers["X-CSRF-Token"] = response.json()["csrf_token"]
    return client


def session_id_of(client: httpx.AsyncClient) -> str:
    session = SessionCodec(SESSION_SECRET).decode(client.cookies[COOKIE_NAME])
    assert session is not None
    return session.identity.session_id


def events_rows(server, sql: str, params: tuple = ()) -> list[tuple]:
    with admin_connect(server, "events") as connection:
        return connection.execute(sql, params).fetchall()


def relation_rows(server) -> list[tuple]:
    """Every relations row, detached ones included: (parent, child, active)."""
    with admin_connect(server, "relations") as connection:
        return connection.execute(
            """
            SELECT parent_type, parent_id, child_type, child_id, deleted_at IS NULL
            FROM relations.container_relations ORDER BY parent_id, id
            """
        ).fetchall()


def active_relations(server) -> list[tuple]:
    return [row[:4] for row in relation_rows(server) if row[4]]


def calendar_container(server, calendar_id: int) -> tuple:
    return events_rows(
        server,
        "SELECT container_type, container_id FROM events.calendars WHERE id = %s",
        (calendar_id,),
    )[0]


def insert_calendar(server, slug: str = "tours", page_id: int | None = 1) -> int:
    return events_rows(
        server,
        """
        INSERT INTO events.calendars (slug, name, container_type, container_id)
        VALUES (%s, %s, %s, %s) RETURNING id
        """,
        (slug, slug.capitalize(), "page" if page_id else None, page_id),
    )[0][0]


def insert_entry(
    server,
    calendar_id: int,
    name: str = "Orchard walk",
    *,
    starts_in: timedelta = timedelta(days=3),
    cost: str = "12.50",
    state: str = "open",
) -> int:
    return events_rows(
        server,
        """
        INSERT INTO events.calendar_entries (calendar_id, name, starts_at, cost, state)
        VALUES (%s, %s, %s, %s, %s) RETURNING id
        """,
        (calendar_id, name, datetime.now(UTC) + starts_in, Decimal(cost), state),
    )[0][0]


def entry_state(server, entry_id: int) -> tuple:
    return events_rows(
        server,
        "SELECT state, user_id, session_id, order_id FROM events.calendar_entries WHERE id = %s",
        (entry_id,),
    )[0]


def names_field(problem: dict[str, Any], field: str) -> bool:
    """The problem's errors name ``field`` (or an item of it: ``entry_ids[0]``)."""
    return any(error["field"].split("[")[0] == field for error in problem.get("errors") or [])


def assert_problem(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == status
    for word in words:
        assert word in problem["detail"], problem
    return problem


@pytest.fixture
async def stack(clean_db, credentials) -> AsyncIterator[Any]:
    async with in_process_stack(clean_db, credentials, ["events", "relations"]) as running:
        yield running


@pytest.fixture
async def editor(stack) -> AsyncIterator[httpx.AsyncClient]:
    client = await sign_in(stack, 1)  # conftest's settings make user 1 an editor
    yield client
    await client.aclose()


# -- calendars on pages: plan verification 1 for events ---------------------------------------


async def test_create_attach_detach_keep_relations_in_step(stack, editor, clean_db):
    created = await editor.post(
        "/admin/calendars/", data={"name": "Farm tours", "slug": "farm-tours", "page_id": "5"}
    )
    assert created.status_code == 201, created.text
    calendar = created.json()
    calendar_id = calendar["id"]
    assert (calendar["slug"], calendar["container_type"], calendar["container_id"]) == (
        "farm-tours",
        "page",
        5,
    )
    assert calendar_container(clean_db, calendar_id) == ("page", 5)
    assert relation_rows(clean_db) == [("page", 5, "calendar", calendar_id, True)]
    with admin_connect(clean_db, "relations") as connection:
        label = connection.execute("SELECT label FROM relations.container_relations").fetchone()
    assert label == ("Farm tours",)

    moved = await editor.post(f"/admin/calendars/{calendar_id}/attach/", data={"page_id": "6"})
    assert moved.status_code == 200, moved.text
    assert (moved.json()["container_type"], moved.json()["container_id"]) == ("page", 6)
    assert calendar_container(clean_db, calendar_id) == ("page", 6)
    assert relation_rows(clean_db) == [
        ("page", 5, "calendar", calendar_id, False),
        ("page", 6, "calendar", calendar_id, True),
    ]

    # Attaching to the page it is on changes nothing, anywhere.
    again = await editor.post(f"/admin/calendars/{calendar_id}/attach/", data={"page_id": "6"})
    assert again.status_code == 200
    assert again.json()["container_id"] == 6
    assert active_relations(clean_db) == [("page", 6, "calendar", calendar_id)]
    assert len(relation_rows(clean_db)) == 2

    detached = await editor.post(f"/admin/calendars/{calendar_id}/detach/")
    assert detached.status_code == 200, detached.text
    assert (detached.json()["container_type"], detached.json()["container_id"]) == (None, None)
    assert calendar_container(clean_db, calendar_id) == (None, None)
    assert active_relations(clean_db) == []

    # Detaching what is on no page is a no-op; attaching again restores relations' row.
    assert (await editor.post(f"/admin/calendars/{calendar_id}/detach/")).status_code == 200
    back = await editor.post(f"/admin/calendars/{calendar_id}/attach/", data={"page_id": "5"})
    assert back.status_code == 200
    assert calendar_container(clean_db, calendar_id) == ("page", 5)
    assert relation_rows(clean_db) == [
        ("page", 5, "calendar", calendar_id, True),
        ("page", 6, "calendar", calendar_id, False),
    ]


async def test_attaching_repairs_a_calendar_relations_does_not_know(stack, editor, clean_db):
    # Like the demo calendars: stored on page 1 by events, never attached in relations.
    calendar_id = insert_calendar(clean_db, "tours", page_id=1)
    response = await editor.post(f"/admin/calendars/{calendar_id}/attach/", data={"page_id": "1"})
    assert response.status_code == 200
    assert relation_rows(clean_db) == [("page", 1, "calendar", calendar_id, True)]


async def test_admin_forms_from_a_browser_redirect_back(stack, editor, clean_db):
    page = await editor.get("/", headers=HTML)
    token = editor.headers.pop("X-CSRF-Token")
    assert f'value="{token}"' in page.text  # the forms carry the CSRF field
    created = await editor.post(
        "/admin/calendars/",
        data={"name": "Tastings", "slug": "tastings", "page_id": "2", CSRF_FIELD: token},
        headers=HTML,
    )
    assert created.status_code == 303
    assert created.headers["location"] == "/"
    calendar_id = events_rows(clean_db, "SELECT id FROM events.calendars")[0][0]
    entry = await editor.post(
        f"/admin/calendars/{calendar_id}/entries/",
        data={
            "name": "Cider tasting",
            "starts_at": (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M"),
            "cost": "18",
            CSRF_FIELD: token,
            "next": "/?page_id=2",
        },
        headers=HTML,
    )
    assert entry.status_code == 303
    assert entry.headers["location"] == "/?page_id=2"
    assert active_relations(clean_db) == [("page", 2, "calendar", calendar_id)]

    listing = await editor.get("/?page_id=2", headers=HTML)
    assert listing.status_code == 200
    assert "Tastings" in listing.text
    assert "Cider tasting" in listing.text
    assert "18.00 EUR" in listing.text
    assert f'action="/admin/calendars/{calendar_id}/detach/"' in listing.text


async def test_a_taken_slug_is_409_before_relations_is_asked(stack, editor, clean_db):
    insert_calendar(clean_db, "tours", page_id=None)
    response = await editor.post(
        "/admin/calendars/", data={"name": "Tours", "slug": "tours", "page_id": "3"}
    )
    assert_problem(response, 409, "tours")
    assert relation_rows(clean_db) == []
    assert events_rows(clean_db, "SELECT count(*) FROM events.calendars") == [(1,)]


async def test_relations_down_is_a_clear_problem_and_nothing_is_written(clean_db, credentials):
    calendar_id = insert_calendar(clean_db, "tours", page_id=5)
    async with in_process_stack(clean_db, credentials, ["events"]) as events_only:
        editor = await sign_in(events_only, 1)
        created = await editor.post(
            "/admin/calendars/", data={"name": "New", "slug": "new", "page_id": "5"}
        )
        problem = assert_problem(created, 503, "relations", "Nothing was changed")
        assert problem["service"] == "relations"
        moved = await editor.post(f"/admin/calendars/{calendar_id}/attach/", data={"page_id": "6"})
        assert_problem(moved, 503, "relations")
        # The failed request let go of the calendar's row at once (no lock left behind).
        with admin_connect(clean_db, "events") as connection:
            locked = connection.execute(
                "SELECT id FROM events.calendars WHERE id = %s FOR UPDATE NOWAIT", (calendar_id,)
            ).fetchall()
            idle = connection.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE usename = 'events_app' AND state = 'idle in transaction'"
            ).fetchone()
        assert locked == [(calendar_id,)]
        assert idle == (0,)
        detached = await editor.post(f"/admin/calendars/{calendar_id}/detach/")
        assert_problem(detached, 503, "relations")
        await editor.aclose()
    assert events_rows(
        clean_db, "SELECT slug, container_type, container_id FROM events.calendars"
    ) == [("tours", "page", 5)]


async def test_a_move_whose_attach_timed_out_but_was_applied_is_undone(stack, editor, clean_db):
    """Audit s20 M1 (a), for calendars: relations attached the calendar to the new page, but
    its answer came after events' timeout. Events kept the calendar where it was and said
    "Nothing was changed", while relations showed it on both pages. The attach is undone (by
    events' outbox, queued before the answer, which says so)."""
    calendar_id = (
        await editor.post("/admin/calendars/", data={"name": "Tours", "slug": "t", "page_id": "5"})
    ).json()["id"]
    for client in stack.all_internal:
        client.route("relations", AnswersLost(stack.apps["relations"], "attach-child", lost=3))
    moved = await editor.post(f"/admin/calendars/{calendar_id}/attach/", data={"page_id": "6"})
    assert_problem(moved, 503, "relations", "will be undone when relations answers again")
    assert calendar_container(clean_db, calendar_id) == ("page", 5)
    relay = stack.apps["events"].state.relations_link.relay

    def due_now() -> None:
        with admin_connect(clean_db, "events") as connection:
            connection.execute("UPDATE events.outbox SET next_attempt_at = now()")

    for _ in range(50):  # bounded: a relay that never delivers fails below
        # In a thread: the relay's own loop may hold the message's row meanwhile.
        await asyncio.to_thread(due_now)
        await relay.deliver_due()
        if active_relations(clean_db) == [("page", 5, "calendar", calendar_id)]:
            break
        await asyncio.sleep(0.1)
    assert active_relations(clean_db) == [("page", 5, "calendar", calendar_id)]


class DetachUnreachable:
    """relations, except that until ``back`` every detach-child finds it unreachable."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.back = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not self.back and scope.get("path") == "/internal/actions/detach-child":
            raise httpx.ConnectError("relations is unreachable")
        await self.app(scope, receive, send)


async def test_a_move_relations_could_not_finish_or_undo_is_undone_once_it_answers(
    stack, editor, clean_db
):
    """Moving a calendar: relations attached it to the new page, then could not be reached to
    detach it from the old one, nor to undo the attach. Events kept it where it was, and the
    undo was only logged: relations showed it on both pages for good, while the answer said
    "Nothing was changed". Now the undo is queued in events' outbox, the answer says relations
    shows it on the new page until it answers, and events' relay then detaches it there."""
    calendar_id = (
        await editor.post("/admin/calendars/", data={"name": "Tours", "slug": "t", "page_id": "5"})
    ).json()["id"]
    down = DetachUnreachable(stack.apps["relations"])
    for client in stack.all_internal:
        client.route("relations", down)
    moved = await editor.post(f"/admin/calendars/{calendar_id}/attach/", data={"page_id": "6"})
    problem = assert_problem(moved, 503, "relations", "page 6")
    assert "Nothing was changed" not in problem["detail"], problem
    assert "undone" in problem["detail"], problem
    assert calendar_container(clean_db, calendar_id) == ("page", 5)
    assert active_relations(clean_db) == [
        ("page", 5, "calendar", calendar_id),
        ("page", 6, "calendar", calendar_id),
    ]
    down.back = True
    relay = stack.apps["events"].state.relations_link.relay
    for _ in range(50):  # bounded: a relay that never delivers fails below
        with admin_connect(clean_db, "events") as connection:
            connection.execute("UPDATE events.outbox SET next_attempt_at = now()")
        await relay.deliver_due()
        if active_relations(clean_db) == [("page", 5, "calendar", calendar_id)]:
            break
        await asyncio.sleep(0.1)
    assert active_relations(clean_db) == [("page", 5, "calendar", calendar_id)]
    with admin_connect(clean_db, "events") as connection:
        assert connection.execute(
            "SELECT action, delivered_at IS NOT NULL FROM events.outbox"
        ).fetchall() == [("detach-child", True)]


class SilentToDetach:
    """A real HTTP server in front of relations: every request but detach-child is passed to
    relations (in process) and its answer sent back; a detach-child is read and never answered
    (relations stalled after the attach). ``requests``: each request's path, in order."""

    def __init__(self, relations: Any) -> None:
        self.requests: list[str] = []
        self._relations = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=relations), base_url="http://relations"
        )
        self._server: asyncio.Server | None = None
        self._held: list[asyncio.StreamWriter] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._held.append(writer)
        while head := await reader.readuntil(b"\r\n\r\n"):
            method, path, _version = head.split(b"\r\n", 1)[0].decode().split(" ")
            headers = dict(
                line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if line
            )
            length = int({k.lower(): v for k, v in headers.items()}.get("content-length", 0))
            body = await reader.readexactly(length)
            self.requests.append(path)
            if path == "/internal/actions/detach-child":
                await reader.read()  # until the caller gives up
                return
            headers.pop("Host", None)
            answer = await self._relations.request(method, path, content=body, headers=headers)
            writer.write(
                f"HTTP/1.1 {answer.status_code} X\r\nContent-Type: "
                f"{answer.headers['content-type']}\r\nContent-Length: {len(answer.content)}"
                "\r\n\r\n".encode()
                + answer.content
            )
            await writer.drain()

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._held:
            writer.close()
        await self._relations.aclose()


async def test_a_move_whose_detach_relations_never_answers_is_a_prompt_503(clean_db, credentials):
    """Audit s21b B3, for a calendar's move: relations attached it to the new page, then never
    answered the detach from the old one. The detach's three tries ran out, and the attach was
    then undone in the request, with three tries of its own at a relations that was not
    answering: twice the wait. Now the undo of the attach is queued at once (relations did not
    answer: nothing more is tried in the request), the 503 says so, and the outbox puts
    relations back in step once it answers."""
    async with in_process_stack(clean_db, credentials, ["relations"]) as relations:
        proxy = SilentToDetach(relations.apps["relations"])
        async with proxy as url:
            events = {"internal_urls": {"relations": url}}
            async with in_process_stack(
                clean_db, credentials, ["events"], settings_overrides={"events": events}
            ) as stack:
                # Events' relay stopped: what relations gets is the request's.
                await stack.apps["events"].state.relations_link.relay.stop()
                editor = await sign_in(stack, 1)
                calendar_id = (
                    await editor.post(
                        "/admin/calendars/", data={"name": "Tours", "slug": "t", "page_id": "5"}
                    )
                ).json()["id"]
                moved = await editor.post(
                    f"/admin/calendars/{calendar_id}/attach/", data={"page_id": "6"}
                )
                await editor.aclose()
            problem = assert_problem(moved, 503, "relations", "page 6", "undone")
            assert problem["service"] == "relations", problem
            # The detach's own tries, and nothing after them.
            assert proxy.requests == [
                "/internal/actions/attach-child",
                "/internal/actions/attach-child",
                *["/internal/actions/detach-child"] * 3,
            ]
        assert calendar_container(clean_db, calendar_id) == ("page", 5)
        with admin_connect(clean_db, "events") as connection:
            queued = connection.execute(
                "SELECT action, payload->>'parent_id' FROM events.outbox ORDER BY id"
            ).fetchall()
        # The detach's repeat (its undo follows it), and the attach's undo.
        assert sorted(queued) == [("detach-child", "5"), ("detach-child", "6")]

    async with in_process_stack(clean_db, credentials, ["events", "relations"]) as back:
        relay = back.apps["events"].state.relations_link.relay

        def due_now() -> None:
            with admin_connect(clean_db, "events") as connection:
                connection.execute("UPDATE events.outbox SET next_attempt_at = now()")

        for _ in range(50):  # bounded: a relay that never delivers fails below
            await asyncio.to_thread(due_now)
            await relay.deliver_due()
            if active_relations(clean_db) == [("page", 5, "calendar", calendar_id)]:
                break
            await asyncio.sleep(0.1)
    assert active_relations(clean_db) == [("page", 5, "calendar", calendar_id)]


async def test_an_attach_to_its_own_page_that_timed_out_is_left_attached(stack, editor, clean_db):
    """Attaching a calendar to the page it is on repeats what events stores: one whose outcome
    is unknown is not undone (that would take it off its page in relations)."""
    calendar_id = (
        await editor.post("/admin/calendars/", data={"name": "Tours", "slug": "t", "page_id": "5"})
    ).json()["id"]
    for client in stack.all_internal:
        client.route("relations", AnswersLost(stack.apps["relations"], "attach-child", lost=3))
    again = await editor.post(f"/admin/calendars/{calendar_id}/attach/", data={"page_id": "5"})
    problem = assert_problem(again, 503, "relations", "may have recorded it")
    assert "Nothing was changed" not in problem["detail"]
    assert calendar_container(clean_db, calendar_id) == ("page", 5)
    assert active_relations(clean_db) == [("page", 5, "calendar", calendar_id)]


async def test_relations_erroring_leaves_no_local_half_write(clean_db, credentials):
    # relations runs but cannot reach its database: it answers 503 to every action.
    unreachable = {"database_url": "postgresql://relations_app:x@127.0.0.1:1/db_relations"}
    async with in_process_stack(
        clean_db,
        credentials,
        ["events", "relations"],
        settings_overrides={"relations": unreachable},
    ) as broken:
        editor = await sign_in(broken, 1)
        created = await editor.post(
            "/admin/calendars/", data={"name": "New", "slug": "new", "page_id": "5"}
        )
        assert_problem(created, 503, "relations", "attach-child")
        await editor.aclose()
    assert events_rows(clean_db, "SELECT count(*) FROM events.calendars") == [(0,)]


class FailingDetach:
    """relations, except that detaching anything from one page answers 500: a failure half-way
    through moving a calendar off that page."""

    def __init__(self, app: Any, page_id: int) -> None:
        self.app = app
        self.page_id = page_id

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/internal/actions/detach-child":
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        if json.loads(body)["parent_id"] == self.page_id:
            await send_problem(send, 500, "boom", scope["path"])
            return
        await self.app(scope, replaying_receive(body, receive), send)


async def test_a_move_that_fails_half_way_is_undone_in_relations(stack, editor, clean_db):
    created = await editor.post(
        "/admin/calendars/", data={"name": "Tours", "slug": "tours", "page_id": "5"}
    )
    calendar_id = created.json()["id"]
    failing = FailingDetach(stack.apps["relations"], page_id=5)
    for client in stack.all_internal:
        client.route("relations", failing)

    moved = await editor.post(f"/admin/calendars/{calendar_id}/attach/", data={"page_id": "6"})
    assert_problem(moved, 502, "relations", "detach-child")
    # The attach to page 6 that had succeeded was taken back; events did not move either.
    assert calendar_container(clean_db, calendar_id) == ("page", 5)
    assert active_relations(clean_db) == [("page", 5, "calendar", calendar_id)]

    detached = await editor.post(f"/admin/calendars/{calendar_id}/detach/")
    assert_problem(detached, 502, "detach-child")
    assert calendar_container(clean_db, calendar_id) == ("page", 5)


async def test_admin_routes_are_for_editors_only(stack, clean_db):
    calendar_id = insert_calendar(clean_db, "tours", page_id=5)
    not_editor = await sign_in(stack, 2)
    visitor = await anonymous(stack)
    attempts = [
        ("/admin/calendars/", {"name": "X", "slug": "x", "page_id": "1"}),
        (f"/admin/calendars/{calendar_id}/attach/", {"page_id": "6"}),
        (f"/admin/calendars/{calendar_id}/detach/", {}),
        (
            f"/admin/calendars/{calendar_id}/entries/",
            {"name": "X", "starts_at": "2030-01-01T10:00", "cost": "1"},
        ),
        # Even with bad input, the answer is 403: the guard runs before the body is read.
        ("/admin/calendars/", {"slug": "NOT A SLUG"}),
    ]
    for client in (not_editor, visitor):
        for path, form in attempts:
            response = await client.post(path, data=form)
            assert_problem(response, 403)
    page = await not_editor.get("/", headers=HTML)
    assert "/admin/calendars/" not in page.text
    assert events_rows(clean_db, "SELECT slug, container_id FROM events.calendars") == [
        ("tours", 5)
    ]
    assert events_rows(clean_db, "SELECT count(*) FROM events.calendar_entries") == [(0,)]
    assert relation_rows(clean_db) == []
    await not_editor.aclose()
    await visitor.aclose()


async def test_unknown_calendars_and_entries_are_404(stack, editor):
    assert_problem(await editor.post("/admin/calendars/999/attach/", data={"page_id": "1"}), 404)
    assert_problem(await editor.post("/admin/calendars/999/detach/"), 404)
    entry_form = {"name": "X", "starts_at": "2030-01-01T10:00:00Z", "cost": "1"}
    assert_problem(await editor.post("/admin/calendars/999/entries/", data=entry_form), 404)
    assert_problem(await editor.post("/entries/999/book/"), 404, "999")
    assert_problem(await editor.post("/entries/999/tickets/", data={"ticket_type": "a"}), 404)


async def test_editors_create_entries(stack, editor, clean_db):
    calendar_id = insert_calendar(clean_db)
    response = await editor.post(
        f"/admin/calendars/{calendar_id}/entries/",
        data={"name": "Tractor ride", "starts_at": "2030-05-01T09:30", "cost": "5.5"},
    )
    assert response.status_code == 201, response.text
    entry = response.json()
    assert entry["state"] == "open"
    assert entry["bookable"] is True
    assert Decimal(entry["cost"]) == Decimal("5.50")
    offset = await editor.post(
        f"/admin/calendars/{calendar_id}/entries/",
        data={"name": "Tasting", "starts_at": "2030-05-01T18:00+02:00", "cost": "0"},
    )
    assert offset.status_code == 201
    # The shop's currency only (EVENTS_CURRENCIES, EUR by default): a cart adds up one currency,
    # and an order is paid in one.
    other = await editor.post(
        f"/admin/calendars/{calendar_id}/entries/",
        data={"name": "Abroad", "starts_at": "2030-05-02T10:00", "cost": "5", "currency": "USD"},
    )
    assert_problem(other, 422, "currency", "EUR", "USD")
    rows = events_rows(
        clean_db,
        "SELECT name, starts_at, cost, currency, state FROM events.calendar_entries ORDER BY id",
    )
    assert rows == [
        ("Tractor ride", datetime(2030, 5, 1, 9, 30, tzinfo=UTC), Decimal("5.50"), "EUR", "open"),
        ("Tasting", datetime(2030, 5, 1, 16, 0, tzinfo=UTC), Decimal("0.00"), "EUR", "open"),
    ]


async def test_a_shop_in_several_currencies_says_so(clean_db, credentials):
    calendar_id = insert_calendar(clean_db)
    async with in_process_stack(
        clean_db,
        credentials,
        ["events", "relations"],
        settings_overrides={"events": {"extra": {"EVENTS_CURRENCIES": "EUR, GBP"}}},
    ) as running:
        editor = await sign_in(running, 1)
        priced = await editor.post(
            f"/admin/calendars/{calendar_id}/entries/",
            data={
                "name": "Tasting",
                "starts_at": "2030-05-01T18:00",
                "cost": "3",
                "currency": "GBP",
            },
        )
        assert priced.status_code == 201, priced.text
        await editor.aclose()
    assert events_rows(clean_db, "SELECT currency FROM events.calendar_entries") == [("GBP",)]


# -- listing ----------------------------------------------------------------------------------


async def test_calendars_list_upcoming_entries_with_their_state(stack, clean_db):
    tours = insert_calendar(clean_db, "tours", page_id=1)
    tastings = insert_calendar(clean_db, "tastings", page_id=2)
    insert_entry(clean_db, tours, "Yesterday's walk", starts_in=timedelta(days=-1))
    later = insert_entry(clean_db, tours, "Later walk", starts_in=timedelta(days=5))
    sooner = insert_entry(clean_db, tours, "Sooner walk", starts_in=timedelta(days=2), cost="0")
    cancelled = insert_entry(clean_db, tastings, "Cider", state="cancelled")
    visitor = await anonymous(stack)
    assert (await visitor.post(f"/entries/{later}/book/")).status_code == 200
    other = await anonymous(stack)

    listing = await other.get("/api/calendars")
    assert listing.status_code == 200
    calendars = {calendar["slug"]: calendar for calendar in listing.json()}
    assert [entry["id"] for entry in calendars["tours"]["entries"]] == [sooner, later]
    entries = {entry["id"]: entry for entry in calendars["tours"]["entries"]}
    assert (entries[sooner]["state"], entries[sooner]["bookable"]) == ("open", True)
    assert (entries[later]["state"], entries[later]["bookable"]) == ("pending", False)
    assert entries[later]["booked_by_you"] is False
    assert "user_id" not in entries[later]
    assert "session_id" not in entries[later]
    assert calendars["tastings"]["entries"][0]["state"] == "cancelled"
    assert calendars["tastings"]["entries"][0]["bookable"] is False
    assert calendars["tastings"]["entries"][0]["id"] == cancelled

    mine = await visitor.get("/api/calendars", params={"page_id": 1})
    assert [calendar["slug"] for calendar in mine.json()] == ["tours"]
    assert {e["id"]: e["booked_by_you"] for e in mine.json()[0]["entries"]} == {
        sooner: False,
        later: True,
    }

    page = await other.get("/", headers=HTML)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert f'action="/entries/{sooner}/book/"' in page.text
    assert f'action="/entries/{later}/book/"' not in page.text
    assert "Yesterday's walk" not in page.text
    assert "free" in page.text
    assert "(yours)" not in page.text
    own_page = await visitor.get("/", headers=HTML)
    assert "(yours): in your <a href=" in own_page.text
    await visitor.aclose()
    await other.aclose()


async def test_a_draft_pages_title_is_not_shown_on_the_calendars(stack, clean_db):
    """Carried note "a draft page's title on events' page": blog exports every page, drafts
    included (market's admin may attach one), and the calendars said "on <its title>" of a
    calendar on a page nobody may read yet, and "Calendars of <its title>" at its address.
    A draft page is named by its number only; a published page by its title."""
    shop = insert_post(clean_db, "farm-shop", title="Farm shop", is_page=True)
    draft = insert_post(
        clean_db, "harvest", title="Secret harvest fair", is_page=True, status="draft"
    )
    insert_calendar(clean_db, "tours", page_id=shop)
    insert_calendar(clean_db, "fair", page_id=draft)
    visitor = await anonymous(stack)
    page = await visitor.get("/", headers=HTML)
    assert page.status_code == 200
    assert "on Farm shop" in page.text
    assert "Secret harvest fair" not in page.text
    assert f"on page {draft}" in page.text
    own = await visitor.get("/", params={"page_id": draft}, headers=HTML)
    assert "Secret harvest fair" not in own.text
    assert f"Calendars of page {draft}" in own.text
    shop_page = await visitor.get("/", params={"page_id": shop}, headers=HTML)
    assert "Calendars of Farm shop" in shop_page.text
    await visitor.aclose()


# -- booking ----------------------------------------------------------------------------------


async def test_signed_in_booking_is_pending_for_the_user(stack, clean_db):
    entry_id = insert_entry(clean_db, insert_calendar(clean_db))
    user = await sign_in(stack, 7)
    response = await user.post(f"/entries/{entry_id}/book/")
    assert response.status_code == 200, response.text
    booked = response.json()
    assert (booked["id"], booked["state"], booked["booked_by_you"]) == (entry_id, "pending", True)
    assert entry_state(clean_db, entry_id) == ("pending", 7, None, None)

    # Booking what one already holds answers it as it is (the hold is not extended).
    twice = await user.post(f"/entries/{entry_id}/book/")
    assert twice.status_code == 200
    assert twice.json()["booked_by_you"] is True
    someone_else = await sign_in(stack, 8)
    assert_problem(await someone_else.post(f"/entries/{entry_id}/book/"), 409)
    assert entry_state(clean_db, entry_id) == ("pending", 7, None, None)
    await user.aclose()
    await someone_else.aclose()


async def test_anonymous_booking_is_pending_for_the_session(stack, clean_db):
    entry_id = insert_entry(clean_db, insert_calendar(clean_db))
    visitor = await anonymous(stack)
    response = await visitor.post(f"/entries/{entry_id}/book/")
    assert response.status_code == 200, response.text
    assert entry_state(clean_db, entry_id) == ("pending", None, session_id_of(visitor), None)
    await visitor.aclose()


async def test_booking_from_a_form_redirects_back(stack, clean_db):
    entry_id = insert_entry(clean_db, insert_calendar(clean_db))
    visitor = await anonymous(stack)
    token = visitor.headers.pop("X-CSRF-Token")
    response = await visitor.post(
        f"/entries/{entry_id}/book/", data={CSRF_FIELD: token, "next": "/?page_id=1"}, headers=HTML
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/?page_id=1&added=1#entry-1"
    assert entry_state(clean_db, entry_id)[0] == "pending"
    # Held by someone else: a browser gets the problem as a page, with the same status.
    other = await anonymous(stack)
    other_token = other.headers.pop("X-CSRF-Token")
    again = await other.post(
        f"/entries/{entry_id}/book/", data={CSRF_FIELD: other_token}, headers=HTML
    )
    await other.aclose()
    assert again.status_code == 409
    assert again.headers["content-type"].startswith("text/html")
    await visitor.aclose()


@pytest.mark.parametrize(
    "given", ["/\t///evil.example/", "/\n///evil.example/x", "/\r//evil.example"]
)
async def test_booking_from_a_form_never_redirects_off_site(stack, clean_db, given):
    """A ``next`` that passes as a same-site path ("/", then not "/") but holds a tab or a
    newline: the booking's way back (``added=`` put in its query) parsed it with urlsplit, which
    drops those characters, so "/<tab>///evil.example/" came back as "//evil.example/?added=1":
    a Location another site's. Such a ``next`` is no way back: the calendars page instead."""
    entry_id = insert_entry(clean_db, insert_calendar(clean_db))
    visitor = await anonymous(stack)
    token = visitor.headers.pop("X-CSRF-Token")
    response = await visitor.post(
        f"/entries/{entry_id}/book/", data={CSRF_FIELD: token, "next": given}, headers=HTML
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == f"/?added={entry_id}#entry-{entry_id}"
    assert entry_state(clean_db, entry_id)[0] == "pending"
    await visitor.aclose()


async def test_booking_without_csrf_token_is_refused(stack, clean_db):
    entry_id = insert_entry(clean_db, insert_calendar(clean_db))
    visitor = await anonymous(stack)
    del visitor.headers["X-CSRF-Token"]
    assert_problem(await visitor.post(f"/entries/{entry_id}/book/"), 403, "CSRF")
    assert entry_state(clean_db, entry_id)[0] == "open"
    await visitor.aclose()


async def test_entries_that_are_not_open_or_started_cannot_be_booked(stack, clean_db):
    calendar_id = insert_calendar(clean_db)
    started = insert_entry(clean_db, calendar_id, starts_in=timedelta(minutes=-5))
    cancelled = insert_entry(clean_db, calendar_id, state="cancelled")
    user = await sign_in(stack, 3)
    assert_problem(await user.post(f"/entries/{started}/book/"), 409, "started")
    assert_problem(await user.post(f"/entries/{cancelled}/book/"), 409, "cancelled")
    assert entry_state(clean_db, started) == ("open", None, None, None)
    await user.aclose()


async def test_ten_concurrent_bookings_of_one_entry_have_one_winner(stack, clean_db):
    entry_id = insert_entry(clean_db, insert_calendar(clean_db))
    users = [await sign_in(stack, user_id) for user_id in range(10, 20)]
    responses = await asyncio.gather(*(user.post(f"/entries/{entry_id}/book/") for user in users))
    statuses = [response.status_code for response in responses]
    assert sorted(statuses) == [200] + [409] * 9
    winner = 10 + statuses.index(200)
    assert entry_state(clean_db, entry_id) == ("pending", winner, None, None)
    for user in users:
        await user.aclose()


async def test_tickets_are_pending_at_the_entry_cost(stack, clean_db):
    calendar_id = insert_calendar(clean_db)
    entry_id = insert_entry(clean_db, calendar_id, cost="9.00")
    cancelled = insert_entry(clean_db, calendar_id, state="cancelled")
    user = await sign_in(stack, 4)
    response = await user.post(
        f"/entries/{entry_id}/tickets/", data={"ticket_type": "adult", "quantity": "2"}
    )
    assert response.status_code == 201, response.text
    tickets = response.json()
    assert [(t["ticket_type"], Decimal(t["price"]), t["state"]) for t in tickets] == [
        ("adult", Decimal("9.00"), "pending")
    ] * 2
    rows = events_rows(
        clean_db,
        "SELECT calendar_entry_id, state, user_id, session_id, order_id FROM events.tickets",
    )
    assert rows == [(entry_id, "pending", 4, None, None)] * 2
    # Tickets do not book the slot itself.
    assert entry_state(clean_db, entry_id)[0] == "open"
    refused = await user.post(f"/entries/{cancelled}/tickets/", data={"ticket_type": "adult"})
    assert_problem(refused, 409, "cancelled")
    await user.aclose()


def tickets_form_of(page: str, entry_id: int) -> str:
    """The tickets form of entry ``entry_id`` in a calendars page's HTML."""
    start = page.index(f'action="/entries/{entry_id}/tickets/"')
    return page[start : page.index("</form>", start)]


async def test_a_refused_tickets_form_is_the_calendars_page_again_with_what_was_typed(
    stack, clean_db
):
    """probe a11y: a tickets form the server refused (a quantity of 0, more than a form takes,
    a cancelled entry) answered a page of its own: what the buyer typed was gone, and Back led
    to a fresh form. A browser now gets the calendars again, with the refusal's status, the
    message beside that entry's form (an alert the invalid field names) and the values typed
    kept; an API client still gets the problem."""
    calendar_id = insert_calendar(clean_db)
    entry_id = insert_entry(clean_db, calendar_id)
    cancelled = insert_entry(clean_db, calendar_id, "Hay ride", state="cancelled")
    visitor = await anonymous(stack)
    token = visitor.headers.pop("X-CSRF-Token")
    for quantity, ticket_type, message, invalid in [
        ("0", "child", "Quantity must be 1 or more", "quantity"),
        ("21", "child", "Quantity must be 20 or less", "quantity"),
        ("two", "child", "Quantity must be a whole number", "quantity"),
        ("3", "  ", "Ticket type must not be blank", "ticket_type"),
    ]:
        form, status = {"ticket_type": ticket_type, "quantity": quantity}, 422
        sent = {CSRF_FIELD: token, "next": "/?page_id=1", **form}
        page = await visitor.post(f"/entries/{entry_id}/tickets/", data=sent, headers=HTML)
        assert page.status_code == status, page.text
        assert page.headers["content-type"].startswith("text/html")
        assert f'id="entry-{entry_id}"' in page.text  # the calendars, not an error page
        tickets = tickets_form_of(page.text, entry_id)
        error = f"tickets-{entry_id}-error"
        assert f'<span class="field-error" role="alert" id="{error}">{message}' in tickets, tickets
        assert page.text.count(message) == 1
        field = re.search(rf'<input [^>]*name="{invalid}"[^>]*>', tickets)
        assert field is not None
        assert 'aria-invalid="true"' in field.group(0)
        assert f'aria-describedby="{error}"' in field.group(0)
        assert f'value="{form["ticket_type"]}"' in tickets
        assert f'value="{form["quantity"]}"' in tickets
        # The next form still goes back to the page it was on.
        assert 'name="next" value="/?page_id=1"' in tickets
        # An API client is told the same, as a problem.
        problem = assert_problem(
            await visitor.post(
                f"/entries/{entry_id}/tickets/",
                data=form,
                headers={**JSON, "X-CSRF-Token": token},
            ),
            status,
        )
        assert names_field(problem, invalid), problem
    refused = await visitor.post(
        f"/entries/{cancelled}/tickets/",
        data={CSRF_FIELD: token, "ticket_type": "senior", "quantity": "2"},
        headers=HTML,
    )
    assert refused.status_code == 409
    tickets = tickets_form_of(refused.text, entry_id)
    assert "field-error" not in tickets  # only the form that was sent says something
    assert f"Calendar entry {cancelled} is cancelled: no tickets" in refused.text
    # An address that names no entry is a 404 whatever the form says, as for API clients.
    nowhere = await visitor.post(
        "/entries/0/tickets/",
        data={CSRF_FIELD: token, "ticket_type": "child", "quantity": "0"},
        headers=HTML,
    )
    assert nowhere.status_code == 404
    assert events_rows(clean_db, "SELECT count(*) FROM events.tickets") == [(0,)]
    await visitor.aclose()


async def test_a_tickets_field_sent_twice_is_the_calendars_page_saying_so(stack, clean_db):
    """probe attacker2: a browser's multipart tickets form with a field twice was meant to get
    the calendars page again (apps.common.web.read_form_body_first), but the page read the form
    again with the same check, which raised: the generic error page, saying "Quantity quantity:
    given more than once" (the field named twice). It now gets the calendars page, the message
    beside the form, once, in words; an API client the problem naming the field."""
    calendar_id = insert_calendar(clean_db)
    entry_id = insert_entry(clean_db, calendar_id)
    visitor = await anonymous(stack)
    token = visitor.headers.pop("X-CSRF-Token")
    body = (
        "".join(
            f'--b\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
            for name, value in [
                (CSRF_FIELD, token),
                ("next", "/?page_id=1"),
                ("ticket_type", "child"),
                ("quantity", "1"),
                ("quantity", "2"),
            ]
        ).encode()
        + b"--b--\r\n"
    )
    multipart = {"content-type": "multipart/form-data; boundary=b"}
    page = await visitor.post(
        f"/entries/{entry_id}/tickets/", content=body, headers={**HTML, **multipart}
    )
    assert page.status_code == 422, page.text
    assert f'id="entry-{entry_id}"' in page.text, page.text  # the calendars, not an error page
    tickets = tickets_form_of(page.text, entry_id)
    message = "Quantity given more than once."
    assert f'<span class="field-error" role="alert" id="tickets-{entry_id}-error">{message}' in (
        tickets
    ), tickets
    assert 'value="child"' in tickets
    problem = assert_problem(
        await visitor.post(
            f"/entries/{entry_id}/tickets/",
            content=body,
            headers={**JSON, **multipart, "X-CSRF-Token": token},
        ),
        422,
    )
    assert problem["detail"] == "quantity: given more than once", problem
    assert problem["errors"] == [{"field": "quantity", "message": "given more than once"}]
    assert events_rows(clean_db, "SELECT count(*) FROM events.tickets") == [(0,)]
    await visitor.aclose()


async def test_a_booking_form_with_a_field_twice_is_refused_and_books_nothing(stack, clean_db):
    """probe attacker2: a multipart booking form with its ``next`` given twice was refused
    (422, "next: given more than once") after the hold was committed: the buyer was told the
    form was refused while the entry sat booked in their cart. A field given twice is refused
    before any handler acts, as the edge refuses a URL-encoded one."""
    calendar_id = insert_calendar(clean_db)
    entry_id = insert_entry(clean_db, calendar_id)
    visitor = await anonymous(stack)
    token = visitor.headers.pop("X-CSRF-Token")
    body = (
        "".join(
            f'--b\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
            for name, value in [(CSRF_FIELD, token), ("next", "/"), ("next", "/?page_id=1")]
        ).encode()
        + b"--b--\r\n"
    )
    refused = await visitor.post(
        f"/entries/{entry_id}/book/",
        content=body,
        headers={**HTML, "content-type": "multipart/form-data; boundary=b"},
    )
    assert refused.status_code == 422, refused.text
    assert "Next given more than once" in refused.text, refused.text
    assert entry_state(clean_db, entry_id)[0] == "open"
    await visitor.aclose()


# -- the export view, through postgres_fdw as cart ---------------------------------------------


async def book_things(stack, clean_db) -> dict[str, Any]:
    """User 1 books an entry and buys two tickets; a visitor books another; one stays open."""
    calendar_id = insert_calendar(clean_db, "tours", page_id=4)
    walk = insert_entry(clean_db, calendar_id, "Orchard walk", cost="12.50")
    ride = insert_entry(clean_db, calendar_id, "Tractor ride", cost="0")
    still_open = insert_entry(clean_db, calendar_id, "Foraging", cost="3")
    user = await sign_in(stack, 1)
    visitor = await anonymous(stack)
    assert (await user.post(f"/entries/{walk}/book/")).status_code == 200
    tickets = await user.post(
        f"/entries/{ride}/tickets/", data={"ticket_type": "child", "quantity": "2"}
    )
    assert tickets.status_code == 201
    assert (await visitor.post(f"/entries/{ride}/book/")).status_code == 200
    things = {
        "calendar_id": calendar_id,
        "walk": walk,
        "ride": ride,
        "open": still_open,
        "ticket_ids": [ticket["id"] for ticket in tickets.json()],
        "session_id": session_id_of(visitor),
    }
    await user.aclose()
    await visitor.aclose()
    return things


VIEW_COLUMNS = [
    ("kind", "text"),
    ("id", "bigint"),
    ("user_id", "bigint"),
    ("session_id", "character varying"),
    ("title", "text"),
    ("price", "numeric"),
    ("currency", "character"),
    ("calendar_id", "bigint"),
    ("starts_at", "timestamp with time zone"),
    ("container_type", "character varying"),
    ("container_id", "bigint"),
]
VIEW_SELECT = (
    "SELECT kind, id, user_id, session_id, title, price, currency, calendar_id,"
    " container_type, container_id FROM {} ORDER BY kind, id"
)


async def test_pending_bookings_view_holds_pending_entries_and_tickets(stack, clean_db):
    things = await book_things(stack, clean_db)
    with admin_connect(clean_db, "events") as connection:
        columns = connection.execute(
            """
            SELECT column_name, data_type FROM information_schema.columns
            WHERE table_schema = 'export' AND table_name = 'pending_bookings'
            ORDER BY ordinal_position
            """
        ).fetchall()
        precision = connection.execute(
            """
            SELECT numeric_precision, numeric_scale FROM information_schema.columns
            WHERE table_schema = 'export' AND table_name = 'pending_bookings'
              AND column_name = 'price'
            """
        ).fetchone()
        rows = connection.execute(VIEW_SELECT.format("export.pending_bookings")).fetchall()
    assert columns == VIEW_COLUMNS
    assert precision == (10, 2)
    calendar_id, walk, ride = things["calendar_id"], things["walk"], things["ride"]
    first_ticket, second_ticket = things["ticket_ids"]
    expected = [
        ("entry", walk, 1, None, "Orchard walk", Decimal("12.50"), "EUR", calendar_id, "page", 4),
        ("entry", ride, None, things["session_id"], "Tractor ride", Decimal("0.00"), "EUR",
         calendar_id, "page", 4),
        ("ticket", first_ticket, 1, None, "Tractor ride \u2013 child", Decimal("0.00"), "EUR",
         calendar_id, "page", 4),
        ("ticket", second_ticket, 1, None, "Tractor ride \u2013 child", Decimal("0.00"), "EUR",
         calendar_id, "page", 4),
    ]  # fmt: skip
    assert rows == expected

    # Confirmed rows leave the view.
    confirm = {"order_id": 50, "entry_ids": [walk], "ticket_ids": [first_ticket], "user_id": 1}
    assert (await internal_post(stack.client("events"), "confirm-for-order", confirm)).json()[
        "confirmed"
    ] == 2
    with admin_connect(clean_db, "events") as connection:
        remaining = connection.execute(VIEW_SELECT.format("export.pending_bookings")).fetchall()
    assert remaining == [expected[1], expected[3]]


async def test_cart_reads_pending_bookings_through_fdw(stack, clean_db, provisioned, credentials):
    things = await book_things(stack, clean_db)
    cart_url = provisioned.topology.app_url("cart", credentials)
    with psycopg.connect(cart_url) as cart:
        assert cart.execute("SELECT current_user").fetchone() == ("cart_app",)
        mine = cart.execute(
            "SELECT kind, id, title, price, container_id FROM events.pending_bookings"
            " WHERE user_id = %s ORDER BY kind, id",
            (1,),
        ).fetchall()
        visitors = cart.execute(
            "SELECT kind, id FROM events.pending_bookings WHERE session_id = %s",
            (things["session_id"],),
        ).fetchall()
        plan = "\n".join(
            row[0]
            for row in cart.execute(
                "EXPLAIN (VERBOSE) SELECT id FROM events.pending_bookings WHERE user_id = %s",
                (1,),
            )
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            cart.execute("DELETE FROM events.pending_bookings")
    first_ticket, second_ticket = things["ticket_ids"]
    assert mine == [
        ("entry", things["walk"], "Orchard walk", Decimal("12.50"), 4),
        ("ticket", first_ticket, "Tractor ride \u2013 child", Decimal("0.00"), 4),
        ("ticket", second_ticket, "Tractor ride \u2013 child", Decimal("0.00"), 4),
    ]
    assert visitors == [("entry", things["ride"])]
    # The identity filter runs remotely: only this user's rows cross the wire.
    assert "Remote SQL: SELECT id FROM export.pending_bookings WHERE ((user_id = 1" in plan


async def test_pending_bookings_data_matches_the_view(stack, clean_db):
    things = await book_things(stack, clean_db)
    events = stack.client("events")
    by_user = await internal_get(events, "pending-bookings", {"user_id": 1})
    by_session = await internal_get(
        events, "pending-bookings", {"session_id": things["session_id"]}
    )
    nobody = await internal_get(events, "pending-bookings", {"user_id": 99})
    assert by_user.status_code == by_session.status_code == 200
    assert nobody.json() == []
    with admin_connect(clean_db, "events") as connection:
        view_rows = connection.execute(
            "SELECT kind, id, user_id, session_id, title, price, currency, calendar_id,"
            " container_type, container_id FROM export.pending_bookings ORDER BY kind, id"
        ).fetchall()
    keys = ["kind", "id", "user_id", "session_id", "title", "price", "currency", "calendar_id",
            "container_type", "container_id"]  # fmt: skip
    data_rows = sorted(
        (
            tuple(Decimal(row[key]) if key == "price" else row[key] for key in keys)
            for row in by_user.json() + by_session.json()
        ),
        key=lambda row: (row[0], row[1]),
    )
    assert data_rows == view_rows
    assert all("starts_at" in row for row in by_user.json())


# -- confirm-for-order ------------------------------------------------------------------------


async def test_confirm_for_order_confirms_once_and_never_steals(stack, clean_db):
    things = await book_things(stack, clean_db)
    events = stack.client("events")
    walk, ride, still_open = things["walk"], things["ride"], things["open"]
    first_ticket, second_ticket = things["ticket_ids"]
    # The visitor's booking of the ride is paid by order 200 first.
    other = await internal_post(
        events,
        "confirm-for-order",
        {"order_id": 200, "entry_ids": [ride], "session_id": things["session_id"]},
    )
    assert other.json() == {"confirmed": 1, "unconfirmed": {"entry_ids": [], "ticket_ids": []}}

    payload = {
        "order_id": 100,
        "entry_ids": [walk, ride, still_open, 999],
        "ticket_ids": [first_ticket, second_ticket],
        "user_id": 1,
    }
    first = await internal_post(events, "confirm-for-order", payload)
    assert first.status_code == 200, first.text
    assert first.json() == {
        "confirmed": 3,
        "unconfirmed": {"entry_ids": sorted([ride, still_open, 999]), "ticket_ids": []},
    }
    assert entry_state(clean_db, walk)[::3] == ("confirmed", 100)
    assert entry_state(clean_db, ride)[::3] == ("confirmed", 200)  # not stolen
    assert entry_state(clean_db, still_open) == ("open", None, None, None)
    tickets = events_rows(clean_db, "SELECT state, order_id FROM events.tickets ORDER BY id")
    assert tickets == [("confirmed", 100), ("confirmed", 100)]

    before = events_rows(
        clean_db, "SELECT id, xmin::text FROM events.calendar_entries ORDER BY id"
    ) + events_rows(clean_db, "SELECT id, xmin::text FROM events.tickets ORDER BY id")
    replay = await internal_post(events, "confirm-for-order", payload)
    assert replay.json() == first.json()
    after = events_rows(
        clean_db, "SELECT id, xmin::text FROM events.calendar_entries ORDER BY id"
    ) + events_rows(clean_db, "SELECT id, xmin::text FROM events.tickets ORDER BY id")
    assert after == before  # the replay wrote nothing

    thief = await internal_post(
        events,
        "confirm-for-order",
        {"order_id": 300, "entry_ids": [walk], "ticket_ids": [first_ticket], "user_id": 1},
    )
    assert thief.json() == {
        "confirmed": 0,
        "unconfirmed": {"entry_ids": [walk], "ticket_ids": [first_ticket]},
    }
    assert entry_state(clean_db, walk)[::3] == ("confirmed", 100)


async def test_confirm_for_order_with_an_idempotency_key_replays_its_answer(stack, clean_db):
    things = await book_things(stack, clean_db)
    events = stack.client("events")
    payload = {"order_id": 7, "entry_ids": [things["walk"]], "ticket_ids": [], "user_id": 1}
    first = await internal_post(events, "confirm-for-order", payload, idempotency_key="order-7")
    replay = await internal_post(events, "confirm-for-order", payload, idempotency_key="order-7")
    assert first.status_code == replay.status_code == 200
    assert first.json() == replay.json()
    assert first.json()["confirmed"] == 1
    other = await internal_post(
        events, "confirm-for-order", {**payload, "order_id": 8}, idempotency_key="order-7"
    )
    assert_problem(other, 422, "Idempotency-Key")
    assert entry_state(clean_db, things["walk"])[::3] == ("confirmed", 7)


async def test_a_confirmation_for_a_session_signed_in_since_confirms_for_the_user(stack, clean_db):
    """An anonymous order's confirmation names the session it was made by; sign-in gave that
    session's bookings to the user before it came. A booking held before orders held them for
    orders (no hold_order_id) is confirmed for the buyer who holds it: the user the session
    became is that buyer, not someone else (it was refused as "not held for the buyer", and
    its price refunded)."""
    calendar_id = insert_calendar(clean_db)
    walk = insert_entry(clean_db, calendar_id, "Walk")
    visitor = await anonymous(stack)
    session_id = session_id_of(visitor)
    assert (await visitor.post(f"/entries/{walk}/book/")).status_code == 200
    events = stack.client("events")
    adopt = {"user_id": 42, "session_id": session_id}
    assert (await internal_post(events, "adopt-bookings-for-user", adopt)).json() == {"adopted": 1}
    paid = {"order_id": 9, "entry_ids": [walk], "session_id": session_id}
    answer = await internal_post(events, "confirm-for-order", paid)
    assert answer.json() == {"confirmed": 1, "unconfirmed": {"entry_ids": [], "ticket_ids": []}}
    assert entry_state(clean_db, walk) == ("confirmed", 42, None, 9)
    # Another session's confirmation takes nothing of the user's.
    stranger = {"order_id": 10, "entry_ids": [walk], "session_id": "x" * 43}
    assert (await internal_post(events, "confirm-for-order", stranger)).json()["confirmed"] == 0
    await visitor.aclose()


async def test_concurrent_confirms_of_one_entry_by_two_orders_have_one_winner(stack, clean_db):
    things = await book_things(stack, clean_db)
    events = stack.client("events")
    responses = await asyncio.gather(
        *(
            internal_post(
                events,
                "confirm-for-order",
                {"order_id": order_id, "entry_ids": [things["walk"]], "user_id": 1},
            )
            for order_id in range(1, 11)
        )
    )
    assert sorted(response.json()["confirmed"] for response in responses) == [0] * 9 + [1]
    winner = next(r for r in responses if r.json()["confirmed"] == 1)
    assert winner.status_code == 200
    assert entry_state(clean_db, things["walk"])[0] == "confirmed"


# -- adopting an anonymous session's bookings at sign-in --------------------------------------


async def test_a_booking_from_a_session_sign_in_adopted_is_refused_not_held_for_nobody(
    stack, clean_db
):
    """A booking sent with the anonymous session as sign-in adopted it was held for that
    session, which nobody uses again: the place was blocked for a buyer who never saw it in
    their cart. Now it waits for the adoption and is refused, and nothing is held."""
    calendar_id = insert_calendar(clean_db)
    first, late = insert_entry(clean_db, calendar_id, "Walk"), insert_entry(clean_db, calendar_id)
    visitor = await anonymous(stack)
    session_id = session_id_of(visitor)
    assert (await visitor.post(f"/entries/{first}/book/")).status_code == 200
    adopt = {"user_id": 42, "session_id": session_id}
    assert (
        await internal_post(stack.client("events"), "adopt-bookings-for-user", adopt)
    ).json() == {"adopted": 1}

    booked = await visitor.post(f"/entries/{late}/book/")
    assert booked.status_code == 409, booked.text
    assert "signed in" in booked.json()["detail"]
    tickets = await visitor.post(f"/entries/{late}/tickets/", data={"ticket_type": "adult"})
    assert tickets.status_code == 409, tickets.text
    # A browser is offered the way out on the error page (not the calendars with the refusal
    # beside the form, which has none).
    token = visitor.headers["X-CSRF-Token"]
    page = await visitor.post(
        f"/entries/{late}/tickets/", data={CSRF_FIELD: token, "ticket_type": "adult"}, headers=HTML
    )
    assert page.status_code == 409
    assert "Sign out and start afresh" in page.text
    assert entry_state(clean_db, late) == ("open", None, None, None)
    assert events_rows(clean_db, "SELECT count(*) FROM events.tickets") == [(0,)]
    assert entry_state(clean_db, first) == ("pending", 42, None, None)
    # Another session, never signed in, books as before.
    other = await anonymous(stack)
    assert (await other.post(f"/entries/{late}/book/")).status_code == 200
    await visitor.aclose()
    await other.aclose()


async def test_adopt_bookings_for_user_moves_pending_bookings_once(stack, clean_db):
    things = await book_things(stack, clean_db)  # the visitor holds the ride, pending
    calendar_id = things["calendar_id"]
    confirmed = insert_entry(clean_db, calendar_id, "Paid walk")
    visitor = await anonymous(stack)
    session_id = session_id_of(visitor)
    assert (await visitor.post(f"/entries/{confirmed}/book/")).status_code == 200
    ticket = await visitor.post(f"/entries/{confirmed}/tickets/", data={"ticket_type": "adult"})
    assert ticket.status_code == 201
    events = stack.client("events")
    paid = {"order_id": 9, "entry_ids": [confirmed], "session_id": session_id}
    assert (await internal_post(events, "confirm-for-order", paid)).json()["confirmed"] == 1

    adopt = {"user_id": 42, "session_id": session_id}
    first = await internal_post(events, "adopt-bookings-for-user", adopt)
    assert first.status_code == 200, first.text
    assert first.json() == {"adopted": 1}  # the pending ticket is counted
    assert (await internal_post(events, "adopt-bookings-for-user", adopt)).json() == {"adopted": 0}
    # The paid entry is the user's too (audit L3: it stayed the session's, which nobody uses
    # again), still confirmed for its order (which orders gives the user at the same sign-in).
    assert entry_state(clean_db, confirmed) == ("confirmed", 42, None, 9)
    assert events_rows(
        clean_db,
        "SELECT user_id, session_id FROM events.tickets WHERE id = %s",
        (ticket.json()[0]["id"],),
    ) == [(42, None)]
    # Someone else's session is not touched.
    assert entry_state(clean_db, things["ride"]) == ("pending", None, things["session_id"], None)
    by_user = await internal_get(events, "pending-bookings", {"user_id": 42})
    assert [(row["kind"], row["id"]) for row in by_user.json()] == [
        ("ticket", ticket.json()[0]["id"])
    ]
    await visitor.aclose()


# -- bad input: 422 naming the field, everywhere -----------------------------------------------


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"slug": "tours", "page_id": "1"}, "name"),
        ({"name": "", "slug": "tours", "page_id": "1"}, "name"),
        ({"name": "Tours", "page_id": "1"}, "slug"),
        ({"name": "Tours", "slug": "Not a slug!", "page_id": "1"}, "slug"),
        ({"name": "Tours", "slug": "tours"}, "page_id"),
        ({"name": "Tours", "slug": "tours", "page_id": "one"}, "page_id"),
        ({"name": "Tours", "slug": "tours", "page_id": "0"}, "page_id"),
    ],
)
async def test_bad_calendar_input_is_422_naming_the_field(stack, editor, clean_db, form, field):
    response = await editor.post("/admin/calendars/", data=form)
    problem = assert_problem(response, 422, field)
    assert names_field(problem, field), problem
    assert events_rows(clean_db, "SELECT count(*) FROM events.calendars") == [(0,)]
    assert relation_rows(clean_db) == []


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"starts_at": "2030-01-01T10:00", "cost": "1"}, "name"),
        ({"name": "Walk", "cost": "1"}, "starts_at"),
        ({"name": "Walk", "starts_at": "next tuesday", "cost": "1"}, "starts_at"),
        # Probe (2026-12-06): a time whose offset takes it past the year 9999 (or before the
        # year 1) in UTC was stored, then could not be read back: a 500.
        ({"name": "Walk", "starts_at": "9999-12-31T23:59:59-05:00", "cost": "1"}, "starts_at"),
        ({"name": "Walk", "starts_at": "0001-01-01T00:00:00+01:00", "cost": "1"}, "starts_at"),
        ({"name": "Walk", "starts_at": "2030-01-01T10:00"}, "cost"),
        ({"name": "Walk", "starts_at": "2030-01-01T10:00", "cost": "cheap"}, "cost"),
        ({"name": "Walk", "starts_at": "2030-01-01T10:00", "cost": "-1"}, "cost"),
        ({"name": "Walk", "starts_at": "2030-01-01T10:00", "cost": "1.234"}, "cost"),
        ({"name": "Walk", "starts_at": "2030-01-01T10:00", "cost": "NaN"}, "cost"),
        # Audit: Decimal() reads full-width and other scripts' digits, underscores, exponents.
        ({"name": "Walk", "starts_at": "2030-01-01T10:00", "cost": "\uff15"}, "cost"),
        ({"name": "Walk", "starts_at": "2030-01-01T10:00", "cost": "\u0661\u0662.50"}, "cost"),
        ({"name": "Walk", "starts_at": "2030-01-01T10:00", "cost": "1_0"}, "cost"),
        ({"name": "Walk", "starts_at": "2030-01-01T10:00", "cost": "1e1"}, "cost"),
        ({"name": "Walk", "starts_at": "2030-01-01T10:00", "cost": "Infinity"}, "cost"),
        ({"name": "Walk", "starts_at": "2030-01-01T10:00", "cost": "1", "currency": "eur"},
         "currency"),
    ],
)  # fmt: skip
async def test_bad_entry_input_is_422_naming_the_field(stack, editor, clean_db, form, field):
    calendar_id = insert_calendar(clean_db)
    response = await editor.post(f"/admin/calendars/{calendar_id}/entries/", data=form)
    problem = assert_problem(response, 422, field)
    assert names_field(problem, field), problem
    assert events_rows(clean_db, "SELECT count(*) FROM events.calendar_entries") == [(0,)]


async def test_bad_attach_input_is_422_naming_the_field_a_bad_path_404(stack, editor, clean_db):
    calendar_id = insert_calendar(clean_db, page_id=3)
    for form in ({}, {"page_id": "x"}, {"page_id": "-2"}):
        response = await editor.post(f"/admin/calendars/{calendar_id}/attach/", data=form)
        assert_problem(response, 422, "page_id")
    # An id no calendar or entry can have: the URL names nothing.
    assert_problem(await editor.post("/admin/calendars/0/detach/"), 404, "its calendar_id")
    assert_problem(await editor.post("/entries/0/book/"), 404, "its entry_id")
    assert calendar_container(clean_db, calendar_id) == ("page", 3)
    assert relation_rows(clean_db) == []


async def test_bad_ticket_and_listing_input_is_422_naming_the_field(stack, clean_db):
    entry_id = insert_entry(clean_db, insert_calendar(clean_db))
    visitor = await anonymous(stack)
    for form, field in [
        ({"quantity": "1"}, "ticket_type"),
        ({"ticket_type": "", "quantity": "1"}, "ticket_type"),
        ({"ticket_type": "adult", "quantity": "0"}, "quantity"),
        ({"ticket_type": "adult", "quantity": "21"}, "quantity"),
        ({"ticket_type": "adult", "quantity": "two"}, "quantity"),
    ]:
        response = await visitor.post(f"/entries/{entry_id}/tickets/", data=form)
        assert_problem(response, 422, field)
    assert events_rows(clean_db, "SELECT count(*) FROM events.tickets") == [(0,)]
    assert_problem(await visitor.get("/api/calendars", params={"page_id": "x"}), 422, "page_id")
    assert_problem(await visitor.get("/api/calendars", params={"page_id": "0"}), 422, "page_id")
    page = await visitor.get("/", params={"page_id": "x"}, headers=HTML)
    assert page.status_code == 422
    assert "Page id must be a whole number" in page.text  # in words, once
    assert page.text.count("must be a whole number") == 1
    await visitor.aclose()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"entry_ids": [1], "ticket_ids": []}, "order_id"),
        ({"order_id": 0, "entry_ids": [1]}, "order_id"),
        ({"order_id": "seven", "entry_ids": [1]}, "order_id"),
        ({"order_id": 1, "entry_ids": "1"}, "entry_ids"),
        ({"order_id": 1, "entry_ids": [0]}, "entry_ids"),
        ({"order_id": 1, "ticket_ids": ["x"]}, "ticket_ids"),
        ({"order_id": 1, "entry_ids": [], "tickets": [1]}, "tickets"),
    ],
)
async def test_bad_confirm_input_is_422_naming_the_field(stack, clean_db, payload, field):
    response = await internal_post(stack.client("events"), "confirm-for-order", payload)
    problem = assert_problem(response, 422, field)
    assert names_field(problem, field), problem


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "user_id"),
        ({"user_id": "me"}, "user_id"),
        ({"user_id": 0}, "user_id"),
        ({"user_id": 1, "session_id": "abc"}, "session_id"),
        ({"session_id": "x" * 65}, "session_id"),
    ],
)
async def test_bad_pending_bookings_input_is_422_naming_the_field(stack, params, field):
    response = await internal_get(stack.client("events"), "pending-bookings", params)
    assert_problem(response, 422, field)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"session_id": "abc"}, "user_id"),
        ({"user_id": 0, "session_id": "abc"}, "user_id"),
        ({"user_id": 1}, "session_id"),
        ({"user_id": 1, "session_id": ""}, "session_id"),
    ],
)
async def test_bad_adopt_input_is_422_naming_the_field(stack, payload, field):
    response = await internal_post(stack.client("events"), "adopt-bookings-for-user", payload)
    problem = assert_problem(response, 422, field)
    assert names_field(problem, field), problem


async def test_internal_routes_need_a_signature(stack, clean_db):
    events = stack.client("events")
    response = await events.post(
        "/internal/actions/confirm-for-order", json={"order_id": 1, "entry_ids": [1]}
    )
    assert_problem(response, 401)


async def test_health_readiness_and_schema(stack):
    events = stack.client("events")
    assert (await events.get("/readyz")).status_code == 200
    schema = await events.get("/schema/openapi.json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in [
        "/api/calendars",
        "/entries/{entry_id}/book",
        "/admin/calendars",
        "/internal/actions/confirm-for-order",
        "/internal/data/pending-bookings",
    ]:
        assert any(known.rstrip("/") == path for known in paths), (path, sorted(paths))


# -- demo data --------------------------------------------------------------------------------


def test_demo_seed_fills_empty_tables_once(clean_db):
    from apps.events.demo import seed

    url = make_url(clean_db.topology.admin_url("events")).set(drivername="postgresql+psycopg")
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(text("SET LOCAL ROLE events_owner"))
            summary = seed(connection)
        with engine.begin() as connection:
            connection.execute(text("SET LOCAL ROLE events_owner"))
            again = seed(connection)
    finally:
        engine.dispose()
    assert summary is not None
    assert "12 open entries" in summary
    assert again is None
    calendars = events_rows(
        clean_db,
        "SELECT name, container_type, container_id FROM events.calendars ORDER BY container_id",
    )
    assert calendars == [("Farm tours", "page", 1), ("Tastings", "page", 2)]
    entries = events_rows(
        clean_db,
        "SELECT count(*), count(*) FILTER (WHERE cost = 0), bool_and(state = 'open'),"
        " bool_and(starts_at > now()), bool_and(user_id IS NULL AND session_id IS NULL)"
        " FROM events.calendar_entries",
    )
    assert entries[0][0] == 12
    assert 0 < entries[0][1] < 12
    assert entries[0][2:] == (True, True, True)
    assert events_rows(clean_db, "SELECT count(*) FROM events.tickets") == [(0,)]


# -- holds: bookings in a cart are held for a while, then free for everyone -------------------


def end_holds(server, *entry_ids: int) -> None:
    """Time passes for these holds: they ended a second ago (no sweeper has run)."""
    events_rows(
        server,
        "UPDATE events.calendar_entries SET hold_expires_at = now() - interval '1 second' "
        "WHERE id = ANY(%s) RETURNING id",
        (list(entry_ids),),
    )


async def test_an_ended_hold_blocks_nobody_and_leaves_the_cart(stack, clean_db):
    things = await book_things(stack, clean_db)
    walk = things["walk"]
    end_holds(clean_db, walk)
    with admin_connect(clean_db, "events") as connection:
        listed = connection.execute(
            "SELECT id FROM export.pending_bookings WHERE kind = 'entry' AND user_id = 1"
        ).fetchall()
    assert listed == []  # no longer in the user's cart
    mine = await internal_get(stack.client("events"), "pending-bookings", {"user_id": 1})
    assert [row["id"] for row in mine.json() if row["kind"] == "entry"] == []
    page = (await (await sign_in(stack, 9)).get("/api/calendars")).json()
    [shown] = [e for c in page for e in c["entries"] if e["id"] == walk]
    assert (shown["state"], shown["bookable"]) == ("open", True)
    taken = await (await sign_in(stack, 9)).post(f"/entries/{walk}/book/")
    assert taken.status_code == 200, taken.text
    assert entry_state(clean_db, walk)[:2] == ("pending", 9)


async def test_hold_for_order_extends_holds_and_refuses_bookings_no_longer_held(stack, clean_db):
    things = await book_things(stack, clean_db)
    events = stack.client("events")
    walk, ride = things["walk"], things["ride"]
    first_ticket, _ = things["ticket_ids"]
    until = (datetime.now(UTC) + timedelta(minutes=30)).isoformat()
    hold = {
        "order_id": 70,
        "user_id": 1,
        "entry_ids": [walk],
        "ticket_ids": [first_ticket],
        "until": until,
    }
    held = await internal_post(events, "hold-for-order", hold, idempotency_key="o70")
    assert held.json() == {"held": 2}
    rows = events_rows(
        clean_db,
        "SELECT hold_order_id, hold_expires_at > now() + interval '29 minutes' "
        "FROM events.calendar_entries WHERE id = %s",
        (walk,),
    )
    assert rows == [(70, True)]
    # Someone else's booking, or one whose hold ended, cannot be held: nothing is held.
    end_holds(clean_db, walk)
    theirs = {**hold, "order_id": 71, "entry_ids": [walk, ride]}
    refused = await internal_post(events, "hold-for-order", theirs)
    assert_problem(refused, 409, str(ride))
    assert events_rows(
        clean_db, "SELECT hold_order_id FROM events.tickets WHERE id = %s", (first_ticket,)
    ) == [(70,)]
    too_long = {**hold, "until": (datetime.now(UTC) + timedelta(days=2)).isoformat()}
    assert_problem(await internal_post(events, "hold-for-order", too_long), 422, "until")


async def test_hold_for_order_of_a_session_that_signed_in_says_so(stack, clean_db):
    """Audit L1, in events: sign-in adopted the session's bookings to the user, then an order
    of the session asked to hold them, and the refusal said their hold had ended and they may
    have been taken. It says the buyer signed in; a booking really lost is still named lost."""
    calendar_id = insert_calendar(clean_db)
    walk = insert_entry(clean_db, calendar_id, "Orchard walk")
    ride = insert_entry(clean_db, calendar_id, "Tractor ride")
    visitor = await anonymous(stack)
    for entry in (walk, ride):
        assert (await visitor.post(f"/entries/{entry}/book/")).status_code == 200
    session_id = session_id_of(visitor)
    signed = await visitor.get("/auth/dev-login", params={"user_id": 7}, headers=JSON)
    assert signed.status_code == 200, signed.text
    events = stack.client("events")
    until = (datetime.now(UTC) + timedelta(minutes=30)).isoformat()
    hold = {"order_id": 90, "session_id": session_id, "entry_ids": [walk], "until": until}
    refused = assert_problem(
        await internal_post(events, "hold-for-order", hold), 409, "signed in", f"entries {walk}"
    )
    assert "may have been taken" not in refused["detail"]
    # The ride's hold ends and someone else takes it: that one is lost, and said so.
    end_holds(clean_db, ride)
    taker = await sign_in(stack, 8)
    assert (await taker.post(f"/entries/{ride}/book/")).status_code == 200
    both = {**hold, "order_id": 91, "entry_ids": [walk, ride]}
    refused = assert_problem(
        await internal_post(events, "hold-for-order", both), 409, f"(entries {ride})"
    )
    assert "may have been taken" in refused["detail"]
    # A session that never signed in is told its hold ended, as before.
    other = await anonymous(stack)
    foraging = insert_entry(clean_db, calendar_id, "Foraging")
    assert (await other.post(f"/entries/{foraging}/book/")).status_code == 200
    end_holds(clean_db, foraging)
    theirs = {**hold, "order_id": 92, "session_id": session_id_of(other), "entry_ids": [foraging]}
    assert_problem(await internal_post(events, "hold-for-order", theirs), 409, "no longer held")
    assert entry_state(clean_db, walk) == ("pending", 7, None, None)
    assert events_rows(
        clean_db, "SELECT hold_order_id FROM events.calendar_entries WHERE id = %s", (walk,)
    ) == [(None,)]
    for client in (visitor, taker, other):
        await client.aclose()


async def test_confirm_for_order_confirms_what_was_held_for_that_order_only(stack, clean_db):
    things = await book_things(stack, clean_db)
    events = stack.client("events")
    walk = things["walk"]
    until = (datetime.now(UTC) + timedelta(minutes=30)).isoformat()
    await internal_post(
        events,
        "hold-for-order",
        {"order_id": 80, "user_id": 1, "entry_ids": [walk], "until": until},
    )
    # An older order of the same buyer (superseded by 80) is paid late: not confirmed for it.
    older = await internal_post(
        events, "confirm-for-order", {"order_id": 79, "entry_ids": [walk], "user_id": 1}
    )
    assert older.json()["unconfirmed"]["entry_ids"] == [walk]
    newer = await internal_post(
        events, "confirm-for-order", {"order_id": 80, "entry_ids": [walk], "user_id": 1}
    )
    assert newer.json()["confirmed"] == 1
    assert entry_state(clean_db, walk)[::3] == ("confirmed", 80)


def ticket_states(server, ticket_ids: list[int]) -> list[tuple]:
    return events_rows(
        server,
        "SELECT state, order_id FROM events.tickets WHERE id = ANY(%s) ORDER BY id",
        (ticket_ids,),
    )


async def test_a_paid_order_whose_money_went_back_lets_go_its_bookings_and_confirms_none_later(
    stack, clean_db
):
    """Orders' review found a paid order's payment given back whole at SumUp (a refund in its
    dashboard, a charge-back): release-for-order with ``paid_back`` lets go of the bookings
    confirmed for it (the entry open again, the tickets cancelled). Sent before a confirm of
    another order that is retried late (the outbox delivers a retried message after a newer
    one), that confirm confirms nothing for the order let go of: every id unconfirmed."""
    things = await book_things(stack, clean_db)
    events = stack.client("events")
    walk, tickets = things["walk"], things["ticket_ids"]
    until = (datetime.now(UTC) + timedelta(minutes=30)).isoformat()
    order = {"order_id": 85, "user_id": 1, "entry_ids": [walk], "ticket_ids": tickets}
    held = await internal_post(events, "hold-for-order", {**order, "until": until})
    assert held.json() == {"held": 3}
    confirmed = await internal_post(events, "confirm-for-order", order)
    assert confirmed.json()["confirmed"] == 3
    assert entry_state(clean_db, walk) == ("confirmed", 1, None, 85)

    let_go = await internal_post(
        events, "release-for-order", {"order_id": 85, "paid_back": True}, idempotency_key="l85"
    )
    assert let_go.status_code == 200, let_go.text
    assert let_go.json() == {"ended": 3}
    assert entry_state(clean_db, walk) == ("open", None, None, None)
    assert ticket_states(clean_db, tickets) == [("cancelled", 85), ("cancelled", 85)]
    replay = await internal_post(
        events, "release-for-order", {"order_id": 85, "paid_back": True}, idempotency_key="l85"
    )
    assert replay.json() == {"ended": 3}

    # Booked again and held for order 86; its money went back before its confirm arrived.
    user = await sign_in(stack, 1)
    assert (await user.post(f"/entries/{walk}/book/")).status_code == 200
    await user.aclose()
    again = {"order_id": 86, "user_id": 1, "entry_ids": [walk], "until": until}
    held = await internal_post(events, "hold-for-order", again)
    assert held.json() == {"held": 1}
    await internal_post(events, "release-for-order", {"order_id": 86, "paid_back": True})
    late = await internal_post(
        events, "confirm-for-order", {"order_id": 86, "entry_ids": [walk], "user_id": 1}
    )
    assert late.json() == {"confirmed": 0, "unconfirmed": {"entry_ids": [walk], "ticket_ids": []}}
    assert entry_state(clean_db, walk)[0] != "confirmed"


async def test_a_paid_back_order_is_remembered_past_the_day_other_given_back_orders_are_kept(
    stack, clean_db
):
    """Review L5: a paid order whose money went back whole was forgotten by events' sweeper a
    day after, like an expired order's give-back. Its confirm-for-order, dead in orders' outbox
    and resent by a person later (``rose outbox resend``), then confirmed the buyer's bookings
    held in their cart again: goods for an order whose money went back. A paid-back order is
    remembered for good; an expired one is still forgotten after the day."""
    things = await book_things(stack, clean_db)
    events = stack.client("events")
    walk = things["walk"]
    until = (datetime.now(UTC) + timedelta(minutes=30)).isoformat()
    order = {"order_id": 87, "user_id": 1, "entry_ids": [walk], "ticket_ids": []}
    assert (await internal_post(events, "hold-for-order", {**order, "until": until})).json() == {
        "held": 1
    }
    assert (await internal_post(events, "confirm-for-order", order)).json()["confirmed"] == 1
    await internal_post(events, "release-for-order", {"order_id": 87, "paid_back": True})
    await internal_post(events, "release-for-order", {"order_id": 88})  # an expired order's
    with admin_connect(clean_db, "events") as connection:
        connection.execute(
            "UPDATE events.given_back_orders SET given_back_at = now() - interval '2 days'"
        )
    await sweep_ended_holds_now(stack)
    assert events_rows(clean_db, "SELECT order_id FROM events.given_back_orders") == [(87,)]

    # The buyer books the entry again; it waits in their cart (no order holds it).
    user = await sign_in(stack, 1)
    assert (await user.post(f"/entries/{walk}/book/")).status_code == 200
    await user.aclose()
    late = await internal_post(events, "confirm-for-order", order)
    assert late.json() == {"confirmed": 0, "unconfirmed": {"entry_ids": [walk], "ticket_ids": []}}
    assert entry_state(clean_db, walk)[:2] == ("pending", 1)


async def test_release_booking_frees_the_slot_at_once(stack, clean_db):
    things = await book_things(stack, clean_db)
    events = stack.client("events")
    walk, ride = things["walk"], things["ride"]
    first_ticket, _ = things["ticket_ids"]
    someone_else = await internal_post(
        events, "release-booking", {"kind": "entry", "id": ride, "user_id": 1}
    )
    assert_problem(someone_else, 404, "in your cart")
    released = await internal_post(
        events, "release-booking", {"kind": "entry", "id": walk, "user_id": 1}
    )
    assert released.json() == {"released": True}
    assert entry_state(clean_db, walk) == ("open", None, None, None)
    ticket = await internal_post(
        events, "release-booking", {"kind": "ticket", "id": first_ticket, "user_id": 1}
    )
    assert ticket.json() == {"released": True}
    assert events_rows(
        clean_db, "SELECT state FROM events.tickets WHERE id = %s", (first_ticket,)
    ) == [("cancelled",)]
    again = await internal_post(
        events, "release-booking", {"kind": "entry", "id": walk, "user_id": 1}
    )
    assert again.status_code == 404


async def test_the_sweeper_releases_ended_holds(stack, clean_db):
    from apps.events.service import sweep_ended_holds

    things = await book_things(stack, clean_db)
    end_holds(clean_db, things["walk"])
    events_rows(
        clean_db,
        "UPDATE events.tickets SET hold_expires_at = now() - interval '1 second' RETURNING id",
    )
    async with stack.apps["events"].state.platform.sessionmaker() as session:
        swept = await sweep_ended_holds(session)
        await session.commit()
    assert swept == 3  # the walk and two tickets; the visitor's ride is still held
    assert entry_state(clean_db, things["walk"]) == ("open", None, None, None)
    assert entry_state(clean_db, things["ride"])[0] == "pending"
    assert events_rows(clean_db, "SELECT DISTINCT state FROM events.tickets") == [("cancelled",)]


@pytest.fixture
async def with_cart(clean_db, credentials) -> AsyncIterator[Any]:
    async with in_process_stack(clean_db, credentials, ["events", "relations", "cart"]) as running:
        yield running


def ended_titles(cart: dict[str, Any]) -> list[str]:
    return [ended["title"] for ended in cart["ended_holds"]]


# Audit (L8): an ended hold took the booking out of the cart without a word, and the next
# checkout said only "The cart is empty".
async def test_the_cart_says_which_bookings_left_it_because_their_hold_ended(with_cart, clean_db):
    stack = with_cart
    things = await book_things(stack, clean_db)
    walk = things["walk"]
    cart = await sign_in(stack, 1, "cart")
    assert ended_titles((await cart.get("/api/cart")).json()) == []
    end_holds(clean_db, walk)
    # Before any sweep: the booking still names its owner in events.
    seen = (await cart.get("/api/cart")).json()
    assert ended_titles(seen) == ["Orchard walk"]
    [ended] = seen["ended_holds"]
    assert (ended["kind"], ended["id"]) == ("entry", walk)
    assert [booking["kind"] for booking in seen["pages"][0]["bookings"]] == ["ticket"]
    page = await cart.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert "Orchard walk" in page.text
    assert "hold ended" in page.text
    # After the sweep freed it for anyone (its owner is gone from the entry), the cart still
    # says so, and the tickets whose hold ended now are said too.
    events_rows(
        clean_db,
        "UPDATE events.tickets SET hold_expires_at = now() - interval '1 second' RETURNING id",
    )
    assert await sweep_ended_holds_now(stack) == 3
    assert entry_state(clean_db, walk) == ("open", None, None, None)
    seen = (await cart.get("/api/cart")).json()
    # The two tickets are one line with a quantity, as in the cart (audit L3).
    assert sorted((hold["title"], hold["quantity"]) for hold in seen["ended_holds"]) == [
        ("Orchard walk", 1),
        ("Tractor ride \u2013 child", 2),
    ]
    assert seen["count"] == 0
    # Nobody else is told: not the visitor whose ride is still held, not another user.
    other = await sign_in(stack, 2, "cart")
    assert ended_titles((await other.get("/api/cart")).json()) == []
    # Checking out the emptied cart says why it is empty.
    refused = await cart.post("/checkout/", headers=JSON)
    assert refused.status_code == 409, refused.text
    assert "Orchard walk" in refused.json()["detail"]
    assert "hold ended" in refused.json()["detail"]
    # Booked again, it is in the cart and no longer said to have left it.
    booker = await sign_in(stack, 1)
    assert (await booker.post(f"/entries/{walk}/book/")).status_code == 200
    seen = (await cart.get("/api/cart")).json()
    assert "Orchard walk" not in ended_titles(seen)
    # An hour after a hold ended, the cart stops saying so.
    events_rows(
        clean_db,
        "UPDATE events.released_holds SET ended_at = now() - interval '61 minutes' RETURNING 1",
    )
    assert ended_titles((await cart.get("/api/cart")).json()) == []
    for client in (cart, other, booker):
        await client.aclose()


async def test_a_booking_booked_again_and_paid_is_not_said_to_have_ended_but_a_namesake_is(
    with_cart, clean_db
):
    """Audit M1: booked again after its hold ended and then paid, the booking was announced as
    lost for the rest of the hour. Audit L2: another entry of the same name and start, in the
    cart, hid the notice of the one that was lost."""
    stack = with_cart
    things = await book_things(stack, clean_db)
    walk = things["walk"]
    end_holds(clean_db, walk)
    await sweep_ended_holds_now(stack)
    cart = await sign_in(stack, 1, "cart")
    assert ended_titles((await cart.get("/api/cart")).json()) == ["Orchard walk"]
    # A namesake on another calendar, at the same time, booked by the same buyer.
    [(starts_at,)] = events_rows(
        clean_db, "SELECT starts_at FROM events.calendar_entries WHERE id = %s", (walk,)
    )
    other = insert_calendar(clean_db, "walks", page_id=4)
    namesake = insert_entry(clean_db, other, "Orchard walk")
    events_rows(
        clean_db,
        "UPDATE events.calendar_entries SET starts_at = %s WHERE id = %s RETURNING id",
        (starts_at, namesake),
    )
    booker = await sign_in(stack, 1)
    assert (await booker.post(f"/entries/{namesake}/book/")).status_code == 200
    seen = (await cart.get("/api/cart")).json()
    assert [(hold["kind"], hold["id"]) for hold in seen["ended_holds"]] == [("entry", walk)]
    # The lost one booked again and paid for: not lost any more.
    assert (await booker.post(f"/entries/{walk}/book/")).status_code == 200
    events_rows(
        clean_db,
        "UPDATE events.calendar_entries SET state = 'confirmed', order_id = 9, "
        "hold_expires_at = NULL WHERE id = %s RETURNING id",
        (walk,),
    )
    assert ended_titles((await cart.get("/api/cart")).json()) == []
    for client in (cart, booker):
        await client.aclose()


async def test_ended_holds_follow_the_visitor_who_signs_in(with_cart, clean_db):
    """A visitor's holds ended (one swept, one not yet), then they signed in: their account's
    cart did not say so, as the notices named only the anonymous session."""
    stack = with_cart
    calendar_id = insert_calendar(clean_db, "tours", page_id=4)
    walk = insert_entry(clean_db, calendar_id, "Orchard walk")
    ride = insert_entry(clean_db, calendar_id, "Tractor ride", cost="0")
    visitor = await anonymous(stack)
    for entry in (walk, ride):
        assert (await visitor.post(f"/entries/{entry}/book/")).status_code == 200
    end_holds(clean_db, walk)
    assert await sweep_ended_holds_now(stack) == 1
    end_holds(clean_db, ride)  # not swept yet: the booking itself still names the session
    cart = stack.browser("cart")
    cart.cookies.set(COOKIE_NAME, visitor.cookies[COOKIE_NAME], domain=cart.base_url.host)
    assert ended_titles((await cart.get("/api/cart", headers=JSON)).json()) == [
        "Tractor ride",
        "Orchard walk",
    ]
    signed = await cart.get("/auth/dev-login", params={"user_id": 5}, headers=JSON)
    assert signed.status_code == 200, signed.text
    cart.headers["X-CSRF-Token"] = signed.json()["csrf_token"]
    seen = (await cart.get("/api/cart", headers=JSON)).json()
    assert ended_titles(seen) == ["Tractor ride", "Orchard walk"]
    refused = await cart.post("/checkout/", headers=JSON)
    assert refused.status_code == 409, refused.text
    assert "Orchard walk" in refused.json()["detail"]
    # Still said once the sweeper has released the second one.
    assert await sweep_ended_holds_now(stack) == 1
    assert ended_titles((await cart.get("/api/cart", headers=JSON)).json()) == [
        "Tractor ride",
        "Orchard walk",
    ]
    # Nobody else is told: not another user, not another visitor.
    other = await sign_in(stack, 6, "cart")
    assert ended_titles((await other.get("/api/cart", headers=JSON)).json()) == []
    stranger = stack.browser("cart")
    assert ended_titles((await stranger.get("/api/cart", headers=JSON)).json()) == []
    for client in (visitor, cart, other, stranger):
        await client.aclose()


async def test_an_ended_hold_the_sweeper_is_releasing_at_sign_in_follows_the_visitor(
    with_cart, clean_db
):
    """Sign-in while the sweeper releases the session's ended hold (its transaction open, the
    booking locked): sign-in waits for it, then hands the record it made to the user."""
    from apps.events.service import sweep_ended_holds

    stack = with_cart
    walk = insert_entry(clean_db, insert_calendar(clean_db, "tours", page_id=4), "Orchard walk")
    visitor = await anonymous(stack)
    assert (await visitor.post(f"/entries/{walk}/book/")).status_code == 200
    end_holds(clean_db, walk)
    cart = stack.browser("cart")
    cart.cookies.set(COOKIE_NAME, visitor.cookies[COOKIE_NAME], domain=cart.base_url.host)
    async with stack.apps["events"].state.platform.sessionmaker() as sweeping:
        assert await sweep_ended_holds(sweeping) == 1
        signing_in = asyncio.ensure_future(
            cart.get("/auth/dev-login", params={"user_id": 5}, headers=JSON)
        )
        assert await eventually(lambda: signing_in.done() or lock_waiters(clean_db, "events") >= 1)
        assert not signing_in.done()
        await sweeping.commit()
    signed = await signing_in
    assert signed.status_code == 200, signed.text
    assert events_rows(
        clean_db,
        "SELECT user_id, session_id FROM events.released_holds WHERE booking_id = %s",
        (walk,),
    ) == [(5, None)]
    assert ended_titles((await cart.get("/api/cart", headers=JSON)).json()) == ["Orchard walk"]
    for client in (visitor, cart):
        await client.aclose()


async def test_a_booking_its_owner_removed_or_paid_is_not_said_to_have_ended(with_cart, clean_db):
    stack = with_cart
    things = await book_things(stack, clean_db)
    cart = await sign_in(stack, 1, "cart")
    removed = await cart.post(f"/booking/entry/{things['walk']}/delete/", headers=JSON)
    assert removed.status_code == 200, removed.text
    events_rows(
        clean_db,
        "UPDATE events.tickets SET state = 'confirmed', order_id = 7, hold_expires_at = NULL "
        "RETURNING id",
    )
    await sweep_ended_holds_now(stack)
    assert ended_titles((await cart.get("/api/cart")).json()) == []
    await cart.aclose()


# Audit: control characters, text-direction overrides and blank names were stored as typed.
NOT_NAMES = [
    "Tours\x1b[2J",
    "Tours\nrow",
    "Tours\x9b",
    "\u202eTours",
    "Tours\u2068",
    "   ",
    "\u2003",
]


async def test_calendar_and_entry_names_are_one_readable_line(stack, editor, clean_db):
    for wrong in NOT_NAMES:
        form = {"name": wrong, "slug": "tours", "page_id": "1"}
        problem = assert_problem(await editor.post("/admin/calendars/", data=form), 422, "name")
        assert names_field(problem, "name"), problem
        page = await editor.post("/admin/calendars/", data=form, headers=HTML)
        assert page.status_code == 422
        assert page.headers["content-type"].startswith("text/html")
    # A slug is one line too (a pattern ending in $ also matches before a final newline).
    slug = await editor.post(
        "/admin/calendars/", data={"name": "Tours", "slug": "tours\n", "page_id": "1"}
    )
    assert names_field(assert_problem(slug, 422, "slug"), "slug")
    assert events_rows(clean_db, "SELECT count(*) FROM events.calendars") == [(0,)]
    assert relation_rows(clean_db) == []

    created = await editor.post(
        "/admin/calendars/", data={"name": "  Farm tours\u00a0", "slug": "tours", "page_id": "1"}
    )
    assert created.status_code == 201, created.text
    calendar_id = created.json()["id"]
    for wrong in NOT_NAMES:
        form = {"name": wrong, "starts_at": "2030-01-01T10:00", "cost": "1"}
        answer = await editor.post(f"/admin/calendars/{calendar_id}/entries/", data=form)
        assert names_field(assert_problem(answer, 422, "name"), "name")
    entry = await editor.post(
        f"/admin/calendars/{calendar_id}/entries/",
        data={"name": " Orchard walk ", "starts_at": "2030-01-01T10:00", "cost": "1"},
    )
    assert entry.status_code == 201, entry.text
    assert events_rows(clean_db, "SELECT name FROM events.calendars") == [("Farm tours",)]
    assert events_rows(clean_db, "SELECT name FROM events.calendar_entries") == [("Orchard walk",)]


async def test_ticket_types_are_one_readable_line(stack, clean_db):
    entry_id = insert_entry(clean_db, insert_calendar(clean_db))
    visitor = await anonymous(stack)
    for wrong in NOT_NAMES:
        answer = await visitor.post(
            f"/entries/{entry_id}/tickets/", data={"ticket_type": wrong, "quantity": "1"}
        )
        assert names_field(assert_problem(answer, 422, "ticket_type"), "ticket_type")
    assert events_rows(clean_db, "SELECT count(*) FROM events.tickets") == [(0,)]
    kept = await visitor.post(
        f"/entries/{entry_id}/tickets/", data={"ticket_type": " adult ", "quantity": "1"}
    )
    assert kept.status_code == 201, kept.text
    assert events_rows(clean_db, "SELECT ticket_type FROM events.tickets") == [("adult",)]
    await visitor.aclose()
