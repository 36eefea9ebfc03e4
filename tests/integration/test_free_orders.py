"""An order with nothing to pay (audit finding M4): a free booking (an entry or ticket at 0.00,
as three of the demo's entries) could be booked into the cart but never checked out; every
checkout was a 422 naming ``product_total``. Now such an order is paid as it is made, without
SumUp: the same transition and after-payment messages as a payment (events confirms the
bookings, cart lets go of the lines), and the buyer goes to the order's return page.
Real apps in process, real PostgreSQL, the SumUp sandbox over HTTP (which must not be asked).
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from tests.conftest import admin_connect, lock_waiters
from tests.integration.commerce_fixtures import (
    book_and_check_out,
    browser_of,
    confirmation_held,
    entry_state,
    free_entry,
    next_order_id,
    share_cookies,
    shop_stack,
)
from tests.integration.orders_fixtures import (
    Sandbox,
    add_page_config,
    checkout_id_of,
    create,
    order_payload,
    orders_of,
    orders_stack,
    outbox_rows,
    product_line,
    webhook,
)
from tests.waiting import eventually


def attempts_of(server, order_id: int) -> int:
    with admin_connect(server, "orders") as connection:
        return connection.execute(
            "SELECT count(*) FROM orders.payment_attempts WHERE order_id = %s", (order_id,)
        ).fetchone()[0]


@pytest.fixture
async def orders(clean_db, credentials, sandbox):
    add_page_config(clean_db, "site", 0)
    async with orders_stack(clean_db, credentials, sandbox.server) as running:
        yield running


async def test_an_order_of_free_goods_is_paid_as_it_is_made(orders, clean_db, sandbox):
    response = await create(orders, order_payload(product_line(1, "0.00", 2)), key="free-1")
    assert response.status_code == 200, response.text
    created = response.json()
    order_id = created["order_id"]
    assert created["paid"] is True
    assert created["next_url"].endswith(f"/checkout/return/{order_id}/")
    assert created["sumup_hosted_url"] == ""
    assert orders_of(clean_db) == {order_id: ("paid", Decimal("0.00"))}
    # SumUp was not asked for anything: no checkout, no attempt.
    assert sandbox.checkouts() == []
    assert attempts_of(clean_db, order_id) == 0
    # The cart is told to let go of the lines, as after a payment.
    assert [(row[1], row[3]) for row in outbox_rows(clean_db)] == [
        ("clear-cart-for-order", f"orders:{order_id}:clear-cart")
    ]

    # The same cart again (a double submit) is the same order, not a second one.
    again = await create(orders, order_payload(product_line(1, "0.00", 2)), key="free-1")
    assert again.status_code == 200, again.text
    assert again.json() == created
    assert list(orders_of(clean_db)) == [order_id]


async def test_an_order_with_something_to_pay_still_goes_to_sumup(orders, clean_db, sandbox):
    """A free line next to a paid one changes nothing: the order waits for its payment."""
    payload = order_payload(product_line(1, "0.00"), product_line(2, "4.00"))
    created = (await create(orders, payload)).json()
    assert created["paid"] is False
    assert created["next_url"] == created["sumup_hosted_url"] != ""
    assert orders_of(clean_db) == {created["order_id"]: ("pending", Decimal("4.00"))}
    assert len(sandbox.checkouts()) == 1


@pytest.fixture
async def stack(clean_db, credentials, sandbox, shop):
    async with shop_stack(clean_db, credentials, sandbox.server) as running:
        yield running


async def cart_count(cart) -> int:
    return (await cart.get("/api/cart")).json()["count"]


async def test_a_free_booking_checks_out_and_is_confirmed(stack, clean_db, shop, sandbox):
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    entry_id = free_entry(clean_db)
    assert (await events.post(f"/entries/{entry_id}/book/")).status_code == 200
    assert await cart_count(cart) == 1

    response = await cart.post("/checkout/")
    assert response.status_code == 200, response.text
    created = response.json()
    order_id = created["order_id"]
    assert created["paid"] is True
    assert orders_of(clean_db)[order_id] == ("paid", Decimal("0.00"))
    assert sandbox.checkouts() == []
    # Events confirms the booking for the order; it leaves the cart.
    assert await eventually(lambda: entry_state(clean_db, entry_id) == ("confirmed", order_id))
    assert await cart_count(cart) == 0


async def test_free_bookings_are_confirmed_for_an_account_not_a_passer_by(
    stack, clean_db, shop, sandbox
):
    """Audit F1: anyone, without signing in or paying, could confirm a whole free entry (and a
    thousand free tickets) for good, at 30 new anonymous carts a minute per address. With
    nothing to pay, an order is now confirmed only for a signed-in buyer (and so counts
    against their orders a minute); anonymous, the checkout asks them to sign in."""
    cart = await browser_of(stack, "cart")
    events = stack.browser("events")
    share_cookies(cart, events)
    entry_id = free_entry(clean_db)
    assert (await events.post(f"/entries/{entry_id}/book/")).status_code == 200
    refused = await cart.post("/checkout/")
    assert refused.status_code == 409, refused.text
    assert "sign in" in refused.json()["detail"].lower()
    assert orders_of(clean_db) == {}
    assert entry_state(clean_db, entry_id)[0] == "pending"


async def test_a_browser_goes_to_the_return_page_which_says_confirmed(
    stack, clean_db, shop, sandbox
):
    """In a browser: the checkout's redirect is the order's return page, which says the order
    is confirmed with nothing to pay and shows the cart emptied."""
    cart = await browser_of(stack, "cart", user_id=5)
    events, orders = stack.browser("events"), stack.browser("orders")
    share_cookies(cart, events, orders)
    entry_id = free_entry(clean_db)
    assert (await events.post(f"/entries/{entry_id}/book/")).status_code == 200

    response = await cart.post("/checkout/", headers={"accept": "text/html"})
    assert response.status_code == 303, response.text
    order_id = next(iter(orders_of(clean_db)))
    target = response.headers["location"]
    assert target.endswith(f"/checkout/return/{order_id}/")
    page = await orders.get(f"/checkout/return/{order_id}/", headers={"accept": "text/html"})
    assert page.status_code == 200, page.text
    assert f"order #{order_id} is confirmed" in page.text
    assert "nothing to pay" in page.text
    assert entry_state(clean_db, entry_id) == ("confirmed", order_id)
    assert await cart_count(cart) == 0
    # The list of orders says it the same way (audit L1: it said "paid").
    listing = await orders.get("/", headers={"accept": "text/html"})
    row = listing.text.split(f'data-order-id="{order_id}"', 1)[1].split("</tr>", 1)[0]
    assert "confirmed (nothing to pay)" in row
    assert "being confirmed" not in row
    assert (await orders.get(f"/api/orders/{order_id}")).json()["state"] == "paid"
    [listed] = (await orders.get("/api/orders")).json()["items"]
    assert listed["state"] == "paid"


async def test_a_paid_orders_cart_checked_out_again_goes_to_the_order(
    stack, clean_db, shop, sandbox: Sandbox
):
    """Once an order is paid, the same cart checked out again (before cart let go of its lines)
    goes to the order's return page, not to SumUp's closed checkout."""
    cart = await browser_of(stack, "cart", user_id=3)
    await cart.post(f"/add/{shop.product_ids[0]}/")
    first = (await cart.post("/checkout/")).json()
    order_id = first["order_id"]
    checkout_id = checkout_id_of(clean_db, order_id)
    sandbox.pay(checkout_id)
    with admin_connect(clean_db, "cart") as connection, connection.transaction():
        # Cart's clear waits behind this lock: the cart is still as it was at checkout.
        connection.execute("SELECT * FROM cart.cart_items FOR UPDATE")
        assert (await webhook(stack, order_id, checkout_id)).status_code == 204
        again = (await cart.post("/checkout/")).json()
    assert again["order_id"] == order_id
    assert again["paid"] is True
    assert again["next_url"].endswith(f"/checkout/return/{order_id}/")
    assert list(orders_of(clean_db)) == [order_id]


async def test_a_free_booking_removed_as_its_order_is_made_cancels_the_order(
    stack, clean_db, shop, sandbox
):
    """Audit F2 and F4: the free order said "confirmed" although the buyer had removed its
    booking from the cart before events confirmed it, and its claim on the entry made every
    later checkout of it a 409 ("already paid for"). The confirmation is held up here (a
    second transaction holds its idempotency key in events) while the buyer removes the
    booking; then it goes on and finds nothing to confirm. The checkout gave up waiting for
    the confirmation before that: its answer does not say the order is paid (audit s19 M4),
    only where to see what becomes of it."""
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    orders = stack.browser("orders")
    share_cookies(cart, orders)
    entry_id = free_entry(clean_db)
    assert (await events.post(f"/entries/{entry_id}/book/")).status_code == 200
    order_id = next_order_id(clean_db)
    html = {"accept": "text/html"}
    with confirmation_held(clean_db, order_id):
        answer = await cart.post("/checkout/")
        assert answer.status_code == 200, answer.text
        assert answer.json()["order_id"] == order_id
        assert answer.json()["paid"] is False
        assert answer.json()["next_url"].endswith(f"/checkout/return/{order_id}/")
        # Its return page does not say confirmed either while events has not confirmed it: it
        # says so, and looks again in a moment.
        waiting = await orders.get(f"/checkout/return/{order_id}/", headers=html)
        assert waiting.status_code == 200, waiting.text
        heading = waiting.text.split('id="payment-state"', 1)[1].split("</h1>", 1)[0]
        assert 'data-state="confirming"' in heading, heading
        assert "is being confirmed" in heading
        assert 'src="/static/look-again.js"' in waiting.text
        # The order's own page, the list of orders and their JSON say the same: it said
        # "Confirmed; there was nothing to pay" (and the list "confirmed (nothing to pay)").
        detail = await orders.get(f"/order/{order_id}/", headers=html)
        assert detail.status_code == 200, detail.text
        state = detail.text.split('id="order-state"', 1)[1].split("</p>", 1)[0]
        assert 'data-state="confirming"' in state, state
        assert "Being confirmed; there is nothing to pay" in state, state
        listing = await orders.get("/", headers=html)
        row = listing.text.split(f'data-order-id="{order_id}"', 1)[1].split("</tr>", 1)[0]
        assert 'data-state="confirming"' in row, row
        assert "being confirmed (nothing to pay)" in row, row
        api = (await orders.get(f"/api/orders/{order_id}")).json()
        assert (api["status"], api["state"]) == ("paid", "confirming"), api
        [listed] = (await orders.get("/api/orders")).json()["items"]
        assert (listed["id"], listed["status"], listed["state"]) == (order_id, "paid", "confirming")
        removed = await cart.post(f"/booking/entry/{entry_id}/delete/")
        assert removed.status_code == 200, removed.text
    assert await eventually(lambda: orders_of(clean_db)[order_id][0] == "cancelled", timeout=15)
    settled = await orders.get(f"/checkout/return/{order_id}/", headers=html)
    heading = settled.text.split('id="payment-state"', 1)[1].split("</h1>", 1)[0]
    assert "Cancelled" in heading, heading
    assert (await orders.get(f"/api/orders/{order_id}")).json()["state"] == "cancelled"
    [listed] = (await orders.get("/api/orders")).json()["items"]
    assert listed["state"] == "cancelled"
    with admin_connect(clean_db, "orders") as connection:
        assert connection.execute(
            "SELECT count(*) FROM orders.order_claims WHERE order_id = %s", (order_id,)
        ).fetchone() == (0,)

    # Someone else books the entry and checks it out.
    again = await book_and_check_out(stack, entry_id, user_id=4)
    assert again.status_code == 200, again.text
    assert await eventually(lambda: entry_state(clean_db, entry_id)[0] == "confirmed")
    assert entry_state(clean_db, entry_id)[1] == again.json()["order_id"]


@pytest.fixture
async def patient_stack(clean_db, credentials, sandbox, shop):
    """A free checkout waits up to 15 s (2 s by default) for its bookings' confirmation before
    answering: long enough for a race to be played out step by step on a busy machine."""
    async with shop_stack(
        clean_db, credentials, sandbox.server, ORDERS_RETURN_DELIVERY_SECONDS="15"
    ) as running:
        yield running


async def test_a_free_checkout_racing_the_removal_of_its_bookings_does_not_say_paid(
    patient_stack, clean_db, shop, sandbox
):
    """Audit s19 M4: a free checkout whose bookings the buyer removed from the cart between
    the order's making (its bookings held for it, the order paid at 0.00) and events'
    confirmation answered 200 ``paid: true`` (the browser sent to a page saying "confirmed"),
    and the order then ended cancelled, nothing confirmed. Played out in order here: the
    checkout's confirmation waits in events (a second transaction holds its key) while the
    buyer removes both bookings; then it goes on. The answer says what became of the order."""
    stack = patient_stack
    cart = await browser_of(stack, "cart", user_id=3)
    events, orders = stack.browser("events"), stack.browser("orders")
    share_cookies(cart, events, orders)
    entry_ids = [free_entry(clean_db, "Orchard walk"), free_entry(clean_db, "Hedge laying")]
    for entry_id in entry_ids:
        assert (await events.post(f"/entries/{entry_id}/book/")).status_code == 200
    order_id = next_order_id(clean_db)
    with confirmation_held(clean_db, order_id):
        checkout = asyncio.ensure_future(cart.post("/checkout/"))
        # The order is made and its confirmation waits in events for the held key.
        assert await eventually(lambda: checkout.done() or lock_waiters(clean_db, "events") >= 1)
        assert not checkout.done(), checkout.result().text
        assert orders_of(clean_db) == {order_id: ("paid", Decimal("0.00"))}
        for entry_id in entry_ids:
            removed = await cart.post(f"/booking/entry/{entry_id}/delete/")
            assert removed.status_code == 200, removed.text
    answer = await checkout
    # Events confirmed neither: the order is cancelled, nothing is the buyer's.
    assert orders_of(clean_db) == {order_id: ("cancelled", Decimal("0.00"))}
    assert [entry_state(clean_db, entry_id) for entry_id in entry_ids] == [("open", None)] * 2
    # The answer says so, not "paid".
    assert answer.status_code == 409, answer.text
    detail = answer.json()["detail"]
    assert f"order {order_id}" in detail, detail
    assert "nothing was confirmed" in detail.lower(), detail
    # The order's return page says the same.
    html = {"accept": "text/html"}
    returned = await orders.get(f"/checkout/return/{order_id}/", headers=html)
    assert returned.status_code == 200, returned.text
    heading = returned.text.split('id="payment-state"', 1)[1].split("</h1>", 1)[0]
    assert "Cancelled" in heading, heading
    assert "is confirmed" not in heading
    for client in (cart, events, orders):
        await client.aclose()


async def test_a_free_order_with_a_booking_removed_before_its_confirmation_says_which(
    stack, clean_db, shop, sandbox
):
    """A free order of two bookings, one removed from the cart while its confirmation is held
    up (as above): the other is confirmed, so the order stays confirmed, but its pages said
    "confirmed; there was nothing to pay" as if both were. They name the one that could not be
    confirmed, as a paid order's refund of it does (with nothing to refund)."""
    cart = await browser_of(stack, "cart", user_id=3)
    events, orders = stack.browser("events"), stack.browser("orders")
    share_cookies(cart, events, orders)
    kept, removed = free_entry(clean_db, "Orchard walk"), free_entry(clean_db, "Hedge laying")
    for entry_id in (kept, removed):
        assert (await events.post(f"/entries/{entry_id}/book/")).status_code == 200
    order_id = next_order_id(clean_db)
    with confirmation_held(clean_db, order_id):
        answer = await cart.post("/checkout/")
        assert answer.status_code == 200, answer.text
        assert answer.json()["order_id"] == order_id
        dropped = await cart.post(f"/booking/entry/{removed}/delete/")
        assert dropped.status_code == 200, dropped.text
    assert await eventually(lambda: claims_of(clean_db, order_id) == [("calendar_entry", kept)])
    assert entry_state(clean_db, kept) == ("confirmed", order_id)
    assert entry_state(clean_db, removed) == ("open", None)
    assert orders_of(clean_db)[order_id] == ("paid", Decimal("0.00"))

    said = "1 booking could not be confirmed: Hedge laying"
    html = {"accept": "text/html"}
    returned = await orders.get(f"/checkout/return/{order_id}/", headers=html)
    assert returned.status_code == 200, returned.text
    heading = returned.text.split('id="payment-state"', 1)[1].split("</h1>", 1)[0]
    assert "there was nothing to pay" in heading
    assert said in heading, heading
    assert "Orchard walk" not in heading
    detail = await orders.get(f"/order/{order_id}/", headers=html)
    state = detail.text.split('id="order-state"', 1)[1].split("</p>", 1)[0]
    assert "there was nothing to pay" in state
    assert said in state, state
    listing = await orders.get("/", headers=html)
    row = listing.text.split(f'data-order-id="{order_id}"', 1)[1].split("</tr>", 1)[0]
    assert "confirmed (nothing to pay)" in row
    assert said in row, row
    # Nothing is refunded: there was nothing to pay.
    assert 'id="refunds"' not in returned.text + detail.text
    api = (await orders.get(f"/api/orders/{order_id}")).json()
    assert api["unconfirmed_bookings"] == [
        {"kind": "calendar_entry", "source_id": removed, "title": "Hedge laying"}
    ]
    assert api["refunds"] == []
    for client in (cart, events, orders):
        await client.aclose()


