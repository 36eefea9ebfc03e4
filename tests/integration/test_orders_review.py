"""Ending a flagged order's review (`rose orders end-review`, orders' end-review action): the
order is settled from what SumUp says now. Before, a flagged order had no way out but SQL by
hand: pending for ever, its goods refused to every new order, passed by reconciliation, listed
by `rose orders attention` for ever."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal

import pytest

from apps.orders import service
from apps.sumup_sandbox.app import DEFAULT_API_KEY, DEFAULT_MERCHANT_CODE
from ops.cli.calls import review_ended_lines
from tests.conftest import admin_connect, lock_waiters
from tests.integration.orders_fixtures import (
    add_page_config,
    attempt_rows,
    checkout_id_of,
    create,
    held_bookings,
    order_payload,
    orders_stack,
    product_line,
    webhook,
)
from tests.signed import internal_get, internal_post
from tests.waiting import eventually

JSON = {"accept": "application/json"}


@pytest.fixture
async def orders(clean_db, credentials, sandbox):
    add_page_config(clean_db, "site", 0)
    async with orders_stack(clean_db, credentials, sandbox.server) as running:
        yield running


def order_state(server, order_id: int) -> tuple:
    """(status, flagged, flag_reason)."""
    with admin_connect(server, "orders") as connection:
        return connection.execute(
            "SELECT status, flagged, flag_reason FROM orders.orders WHERE id = %s",
            (order_id,),
        ).fetchone()


def refunds(server) -> list[tuple]:
    with admin_connect(server, "orders") as connection:
        return connection.execute(
            "SELECT order_id, reason_key LIKE 'review:%%', amount, currency, status "
            "FROM orders.refunds ORDER BY id"
        ).fetchall()


def flag(server, order_id: int) -> None:
    with admin_connect(server, "orders") as connection:
        connection.execute(
            "UPDATE orders.orders SET flagged = true, flag_reason = 'amount differs' WHERE id = %s",
            (order_id,),
        )


async def end_review(orders, order_id: int, paid_with: str | None = None):
    body: dict = {"order_id": order_id}
    if paid_with is not None:
        body["paid_with"] = paid_with
    return await internal_post(orders.client("orders"), "end-review", body)


async def attention(orders) -> list[int]:
    listed = await internal_get(orders.client("orders"), "attention")
    return [row["order_id"] for row in listed.json()["orders"]]


async def test_a_flagged_payment_goes_back_as_sumup_took_it(orders, clean_db, sandbox):
    """SumUp took 1.00 for a 10.00 order (the flag's case): ending the review gives back the
    1.00 SumUp took, through the refunds' own path, and frees the goods; the same report
    again flags the order no more."""
    order_id = (await create(orders)).json()["order_id"]
    checkout_id = checkout_id_of(clean_db, order_id)
    sandbox.pay(checkout_id, amount_override=1.00)
    assert (await webhook(orders, order_id, checkout_id)).status_code == 204
    assert order_state(clean_db, order_id)[:2] == ("pending", True)
    assert (await create(orders)).status_code == 409  # its goods: under review
    assert await attention(orders) == [order_id]

    ended = await end_review(orders, order_id)
    assert ended.status_code == 200, ended.text
    assert ended.json() == {
        "order_id": order_id,
        "status": "refund_due",
        "closed_checkouts": [],
        "refunds": [{"checkout_id": checkout_id, "amount": "1.00", "currency": "EUR"}],
        "releasing_bookings": False,
        "kept_payment": None,
        "kept_unchecked": None,
        "still_going_back": [],
    }
    assert review_ended_lines(ended.json()) == [
        f"order {order_id}: review ended; it is refund_due now",
        f"  going back: 1.00 EUR of checkout {checkout_id} (orders asks SumUp now; "
        "`rose orders attention` lists it until it is done)",
    ]
    assert attempt_rows(clean_db, order_id) == [(1, "PAID")]
    # The refund is asked for at once (not at the next reconciliation pass), of what SumUp took.
    assert await eventually(
        lambda: refunds(clean_db) == [(order_id, True, Decimal("1.00"), "EUR", "done")]
    )
    transaction = sandbox.checkout(checkout_id)["transaction_id"]
    events = sandbox.transaction(transaction)["events"]
    assert [event["amount"] for event in events if event["type"] == "REFUND"] == [1.0]
    assert order_state(clean_db, order_id) == (
        "refunded",
        False,
        f"SumUp reports 1.00 EUR for checkout {checkout_id}, the order is 10.00 EUR",
    )

    # SumUp delivers the same event again: nothing new, not flagged again.
    assert (await webhook(orders, order_id, checkout_id)).status_code == 204
    assert order_state(clean_db, order_id)[:2] == ("refunded", False)
    assert await attention(orders) == []
    assert (await create(orders)).status_code == 200  # its goods are free
    again = await end_review(orders, order_id)
    assert again.status_code == 409
    assert "not under review" in again.json()["detail"]


async def buyers_order_page(orders, order_id: int) -> str:
    """The order's page as its buyer (user 1, the payload's) sees it."""
    browser = orders.browser("orders")
    signed = await browser.get("/auth/dev-login?user_id=1", headers={"accept": "application/json"})
    assert signed.status_code == 200, signed.text
    page = await browser.get(f"/order/{order_id}/", headers={"accept": "text/html"})
    assert page.status_code == 200, page.text
    return page.text


async def test_the_buyer_is_told_a_review_ended_the_order_not_that_time_ran_out(
    orders, clean_db, sandbox
):
    """Probe (money): a pending order paid in time, but flagged (SumUp reported another
    amount, or a person flagged it), ends its review refunded or expired. Its page told the
    buyer "A payment arrived for this order after it could no longer be paid" (the buyer
    paid while it could be paid), or "The time to pay this order has passed" (minutes into
    its time to pay). It says now that the order was reviewed."""
    order_id = (await create(orders)).json()["order_id"]
    checkout_id = checkout_id_of(clean_db, order_id)
    sandbox.pay(checkout_id, amount_override=1.00)
    assert (await webhook(orders, order_id, checkout_id)).status_code == 204
    assert (await end_review(orders, order_id)).status_code == 200
    assert await eventually(lambda: order_state(clean_db, order_id)[0] == "refunded")
    page = await buyers_order_page(orders, order_id)
    assert "after it could no longer be paid" not in page
    assert "After a review of its payment, this order no longer stands" in page
    assert "has been refunded to you" in page

    unpaid = (await create(orders)).json()["order_id"]
    flag(clean_db, unpaid)
    assert (await end_review(orders, unpaid)).json()["status"] == "expired"
    page = await buyers_order_page(orders, unpaid)
    assert "The time to pay this order has passed" not in page
    assert "After a review, this order can no longer be paid" in page


async def test_an_order_that_expired_on_time_and_was_reviewed_after_says_its_time_ran_out(
    orders, clean_db
):
    """Carried note (closing30 review-1 L4): an order whose time to pay passed (the pass expired
    it), flagged by a person after and then reviewed, kept its status, yet its page said "After
    a review, this order can no longer be paid": the review ended nothing. It says its time to
    pay passed; an order the review expired still says the review did."""
    order_id = (await create(orders)).json()["order_id"]
    with admin_connect(clean_db, "orders") as connection:
        connection.execute(
            "UPDATE orders.orders SET payable_until = now() - interval '1 minute' WHERE id = %s",
            (order_id,),
        )
    await orders.apps["orders"].state.reconciler.run_once()
    assert order_state(clean_db, order_id)[:2] == ("expired", False)
    flag(clean_db, order_id)
    ended = await end_review(orders, order_id)
    assert ended.status_code == 200, ended.text
    assert ended.json()["status"] == "expired"
    page = await buyers_order_page(orders, order_id)
    assert "After a review" not in page
    assert "The time to pay this order has passed" in page
    # Probe upgrade2: orders cannot know what the cart still holds (a booking leaves it when
    # its hold ends, the buyer may have removed lines): the page said it held the goods.
    assert "still has its goods" not in page
    assert "What is still in your cart can be checked out again" in page


async def test_a_checkout_status_orders_does_not_know_is_waited_out_and_its_payment_counts(
    orders, clean_db, sandbox, caplog
):
    """Probe (money): SumUp's checkout status is an open type (the SDK's CheckoutStatus: its
    four and any other string). One orders does not know was written to the attempt as it
    was, which the database refuses (status_known): the webhook, the return page and every
    reconciliation pass answered 500 (a traceback each). Then (review M2) it flagged the
    order: a moment's unknown status (PROCESSING) kept the buyer's payment, made on time
    right after, from the order, and the review gave it back. Now an open checkout's unknown
    status is waited out as SumUp not answering: the webhook a 503 (SumUp sends it again),
    the return page still waiting, nothing written, nothing flagged; the payment counts."""
    order_id = (await create(orders)).json()["order_id"]
    checkout_id = checkout_id_of(clean_db, order_id)
    sandbox.controls(checkout_status_shown="PROCESSING")

    waited = await webhook(orders, order_id, checkout_id)
    assert waited.status_code == 503, waited.text
    assert waited.headers["retry-after"]
    assert f"SumUp reports checkout {checkout_id} PROCESSING" in waited.json()["detail"]
    assert order_state(clean_db, order_id) == ("pending", False, None)
    assert attempt_rows(clean_db, order_id) == [(1, "PENDING")]
    browser = orders.browser("orders")
    assert (await browser.get("/auth/dev-login?user_id=1", headers=JSON)).status_code == 200
    back = await browser.get(f"/checkout/return/{order_id}/", headers=JSON)
    assert back.status_code == 200, back.text
    assert back.json()["state"] == "waiting"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rose.orders"):
        await orders.apps["orders"].state.reconciler.run_once()
    assert order_state(clean_db, order_id) == ("pending", False, None)
    # Said as what it is (review-2: it was counted with SumUp's outages, under their words).
    [said] = [r.getMessage() for r in caplog.records if "left for the next" in r.getMessage()]
    assert f"checkout {checkout_id} PROCESSING" in said, said
    assert said.endswith(f"1 orders left for the next reconciliation pass: {order_id}"), said
    assert await attention(orders) == []

    sandbox.controls(checkout_status_shown=None)
    sandbox.pay(checkout_id)
    assert (await webhook(orders, order_id, checkout_id)).status_code == 204
    assert order_state(clean_db, order_id) == ("paid", False, None)
    assert refunds(clean_db) == []


async def test_a_checkout_in_a_status_orders_does_not_know_when_its_order_ends_is_for_a_person(
    orders, clean_db, sandbox
):
    """The order's time to pay is over while SumUp still reports its checkout in a status
    orders does not know: closing it, SumUp's answer cannot say whether it took the money, so
    the order is flagged for a person (not expired: a payment's goods would be let go), its
    attempt kept as it was, and its review refused (409, nothing changed) until SumUp reports
    a status orders knows."""
    order_id = (await create(orders)).json()["order_id"]
    checkout_id = checkout_id_of(clean_db, order_id)
    sandbox.controls(checkout_status_shown="CANCELLED")
    with admin_connect(clean_db, "orders") as connection:
        connection.execute(
            "UPDATE orders.orders SET payable_until = now() - interval '1 minute' WHERE id = %s",
            (order_id,),
        )
    await orders.apps["orders"].state.reconciler.run_once()
    status, flagged, reason = order_state(clean_db, order_id)
    assert (status, flagged) == ("pending", True)
    assert f"SumUp reports checkout {checkout_id} CANCELLED" in reason
    assert attempt_rows(clean_db, order_id) == [(1, "PENDING")]
    assert await attention(orders) == [order_id]

    refused = await end_review(orders, order_id)
    assert refused.status_code == 409, refused.text
    assert "CANCELLED" in refused.json()["detail"]
    assert order_state(clean_db, order_id)[:2] == ("pending", True)
    assert attempt_rows(clean_db, order_id) == [(1, "PENDING")]

    sandbox.controls(checkout_status_shown=None)
    ended = await end_review(orders, order_id)
    assert ended.status_code == 200, ended.text
    assert ended.json()["status"] == "expired"
    assert attempt_rows(clean_db, order_id) == [(1, "EXPIRED")]


async def test_an_unpaid_flagged_order_has_its_checkout_closed_and_expires(
    orders, clean_db, sandbox
):
    order_id = (await create(orders)).json()["order_id"]
    checkout_id = checkout_id_of(clean_db, order_id)
    flag(clean_db, order_id)

    ended = await end_review(orders, order_id)
    assert ended.status_code == 200, ended.text
    assert ended.json()["status"] == "expired"
    assert ended.json()["closed_checkouts"] == [checkout_id]
    assert ended.json()["refunds"] == []
    assert sandbox.checkout(checkout_id)["status"] == "EXPIRED"  # it can take no money now
    assert attempt_rows(clean_db, order_id) == [(1, "EXPIRED")]
    assert order_state(clean_db, order_id) == ("expired", False, "amount differs")
    assert refunds(clean_db) == []
    assert review_ended_lines(ended.json()) == [
        f"order {order_id}: review ended; it is expired now",
        f"  closed at SumUp: checkout {checkout_id}",
    ]
    # SumUp reports the closed checkout (its amount still the order's: nothing new either way).
    assert (await webhook(orders, order_id, checkout_id)).status_code == 204
    assert order_state(clean_db, order_id) == ("expired", False, "amount differs")
    assert await attention(orders) == []
    assert (await create(orders)).status_code == 200


async def test_what_a_review_cannot_settle_is_refused_and_left_as_it_was(orders, clean_db, sandbox):
    pending = (await create(orders)).json()["order_id"]
    not_flagged = await end_review(orders, pending)
    assert not_flagged.status_code == 409
    assert "not under review" in not_flagged.json()["detail"]

    missing = await end_review(orders, pending + 1000)
    assert missing.status_code == 404


async def test_a_review_whose_merchant_has_no_key_tells_the_person_what_to_do(
    clean_db, credentials, sandbox
):
    """Probe newuser: the site's SumUp key removed (none retired), ending a flagged order's
    review answered what a buyer is told, 503 "cannot be checked right now ... we will keep
    checking": nothing keeps checking a review, and a person is never told what puts it right.
    It is a 409 now with attention's line for it (restore the key), nothing changed."""
    add_page_config(clean_db, "site", 0)
    # Blog read every time: the key the webhook read is not used again.
    async with orders_stack(
        clean_db, credentials, sandbox.server, ORDERS_MERCHANT_ACCOUNT_SECONDS="0"
    ) as orders:
        await _key_gone_review(orders, clean_db, sandbox)


async def _key_gone_review(orders, clean_db, sandbox) -> None:
    order_id, _ = await paid_order(orders, clean_db, sandbox)
    flag(clean_db, order_id)
    with admin_connect(clean_db, "blog") as connection:
        connection.execute(
            "UPDATE blog.page_configs SET sumup_api_key = NULL "
            "WHERE container_type = 'site' AND container_id = 0"
        )
        connection.execute("DELETE FROM blog.retired_sumup_keys")  # blog kept it: gone too
    refused = await end_review(orders, order_id)
    assert refused.status_code == 409, refused.text
    detail = refused.json()["detail"]
    assert detail.startswith(
        f"order {order_id}: its SumUp merchant {DEFAULT_MERCHANT_CODE} has no key in page config"
    ), detail
    assert "restore the key" in detail, detail
    assert "end its review again" in detail, detail
    assert "we will keep checking" not in detail, detail
    assert refused.json()["order_id"] == order_id
    assert order_state(clean_db, order_id) == ("paid", True, "amount differs")


async def stray_checkout(
    clean_db, sandbox, order_id: int, amount: float, *, number: int = 2, recorded: bool = False
) -> str:
    """A second checkout of the order at SumUp, for another amount than the order's, and its
    attempt in orders (number 2, open): how SumUp's report of another amount looks to orders
    whatever made it. ``recorded``: the attempt says that amount too, not the order's."""
    created = sandbox.client.post(
        "/v0.1/checkouts",
        json={
            "checkout_reference": f"rose-test-{order_id}-{number}",
            "amount": amount,
            "currency": "EUR",
            "merchant_code": DEFAULT_MERCHANT_CODE,
        },
        headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"},
    )
    assert created.status_code == 201, created.text
    checkout_id = created.json()["id"]
    with admin_connect(clean_db, "orders") as connection:
        connection.execute(
            "INSERT INTO orders.payment_attempts (order_id, number, checkout_reference, "
            "sumup_checkout_id, status, amount, currency) SELECT id, %s, %s, %s, 'PENDING', "
            "COALESCE(%s, total), currency FROM orders.orders WHERE id = %s",
            (
                number,
                f"rose-test-{order_id}-{number}",
                checkout_id,
                Decimal(str(amount)) if recorded else None,
                order_id,
            ),
        )
    return checkout_id


async def paid_order(orders, clean_db, sandbox) -> tuple[int, str]:
    order_id = (await create(orders)).json()["order_id"]
    checkout_id = checkout_id_of(clean_db, order_id)
    sandbox.pay(checkout_id)
    assert (await webhook(orders, order_id, checkout_id)).status_code == 204
    assert order_state(clean_db, order_id) == ("paid", False, None)
    return order_id, checkout_id


async def test_a_paid_order_keeps_its_payment_and_gives_back_the_flagged_one(
    orders, clean_db, sandbox
):
    """A paid order flagged by another checkout's report (SumUp took 1.00 there). Before, the
    review refused it (409: "look at it in SumUp's dashboard") and only SQL cleared the flag.
    Now the payment it was paid with stays as it is, and the flagged checkout's money goes back
    as SumUp took it; the order stays paid."""
    order_id, honoured = await paid_order(orders, clean_db, sandbox)
    stray = await stray_checkout(clean_db, sandbox, order_id, 1.00)
    sandbox.pay(stray)
    assert (await webhook(orders, order_id, stray)).status_code == 204
    assert order_state(clean_db, order_id)[:2] == ("paid", True)
    assert await attention(orders) == [order_id]

    ended = await end_review(orders, order_id)

    assert ended.status_code == 200, ended.text
    assert ended.json() == {
        "order_id": order_id,
        "status": "paid",
        "closed_checkouts": [],
        "refunds": [{"checkout_id": stray, "amount": "1.00", "currency": "EUR"}],
        "releasing_bookings": False,
        "kept_payment": honoured,
        "kept_unchecked": None,
        "still_going_back": [],
    }
    assert review_ended_lines(ended.json()) == [
        f"order {order_id}: review ended; it is paid now",
        f"  kept: checkout {honoured}, the payment the order was paid with",
        f"  going back: 1.00 EUR of checkout {stray} (orders asks SumUp now; "
        "`rose orders attention` lists it until it is done)",
    ]
    assert attempt_rows(clean_db, order_id) == [(1, "PAID"), (2, "PAID")]
    assert await eventually(
        lambda: refunds(clean_db) == [(order_id, True, Decimal("1.00"), "EUR", "done")]
    )
    assert order_state(clean_db, order_id)[:2] == ("paid", False)
    paid_with = sandbox.checkout(honoured)["transaction_id"]
    assert sandbox.transaction(paid_with)["events"] == []  # never given back
    assert await attention(orders) == []


def bookings_of(server, entry_id: int, ticket_id: int) -> list[tuple]:
    """(state, order_id) of the entry, then of the ticket, as events holds them."""
    with admin_connect(server, "events") as connection:
        entry = connection.execute(
            "SELECT state, order_id FROM events.calendar_entries WHERE id = %s", (entry_id,)
        ).fetchone()
        ticket = connection.execute(
            "SELECT state, order_id FROM events.tickets WHERE id = %s", (ticket_id,)
        ).fetchone()
    return [entry, ticket]


def order_with_bookings(clean_db) -> tuple[dict, int, int]:
    """A 10.00 order (a product, an entry and a ticket user 1 holds) and the bookings' ids."""
    add_page_config(clean_db, "site", 0)
    entry_id, ticket_id = held_bookings(clean_db, user_id=1)
    payload = order_payload(
        product_line(1, "5.00"),
        calendar_entries=[{"id": entry_id, "title": "Tour", "price": "2.00", "currency": "EUR"}],
        tickets=[{"id": ticket_id, "title": "Tour - adult", "price": "3.00", "currency": "EUR"}],
        calendar_total="2.00",
        ticket_total="3.00",
    )
    return payload, entry_id, ticket_id


async def test_a_paid_orders_payment_whose_refund_is_still_pending_keeps_its_review_open(
    clean_db, credentials, sandbox
):
    """A person refunded the whole payment in SumUp's dashboard and SumUp has not made the
    refund yet (PENDING: it may still fail it). The review letting the bookings go for good on
    that (review M1, December 2026) would leave a buyer who paid with nothing if SumUp then
    failed the refund: a 409 now, nothing written, the order paid and flagged, its bookings
    confirmed (a refund SumUp made is settled as the test below shows)."""
    payload, entry_id, ticket_id = order_with_bookings(clean_db)
    services = ["orders", "blog", "events"]
    async with orders_stack(clean_db, credentials, sandbox.server, services) as orders:
        order_id = (await create(orders, payload)).json()["order_id"]
        checkout_id = checkout_id_of(clean_db, order_id)
        sandbox.pay(checkout_id)
        assert (await webhook(orders, order_id, checkout_id)).status_code == 204
        confirmed = [("confirmed", order_id), ("confirmed", order_id)]
        assert await eventually(lambda: bookings_of(clean_db, entry_id, ticket_id) == confirmed)
        transaction = sandbox.checkout(checkout_id)["transaction_id"]
        sandbox.refund_in_dashboard(transaction, 10.00, status="PENDING")
        flag(clean_db, order_id)

        waiting = await end_review(orders, order_id)
        assert waiting.status_code == 409, waiting.text
        assert "still on its way" in waiting.json()["detail"]
        assert order_state(clean_db, order_id) == ("paid", True, "amount differs")
        assert bookings_of(clean_db, entry_id, ticket_id) == confirmed
        assert refunds(clean_db) == []


@pytest.mark.parametrize("given_back", ["dashboard", "charge-back"])
async def test_a_paid_order_sumup_gave_back_whole_is_refunded_and_lets_go_its_bookings(
    clean_db, credentials, sandbox, given_back
):
    """A paid order whose only payment SumUp gave back whole (a refund a person made in
    SumUp's dashboard, or a charge-back decided for the buyer), flagged for review. Before, the
    review kept that payment as the order's: the order stayed paid with nothing taken, its
    entry and ticket confirmed for a buyer who paid nothing, and no review could settle it
    (SQL by hand). Now it is refunded, nothing asked of SumUp (it gave all of it back
    already), and its bookings are let go at events: the entry open again, the ticket
    cancelled. Part of it given back is a paid order still (the merchant keeps the rest)."""
    payload, entry_id, ticket_id = order_with_bookings(clean_db)
    services = ["orders", "blog", "events"]
    async with orders_stack(clean_db, credentials, sandbox.server, services) as orders:
        created = await create(orders, payload)
        assert created.status_code == 200, created.text
        order_id = created.json()["order_id"]
        checkout_id = checkout_id_of(clean_db, order_id)
        sandbox.pay(checkout_id)
        assert (await webhook(orders, order_id, checkout_id)).status_code == 204
        assert order_state(clean_db, order_id) == ("paid", False, None)
        confirmed = [("confirmed", order_id), ("confirmed", order_id)]
        assert await eventually(lambda: bookings_of(clean_db, entry_id, ticket_id) == confirmed)
        transaction = sandbox.checkout(checkout_id)["transaction_id"]

        # Part of it given back (a goodwill refund in the dashboard): still paid, kept.
        sandbox.refund_in_dashboard(transaction, 1.00)
        flag(clean_db, order_id)
        partly = await end_review(orders, order_id)
        assert partly.status_code == 200, partly.text
        assert (partly.json()["status"], partly.json()["kept_payment"]) == ("paid", checkout_id)
        assert bookings_of(clean_db, entry_id, ticket_id) == confirmed

        # The rest of it given back too: nothing is taken for the order any more.
        if given_back == "dashboard":
            sandbox.refund_in_dashboard(transaction, 9.00)
        else:
            sandbox.charge_back(transaction, 9.00)
        flag(clean_db, order_id)
        ended = await end_review(orders, order_id)

        assert ended.status_code == 200, ended.text
        assert ended.json() == {
            "order_id": order_id,
            "status": "refunded",
            "closed_checkouts": [],
            "refunds": [],
            "releasing_bookings": True,
            "kept_payment": None,
            "kept_unchecked": None,
            "still_going_back": [],
        }
        assert review_ended_lines(ended.json()) == [
            f"order {order_id}: review ended; it is refunded now",
            "  its bookings are being let go of at events",
        ]
        assert order_state(clean_db, order_id) == ("refunded", False, "amount differs")
        assert attempt_rows(clean_db, order_id) == [(1, "PAID")]
        assert refunds(clean_db) == []  # nothing asked of SumUp: given back once
        assert await eventually(
            lambda: (
                bookings_of(clean_db, entry_id, ticket_id)
                == [("open", None), ("cancelled", order_id)]
            )
        )
        await orders.apps["orders"].state.reconciler.quiet()
        assert refunds(clean_db) == []
        events = sandbox.transaction(transaction)["events"]
        assert sum(Decimal(str(event["amount"])) for event in events) == Decimal("10")
        assert await attention(orders) == []
        again = await end_review(orders, order_id)
        assert again.status_code == 409
        assert "its review ended already; it is refunded" in again.json()["detail"]
        # The buyer's page says what happened (not that a payment came too late).
        browser = orders.browser("orders")
        signed = await browser.get(
            "/auth/dev-login?user_id=1", headers={"accept": "application/json"}
        )
        assert signed.status_code == 200, signed.text
        page = await browser.get(f"/order/{order_id}/", headers={"accept": "text/html"})
        assert page.status_code == 200, page.text
        assert "payment was given back to you" in page.text
        assert "after it could no longer be paid" not in page.text


async def test_a_person_flags_a_paid_order_sumup_gave_back_and_its_review_settles_it(
    orders, clean_db, sandbox
):
    """Probe (orders edges): orders hears nothing of a refund a person makes in SumUp's
    dashboard, nor of a charge-back, so nothing flags such a paid order, and `rose orders
    end-review` said "there is no review to end": only SQL could flag it. A person flags it
    now (`rose orders flag ORDER REASON`, orders' flag-for-review action): listed by
    attention with the reason, and its review then settles it. Flagged already, its first
    reason is kept."""
    order_id, checkout_id = await paid_order(orders, clean_db, sandbox)
    sandbox.refund_in_dashboard(sandbox.checkout(checkout_id)["transaction_id"], 10.00)
    refused = await end_review(orders, order_id)
    assert refused.status_code == 409, refused.text
    assert "there is no review to end" in refused.json()["detail"]

    reason = "refunded in SumUp's dashboard (buyer's mail of 6 December)"
    client = orders.client("orders")
    body = {"order_id": order_id, "reason": reason}
    flagged = await internal_post(client, "flag-for-review", body)
    assert flagged.status_code == 200, flagged.text
    assert flagged.json() == {
        "order_id": order_id,
        "status": "paid",
        "flag_reason": reason,
        "flagged_now": True,
    }
    again = await internal_post(client, "flag-for-review", {**body, "reason": "again"})
    assert again.status_code == 200, again.text
    assert (again.json()["flag_reason"], again.json()["flagged_now"]) == (reason, False)
    assert order_state(clean_db, order_id) == ("paid", True, reason)
    assert await attention(orders) == [order_id]

    ended = await end_review(orders, order_id)
    assert ended.status_code == 200, ended.text
    assert (ended.json()["status"], ended.json()["refunds"]) == ("refunded", [])
    assert refunds(clean_db) == []
    assert await attention(orders) == []

    missing = await internal_post(client, "flag-for-review", {**body, "order_id": order_id + 9})
    assert missing.status_code == 404, missing.text
    for unreadable in ("", "   ", "two\nlines", "\u001b[31mred"):
        refused = await internal_post(client, "flag-for-review", {**body, "reason": unreadable})
        assert refused.status_code == 422, (unreadable, refused.text)
        assert refused.json()["errors"][0]["field"] == "reason"
        if not unreadable.strip():
            # The service's own words, not the input check's "at least 1 characters".
            assert "must say what you saw" in refused.text, refused.text


async def test_a_person_cannot_flag_a_pending_order_whose_checkout_the_buyer_may_still_pay(
    orders, clean_db, sandbox
):
    """Review L3: `rose orders flag` took a pending order, and its checkout stayed open at
    SumUp: the buyer paid it, the order was not marked paid (flagged), and its review gave the
    money back and let go of the bookings, for a payment nothing was wrong with. A person's
    flag is for what orders cannot hear of (a dashboard refund, a charge-back: money taken
    first); a pending order is refused (409, nothing written), and its payment settles it as
    ever."""
    order_id = (await create(orders)).json()["order_id"]
    checkout_id = checkout_id_of(clean_db, order_id)
    body = {"order_id": order_id, "reason": "the buyer wrote that they paid twice"}
    refused = await internal_post(orders.client("orders"), "flag-for-review", body)
    assert refused.status_code == 409, refused.text
    assert f"Order {order_id} is pending" in refused.json()["detail"]
    assert order_state(clean_db, order_id) == ("pending", False, None)

    sandbox.pay(checkout_id)
    assert (await webhook(orders, order_id, checkout_id)).status_code == 204
    assert order_state(clean_db, order_id) == ("paid", False, None)
    assert await attention(orders) == []

    # A pending order flagged already (review L5: the 409 said "nothing was flagged") is
    # answered as any order flagged already: its first reason kept.
    other = (await create(orders)).json()["order_id"]
    flag(clean_db, other)
    again = await internal_post(
        orders.client("orders"), "flag-for-review", {**body, "order_id": other}
    )
    assert again.status_code == 200, again.text
    assert (again.json()["flag_reason"], again.json()["flagged_now"]) == ("amount differs", False)


async def test_a_refused_refund_a_person_gave_back_in_sumups_dashboard_is_settled_by_a_review(
    orders, clean_db, sandbox
):
    """Probe (orders edges): SumUp refused a refund (409): it is failed, for a person, and
    orders never asks again. The person gives the money back in SumUp's dashboard, as they
    must: orders still said refund_due and listed the failed refund in attention for ever,
    and a review passed it by (a refund recorded). Now a review settles a refused refund
    whose money SumUp shows given back (done), and the order is refunded; nothing is asked
    of SumUp."""
    sandbox.controls(refunds="refuse")
    order_id = (await create(orders)).json()["order_id"]
    checkout_id = checkout_id_of(clean_db, order_id)
    sandbox.pay(checkout_id, amount_override=1.00)
    assert (await webhook(orders, order_id, checkout_id)).status_code == 204
    first = await end_review(orders, order_id)
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "refund_due"
    await orders.apps["orders"].state.reconciler.quiet()
    assert refunds(clean_db) == [(order_id, True, Decimal("1.00"), "EUR", "failed")]

    sandbox.controls(refunds="accept")
    transaction = sandbox.checkout(checkout_id)["transaction_id"]
    sandbox.refund_in_dashboard(transaction, 1.00)
    body = {"order_id": order_id, "reason": "refunded by hand in SumUp's dashboard"}
    assert (await internal_post(orders.client("orders"), "flag-for-review", body)).is_success
    ended = await end_review(orders, order_id)

    assert ended.status_code == 200, ended.text
    assert (ended.json()["status"], ended.json()["refunds"]) == ("refunded", [])
    assert order_state(clean_db, order_id)[:2] == ("refunded", False)
    assert refunds(clean_db) == [(order_id, True, Decimal("1.00"), "EUR", "done")]
    assert await attention(orders) == []
    events = sandbox.transaction(transaction)["events"]
    assert [(event["type"], event["amount"]) for event in events] == [("REFUND", 1.0)]


async def test_a_paid_orders_own_payment_disputed_keeps_its_review_open_until_decided(
    orders, clean_db, sandbox
):
    """The payment a paid order was paid with, disputed by the buyer and not decided: it may
    all go back, or not. The review is refused (409, nothing changed) rather than keep it or
    give the order up; decided for the merchant, the order stays paid and keeps it. A SumUp
    that will not show the transaction (a key not allowed to) keeps it, as before."""
    order_id, checkout_id = await paid_order(orders, clean_db, sandbox)
    transaction = sandbox.checkout(checkout_id)["transaction_id"]
    sandbox.charge_back(transaction, pending=True)
    flag(clean_db, order_id)

    refused = await end_review(orders, order_id)
    assert refused.status_code == 409, refused.text
    assert "charge-back of checkout" in refused.json()["detail"]
    assert order_state(clean_db, order_id) == ("paid", True, "amount differs")

    sandbox.decide_charge_back(transaction, "FAILED")
    ended = await end_review(orders, order_id)
    assert ended.status_code == 200, ended.text
    assert (ended.json()["status"], ended.json()["kept_payment"]) == ("paid", checkout_id)
    assert ended.json()["releasing_bookings"] is False

    flag(clean_db, order_id)
    sandbox.controls(transaction_lookups="not_found")
    unseen = await end_review(orders, order_id)
    assert unseen.status_code == 200, unseen.text
    assert (unseen.json()["status"], unseen.json()["kept_payment"]) == ("paid", checkout_id)
    assert refunds(clean_db) == []
    # Review L4: the person is told the payment was kept unchecked (it said nothing but a log
    # line): what SumUp answered, and where to look.
    assert "404" in unseen.json()["kept_unchecked"], unseen.text
    lines = review_ended_lines(unseen.json())
    assert any("could not tell whether any of it went back" in line for line in lines), lines
    assert ended.json()["kept_unchecked"] is None  # the review above read the transaction


async def test_a_paid_order_flagged_by_an_open_checkout_has_it_closed(orders, clean_db, sandbox):
    """SumUp reported another amount for a checkout nobody paid: the review closes it at SumUp
    (it can take no money now) and gives nothing back; the order stays paid."""
    order_id, honoured = await paid_order(orders, clean_db, sandbox)
    stray = await stray_checkout(clean_db, sandbox, order_id, 3.00)
    assert (await webhook(orders, order_id, stray)).status_code == 204
    assert order_state(clean_db, order_id)[:2] == ("paid", True)

    ended = await end_review(orders, order_id)

    assert ended.status_code == 200, ended.text
    assert (ended.json()["status"], ended.json()["closed_checkouts"]) == ("paid", [stray])
    assert ended.json()["refunds"] == []
    assert sandbox.checkout(stray)["status"] == "EXPIRED"
    assert sandbox.checkout(honoured)["status"] == "PAID"
    assert attempt_rows(clean_db, order_id) == [(1, "PAID"), (2, "EXPIRED")]
    assert order_state(clean_db, order_id)[:2] == ("paid", False)
    assert refunds(clean_db) == []


async def test_a_second_payment_of_a_paid_order_goes_back(orders, clean_db, sandbox):
    """Not a review: a paid order's other checkout paid too (its own amount): that payment goes
    back at once, the order stays paid, nothing flagged (the path the review's race guard in
    apply_checkout must not swallow)."""
    order_id, honoured = await paid_order(orders, clean_db, sandbox)
    stray = await stray_checkout(clean_db, sandbox, order_id, 10.00)
    sandbox.pay(stray)
    assert (await webhook(orders, order_id, stray)).status_code == 204
    assert await eventually(
        lambda: refunds(clean_db) == [(order_id, False, Decimal("10.00"), "EUR", "done")]
    )
    assert order_state(clean_db, order_id) == ("paid", False, None)
    assert sandbox.transaction(sandbox.checkout(honoured)["transaction_id"])["events"] == []


async def test_a_second_payment_goes_back_whichever_attempt_paid_first(orders, clean_db, sandbox):
    """Third review M2. An order the release before orders 0015 paid (while this one rolled
    out) recorded no attempt: paid with its second checkout, its first paid afterwards in
    another tab. The report of the first settled it PAID and then inferred "the payment it was
    paid with" as the first attempt held PAID: that one, so nothing went back and the buyer
    paid twice. A payment a report settles for an order already paid is never the one it was
    paid with: it goes back."""
    order_id = (await create(orders)).json()["order_id"]
    first = checkout_id_of(clean_db, order_id)
    paid_with = await stray_checkout(clean_db, sandbox, order_id, 10.00)
    sandbox.pay(paid_with)
    assert (await webhook(orders, order_id, paid_with)).status_code == 204
    with admin_connect(clean_db, "orders") as connection:
        connection.execute(
            "UPDATE orders.orders SET paid_attempt_id = NULL WHERE id = %s", (order_id,)
        )
    sandbox.pay(first)
    assert (await webhook(orders, order_id, first)).status_code == 204
    assert await eventually(
        lambda: refunds(clean_db) == [(order_id, False, Decimal("10.00"), "EUR", "done")]
    )
    assert order_state(clean_db, order_id) == ("paid", False, None)
    assert sandbox.transaction(sandbox.checkout(first)["transaction_id"])["events"] != []
    assert sandbox.transaction(sandbox.checkout(paid_with)["transaction_id"])["events"] == []


def reports_waiting_on_sumup(server) -> int:
    """Orders' transactions idle after reading a reported checkout's attempt: reports that
    wait on SumUp's answer."""
    with admin_connect(server, "orders") as watcher:
        row = watcher.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state = 'idle in transaction' AND query LIKE '%%payment_attempts%%' "
            "AND query LIKE '%%sumup_checkout_id%%'"
        ).fetchone()
    return int(row[0]) if row else 0


