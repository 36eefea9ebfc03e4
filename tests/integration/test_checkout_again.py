"""Checking out the same cart again (audit findings H3 and M3): while its order can be paid, the
cart gets that order with its current payment attempt; once it cannot (expired, superseded, at
its attempts cap), the same cart makes a new order, exactly once under concurrent submits.
Real apps in process, real PostgreSQL, the SumUp sandbox over HTTP. Each test failed before
create-order looked at the order behind a known key (apps.orders.service.replay_checkout).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal

import pytest

from apps.common.app_factory import platform_of
from apps.common.db import REQUEST_SESSION_KEY
from apps.common.internal_client import InternalCallError
from apps.events import contract as events_contract
from apps.orders import contract as orders_contract
from apps.orders.service import give_back_holds_key
from apps.orders.settings import HOLD_AFTER_PAYABLE
from apps.orders.settlement import release_bookings_key
from tests.conftest import admin_connect, lock_waiters
from tests.integration.commerce_fixtures import (
    AnswerReplaced,
    AnswersLost,
    ServiceDown,
    book_and_check_out,
    browser_of,
    cart_rows,
    confirmation_held,
    share_cookies,
    shop_stack,
    sweep_ended_holds_now,
)
from tests.integration.orders_fixtures import Sandbox, checkout_id_of, orders_of, webhook
from tests.waiting import eventually

HTML = {"accept": "text/html"}


@pytest.fixture
async def stack(clean_db, credentials, sandbox, shop):
    async with shop_stack(clean_db, credentials, sandbox.server) as running:
        yield running


async def time_to_pay_ends(stack, server, sandbox: Sandbox, order_id: int) -> None:
    """The order's payable time passes: SumUp closes its checkouts (their valid_until), and
    orders' reconciliation expires it, as the running service would."""
    with admin_connect(server, "orders") as connection:
        connection.execute(
            "UPDATE orders.orders SET payable_until = now() - interval '1 s' WHERE id = %s",
            (order_id,),
        )
        checkout_ids = [
            row[0]
            for row in connection.execute(
                "SELECT sumup_checkout_id FROM orders.payment_attempts WHERE order_id = %s",
                (order_id,),
            )
        ]
    for checkout_id in checkout_ids:
        sandbox.client.post(f"/_sandbox/checkouts/{checkout_id}/expire").raise_for_status()
    await stack.apps["orders"].state.reconciler.run_once()
    assert orders_of(server)[order_id][0] == "expired"


def checkout_of(sandbox: Sandbox, answer: dict) -> dict:
    """SumUp's view of the checkout the answer's hosted URL opens."""
    return sandbox.checkout(answer["sumup_hosted_url"].rstrip("/").rsplit("/", 1)[-1])


async def test_a_retry_while_payable_gets_the_same_order(stack, clean_db, shop, sandbox):
    cart = await browser_of(stack, "cart", user_id=3)
    await cart.post(f"/add/{shop.product_ids[0]}/")
    first = (await cart.post("/checkout/")).json()
    again = (await cart.post("/checkout/")).json()
    assert again == first
    assert len(orders_of(clean_db)) == 1


async def test_the_cart_of_an_expired_order_checks_out_as_a_new_order(
    stack, clean_db, shop, sandbox
):
    """H3 (b): the expired order and its closed SumUp checkout came back for ever."""
    cart = await browser_of(stack, "cart", user_id=3)
    await cart.post(f"/add/{shop.product_ids[0]}/")
    first = (await cart.post("/checkout/")).json()
    await time_to_pay_ends(stack, clean_db, sandbox, first["order_id"])

    second = await cart.post("/checkout/")
    assert second.status_code == 200, second.text
    new = second.json()
    assert new["order_id"] != first["order_id"]
    assert orders_of(clean_db)[new["order_id"]][0] == "pending"
    assert checkout_of(sandbox, new)["status"] == "PENDING"
    # The cart now stands for the new order: checking out again gets it back.
    assert (await cart.post("/checkout/")).json() == new
    assert len(orders_of(clean_db)) == 2

    # And it pays normally.
    checkout_id = checkout_id_of(clean_db, new["order_id"])
    sandbox.pay(checkout_id)
    assert (await webhook(stack, new["order_id"], checkout_id)).status_code == 204
    assert orders_of(clean_db)[new["order_id"]][0] == "paid"


async def test_a_cart_back_as_it_was_does_not_get_its_superseded_order(
    stack, clean_db, shop, sandbox
):
    """H3 (a): 1 unit, then 2 (a newer order), then 1 again: the buyer was sent to the closed
    checkout of the first order, then told to pay the second, for the 2 units."""
    cart = await browser_of(stack, "cart", user_id=3)
    line = (await cart.post(f"/add/{shop.product_ids[0]}/")).json()
    one = (await cart.post("/checkout/")).json()
    await cart.post(f"/item/{line['id']}/quantity/", data={"quantity": "2"})
    two = (await cart.post("/checkout/")).json()
    assert orders_of(clean_db)[one["order_id"]][0] == "superseded"
    await cart.post(f"/item/{line['id']}/quantity/", data={"quantity": "1"})

    back = await cart.post("/checkout/")
    assert back.status_code == 200, back.text
    answer = back.json()
    assert answer["order_id"] not in (one["order_id"], two["order_id"])
    orders = orders_of(clean_db)
    assert orders[answer["order_id"]] == ("pending", orders[one["order_id"]][1])  # 1 unit
    assert orders[two["order_id"]][0] == "superseded"  # the 2 units can no longer be paid
    assert checkout_of(sandbox, answer)["status"] == "PENDING"


async def test_a_superseded_order_points_to_the_end_of_its_chain_not_the_same_goods(
    stack, clean_db, shop, sandbox
):
    """Audit s20 L7: 1, 2, then 3 units checked out made orders A, B, C, each superseding the
    one before. A pointed to B (itself superseded) and called it "the same goods" (2 units
    against 1); paying A again sent the buyer to B, which sent them to C."""
    cart = await browser_of(stack, "cart", user_id=3)
    orders = stack.browser("orders")
    share_cookies(cart, orders)
    line = (await cart.post(f"/add/{shop.product_ids[0]}/")).json()
    made = []
    for quantity in (1, 2, 3):
        await cart.post(f"/item/{line['id']}/quantity/", data={"quantity": str(quantity)})
        made.append((await cart.post("/checkout/")).json()["order_id"])
    first, second, latest = made
    assert [orders_of(clean_db)[order_id][0] for order_id in made] == [
        "superseded",
        "superseded",
        "pending",
    ]

    page = await orders.get(f"/order/{first}/", headers=HTML)
    assert f'<a href="/order/{latest}/" id="newer-order">order #{latest}</a>' in page.text
    assert "same goods" not in page.text
    assert "your latest checkout of these goods" in page.text
    orders_page = stack.apps["orders"].state.runtime.urls.public_base
    again = await orders.post(f"/order/{first}/pay/", headers={"accept": "application/json"})
    assert again.status_code == 409
    assert again.json()["order_id"] == latest
    assert again.json()["detail"] == (
        f"Order {first} was replaced when you checked out again; your latest checkout of these "
        f"goods is order {latest}: pay {orders_page}/order/{latest}/ instead"
    )
    assert f"/order/{latest}/" in (await orders.post(f"/order/{second}/pay/")).json()["detail"]


async def test_a_superseded_orders_json_names_the_end_of_its_chain(stack, clean_db, shop, sandbox):
    """Orders A, B, C, each superseding the one before: the JSON of A named only B (its
    ``superseded_by``, itself superseded) while A's page pointed to C. Now every JSON answer of
    an order (the order, the list, the return page's) names C as ``latest_checkout_id`` beside
    ``superseded_by`` (kept as it was: the next order); an order not superseded has none."""
    cart = await browser_of(stack, "cart", user_id=3)
    orders = stack.browser("orders")
    share_cookies(cart, orders)
    line = (await cart.post(f"/add/{shop.product_ids[0]}/")).json()
    made = []
    for quantity in (1, 2, 3):
        await cart.post(f"/item/{line['id']}/quantity/", data={"quantity": str(quantity)})
        made.append((await cart.post("/checkout/")).json()["order_id"])
    first, second, latest = made
    chain = {first: (second, latest), second: (latest, latest), latest: (None, None)}

    for order_id, (next_order, end) in chain.items():
        answer = (await orders.get(f"/api/orders/{order_id}")).json()
        assert (answer["superseded_by"], answer["latest_checkout_id"]) == (next_order, end)
        returned = (await orders.get(f"/checkout/return/{order_id}/")).json()["order"]
        assert (returned["superseded_by"], returned["latest_checkout_id"]) == (next_order, end)
    listed = {
        item["id"]: (item["superseded_by"], item["latest_checkout_id"])
        for item in (await orders.get("/api/orders")).json()["items"]
    }
    assert listed == chain


