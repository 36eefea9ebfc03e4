"""Issue 15: market owns its market places (create, rename, delete in its admin, editors only),
keeps relations in step like events keeps its calendars, and blog attaches only market places
that exist (read through FDW), shown by their names."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest

from apps.common.asgi import read_body, send_problem
from tests.conftest import InProcessStack, admin_connect, in_process_stack
from tests.integration.blog_fixtures import insert_post, relation_rows
from tests.integration.commerce_fixtures import AnswersLost, browser_of

HTML = {"accept": "text/html"}


def places(server) -> list[tuple]:
    with admin_connect(server, "market") as connection:
        return connection.execute(
            "SELECT slug, name, container_id, deleted_at IS NULL FROM market.market_places "
            "ORDER BY id"
        ).fetchall()


def live_relations(server) -> list[tuple]:
    return [row[:5] for row in relation_rows(server) if row[5]]


@pytest.fixture
async def stack(clean_db, credentials):
    insert_post(clean_db, "farm-shop", title="Farm Shop", is_page=True)
    insert_post(clean_db, "market-hall", title="Market Hall", is_page=True)
    async with in_process_stack(clean_db, credentials, ["market", "relations", "blog"]) as running:
        yield running


async def test_create_rename_delete_keep_relations_in_step(stack, clean_db):
    editor = await browser_of(stack, "market", user_id=1)
    created = await editor.post(
        "/admin/market-places/", data={"name": "Veg stall", "slug": "veg-stall", "page_id": "1"}
    )
    assert created.status_code == 201, created.text
    place_id = created.json()["id"]
    assert places(clean_db) == [("veg-stall", "Veg stall", 1, True)]
    assert live_relations(clean_db) == [("page", 1, "market", place_id, "Veg stall")]

    renamed = await editor.post(
        f"/admin/market-places/{place_id}/rename/", data={"name": "Vegetables"}
    )
    assert renamed.status_code == 200, renamed.text
    assert places(clean_db) == [("veg-stall", "Vegetables", 1, True)]

    deleted = await editor.post(f"/admin/market-places/{place_id}/delete/")
    assert deleted.status_code == 200, deleted.text
    assert places(clean_db) == [("veg-stall", "Vegetables", 1, False)]
    assert live_relations(clean_db) == []


async def test_wrong_input_is_one_message_in_words_and_changes_nothing(stack, clean_db):
    editor = await browser_of(stack, "market", user_id=1)
    for form, field in [
        ({"name": " ", "slug": "a", "page_id": "1"}, "name"),
        ({"name": "A", "slug": "Not A Slug", "page_id": "1"}, "slug"),
        ({"name": "A", "slug": "a", "page_id": "9999"}, "page_id"),  # no such page
        ({"name": "A", "slug": "a", "page_id": "x"}, "page_id"),
        # Audit: int() reads full-width digits ("\uff11" was page 1).
        ({"name": "A", "slug": "a", "page_id": "\uff11"}, "page_id"),
    ]:
        answer = await editor.post("/admin/market-places/", data=form)
        assert answer.status_code == 422, answer.text
        [error] = answer.json()["errors"]
        assert error["field"] == field
        assert error["message"][0].isupper()  # a sentence, not "page_id: ..."
        assert f"{field}:" not in error["message"]
        assert "page_id" not in error["message"]
        page = await editor.post("/admin/market-places/", data=form, headers=HTML)
        assert page.status_code == 422
        assert page.text.count('class="field-error"') == 1
        assert f'id="error-{field}"' in page.text
    assert places(clean_db) == []
    assert live_relations(clean_db) == []


async def test_a_removed_market_places_address_is_refused_in_words_that_say_so(stack, clean_db):
    """A removed market place keeps its web address name (its old links name it): a new one
    asking for it is told a removed market place used it, not that another uses it (the admin
    lists none that does)."""
    editor = await browser_of(stack, "market", user_id=1)
    form = {"name": "Pop-up", "slug": "pop-up", "page_id": "1"}
    place_id = (await editor.post("/admin/market-places/", data=form)).json()["id"]
    assert (await editor.post(f"/admin/market-places/{place_id}/delete/")).status_code == 200

    again = await editor.post("/admin/market-places/", data={**form, "name": "Pop-up again"})
    assert again.status_code == 409
    [error] = again.json()["errors"]
    assert error["field"] == "slug"
    assert error["message"] == (
        "A removed market place used the web address name 'pop-up', and addresses are not "
        "used again: choose another."
    )
    page = await editor.post("/admin/market-places/", data=form, headers=HTML)
    assert page.status_code == 409
    assert 'id="error-slug"' in page.text
    assert "A removed market place used" in page.text
    # A live one's address is still "another market place uses it".
    await editor.post("/admin/market-places/", data={**form, "slug": "stall"})
    taken = await editor.post(
        "/admin/market-places/", data={**form, "name": "Other", "slug": "stall"}
    )
    assert taken.json()["errors"][0]["message"].startswith("Another market place already uses")
    assert places(clean_db) == [("pop-up", "Pop-up", 1, False), ("stall", "Pop-up", 1, True)]


async def test_two_live_market_places_never_share_a_name(stack, clean_db):
    """Blog's editors choose a market place to attach by its name, and buyers see it: two of
    one name (any case) were two identical choices, so an editor could attach the wrong one."""
    editor = await browser_of(stack, "market", user_id=1)
    first = await editor.post(
        "/admin/market-places/", data={"name": "Dairy", "slug": "dairy", "page_id": "1"}
    )
    second = await editor.post(
        "/admin/market-places/", data={"name": "Cheese", "slug": "cheese", "page_id": "2"}
    )
    cheese = second.json()["id"]
    same = await editor.post(
        "/admin/market-places/", data={"name": " dairy ", "slug": "dairy-2", "page_id": "2"}
    )
    assert same.status_code == 409
    [error] = same.json()["errors"]
    assert (error["field"], error["message"]) == (
        "name",
        "Another market place is already called 'Dairy': choose another name.",
    )
    renamed = await editor.post(f"/admin/market-places/{cheese}/rename/", data={"name": "DAIRY"})
    assert renamed.status_code == 409
    assert renamed.json()["errors"][0]["field"] == "name"
    page = await editor.post(
        f"/admin/market-places/{cheese}/rename/", data={"name": "Dairy"}, headers=HTML
    )
    assert page.status_code == 409
    assert "Another market place is already called" in page.text
    # Its own name, in another case, is no collision; a removed one's name is free again.
    first_id = first.json()["id"]
    assert (
        await editor.post(f"/admin/market-places/{first_id}/rename/", data={"name": "DAIRY"})
    ).status_code == 200
    assert (await editor.post(f"/admin/market-places/{first_id}/delete/")).status_code == 200
    assert (
        await editor.post(f"/admin/market-places/{cheese}/rename/", data={"name": "Dairy"})
    ).status_code == 200
    assert places(clean_db) == [("dairy", "DAIRY", 1, False), ("cheese", "Dairy", 2, True)]


async def test_a_non_ascii_name_is_compared_in_one_case_mapping(stack, clean_db):
    """Review 6 L3: the name was lowered by PostgreSQL on one side and by Python on the other,
    which differ for some letters (Python lowers 'İ' to 'i' and a combining dot): the same name
    in capitals was taken as another."""
    editor = await browser_of(stack, "market", user_id=1)
    first = await editor.post(
        "/admin/market-places/", data={"name": "İzmir Bazaar", "slug": "izmir", "page_id": "1"}
    )
    assert first.status_code == 201, first.text
    same = await editor.post(
        "/admin/market-places/", data={"name": "İZMIR BAZAAR", "slug": "izmir-2", "page_id": "2"}
    )
    assert same.status_code == 409, same.text


async def test_a_market_place_with_products_is_not_deleted(stack, clean_db):
    editor = await browser_of(stack, "market", user_id=1)
    place_id = (
        await editor.post(
            "/admin/market-places/", data={"name": "Dairy", "slug": "dairy", "page_id": "2"}
        )
    ).json()["id"]
    with admin_connect(clean_db, "market") as connection:
        connection.execute(
            "INSERT INTO market.products (slug, title, regular_price, market_place_id) "
            "VALUES ('milk', 'Milk', 1.20, %s)",
            (place_id,),
        )
    refused = await editor.post(f"/admin/market-places/{place_id}/delete/")
    assert refused.status_code == 409
    assert (
        refused.json()["errors"][0]["message"] == "Dairy still sells 1 product: remove them first."
    )
    assert places(clean_db) == [("dairy", "Dairy", 2, True)]
    assert live_relations(clean_db) == [("page", 2, "market", place_id, "Dairy")]


async def test_only_editors_change_market_places(stack, clean_db):
    someone = await browser_of(stack, "market", user_id=2)
    answer = await someone.post(
        "/admin/market-places/", data={"name": "X", "slug": "x", "page_id": "1"}
    )
    assert answer.status_code == 403
    assert (await someone.get("/admin/market-places/")).status_code == 403
    assert places(clean_db) == []


class FailingAttach:
    """relations, except that attach-child answers 500."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/internal/actions/attach-child":
            await read_body(receive)
            await send_problem(send, 500, "boom", scope["path"])
            return
        await self.app(scope, receive, send)