async def test_the_payment_an_order_was_paid_with_is_never_refunded_by_a_second_report_of_it(
    orders, clean_db, sandbox
):
    """Fourth review M-1. Two reports of the order's checkout (a webhook and its repeat, or the
    return page's look) both read it open and wait on SumUp; meanwhile pay again closes it
    (EXPIRED in orders, its payment already made at SumUp). The first pays the order with it,
    held EXPIRED. The second found the order paid and its attempt not PAID, took it for a
    second payment and gave the order's only payment back. The attempt the order records it
    was paid with is never given back by a report."""
    order_id = (await create(orders)).json()["order_id"]
    checkout_id = checkout_id_of(clean_db, order_id)
    # A report of the open checkout first: the one read of SumUp a report makes before it
    # reads the attempt (right after the checkout was made) is spent; those below read the
    # attempt, then SumUp.
    assert (await webhook(orders, order_id, checkout_id)).status_code == 204
    sandbox.pay(checkout_id)
    sandbox.controls(api_latency=2.0)  # under the stack's SumUp timeout, 3 s
    reports = [asyncio.create_task(webhook(orders, order_id, checkout_id)) for _ in range(2)]
    # Both read the attempt open and wait on SumUp: the first's read is on its way, the second
    # waits for the read after it (reads of one checkout share SumUp's answer), each in its
    # transaction.
    assert await eventually(lambda: sandbox.delayed_calls() == 1)
    assert await eventually(lambda: reports_waiting_on_sumup(clean_db) == 2)
    with admin_connect(clean_db, "orders") as connection:
        connection.execute(
            "UPDATE orders.payment_attempts SET status = 'EXPIRED' WHERE order_id = %s",
            (order_id,),
        )
    assert [(await report).status_code for report in reports] == [204, 204]
    sandbox.controls(api_latency=0.0)

    await orders.apps["orders"].state.reconciler.quiet()
    assert order_state(clean_db, order_id) == ("paid", False, None)
    assert refunds(clean_db) == []
    assert sandbox.transaction(sandbox.checkout(checkout_id)["transaction_id"])["events"] == []
    assert paid_with_of(clean_db, order_id) == checkout_id