async def test_a_paid_order_names_a_free_booking_it_could_not_confirm(
    stack, clean_db, shop, sandbox
):
    """A paid order (a priced product and a free booking) whose booking the buyer removed from
    the cart after paying and before the payment was known: events could not confirm it.
    Nothing is refunded for it (it cost 0.00), so no refund named it and the order's pages said
    only "paid". Now events' answer is recorded on the order's line (unconfirmed_at) and the
    pages and the JSON name it, whatever the order's total."""
    cart = await browser_of(stack, "cart", user_id=3)
    events, orders = stack.browser("events"), stack.browser("orders")
    share_cookies(cart, events, orders)
    removed = free_entry(clean_db, "Hedge laying")
    assert (await events.post(f"/entries/{removed}/book/")).status_code == 200
    assert (await cart.post(f"/add/{shop.product_ids[0]}/")).status_code == 200
    answer = await cart.post("/checkout/")
    assert answer.status_code == 200, answer.text
    order_id = answer.json()["order_id"]
    status, total = orders_of(clean_db)[order_id]
    assert status == "pending"
    assert total > 0
    checkout_id = checkout_id_of(clean_db, order_id)
    assert sandbox.client.post(f"/pay/{checkout_id}/pay").status_code == 303
    dropped = await cart.post(f"/booking/entry/{removed}/delete/")
    assert dropped.status_code == 200, dropped.text
    assert (await webhook(stack, order_id, checkout_id)).status_code == 204
    # Events' answer came: the order let go of its claim on the entry.
    assert await eventually(
        lambda: all(kind != "calendar_entry" for kind, _ in claims_of(clean_db, order_id))
    )
    assert orders_of(clean_db)[order_id] == ("paid", total)
    assert entry_state(clean_db, removed) == ("open", None)

    said = "1 booking could not be confirmed: Hedge laying"
    html = {"accept": "text/html"}
    returned = await orders.get(f"/checkout/return/{order_id}/", headers=html)
    assert returned.status_code == 200, returned.text
    heading = returned.text.split('id="payment-state"', 1)[1].split("</h1>", 1)[0]
    assert "is paid" in heading
    assert said in heading, heading
    detail = await orders.get(f"/order/{order_id}/", headers=html)
    state = detail.text.split('id="order-state"', 1)[1].split("</p>", 1)[0]
    assert "Paid" in state
    assert said in state, state
    listing = await orders.get("/", headers=html)
    row = listing.text.split(f'data-order-id="{order_id}"', 1)[1].split("</tr>", 1)[0]
    assert said in row, row
    # It cost nothing: nothing is refunded.
    assert 'id="refunds"' not in returned.text + detail.text
    with admin_connect(clean_db, "orders") as connection:
        assert connection.execute(
            "SELECT count(*) FROM orders.refunds WHERE order_id = %s", (order_id,)
        ).fetchone() == (0,)
    api = (await orders.get(f"/api/orders/{order_id}")).json()
    assert api["status"] == "paid"
    assert api["unconfirmed_bookings"] == [
        {"kind": "calendar_entry", "source_id": removed, "title": "Hedge laying"}
    ]
    assert api["refunds"] == []
    for client in (cart, events, orders):
        await client.aclose()


