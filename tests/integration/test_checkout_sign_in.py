"""Signing in while an anonymous checkout is in flight (audit L1). Sign-in adopts the session's
bookings to the user; the anonymous order's hold-for-order then finds none held for the session,
and the checkout answered that the bookings were "no longer held ... may have been taken",
though they were in the buyer's cart all along. The interleaving is made certain, not hoped
for: a second connection holds orders' lock on the anonymous buyer, so the checkout waits in
orders before it asks events to hold anything; sign-in adopts the bookings (cart, then events)
and waits on the same lock in orders' adoption, behind the checkout. PostgreSQL grants the lock
to its waiters in the order they came: the checkout goes on first, after the bookings moved."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from apps.common.identity import SessionCodec
from tests.conftest import SESSION_SECRET, admin_connect, lock_waiters
from tests.integration.commerce_fixtures import (
    JSON,
    browser_of,
    session_cookie,
    share_cookies,
    shop_stack,
)
from tests.integration.orders_fixtures import orders_of
from tests.waiting import eventually

USER_ID = 44


@pytest.fixture
async def stack(clean_db, credentials, sandbox, shop):
    async with shop_stack(clean_db, credentials, sandbox.server) as running:
        yield running


@contextmanager
def buyer_locked(server, session_id: str) -> Iterator[None]:
    """Orders' lock on the anonymous buyer (apps.orders.service.lock_buyer) held from another
    connection until the block ends."""
    with admin_connect(server, "orders") as holder, holder.transaction():
        holder.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"orders-buyer:session:{session_id}",),
        )
        yield


async def waiting_in_orders(server, call: Awaitable[httpx.Response], waiting: int) -> asyncio.Task:
    """Start ``call``; return once orders has ``waiting`` waiters on a lock in all, or the call
    answered (then the test fails on its answer, not here)."""
    task: asyncio.Task = asyncio.ensure_future(call)
    assert await eventually(lambda: task.done() or lock_waiters(server, "orders") >= waiting)
    return task


def booking_of(server, entry_id: int) -> tuple:
    with admin_connect(server, "events") as events:
        return events.execute(
            "SELECT state, user_id, session_id, hold_order_id, hold_expires_at > now() "
            "FROM events.calendar_entries WHERE id = %s",
            (entry_id,),
        ).fetchone()


async def test_signing_in_during_an_anonymous_checkout_says_so_not_that_the_holds_ended(
    stack, clean_db, shop
):
    cart = await browser_of(stack, "cart")
    events = stack.browser("events")
    share_cookies(cart, events)
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    decoded = SessionCodec(SESSION_SECRET).decode(session_cookie(cart))
    assert decoded is not None
    session_id = decoded.identity.session_id

    with buyer_locked(clean_db, session_id):
        checkout = await waiting_in_orders(clean_db, cart.post("/checkout/"), waiting=1)
        signing_in = await waiting_in_orders(
            clean_db, cart.get("/auth/dev-login", params={"user_id": USER_ID}, headers=JSON), 2
        )
        assert not checkout.done()
        assert not signing_in.done()
        # Events adopted the booking: it is the user's now, held as before.
        assert booking_of(clean_db, shop.entry_id) == ("pending", USER_ID, None, None, True)
    refused = await checkout
    assert refused.status_code == 409, refused.text
    detail = refused.json()["detail"]
    assert "signed in" in detail, detail
    assert "no longer held" not in detail, detail
    assert "may have been taken" not in detail, detail
    signed = await signing_in
    assert signed.status_code == 200, signed.text
    assert orders_of(clean_db) == {}  # nothing was created
    assert booking_of(clean_db, shop.entry_id) == ("pending", USER_ID, None, None, True)

    # Checked out again, now as the user, the same bookings make an order.
    cart.headers["x-csrf-token"] = signed.json()["csrf_token"]
    again = await cart.post("/checkout/")
    assert again.status_code == 200, again.text
    order_id = again.json()["order_id"]
    assert booking_of(clean_db, shop.entry_id) == ("pending", USER_ID, None, order_id, True)
    for client in (cart, events):
        await client.aclose()