async def test_an_order_paid_before_0015_is_flagged_not_refunded_when_its_closed_attempt_pays(
    orders, clean_db, sandbox
):
    """Fifth review L3. An order the release before orders 0015 paid records no attempt. Paid
    with one held EXPIRED (pay again closed it as SumUp took its payment), no attempt held
    PAID, a report of that attempt read while it was open (here the return page's look) may be
    of the payment it was paid with: it was given back, the buyer keeping the goods for
    nothing. The order is flagged for a person; nothing goes back."""
    order_id, checkout_id = await flagged_paid_before_0015(orders, clean_db, sandbox)
    status, flagged, reason = order_state(clean_db, order_id)
    assert (status, flagged) == ("paid", True)
    assert "it may be that one" in reason
    assert refunds(clean_db) == []
    assert sandbox.transaction(sandbox.checkout(checkout_id)["transaction_id"])["events"] == []


async def flagged_paid_before_0015(orders, clean_db, sandbox) -> tuple[int, str]:
    """The case above: an order the release before 0015 paid with its one checkout, held
    EXPIRED, flagged by a report of it read while it was open. Its order and checkout."""
    order_id = (await create(orders)).json()["order_id"]
    checkout_id = checkout_id_of(clean_db, order_id)
    assert (await webhook(orders, order_id, checkout_id)).status_code == 204  # see above
    app = orders.apps["orders"]
    runtime = app.state.runtime
    async with runtime.maker() as page:
        stale = await service.load_order(page, order_id)  # as a return page read it: open
        assert stale is not None
        assert [attempt.status for attempt in stale.attempts] == ["PENDING"]
        sandbox.pay(checkout_id)
        assert (await webhook(orders, order_id, checkout_id)).status_code == 204
        with admin_connect(clean_db, "orders") as connection:  # as the release before left it
            connection.execute(
                "UPDATE orders.orders SET paid_attempt_id = NULL WHERE id = %s", (order_id,)
            )
            connection.execute(
                "UPDATE orders.payment_attempts SET status = 'EXPIRED' WHERE order_id = %s",
                (order_id,),
            )
        await service.recheck(page, stale, runtime)
        await page.commit()
    await app.state.reconciler.quiet()
    return order_id, checkout_id