async def test_checkout_after_pay_again_opens_the_current_attempt(stack, clean_db, shop, sandbox):
    """M3: after a pay again, the cart's Checkout sent the buyer to attempt 1, closed."""
    cart = await browser_of(stack, "cart", user_id=3)
    orders = stack.browser("orders")
    share_cookies(cart, orders)
    await cart.post(f"/add/{shop.product_ids[0]}/")
    first = (await cart.post("/checkout/")).json()
    order_id = first["order_id"]
    sandbox.fail(checkout_id_of(clean_db, order_id))
    again = await orders.post(f"/order/{order_id}/pay/")
    assert again.status_code == 200, again.text
    assert again.json()["attempt"] == 2

    checkout = (await cart.post("/checkout/")).json()
    assert checkout["order_id"] == order_id
    assert checkout["sumup_hosted_url"] == again.json()["sumup_hosted_url"]
    assert checkout["sumup_reference"].endswith(f"-{order_id}-2")
    assert checkout_of(sandbox, checkout)["status"] == "PENDING"
    assert len(orders_of(clean_db)) == 1


async def test_past_the_attempts_cap_checking_out_again_makes_a_new_order(
    clean_db, credentials, sandbox, shop
):
    """M3: the 409's advice ("check out again from your cart") gave the same capped order."""
    async with shop_stack(
        clean_db, credentials, sandbox.server, ORDERS_ATTEMPTS_PER_ORDER="2"
    ) as stack:
        cart = await browser_of(stack, "cart", user_id=3)
        orders = stack.browser("orders")
        share_cookies(cart, orders)
        await cart.post(f"/add/{shop.product_ids[0]}/")
        order_id = (await cart.post("/checkout/")).json()["order_id"]
        sandbox.fail(checkout_id_of(clean_db, order_id))
        assert (await orders.post(f"/order/{order_id}/pay/")).status_code == 200
        sandbox.fail(checkout_id_of(clean_db, order_id, 2))
        capped = await orders.post(f"/order/{order_id}/pay/")
        assert capped.status_code == 409
        assert "check out again from your cart" in capped.json()["detail"]

        new = await cart.post("/checkout/")
        assert new.status_code == 200, new.text
        answer = new.json()
        assert answer["order_id"] != order_id
        statuses = orders_of(clean_db)
        assert statuses[order_id][0] == "superseded"
        assert statuses[answer["order_id"]][0] == "pending"
        assert checkout_of(sandbox, answer)["status"] == "PENDING"
        assert (await orders.post(f"/order/{answer['order_id']}/pay/")).status_code == 200


async def test_concurrent_checkouts_after_the_order_died_make_one_new_order(
    stack, clean_db, shop, sandbox
):
    cart = await browser_of(stack, "cart", user_id=3)
    await cart.post(f"/add/{shop.product_ids[0]}/")
    first = (await cart.post("/checkout/")).json()
    await time_to_pay_ends(stack, clean_db, sandbox, first["order_id"])

    answers = await asyncio.gather(*(cart.post("/checkout/") for _ in range(4)))
    assert [answer.status_code for answer in answers] == [200] * 4, [a.text for a in answers]
    made = {answer.json()["order_id"] for answer in answers}
    assert len(made) == 1
    assert first["order_id"] not in made
    assert len(orders_of(clean_db)) == 2
    pending = [checkout for checkout in sandbox.checkouts() if checkout["status"] == "PENDING"]
    assert len(pending) == 1


async def test_a_flagged_order_is_not_replaced_by_checking_out_again(
    stack, clean_db, shop, sandbox
):
    """An order under review may have been paid (another amount came back): the cart's
    checkout says so and makes no order, nor sends the buyer to its checkout again."""
    cart = await browser_of(stack, "cart", user_id=3)
    await cart.post(f"/add/{shop.product_ids[0]}/")
    first = (await cart.post("/checkout/")).json()
    checkout_id = checkout_id_of(clean_db, first["order_id"])
    sandbox.pay(checkout_id, amount_override=0.37)
    assert (await webhook(stack, first["order_id"], checkout_id)).status_code == 204

    with admin_connect(clean_db, "orders") as connection:
        flagged = connection.execute(
            "SELECT status, flagged FROM orders.orders WHERE id = %s", (first["order_id"],)
        ).fetchone()
    assert flagged == ("pending", True)

    again = await cart.post("/checkout/")
    assert again.status_code == 409, again.text
    assert "being reviewed" in again.json()["detail"]
    assert len(orders_of(clean_db)) == 1


async def test_a_dead_key_is_taken_over_by_one_request_while_the_other_waits(stack, clean_db):
    """run_idempotent's take-over on its own, with the order's real key table: the second
    request that finds the stored answer dead waits for the first one's new answer, and the
    effect runs once more, not twice."""
    from apps.common.idempotency import run_idempotent
    from apps.orders.models import idempotency_keys

    maker = stack.apps["orders"].state.platform.sessionmaker
    effects: list[int] = []
    in_effect, release = asyncio.Event(), asyncio.Event()

    async def call(wait: bool) -> object:
        async def effect() -> dict[str, int]:
            effects.append(len(effects) + 1)
            made = {"n": len(effects)}
            if wait:
                in_effect.set()
                await release.wait()
            return made

        async def replay(stored: dict[str, int]) -> dict[str, int] | None:
            return None if stored["n"] == 1 else stored  # the first answer is dead

        async with maker() as session:
            return await run_idempotent(
                session,
                idempotency_keys,
                action="take-over-test",
                key="k",
                payload={"cart": 1},
                effect=effect,
                replay=replay,
            )

    assert await call(wait=False) == {"n": 1}
    first = asyncio.create_task(call(wait=True))
    await in_effect.wait()
    second = asyncio.create_task(call(wait=False))
    # The second has reached the key's row and waits on it.
    assert await eventually(lambda: lock_waiters(clean_db, "orders") == 1)
    assert not second.done()
    release.set()
    assert await first == {"n": 2}
    assert await second == {"n": 2}
    assert effects == [1, 2]


async def test_an_order_whose_late_payment_went_back_does_not_pin_the_cart(
    stack, clean_db, shop, sandbox
):
    """The superseded order's old tab paid anyway (its SumUp checkout could not be closed):
    that money goes back, and the cart back as it was makes a new order, not that one again."""
    cart = await browser_of(stack, "cart", user_id=3)
    line = (await cart.post(f"/add/{shop.product_ids[0]}/")).json()
    one = (await cart.post("/checkout/")).json()
    sandbox.controls(deactivation_unavailable=True)
    await cart.post(f"/item/{line['id']}/quantity/", data={"quantity": "2"})
    two = (await cart.post("/checkout/")).json()
    old_tab = checkout_id_of(clean_db, one["order_id"])
    sandbox.pay(old_tab)
    assert (await webhook(stack, one["order_id"], old_tab)).status_code == 204
    sandbox.controls(deactivation_unavailable=False)
    assert orders_of(clean_db)[one["order_id"]][0] in ("refund_due", "refunded")
    await cart.post(f"/item/{line['id']}/quantity/", data={"quantity": "1"})

    back = await cart.post("/checkout/")
    assert back.status_code == 200, back.text
    answer = back.json()
    assert answer["order_id"] not in (one["order_id"], two["order_id"])
    assert orders_of(clean_db)[answer["order_id"]][0] == "pending"
    assert checkout_of(sandbox, answer)["status"] == "PENDING"


# -- a booking taken out of the cart and booked again (audit s19 M2, M5) ----------------------


def booking_hold(server, entry_id: int) -> tuple:
    """The entry's state, confirmed order, and the order it is held for until when."""
    with admin_connect(server, "events") as connection:
        return connection.execute(
            "SELECT state, order_id, hold_order_id, hold_expires_at "
            "FROM events.calendar_entries WHERE id = %s",
            (entry_id,),
        ).fetchone()


def payable_until_of(server, order_id: int):
    with admin_connect(server, "orders") as connection:
        return connection.execute(
            "SELECT payable_until FROM orders.orders WHERE id = %s", (order_id,)
        ).fetchone()[0]


def refunds_of(server, order_id: int) -> list[tuple]:
    with admin_connect(server, "orders") as connection:
        return connection.execute(
            "SELECT amount, status FROM orders.refunds WHERE order_id = %s ORDER BY id",
            (order_id,),
        ).fetchall()


def booking_claims_of(server, order_id: int) -> list[tuple]:
    with admin_connect(server, "orders") as connection:
        return connection.execute(
            "SELECT kind, ref_id FROM orders.order_claims WHERE order_id = %s "
            "AND kind IN ('calendar_entry', 'ticket') ORDER BY kind, ref_id",
            (order_id,),
        ).fetchall()


def minutes_pass(server, order_id: int, entry_id: int, minutes: int) -> None:
    """``minutes`` go by: the order's payable time and the entry's hold come that much nearer
    (the clocks orders' reconciliation and events' holds read)."""
    shift = timedelta(minutes=minutes)
    with admin_connect(server, "orders") as connection:
        connection.execute(
            "UPDATE orders.orders SET payable_until = payable_until - %s WHERE id = %s",
            (shift, order_id),
        )
    with admin_connect(server, "events") as connection:
        connection.execute(
            "UPDATE events.calendar_entries SET hold_expires_at = hold_expires_at - %s "
            "WHERE id = %s",
            (shift, entry_id),
        )