async def test_relations_failing_leaves_no_market_place_behind(stack, clean_db):
    editor = await browser_of(stack, "market", user_id=1)
    failing = FailingAttach(stack.apps["relations"])
    for client in stack.all_internal:
        client.route("relations", failing)
    answer = await editor.post(
        "/admin/market-places/", data={"name": "Veg", "slug": "veg", "page_id": "1"}
    )
    assert answer.status_code == 502
    assert "Nothing was changed" in answer.json()["detail"]
    assert places(clean_db) == []


def route_relations(stack, app: Any) -> None:
    for client in stack.all_internal:
        client.route("relations", app)


async def test_an_attach_that_timed_out_but_was_applied_is_undone(stack, clean_db):
    """Audit s20 M1 (a): relations applied the attach, but its answer came after market's
    timeout (every attempt). Market said "Nothing was changed" and rolled the market place
    back, and relations kept a live attachment of a market place that never existed. Now
    what relations may have done is undone by market's outbox (queued before the answer, which
    says so; audit s21b B3: not tried again in the request)."""
    editor = await browser_of(stack, "market", user_id=1)
    route_relations(stack, AnswersLost(stack.apps["relations"], "attach-child", lost=3))
    answer = await editor.post(
        "/admin/market-places/", data={"name": "Ghost", "slug": "ghost", "page_id": "1"}
    )
    assert answer.status_code == 503, answer.text
    assert "will be undone when relations answers again" in answer.json()["detail"]
    assert places(clean_db) == []
    await relay_until_delivered(stack, clean_db)
    assert live_relations(clean_db) == []


async def test_a_detach_that_timed_out_but_was_applied_is_undone(stack, clean_db):
    """The same for removing a market place: it stays, and stays attached to its page."""
    editor = await browser_of(stack, "market", user_id=1)
    place_id = (
        await editor.post(
            "/admin/market-places/", data={"name": "Dairy", "slug": "dairy", "page_id": "2"}
        )
    ).json()["id"]
    route_relations(stack, AnswersLost(stack.apps["relations"], "detach-child", lost=3))
    answer = await editor.post(f"/admin/market-places/{place_id}/delete/")
    assert answer.status_code == 503, answer.text
    assert "will be undone when relations answers again" in answer.json()["detail"]
    assert places(clean_db) == [("dairy", "Dairy", 2, True)]
    await relay_until_delivered(stack, clean_db)
    assert live_relations(clean_db) == [("page", 2, "market", place_id, "Dairy")]


async def test_an_attach_relations_may_have_applied_is_not_said_to_have_changed_nothing(
    stack, clean_db
):
    """When relations cannot be reached to undo it either, the answer does not claim that
    nothing was changed: relations may show the market place, which does not exist."""
    editor = await browser_of(stack, "market", user_id=1)
    route_relations(stack, AnswersLost(stack.apps["relations"], "attach-child", lost=100))
    answer = await editor.post(
        "/admin/market-places/", data={"name": "Ghost", "slug": "ghost", "page_id": "1"}
    )
    assert answer.status_code == 503, answer.text
    detail = answer.json()["detail"]
    assert "Nothing was changed" not in detail, detail
    assert "may" in detail, detail
    assert places(clean_db) == []


async def test_a_failed_commit_undoes_the_attach_in_relations(stack, clean_db, monkeypatch):
    from apps.market import service

    editor = await browser_of(stack, "market", user_id=1)
    real = service.commit_or_revert_relations

    async def failing_commit(session, link, calls, doing):
        async def boom() -> None:
            raise RuntimeError("commit failed")

        session.commit = boom
        await real(session, link, calls, doing)

    monkeypatch.setattr(service, "commit_or_revert_relations", failing_commit)
    answer = await editor.post(
        "/admin/market-places/", data={"name": "Veg", "slug": "veg", "page_id": "1"}
    )
    assert answer.status_code == 500
    assert places(clean_db) == []
    assert live_relations(clean_db) == []


class UnreachableAfterApplying:
    """relations, except that until ``back``: attach-child is applied and its answer lost (the
    caller times out), the first ``applied`` times (None: every time), and every other call
    finds relations unreachable."""

    def __init__(self, app: Any, applied: int | None = None) -> None:
        self.app = app
        self.back = False
        self.applied = applied

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.back or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/internal/actions/attach-child" and self.applied != 0:
            if self.applied is not None:
                self.applied -= 1

            async def nowhere(message: Any) -> None:
                pass

            await self.app(scope, receive, nowhere)
            raise httpx.ReadTimeout("no answer in time")
        raise httpx.ConnectError("relations is unreachable")


def outbox_rows(server) -> list[tuple]:
    with admin_connect(server, "market") as connection:
        return connection.execute(
            "SELECT action, idempotency_key, delivered_at IS NOT NULL FROM market.outbox "
            "ORDER BY id"
        ).fetchall()