def paid_with_of(server, order_id: int) -> str | None:
    """The checkout the order records it was paid with (orders.paid_attempt_id)."""
    with admin_connect(server, "orders") as connection:
        row = connection.execute(
            "SELECT a.sumup_checkout_id FROM orders.orders AS o "
            "LEFT JOIN orders.payment_attempts AS a ON a.id = o.paid_attempt_id WHERE o.id = %s",
            (order_id,),
        ).fetchone()
    return row[0]


async def test_a_person_names_the_payment_an_order_the_release_before_paid_was_paid_with(
    orders, clean_db, sandbox
):
    """The order above holds no checkout paid and records none: its review cannot tell which
    payment to keep (409), and before, only SQL by hand settled it. A person who found it in
    SumUp's dashboard names it (`end-review --paid-with CHECKOUT`): SumUp must say it paid the
    order's amount; it is recorded, held PAID, and kept; the flag is cleared; nothing goes
    back."""
    order_id, checkout_id = await flagged_paid_before_0015(orders, clean_db, sandbox)
    unknown = await end_review(orders, order_id)
    assert unknown.status_code == 409, unknown.text
    assert "--paid-with" in unknown.json()["detail"]
    assert order_state(clean_db, order_id)[:2] == ("paid", True)

    ended = await end_review(orders, order_id, paid_with=checkout_id)

    assert ended.status_code == 200, ended.text
    assert ended.json() == {
        "order_id": order_id,
        "status": "paid",
        "closed_checkouts": [],
        "refunds": [],
        "releasing_bookings": False,
        "kept_payment": checkout_id,
        "kept_unchecked": None,
        "still_going_back": [],
    }
    assert review_ended_lines(ended.json())[1] == (
        f"  kept: checkout {checkout_id}, the payment the order was paid with"
    )
    assert order_state(clean_db, order_id)[:2] == ("paid", False)
    assert paid_with_of(clean_db, order_id) == checkout_id
    assert attempt_rows(clean_db, order_id) == [(1, "PAID")]
    assert refunds(clean_db) == []
    assert sandbox.transaction(sandbox.checkout(checkout_id)["transaction_id"])["events"] == []
    assert await attention(orders) == []