def claims_of(server, order_id: int) -> list[tuple[str, int]]:
    with admin_connect(server, "orders") as connection:
        return connection.execute(
            "SELECT kind, ref_id FROM orders.order_claims WHERE order_id = %s "
            "ORDER BY kind, ref_id",
            (order_id,),
        ).fetchall()


def remove_payment_configs(server) -> None:
    """A site that only gives free places: no page config on any page, no site default, so no
    SumUp merchant anywhere."""
    with admin_connect(server, "blog") as connection:
        connection.execute("DELETE FROM blog.page_configs")


def payment_columns(server, order_id: int) -> tuple:
    with admin_connect(server, "orders") as connection:
        return connection.execute(
            "SELECT page_config_id, merchant_code, checkout_prefix FROM orders.orders "
            "WHERE id = %s",
            (order_id,),
        ).fetchone()


async def test_free_bookings_are_confirmed_on_a_site_without_payments(
    stack, clean_db, shop, sandbox
):
    """A site with no SumUp account at all (no page config, no site default) could confirm no
    free booking: making the order read the page configs and refused it, 409 "Payments are
    not configured". With nothing to pay, no payment configuration is needed: the order is
    made without one, paid at 0.00, its booking confirmed, and its pages work."""
    remove_payment_configs(clean_db)
    cart = await browser_of(stack, "cart", user_id=3)
    events, orders = stack.browser("events"), stack.browser("orders")
    share_cookies(cart, events, orders)
    entry_id = free_entry(clean_db)
    assert (await events.post(f"/entries/{entry_id}/book/")).status_code == 200

    html = {"accept": "text/html"}
    response = await cart.post("/checkout/", headers=html)
    assert response.status_code == 303, response.text
    [order_id] = orders_of(clean_db)
    assert response.headers["location"].endswith(f"/checkout/return/{order_id}/")
    assert orders_of(clean_db) == {order_id: ("paid", Decimal("0.00"))}
    # It names no payment configuration: there is none, and nothing to pay through one.
    assert payment_columns(clean_db, order_id) == (None, None, None)
    assert sandbox.checkouts() == []
    assert attempts_of(clean_db, order_id) == 0
    assert await eventually(lambda: entry_state(clean_db, entry_id) == ("confirmed", order_id))
    assert await cart_count(cart) == 0

    returned = await orders.get(f"/checkout/return/{order_id}/", headers=html)
    assert returned.status_code == 200, returned.text
    assert f"order #{order_id} is confirmed" in returned.text
    assert "nothing to pay" in returned.text
    detail = await orders.get(f"/order/{order_id}/", headers=html)
    assert detail.status_code == 200, detail.text
    assert "there was nothing to pay" in detail.text
    listing = await orders.get("/", headers=html)
    assert listing.status_code == 200, listing.text
    row = listing.text.split(f'data-order-id="{order_id}"', 1)[1].split("</tr>", 1)[0]
    assert "confirmed (nothing to pay)" in row
    api = await orders.get(f"/api/orders/{order_id}")
    assert api.status_code == 200, api.text
    assert (api.json()["status"], api.json()["total"], api.json()["payment"]) == (
        "paid",
        "0.00",
        None,
    )
    # Its recheck has nothing to ask SumUp; paying it again is refused as for any paid order.
    rechecked = await orders.post(f"/order/{order_id}/recheck/")
    assert rechecked.status_code == 200, rechecked.text
    assert rechecked.json()["order"]["status"] == "paid"
    again = await orders.post(f"/order/{order_id}/pay/")
    assert again.status_code == 409, again.text
    assert "cannot be paid again" in again.json()["detail"]
    assert sandbox.checkouts() == []
    for client in (cart, events, orders):
        await client.aclose()


