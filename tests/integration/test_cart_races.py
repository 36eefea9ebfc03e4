"""Sign-in's merge and the buyer's edits racing a paid order's clear-cart-for-order (audit
H2, M2). Each interleaving is made certain, not hoped for: a second connection holds a row
lock on the line both operations need, the operations are started one after the other and
each is seen waiting on that lock (or finished) before the next starts, then the lock is let
go. PostgreSQL grants a row lock to its waiters in the order they came, so the first started
is the first to change the line."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from tests.conftest import admin_connect, lock_waiters
from tests.integration.commerce_fixtures import browser_of, shop_stack
from tests.signed import internal_post
from tests.waiting import eventually

ORDER_ID = 500


@pytest.fixture
async def stack(clean_db, credentials, sandbox, shop):
    async with shop_stack(
        clean_db, credentials, sandbox.server, services=["cart", "market"]
    ) as running:
        yield running


@contextmanager
def line_held(server, line_id: int) -> Iterator[None]:
    """The line's row locked from another connection until the block ends."""
    with admin_connect(server, "cart") as holder, holder.transaction():
        holder.execute("SELECT id FROM cart.cart_items WHERE id = %s FOR UPDATE", (line_id,))
        yield


async def started(server, call: Awaitable[httpx.Response], waiting: int) -> asyncio.Task:
    """Start ``call`` and return once it waits on a lock (``waiting`` waiters in all) or has
    answered: a call that never needs the lock is not made to wait for it."""
    task: asyncio.Task = asyncio.ensure_future(call)
    assert await eventually(lambda: task.done() or lock_waiters(server, "cart") >= waiting)
    return task


def line_row(server, line_id: int) -> tuple[Any, ...]:
    """(quantity, order id, live, merged into) of one line."""
    with admin_connect(server, "cart") as connection:
        row = connection.execute(
            "SELECT quantity, order_id, deleted_at IS NULL, merged_into_id "
            "FROM cart.cart_items WHERE id = %s",
            (line_id,),
        ).fetchone()
    assert row is not None
    return tuple(row)


def live_lines(server) -> list[tuple[int | None, int, int]]:
    with admin_connect(server, "cart") as connection:
        return [
            tuple(row)
            for row in connection.execute(
                "SELECT user_id, product_id, quantity FROM cart.cart_items "
                "WHERE deleted_at IS NULL ORDER BY id"
            )
        ]


def session_of(server, line_id: int) -> str:
    with admin_connect(server, "cart") as connection:
        row = connection.execute(
            "SELECT session_id FROM cart.cart_items WHERE id = %s", (line_id,)
        ).fetchone()
    assert row is not None
    assert row[0]
    return str(row[0])


# -- H2: sign-in's merge against the clear of the anonymous order ----------------------------
async def _anonymous_order_and_users_line(stack, server, product: int) -> tuple[int, int, str]:
    """User 40 has 2 of ``product`` in their cart (another device); an anonymous session has
    1 of it, checked out as order 500. Returns (user's line, anonymous line, session)."""
    user = await browser_of(stack, "cart", user_id=40)
    users_line = (await user.post(f"/add/{product}/", json={"quantity": 2})).json()["id"]
    anonymous = await browser_of(stack, "cart")
    anonymous_line = (await anonymous.post(f"/add/{product}/")).json()["id"]
    return users_line, anonymous_line, session_of(server, anonymous_line)


def _clear_anonymous(stack, product: int, line_id: int, session_id: str) -> Awaitable[Any]:
    payload = {
        "order_id": ORDER_ID,
        "session_id": session_id,
        "lines": [{"product_id": product, "quantity": 1, "cart_line_ids": [line_id]}],
    }
    return internal_post(stack.client("cart"), "clear-cart-for-order", payload)


def _adopt(stack, session_id: str) -> Awaitable[Any]:
    # What sign-in sends (the contract's on_sign_in action).
    payload = {"user_id": 40, "session_id": session_id}
    return internal_post(stack.client("cart"), "adopt-cart-for-user", payload)


@pytest.mark.parametrize("held", ["anonymous line", "user's line"])
async def test_a_paid_anonymous_line_cleared_before_sign_in_merges_is_not_merged(
    stack, clean_db, shop, held
):
    """The clear reaches the anonymous line first: it leaves for the order, and sign-in then
    finds nothing of it to merge; the user keeps their own 2. (Sign-in read the line without
    a lock: it added the paid unit to the user's line, then marked the cleared line merged.)"""
    product = shop.product_ids[0]
    users_line, line, session_id = await _anonymous_order_and_users_line(stack, clean_db, product)
    if held == "anonymous line":
        with line_held(clean_db, line):
            clear = await started(clean_db, _clear_anonymous(stack, product, line, session_id), 1)
            adopt = await started(clean_db, _adopt(stack, session_id), 2)
    else:
        # Sign-in stops on the user's line; the clear runs as far as it can meanwhile.
        with line_held(clean_db, users_line):
            adopt = await started(clean_db, _adopt(stack, session_id), 1)
            clear = await started(clean_db, _clear_anonymous(stack, product, line, session_id), 2)
    cleared, adopted = await clear, await adopt
    assert (cleared.status_code, cleared.json()) == (200, {"cleared": 1}), cleared.text
    assert adopted.status_code == 200, adopted.text
    assert live_lines(clean_db) == [(40, product, 2)]
    quantity, order_id, live, merged_into = line_row(clean_db, line)
    assert (quantity, order_id, live) == (1, ORDER_ID, False)
    # Whoever came first, the paid unit is counted once: cleared, or merged then taken off.
    assert merged_into in (None, users_line)
    assert line_row(clean_db, users_line) == (2, None, True, None)