async def test_a_named_payment_whose_charge_back_is_pending_is_not_kept_yet(
    orders, clean_db, sandbox
):
    """The card issuer has not decided a charge-back of the named payment: kept now, the order
    could stay paid with its money gone. Refused (409) until it is decided, nothing changed;
    decided for the merchant, the payment is the order's."""
    order_id, checkout_id = await flagged_paid_before_0015(orders, clean_db, sandbox)
    before = order_state(clean_db, order_id)
    transaction_id = sandbox.checkout(checkout_id)["transaction_id"]
    sandbox.charge_back(transaction_id, pending=True)

    pending = await end_review(orders, order_id, paid_with=checkout_id)

    assert pending.status_code == 409, pending.text
    assert "not settled at SumUp" in pending.json()["detail"]
    assert order_state(clean_db, order_id) == before
    assert paid_with_of(clean_db, order_id) is None

    sandbox.decide_charge_back(transaction_id, "FAILED")
    decided = await end_review(orders, order_id, paid_with=checkout_id)
    assert decided.status_code == 200, decided.text
    assert paid_with_of(clean_db, order_id) == checkout_id
    assert refunds(clean_db) == []


async def test_a_payment_named_that_cannot_be_the_orders_is_refused_and_nothing_changes(
    orders, clean_db, sandbox
):
    """`--paid-with` names what SumUp must confirm: a checkout of this order, PAID at SumUp for
    the order's amount, whose money does not go back, of an order that is paid and does not
    record another one. Anything else is refused, and the order stays flagged as it was."""
    order_id, checkout_id = await flagged_paid_before_0015(orders, clean_db, sandbox)
    before = order_state(clean_db, order_id)
    other_order, other_checkout = await paid_order(orders, clean_db, sandbox)

    not_its = await end_review(orders, order_id, paid_with=other_checkout)
    assert not_its.status_code == 422, not_its.text
    assert not_its.json()["errors"][0]["field"] == "paid_with"
    assert other_checkout in not_its.json()["detail"]

    unpaid = await stray_checkout(clean_db, sandbox, order_id, 10.00)  # open, nobody paid it
    not_paid = await end_review(orders, order_id, paid_with=unpaid)
    assert not_paid.status_code == 409, not_paid.text
    assert "did not pay" in not_paid.json()["detail"]
    # Paid at SumUp, but another amount than the order's.
    other_amount = await stray_checkout(clean_db, sandbox, order_id, 1.00, number=3)
    sandbox.pay(other_amount)
    not_the_amount = await end_review(orders, order_id, paid_with=other_amount)
    assert not_the_amount.status_code == 409, not_the_amount.text
    assert "SumUp reports 1.00 EUR" in not_the_amount.json()["detail"]
    # Paid at SumUp for what its attempt says, which is not the order's total (an attempt
    # recorded for another amount): kept, the order would stay paid with 1.00 taken.
    not_the_total = await stray_checkout(clean_db, sandbox, order_id, 1.00, number=4, recorded=True)
    sandbox.pay(not_the_total)
    short = await end_review(orders, order_id, paid_with=not_the_total)
    assert short.status_code == 409, short.text
    assert "not the order's 10.00 EUR" in short.json()["detail"]

    with admin_connect(clean_db, "orders") as connection:  # as if given back as another's
        connection.execute(
            "INSERT INTO orders.refunds (order_id, attempt_id, reason_key, reason, amount, "
            "currency, status) SELECT order_id, id, 'second-payment:test', 'given back', "
            "amount, currency, 'failed' FROM orders.payment_attempts "
            "WHERE sumup_checkout_id = %s",
            (checkout_id,),
        )
    going_back = await end_review(orders, order_id, paid_with=checkout_id)
    assert going_back.status_code == 409, going_back.text
    assert "goes back" in going_back.json()["detail"]
    with admin_connect(clean_db, "orders") as connection:
        connection.execute("DELETE FROM orders.refunds WHERE order_id = %s", (order_id,))

    assert order_state(clean_db, order_id) == before
    assert paid_with_of(clean_db, order_id) is None
    assert refunds(clean_db) == []

    # Its money given back at SumUp already (a person in the dashboard): the order would stay
    # paid with less taken than its total. Refused.
    transaction_id = sandbox.checkout(checkout_id)["transaction_id"]
    sandbox.refund_in_dashboard(transaction_id, 1.00)
    given_back = await end_review(orders, order_id, paid_with=checkout_id)
    assert given_back.status_code == 409, given_back.text
    assert "gave back" in given_back.json()["detail"]
    assert order_state(clean_db, order_id) == before
    assert paid_with_of(clean_db, order_id) is None

    # A paid order that records none but holds one checkout paid knows its payment: naming
    # another is refused.
    with admin_connect(clean_db, "orders") as connection:
        connection.execute(
            "UPDATE orders.orders SET paid_attempt_id = NULL WHERE id = %s", (other_order,)
        )
    flag(clean_db, other_order)
    known = await stray_checkout(clean_db, sandbox, other_order, 10.00)
    sandbox.pay(known)
    holds_one = await end_review(orders, other_order, paid_with=known)
    assert holds_one.status_code == 409, holds_one.text
    assert f"knows checkout {other_checkout}" in holds_one.json()["detail"]
    assert order_state(clean_db, other_order) == ("paid", True, "amount differs")
    with admin_connect(clean_db, "orders") as connection:
        connection.execute(
            "UPDATE orders.orders SET paid_attempt_id = (SELECT id FROM orders.payment_attempts "
            "WHERE sumup_checkout_id = %s) WHERE id = %s",
            (other_checkout, other_order),
        )

    # A paid order that records its payment: naming another is refused; naming it is the same
    # review as without.
    stray = known
    contradicts = await end_review(orders, other_order, paid_with=stray)
    assert contradicts.status_code == 409, contradicts.text
    assert "recorded" in contradicts.json()["detail"]
    assert order_state(clean_db, other_order) == ("paid", True, "amount differs")
    agrees = await end_review(orders, other_order, paid_with=other_checkout)
    assert agrees.status_code == 200, agrees.text
    assert agrees.json()["refunds"] == [
        {"checkout_id": stray, "amount": "10.00", "currency": "EUR"}
    ]
    assert paid_with_of(clean_db, other_order) == other_checkout

    # Only a paid order is paid with something.
    pending = (await create(orders)).json()["order_id"]
    flag(clean_db, pending)
    not_paid_order = await end_review(orders, pending, paid_with=checkout_id_of(clean_db, pending))
    assert not_paid_order.status_code == 409, not_paid_order.text
    assert "is pending" in not_paid_order.json()["detail"]
    assert order_state(clean_db, pending) == ("pending", True, "amount differs")