async def pay_on_the_hosted_page(stack, sandbox: Sandbox, server, order_id: int) -> None:
    checkout_id = checkout_id_of(server, order_id)
    assert sandbox.client.post(f"/pay/{checkout_id}/pay").status_code < 400
    assert (await webhook(stack, order_id, checkout_id)).status_code == 204


async def test_a_booking_booked_again_is_held_for_the_order_its_checkout_replays(
    stack, clean_db, shop, sandbox
):
    """Audit s19 M5: the booking taken out of the cart while its order waited and booked again
    (the cart as it was) replayed the same order, but stayed held only for the cart's 15
    minutes; paid after those, within the order's payable time, it was lost and refunded."""
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    first = (await cart.post("/checkout/")).json()
    order_id = first["order_id"]
    held_until = payable_until_of(clean_db, order_id) + HOLD_AFTER_PAYABLE
    assert booking_hold(clean_db, shop.entry_id) == ("pending", None, order_id, held_until)

    removed = await cart.post(f"/booking/entry/{shop.entry_id}/delete/")
    assert removed.status_code == 200, removed.text
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    assert booking_hold(clean_db, shop.entry_id)[2] is None  # the cart's hold only

    again = await cart.post("/checkout/")
    assert again.status_code == 200, again.text
    assert again.json() == first  # the same order, its same checkout
    assert booking_hold(clean_db, shop.entry_id) == ("pending", None, order_id, held_until)

    # The cart's 15 minutes pass (and one more); the order can still be paid.
    minutes_pass(clean_db, order_id, shop.entry_id, 16)
    assert await sweep_ended_holds_now(stack) == 0
    await pay_on_the_hosted_page(stack, sandbox, clean_db, order_id)
    assert orders_of(clean_db)[order_id] == ("paid", Decimal("7.50"))
    assert await eventually(
        lambda: booking_hold(clean_db, shop.entry_id)[:2] == ("confirmed", order_id)
    ), booking_hold(clean_db, shop.entry_id)
    await stack.apps["orders"].state.reconciler.quiet()
    assert refunds_of(clean_db, order_id) == []
    assert booking_claims_of(clean_db, order_id) == [("calendar_entry", shop.entry_id)]


async def paid_with_its_booking_given_back(stack, sandbox, clean_db, order_id: int) -> None:
    """The order, whose booking the buyer took out of the cart, is paid on the hosted page:
    events cannot confirm the booking, its 7.50 is refunded and the order lets go of it."""
    await pay_on_the_hosted_page(stack, sandbox, clean_db, order_id)
    # Paid, until events' answer (on its way) says none of it could be confirmed.
    assert orders_of(clean_db)[order_id][0] in ("paid", "refund_due", "refunded")
    assert await eventually(
        lambda: refunds_of(clean_db, order_id) == [(Decimal("7.50"), "done")]
    ), refunds_of(clean_db, order_id)
    assert booking_claims_of(clean_db, order_id) == []


async def test_a_booking_its_paid_order_gave_back_checks_out_as_a_new_order(
    stack, clean_db, shop, sandbox
):
    """Audit s19 M2: the booking was taken out of the cart while its order waited, the order
    was then paid (the booking's price went back, and the order let go of it), and the buyer
    booked it again: the same cart's checkout answered the old paid order's return page, for
    ever, and the booking lapsed."""
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    first = (await cart.post("/checkout/")).json()
    order_id = first["order_id"]
    removed = await cart.post(f"/booking/entry/{shop.entry_id}/delete/")
    assert removed.status_code == 200, removed.text
    await paid_with_its_booking_given_back(stack, sandbox, clean_db, order_id)
    # Its money went back whole: none of it could be confirmed.
    assert await eventually(lambda: orders_of(clean_db)[order_id][0] == "refunded")

    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    again = await cart.post("/checkout/")
    assert again.status_code == 200, again.text
    new = again.json()
    assert new["order_id"] != order_id
    assert new["paid"] is False
    assert checkout_of(sandbox, new)["status"] == "PENDING"
    assert orders_of(clean_db) == {
        order_id: ("refunded", Decimal("7.50")),
        new["order_id"]: ("pending", Decimal("7.50")),
    }
    assert booking_claims_of(clean_db, new["order_id"]) == [("calendar_entry", shop.entry_id)]
    held_until = payable_until_of(clean_db, new["order_id"]) + HOLD_AFTER_PAYABLE
    assert booking_hold(clean_db, shop.entry_id) == ("pending", None, new["order_id"], held_until)
    # The cart now stands for the new order: checking out again gets it back.
    assert (await cart.post("/checkout/")).json() == new

    await pay_on_the_hosted_page(stack, sandbox, clean_db, new["order_id"])
    assert orders_of(clean_db)[new["order_id"]][0] == "paid"
    assert await eventually(
        lambda: booking_hold(clean_db, shop.entry_id)[:2] == ("confirmed", new["order_id"])
    ), booking_hold(clean_db, shop.entry_id)
    await stack.apps["orders"].state.reconciler.quiet()
    assert refunds_of(clean_db, new["order_id"]) == []
    assert booking_claims_of(clean_db, new["order_id"]) == [("calendar_entry", shop.entry_id)]


async def test_a_paid_order_that_still_claims_the_booking_answers_its_return_page(
    stack, clean_db, shop, sandbox
):
    """The other side of M2: paid, its booking being confirmed (not let go of), the same cart
    checked out again goes to the order's return page and makes no order."""
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    order_id = (await cart.post("/checkout/")).json()["order_id"]
    with admin_connect(clean_db, "events") as connection, connection.transaction():
        # Events' confirmation waits behind this lock: the booking is still in the cart.
        connection.execute(
            "SELECT * FROM events.calendar_entries WHERE id = %s FOR UPDATE", (shop.entry_id,)
        )
        await pay_on_the_hosted_page(stack, sandbox, clean_db, order_id)
        assert orders_of(clean_db)[order_id][0] == "paid"
        again = await cart.post("/checkout/")
    assert again.status_code == 200, again.text
    answer = again.json()
    assert (answer["order_id"], answer["paid"]) == (order_id, True)
    assert answer["next_url"].endswith(f"/checkout/return/{order_id}/")
    assert list(orders_of(clean_db)) == [order_id]
    assert booking_claims_of(clean_db, order_id) == [("calendar_entry", shop.entry_id)]
    assert await eventually(
        lambda: booking_hold(clean_db, shop.entry_id)[:2] == ("confirmed", order_id)
    ), booking_hold(clean_db, shop.entry_id)


async def test_a_paid_order_that_gave_back_a_booking_but_claims_the_goods_answers_its_page(
    stack, clean_db, shop, sandbox
):
    """Audit s19c F3: the paid order let go of the booking (taken out of the cart, refunded)
    but still claims the cart's product line, whose clear has not reached cart yet. The same
    cart with the booking booked again was refused a new order (409: the product is paid for)
    where it had answered the paid order's return page. It answers that page again; once the
    clear has taken the product out, checking out makes a new order for the booking."""
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    await cart.post(f"/add/{shop.product_ids[0]}/")
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    order_id = (await cart.post("/checkout/")).json()["order_id"]
    removed = await cart.post(f"/booking/entry/{shop.entry_id}/delete/")
    assert removed.status_code == 200, removed.text
    client = platform_of(stack.apps["orders"]).client
    client.route("cart", ServiceDown("cart"))  # the clear-cart waits in orders' outbox
    try:
        await paid_with_its_booking_given_back(stack, sandbox, clean_db, order_id)
        assert orders_of(clean_db)[order_id][0] == "paid"  # its product is the buyer's
        assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
        again = await cart.post("/checkout/")
        assert again.status_code == 200, again.text
        answer = again.json()
        assert (answer["order_id"], answer["paid"]) == (order_id, True)
        assert answer["next_url"].endswith(f"/checkout/return/{order_id}/")
        assert list(orders_of(clean_db)) == [order_id]
        assert [row[2] for row in cart_rows(clean_db) if row[6]] == [shop.product_ids[0]]
    finally:
        client.route("cart", stack.apps["cart"])

    assert await eventually(
        lambda: not [row for row in cart_rows(clean_db) if row[6]], timeout=30
    ), cart_rows(clean_db)
    new = await cart.post("/checkout/")
    assert new.status_code == 200, new.text
    created = new.json()
    assert created["order_id"] != order_id
    assert created["paid"] is False
    assert orders_of(clean_db)[created["order_id"]] == ("pending", Decimal("7.50"))
    assert booking_claims_of(clean_db, created["order_id"]) == [("calendar_entry", shop.entry_id)]


async def test_a_replay_events_cannot_hold_for_says_the_order_is_as_it_was(
    stack, clean_db, shop, sandbox
):
    """Audit s19c F4: the replay asks events to hold the bookings again. When events could not
    be reached, orders said "nothing was created" of an order that exists, and cart told the
    buyer orders could not be reached (it named only SumUp by name). The buyer is told events,
    the order is as it was, and checking out again answers it."""
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    first = (await cart.post("/checkout/")).json()
    client = platform_of(stack.apps["orders"]).client
    client.route("events", ServiceDown("events"))
    try:
        again = await cart.post("/checkout/")
    finally:
        client.route("events", stack.apps["events"])
    assert again.status_code == 503, again.text
    detail = again.json()["detail"]
    assert "events cannot be reached" in detail, detail
    assert orders_of(clean_db)[first["order_id"]][0] == "pending"
    assert (await cart.post("/checkout/")).json() == first