async def test_sign_in_merging_before_the_clear_takes_the_paid_unit_off_the_merged_line(
    stack, clean_db, shop
):
    """Sign-in reaches the anonymous line first: it merges into the user's line (3), and the
    clear then takes the paid 1 off it."""
    product = shop.product_ids[0]
    users_line, line, session_id = await _anonymous_order_and_users_line(stack, clean_db, product)
    with line_held(clean_db, line):
        adopt = await started(clean_db, _adopt(stack, session_id), 1)
        clear = await started(clean_db, _clear_anonymous(stack, product, line, session_id), 2)
    adopted, cleared = await adopt, await clear
    assert (adopted.status_code, adopted.json()) == (200, {"adopted": 1}), adopted.text
    assert (cleared.status_code, cleared.json()) == (200, {"cleared": 1}), cleared.text
    assert live_lines(clean_db) == [(40, product, 2)]
    assert line_row(clean_db, line) == (1, ORDER_ID, False, users_line)


# -- M2: the buyer's edit of a line against the clear of the order that paid it --------------
def _clear_users(stack, product: int, line_id: int) -> Awaitable[Any]:
    payload = {
        "order_id": ORDER_ID,
        "user_id": 41,
        "lines": [{"product_id": product, "quantity": 1, "cart_line_ids": [line_id]}],
    }
    return internal_post(stack.client("cart"), "clear-cart-for-order", payload)


def _edit(browser: httpx.AsyncClient, edit: str, line_id: int) -> Awaitable[httpx.Response]:
    if edit == "quantity":
        return browser.post(f"/item/{line_id}/quantity/", json={"quantity": 5})
    return browser.post(f"/item/{line_id}/delete/")


@pytest.mark.parametrize("edit", ["quantity", "delete"])
async def test_an_edit_landing_during_the_clear_says_the_line_was_paid(stack, clean_db, shop, edit):
    """The clear reaches the line first: the edit is refused, saying the line was paid for,
    and changes nothing. (It answered 200 "quantity 5", wrote 5 on the paid line, and the
    cart was empty.)"""
    product = shop.product_ids[0]
    buyer = await browser_of(stack, "cart", user_id=41)
    line = (await buyer.post(f"/add/{product}/")).json()["id"]
    with line_held(clean_db, line):
        clear = await started(clean_db, _clear_users(stack, product, line), 1)
        edited = await started(clean_db, _edit(buyer, edit, line), 2)
    cleared, answer = await clear, await edited
    assert cleared.json() == {"cleared": 1}
    assert answer.status_code == 409, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert f"order {ORDER_ID}" in answer.json()["detail"]
    assert "paid" in answer.json()["detail"]
    assert live_lines(clean_db) == []
    assert line_row(clean_db, line) == (1, ORDER_ID, False, None)


@pytest.mark.parametrize("edit", ["quantity", "delete"])
async def test_an_edit_before_the_clear_is_what_the_clear_finds(stack, clean_db, shop, edit):
    """The edit reaches the line first: it is answered as done, and the clear works on the
    line as edited (5 with 1 paid: 4 stay in the cart; removed: nothing stays)."""
    product = shop.product_ids[0]
    buyer = await browser_of(stack, "cart", user_id=41)
    line = (await buyer.post(f"/add/{product}/")).json()["id"]
    with line_held(clean_db, line):
        edited = await started(clean_db, _edit(buyer, edit, line), 1)
        clear = await started(clean_db, _clear_users(stack, product, line), 2)
    answer, cleared = await edited, await clear
    assert answer.status_code == 200, answer.text
    assert cleared.json() == {"cleared": 1}
    if edit == "quantity":
        assert answer.json() == {"id": line, "quantity": 5}
        assert live_lines(clean_db) == [(41, product, 4)]
        assert line_row(clean_db, line) == (5, ORDER_ID, False, None)
    else:
        assert answer.json() == {"id": line, "deleted": True}
        assert live_lines(clean_db) == []
        assert line_row(clean_db, line) == (1, ORDER_ID, False, None)