async def test_a_review_records_the_attempt_an_order_the_release_before_paid_was_paid_with(
    orders, clean_db, sandbox
):
    """An order the release before orders 0015 paid recorded no attempt: its review keeps the
    one it was paid with (the first held PAID, no money of it going back), gives the flagged
    one back, and records which it kept, so that what it changed cannot make the refunded one
    look like it later."""
    order_id, honoured = await paid_order(orders, clean_db, sandbox)
    with admin_connect(clean_db, "orders") as connection:
        connection.execute(
            "UPDATE orders.orders SET paid_attempt_id = NULL WHERE id = %s", (order_id,)
        )
    stray = await stray_checkout(clean_db, sandbox, order_id, 1.00)
    sandbox.pay(stray)
    assert (await webhook(orders, order_id, stray)).status_code == 204
    assert order_state(clean_db, order_id)[:2] == ("paid", True)

    ended = await end_review(orders, order_id)

    assert ended.status_code == 200, ended.text
    assert ended.json()["refunds"] == [{"checkout_id": stray, "amount": "1.00", "currency": "EUR"}]
    assert paid_with_of(clean_db, order_id) == honoured
    assert sandbox.transaction(sandbox.checkout(honoured)["transaction_id"])["events"] == []


async def test_a_paid_order_sumup_reports_otherwise_is_left_to_a_person(orders, clean_db, sandbox):
    """Review L3: the payment a paid order was paid with, reported for another amount than
    the order's; or a paid order that recorded no checkout it was paid with and holds none
    paid. Its review would clear the flag of what nobody settled: a 409, nothing changed."""
    order_id, _ = await paid_order(orders, clean_db, sandbox)
    with admin_connect(clean_db, "orders") as connection:
        connection.execute(
            "UPDATE orders.payment_attempts SET amount = 9.00 WHERE order_id = %s", (order_id,)
        )
    flag(clean_db, order_id)
    refused = await end_review(orders, order_id)
    assert refused.status_code == 409, refused.text
    assert "which paid order" in refused.json()["detail"]
    assert order_state(clean_db, order_id) == ("paid", True, "amount differs")

    with admin_connect(clean_db, "orders") as connection:
        connection.execute(
            "UPDATE orders.payment_attempts SET amount = 10.00, status = 'EXPIRED' "
            "WHERE order_id = %s",
            (order_id,),
        )
        connection.execute(
            "UPDATE orders.orders SET paid_attempt_id = NULL WHERE id = %s", (order_id,)
        )
    none_paid = await end_review(orders, order_id)
    assert none_paid.status_code == 409, none_paid.text
    assert "orders does not know which checkout paid it" in none_paid.json()["detail"]
    assert order_state(clean_db, order_id) == ("paid", True, "amount differs")
    assert refunds(clean_db) == []


async def test_a_pending_charge_back_keeps_the_review_open(orders, clean_db, sandbox):
    """Review M1: a dispute not decided yet may give the money back, or not: the review
    neither asks for it nor takes it as given back (409, nothing changed)."""
    order_id = (await create(orders)).json()["order_id"]
    checkout_id = checkout_id_of(clean_db, order_id)
    sandbox.pay(checkout_id, amount_override=1.00)
    assert (await webhook(orders, order_id, checkout_id)).status_code == 204
    sandbox.charge_back(sandbox.checkout(checkout_id)["transaction_id"], pending=True)

    refused = await end_review(orders, order_id)

    assert refused.status_code == 409, refused.text
    assert "charge-back of checkout" in refused.json()["detail"]
    assert order_state(clean_db, order_id)[:2] == ("pending", True)
    assert attempt_rows(clean_db, order_id) == [(1, "PENDING")]
    assert refunds(clean_db) == []


async def held_open_by_a_pending_charge_back(orders, clean_db, sandbox) -> tuple[int, str, str]:
    """A flagged order (SumUp took 1.00 of 10.00) whose buyer disputed the payment: its review
    is refused (409) while the card issuer has not decided. Returns the order, its checkout
    and its transaction."""
    order_id = (await create(orders)).json()["order_id"]
    checkout_id = checkout_id_of(clean_db, order_id)
    sandbox.pay(checkout_id, amount_override=1.00)
    assert (await webhook(orders, order_id, checkout_id)).status_code == 204
    transaction = sandbox.checkout(checkout_id)["transaction_id"]
    sandbox.charge_back(transaction, pending=True)
    refused = await end_review(orders, order_id)
    assert refused.status_code == 409, refused.text
    assert "charge-back of checkout" in refused.json()["detail"]
    assert order_state(clean_db, order_id)[:2] == ("pending", True)
    return order_id, checkout_id, transaction


async def test_a_review_held_open_by_a_charge_back_ends_once_decided_for_the_buyer(
    orders, clean_db, sandbox
):
    """The card issuer decides the dispute for the buyer: what SumUp took went back by the
    charge-back. The review ends, the order refunded, nothing asked of SumUp."""
    order_id, _, transaction = await held_open_by_a_pending_charge_back(orders, clean_db, sandbox)

    sandbox.decide_charge_back(transaction, "SUCCESSFUL")
    ended = await end_review(orders, order_id)

    assert ended.status_code == 200, ended.text
    assert (ended.json()["status"], ended.json()["refunds"]) == ("refunded", [])
    assert order_state(clean_db, order_id)[:2] == ("refunded", False)
    assert attempt_rows(clean_db, order_id) == [(1, "PAID")]
    assert refunds(clean_db) == []
    events = sandbox.transaction(transaction)["events"]
    assert [(event["type"], event["status"]) for event in events] == [("CHARGE_BACK", "SUCCESSFUL")]
    assert await attention(orders) == []


async def test_a_review_held_open_by_a_charge_back_ends_once_decided_for_the_merchant(
    orders, clean_db, sandbox
):
    """The card issuer decides the dispute for the merchant: nothing went back by it. The
    review ends and gives back what SumUp took, once."""
    order_id, checkout_id, transaction = await held_open_by_a_pending_charge_back(
        orders, clean_db, sandbox
    )

    sandbox.decide_charge_back(transaction, "FAILED")
    ended = await end_review(orders, order_id)

    assert ended.status_code == 200, ended.text
    assert ended.json()["status"] == "refund_due"
    assert ended.json()["refunds"] == [
        {"checkout_id": checkout_id, "amount": "1.00", "currency": "EUR"}
    ]
    assert await eventually(
        lambda: refunds(clean_db) == [(order_id, True, Decimal("1.00"), "EUR", "done")]
    )
    assert order_state(clean_db, order_id)[:2] == ("refunded", False)
    events = sandbox.transaction(transaction)["events"]
    assert [(event["type"], event["status"], event["amount"]) for event in events] == [
        ("CHARGE_BACK", "FAILED", 1.0),
        ("REFUND", "REFUNDED", 1.0),
    ]
    assert await attention(orders) == []


async def test_a_review_sumup_will_not_show_the_payment_of_is_left_open(orders, clean_db, sandbox):
    """SumUp refuses to show the flagged payment's transaction (a 4xx): what went back of it
    already cannot be learnt, so the review neither records a refund nor takes it as given
    back: refused, nothing written, the order still under review; once SumUp shows it, the
    review ends and the money goes back once."""
    order_id = (await create(orders)).json()["order_id"]
    checkout_id = checkout_id_of(clean_db, order_id)
    sandbox.pay(checkout_id, amount_override=1.00)
    assert (await webhook(orders, order_id, checkout_id)).status_code == 204
    sandbox.controls(transaction_lookups="not_found")

    refused = await end_review(orders, order_id)

    assert refused.status_code == 502, refused.text
    assert "HTTP 404" in refused.json()["detail"]
    assert order_state(clean_db, order_id)[:2] == ("pending", True)
    assert attempt_rows(clean_db, order_id) == [(1, "PENDING")]
    assert refunds(clean_db) == []
    sandbox.controls(transaction_lookups="show")
    ended = await end_review(orders, order_id)
    assert ended.status_code == 200, ended.text
    assert await eventually(
        lambda: refunds(clean_db) == [(order_id, True, Decimal("1.00"), "EUR", "done")]
    )
    transaction = sandbox.checkout(checkout_id)["transaction_id"]
    events = sandbox.transaction(transaction)["events"]
    assert [(event["type"], event["amount"]) for event in events] == [("REFUND", 1.0)]


async def test_a_refund_in_a_status_orders_does_not_know_keeps_the_review_open(
    orders, clean_db, sandbox
):
    """Third review L3: a refund of the flagged payment SumUp shows in a status orders does
    not know (CANCELLED here) is neither money back nor none: 409, nothing changed."""
    order_id = (await create(orders)).json()["order_id"]
    checkout_id = checkout_id_of(clean_db, order_id)
    sandbox.pay(checkout_id, amount_override=1.00)
    assert (await webhook(orders, order_id, checkout_id)).status_code == 204
    transaction_id = sandbox.checkout(checkout_id)["transaction_id"]
    sandbox.refund_in_dashboard(transaction_id, 1.0, status="CANCELLED")

    refused = await end_review(orders, order_id)

    assert refused.status_code == 409, refused.text
    assert "is CANCELLED at SumUp, a status orders does not know" in refused.json()["detail"]
    assert order_state(clean_db, order_id)[:2] == ("pending", True)
    assert refunds(clean_db) == []