# -- a replay at the moment its order expires (audit s19c F5) --------------------------------


class KeptWaiting:
    """A service as another's client reaches it, but calls of ``action`` wait (``reached`` is
    set) until ``go`` is set; every other call goes straight through."""

    def __init__(self, app, action) -> None:
        self.app = app
        self.path = action.path
        self.reached = asyncio.Event()
        self.go = asyncio.Event()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == self.path:
            self.reached.set()
            await self.go.wait()
        await self.app(scope, receive, send)


def releases_undelivered(server, order_id: int) -> int:
    with admin_connect(server, "orders") as connection:
        return connection.execute(
            "SELECT count(*) FROM orders.outbox WHERE idempotency_key = %s "
            "AND delivered_at IS NULL",
            (release_bookings_key(order_id),),
        ).fetchone()[0]


def booking_held_for(server, entry_id: int, order_id: int) -> bool:
    """Whether the entry is held for the order now (its hold has not ended)."""
    with admin_connect(server, "events") as connection:
        return connection.execute(
            "SELECT state = 'pending' AND hold_order_id = %s AND hold_expires_at > now() "
            "FROM events.calendar_entries WHERE id = %s",
            (order_id, entry_id),
        ).fetchone()[0]


async def test_a_replay_as_its_order_expires_does_not_hold_the_booking_past_the_expiry(
    stack, clean_db, shop, sandbox
):
    """Audit s19c F5: a checkout replay found its order payable, then asked events to hold the
    booking again; the order expired in between, and its release (which ends the holds made
    for it) reached events first. The replay's hold then held the booking again, for an order
    that can no longer be paid, until its payable time and 30 minutes more. Whatever comes
    first, an expired order's booking ends up not held for it."""
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    order_id = (await cart.post("/checkout/")).json()["order_id"]
    assert booking_held_for(clean_db, shop.entry_id, order_id)

    client = platform_of(stack.apps["orders"]).client
    holds = KeptWaiting(stack.apps["events"], events_contract.hold_for_order)
    client.route("events", holds)
    try:
        replay = asyncio.ensure_future(cart.post("/checkout/"))
        await asyncio.wait_for(holds.reached.wait(), timeout=10)
        # The payable time ends now, while the replay's hold is on its way to events:
        # reconciliation expires what it may, and its release reaches events first.
        with admin_connect(clean_db, "orders") as connection:
            connection.execute(
                "UPDATE orders.orders SET payable_until = now() - interval '1 s' WHERE id = %s",
                (order_id,),
            )
        await stack.apps["orders"].state.reconciler.run_once()
        assert await eventually(lambda: releases_undelivered(clean_db, order_id) == 0)
        holds.go.set()
        answered = await replay
    finally:
        holds.go.set()
        client.route("events", stack.apps["events"])
    assert answered.status_code == 200, answered.text

    # The order expires (now, if the replay kept it from expiring until its hold was in).
    await stack.apps["orders"].state.reconciler.run_once()
    assert orders_of(clean_db)[order_id][0] == "expired"
    assert await eventually(lambda: releases_undelivered(clean_db, order_id) == 0)
    assert not booking_held_for(clean_db, shop.entry_id, order_id), booking_hold(
        clean_db, shop.entry_id
    )