async def relay_until_delivered(stack: InProcessStack, server) -> None:
    """Market's relay passes (the backoff of its earlier failures counted as passed) until its
    outbox holds nothing undelivered; bounded, so a relay that never delivers fails the test."""
    relay = stack.apps["market"].state.relations_link.relay

    def due_now() -> None:
        with admin_connect(server, "market") as connection:
            connection.execute("UPDATE market.outbox SET next_attempt_at = now()")

    for _ in range(50):
        # In a thread: the relay's own loop may hold a message's row meanwhile (woken when it
        # was queued); blocking the event loop on that lock would stall the relay itself.
        await asyncio.to_thread(due_now)
        await relay.deliver_due()
        if all(delivered for *_, delivered in outbox_rows(server)):
            return
        await asyncio.sleep(0.1)  # the relay's own loop holds a message: let it finish


async def test_an_attach_relations_applied_but_could_not_undo_is_undone_once_it_answers(
    clean_db, credentials
):
    """Relations applied the attach of a market place market then rolled back, and could not
    be reached to undo it: the undo was only logged, and relations showed the market place, which
    never existed, for good. Now the repeat of the attach under its key and then its undo are
    kept in market's outbox, which survives a restart of market: its relay delivers them once
    relations answers, and the ghost attachment is gone."""
    insert_post(clean_db, "farm-shop", title="Farm Shop", is_page=True)
    async with in_process_stack(clean_db, credentials, ["market", "relations"]) as first:
        editor = await browser_of(first, "market", user_id=1)
        route_relations(first, UnreachableAfterApplying(first.apps["relations"]))
        answer = await editor.post(
            "/admin/market-places/", data={"name": "Ghost", "slug": "ghost", "page_id": "1"}
        )
        assert answer.status_code == 503, answer.text
        detail = answer.json()["detail"]
        assert "Nothing was changed" not in detail, detail
        assert "will be undone when relations answers" in detail, detail
        assert places(clean_db) == []
        [ghost] = live_relations(clean_db)
        assert ghost[:3] == ("page", 1, "market")
        [(action, key, delivered)] = outbox_rows(clean_db)
        assert (action, delivered) == ("attach-child", False)
    # Market restarts; relations answers again.
    async with in_process_stack(clean_db, credentials, ["market", "relations"]) as restarted:
        await relay_until_delivered(restarted, clean_db)
    assert live_relations(clean_db) == []
    assert outbox_rows(clean_db) == [
        ("attach-child", key, True),  # the repeat, under the attach's own key: applied once
        ("detach-child", f"{key}-undo", True),
    ]


async def test_an_attach_that_timed_out_then_found_relations_unreachable_is_undone(stack, clean_db):
    """The attach was applied and its answer lost; the client's retries then found relations
    unreachable. The call's error was the last attempt's ("unreachable"), as if nothing had
    been sent, so market said "Nothing was changed", asked for no undo, and relations kept the
    ghost. An earlier attempt of unknown outcome now makes the call's outcome unknown."""
    editor = await browser_of(stack, "market", user_id=1)
    down = UnreachableAfterApplying(stack.apps["relations"], applied=1)
    route_relations(stack, down)
    answer = await editor.post(
        "/admin/market-places/", data={"name": "Ghost", "slug": "ghost", "page_id": "1"}
    )
    assert answer.status_code == 503, answer.text
    detail = answer.json()["detail"]
    assert "Nothing was changed" not in detail, detail
    assert "will be undone when relations answers" in detail, detail
    assert places(clean_db) == []
    [ghost] = live_relations(clean_db)
    assert ghost[:3] == ("page", 1, "market")
    down.back = True
    await relay_until_delivered(stack, clean_db)
    assert live_relations(clean_db) == []


async def test_a_failed_commit_whose_undo_relations_could_not_take_is_undone_later(
    stack, clean_db, monkeypatch
):
    """The commit failed after relations attached the market place, and relations could not be
    reached for the undo: it was logged and forgotten. Now it is queued in market's outbox, the
    answer says so, and the relay delivers it when relations answers."""
    from apps.market import service

    editor = await browser_of(stack, "market", user_id=1)
    real = service.commit_or_revert_relations
    down = UnreachableAfterApplying(stack.apps["relations"])
    down.back = True

    async def failing_commit(session, link, calls, *doing):
        async def boom() -> None:
            raise RuntimeError("commit failed")

        session.commit = boom
        down.back = False  # relations goes away after attaching
        await real(session, link, calls, *doing)

    monkeypatch.setattr(service, "commit_or_revert_relations", failing_commit)
    route_relations(stack, down)
    answer = await editor.post(
        "/admin/market-places/", data={"name": "Veg", "slug": "veg", "page_id": "1"}
    )
    assert answer.status_code == 500, answer.text
    assert "when it answers again" in answer.json()["detail"], answer.text
    assert places(clean_db) == []
    [ghost] = live_relations(clean_db)
    assert ghost[:3] == ("page", 1, "market")
    down.back = True
    await relay_until_delivered(stack, clean_db)
    assert live_relations(clean_db) == []
    [(action, _key, delivered)] = outbox_rows(clean_db)
    assert (action, delivered) == ("detach-child", True)


async def test_an_undo_still_queued_never_lands_after_a_later_change(stack, clean_db, monkeypatch):
    """Removing a market place failed at commit after relations detached it, and relations was
    unreachable for the undo (a re-attach, queued). Relations is back while the relay's backoff
    still runs, and the market place is removed again: had the queued re-attach been delivered
    after that, relations would show a market place market deleted. A change of a child first
    delivers what is still queued about it."""
    from apps.market import service

    editor = await browser_of(stack, "market", user_id=1)
    place_id = (
        await editor.post(
            "/admin/market-places/", data={"name": "Dairy", "slug": "dairy", "page_id": "2"}
        )
    ).json()["id"]
    real = service.commit_or_revert_relations
    down = UnreachableAfterApplying(stack.apps["relations"], applied=0)
    down.back = True

    async def failing_commit(session, link, calls, *doing):
        async def boom() -> None:
            raise RuntimeError("commit failed")

        session.commit = boom
        down.back = False
        await real(session, link, calls, *doing)

    monkeypatch.setattr(service, "commit_or_revert_relations", failing_commit)
    route_relations(stack, down)
    failed = await editor.post(f"/admin/market-places/{place_id}/delete/")
    assert failed.status_code == 500, failed.text
    assert places(clean_db) == [("dairy", "Dairy", 2, True)]
    assert live_relations(clean_db) == []  # detached in relations; the re-attach is queued
    monkeypatch.setattr(service, "commit_or_revert_relations", real)
    down.back = True
    with admin_connect(clean_db, "market") as connection:  # the relay's backoff still runs
        connection.execute("UPDATE market.outbox SET next_attempt_at = now() + interval '1 hour'")

    deleted = await editor.post(f"/admin/market-places/{place_id}/delete/")
    assert deleted.status_code == 200, deleted.text
    await relay_until_delivered(stack, clean_db)
    assert places(clean_db) == [("dairy", "Dairy", 2, False)]
    assert live_relations(clean_db) == []
    assert [(action, delivered) for action, _key, delivered in outbox_rows(clean_db)] == [
        ("attach-child", True)
    ]


class RelationsAnswering:
    """relations, except that while ``status`` is set every call is answered with it (a
    problem), unapplied."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.status: int | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.status is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await read_body(receive)
        await send_problem(send, self.status, "relations is not taking this now", scope["path"])


def outbox_states(server) -> list[tuple]:
    """(action, attempts, delivered, dead, last error) of each message of market's outbox."""
    with admin_connect(server, "market") as connection:
        return connection.execute(
            "SELECT action, attempts, delivered_at IS NOT NULL, dead_at IS NOT NULL, last_error "
            "FROM market.outbox ORDER BY id"
        ).fetchall()


