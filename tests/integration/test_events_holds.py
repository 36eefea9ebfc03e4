"""Anonymous holds of calendar entries are bounded per client network (an address, an IPv6
client's /64): an entry has one booker, so a hold is scarce, and a client minting a session per
booking held every bookable entry of the demo for 15 minutes, again and again, from one address
(sixteen requests). At most EVENTS_ANONYMOUS_HOLDS_PER_ADDRESS live anonymous holds per network, and
EVENTS_HOLDS_PER_ACCOUNT live holds per signed-in account (an account was the way round the
first: one held every entry). events over real HTTP against its real database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from apps.common.identity import CSRF_FIELD
from tests.conftest import in_process_stack
from tests.integration.test_events import (
    HTML,
    JSON,
    assert_problem,
    end_holds,
    entry_state,
    events_rows,
    insert_calendar,
    insert_entry,
    session_id_of,
)
from tests.signed import internal_post

LIMIT = 3


@asynccontextmanager
async def holds_stack(
    clean_db, credentials, limit: int = LIMIT, per_account: int | None = None
) -> AsyncIterator[Any]:
    extra = {"EVENTS_ANONYMOUS_HOLDS_PER_ADDRESS": str(limit)}
    if per_account is not None:
        extra["EVENTS_HOLDS_PER_ACCOUNT"] = str(per_account)
    async with in_process_stack(
        clean_db,
        credentials,
        ["events", "relations"],
        settings_overrides={"events": {"extra": extra}},
    ) as running:
        yield running


async def visitor_at(stack, address: str) -> httpx.AsyncClient:
    """A new anonymous session (``GET /auth/session`` without a cookie) at ``address``: what a
    client minting sessions makes for every booking."""
    client = stack.browser("events", address=address)
    response = await client.get("/auth/session", headers=JSON)
    assert response.status_code == 200, response.text
    client.headers["X-CSRF-Token"] = response.json()["csrf_token"]
    return client


async def user_at(stack, user_id: int, address: str) -> httpx.AsyncClient:
    client = stack.browser("events", address=address)
    response = await client.get("/auth/dev-login", params={"user_id": user_id}, headers=JSON)
    assert response.status_code == 200, response.text
    client.headers["X-CSRF-Token"] = response.json()["csrf_token"]
    return client


async def book(stack, address: str, entry_id: int) -> tuple[httpx.AsyncClient, httpx.Response]:
    visitor = await visitor_at(stack, address)
    return visitor, await visitor.post(f"/entries/{entry_id}/book/")


async def hold_the_limit(stack, address: str, ids: list[int]) -> list[httpx.AsyncClient]:
    """Sessions minted at ``address`` hold the first LIMIT of ``ids``, one each."""
    visitors = []
    for entry_id in ids[:LIMIT]:
        visitor, booked = await book(stack, address, entry_id)
        assert booked.status_code == 200, booked.text
        visitors.append(visitor)
    return visitors


def entries(server) -> list[tuple]:
    """Every entry row as it is, every column."""
    return events_rows(server, "SELECT * FROM events.calendar_entries ORDER BY id")


def hold_network(server, entry_id: int) -> str | None:
    [(network,)] = events_rows(
        server,
        "SELECT host(hold_network) || '/' || masklen(hold_network) "
        "FROM events.calendar_entries WHERE id = %s",
        (entry_id,),
    )
    return network


def some_entries(server, count: int) -> list[int]:
    calendar_id = insert_calendar(server)
    return [insert_entry(server, calendar_id, f"Walk {n}") for n in range(count)]


def assert_the_limit_held_the_rest_refused(server, responses: list[httpx.Response]) -> None:
    """Of bookings sent at once, LIMIT were held and the rest refused (429): none past it."""
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] * LIMIT + [429] * (len(responses) - LIMIT), [
        response.text for response in responses
    ]
    held = events_rows(
        server, "SELECT count(*) FROM events.calendar_entries WHERE state = 'pending'"
    )
    assert held == [(LIMIT,)]


async def test_one_network_holds_at_most_the_limit_of_entries_anonymously(clean_db, credentials):
    """Sessions minted at one address hold up to the limit; the next anonymous hold from it is
    a 429 with Retry-After (when the first of its holds ends) and writes nothing. Another
    network, a signed-in buyer at the same address, and the same session booking its own entry
    again are not refused."""
    async with holds_stack(clean_db, credentials) as stack:
        ids = some_entries(clean_db, 8)
        visitors = await hold_the_limit(stack, "203.0.113.7", ids)
        for entry_id in ids[:LIMIT]:
            assert hold_network(clean_db, entry_id) == "203.0.113.7/32"
        # The first of them ends sooner: the refusal says when a place is free again.
        events_rows(
            clean_db,
            "UPDATE events.calendar_entries SET hold_expires_at = now() + interval '100 seconds'"
            " WHERE id = %s RETURNING id",
            (ids[1],),
        )
        before = entries(clean_db)
        refused_visitor, refused = await book(stack, "203.0.113.7", ids[LIMIT])
        problem = assert_problem(refused, 429, "Nothing was booked", "sign in")
        assert 1 <= int(refused.headers["retry-after"]) <= 101
        assert problem["retry_after"] == int(refused.headers["retry-after"])
        assert entries(clean_db) == before

        # A browser is sent the same refusal as the calendars page it booked from, beside
        # that entry's Book button (an alert the button names), not a page of its own.
        token = refused_visitor.headers.pop("X-CSRF-Token")
        page = await refused_visitor.post(
            f"/entries/{ids[LIMIT]}/book/",
            data={CSRF_FIELD: token, "next": "/?page_id=1"},
            headers=HTML,
        )
        assert page.status_code == 429
        assert page.headers["content-type"].startswith("text/html")
        assert 1 <= int(page.headers["retry-after"]) <= 101
        start = page.text.index(f'action="/entries/{ids[LIMIT]}/book/"')
        form = page.text[start : page.text.index("</form>", start)]
        error = f"book-{ids[LIMIT]}-error"
        assert f'aria-describedby="{error}"' in form
        assert f'<span class="field-error" role="alert" id="{error}">Nothing was booked' in form
        assert page.text.count('role="alert"') == 1
        assert 'name="next" value="/?page_id=1"' in form
        assert entries(clean_db) == before

        # The same session booking the entry it holds answers it as before.
        again = await visitors[0].post(f"/entries/{ids[0]}/book/")
        assert again.status_code == 200, again.text
        assert again.json()["booked_by_you"] is True
        # An entry held by someone else is still a 409 (nothing new would be held).
        assert_problem(
            await (await visitor_at(stack, "203.0.113.7")).post(f"/entries/{ids[0]}/book/"),
            409,
            "held",
        )

        # Another network, and a signed-in buyer at this address (not counted; no network).
        _, elsewhere = await book(stack, "203.0.113.8", ids[LIMIT])
        assert elsewhere.status_code == 200, elsewhere.text
        user = await user_at(stack, 7, "203.0.113.7")
        assert (await user.post(f"/entries/{ids[LIMIT + 1]}/book/")).status_code == 200
        assert entry_state(clean_db, ids[LIMIT + 1]) == ("pending", 7, None, None)
        assert hold_network(clean_db, ids[LIMIT + 1]) is None

        # An IPv6 client's /64 is one network: its addresses count together.
        v6 = ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"]
        free = ids[LIMIT + 2 :]
        calendar_id = insert_calendar(clean_db, "more")
        free += [insert_entry(clean_db, calendar_id, f"More {n}") for n in range(3)]
        for address, entry_id in zip(v6, free, strict=False):
            assert (await book(stack, address, entry_id))[1].status_code == 200
        assert hold_network(clean_db, free[0]) == "2001:db8:1:2::/64"
        assert_problem((await book(stack, "2001:db8:1:2::4", free[3]))[1], 429)
        assert (await book(stack, "2001:db8:1:3::1", free[3]))[1].status_code == 200


async def test_a_refusal_whose_wait_is_minutes_says_it_in_minutes(clean_db, credentials):
    """Holds last 15 minutes: the refusal told a person "Try again in 830 s". A wait of two
    minutes or more is said in minutes (rounded up); Retry-After stays in seconds."""
    async with holds_stack(clean_db, credentials) as stack:
        ids = some_entries(clean_db, LIMIT + 1)
        await hold_the_limit(stack, "203.0.113.9", ids)
        events_rows(
            clean_db,
            "UPDATE events.calendar_entries SET hold_expires_at = now() + interval '830 seconds'"
            " WHERE state = 'pending' RETURNING id",
        )
        _, refused = await book(stack, "203.0.113.9", ids[LIMIT])
        problem = assert_problem(refused, 429, "Nothing was booked")
        assert "Try again in 14 minutes, when" in problem["detail"], problem["detail"]
        assert 820 <= int(refused.headers["retry-after"]) <= 831


async def test_a_hold_that_ended_or_was_let_go_of_frees_a_place_and_one_adopted_does_not(
    clean_db, credentials
):
    async with holds_stack(clean_db, credentials) as stack:
        ids = some_entries(clean_db, LIMIT + 3)
        visitors = await hold_the_limit(stack, "198.51.100.4", ids)
        assert_problem((await book(stack, "198.51.100.4", ids[LIMIT]))[1], 429)

        # Its hold ended (swept or not): it holds nothing, and counts for nothing.
        end_holds(clean_db, ids[0])
        assert (await book(stack, "198.51.100.4", ids[LIMIT]))[1].status_code == 200
        assert_problem((await book(stack, "198.51.100.4", ids[LIMIT + 1]))[1], 429)

        # Sign-in adopted one: the user's hold now, still held from this network and counted
        # for it (review 3: adopting freed the place, and one account signing in and out held
        # the limit again each time).
        adopt = {"user_id": 42, "session_id": session_id_of(visitors[1])}
        adopted = await internal_post(stack.client("events"), "adopt-bookings-for-user", adopt)
        assert adopted.json() == {"adopted": 1}
        assert hold_network(clean_db, ids[1]) == "198.51.100.4/32"
        assert_problem((await book(stack, "198.51.100.4", ids[LIMIT + 1]))[1], 429)
        end_holds(clean_db, ids[1])
        assert (await book(stack, "198.51.100.4", ids[LIMIT + 1]))[1].status_code == 200
        assert_problem((await book(stack, "198.51.100.4", ids[LIMIT + 2]))[1], 429)

        # Taken out of its cart: the entry is open again, the place free.
        release = {"kind": "entry", "id": ids[2], "session_id": session_id_of(visitors[2])}
        released = await internal_post(stack.client("events"), "release-booking", release)
        assert released.status_code == 200, released.text
        assert hold_network(clean_db, ids[2]) is None
        assert (await book(stack, "198.51.100.4", ids[LIMIT + 2]))[1].status_code == 200

        # The ended entry booked again by a signed-in buyer: no network on it any more.
        user = await user_at(stack, 9, "198.51.100.4")
        assert (await user.post(f"/entries/{ids[0]}/book/")).status_code == 200
        assert hold_network(clean_db, ids[0]) is None


async def test_concurrent_anonymous_bookings_from_one_network_never_pass_the_limit(
    clean_db, credentials
):
    async with holds_stack(clean_db, credentials) as stack:
        ids = some_entries(clean_db, 12)
        visitors = [await visitor_at(stack, "192.0.2.50") for _ in ids]
        responses = await asyncio.gather(
            *(
                visitor.post(f"/entries/{entry_id}/book/")
                for visitor, entry_id in zip(visitors, ids, strict=True)
            )
        )
        assert_the_limit_held_the_rest_refused(clean_db, responses)


async def test_a_limit_of_0_counts_nothing(clean_db, credentials):
    async with holds_stack(clean_db, credentials, limit=0) as stack:
        ids = some_entries(clean_db, LIMIT + 2)
        for entry_id in ids:
            assert (await book(stack, "203.0.113.9", entry_id))[1].status_code == 200
        # Still recorded: a limit turned on later counts these holds.
        assert hold_network(clean_db, ids[0]) == "203.0.113.9/32"


async def test_a_client_whose_address_is_unknown_is_not_counted(clean_db, credentials):
    async with holds_stack(clean_db, credentials, limit=1) as stack:
        ids = some_entries(clean_db, 3)
        for entry_id in ids:
            assert (await book(stack, "not-an-address", entry_id))[1].status_code == 200
        assert hold_network(clean_db, ids[0]) is None


async def test_a_hold_checked_out_counts_until_its_order_is_paid(clean_db, credentials):
    """Holds an order holds (checked out, not yet paid) still keep the entries from everyone
    else: they count for their network until the order is paid (confirmed) or lets them go.
    Not counted, an anonymous client held the limit, checked out, and held the limit again,
    for as long as its orders could be paid. The network is not kept once a hold is
    confirmed; one adopted at sign-in keeps it, and counts (review 3)."""
    async with holds_stack(clean_db, credentials) as stack:
        ids = some_entries(clean_db, LIMIT + 2)
        visitors = await hold_the_limit(stack, "198.51.100.9", ids)
        events = stack.client("events")
        until = (datetime.now(UTC) + timedelta(minutes=30)).isoformat()
        hold = {
            "order_id": 500,
            "until": until,
            "entry_ids": [ids[0]],
            "session_id": session_id_of(visitors[0]),
        }
        held = await internal_post(events, "hold-for-order", hold)
        assert held.json() == {"held": 1}, held.text

        assert_problem((await book(stack, "198.51.100.9", ids[LIMIT]))[1], 429)

        confirm = {"order_id": 500, "entry_ids": [ids[0]], "session_id": hold["session_id"]}
        confirmed = await internal_post(events, "confirm-for-order", confirm)
        assert confirmed.json()["confirmed"] == 1, confirmed.text
        assert hold_network(clean_db, ids[0]) is None
        assert (await book(stack, "198.51.100.9", ids[LIMIT]))[1].status_code == 200

        adopt = {"user_id": 43, "session_id": session_id_of(visitors[1])}
        adopted = await internal_post(events, "adopt-bookings-for-user", adopt)
        assert adopted.json() == {"adopted": 1}
        assert hold_network(clean_db, ids[1]) == "198.51.100.9/32"
        assert_problem((await book(stack, "198.51.100.9", ids[LIMIT + 1]))[1], 429)


async def test_retry_after_names_when_enough_holds_end_for_one_more(clean_db, credentials):
    """A network holding more than the limit (it was lowered, or the release before counted
    nothing) gets a place only once all but limit - 1 of its holds end: Retry-After names that
    moment, not when its first hold ends (a retry then was refused again)."""
    async with holds_stack(clean_db, credentials) as stack:
        ids = some_entries(clean_db, LIMIT + 3)
        held = ids[: LIMIT + 2]
        for minutes, entry_id in enumerate(held, start=1):
            events_rows(
                clean_db,
                "UPDATE events.calendar_entries SET state = 'pending', session_id = %s, "
                "hold_network = '203.0.113.70', hold_expires_at = now() + %s * interval "
                "'1 minute' WHERE id = %s RETURNING id",
                (f"s{entry_id}", minutes, entry_id),
            )
        _, refused = await book(stack, "203.0.113.70", ids[-1])
        assert_problem(refused, 429)
        # Five held, a limit of 3: three must end for one more to fit, the third at 3 minutes.
        assert 170 <= int(refused.headers["retry-after"]) <= 181


async def test_one_account_holds_at_most_its_limit_of_entries(clean_db, credentials):
    """Probe attacker: one signed-in account held every entry of a calendar, every other buyer
    refused ("held in someone's cart"), and booked them again as its holds ended. An account
    holds at most EVENTS_HOLDS_PER_ACCOUNT at once: the next is a 429 saying when one more
    fits, and writes nothing. Another account is not refused; a hold that ended frees a place;
    the account booking an entry it holds answers it as before."""
    async with holds_stack(clean_db, credentials, limit=0, per_account=LIMIT) as stack:
        ids = some_entries(clean_db, LIMIT + 2)
        user = await user_at(stack, 21, "203.0.113.20")
        for entry_id in ids[:LIMIT]:
            assert (await user.post(f"/entries/{entry_id}/book/")).status_code == 200
        events_rows(
            clean_db,
            "UPDATE events.calendar_entries SET hold_expires_at = now() + interval '100 seconds'"
            " WHERE id = %s RETURNING id",
            (ids[1],),
        )
        before = entries(clean_db)
        refused = await user.post(f"/entries/{ids[LIMIT]}/book/")
        problem = assert_problem(refused, 429, "Nothing was booked", "for your account")
        assert 1 <= int(refused.headers["retry-after"]) <= 101
        assert problem["retry_after"] == int(refused.headers["retry-after"])
        assert entries(clean_db) == before
        # From another address too: the account is counted, not where it is.
        elsewhere = await user_at(stack, 21, "198.51.100.20")
        assert_problem(await elsewhere.post(f"/entries/{ids[LIMIT]}/book/"), 429)

        again = await user.post(f"/entries/{ids[0]}/book/")
        assert again.status_code == 200, again.text
        other = await user_at(stack, 22, "203.0.113.20")
        assert (await other.post(f"/entries/{ids[LIMIT]}/book/")).status_code == 200

        end_holds(clean_db, ids[0])
        assert (await user.post(f"/entries/{ids[LIMIT + 1]}/book/")).status_code == 200


async def test_concurrent_bookings_of_one_account_never_pass_its_limit(clean_db, credentials):
    async with holds_stack(clean_db, credentials, limit=0, per_account=LIMIT) as stack:
        ids = some_entries(clean_db, 10)
        user = await user_at(stack, 23, "192.0.2.60")
        responses = await asyncio.gather(
            *(user.post(f"/entries/{entry_id}/book/") for entry_id in ids)
        )
        assert_the_limit_held_the_rest_refused(clean_db, responses)


async def test_signing_in_and_out_does_not_hold_more_than_the_limits(clean_db, credentials):
    """Review 3: a network's anonymous holds, adopted at sign-in by one account (their network
    cleared, so the network's places were free again), again and again: the account held as
    many as it signed in and out for. Adopted holds still count for their network."""
    async with holds_stack(clean_db, credentials, limit=LIMIT, per_account=LIMIT) as stack:
        ids = some_entries(clean_db, LIMIT * 3)
        for round_ in range(3):
            visitor = await visitor_at(stack, "203.0.113.77")
            for entry_id in ids[round_ * LIMIT : (round_ + 1) * LIMIT]:
                await visitor.post(f"/entries/{entry_id}/book/")
            adopt = {"user_id": 77, "session_id": session_id_of(visitor)}
            adopted = await internal_post(stack.client("events"), "adopt-bookings-for-user", adopt)
            assert adopted.status_code == 200, adopted.text
        held = events_rows(
            clean_db,
            "SELECT count(*) FROM events.calendar_entries WHERE state = 'pending' "
            "AND hold_expires_at > now()",
        )
        assert held == [(LIMIT,)]