async def test_an_order_whose_money_goes_back_is_settled_with_its_refunds(
    orders, clean_db, sandbox
):
    """A flagged order whose payment goes back already (a late payment, refund_due): its
    review records no second refund of that payment, and the order is as its refunds are."""
    sandbox.controls(deactivation_unavailable=True)
    older = (await create(orders, order_payload(product_line(1, "4.00")))).json()["order_id"]
    newer = await create(orders, order_payload(product_line(1, "4.00"), product_line(2)))
    assert newer.status_code == 200, newer.text
    sandbox.controls(deactivation_unavailable=False, refunds="unavailable")
    checkout_id = checkout_id_of(clean_db, older)
    sandbox.pay(checkout_id)
    assert (await webhook(orders, older, checkout_id)).status_code == 204
    # The superseded order's close, handed over at its supersede, may hold its row's lock while
    # it waits on SumUp: done first, or this blocking UPDATE (on the loop that close runs on)
    # waits for it for ever.
    await orders.apps["orders"].state.reconciler.quiet()
    assert order_state(clean_db, older)[0] == "refund_due"
    flag(clean_db, older)

    ended = await end_review(orders, older)

    assert ended.status_code == 200, ended.text
    assert (ended.json()["status"], ended.json()["refunds"]) == ("refund_due", [])
    assert order_state(clean_db, older) == ("refund_due", False, "amount differs")
    assert [row[0] for row in refunds(clean_db)] == [older]  # the late payment's, once


async def test_sumup_unable_to_answer_leaves_the_review_open(orders, clean_db, sandbox):
    """The checkout cannot be closed and SumUp says it is still open: nothing is written (503),
    the order still under review; once SumUp answers, the review ends."""
    order_id = (await create(orders)).json()["order_id"]
    checkout_id = checkout_id_of(clean_db, order_id)
    flag(clean_db, order_id)
    sandbox.controls(deactivation_unavailable=True)
    refused = await end_review(orders, order_id)
    assert refused.status_code == 503, refused.text
    assert order_state(clean_db, order_id) == ("pending", True, "amount differs")
    assert attempt_rows(clean_db, order_id) == [(1, "PENDING")]
    assert (await create(orders)).status_code == 409

    sandbox.controls(deactivation_unavailable=False)
    ended = await end_review(orders, order_id)
    assert ended.status_code == 200, ended.text
    assert ended.json()["closed_checkouts"] == [checkout_id]
    assert order_state(clean_db, order_id)[:2] == ("expired", False)


async def test_a_report_read_before_the_review_ended_does_not_flag_the_order_again(
    orders, clean_db, sandbox
):
    """SumUp delivers the flagging event again while the review is ending: the webhook reads
    the attempt still open and asks SumUp (another amount again), and the review commits
    before SumUp answers it. The attempt is settled by then: the report is nothing new.
    Before, the order was flagged again (it read unflagged), refunded yet listed for ever,
    and its review could no longer be ended. (The review is held at its refund's row by a
    conflicting row this test inserts and rolls back; SumUp answers the webhook in 1 s.)"""
    order_id = (await create(orders)).json()["order_id"]
    checkout_id = checkout_id_of(clean_db, order_id)
    sandbox.pay(checkout_id, amount_override=1.00)
    assert (await webhook(orders, order_id, checkout_id)).status_code == 204
    assert order_state(clean_db, order_id)[:2] == ("pending", True)
    await review_ends_while_a_report_waits_on_sumup(orders, clean_db, sandbox, order_id)
    assert await eventually(lambda: order_state(clean_db, order_id)[:2] == ("refunded", False))
    assert refunds(clean_db) == [(order_id, True, Decimal("1.00"), "EUR", "done")]


async def test_a_payment_refunded_meanwhile_goes_back_once(orders, clean_db, sandbox):
    """Review finding 1: a flagged order's checkout SumUp took the order's amount for, its
    webhook reading the attempt open while the review ended. The review records the refund;
    the report, applied once the review committed, found an order being refunded and
    recorded a second one for the same payment (one done, one refused: refund_due for ever).
    It goes back once."""
    order_id = (await create(orders)).json()["order_id"]
    checkout_id = checkout_id_of(clean_db, order_id)
    flag(clean_db, order_id)
    sandbox.pay(checkout_id)  # the order's own amount; its webhook comes below
    await review_ends_while_a_report_waits_on_sumup(orders, clean_db, sandbox, order_id)
    assert await eventually(lambda: order_state(clean_db, order_id)[:2] == ("refunded", False))
    assert refunds(clean_db) == [(order_id, True, Decimal("10.00"), "EUR", "done")]


async def test_a_second_payment_of_a_paid_order_goes_back_once(orders, clean_db, sandbox):
    """The same race on a paid order: its review gives back another checkout's payment while
    that checkout's webhook, read before, waits on SumUp. Applied after the review committed,
    the report found a paid order paid a second time and recorded that payment's refund once
    more."""
    order_id, _ = await paid_order(orders, clean_db, sandbox)
    stray = await stray_checkout(clean_db, sandbox, order_id, 10.00)
    flag(clean_db, order_id)
    sandbox.pay(stray)  # the order's own amount; its webhook comes below
    await review_ends_while_a_report_waits_on_sumup(orders, clean_db, sandbox, order_id, 2)
    assert await eventually(
        lambda: refunds(clean_db) == [(order_id, True, Decimal("10.00"), "EUR", "done")]
    )
    assert order_state(clean_db, order_id)[:2] == ("paid", False)


async def test_what_sumup_gave_back_already_is_not_asked_for_again(orders, clean_db, sandbox):
    """Review finding 3: the person looking at the order refunded it in SumUp's dashboard. A
    refund of everything again would be refused and stay failed, the order refund_due for
    ever. Part of it given back: a 409 naming the rest to give back there, nothing changed
    (orders asks for all of a payment or none); all of it: the order is refunded, nothing
    asked of SumUp."""
    order_id = (await create(orders)).json()["order_id"]
    checkout_id = checkout_id_of(clean_db, order_id)
    sandbox.pay(checkout_id, amount_override=1.00)
    assert (await webhook(orders, order_id, checkout_id)).status_code == 204
    transaction = sandbox.checkout(checkout_id)["transaction_id"]

    sandbox.refund_in_dashboard(transaction, 0.40)
    partly = await end_review(orders, order_id)
    assert partly.status_code == 409, partly.text
    assert "give back the rest (0.60) in SumUp's dashboard" in partly.json()["detail"]
    assert order_state(clean_db, order_id)[:2] == ("pending", True)
    assert attempt_rows(clean_db, order_id) == [(1, "PENDING")]
    assert refunds(clean_db) == []

    sandbox.refund_in_dashboard(transaction, 0.60)
    ended = await end_review(orders, order_id)
    assert ended.status_code == 200, ended.text
    assert (ended.json()["status"], ended.json()["refunds"]) == ("refunded", [])
    assert order_state(clean_db, order_id)[:2] == ("refunded", False)
    assert attempt_rows(clean_db, order_id) == [(1, "PAID")]
    assert refunds(clean_db) == []
    events = sandbox.transaction(transaction)["events"]
    assert sum(Decimal(str(e["amount"])) for e in events if e["type"] == "REFUND") == Decimal("1")
    # SumUp delivers its event again: the payment was seen to; no refund is asked for.
    assert (await webhook(orders, order_id, checkout_id)).status_code == 204
    assert refunds(clean_db) == []
    assert order_state(clean_db, order_id)[:2] == ("refunded", False)


async def test_a_payment_charged_back_is_given_back_already(orders, clean_db, sandbox):
    """Review MEDIUM (charge-backs): the buyer disputed the mismatched payment and the card
    issuer took it back. The review counted SumUp's refunds only and asked for all of it
    again; SumUp refused, and the refund was left failed for a person."""
    order_id = (await create(orders)).json()["order_id"]
    checkout_id = checkout_id_of(clean_db, order_id)
    sandbox.pay(checkout_id, amount_override=1.00)
    assert (await webhook(orders, order_id, checkout_id)).status_code == 204
    transaction = sandbox.checkout(checkout_id)["transaction_id"]
    sandbox.charge_back(transaction)

    ended = await end_review(orders, order_id)

    assert ended.status_code == 200, ended.text
    assert (ended.json()["status"], ended.json()["refunds"]) == ("refunded", [])
    assert order_state(clean_db, order_id)[:2] == ("refunded", False)
    assert refunds(clean_db) == []
    assert [event["type"] for event in sandbox.transaction(transaction)["events"]] == [
        "CHARGE_BACK"
    ]


_seeds = iter(range(100, 1000))


def order_id_seed() -> int:
    """A product no other order of the test has (each order its own goods)."""
    return next(_seeds)


async def test_attempts_sumup_does_not_know_or_reopened_are_settled_as_sumup_says(
    orders, clean_db, sandbox
):
    """Review findings 2 and 4. An attempt orders holds EXPIRED because SumUp did not know its
    checkout (close_attempt records it so) blocked the review for good (409 on every call);
    it is EXPIRED and stays so. One orders holds EXPIRED that SumUp still has open is closed
    there, not reopened here. One orders holds PAID that SumUp reports otherwise is a 409,
    nothing changed."""
    unknown = (await create(orders, order_payload(product_line(order_id_seed())))).json()
    reopened = (await create(orders, order_payload(product_line(order_id_seed())))).json()
    held_paid = (await create(orders, order_payload(product_line(order_id_seed())))).json()
    with admin_connect(clean_db, "orders") as connection:
        connection.execute(
            "UPDATE orders.payment_attempts SET status = 'EXPIRED', "
            "sumup_checkout_id = 'not-at-sumup' WHERE order_id = %s",
            (unknown["order_id"],),
        )
        connection.execute(
            "UPDATE orders.payment_attempts SET status = 'EXPIRED' WHERE order_id = %s",
            (reopened["order_id"],),
        )
        connection.execute(
            "UPDATE orders.payment_attempts SET status = 'PAID' WHERE order_id = %s",
            (held_paid["order_id"],),
        )
    for created in (unknown, reopened, held_paid):
        flag(clean_db, created["order_id"])

    first = await end_review(orders, unknown["order_id"])
    assert first.status_code == 200, first.text
    assert (first.json()["status"], first.json()["closed_checkouts"]) == ("expired", [])
    assert attempt_rows(clean_db, unknown["order_id"]) == [(1, "EXPIRED")]

    reopened_checkout = checkout_id_of(clean_db, reopened["order_id"])
    second = await end_review(orders, reopened["order_id"])
    assert second.status_code == 200, second.text
    assert second.json()["closed_checkouts"] == [reopened_checkout]
    assert sandbox.checkout(reopened_checkout)["status"] == "EXPIRED"
    assert attempt_rows(clean_db, reopened["order_id"]) == [(1, "EXPIRED")]

    paid_checkout = checkout_id_of(clean_db, held_paid["order_id"])
    refused = await end_review(orders, held_paid["order_id"])
    assert refused.status_code == 409
    assert "which orders holds PAID" in refused.json()["detail"]
    assert order_state(clean_db, held_paid["order_id"]) == ("pending", True, "amount differs")
    assert attempt_rows(clean_db, held_paid["order_id"]) == [(1, "PAID")]
    assert sandbox.checkout(paid_checkout)["status"] == "PENDING"

    again = await end_review(orders, unknown["order_id"])
    assert again.status_code == 409
    assert "its review ended already; it is expired" in again.json()["detail"]