async def queue_a_reattach(stack, server, monkeypatch, editor, place_id: int) -> Any:
    """Removing the market place fails at commit after relations detached it, and relations is
    unreachable for the undo: a re-attach (with the market place's name as its label) is
    queued in market's outbox. Relations answers again (the returned app; its relay's backoff
    still runs)."""
    from apps.market import service

    real = service.commit_or_revert_relations
    down = UnreachableAfterApplying(stack.apps["relations"], applied=0)
    down.back = True

    async def failing_commit(session, link, calls, *doing):
        async def boom() -> None:
            raise RuntimeError("commit failed")

        session.commit = boom
        down.back = False
        await real(session, link, calls, *doing)

    monkeypatch.setattr(service, "commit_or_revert_relations", failing_commit)
    answering = RelationsAnswering(down)
    route_relations(stack, answering)
    failed = await editor.post(f"/admin/market-places/{place_id}/delete/")
    assert failed.status_code == 500, failed.text
    monkeypatch.setattr(service, "commit_or_revert_relations", real)

    def backoff_runs() -> None:
        with admin_connect(server, "market") as connection:
            connection.execute(
                "UPDATE market.outbox SET next_attempt_at = now() + interval '1 hour'"
            )

    # In a thread: the relay's loop may be delivering the undo (the row locked) meanwhile.
    await asyncio.to_thread(backoff_runs)
    down.back = True
    return answering


async def test_an_undo_relations_refuses_for_good_is_dead_and_blocks_nothing(
    stack, clean_db, monkeypatch, caplog
):
    """Audit LOW-4: the relay sent every message again until it was taken, whatever the
    answer, and a change of a child waited for what the outbox held about it. An undo relations
    refuses for good (a re-attach whose label, stored before labels were checked, is not
    one line: a 422) was sent again every 5 minutes for ever, and every later change of that
    market place answered 503 "waits for relations to undo an earlier change" until a person
    deleted the row. Now such a refusal is final: the message is dead (``dead_at``), logged
    once as an error saying what was refused and why, never sent again, and the next change of
    the market place goes through."""
    editor = await browser_of(stack, "market", user_id=1)
    place_id = (
        await editor.post(
            "/admin/market-places/", data={"name": "Dairy", "slug": "dairy", "page_id": "2"}
        )
    ).json()["id"]
    with admin_connect(clean_db, "market") as connection:  # a name from before the check
        connection.execute(
            "UPDATE market.market_places SET name = E'Dairy\\nfarm' WHERE id = %s", (place_id,)
        )
    await queue_a_reattach(stack, clean_db, monkeypatch, editor, place_id)
    [(action, _key, delivered)] = outbox_rows(clean_db)
    assert (action, delivered) == ("attach-child", False)
    # As an earlier release queued it: its undo carried the label relations stored (this one
    # sends none, and relations restores the stored label).
    with admin_connect(clean_db, "market") as connection:
        connection.execute(
            "UPDATE market.outbox SET payload = jsonb_set(payload, '{label}', to_jsonb(%s::text))",
            ("Dairy\nfarm",),
        )

    deleted = await editor.post(f"/admin/market-places/{place_id}/delete/")
    assert deleted.status_code == 200, deleted.text
    assert places(clean_db) == [("dairy", "Dairy\nfarm", 2, False)]
    assert live_relations(clean_db) == []
    [(action, attempts, delivered, dead, error)] = outbox_states(clean_db)
    assert (action, delivered, dead) == ("attach-child", False, True)
    assert "answered 422: label: Label must be one line" in error, error
    refused = [
        r.getMessage()
        for r in caplog.records
        if r.name == "rose.outbox" and r.levelno >= logging.ERROR
    ]
    assert len(refused) == 1, refused
    assert "relations.attach-child refused for good" in refused[0], refused
    assert "answered 422: label: Label must be one line" in refused[0], refused

    # An operator sees it: /metrics counts it as dead, not as waiting.
    metrics = (await editor.get("/metrics")).text
    assert "\nrose_outbox_dead 1.0\n" in metrics
    assert "\nrose_outbox_backlog 0.0\n" in metrics

    # Never sent again, however long the relay runs.
    relay = stack.apps["market"].state.relations_link.relay
    with admin_connect(clean_db, "market") as connection:
        connection.execute("UPDATE market.outbox SET next_attempt_at = now()")
    assert await relay.deliver_due() == 0
    assert [row[1] for row in outbox_states(clean_db)] == [attempts]


async def test_an_undo_relations_cannot_take_now_is_retried_and_still_blocks(
    stack, clean_db, monkeypatch
):
    """A 503 is not a refusal: the undo stays queued, is sent again, and a later change of the
    market place still waits for it (delivered after that change, it would undo it)."""
    editor = await browser_of(stack, "market", user_id=1)
    place_id = (
        await editor.post(
            "/admin/market-places/", data={"name": "Dairy", "slug": "dairy", "page_id": "2"}
        )
    ).json()["id"]
    answering = await queue_a_reattach(stack, clean_db, monkeypatch, editor, place_id)
    answering.status = 503
    blocked = await editor.post(f"/admin/market-places/{place_id}/delete/")
    assert blocked.status_code == 503, blocked.text
    assert "waits for relations to undo an earlier change" in blocked.json()["detail"]
    [(action, attempts, delivered, dead, error)] = outbox_states(clean_db)
    assert (action, delivered, dead) == ("attach-child", False, False)
    assert attempts >= 2, attempts
    assert "answered 503" in error, error

    answering.status = None
    deleted = await editor.post(f"/admin/market-places/{place_id}/delete/")
    assert deleted.status_code == 200, deleted.text
    assert [(row[0], row[2], row[3]) for row in outbox_states(clean_db)] == [
        ("attach-child", True, False)
    ]
    assert places(clean_db) == [("dairy", "Dairy", 2, False)]
    assert live_relations(clean_db) == []


async def test_a_relations_change_needs_one_connection_of_the_pool(clean_db, credentials):
    """Audit LOW-3: the look for undos still queued about the child (before every relations
    call) took a second connection of market's pool while the request's transaction held its
    own: with every connection held by such a request, each waited for a second one until the
    pool's timeout, and failed. It reads in the request's own transaction now: with a pool of
    one connection (no overflow), market places are created and removed."""
    insert_post(clean_db, "farm-shop", title="Farm Shop", is_page=True)
    one = {"database_pool_size": 1, "database_pool_timeout": 3.0}
    async with in_process_stack(
        clean_db, credentials, ["market", "relations", "blog"], settings_overrides={"market": one}
    ) as small:
        editor = await browser_of(small, "market", user_id=1)
        created = await editor.post(
            "/admin/market-places/", data={"name": "Veg", "slug": "veg", "page_id": "1"}
        )
        assert created.status_code == 201, created.text
        place_id = created.json()["id"]
        assert live_relations(clean_db) == [("page", 1, "market", place_id, "Veg")]
        deleted = await editor.post(f"/admin/market-places/{place_id}/delete/")
        assert deleted.status_code == 200, deleted.text
    assert places(clean_db) == [("veg", "Veg", 1, False)]
    assert live_relations(clean_db) == []


