"""Ending a flagged order's review (`rose orders end-review`, orders' end-review action): the
order is settled from what SumUp says now, as one that was never paid. Before, a flagged order
had no way out but SQL by hand: pending for ever, its goods refused to every new order, passed
by reconciliation, listed by `rose orders attention` for ever."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from ops.cli.calls import review_ended_lines
from tests.conftest import admin_connect, lock_waiters
from tests.integration.orders_fixtures import (
    add_page_config,
    attempt_rows,
    checkout_id_of,
    create,
    orders_stack,
    webhook,
)
from tests.signed import internal_get, internal_post
from tests.waiting import eventually


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


async def end_review(orders, order_id: int):
    return await internal_post(orders.client("orders"), "end-review", {"order_id": order_id})


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

    # A paid order flagged by another checkout's report: what it holds was honoured.
    with admin_connect(clean_db, "orders") as connection:
        connection.execute(
            "UPDATE orders.orders SET status = 'paid', paid_at = now(), flagged = true, "
            "flag_reason = 'amount differs' WHERE id = %s",
            (pending,),
        )
    paid = await end_review(orders, pending)
    assert paid.status_code == 409
    assert "is paid" in paid.json()["detail"]
    assert order_state(clean_db, pending) == ("paid", True, "amount differs")
    assert attempt_rows(clean_db, pending) == [(1, "PENDING")]
    assert sandbox.checkout(checkout_id_of(clean_db, pending))["status"] == "PENDING"


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
        await asyncio.sleep(0.3)  # the webhook has read the attempt, and waits on SumUp
        holder.execute("ROLLBACK")
        ended = await ending
    assert ended.status_code == 200, ended.text
    assert (await reported).status_code == 204
    sandbox.controls(api_latency=0.0)
    assert await eventually(lambda: order_state(clean_db, order_id)[:2] == ("refunded", False))
    assert refunds(clean_db) == [(order_id, True, Decimal("1.00"), "EUR", "done")]