async def review_ends_while_a_report_waits_on_sumup(
    orders, clean_db, sandbox, order_id: int, attempt: int = 1
):
    """The order's review ends (200) while a webhook of its checkout (of ``attempt``), which
    read the attempt still open, waits on SumUp's answer (204 once it is applied). The review
    is held at its refund's row by a conflicting row inserted here and rolled back once the
    webhook has read the attempt; SumUp answers the webhook in 1 s, after the review
    committed."""
    checkout_id = checkout_id_of(clean_db, order_id, attempt)
    with admin_connect(clean_db, "orders") as holder:
        holder.execute("BEGIN")
        holder.execute(
            "INSERT INTO orders.refunds (order_id, attempt_id, reason_key, reason, amount, "
            "currency) SELECT order_id, id, 'review:' || id, 'held by the test', 1, 'EUR' "
            "FROM orders.payment_attempts WHERE order_id = %s",
            (order_id,),
        )
        ending = asyncio.create_task(end_review(orders, order_id))
        # The review asked SumUp, and waits to record its refund, the order's row held.
        assert await eventually(lambda: lock_waiters(clean_db, "orders") == 1)
        sandbox.controls(api_latency=1.0)
        reported = asyncio.create_task(webhook(orders, order_id, checkout_id))
        # The webhook has read the attempt, and waits on SumUp.
        assert await eventually(lambda: sandbox.delayed_calls() == 1)
        holder.execute("ROLLBACK")
        ended = await ending
    assert ended.status_code == 200, ended.text
    assert (await reported).status_code == 204
    sandbox.controls(api_latency=0.0)


async def test_the_payment_an_order_was_paid_with_stays_its_payment_after_a_review(
    orders, clean_db, sandbox
):
    """Review L2. The order was paid with its second checkout; its first, which orders held
    EXPIRED, had been paid at SumUp too. The first review gave that payment back and recorded
    its attempt PAID. Before, "the payment a paid order was paid with" was inferred as its
    first attempt held PAID: from then on the refunded one. A second review then gave back the
    payment the order was paid with, as if it were the stray one: the buyer kept the goods and
    both payments came back. Now the order records the attempt it was paid with."""
    order_id = (await create(orders)).json()["order_id"]
    first = checkout_id_of(clean_db, order_id)
    paid_with = await stray_checkout(clean_db, sandbox, order_id, 10.00)
    sandbox.pay(paid_with)
    assert (await webhook(orders, order_id, paid_with)).status_code == 204
    assert order_state(clean_db, order_id) == ("paid", False, None)
    sandbox.pay(first)
    with admin_connect(clean_db, "orders") as connection:
        connection.execute(
            "UPDATE orders.payment_attempts SET status = 'EXPIRED' "
            "WHERE order_id = %s AND number = 1",
            (order_id,),
        )
    flag(clean_db, order_id)
    ended = await end_review(orders, order_id)
    assert ended.status_code == 200, ended.text
    assert ended.json()["refunds"] == [{"checkout_id": first, "amount": "10.00", "currency": "EUR"}]
    assert attempt_rows(clean_db, order_id) == [(1, "PAID"), (2, "PAID")]
    assert await eventually(
        lambda: refunds(clean_db) == [(order_id, True, Decimal("10.00"), "EUR", "done")]
    )

    flag(clean_db, order_id)
    again = await end_review(orders, order_id)

    assert again.status_code == 200, again.text
    assert (again.json()["status"], again.json()["refunds"]) == ("paid", [])
    assert order_state(clean_db, order_id) == ("paid", False, "amount differs")
    assert refunds(clean_db) == [(order_id, True, Decimal("10.00"), "EUR", "done")]
    assert sandbox.transaction(sandbox.checkout(paid_with)["transaction_id"])["events"] == []


async def test_a_review_of_a_flagged_order_none_of_whose_bookings_were_confirmed_refunds_it(
    clean_db, credentials, sandbox
):
    """Review 3 M1: a paid order, flagged, whose bookings events could then confirm none of
    (settlement.bookings_not_confirmed records the refund of all of it and leaves the status
    to the review, as the order is flagged). Its refund not done (SumUp refused it: failed),
    the review ended and kept the order paid, its flag cleared: "paid" for ever, all of its
    money going back. It is being refunded."""
    add_page_config(clean_db, "site", 0)
    entry_id, ticket_id = held_bookings(clean_db, user_id=1)
    payload = order_payload(
        cart_items=[],
        product_total="0",
        calendar_entries=[{"id": entry_id, "title": "Tour", "price": "2.00", "currency": "EUR"}],
        tickets=[{"id": ticket_id, "title": "Tour - adult", "price": "3.00", "currency": "EUR"}],
        calendar_total="2.00",
        ticket_total="3.00",
    )
    services = ["orders", "blog", "events"]
    async with orders_stack(clean_db, credentials, sandbox.server, services) as orders:
        created = await create(orders, payload)
        assert created.status_code == 200, created.text
        order_id = created.json()["order_id"]
        checkout_id = checkout_id_of(clean_db, order_id)
        sandbox.pay(checkout_id)
        assert (await webhook(orders, order_id, checkout_id)).status_code == 204
        confirmed = [("confirmed", order_id), ("confirmed", order_id)]
        assert await eventually(lambda: bookings_of(clean_db, entry_id, ticket_id) == confirmed)
        # What bookings_not_confirmed writes for a flagged order none of whose lines events
        # confirmed: every line unconfirmed, the refund of all of it (here refused by SumUp).
        with admin_connect(clean_db, "orders") as connection:
            connection.execute(
                "UPDATE orders.orders SET flagged = true, flag_reason = 'a person' WHERE id = %s",
                (order_id,),
            )
            connection.execute(
                "UPDATE orders.order_items SET unconfirmed_at = now() WHERE order_id = %s",
                (order_id,),
            )
            connection.execute(
                "INSERT INTO orders.refunds (order_id, attempt_id, reason_key, reason, amount, "
                "currency, status) SELECT o.id, o.paid_attempt_id, 'unconfirmed-bookings:' || "
                "o.paid_attempt_id, 'bookings that could not be confirmed', 5.00, 'EUR', "
                "'failed' FROM orders.orders o WHERE o.id = %s",
                (order_id,),
            )
        ended = await end_review(orders, order_id)
        assert ended.status_code == 200, ended.text
        assert (ended.json()["status"], order_state(clean_db, order_id)[:2]) == (
            "refund_due",
            ("refund_due", False),
        ), ended.json()


async def test_a_late_report_of_the_payment_of_an_order_refunded_for_its_bookings_gives_nothing(
    orders, clean_db, sandbox
):
    """Review 3 M2: the race of
    test_the_payment_an_order_was_paid_with_is_never_refunded_by_a_second_report_of_it (a
    report read the checkout open; pay again closed it, EXPIRED in orders, as SumUp took it;
    another report paid the order with it),
    and then events could confirm none of the order's bookings: refund_due, its refund of all
    of it done. The report read before all that applies now: it must give nothing back."""
    order_id = (await create(orders)).json()["order_id"]
    checkout_id = checkout_id_of(clean_db, order_id)
    assert (await webhook(orders, order_id, checkout_id)).status_code == 204
    sandbox.pay(checkout_id)
    sandbox.controls(api_latency=2.0)
    report = asyncio.create_task(webhook(orders, order_id, checkout_id))
    assert await eventually(lambda: reports_waiting_on_sumup(clean_db) == 1)
    # Meanwhile (as committed by the other report and events' answer): paid with the
    # checkout held EXPIRED, then refund_due with the refund of all of it (done).
    with admin_connect(clean_db, "orders") as connection:
        attempt_id = connection.execute(
            "UPDATE orders.payment_attempts SET status = 'EXPIRED' WHERE order_id = %s "
            "RETURNING id",
            (order_id,),
        ).fetchone()[0]
        connection.execute(
            "UPDATE orders.orders SET status = 'refunded', paid_at = now(), "
            "paid_attempt_id = %s WHERE id = %s",
            (attempt_id, order_id),
        )
        connection.execute(
            "INSERT INTO orders.refunds (order_id, attempt_id, reason_key, reason, amount, "
            "currency, status) VALUES (%s, %s, %s, 'bookings that could not be confirmed', "
            "10.00, 'EUR', 'done')",
            (order_id, attempt_id, f"unconfirmed-bookings:{attempt_id}"),
        )
    sandbox.controls(api_latency=0.0)
    # The refund of all of it, done at SumUp (as orders' own request would have made it).
    sandbox.refund_in_dashboard(sandbox.checkout(checkout_id)["transaction_id"], 10.00)
    assert (await report).status_code == 204
    await orders.apps["orders"].state.reconciler.quiet()
    with admin_connect(clean_db, "orders") as connection:
        rows = connection.execute(
            "SELECT reason_key, amount, status FROM orders.refunds WHERE order_id = %s ORDER BY id",
            (order_id,),
        ).fetchall()
    assert rows == [(f"unconfirmed-bookings:{attempt_id}", Decimal("10.00"), "done")]
    assert order_state(clean_db, order_id)[0] == "refunded"