class SilentServer:
    """A real socket server that accepts connections, reads what is sent, and never answers
    (relations stopped with SIGSTOP: the kernel still accepts). ``requests``: the first line of
    each request it got."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self._server: asyncio.Server | None = None
        self._held: list[asyncio.StreamWriter] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._held.append(writer)
        line = await reader.readline()
        if line:
            self.requests.append(line.decode("latin-1").strip())
        await reader.read()  # until the client gives up

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._held:
            writer.close()


async def test_relations_not_answering_is_a_prompt_503_and_the_undo_is_queued(
    clean_db, credentials
):
    """Audit s21b B3: with relations accepting connections but never answering, creating a
    market place answered 503 only after the attach's three tries and then three more of its
    repeat (to undo it at once), some 31 s, longer than many clients and proxies wait. Now,
    once the attach's outcome is unknown, its undo is queued in market's outbox at once (the
    repeat under its key, then the undo) and the 503 answers, naming relations: relations got
    the attach's tries and nothing more from the request. Delivered once relations answers."""
    insert_post(clean_db, "farm-shop", title="Farm Shop", is_page=True)
    silent = SilentServer()
    async with silent as url:
        market = {"internal_urls": {"relations": url}}
        async with in_process_stack(
            clean_db, credentials, ["market"], settings_overrides={"market": market}
        ) as first:
            # Market's relay stopped (as if restarting): what relations gets is the request's.
            await first.apps["market"].state.relations_link.relay.stop()
            editor = await browser_of(first, "market", user_id=1)
            answer = await editor.post(
                "/admin/market-places/", data={"name": "Veg", "slug": "veg", "page_id": "1"}
            )
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        problem = answer.json()
        assert problem["service"] == "relations", problem
        assert "will be undone when relations answers again" in problem["detail"], problem
        assert "Nothing was changed" not in problem["detail"], problem
        # The attach's own tries (the client's retries), no more.
        assert silent.requests == ["POST /internal/actions/attach-child HTTP/1.1"] * 3
    assert places(clean_db) == []
    [(action, key, delivered)] = outbox_rows(clean_db)
    assert (action, delivered) == ("attach-child", False)

    # Relations answers: the repeat (applied once, under the attach's key), then its undo.
    async with in_process_stack(clean_db, credentials, ["market", "relations"]) as restarted:
        await relay_until_delivered(restarted, clean_db)
    assert outbox_rows(clean_db) == [
        ("attach-child", key, True),
        ("detach-child", f"{key}-undo", True),
    ]
    assert live_relations(clean_db) == []


async def test_blog_attaches_only_market_places_that_exist_and_shows_their_names(stack, clean_db):
    editor = await browser_of(stack, "market", user_id=1)
    place_id = (
        await editor.post(
            "/admin/market-places/", data={"name": "Veg stall", "slug": "veg", "page_id": "1"}
        )
    ).json()["id"]
    blog = await browser_of(stack, "blog", user_id=1)
    full_width = "".join(chr(ord(digit) + 0xFEE0) for digit in str(place_id))
    for wrong in ("9999", "x", "", full_width):
        refused = await blog.post(
            "/market-hall/admin/menu-items/attach/", data={"market_place_id": wrong}
        )
        assert refused.status_code == 422, (wrong, refused.text)
        assert refused.json()["errors"] == [
            {"field": "market_place_id", "message": "Choose one of the market places."}
        ]
        page = await blog.post(
            "/market-hall/admin/menu-items/attach/",
            data={"market_place_id": wrong},
            headers=HTML,
        )
        assert page.status_code == 422
        assert 'id="error-market_place_id"' in page.text
    assert [row for row in live_relations(clean_db) if row[1] == 2] == []

    attached = await blog.post(
        "/market-hall/admin/menu-items/attach/", data={"market_place_id": str(place_id)}
    )
    assert attached.status_code == 200, attached.text
    assert live_relations(clean_db)[-1] == ("page", 2, "market", place_id, "Veg stall")

    # Renamed in market: blog shows market's name (through FDW), not the label it stored.
    await editor.post(f"/admin/market-places/{place_id}/rename/", data={"name": "Greens"})
    post = (await blog.get("/api/posts/market-hall")).json()
    assert [(m["child_id"], m["name"]) for m in post["markets"]] == [(place_id, "Greens")]
    shown = await blog.get("/market-hall/", headers=HTML)
    assert "Greens" in shown.text
    assert "Market place 9999" not in shown.text
    admin = await blog.get("/market-hall/admin/page-config/", headers=HTML)
    assert "Greens" in admin.text


async def test_a_relation_to_a_market_place_market_does_not_have_is_not_shown(stack, clean_db):
    """What the old admin let through (market place 9999) no longer shows on the page."""
    client = stack.internal
    await client.call_action(
        "relations",
        "attach-child",
        {"parent_type": "page", "parent_id": 1, "child_type": "market", "child_id": 9999},
    )
    blog = await browser_of(stack, "blog")
    post = (await blog.get("/api/posts/farm-shop")).json()
    assert post["markets"] == []
    page = await blog.get("/farm-shop/", headers=HTML)
    assert "9999" not in page.text


# Audit: control characters, text-direction overrides and invisible-only names were stored as
# typed; a name is one line a person can read.
NOT_NAMES = [
    "Veg\x1b[31m stall",  # an escape sequence
    "Veg\nstall",
    "Veg stall\t",
    "Veg\x7f",
    "Veg\x85stall",  # C1 (NEL)
    "\u202eVeg stall",  # right-to-left override
    "Veg \u2066stall\u2069",  # isolate
    "\u3000\u3000",  # ideographic spaces only
    " \u200b ",  # a zero-width space: blank on the page
]


async def test_a_name_is_one_readable_line(stack, clean_db):
    editor = await browser_of(stack, "market", user_id=1)
    for wrong in NOT_NAMES:
        form = {"name": wrong, "slug": "veg", "page_id": "1"}
        refused = await editor.post("/admin/market-places/", data=form)
        assert refused.status_code == 422, (wrong, refused.text)
        [error] = refused.json()["errors"]
        assert error["field"] == "name"
        assert error["message"][0].isupper()
        page = await editor.post("/admin/market-places/", data=form, headers=HTML)
        assert page.status_code == 422
        assert 'id="error-name"' in page.text
    assert places(clean_db) == []

    created = await editor.post(
        "/admin/market-places/", data={"name": "\u00a0 Veg stall  ", "slug": "veg", "page_id": "1"}
    )
    assert created.status_code == 201, created.text
    place_id = created.json()["id"]
    assert places(clean_db) == [("veg", "Veg stall", 1, True)]
    assert live_relations(clean_db) == [("page", 1, "market", place_id, "Veg stall")]
    for wrong in NOT_NAMES:
        refused = await editor.post(
            f"/admin/market-places/{place_id}/rename/", data={"name": wrong}
        )
        assert refused.status_code == 422, (wrong, refused.text)
        assert refused.json()["errors"][0]["field"] == "name"
    assert places(clean_db) == [("veg", "Veg stall", 1, True)]