async def test_a_replay_whose_booking_someone_else_took_is_refused_and_changes_nothing(
    stack, clean_db, shop, sandbox
):
    """The replay holds the request's bookings for its order again; when events can no longer
    hold one (the buyer took it out of the cart, in another tab, as the checkout left cart, and
    someone else booked the last place), the replay is a 409 saying so: no new order, the order
    as it was, and the other buyer's booking theirs."""
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    first = (await cart.post("/checkout/")).json()
    order_id = first["order_id"]
    claims = booking_claims_of(clean_db, order_id)

    client = platform_of(stack.apps["cart"]).client
    checkouts = KeptWaiting(stack.apps["orders"], orders_contract.create_order)
    client.route("orders", checkouts)
    try:
        replay = asyncio.ensure_future(cart.post("/checkout/"))
        await asyncio.wait_for(checkouts.reached.wait(), timeout=10)
        # Cart has read the cart (with the booking) and its create-order is on its way.
        removed = await cart.post(f"/booking/entry/{shop.entry_id}/delete/")
        assert removed.status_code == 200, removed.text
        other = await browser_of(stack, "events", user_id=4)
        assert (await other.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
        checkouts.go.set()
        refused = await replay
    finally:
        checkouts.go.set()
        client.route("orders", stack.apps["orders"])
    assert refused.status_code == 409, refused.text
    detail = refused.json()["detail"]
    assert f"no longer held for you (entries {shop.entry_id})" in detail, detail
    assert "Your cart has not changed" in detail, detail
    assert list(orders_of(clean_db)) == [order_id]
    assert orders_of(clean_db)[order_id][0] == "pending"
    assert booking_claims_of(clean_db, order_id) == claims
    with admin_connect(clean_db, "orders") as connection:
        # One key: the cart as it was, so this was the replay of the order's checkout.
        keys = connection.execute("SELECT count(*) FROM orders.idempotency_keys").fetchone()[0]
    assert keys == 1
    with admin_connect(clean_db, "events") as connection:
        owner = connection.execute(
            "SELECT state, user_id, hold_order_id FROM events.calendar_entries WHERE id = %s",
            (shop.entry_id,),
        ).fetchone()
    assert owner == ("pending", 4, None), owner
    for browser in (cart, events, other):
        await browser.aclose()


async def test_a_checkout_sumup_refuses_gives_the_bookings_back_to_the_cart_as_they_were(
    stack, clean_db, shop, sandbox
):
    """Audit s20 M1 (b): events held the booking for the new order (until its payable time and
    30 minutes more), then SumUp could not be reached and create-order rolled back. The order
    never existed, but the booking stayed held for it for an hour. The cart's hold is what it
    was: for the buyer, no order, until the cart's expiry."""
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    await cart.post(f"/add/{shop.product_ids[0]}/")
    before = booking_hold(clean_db, shop.entry_id)
    assert before[:3] == ("pending", None, None), before

    sandbox.controls(api_unavailable=True)
    refused = await cart.post("/checkout/")
    assert refused.status_code == 503, refused.text
    assert "Your cart has not changed" in refused.json()["detail"]
    assert orders_of(clean_db) == {}
    assert booking_hold(clean_db, shop.entry_id) == before
    for browser in (cart, events):
        await browser.aclose()


async def test_a_new_order_sumup_refuses_leaves_the_booking_held_for_the_order_before_it(
    stack, clean_db, shop, sandbox
):
    """The same when the new order would have superseded one (the cart changed): that order
    is payable as before, and the booking held for it as before, not for the order that never
    was."""
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    order_id = (await cart.post("/checkout/")).json()["order_id"]
    before = booking_hold(clean_db, shop.entry_id)
    assert before[:3] == ("pending", None, order_id), before

    await cart.post(f"/add/{shop.product_ids[0]}/")  # a new cart: a new order
    sandbox.controls(api_unavailable=True)
    refused = await cart.post("/checkout/")
    assert refused.status_code == 503, refused.text
    assert list(orders_of(clean_db)) == [order_id]
    assert orders_of(clean_db)[order_id][0] == "pending"
    assert booking_hold(clean_db, shop.entry_id) == before
    for browser in (cart, events):
        await browser.aclose()


async def test_a_hold_events_applied_after_orders_gave_up_is_given_back(
    stack, clean_db, shop, sandbox
):
    """Audit s20 M1 (b), the other way: events held the booking for the new order, but its
    answer came after orders' timeout (every attempt), so create-order failed ("nothing was
    created"). The hold events applied is given back: the booking is in the cart as before."""
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    await cart.post(f"/add/{shop.product_ids[0]}/")
    before = booking_hold(clean_db, shop.entry_id)

    client = platform_of(stack.apps["orders"]).client
    client.route("events", AnswersLost(stack.apps["events"], "hold-for-order", lost=3))
    try:
        refused = await cart.post("/checkout/")
    finally:
        client.route("events", stack.apps["events"])
    assert refused.status_code == 503, refused.text
    assert orders_of(clean_db) == {}
    assert await eventually(lambda: booking_hold(clean_db, shop.entry_id) == before)
    for browser in (cart, events):
        await browser.aclose()


async def test_a_hold_that_reaches_events_after_its_give_back_holds_nothing(
    stack, clean_db, shop, sandbox
):
    """A give-back of an order that never existed can reach events before the hold it gives
    back (the hold still on its way when orders gave up): it ended nothing, and the late hold
    then held the booking for that order until its payable time and 30 minutes more. Events
    now remembers the orders given back: a hold for one of them holds nothing (409), and the
    booking stays in the cart as it was."""
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    before = booking_hold(clean_db, shop.entry_id)
    assert before[:3] == ("pending", None, None), before

    client = platform_of(stack.apps["orders"]).client
    never_made = 987_654
    given_back = await client.call(
        events_contract.release_for_order,
        events_contract.ReleaseForOrder(order_id=never_made, rolled_back=True),
    )
    assert given_back.ended == 0
    late_hold = events_contract.HoldForOrder(
        order_id=never_made,
        until=before[3] + timedelta(minutes=30),
        entry_ids=[shop.entry_id],
        user_id=3,
    )
    with pytest.raises(InternalCallError) as refused:
        await client.call(events_contract.hold_for_order, late_hold)
    assert refused.value.remote_status == 409, refused.value
    assert f"order {never_made}" in refused.value.problem["detail"]
    assert booking_hold(clean_db, shop.entry_id) == before
    # A replay of the give-back changes nothing either.
    again = await client.call(
        events_contract.release_for_order,
        events_contract.ReleaseForOrder(order_id=never_made, rolled_back=True),
    )
    assert again.ended == 0
    assert booking_hold(clean_db, shop.entry_id) == before
    for browser in (cart, events):
        await browser.aclose()


async def test_a_hold_and_its_give_back_at_once_leave_the_booking_as_it_was(
    stack, clean_db, shop, sandbox
):
    """The race of the test above: the hold is already inside events (past its check of the
    orders given back) but waits on the booking's row, and the give-back comes in meanwhile.
    Without one order of the two, the give-back found nothing to give back and committed, then
    the hold went on and held the booking for an order that never existed. Events serialises
    a hold and the give-back of one order: the give-back waits, then gives the hold back."""
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    before = booking_hold(clean_db, shop.entry_id)
    client = platform_of(stack.apps["orders"]).client
    never_made = 987_655
    late_hold = events_contract.HoldForOrder(
        order_id=never_made,
        until=before[3] + timedelta(minutes=30),
        entry_ids=[shop.entry_id],
        user_id=3,
    )
    give_back = events_contract.ReleaseForOrder(order_id=never_made, rolled_back=True)
    with admin_connect(clean_db, "events") as blocker:
        with blocker.transaction():
            blocker.execute(
                "SELECT 1 FROM events.calendar_entries WHERE id = %s FOR UPDATE",
                (shop.entry_id,),
            )
            hold = asyncio.create_task(client.call(events_contract.hold_for_order, late_hold))
            assert await eventually(lambda: lock_waiters(clean_db, "events") == 1)
            given = asyncio.create_task(client.call(events_contract.release_for_order, give_back))
            # The give-back either finishes at once (nothing serialises it with the hold) or
            # waits for the hold's transaction.
            await eventually(lambda: given.done() or lock_waiters(clean_db, "events") == 2)
        held = await hold
        ended = await given
    assert held.held == 1
    assert ended.ended == 1
    assert booking_hold(clean_db, shop.entry_id) == before
    for browser in (cart, events):
        await browser.aclose()


class CommitAnswerLost:
    """Orders as cart reaches it, except that the first create-order's commit fails: with
    ``applied``, PostgreSQL committed and the answer was then lost (the request's session
    commits, then raises: a stand-in for a connection lost after COMMIT reached the database,
    or a cancellation while awaiting its answer); without, the commit raises before it reached
    the database (the transaction still open on its connection)."""

    def __init__(self, app, action, maker, *, applied: bool) -> None:
        self.app = app
        self.path = action.path
        self.maker = maker
        self.applied = applied
        self.lost = 1

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == self.path and self.lost > 0:
            self.lost -= 1
            session = self.maker()
            commit = session.commit

            async def commit_then_lose_the_answer() -> None:
                if self.applied:
                    await commit()
                raise ConnectionResetError("the answer to COMMIT was lost")

            session.commit = commit_then_lose_the_answer
            # The session the request's handler gets (apps.common.db.request_session).
            scope.setdefault("state", {})[REQUEST_SESSION_KEY] = session
        await self.app(scope, receive, send)


def given_back_of(server, order_id: int) -> tuple[int, int]:
    """Give-backs of the order's holds orders queued, and whether events recorded the order
    as given back (and refuses any later hold for it)."""
    with admin_connect(server, "orders") as connection:
        queued = connection.execute(
            "SELECT count(*) FROM orders.outbox WHERE idempotency_key = %s",
            (give_back_holds_key(order_id),),
        ).fetchone()[0]
    with admin_connect(server, "events") as connection:
        recorded = connection.execute(
            "SELECT count(*) FROM events.given_back_orders WHERE order_id = %s", (order_id,)
        ).fetchone()[0]
    return queued, recorded


async def test_a_checkout_whose_commit_answer_was_lost_keeps_its_bookings_for_the_order(
    stack, clean_db, shop, sandbox
):
    """Review s21 LOW-2: create-order gave the bookings' holds back on any failure after
    asking events to hold them, one raised by the commit included, though PostgreSQL had
    committed the order (the answer to COMMIT lost). Events then recorded the order as given
    back and refused every later hold for it, so the buyer's retry (the same cart and key,
    which replays the payable order and holds its bookings again) was a 409 until the order's
    payable time passed. A failure at the commit now asks the database whether the order
    exists, and gives back only when it does not."""
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200

    client = platform_of(stack.apps["cart"]).client
    orders_app = stack.apps["orders"]
    client.route(
        "orders",
        CommitAnswerLost(
            orders_app,
            orders_contract.create_order,
            platform_of(orders_app).sessionmaker,
            applied=True,
        ),
    )
    try:
        failed = await cart.post("/checkout/")
    finally:
        client.route("orders", orders_app)
    assert failed.status_code >= 500, failed.text
    [order_id] = orders_of(clean_db)
    assert orders_of(clean_db)[order_id][0] == "pending"
    assert given_back_of(clean_db, order_id) == (0, 0)
    assert booking_held_for(clean_db, shop.entry_id, order_id), booking_hold(
        clean_db, shop.entry_id
    )

    again = await cart.post("/checkout/")
    assert again.status_code == 200, again.text
    assert again.json()["order_id"] == order_id
    assert booking_held_for(clean_db, shop.entry_id, order_id), booking_hold(
        clean_db, shop.entry_id
    )
    assert given_back_of(clean_db, order_id) == (0, 0)
    for browser in (cart, events):
        await browser.aclose()


async def test_a_checkout_whose_commit_failed_before_the_database_gives_its_bookings_back(
    stack, clean_db, shop, sandbox
):
    """The other side of the test above: the commit failed before PostgreSQL committed the
    order (its transaction still open on the request's connection). The database says there
    is no order: its bookings are given back to the cart as they were, and checking out again
    makes the order."""
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    before = booking_hold(clean_db, shop.entry_id)

    client = platform_of(stack.apps["cart"]).client
    orders_app = stack.apps["orders"]
    client.route(
        "orders",
        CommitAnswerLost(
            orders_app,
            orders_contract.create_order,
            platform_of(orders_app).sessionmaker,
            applied=False,
        ),
    )
    try:
        failed = await cart.post("/checkout/")
    finally:
        client.route("orders", orders_app)
    assert failed.status_code >= 500, failed.text
    assert orders_of(clean_db) == {}
    assert booking_hold(clean_db, shop.entry_id) == before
    # The order's id was drawn though the order never was: it is given back.
    with admin_connect(clean_db, "events") as connection:
        [(never_made,)] = connection.execute(
            "SELECT order_id FROM events.given_back_orders"
        ).fetchall()
    assert given_back_of(clean_db, never_made) == (1, 1)

    again = await cart.post("/checkout/")
    assert again.status_code == 200, again.text
    order_id = again.json()["order_id"]
    assert orders_of(clean_db)[order_id][0] == "pending"
    assert booking_held_for(clean_db, shop.entry_id, order_id)
    for browser in (cart, events):
        await browser.aclose()


async def _hold(client, order_id: int, entry_id: int, until) -> int:
    held = await client.call(
        events_contract.hold_for_order,
        events_contract.HoldForOrder(
            order_id=order_id, until=until, entry_ids=[entry_id], user_id=3
        ),
    )
    return held.held


async def _give_back(client, order_id: int) -> int:
    given = await client.call(
        events_contract.release_for_order,
        events_contract.ReleaseForOrder(order_id=order_id, rolled_back=True),
    )
    return given.ended


async def _expire(client, order_id: int) -> int:
    """The order's release as its expiry sends it (not rolled back)."""
    released = await client.call(
        events_contract.release_for_order, events_contract.ReleaseForOrder(order_id=order_id)
    )
    return released.ended


@pytest.mark.parametrize("cart_hold", ["running", "run out"])
async def test_an_expired_orders_booking_goes_back_to_its_cart_hold_while_that_runs(
    stack, clean_db, shop, sandbox, cart_hold
):
    """Audit s21b B1: with ORDERS_PAYABLE_SECONDS below EVENTS_HOLD_SECONDS, an order expired
    while the cart's own hold of its booking still ran, and its release ended the booking's
    hold at once: the booking left the cart minutes early, though the cart "still holds its
    goods". The release now puts a booking whose cart hold still runs back on it (in the
    cart, no order's); one whose cart hold ran out ends now, as before."""
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    before = booking_hold(clean_db, shop.entry_id)
    assert before[:3] == ("pending", None, None), before
    client = platform_of(stack.apps["orders"]).client
    order_id = 987_901
    assert await _hold(client, order_id, shop.entry_id, before[3] + timedelta(minutes=45)) == 1
    if cart_hold == "run out":
        with admin_connect(clean_db, "events") as admin:
            admin.execute(
                "UPDATE events.calendar_entries SET cart_hold_expires_at = now() - interval "
                "'1 minute' WHERE id = %s",
                (shop.entry_id,),
            )

    assert await _expire(client, order_id) == 1
    assert not booking_held_for(clean_db, shop.entry_id, order_id)
    if cart_hold == "running":
        assert booking_hold(clean_db, shop.entry_id) == before
        assert await sweep_ended_holds_now(stack) == 0
        assert (await cart.get("/api/cart")).json()["count"] == 1
    else:
        with admin_connect(clean_db, "events") as admin:
            ended = admin.execute(
                "SELECT hold_expires_at <= now() FROM events.calendar_entries WHERE id = %s",
                (shop.entry_id,),
            ).fetchone()
        assert ended == (True,)
        assert await sweep_ended_holds_now(stack) == 1
        assert booking_hold(clean_db, shop.entry_id)[0] == "open"
    # A replay of the release changes nothing.
    settled = booking_hold(clean_db, shop.entry_id)
    assert await _expire(client, order_id) == 0
    assert booking_hold(clean_db, shop.entry_id) == settled
    for browser in (cart, events):
        await browser.aclose()


@pytest.mark.parametrize("first_given_back", ["older", "newer"])
async def test_two_failed_checkouts_in_a_row_give_the_booking_back_to_the_cart(
    stack, clean_db, shop, sandbox, first_given_back
):
    """Audit s21 F1: two checkouts failed in a row after events held the booking, the first
    one's give-back still queued (events was down) when the second held it. The second held it
    over the first's hold, and remembered only that; its give-back put it back on the first's
    hold (an order that never existed, for an hour), and the first's give-back then found no
    hold before it and ended the hold at once: the booking left the cart. Events now keeps the
    cart's own hold while orders hold a booking, and a give-back goes back past orders that were
    given back: whichever give-back arrives first, the booking ends on the cart's hold."""
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    before = booking_hold(clean_db, shop.entry_id)
    assert before[:3] == ("pending", None, None), before
    client = platform_of(stack.apps["orders"]).client
    older, newer = 987_701, 987_702
    until = before[3] + timedelta(minutes=45)
    assert await _hold(client, older, shop.entry_id, until) == 1
    assert await _hold(client, newer, shop.entry_id, until) == 1
    order = (older, newer) if first_given_back == "older" else (newer, older)
    for order_id in order:
        await _give_back(client, order_id)
    assert booking_hold(clean_db, shop.entry_id) == before
    for browser in (cart, events):
        await browser.aclose()


class PausedCall:
    """A method of an object as its service calls it, but each call waits (``reached`` is set)
    until ``go`` is set, then goes on to the real thing (here, the real SumUp sandbox)."""

    def __init__(self, method) -> None:
        self.method = method
        self.reached = asyncio.Event()
        self.go = asyncio.Event()

    async def __call__(self, *args, **kwargs):
        self.reached.set()
        await self.go.wait()
        return await self.method(*args, **kwargs)


async def test_a_replay_that_makes_a_new_order_lets_go_of_the_old_orders_row(
    stack, clean_db, shop, sandbox, monkeypatch
):
    """Audit s20c LOW 3: the replay of a checkout with a booking share-locks its order's row
    (F5, above); when that order turned out dead and the same transaction made a new order,
    the lock stayed until the new order committed, after its SumUp call. A payment webhook
    for the old order (its old tab, paid late: the money goes back) locks that row FOR
    UPDATE, so it waited on the new order's SumUp call, and answered 503 once its lock
    timeout ran out (SumUp delivering again later). It is answered while the new order is
    still being made."""
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    line = (await cart.post(f"/add/{shop.product_ids[0]}/")).json()
    one = (await cart.post("/checkout/")).json()
    sandbox.controls(deactivation_unavailable=True)  # the first order's tab stays open
    await cart.post(f"/item/{line['id']}/quantity/", data={"quantity": "2"})
    two = (await cart.post("/checkout/")).json()
    await stack.apps["orders"].state.reconciler.quiet()  # its try to close the old tab is over
    assert orders_of(clean_db)[one["order_id"]][0] == "superseded"
    await cart.post(f"/item/{line['id']}/quantity/", data={"quantity": "1"})
    old_tab = checkout_id_of(clean_db, one["order_id"])

    gateway = stack.apps["orders"].state.runtime.gateway
    creating = PausedCall(gateway.create_checkout)
    monkeypatch.setattr(gateway, "create_checkout", creating)
    try:
        # The cart as it was: the replay of the first order's checkout, which is dead, so a
        # new order is made; it waits for its SumUp checkout.
        replay = asyncio.ensure_future(cart.post("/checkout/"))
        await asyncio.wait_for(creating.reached.wait(), timeout=10)
        sandbox.pay(old_tab)
        late = asyncio.ensure_future(webhook(stack, one["order_id"], old_tab))
        settled = await eventually(lambda: late.done() or lock_waiters(clean_db, "orders") > 0)
        answered_meanwhile, waiting = late.done(), lock_waiters(clean_db, "orders")
        creating.go.set()
        answered = await replay
        delivered = await late
    finally:
        creating.go.set()
        sandbox.controls(deactivation_unavailable=False)
    assert settled
    assert answered_meanwhile, f"the webhook waited on a lock ({waiting} waiting)"
    assert waiting == 0
    assert delivered.status_code == 204, delivered.text

    assert answered.status_code == 200, answered.text
    new = answered.json()
    assert new["order_id"] not in (one["order_id"], two["order_id"])
    orders = orders_of(clean_db)
    assert orders[new["order_id"]][0] == "pending"
    assert orders[two["order_id"]][0] == "superseded"
    assert orders[one["order_id"]][0] in ("refund_due", "refunded")  # the late payment goes back
    assert checkout_of(sandbox, new)["status"] == "PENDING"
    held_until = payable_until_of(clean_db, new["order_id"]) + HOLD_AFTER_PAYABLE
    assert booking_hold(clean_db, shop.entry_id) == ("pending", None, new["order_id"], held_until)
    for browser in (cart, events):
        await browser.aclose()


# -- another buyer's checkout of a booking an order still claims (audit s21 F3) ----------------


async def order_that_let_its_booking_go(stack, shop) -> tuple[dict, object]:
    """Buyer 1 (user 3) checks out a product and the tour, then takes the tour out of the cart
    while the order waits: the entry is open again, the order still claims it. Their order
    (the create answer) and their browser on orders."""
    cart = await browser_of(stack, "cart", user_id=3)
    events, orders = stack.browser("events"), stack.browser("orders")
    share_cookies(cart, events, orders)
    await cart.post(f"/add/{shop.product_ids[0]}/")
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    first = await cart.post("/checkout/")
    assert first.status_code == 200, first.text
    removed = await cart.post(f"/booking/entry/{shop.entry_id}/delete/")
    assert removed.status_code == 200, removed.text
    return first.json(), orders


async def test_another_buyers_checkout_of_a_booking_i_let_go_leaves_my_order_payable(
    stack, clean_db, shop, sandbox
):
    """Audit s21 F3: buyer 2 booked the tour buyer 1 had taken out of the cart while buyer 1's
    order waited, and checked it out: buyer 1's order was superseded (its SumUp checkout
    closed) and its page said "Replaced when you checked out again ... pay order #N instead",
    N being buyer 2's order. A new order supersedes only its own buyer's orders; which order
    gets the tour is events' to say when one is paid, and the other gives its price back."""
    first, orders = await order_that_let_its_booking_go(stack, shop)
    mine = first["order_id"]
    theirs = await book_and_check_out(stack, shop.entry_id, user_id=4)
    assert theirs.status_code == 200, theirs.text
    other = theirs.json()["order_id"]

    assert orders_of(clean_db)[mine][0] == "pending"
    assert orders_of(clean_db)[other] == ("pending", Decimal("7.50"))
    await stack.apps["orders"].state.reconciler.quiet()  # a superseded order's closing is done
    assert checkout_of(sandbox, first)["status"] == "PENDING"
    answer = (await orders.get(f"/api/orders/{mine}")).json()
    assert (answer["status"], answer["superseded_by"], answer["latest_checkout_id"]) == (
        "pending",
        None,
        None,
    )
    page = await orders.get(f"/order/{mine}/", headers=HTML)
    assert page.status_code == 200, page.text
    assert "Replaced" not in page.text
    assert f"order #{other}" not in page.text
    assert f"/order/{other}/" not in page.text

    # Buyer 1 pays their order: the tour is held for buyer 2's, so events does not confirm it
    # for buyer 1's, whose 7.50 goes back; buyer 2's order then pays for it and gets it.
    await pay_on_the_hosted_page(stack, sandbox, clean_db, mine)
    assert orders_of(clean_db)[mine][0] == "paid"
    refunded = [(Decimal("7.50"), "done")]
    assert await eventually(lambda: refunds_of(clean_db, mine) == refunded), refunds_of(
        clean_db, mine
    )
    assert booking_claims_of(clean_db, mine) == []
    assert booking_hold(clean_db, shop.entry_id)[:3] == ("pending", None, other)
    await pay_on_the_hosted_page(stack, sandbox, clean_db, other)
    assert await eventually(
        lambda: booking_hold(clean_db, shop.entry_id)[:2] == ("confirmed", other)
    ), booking_hold(clean_db, shop.entry_id)
    await stack.apps["orders"].state.reconciler.quiet()
    assert refunds_of(clean_db, other) == []


async def test_my_paid_orders_stale_claim_does_not_refuse_another_buyers_checkout(
    stack, clean_db, shop, sandbox
):
    """Audit s21 F3, second face: buyer 1 paid the order whose tour they had taken out of the
    cart, and buyer 2 booked it; while events' confirmation of buyer 1's order was on its way,
    buyer 2's checkout was refused "These goods are already paid for in order N" (buyer 1's
    order). Events confirms the tour for neither paid order that does not hold it: buyer 2's
    checkout goes on, and buyer 1's order gives its price back."""
    first, _ = await order_that_let_its_booking_go(stack, shop)
    mine = first["order_id"]
    cart = await browser_of(stack, "cart", user_id=4)
    events = stack.browser("events")
    share_cookies(cart, events)
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    with confirmation_held(clean_db, mine):
        await pay_on_the_hosted_page(stack, sandbox, clean_db, mine)
        assert orders_of(clean_db)[mine][0] == "paid"
        assert booking_claims_of(clean_db, mine) == [("calendar_entry", shop.entry_id)]
        theirs = await cart.post("/checkout/")
    assert theirs.status_code == 200, theirs.text
    other = theirs.json()["order_id"]
    assert other != mine
    assert orders_of(clean_db)[other] == ("pending", Decimal("7.50"))
    refunded = [(Decimal("7.50"), "done")]
    assert await eventually(lambda: refunds_of(clean_db, mine) == refunded), refunds_of(
        clean_db, mine
    )
    assert booking_hold(clean_db, shop.entry_id)[:3] == ("pending", None, other)
    await pay_on_the_hosted_page(stack, sandbox, clean_db, other)
    assert await eventually(
        lambda: booking_hold(clean_db, shop.entry_id)[:2] == ("confirmed", other)
    ), booking_hold(clean_db, shop.entry_id)


async def test_my_own_checkout_of_a_booking_i_booked_again_still_supersedes_my_order(
    stack, clean_db, shop, sandbox
):
    """The same buyer as before audit s21 F3's fix: the tour taken out of the cart and booked
    again, and the cart changed, the new order replaces the one that still claims the tour."""
    first, orders = await order_that_let_its_booking_go(stack, shop)
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    await cart.post(f"/add/{shop.product_ids[1]}/")
    again = await cart.post("/checkout/")
    assert again.status_code == 200, again.text
    new = again.json()["order_id"]
    answer = (await orders.get(f"/api/orders/{first['order_id']}")).json()
    assert (answer["status"], answer["superseded_by"]) == ("superseded", new)
    assert booking_hold(clean_db, shop.entry_id)[:3] == ("pending", None, new)


# -- a superseded order's bookings (audit s21 F2) -----------------------------------------------


def given_back_undelivered(server) -> int:
    """Outbox messages of orders to events not delivered yet (a superseded order's give-back
    among them)."""
    with admin_connect(server, "orders") as connection:
        return connection.execute(
            "SELECT count(*) FROM orders.outbox WHERE delivered_at IS NULL"
        ).fetchone()[0]


async def test_a_superseded_orders_booking_goes_back_to_its_cart_hold(
    stack, clean_db, shop, sandbox
):
    """Audit s21 F2: a checkout of the whole cart (a product of page 2, the tour of page 1),
    then of page 2's goods only: the new order superseded the first, but the tour stayed held
    for the first, which can no longer be paid, until its payable time and 30 minutes more
    (about an hour, against the cart's 15 minutes). It goes back to the cart's hold it had
    before: the buyer's still, in the cart, until the cart's expiry, and no order's."""
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    await cart.post(f"/add/{shop.product_ids[1]}/")  # market-hall, page 2
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    in_the_cart = booking_hold(clean_db, shop.entry_id)
    assert in_the_cart[:3] == ("pending", None, None), in_the_cart
    whole = (await cart.post("/checkout/")).json()["order_id"]
    assert booking_hold(clean_db, shop.entry_id)[2] == whole

    page = await cart.post("/page/market-hall/checkout/")
    assert page.status_code == 200, page.text
    assert orders_of(clean_db)[whole][0] == "superseded"
    assert await eventually(lambda: given_back_undelivered(clean_db) == 0)
    assert booking_hold(clean_db, shop.entry_id) == in_the_cart
    assert await sweep_ended_holds_now(stack) == 0  # still held: in the cart
    listed = (await cart.get("/api/cart")).json()
    assert listed["count"] == 2, listed

    # Its page's checkout holds it for a new order, as any booking in the cart.
    tour = await cart.post("/page/farm-shop/checkout/")
    assert tour.status_code == 200, tour.text
    tour_order = tour.json()["order_id"]
    held_until = payable_until_of(clean_db, tour_order) + HOLD_AFTER_PAYABLE
    assert booking_hold(clean_db, shop.entry_id) == ("pending", None, tour_order, held_until)
    for browser in (cart, events):
        await browser.aclose()


async def test_a_booking_the_superseding_order_holds_stays_held_for_it(
    stack, clean_db, shop, sandbox
):
    """The superseded order's give-back leaves alone what the new order took over: the tour in
    both orders stays held for the new one, until its payable time and 30 minutes more."""
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    first = (await cart.post("/checkout/")).json()["order_id"]
    await cart.post(f"/add/{shop.product_ids[0]}/")
    again = await cart.post("/checkout/")
    assert again.status_code == 200, again.text
    new = again.json()["order_id"]
    assert orders_of(clean_db)[first][0] == "superseded"
    assert await eventually(lambda: given_back_undelivered(clean_db) == 0)
    held_until = payable_until_of(clean_db, new) + HOLD_AFTER_PAYABLE
    assert booking_hold(clean_db, shop.entry_id) == ("pending", None, new, held_until)
    for browser in (cart, events):
        await browser.aclose()


async def test_an_order_sign_in_supersedes_gives_its_booking_back_to_the_cart_hold(
    stack, clean_db, shop, sandbox
):
    """Audit s21 F2, at sign-in: the anonymous order (a product and the tour) is adopted by an
    account with a newer order for the same product, which supersedes it; the tour stayed
    held for the superseded order. It goes back to the cart's hold, now the account's."""
    cart = await browser_of(stack, "cart")
    events, market = stack.browser("events"), stack.browser("market")
    share_cookies(cart, events, market)
    await cart.post(f"/add/{shop.product_ids[1]}/")
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    in_the_cart = booking_hold(clean_db, shop.entry_id)
    anonymous = (await cart.post("/checkout/")).json()["order_id"]
    assert booking_hold(clean_db, shop.entry_id)[2] == anonymous
    elsewhere = await browser_of(stack, "cart", user_id=12)
    await elsewhere.post(f"/add/{shop.product_ids[1]}/")
    newer = (await elsewhere.post("/checkout/")).json()["order_id"]
    assert orders_of(clean_db)[anonymous][0] == "pending"

    signed = await market.get("/auth/dev-login?user_id=12")
    assert signed.status_code == 200, signed.text
    with admin_connect(clean_db, "orders") as connection:
        adopted = connection.execute(
            "SELECT user_id, status, superseded_by FROM orders.orders WHERE id = %s",
            (anonymous,),
        ).fetchone()
    assert adopted == (12, "superseded", newer)
    assert await eventually(lambda: given_back_undelivered(clean_db) == 0)
    assert booking_hold(clean_db, shop.entry_id) == in_the_cart
    with admin_connect(clean_db, "events") as connection:
        owner = connection.execute(
            "SELECT user_id FROM events.calendar_entries WHERE id = %s", (shop.entry_id,)
        ).fetchone()
    assert owner == (12,)
    for browser in (cart, events, market, elsewhere):
        await browser.aclose()


async def test_a_booking_given_back_after_its_cart_hold_ran_out_stays_in_the_cart(
    stack, clean_db, shop, sandbox
):
    """Review s21 MEDIUM-1: a give-back put the booking back on the cart's hold as it was when
    the order took it (booking time and 15 minutes). When that had run out meanwhile (a
    superseded order given back 20 minutes later, a checkout that failed slowly), the hold
    ended at once and the booking left the cart, where the order's hold had kept it. A
    booking given back is now held a while from then (no longer than the order held it)."""
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    before = booking_hold(clean_db, shop.entry_id)
    client = platform_of(stack.apps["orders"]).client
    order_id = 987_801
    until = before[3] + timedelta(minutes=45)
    assert await _hold(client, order_id, shop.entry_id, until) == 1
    with admin_connect(clean_db, "events") as admin:
        # The cart's hold ran out while the order held the booking.
        admin.execute(
            "UPDATE events.calendar_entries SET cart_hold_expires_at = now() - interval "
            "'1 minute' WHERE id = %s",
            (shop.entry_id,),
        )
        assert await _give_back(client, order_id) == 1
        state, _, held_for, held_until = booking_hold(clean_db, shop.entry_id)
        still_held = admin.execute(
            "SELECT hold_expires_at > now() + interval '10 minutes' "
            "FROM events.calendar_entries WHERE id = %s",
            (shop.entry_id,),
        ).fetchone()
    assert (state, held_for) == ("pending", None)
    assert still_held == (True,)
    assert held_until <= until
    for browser in (cart, events):
        await browser.aclose()


async def test_a_give_back_never_returns_a_booking_to_an_order_that_expired_meanwhile(
    stack, clean_db, shop, sandbox
):
    """Found by reading (s22): order A holds the booking; the buyer checks out again, order B's
    hold takes it over (the hold before it: A's); A expires, and its release finds nothing held
    for A; B's checkout then fails and its give-back returned the booking to A's hold, an order
    nobody can pay, for up to HOLD_AFTER_PAYABLE past its payable time, blocking every other
    buyer. An expired order is let go of for good now: a give-back after it skips its hold, and
    the booking goes back to the buyer's cart."""
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    before = booking_hold(clean_db, shop.entry_id)
    client = platform_of(stack.apps["orders"]).client
    order_a, order_b = 987_700, 987_701
    for order_id in (order_a, order_b):
        held = await client.call(
            events_contract.hold_for_order,
            events_contract.HoldForOrder(
                order_id=order_id,
                until=before[3] + timedelta(minutes=30),
                entry_ids=[shop.entry_id],
                user_id=3,
            ),
        )
        assert held.held == 1
    assert booking_held_for(clean_db, shop.entry_id, order_b)
    expired = await client.call(
        events_contract.release_for_order, events_contract.ReleaseForOrder(order_id=order_a)
    )
    assert expired.ended == 0  # held for B, not A, at that moment
    await client.call(
        events_contract.release_for_order,
        events_contract.ReleaseForOrder(order_id=order_b, rolled_back=True),
    )
    state, confirmed, held_for, until = booking_hold(clean_db, shop.entry_id)
    assert (state, confirmed, held_for) == ("pending", None, None)
    assert until == before[3]  # the cart's own hold, as it was
    for browser in (cart, events):
        await browser.aclose()


async def test_a_booking_removal_events_did_not_answer_says_what_the_buyer_can_do(
    stack, clean_db, shop
):
    """Probe (2026-12-06): events released the booking but its answer never came (every
    attempt); the buyer read "events release-booking: timed out", which says nothing of the
    booking, though it was gone. Now the problem says the removal was not confirmed, that the
    cart shows what it holds, and that removing it again is safe; and while events is down,
    that nothing was removed. The page the browser gets says the same."""
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200

    client = platform_of(stack.apps["cart"]).client
    client.route("events", AnswersLost(stack.apps["events"], "release-booking", lost=3))
    try:
        lost = await cart.post(f"/booking/entry/{shop.entry_id}/delete/")
    finally:
        client.route("events", stack.apps["events"])
    assert lost.status_code == 503, lost.text
    problem = lost.json()
    assert problem["title"] == "Removal not confirmed", problem
    assert "your cart shows" in problem["detail"].lower(), problem
    assert "again is safe" in problem["detail"], problem
    assert "release-booking" not in problem["detail"], problem
    # It was released: the cart says so, and removing again is the 404 of a booking not there.
    assert (await cart.get("/api/cart")).json()["count"] == 0
    again = await cart.post(f"/booking/entry/{shop.entry_id}/delete/")
    assert again.status_code == 404, again.text

    assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
    client.route("events", ServiceDown("events"))
    try:
        down = await cart.post(f"/booking/entry/{shop.entry_id}/delete/")
        page = await cart.post(f"/booking/entry/{shop.entry_id}/delete/", headers=HTML)
    finally:
        client.route("events", stack.apps["events"])
    assert down.status_code == 503, down.text
    assert down.json()["title"] == "Booking not removed", down.json()
    assert "cannot be reached" in down.json()["detail"], down.json()
    assert page.status_code == 503
    assert page.headers["content-type"].startswith("text/html")
    assert "Booking not removed" in page.text
    assert (await cart.get("/api/cart")).json()["count"] == 1
    for browser in (cart, events):
        await browser.aclose()


async def test_a_booking_removal_answered_by_a_500_a_504_or_an_unreadable_body_is_not_confirmed(
    stack, clean_db, shop
):
    """Probe (2026-12-06): events released the booking, then answered a 500 (its answer lost
    after the commit), a gateway's 504, or a 2xx whose body is not its contract's. The buyer
    read "Your booking could not be removed (events release-booking: answered 500: ...)", or
    for the 504 "Booking not removed ... cannot be reached", though it was gone each time. Now
    each is "Removal not confirmed", in the buyer's words."""
    cart = await browser_of(stack, "cart", user_id=3)
    events = stack.browser("events")
    share_cookies(cart, events)
    client = platform_of(stack.apps["cart"]).client
    for status, body in [(500, None), (504, None), (200, {"released": "perhaps"})]:
        assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
        assert (await cart.get("/api/cart")).json()["count"] == 1
        client.route(
            "events", AnswerReplaced(stack.apps["events"], "release-booking", status, body)
        )
        try:
            answer = await cart.post(f"/booking/entry/{shop.entry_id}/delete/")
        finally:
            client.route("events", stack.apps["events"])
        assert answer.status_code == 503, (status, answer.text)
        problem = answer.json()
        assert problem["title"] == "Removal not confirmed", (status, problem)
        assert "release-booking" not in problem["detail"], (status, problem)
        # It was released: the cart says so.
        assert (await cart.get("/api/cart")).json()["count"] == 0, status
    for browser in (cart, events):
        await browser.aclose()


async def test_a_new_order_sumup_refused_is_not_logged_as_superseding(
    stack, clean_db, shop, sandbox, caplog
):
    """The log said 'order N supersedes [M]' before the commit: an order rolled back (SumUp
    down, its process killed) left that line, naming an order that never existed and an order
    still pending (seen in a load run: 'order 56 supersedes [4]', order 56 nowhere)."""
    caplog.set_level("INFO", logger="rose.orders")
    cart = await browser_of(stack, "cart", user_id=3)
    await cart.post(f"/add/{shop.product_ids[0]}/")
    first = (await cart.post("/checkout/")).json()
    await cart.post(f"/add/{shop.product_ids[1]}/")  # another cart: a new order

    sandbox.controls(api_unavailable=True)
    try:
        refused = await cart.post("/checkout/")
    finally:
        sandbox.controls(api_unavailable=False)
    assert refused.status_code == 503, refused.text
    assert orders_of(clean_db)[first["order_id"]][0] == "pending"
    said = [r.getMessage() for r in caplog.records if "supersedes" in r.getMessage()]
    assert said == [], said

    made = (await cart.post("/checkout/")).json()
    assert orders_of(clean_db)[first["order_id"]][0] == "superseded"
    said = [r.getMessage() for r in caplog.records if "supersedes" in r.getMessage()]
    assert said == [f"order {made['order_id']} supersedes [{first['order_id']}]"], said


async def test_events_not_answering_a_hold_is_said_to_the_buyer_within_the_carts_wait(
    clean_db, credentials, sandbox, shop
):
    """probe_oncall: with events hung (up, not answering), orders asked it to hold the bookings
    with ORDERS_EVENTS_TIMEOUT (3 s) per attempt, three attempts: 11.6 s, past cart's 10 s.
    The buyer was told "We could not confirm your checkout within 10 seconds. If your order was
    made, it is in your orders", not that events could not be reached and the cart is as it
    was. ORDERS_EVENTS_TIMEOUT is the whole wait, as the README and the start-up budget say."""
    async with shop_stack(
        clean_db, credentials, sandbox.server, ORDERS_EVENTS_TIMEOUT="1"
    ) as stack:
        cart = await browser_of(stack, "cart", user_id=3)
        events = stack.browser("events")
        share_cookies(cart, events)
        assert (await events.post(f"/entries/{shop.entry_id}/book/")).status_code == 200
        client = platform_of(stack.apps["orders"]).client
        holds = KeptWaiting(stack.apps["events"], events_contract.hold_for_order)
        client.route("events", holds)
        try:
            answered = await cart.post("/checkout/")
        finally:
            holds.go.set()
            client.route("events", stack.apps["events"])
        assert answered.status_code == 503, answered.text
        problem = answered.json()
        assert problem["title"] == "Checkout failed", problem
        assert problem["service"] == "events", problem
        assert "events cannot be reached" in problem["detail"], problem
        assert "Your cart has not changed" in problem["detail"], problem
        assert orders_of(clean_db) == {}
        # The hold that reached events after orders gave up holds nothing: the booking is on
        # the cart's own hold, as before the checkout.
        await stack.apps["orders"].state.reconciler.quiet()
        assert await eventually(
            lambda: booking_hold(clean_db, shop.entry_id)[:3] == ("pending", None, None)
        ), booking_hold(clean_db, shop.entry_id)