async def test_something_to_pay_still_needs_payments_configured(stack, clean_db, shop, sandbox):
    """The same cart with a priced booking next to the free one still needs a SumUp merchant:
    409 naming payments not configured, and nothing is left behind (no order, no checkout,
    both bookings held in the cart as before)."""
    remove_payment_configs(clean_db)
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    free = free_entry(clean_db)
    for entry_id in (free, shop.entry_id):
        assert (await events.post(f"/entries/{entry_id}/book/")).status_code == 200

    refused = await cart.post("/checkout/")
    assert refused.status_code == 409, refused.text
    assert "Payments are not configured for this page" in refused.json()["detail"]
    assert orders_of(clean_db) == {}
    assert sandbox.checkouts() == []
    assert outbox_rows(clean_db) == []
    assert entry_state(clean_db, free) == ("pending", None)
    assert entry_state(clean_db, shop.entry_id) == ("pending", None)
    assert await cart_count(cart) == 2
    for client in (cart, events):
        await client.aclose()


def delivered_keys(server) -> list[str]:
    with admin_connect(server, "orders") as connection:
        return [
            row[0]
            for row in connection.execute(
                "SELECT idempotency_key FROM orders.outbox WHERE delivered_at IS NOT NULL "
                "ORDER BY id"
            )
        ]