async def test_blog_labels_are_one_readable_line(stack, clean_db):
    editor = await browser_of(stack, "market", user_id=1)
    place_id = (
        await editor.post(
            "/admin/market-places/", data={"name": "Veg stall", "slug": "veg", "page_id": "1"}
        )
    ).json()["id"]
    blog = await browser_of(stack, "blog", user_id=1)
    for wrong in NOT_NAMES[:-2]:  # a blank label is no label: the market place's name
        refused = await blog.post(
            "/market-hall/admin/menu-items/attach/",
            data={"market_place_id": str(place_id), "label": wrong},
        )
        assert refused.status_code == 422, (wrong, refused.text)
        assert refused.json()["errors"][0]["field"] == "label"
        page = await blog.post(
            "/market-hall/admin/menu-items/attach/",
            data={"market_place_id": str(place_id), "label": wrong},
            headers=HTML,
        )
        assert page.status_code == 422
    assert [row for row in live_relations(clean_db) if row[1] == 2] == []
    attached = await blog.post(
        "/market-hall/admin/menu-items/attach/",
        data={"market_place_id": str(place_id), "label": "  Greens\u3000"},
    )
    assert attached.status_code == 200, attached.text
    assert live_relations(clean_db)[-1] == ("page", 2, "market", place_id, "Greens")
    # Review-2: a label that shows nothing (a zero-width space, a Hangul filler) is no label,
    # as a blank one is: the market place's name, not a 422.
    for nothing in (" \u200b ", "\u3164"):
        detached = await blog.post(
            "/market-hall/admin/menu-items/detach/", data={"market_place_id": str(place_id)}
        )
        assert detached.status_code == 200, detached.text
        attached = await blog.post(
            "/market-hall/admin/menu-items/attach/",
            data={"market_place_id": str(place_id), "label": nothing},
        )
        assert attached.status_code == 200, (nothing, attached.text)
        assert live_relations(clean_db)[-1] == ("page", 2, "market", place_id, "Veg stall")


FORM = {"content-type": "application/x-www-form-urlencoded"}


async def test_a_form_field_that_is_not_utf8_is_refused_naming_it(stack, clean_db):
    """Audit: ``name=%FF%FE`` was read as two U+FFFD and stored. Form bytes are UTF-8 or the
    form is refused, naming the field; UTF-8 sent unencoded (``curl -d name=Café``) is read as
    UTF-8, not as Latin-1."""
    editor = await browser_of(stack, "market", user_id=1)
    for body in (b"name=%FF%FE&slug=veg&page_id=1", b"name=Veg\xff&slug=veg&page_id=1"):
        refused = await editor.post("/admin/market-places/", content=body, headers=FORM)
        assert 400 <= refused.status_code < 500, (body, refused.text)
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["detail"].startswith("name:"), refused.text
        assert refused.json()["errors"][0]["field"] == "name"
        page = await editor.post("/admin/market-places/", content=body, headers={**FORM, **HTML})
        assert page.headers["content-type"].startswith("text/html")
        assert page.status_code == refused.status_code
    assert places(clean_db) == []
    raw = "name=Caf\u00e9 &slug=cafe&page_id=1".encode()
    created = await editor.post("/admin/market-places/", content=raw, headers=FORM)
    assert created.status_code == 201, created.text
    assert places(clean_db) == [("cafe", "Caf\u00e9", 1, True)]