async def test_sign_in_waiting_on_a_paid_users_line_merges_into_what_the_clear_left(
    stack, clean_db, shop
):
    """The user's own order of 2 is cleared from their line of 3 (the 1 added after
    checkout becomes a new line) while sign-in brings an anonymous 1 of the same product:
    sign-in merges into the new line. (It waited on the paid line, found it gone, and moved
    the anonymous line to the user beside the new one: a duplicate line, and sign-in failed.)"""
    product = shop.product_ids[0]
    user = await browser_of(stack, "cart", user_id=40)
    users_line = (await user.post(f"/add/{product}/", json={"quantity": 3})).json()["id"]
    anonymous = await browser_of(stack, "cart")
    line = (await anonymous.post(f"/add/{product}/")).json()["id"]
    session_id = session_of(clean_db, line)
    payload = {
        "order_id": ORDER_ID,
        "user_id": 40,
        "lines": [{"product_id": product, "quantity": 2, "cart_line_ids": [users_line]}],
    }
    with line_held(clean_db, users_line):
        clear = await started(
            clean_db, internal_post(stack.client("cart"), "clear-cart-for-order", payload), 1
        )
        adopt = await started(clean_db, _adopt(stack, session_id), 2)
    cleared, adopted = await clear, await adopt
    assert cleared.json() == {"cleared": 1}
    assert (adopted.status_code, adopted.json()) == (200, {"adopted": 1}), adopted.text
    assert live_lines(clean_db) == [(40, product, 2)]  # the 1 added after checkout, and 1
    assert line_row(clean_db, users_line) == (3, ORDER_ID, False, None)
    assert line_row(clean_db, line)[2:] == (False, line + 1)


async def test_an_inbox_update_waiting_on_a_paid_line_changes_what_the_clear_left(
    stack, clean_db, shop
):
    """An inbox Update of a product whose line a paid order is clearing, surplus and all,
    changes the line the clear left for the surplus (it said the cart had no such line)."""
    product = shop.product_ids[0]
    buyer = await browser_of(stack, "cart", user_id=41)
    line = (await buyer.post(f"/add/{product}/", json={"quantity": 3})).json()["id"]
    update = {
        "@context": "https://www.w3.org/ns/activitystreams",
        "id": "urn:test:update-1",
        "type": "Update",
        "target": {"type": "rose:Cart", "userId": 41},
        "object": {"type": "rose:CartItem", "productId": product, "quantity": 7},
    }
    with line_held(clean_db, line):
        clear = await started(clean_db, _clear_users(stack, product, line), 1)
        updated = await started(clean_db, internal_post(stack.client("cart"), "inbox", update), 2)
    cleared, answer = await clear, await updated
    assert cleared.json() == {"cleared": 1}
    assert answer.status_code == 200, answer.text
    assert live_lines(clean_db) == [(41, product, 7)]


# -- an anonymous add racing sign-in ----------------------------------------------------------
async def test_an_add_from_a_session_sign_in_adopted_is_refused_not_lost(stack, clean_db, shop):
    """The browser's add left with the anonymous session as sign-in adopted that session: the
    line was written for a session nobody uses again (the browser now carries the user's), so
    the buyer never saw it. Now it is a 409 saying so, and nothing is written."""
    anonymous = await browser_of(stack, "cart")
    first = (await anonymous.post(f"/add/{shop.product_ids[0]}/")).json()["id"]
    session_id = session_of(clean_db, first)
    assert (await _adopt(stack, session_id)).status_code == 200

    late = await anonymous.post(f"/add/{shop.product_ids[1]}/")
    assert late.status_code == 409, late.text
    assert "signed in" in late.json()["detail"]
    assert live_lines(clean_db) == [(40, shop.product_ids[0], 1)]


async def test_an_add_arriving_during_sign_in_waits_for_it_then_is_refused(stack, clean_db, shop):
    """Sign-in is adopting the session (held up on the session's line) when the add arrives:
    the add waits for the adoption, then is refused. Before, it was written beside the
    adoption, for the session, where sign-in never saw it."""
    anonymous = await browser_of(stack, "cart")
    first = (await anonymous.post(f"/add/{shop.product_ids[0]}/")).json()["id"]
    session_id = session_of(clean_db, first)
    with line_held(clean_db, first):
        adopt = await started(clean_db, _adopt(stack, session_id), 1)
        add = await started(clean_db, anonymous.post(f"/add/{shop.product_ids[1]}/"), 2)
    adopted, added = await adopt, await add
    assert (adopted.status_code, adopted.json()) == (200, {"adopted": 1}), adopted.text
    assert added.status_code == 409, added.text
    assert live_lines(clean_db) == [(40, shop.product_ids[0], 1)]


async def test_a_checkout_from_a_session_sign_in_adopted_says_so(stack, clean_db, shop):
    """Audit L2: the checkout left with the anonymous session as sign-in moved its cart to the
    user, and was told "The cart is empty"."""
    anonymous = await browser_of(stack, "cart")
    first = (await anonymous.post(f"/add/{shop.product_ids[0]}/")).json()["id"]
    assert (await _adopt(stack, session_of(clean_db, first))).status_code == 200

    late = await anonymous.post("/checkout/")
    assert late.status_code == 409, late.text
    assert "signed in" in late.json()["detail"]
    assert late.json()["start_afresh"] == "/auth/logout"  # the way out of a planted session
    assert "empty" not in late.json()["detail"]