def lock_outbox_until_granted(server) -> None:
    """An exclusive lock on orders' outbox, asked for and let go of as soon as it is granted:
    it waits for the transactions holding the table (the relay's delivery), and every read of
    the outbox asked for after it waits behind it (PostgreSQL grants locks in order)."""
    with admin_connect(server, "orders") as connection, connection.transaction():
        connection.execute("LOCK TABLE orders.outbox IN ACCESS EXCLUSIVE MODE")


async def test_the_return_page_shows_what_a_delivery_that_just_ended_found(
    stack, clean_db, shop, sandbox
):
    """The return page reads its order, then delivers what its payment queued and reads the
    order again only when something was still due. The relay (woken by the payment) could
    finish that delivery in between: the page then showed the order as it was before it,
    "paid" with nothing about the booking events could not confirm, and a paid page does not
    look again. Played out in order here: the relay's confirmation waits in events (its key
    held) after delivering the cart's clear; a lock asked for on orders' outbox queues behind
    the relay's transaction, so the page's look at the outbox queues behind that, after the
    page has read its order; then events answers (the booking was removed from the cart), the
    relay records it, and the page looks."""
    cart = await browser_of(stack, "cart", user_id=3)
    events, orders = stack.browser("events"), stack.browser("orders")
    share_cookies(cart, events, orders)
    removed = free_entry(clean_db, "Hedge laying")
    assert (await events.post(f"/entries/{removed}/book/")).status_code == 200
    assert (await cart.post(f"/add/{shop.product_ids[0]}/")).status_code == 200
    answer = await cart.post("/checkout/")
    assert answer.status_code == 200, answer.text
    order_id = answer.json()["order_id"]
    checkout_id = checkout_id_of(clean_db, order_id)
    assert sandbox.client.post(f"/pay/{checkout_id}/pay").status_code == 303
    dropped = await cart.post(f"/booking/entry/{removed}/delete/")
    assert dropped.status_code == 200, dropped.text

    with confirmation_held(clean_db, order_id):
        assert (await webhook(stack, order_id, checkout_id)).status_code == 204
        # The relay delivered the clear and waits in events with the confirmation.
        assert await eventually(lambda: lock_waiters(clean_db, "events") >= 1)
        assert await eventually(
            lambda: delivered_keys(clean_db) == [f"orders:{order_id}:clear-cart"]
        )
        locker = asyncio.ensure_future(asyncio.to_thread(lock_outbox_until_granted, clean_db))
        assert await eventually(lambda: lock_waiters(clean_db, "orders") >= 1)
        page = asyncio.ensure_future(orders.get(f"/checkout/return/{order_id}/"))
        # The page has read its order and waits to look at the outbox.
        assert await eventually(lambda: page.done() or lock_waiters(clean_db, "orders") >= 2)
        assert not page.done(), page.result().text
    await locker
    returned = await page
    assert returned.status_code == 200, returned.text
    assert delivered_keys(clean_db) == [
        f"orders:{order_id}:clear-cart",
        f"orders:{order_id}:confirm-bookings",
    ]
    body = returned.json()
    assert body["state"] == "paid"
    assert body["order"]["unconfirmed_bookings"] == [
        {"kind": "calendar_entry", "source_id": removed, "title": "Hedge laying"}
    ]
    for client in (cart, events, orders):
        await client.aclose()