async def test_a_multipart_form_that_is_not_utf8_is_a_client_error(stack, clean_db):
    blog = await browser_of(stack, "blog", user_id=1)
    body = (
        b'--b\r\nContent-Disposition: form-data; name="sumup_checkout_prefix"\r\n\r\n'
        b"shop\xff\r\n--b--\r\n"
    )
    answer = await blog.post(
        "/farm-shop/admin/page-config/",
        content=body,
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert "UTF-8" in answer.json()["detail"]


def relations_by_page(server) -> list[tuple]:
    with admin_connect(server, "relations") as connection:
        return connection.execute(
            "SELECT parent_id, child_id, label, sort_order, deleted_at IS NULL "
            "FROM relations.container_relations WHERE child_type = 'market' ORDER BY id"
        ).fetchall()


async def _place_on_two_pages(stack) -> tuple[Any, int]:
    """Market place 'Veg' on market-hall (page 2), attached by blog's admin to farm-shop (page 1)
    too, under a label of its own, after another child there (so its sort order is not 0)."""
    editor = await browser_of(stack, "market", user_id=1)
    first = {"name": "Fruit", "slug": "fruit", "page_id": "1"}
    assert (await editor.post("/admin/market-places/", data=first)).status_code == 201
    form = {"name": "Veg", "slug": "veg", "page_id": "2"}
    place_id = (await editor.post("/admin/market-places/", data=form)).json()["id"]
    blog = await browser_of(stack, "blog", user_id=1)
    attached = await blog.post(
        "/farm-shop/admin/menu-items/attach/",
        data={"market_place_id": str(place_id), "label": "Greens here"},
    )
    assert attached.status_code == 200, attached.text
    return editor, place_id


async def test_removing_a_market_place_detaches_it_from_every_page(stack, clean_db):
    """Blog's page admin may attach a market place to any page: removing it in market detaches
    it from all of them, not only from its own (before: farm-shop's row stayed live, hidden by
    blog, and no editor could see or detach it)."""
    editor, place_id = await _place_on_two_pages(stack)
    deleted = await editor.post(f"/admin/market-places/{place_id}/delete/")
    assert deleted.status_code == 200, deleted.text
    assert [row for row in relations_by_page(clean_db) if row[1] == place_id and row[4]] == []


async def test_a_failed_commit_reattaches_the_place_everywhere_exactly_as_it_was(
    stack, clean_db, monkeypatch
):
    from apps.market import service

    editor, place_id = await _place_on_two_pages(stack)
    before = relations_by_page(clean_db)
    real = service.commit_or_revert_relations

    async def failing_commit(session, link, calls, *doing):
        async def boom() -> None:
            raise RuntimeError("commit failed")

        session.commit = boom
        await real(session, link, calls, *doing)

    monkeypatch.setattr(service, "commit_or_revert_relations", failing_commit)
    failed = await editor.post(f"/admin/market-places/{place_id}/delete/")
    assert failed.status_code == 500, failed.text
    assert places(clean_db)[-1] == ("veg", "Veg", 2, True)
    # The same rows, live again, with their labels and sort orders.
    assert relations_by_page(clean_db) == before


class SecondDetachFails:
    """relations, except that the second detach-child it is sent answers 500."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.detaches = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/internal/actions/detach-child":
            self.detaches += 1
            if self.detaches == 2:
                await read_body(receive)
                await send_problem(send, 500, "boom", scope["path"])
                return
        await self.app(scope, receive, send)


async def test_a_detach_relations_refuses_reattaches_those_done_exactly(stack, clean_db):
    """Removing a market place on two pages: relations detaches it from the first, then fails
    the second. Nothing was changed: the first is re-attached with its label and sort order."""
    editor, place_id = await _place_on_two_pages(stack)
    before = relations_by_page(clean_db)
    route_relations(stack, SecondDetachFails(stack.apps["relations"]))
    failed = await editor.post(f"/admin/market-places/{place_id}/delete/")
    assert failed.status_code == 502, failed.text
    assert "Nothing was changed" in failed.json()["detail"]
    assert places(clean_db)[-1] == ("veg", "Veg", 2, True)
    assert relations_by_page(clean_db) == before


class LaterDetachAnswersLost:
    """relations, except that the answers to detach-child calls 2 to 4 are lost after it
    applied them (market's client times out on the second detach, every attempt)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.detaches = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/internal/actions/detach-child":
            self.detaches += 1
            if 2 <= self.detaches <= 4:

                async def nowhere(message: Any) -> None:
                    pass

                await self.app(scope, receive, nowhere)
                raise httpx.ReadTimeout("no answer in time")
        await self.app(scope, receive, send)


async def test_a_detach_that_timed_out_but_was_applied_is_undone_to_where_it_was(stack, clean_db):
    """A detach whose answer was lost is repeated, then undone, by market's outbox: the undo
    puts the market place back where it was among the page's children, not at their end
    (before: it took its label back but came after Herbs, attached after it)."""
    editor, place_id = await _place_on_two_pages(stack)
    herbs = {"name": "Herbs", "slug": "herbs", "page_id": "2"}
    herbs_id = (await editor.post("/admin/market-places/", data=herbs)).json()["id"]
    blog = await browser_of(stack, "blog", user_id=1)
    attached = await blog.post(
        "/farm-shop/admin/menu-items/attach/", data={"market_place_id": str(herbs_id)}
    )
    assert attached.status_code == 200, attached.text
    before = relations_by_page(clean_db)
    route_relations(stack, LaterDetachAnswersLost(stack.apps["relations"]))
    answer = await editor.post(f"/admin/market-places/{place_id}/delete/")
    assert answer.status_code == 503, answer.text
    assert places(clean_db)[1] == ("veg", "Veg", 2, True)
    route_relations(stack, stack.apps["relations"])
    await relay_until_delivered(stack, clean_db)
    assert relations_by_page(clean_db) == before


def multipart(fields: list[tuple[str, str]]) -> bytes:
    parts = [
        f'--b\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields
    ]
    return ("".join(parts) + "--b--\r\n").encode()


async def test_a_form_refused_before_the_handler_is_the_admin_page_with_the_message_beside(
    stack, clean_db
):
    """probe: a name or web address name of 256+ characters, or page_id sent twice, were
    refused before the handler: a browser got the generic error page (a Home link), what was
    typed gone. It now gets the admin page, the message beside the field, the values kept; an
    API client still gets the problem naming the field."""
    editor = await browser_of(stack, "market", user_id=1)
    kept = (
        await editor.post(
            "/admin/market-places/", data={"name": "Veg", "slug": "veg", "page_id": "1"}
        )
    ).json()["id"]
    long = "x" * 256
    for form, field, message in [
        ({"name": long, "slug": "a", "page_id": "1"}, "name", "The name may be at most 255"),
        ({"name": "A", "slug": long, "page_id": "1"}, "slug", "The web address name may be"),
    ]:
        page = await editor.post("/admin/market-places/", data=form, headers=HTML)
        assert page.status_code == 422, page.text
        assert "<h1>Market places</h1>" in page.text  # the admin page, not the error page
        assert 'data-slug="veg"' in page.text
        assert f'<span class="field-error" role="alert" id="error-{field}">{message}' in (
            page.text
        ), page.text
        assert f'value="{form[field]}"' in page.text
        problem = await editor.post("/admin/market-places/", data=form)
        assert problem.status_code == 422
        assert problem.json()["errors"][0]["field"] == field
    renamed = await editor.post(
        f"/admin/market-places/{kept}/rename/", data={"name": long}, headers=HTML
    )
    assert renamed.status_code == 422, renamed.text
    assert f'id="error-name-{kept}">The name may be at most 255' in renamed.text
    twice = await editor.post(
        "/admin/market-places/",
        content=multipart([("name", "B"), ("slug", "b"), ("page_id", "1"), ("page_id", "2")]),
        headers={**HTML, "content-type": "multipart/form-data; boundary=b"},
    )
    assert twice.status_code == 422, twice.text
    assert 'id="error-page_id">' in twice.text, twice.text
    assert 'value="B"' in twice.text
    assert places(clean_db) == [("veg", "Veg", 1, True)]


async def test_a_refused_form_page_says_what_was_wrong_and_never_hides_it(stack, clean_db):
    """probe attacker2: a name or web address name given twice was told "may be at most 255
    characters" (the admin's words for a field that does not convert, used for any refusal of
    it); a rename of a market place the admin does not list (removed, never made, or an
    address no id can be) with a name too long was the admin page, 422, its message beside a
    place not on it: shown nowhere. A field given twice is now said to be; such a rename is
    refused as any form is (404 for an address no id can be, as a fitting name is)."""
    editor = await browser_of(stack, "market", user_id=1)
    for field in ("name", "slug"):
        fields = [("name", "B"), ("slug", "b"), ("page_id", "1"), (field, "again")]
        twice = await editor.post(
            "/admin/market-places/",
            content=multipart(fields),
            headers={**HTML, "content-type": "multipart/form-data; boundary=b"},
        )
        assert twice.status_code == 422, twice.text
        said = twice.text.split(f'id="error-{field}">', 1)[1].split("<", 1)[0]
        assert said == f"{field.capitalize()} given more than once.", said
        assert 'value="B"' in twice.text
    long = "x" * 256
    for place_id, status in [("99999", 422), ("0", 404), ("99999999999999999999", 404)]:
        page = await editor.post(
            f"/admin/market-places/{place_id}/rename/", data={"name": long}, headers=HTML
        )
        assert page.status_code == status, (place_id, page.text)
        assert "<h1>Market places</h1>" not in page.text, place_id
        if status == 422:
            assert "at most 255 characters" in page.text, page.text
    assert places(clean_db) == []


@pytest.mark.parametrize(
    ("column", "stored"),
    [("label", "''"), ("label", "'Greens' || chr(10) || 'here'"), ("sort_order", "-1")],
)
async def test_a_detach_undone_restores_what_relations_stored_even_if_it_would_refuse_it_now(
    stack, clean_db, column, stored
):
    """Review 7 M1: the undo of a detach re-attached with the label and sort order relations
    answered, which relations checks as any attach: a label or place the split moved from the
    monolith unchecked (a blank or two-line label, a negative sort order) was refused for good,
    and the place, kept in market, stayed off that page. The undo restores the row as stored."""
    editor, place_id = await _place_on_two_pages(stack)
    with admin_connect(clean_db, "relations") as connection:
        connection.execute(
            f"UPDATE relations.container_relations SET {column} = {stored} "
            "WHERE child_type = 'market' AND child_id = %s AND parent_id = 2",
            (place_id,),
        )
    before = relations_by_page(clean_db)
    route_relations(stack, SecondDetachFails(stack.apps["relations"]))
    failed = await editor.post(f"/admin/market-places/{place_id}/delete/")
    assert failed.status_code == 502, failed.text
    assert places(clean_db)[-1] == ("veg", "Veg", 2, True)
    route_relations(stack, stack.apps["relations"])
    await relay_until_delivered(stack, clean_db)
    assert relations_by_page(clean_db) == before
    with admin_connect(clean_db, "market") as connection:
        dead = connection.execute("SELECT count(*) FROM market.outbox WHERE dead_at IS NOT NULL")
        assert dead.fetchone() == (0,)


class DetachesNeverArrive:
    """relations, except that market's detach-child calls time out before relations sees
    them, until ``back`` is set."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.back = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        caller = dict(scope.get("headers", [])).get(b"x-rose-caller", b"")
        detach = scope["type"] == "http" and scope["path"] == "/internal/actions/detach-child"
        if detach and not self.back and caller.startswith(b"market"):
            await read_body(receive)
            raise httpx.ReadTimeout("no answer in time")
        await self.app(scope, receive, send)


async def test_the_undo_of_a_repeated_detach_that_detached_nothing_attaches_nothing(
    stack, clean_db
):
    """Review 7 L1: market's detach timed out before relations saw it; meanwhile an editor
    detached the place from market-hall in blog. The outbox's repeat then detached nothing,
    and its undo re-attached the place all the same: the editor's detach was lost."""
    editor, place_id = await _place_on_two_pages(stack)
    lossy = DetachesNeverArrive(stack.apps["relations"])
    route_relations(stack, lossy)
    answer = await editor.post(f"/admin/market-places/{place_id}/delete/")
    assert answer.status_code >= 500, answer.text
    blog = await browser_of(stack, "blog", user_id=1)
    gone = await blog.post(
        "/market-hall/admin/menu-items/detach/", data={"market_place_id": str(place_id)}
    )
    assert gone.status_code == 200, gone.text
    after_editor = relations_by_page(clean_db)
    lossy.back = True
    await relay_until_delivered(stack, clean_db)
    assert relations_by_page(clean_db) == after_editor


def _caller(scope: Any) -> bytes:
    return dict(scope.get("headers", [])).get(b"x-rose-caller", b"")


class Interleaved:
    """relations, with blog's attach-child and market's detach-child each held until an event:
    the two services' steps run in the order a test chooses (no shared lock orders them)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.attach_arrived = asyncio.Event()  # blog checked the place live, and asks to attach
        self.attach_may_go = asyncio.Event()
        self.parents_read = asyncio.Event()  # market read where the place is attached
        self.detach_may_go = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if path == "/internal/actions/attach-child" and _caller(scope).startswith(b"blog"):
            self.attach_arrived.set()
            await self.attach_may_go.wait()
        elif path == "/internal/actions/detach-child" and _caller(scope).startswith(b"market"):
            await self.detach_may_go.wait()
        await self.app(scope, receive, send)
        if path == "/internal/data/get-parents":
            self.parents_read.set()


async def _veg_on_market_hall(stack) -> tuple[Any, int]:
    editor = await browser_of(stack, "market", user_id=1)
    form = {"name": "Veg", "slug": "veg", "page_id": "2"}
    created = await editor.post("/admin/market-places/", data=form)
    assert created.status_code == 201, created.text
    return editor, created.json()["id"]


async def test_an_attach_of_a_place_removed_after_blog_checked_it_is_undone(stack, clean_db):
    """Review: blog checked the place live, then market removed it (read where it is attached,
    detached it, committed), then blog's attach reached relations: a live relation to a removed
    place. Blog checks again once relations attached it, finds it gone, and undoes its attach:
    the editor is told the place was removed meanwhile."""
    editor, place_id = await _veg_on_market_hall(stack)
    held = Interleaved(stack.apps["relations"])
    held.detach_may_go.set()
    route_relations(stack, held)
    blog = await browser_of(stack, "blog", user_id=1)
    attach = asyncio.create_task(
        blog.post("/farm-shop/admin/menu-items/attach/", data={"market_place_id": str(place_id)})
    )
    await held.attach_arrived.wait()
    deleted = await editor.post(f"/admin/market-places/{place_id}/delete/")
    assert deleted.status_code == 200, deleted.text
    held.attach_may_go.set()
    attached = await attach
    assert attached.status_code == 409, attached.text
    assert attached.headers["content-type"].startswith("application/problem+json")
    assert "Veg" in attached.json()["detail"]
    assert "removed" in attached.json()["detail"]
    assert [row for row in relations_by_page(clean_db) if row[1] == place_id and row[4]] == []


async def test_an_attach_made_while_market_removes_the_place_is_detached_after_its_commit(
    stack, clean_db
):
    """Review: market read where the place is attached, then blog attached it to farm-shop (its
    second look still saw the place live: market had not committed), then market committed the
    removal. Market looks again once committed and detaches what appeared meanwhile."""
    editor, place_id = await _veg_on_market_hall(stack)
    held = Interleaved(stack.apps["relations"])
    route_relations(stack, held)
    blog = await browser_of(stack, "blog", user_id=1)
    attach = asyncio.create_task(
        blog.post("/farm-shop/admin/menu-items/attach/", data={"market_place_id": str(place_id)})
    )
    await held.attach_arrived.wait()
    delete = asyncio.create_task(editor.post(f"/admin/market-places/{place_id}/delete/"))
    await held.parents_read.wait()
    held.attach_may_go.set()
    attached = await attach
    # Attached before the removal committed: a true answer then.
    assert attached.status_code == 200, attached.text
    held.detach_may_go.set()
    deleted = await delete
    assert deleted.status_code == 200, deleted.text
    assert places(clean_db)[-1] == ("veg", "Veg", 2, False)
    assert [row for row in relations_by_page(clean_db) if row[1] == place_id and row[4]] == []


class InterleavedSweepRefused(Interleaved):
    """:class:`Interleaved`, whose second detach-child from market (the one after the removal
    committed) answers 500."""

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self.market_detaches = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if path == "/internal/actions/detach-child" and _caller(scope).startswith(b"market"):
            self.market_detaches += 1
            if self.market_detaches == 2:
                await read_body(receive)
                await send_problem(send, 500, "boom", path)
                return
        await super().__call__(scope, receive, send)


async def test_a_detach_after_the_removal_relations_refuses_is_queued_and_never_undone(
    stack, clean_db
):
    """The detach of what appeared meanwhile, refused by relations, is delivered by market's
    outbox later; as the removal stands, nothing undoes it."""
    editor, place_id = await _veg_on_market_hall(stack)
    held = InterleavedSweepRefused(stack.apps["relations"])
    route_relations(stack, held)
    blog = await browser_of(stack, "blog", user_id=1)
    attach = asyncio.create_task(
        blog.post("/farm-shop/admin/menu-items/attach/", data={"market_place_id": str(place_id)})
    )
    await held.attach_arrived.wait()
    delete = asyncio.create_task(editor.post(f"/admin/market-places/{place_id}/delete/"))
    await held.parents_read.wait()
    held.attach_may_go.set()
    assert (await attach).status_code == 200
    held.detach_may_go.set()
    deleted = await delete
    assert deleted.status_code == 200, deleted.text  # the removal stands
    assert [row[:2] for row in relations_by_page(clean_db) if row[1] == place_id and row[4]] == [
        (1, place_id)
    ]
    await relay_until_delivered(stack, clean_db)
    assert [row for row in relations_by_page(clean_db) if row[1] == place_id and row[4]] == []
    assert [action for action, *_ in outbox_rows(clean_db)] == ["detach-child"]
