"""Money that must go back: refunds through SumUp's refund endpoint (the official SDK against
the sandbox), recorded before the call, settled exactly once whatever SumUp answers."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from decimal import Decimal

import pytest

from apps.orders import service
from apps.orders.settlement import CHARGE_BACK_PENDING, PAYMENT_LOCK_NAMESPACE, settle_refund
from ops.cli.calls import review_ended_lines
from tests.conftest import admin_connect, lock_waiters
from tests.integration.orders_fixtures import (
    Sandbox,
    add_page_config,
    checkout_id_of,
    create,
    order_payload,
    orders_stack,
    product_line,
    webhook,
)
from tests.signed import internal_get, internal_post
from tests.waiting import eventually


@pytest.fixture
async def orders(clean_db, credentials, sandbox):
    add_page_config(clean_db, "site", 0)
    async with orders_stack(clean_db, credentials, sandbox.server) as running:
        yield running


def refunds(server) -> list[tuple]:
    with admin_connect(server, "orders") as connection:
        return connection.execute(
            "SELECT order_id, status, amount, tries FROM orders.refunds ORDER BY id"
        ).fetchall()


def status_of(server, order_id: int) -> str:
    with admin_connect(server, "orders") as connection:
        return connection.execute(
            "SELECT status FROM orders.orders WHERE id = %s", (order_id,)
        ).fetchone()[0]


async def paid_after_superseded(orders, server, sandbox: Sandbox) -> tuple[int, str]:
    """Order 1 is superseded by order 2, its checkout could not be closed, and its old tab
    pays; nobody has told orders yet. Returns the old order and its checkout."""
    sandbox.controls(deactivation_unavailable=True)
    older = (await create(orders, order_payload(product_line(1, "4.00")))).json()["order_id"]
    newer = await create(orders, order_payload(product_line(1, "4.00"), product_line(2)))
    assert newer.status_code == 200, newer.text
    checkout_id = checkout_id_of(server, older)
    sandbox.pay(checkout_id)
    return older, checkout_id


async def late_payment(orders, server, sandbox: Sandbox) -> tuple[int, str]:
    """:func:`paid_after_superseded`, reported by SumUp's webhook: money that must go back.
    Returns the old order and its SumUp transaction."""
    older, checkout_id = await paid_after_superseded(orders, server, sandbox)
    assert (await webhook(orders, older, checkout_id)).status_code == 204
    return older, sandbox.checkout(checkout_id)["transaction_id"]


def refunded_at_sumup(sandbox: Sandbox, transaction_id: str) -> float:
    events = sandbox.transaction(transaction_id)["events"]
    return sum(event["amount"] for event in events if event["type"] == "REFUND")


def owe_for_a_booking(server, amount: str) -> None:
    """A refund of ``amount`` of the (one) paid order's payment is due: a booking events could
    not confirm."""
    with admin_connect(server, "orders") as connection:
        connection.execute(
            "INSERT INTO orders.refunds (order_id, attempt_id, reason_key, reason, amount, "
            "currency) SELECT order_id, id, 'unconfirmed:test', 'a booking could not be "
            "confirmed', %s, 'EUR' FROM orders.payment_attempts",
            (amount,),
        )


def lease_passed(server) -> None:
    """The earlier request's call cannot still be on its way (its lease ran out)."""
    with admin_connect(server, "orders") as connection:
        connection.execute("UPDATE orders.refunds SET updated_at = now() - interval '1 hour'")


async def test_a_refund_whose_answer_was_lost_is_settled_by_reading_sumup_not_by_asking_again(
    orders, clean_db, sandbox
):
    sandbox.controls(refunds="lose_answer")  # SumUp refunds, then the answer is lost
    older, transaction_id = await late_payment(orders, clean_db, sandbox)
    reconciler = orders.apps["orders"].state.reconciler
    await reconciler.quiet()  # the refund was asked for right after the payment arrived
    assert refunds(clean_db)[0][1] == "requested"  # the outcome is unknown
    assert refunded_at_sumup(sandbox, transaction_id) == 4.0

    await reconciler.settle_refunds()  # within the lease: left alone (a call may be in flight)
    assert refunds(clean_db)[0][1] == "requested"
    lease_passed(clean_db)
    sandbox.controls(refunds="accept")
    await reconciler.run_once()
    [(order_id, status, amount, _)] = refunds(clean_db)
    assert (order_id, status, str(amount)) == (older, "done", "4.00")
    assert status_of(clean_db, older) == "refunded"
    assert refunded_at_sumup(sandbox, transaction_id) == 4.0  # given back once


async def test_a_late_payment_charged_back_while_its_refund_was_unknown_is_not_asked_again(
    orders, clean_db, sandbox
):
    """Review MEDIUM (charge-backs): the buyer disputed the late payment and the card issuer
    took it back while orders' refund of it had no answer. Orders counted SumUp's REFUND
    events only, asked again, was refused (nothing left to refund) and listed the refund as
    failed for a person: money the buyer had back already."""
    sandbox.controls(refunds="unavailable")
    older, transaction_id = await late_payment(orders, clean_db, sandbox)
    reconciler = orders.apps["orders"].state.reconciler
    await reconciler.quiet()
    assert refunds(clean_db)[0][1] == "requested"
    sandbox.charge_back(transaction_id)
    sandbox.controls(refunds="accept")
    lease_passed(clean_db)

    await reconciler.run_once()

    [(order_id, status, amount, tries)] = refunds(clean_db)
    assert (order_id, status, amount, tries) == (older, "done", Decimal("4.00"), 1)
    assert status_of(clean_db, older) == "refunded"
    assert refunded_at_sumup(sandbox, transaction_id) == 0  # the charge-back gave it back


async def test_a_late_payment_charged_back_before_orders_learnt_of_it_is_not_asked_for(
    orders, clean_db, sandbox
):
    """The charge-back came before the payment's report: the refund it makes is settled by
    what SumUp says went back, without a request SumUp might refuse, or pay a second time."""
    older, checkout_id = await paid_after_superseded(orders, clean_db, sandbox)
    transaction_id = sandbox.checkout(checkout_id)["transaction_id"]
    sandbox.charge_back(transaction_id)
    sandbox.controls(refunds="unavailable")  # a request would leave the refund unknown

    assert (await webhook(orders, older, checkout_id)).status_code == 204
    await orders.apps["orders"].state.reconciler.quiet()

    [(order_id, status, amount, tries)] = refunds(clean_db)
    assert (order_id, status, amount, tries) == (older, "done", Decimal("4.00"), 0)
    assert status_of(clean_db, older) == "refunded"
    assert refunded_at_sumup(sandbox, transaction_id) == 0


async def test_money_given_back_for_something_else_does_not_settle_a_refund(
    orders, clean_db, sandbox
):
    """Review H1: a person gave 3.00 of a paid 10.00 order back in SumUp's dashboard (a
    damaged product, say); then 2.00 of it must go back for a booking events could not
    confirm. SumUp's 3.00 covered 2.00, and the refund was settled done unasked: the buyer
    never got the 2.00. Only all of the payment given back settles a refund unasked."""
    order_id = (await create(orders)).json()["order_id"]
    checkout_id = checkout_id_of(clean_db, order_id)
    sandbox.pay(checkout_id)
    assert (await webhook(orders, order_id, checkout_id)).status_code == 204
    transaction_id = sandbox.checkout(checkout_id)["transaction_id"]
    sandbox.refund_in_dashboard(transaction_id, 3.0)
    owe_for_a_booking(clean_db, "2.00")

    await orders.apps["orders"].state.reconciler.settle_refunds()

    [(_, status, amount, tries)] = refunds(clean_db)
    assert (status, amount, tries) == ("done", Decimal("2.00"), 1)
    assert refunded_at_sumup(sandbox, transaction_id) == 5.0


async def test_a_refund_waits_while_another_of_its_payment_is_unknown(orders, clean_db, sandbox):
    """Review L1: two refunds of one payment, both asked with their answers lost, could not be
    told apart by SumUp's total (the money of one settled the other, which was then asked
    again). A refund never asked waits while another of its payment is unknown."""
    order_id = (await create(orders)).json()["order_id"]
    checkout_id = checkout_id_of(clean_db, order_id)
    sandbox.pay(checkout_id)
    assert (await webhook(orders, order_id, checkout_id)).status_code == 204
    transaction_id = sandbox.checkout(checkout_id)["transaction_id"]
    with admin_connect(clean_db, "orders") as connection:
        for key, amount, status, tries in (("one", 2, "requested", 1), ("two", 3, "due", 0)):
            connection.execute(
                "INSERT INTO orders.refunds (order_id, attempt_id, reason_key, reason, amount, "
                "currency, status, tries) SELECT order_id, id, %s, 'a booking could not be "
                "confirmed', %s, 'EUR', %s, %s FROM orders.payment_attempts WHERE order_id = %s",
                (key, amount, status, tries, order_id),
            )
    reconciler = orders.apps["orders"].state.reconciler

    await reconciler.settle_refunds()  # the first's request may still be on its way
    assert [row[1:] for row in refunds(clean_db)] == [
        ("requested", Decimal("2.00"), 1),
        ("due", Decimal("3.00"), 0),
    ]
    assert refunded_at_sumup(sandbox, transaction_id) == 0
    first = refund_ids(clean_db)[0]
    assert last_errors(clean_db)[1] == (
        f"waits for refund {first} of the same payment, asked with its outcome unknown"
    )

    lease_passed(clean_db)  # SumUp's total says the first was never made: asked again
    await reconciler.settle_refunds()
    assert [row[1:] for row in refunds(clean_db)] == [
        ("done", Decimal("2.00"), 2),
        ("done", Decimal("3.00"), 1),
    ]
    assert refunded_at_sumup(sandbox, transaction_id) == 5.0


def refund_ids(server) -> list[int]:
    with admin_connect(server, "orders") as connection:
        return [row[0] for row in connection.execute("SELECT id FROM orders.refunds ORDER BY id")]


def last_errors(server) -> list[str | None]:
    with admin_connect(server, "orders") as connection:
        rows = connection.execute("SELECT last_error FROM orders.refunds ORDER BY id")
        return [row[0] for row in rows]


async def paid_order_with_refunds(orders, clean_db, sandbox, *rows: tuple) -> tuple[int, str]:
    """A paid 10.00 order and refunds of its payment as ``(key, amount, status, tries)``;
    returns the order and its SumUp transaction."""
    order_id = (await create(orders)).json()["order_id"]
    checkout_id = checkout_id_of(clean_db, order_id)
    sandbox.pay(checkout_id)
    assert (await webhook(orders, order_id, checkout_id)).status_code == 204
    with admin_connect(clean_db, "orders") as connection:
        for key, amount, status, tries in rows:
            connection.execute(
                "INSERT INTO orders.refunds (order_id, attempt_id, reason_key, reason, amount, "
                "currency, status, tries) SELECT order_id, id, %s, 'a booking could not be "
                "confirmed', %s, 'EUR', %s, %s FROM orders.payment_attempts WHERE order_id = %s",
                (key, amount, status, tries, order_id),
            )
    return order_id, sandbox.checkout(checkout_id)["transaction_id"]


async def test_one_settler_at_a_time_works_on_a_payments_refunds(orders, clean_db, sandbox):
    """Second review M1: two settlers (the pass, a settle-soon task, another worker) each took
    one refund of the same payment, both saw the other not asked yet, and both asked: with
    both answers lost, SumUp's total could not tell them apart. The payment's refund lock is
    held from the look at its siblings until the request is on record."""
    _, transaction_id = await paid_order_with_refunds(
        orders, clean_db, sandbox, ("one", 2, "due", 0)
    )
    [refund_id] = refund_ids(clean_db)
    with admin_connect(clean_db, "orders") as holder:
        attempt_id = holder.execute(
            "SELECT attempt_id FROM orders.refunds WHERE id = %s", (refund_id,)
        ).fetchone()[0]
        holder.execute(
            "SELECT pg_advisory_lock(hashtext(%s), hashtext(%s))",
            (PAYMENT_LOCK_NAMESPACE, str(attempt_id)),
        )
        await orders.apps["orders"].state.reconciler.settle_refunds()
        assert [row[1:] for row in refunds(clean_db)] == [("due", Decimal("2.00"), 0)]
        holder.execute("SELECT pg_advisory_unlock_all()")
    await orders.apps["orders"].state.reconciler.settle_refunds()
    assert [row[1:] for row in refunds(clean_db)] == [("done", Decimal("2.00"), 1)]
    assert refunded_at_sumup(sandbox, transaction_id) == 2.0


async def test_a_charge_back_does_not_settle_a_request_whose_answer_was_lost(
    orders, clean_db, sandbox
):
    """Second review M2: a 2.00 refund asked with its answer lost (never made), and the card
    issuer charged 3.00 of the 10.00 payment back meanwhile. Read back after the lease, the
    3.00 covered the 2.00: done, and the buyer never got it. A charge-back is not what a
    request made: only all of the payment gone back settles it."""
    _, transaction_id = await paid_order_with_refunds(
        orders, clean_db, sandbox, ("one", 2, "requested", 1)
    )
    sandbox.charge_back(transaction_id, 3.0)
    lease_passed(clean_db)

    await orders.apps["orders"].state.reconciler.settle_refunds()

    assert [row[1:] for row in refunds(clean_db)] == [("done", Decimal("2.00"), 2)]
    assert refunded_at_sumup(sandbox, transaction_id) == 2.0


async def test_a_dashboard_refund_made_before_a_request_does_not_settle_its_lost_answer(
    orders, clean_db, sandbox
):
    """A person gave 3.00 of a paid 10.00 order back in SumUp's dashboard. Then a 2.00 refund
    was asked and its answer lost: SumUp never made it. Read back after the lease, SumUp's
    refunded 3.00 covered the 2.00, and it was settled done: the buyer never got the 2.00. Now
    a request records what SumUp had refunded of the payment right before it was made, and
    only a refund made since counts for it."""
    _, transaction_id = await paid_order_with_refunds(orders, clean_db, sandbox)
    sandbox.refund_in_dashboard(transaction_id, 3.0)
    owe_for_a_booking(clean_db, "2.00")
    sandbox.controls(refunds="unavailable")  # asked, not made, the answer an outage
    reconciler = orders.apps["orders"].state.reconciler
    await reconciler.settle_refunds()
    assert [row[1:] for row in refunds(clean_db)] == [("requested", Decimal("2.00"), 1)]
    sandbox.controls(refunds="accept")
    lease_passed(clean_db)

    await reconciler.settle_refunds()

    assert [row[1:] for row in refunds(clean_db)] == [("done", Decimal("2.00"), 2)]
    assert refunded_at_sumup(sandbox, transaction_id) == 5.0


async def test_a_request_made_after_a_dashboard_refund_is_settled_by_what_it_made(
    orders, clean_db, sandbox
):
    """The other side of the test above: SumUp made the 2.00 refund and its answer was lost.
    Read back, the 3.00 given in the dashboard before it is not counted for it, the 2.00 is:
    done, without asking again (the buyer got 5.00 back in all, once)."""
    _, transaction_id = await paid_order_with_refunds(orders, clean_db, sandbox)
    sandbox.refund_in_dashboard(transaction_id, 3.0)
    owe_for_a_booking(clean_db, "2.00")
    sandbox.controls(refunds="lose_answer")  # SumUp refunds, then the answer is lost
    reconciler = orders.apps["orders"].state.reconciler
    await reconciler.settle_refunds()
    assert [row[1:] for row in refunds(clean_db)] == [("requested", Decimal("2.00"), 1)]
    assert refunded_at_sumup(sandbox, transaction_id) == 5.0
    sandbox.controls(refunds="accept")
    lease_passed(clean_db)

    await reconciler.settle_refunds()

    assert [row[1:] for row in refunds(clean_db)] == [("done", Decimal("2.00"), 1)]
    assert refunded_at_sumup(sandbox, transaction_id) == 5.0


async def test_a_refund_in_a_status_orders_does_not_know_is_not_taken_as_money_back(
    orders, clean_db, sandbox
):
    """Third review L3: every refund event that was not FAILED counted as money back, whatever
    its status (the SDK's type is open). A person's 10.00 refund of a paid 10.00 order that
    SumUp shows CANCELLED settled a 2.00 refund done unasked, all of the payment "gone back":
    the buyer never got the 2.00. Neither money back nor none: the refund waits for a person,
    its last_error naming the status, and SumUp is asked nothing."""
    order_id, transaction_id = await paid_order_with_refunds(orders, clean_db, sandbox)
    sandbox.refund_in_dashboard(transaction_id, 10.0, status="CANCELLED")
    owe_for_a_booking(clean_db, "2.00")

    await orders.apps["orders"].state.reconciler.settle_refunds()

    assert [row[1:] for row in refunds(clean_db)] == [("due", Decimal("2.00"), 0)]
    with admin_connect(clean_db, "orders") as connection:
        [last_error] = connection.execute("SELECT last_error FROM orders.refunds").fetchone()
    assert "a refund of the payment is CANCELLED at SumUp" in last_error
    assert [
        (event["status"], event["amount"])
        for event in sandbox.transaction(transaction_id)["events"]
    ] == [("CANCELLED", 10.0)]
    assert order_id in [
        row["order_id"]
        for row in (await internal_get(orders.client("orders"), "attention")).json()["orders"]
    ]


async def test_a_lost_request_shown_in_an_unknown_status_is_not_settled_by_another_refund(
    orders, clean_db, sandbox
):
    """Fourth review L-3: a 2.00 refund asked with its answer lost, which SumUp shows in a
    status orders does not know (CANCELLED here); then a person gave 2.00 back in the
    dashboard. Read back, that 2.00 was counted for the request, settled done: it may well be
    the request that did not go through. The refund waits for a person."""
    _, transaction_id = await paid_order_with_refunds(orders, clean_db, sandbox)
    owe_for_a_booking(clean_db, "2.00")
    sandbox.controls(refunds="lose_answer", refund_event_status="CANCELLED")
    reconciler = orders.apps["orders"].state.reconciler
    await reconciler.settle_refunds()
    assert [row[1:] for row in refunds(clean_db)] == [("requested", Decimal("2.00"), 1)]
    sandbox.controls(refunds="accept", refund_event_status="SUCCESSFUL")
    sandbox.refund_in_dashboard(transaction_id, 2.0)
    lease_passed(clean_db)

    await reconciler.settle_refunds()

    assert [row[1:] for row in refunds(clean_db)] == [("requested", Decimal("2.00"), 1)]
    with admin_connect(clean_db, "orders") as connection:
        [last_error] = connection.execute("SELECT last_error FROM orders.refunds").fetchone()
    assert "a refund of the payment is CANCELLED at SumUp" in last_error


async def test_a_requests_lease_runs_from_the_request_not_from_the_reads_before_it(
    orders, clean_db, sandbox
):
    """Third review M3: the time a request was made (``updated_at``, from which its lease
    runs) was the start of the settler's transaction, before it read SumUp (the checkout, the
    transaction's money): with SumUp slow, the lease could run out while the request was still
    on its way, and another settler ask again. It is the moment it is recorded, after those
    reads: later than a moment taken while one of them was held."""
    await paid_order_with_refunds(orders, clean_db, sandbox, ("one", 2, "due", 0))
    sandbox.controls(refunds="unavailable", api_latency=1.0)
    settling = asyncio.create_task(orders.apps["orders"].state.reconciler.settle_refunds())
    assert await eventually(lambda: sandbox.delayed_calls() == 1)  # a read, in its transaction
    with admin_connect(clean_db, "orders") as connection:
        during_a_read = connection.execute("SELECT clock_timestamp()").fetchone()[0]
    await settling
    sandbox.controls(api_latency=0.0)
    with admin_connect(clean_db, "orders") as connection:
        status, requested_at = connection.execute(
            "SELECT status, updated_at FROM orders.refunds"
        ).fetchone()
    assert status == "requested"
    assert requested_at > during_a_read


async def test_a_refund_waits_while_a_charge_back_is_pending(orders, clean_db, sandbox):
    """Review M1: a dispute the card issuer has not decided yet. Counted as given back, the
    late payment's refund was settled, and the buyer got nothing if the merchant won it; asked
    for, the money could go back twice if the buyer won. It waits, named."""
    older, checkout_id = await paid_after_superseded(orders, clean_db, sandbox)
    transaction_id = sandbox.checkout(checkout_id)["transaction_id"]
    sandbox.charge_back(transaction_id, pending=True)

    assert (await webhook(orders, older, checkout_id)).status_code == 204
    reconciler = orders.apps["orders"].state.reconciler
    await reconciler.quiet()
    await reconciler.settle_refunds()

    [(order_id, status, amount, tries)] = refunds(clean_db)
    assert (order_id, status, amount, tries) == (older, "due", Decimal("4.00"), 0)
    assert status_of(clean_db, older) == "refund_due"
    assert refunded_at_sumup(sandbox, transaction_id) == 0
    listed = (await internal_get(orders.client("orders"), "attention")).json()["orders"]
    assert "charge-back of the payment is pending" in listed[0]["refunds"][0]["last_error"]


def given_back_at_sumup(sandbox: Sandbox, transaction_id: str) -> list[tuple]:
    """(type, status, amount) of every event of the transaction that gives money back."""
    events = sandbox.transaction(transaction_id)["events"]
    return [(event["type"], event["status"], event["amount"]) for event in events]


async def waiting_on_a_pending_charge_back(orders, server, sandbox: Sandbox) -> tuple[int, str]:
    """A late payment of 4.00 whose buyer disputed it first: its refund waits, never asked, on
    the charge-back the card issuer has not decided. Returns the order and its transaction."""
    older, checkout_id = await paid_after_superseded(orders, server, sandbox)
    transaction_id = sandbox.checkout(checkout_id)["transaction_id"]
    sandbox.charge_back(transaction_id, pending=True)
    assert (await webhook(orders, older, checkout_id)).status_code == 204
    reconciler = orders.apps["orders"].state.reconciler
    await reconciler.quiet()
    await reconciler.settle_refunds()
    assert refunds(server) == [(older, "due", Decimal("4.00"), 0)]
    assert last_errors(server) == [CHARGE_BACK_PENDING]
    return older, transaction_id


async def test_a_refund_waiting_on_a_charge_back_decided_for_the_buyer_is_settled_unasked(
    orders, clean_db, sandbox
):
    """The card issuer decides the dispute for the buyer: all of the payment went back by
    the charge-back. The waiting refund is done without asking SumUp (asked, the money would
    go back twice, or the request be refused and left failed for a person)."""
    older, transaction_id = await waiting_on_a_pending_charge_back(orders, clean_db, sandbox)

    sandbox.decide_charge_back(transaction_id, "SUCCESSFUL")
    await orders.apps["orders"].state.reconciler.settle_refunds()

    assert refunds(clean_db) == [(older, "done", Decimal("4.00"), 0)]
    assert last_errors(clean_db) == [None]
    assert status_of(clean_db, older) == "refunded"
    assert given_back_at_sumup(sandbox, transaction_id) == [("CHARGE_BACK", "SUCCESSFUL", 4.0)]
    assert (await internal_get(orders.client("orders"), "attention")).json()["orders"] == []


async def test_a_refund_waiting_on_a_charge_back_decided_for_the_merchant_is_asked(
    orders, clean_db, sandbox
):
    """The card issuer decides the dispute for the merchant: nothing went back by it. The
    waiting refund is asked for now, and the money goes back once."""
    older, transaction_id = await waiting_on_a_pending_charge_back(orders, clean_db, sandbox)

    sandbox.decide_charge_back(transaction_id, "FAILED")
    reconciler = orders.apps["orders"].state.reconciler
    await reconciler.settle_refunds()
    await reconciler.run_once()  # settled: nothing more is asked

    assert refunds(clean_db) == [(older, "done", Decimal("4.00"), 1)]
    assert last_errors(clean_db) == [None]
    assert status_of(clean_db, older) == "refunded"
    assert given_back_at_sumup(sandbox, transaction_id) == [
        ("CHARGE_BACK", "FAILED", 4.0),
        ("REFUND", "REFUNDED", 4.0),
    ]


async def test_a_request_unknown_waiting_on_a_charge_back_decided_for_the_merchant_is_asked_once(
    orders, clean_db, sandbox
):
    """A refund asked with no answer (SumUp down: never made), then the buyer disputed the
    payment. Read back after the lease, it waits on the charge-back, still requested; decided
    for the merchant, SumUp's refunds say the request was never made: asked again, once."""
    sandbox.controls(refunds="unavailable")
    older, transaction_id = await late_payment(orders, clean_db, sandbox)
    reconciler = orders.apps["orders"].state.reconciler
    await reconciler.quiet()
    assert refunds(clean_db) == [(older, "requested", Decimal("4.00"), 1)]
    sandbox.charge_back(transaction_id, pending=True)
    sandbox.controls(refunds="accept")
    lease_passed(clean_db)
    await reconciler.settle_refunds()
    assert refunds(clean_db) == [(older, "requested", Decimal("4.00"), 1)]
    assert last_errors(clean_db) == [CHARGE_BACK_PENDING]

    sandbox.decide_charge_back(transaction_id, "FAILED")
    lease_passed(clean_db)
    await reconciler.settle_refunds()

    assert refunds(clean_db) == [(older, "done", Decimal("4.00"), 2)]
    assert status_of(clean_db, older) == "refunded"
    assert given_back_at_sumup(sandbox, transaction_id) == [
        ("CHARGE_BACK", "FAILED", 4.0),
        ("REFUND", "REFUNDED", 4.0),
    ]


LOOKUP_REFUSALS = pytest.mark.parametrize(
    ("refusal", "answer"),
    [
        ("not_found", "HTTP 404: Transaction "),
        # SumUp's message, though the SDK types no 403 body for this call.
        ("forbidden", "HTTP 403: The API key is not allowed to read transaction"),
    ],
)


@LOOKUP_REFUSALS
async def test_a_refund_never_asked_is_asked_when_sumup_will_not_show_its_transaction(
    orders, clean_db, sandbox, caplog, refusal, answer
):
    """SumUp refuses to show the transaction (a 4xx) when orders looks, before its first
    request, at what went back already: the refund is asked as before that look existed, and
    the money goes back once."""
    sandbox.controls(transaction_lookups=refusal)
    with caplog.at_level(logging.WARNING, logger="rose.orders"):
        older, transaction_id = await late_payment(orders, clean_db, sandbox)
        await orders.apps["orders"].state.reconciler.quiet()

    assert refunds(clean_db) == [(older, "done", Decimal("4.00"), 1)]
    assert status_of(clean_db, older) == "refunded"
    [unread] = [
        record.getMessage()
        for record in caplog.records
        if "unread before its refund" in record.getMessage()
    ]
    assert answer in unread
    sandbox.controls(transaction_lookups="show")
    assert given_back_at_sumup(sandbox, transaction_id) == [("REFUND", "REFUNDED", 4.0)]


@LOOKUP_REFUSALS
async def test_a_request_whose_answer_was_lost_fails_for_a_person_when_sumup_hides_its_transaction(
    orders, clean_db, sandbox, refusal, answer
):
    """2.00 of a paid 10.00 order asked back, made, its answer lost; then SumUp refuses to show
    the transaction (a 4xx). Whether the request went through cannot be learnt, so it is never
    asked again (SumUp would pay it a second time: 8.00 is left to refund); it is failed for a
    person, SumUp's answer in its last_error, and listed."""
    sandbox.controls(refunds="lose_answer")
    order_id, transaction_id = await paid_order_with_refunds(
        orders, clean_db, sandbox, ("one", 2, "due", 0)
    )
    reconciler = orders.apps["orders"].state.reconciler
    await reconciler.settle_refunds()
    assert refunds(clean_db) == [(order_id, "requested", Decimal("2.00"), 1)]
    sandbox.controls(refunds="accept", transaction_lookups=refusal)
    lease_passed(clean_db)

    await reconciler.settle_refunds()

    assert refunds(clean_db) == [(order_id, "failed", Decimal("2.00"), 1)]
    [last_error] = last_errors(clean_db)
    assert last_error is not None
    assert last_error.startswith("SumUp would not show the transaction: ")
    assert f"SumUp refused the request: {answer}" in last_error
    listed = (await internal_get(orders.client("orders"), "attention")).json()["orders"]
    assert [(row["order_id"], row["refunds"][0]["status"]) for row in listed] == [
        (order_id, "failed")
    ]
    assert listed[0]["refunds"][0]["last_error"] == last_error
    await reconciler.run_once()  # a failed refund is not asked again behind a person's back
    assert refunds(clean_db) == [(order_id, "failed", Decimal("2.00"), 1)]
    sandbox.controls(transaction_lookups="show")
    assert given_back_at_sumup(sandbox, transaction_id) == [("REFUND", "REFUNDED", 2.0)]


async def test_sumup_down_for_a_refund_retries_it_next_pass(orders, clean_db, sandbox):
    sandbox.controls(refunds="unavailable")
    _, transaction_id = await late_payment(orders, clean_db, sandbox)
    reconciler = orders.apps["orders"].state.reconciler
    await reconciler.quiet()
    assert refunds(clean_db)[0][1] == "requested"
    assert refunded_at_sumup(sandbox, transaction_id) == 0
    sandbox.controls(refunds="accept")
    lease_passed(clean_db)
    await reconciler.run_once()
    assert refunds(clean_db)[0][1:2] == ("done",)
    assert refunded_at_sumup(sandbox, transaction_id) == 4.0


async def test_a_refused_refund_waits_for_a_person_and_is_listed(orders, clean_db, sandbox):
    sandbox.controls(refunds="refuse")
    older, _ = await late_payment(orders, clean_db, sandbox)
    reconciler = orders.apps["orders"].state.reconciler
    await reconciler.quiet()
    [(_, status, amount, tries)] = refunds(clean_db)
    assert (status, tries) == ("failed", 1)
    listed = (await internal_get(orders.client("orders"), "attention")).json()["orders"]
    assert [(row["order_id"], row["status"]) for row in listed] == [(older, "refund_due")]
    assert listed[0]["refunds"][0]["status"] == "failed"
    assert "refused" in listed[0]["refunds"][0]["last_error"]
    await reconciler.run_once()  # a failed refund is not retried behind a person's back
    assert refunds(clean_db)[0][1:] == ("failed", amount, 1)


async def test_a_late_payment_is_found_while_sumup_still_cannot_close_checkouts(
    orders, clean_db, sandbox
):
    """Found by the money property: a superseded order's checkout could not be closed, its old
    tab paid, the webhook was lost, and SumUp still refuses to deactivate checkouts when the
    pass runs. The pass must still learn of the money (by reading the checkout) and give it back."""
    older, checkout_id = await paid_after_superseded(orders, clean_db, sandbox)  # no webhook
    reconciler = orders.apps["orders"].state.reconciler
    await reconciler.quiet()
    await reconciler.run_once()
    await reconciler.quiet()
    with admin_connect(clean_db, "orders") as connection:
        attempt_status = connection.execute(
            "SELECT status FROM orders.payment_attempts WHERE sumup_checkout_id = %s",
            (checkout_id,),
        ).fetchone()[0]
    assert attempt_status == "PAID"
    assert status_of(clean_db, older) == "refunded"
    [(order_id, status, amount, _)] = refunds(clean_db)
    assert (order_id, status, str(amount)) == (older, "done", "4.00")


def set_site_key(server, api_key: str | None) -> None:
    with admin_connect(server, "blog") as connection:
        connection.execute(
            "UPDATE blog.page_configs SET sumup_api_key = %s "
            "WHERE container_type = 'site' AND container_id = 0",
            (api_key,),
        )


async def test_a_refund_whose_merchant_lost_its_key_waits_listed_and_goes_back_once_restored(
    orders, clean_db, sandbox, caplog
):
    """Audit s20 H1, money going back: the site's key is removed after a late payment was
    learnt (the webhook read it with the key orders remembered), and blog keeps no retired key
    for it either. The refund cannot be asked for: it stays due (no traceback, no 'failed'),
    the order is listed with what to do, and the refund is made once the key is back."""
    sandbox.controls(deactivation_unavailable=True)
    older = (await create(orders, order_payload(product_line(1, "4.00")))).json()["order_id"]
    newer = await create(orders, order_payload(product_line(1, "4.00"), product_line(2)))
    assert newer.status_code == 200, newer.text
    checkout_id = checkout_id_of(clean_db, older)
    sandbox.pay(checkout_id)
    set_site_key(clean_db, None)
    # Nor does blog's history have it (kept past its time, say): the refund cannot be asked for.
    with admin_connect(clean_db, "blog") as connection:
        connection.execute("DELETE FROM blog.retired_sumup_keys")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rose.orders"):
        assert (await webhook(orders, older, checkout_id)).status_code == 204
        reconciler = orders.apps["orders"].state.reconciler
        await reconciler.quiet()
        report = await reconciler.run_once()
    assert refunds(clean_db) == [(older, "due", Decimal("4.00"), 0)]
    assert status_of(clean_db, older) == "refund_due"
    assert report.failures == 0
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    listed = (await internal_get(orders.client("orders"), "attention")).json()["orders"]
    what = {row["order_id"]: row["merchant_key_missing"] for row in listed}
    assert what[older] is not None
    assert what[older].startswith(f"order {older}: its SumUp merchant ")
    assert "restore the key" in what[older]

    set_site_key(clean_db, "sup_sk_sandbox_rose")
    await reconciler.run_once()
    assert refunds(clean_db)[0][:2] == (older, "done")
    assert status_of(clean_db, older) == "refunded"


async def test_a_late_payment_names_the_order_that_replaced_it_whenever_that_committed(
    orders, clean_db, sandbox
):
    """Audit s20 L6: the buyer read "paid after order None replaced it". The webhook reads the
    order, asks SumUp, then locks the order; a supersede that committed in between left the
    reason naming the order as first read (not yet replaced). Here the webhook's own steps
    run with the supersede between them: its read, a checkout again, then the rest."""
    sandbox.controls(deactivation_unavailable=True)  # the older tab stays open and pays
    older = (await create(orders, order_payload(product_line(1, "4.00")))).json()["order_id"]
    checkout_id = checkout_id_of(clean_db, older)
    app = orders.apps["orders"]
    runtime = app.state.runtime
    async with app.state.platform.sessionmaker() as session:
        found = await service.attempt_for_checkout(session, older, checkout_id)
        assert found is not None
        order, attempt = found  # as the webhook first reads them: older is pending
        newer = await create(orders, order_payload(product_line(1, "4.00"), product_line(2)))
        assert newer.status_code == 200, newer.text
        await app.state.reconciler.quiet()  # closing the older tab failed, nothing applied
        assert status_of(clean_db, older) == "superseded"
        sandbox.pay(checkout_id)
        applied = await service.refresh_reported_attempt(
            session, order, attempt, runtime.gateway, runtime.recent_accounts
        )
        await session.commit()
    assert applied is not None
    assert applied.refund_due
    with admin_connect(clean_db, "orders") as connection:
        [(reason,)] = connection.execute(
            "SELECT reason FROM orders.refunds WHERE order_id = %s", (older,)
        ).fetchall()
    assert reason == f"paid after order {newer.json()['order_id']} replaced it"


async def test_a_refund_owed_after_the_key_was_removed_is_made_with_the_retired_key(
    orders, clean_db, sandbox
):
    """The closing note's defect, money going back: the site's key is removed (blog's own
    action) after a late payment was learnt. Nobody restores it: the refund is asked for with
    the key blog retired, SumUp gives the money back once, and nothing is listed."""
    sandbox.controls(deactivation_unavailable=True)
    older = (await create(orders, order_payload(product_line(1, "4.00")))).json()["order_id"]
    newer = await create(orders, order_payload(product_line(1, "4.00"), product_line(2)))
    assert newer.status_code == 200, newer.text
    checkout_id = checkout_id_of(clean_db, older)
    sandbox.pay(checkout_id)
    removed = await internal_post(
        orders.client("blog"),
        "update-page-config",
        {"container_type": "site", "container_id": 0, "sumup_api_key": None},
    )
    assert removed.status_code == 200, removed.text
    assert removed.json()["sumup_configured"] is False
    assert (await webhook(orders, older, checkout_id)).status_code == 204
    reconciler = orders.apps["orders"].state.reconciler
    await reconciler.quiet()
    report = await reconciler.run_once()
    await reconciler.quiet()
    assert report.failures == 0
    assert refunds(clean_db)[0][:2] == (older, "done")
    assert status_of(clean_db, older) == "refunded"
    transaction_id = sandbox.checkout(checkout_id)["transaction_id"]
    assert refunded_at_sumup(sandbox, transaction_id) == 4.0
    assert (await internal_get(orders.client("orders"), "attention")).json()["orders"] == []


async def test_a_refund_settling_while_a_stale_recheck_applies_the_late_payment_does_not_deadlock(
    orders, clean_db, sandbox
):
    """Audit s21 F4: the return page's recheck of a late-paid superseded order, read before the
    webhook committed the payment, applies it again (it locks the order, then inserts the
    refund, which is already there: ON CONFLICT waits for whatever writes that refund's row),
    while the refund is being settled (its row marked done, then the order made 'refunded').
    The settling wrote the refund before locking the order: each waited on the other, and
    PostgreSQL killed one (DeadlockDetected: a 500 to the buyer). Here the test holds the order's
    row so that the recheck queues on it first and the settling second, then lets both go."""
    sandbox.controls(deactivation_unavailable=True, refunds="unavailable")
    older = (await create(orders, order_payload(product_line(1, "4.00")))).json()["order_id"]
    newer = await create(orders, order_payload(product_line(1, "4.00"), product_line(2)))
    assert newer.status_code == 200, newer.text
    app = orders.apps["orders"]
    runtime = app.state.runtime
    await app.state.reconciler.quiet()  # closing the older tab failed: it stays open
    checkout_id = checkout_id_of(clean_db, older)
    async with runtime.maker() as page, runtime.maker() as settling:
        stale = await service.load_order(page, older)  # as a return page read it: tab open
        assert stale is not None
        assert [attempt.status for attempt in stale.attempts] == ["PENDING"]
        sandbox.pay(checkout_id)
        assert (await webhook(orders, older, checkout_id)).status_code == 204
        await app.state.reconciler.quiet()  # SumUp could not be asked: the refund waits
        [(_, status, _, _)] = refunds(clean_db)
        assert status == "requested"
        lease_passed(clean_db)
        sandbox.controls(refunds="accept")
        refund_id = settling_refund_id(clean_db, older)

        with admin_connect(clean_db, "orders") as holder:
            holder.execute("BEGIN")
            holder.execute("SELECT 1 FROM orders.orders WHERE id = %s FOR UPDATE", (older,))
            recheck = asyncio.create_task(rechecked_as_the_page_does(page, stale, runtime))
            assert await eventually(lambda: lock_waiters(clean_db, "orders") == 1)
            settle = asyncio.create_task(
                settle_refund(settling, refund_id, runtime.gateway, timedelta(seconds=1))
            )
            assert await eventually(lambda: lock_waiters(clean_db, "orders") == 2)
            holder.execute("COMMIT")
            rechecked, settled = await asyncio.gather(recheck, settle, return_exceptions=True)
    assert not isinstance(rechecked, BaseException), repr(rechecked)
    assert not isinstance(settled, BaseException), repr(settled)
    assert rechecked is not None
    assert (rechecked.order_status, rechecked.refund_due) == ("refund_due", False)
    assert settled is not None
    assert settled.status == "done"
    assert refunds(clean_db) == [(older, "done", Decimal("4.00"), 2)]
    assert status_of(clean_db, older) == "refunded"
    assert refunded_at_sumup(sandbox, sandbox.checkout(checkout_id)["transaction_id"]) == 4.0


async def rechecked_as_the_page_does(session, order, runtime) -> service.Applied | None:
    applied = await service.recheck(session, order, runtime)
    await session.commit()
    return applied


def settling_refund_id(server, order_id: int) -> int:
    with admin_connect(server, "orders") as connection:
        return connection.execute(
            "SELECT id FROM orders.refunds WHERE order_id = %s", (order_id,)
        ).fetchone()[0]


@pytest.mark.parametrize("trouble", ["unavailable", "revoked"])
async def test_refunds_that_wait_on_sumup_are_one_warning_a_pass(
    orders, clean_db, sandbox, caplog, trouble
):
    """Refunds SumUp cannot make now (down, or refusing the merchant's key, revoked in its
    dashboard) waited with one warning per refund per pass: a long outage or a revoked key
    filled the log with one line for every refund owed, every pass. As reconciliation's orders,
    they are one warning a pass (one per merchant for a refused key) naming their orders."""
    sandbox.controls(refunds="unavailable")
    first, _ = await late_payment(orders, clean_db, sandbox)
    second, _ = await late_payment(orders, clean_db, sandbox)
    reconciler = orders.apps["orders"].state.reconciler
    await reconciler.quiet()
    assert [row[:2] for row in refunds(clean_db)] == [(first, "requested"), (second, "requested")]
    lease_passed(clean_db)
    if trouble == "revoked":
        sandbox.controls(refunds="accept", revoked_api_keys=["sup_sk_sandbox_rose"])
    else:
        sandbox.controls(refunds="accept", api_unavailable=True)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rose.orders"):
        await reconciler.run_once()

    said = [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("rose.orders") and "refund" in record.getMessage()
    ]
    waiting = [message for message in said if "left for the next reconciliation pass" in message]
    assert len(waiting) == 1, said
    assert (
        f"2 refunds left for the next reconciliation pass, of orders {first}, {second}"
        in (waiting[0])
    ), waiting
    assert not [message for message in said if " waits: " in message], said
    assert [row[:2] for row in refunds(clean_db)] == [(first, "requested"), (second, "requested")]


@pytest.mark.parametrize("asked", [False, True])
async def test_a_refund_waits_out_a_revoked_key_and_is_made_once_it_is_back(
    orders, clean_db, sandbox, asked
):
    """The merchant's key revoked in SumUp's dashboard (SumUp answers 401 to everything): a
    refund never asked was asked, refused 401, and failed for good (review M1); one requested
    with its answer lost was read back, refused 401, and failed for good. A person was told to
    give the money back by hand, though a new key would have let orders do it. It waits for
    the key now, as every other request of a refused key does, its last error naming SumUp's
    refusal (not an older one), and once SumUp takes the key again it is made, once."""
    if asked:
        sandbox.controls(refunds="unavailable")
    _, transaction_id = await paid_order_with_refunds(
        orders, clean_db, sandbox, ("unconfirmed:test", "4.00", "due", 0)
    )
    sandbox.controls(refunds="accept", revoked_api_keys=["sup_sk_sandbox_rose"])
    if asked:
        sandbox.controls(refunds="unavailable", revoked_api_keys=[])
        reconciler = orders.apps["orders"].state.reconciler
        await reconciler.settle_refunds()
        assert refunds(clean_db)[0][1] == "requested"
        lease_passed(clean_db)
        sandbox.controls(refunds="accept", revoked_api_keys=["sup_sk_sandbox_rose"])
    reconciler = orders.apps["orders"].state.reconciler
    await reconciler.settle_refunds()
    assert refunds(clean_db)[0][1] in ("due", "requested")
    [error] = last_errors(clean_db)
    assert error is not None
    assert "401" in error, error

    sandbox.controls(revoked_api_keys=[])
    lease_passed(clean_db)
    await reconciler.settle_refunds()
    assert refunds(clean_db)[0][1] == "done"
    assert refunded_at_sumup(sandbox, transaction_id) == 4.0


async def test_a_review_names_the_refunds_of_the_order_still_on_their_way(
    orders, clean_db, sandbox
):
    """Probe (money): end-review of a refund_due order whose refund was asked with its answer
    lost printed only "it is refund_due now", nothing of that refund: the person could not
    tell what the order still waits for. Its answer names it (``still_going_back``), and so
    does the command's output."""
    sandbox.controls(refunds="unavailable")
    older, _ = await late_payment(orders, clean_db, sandbox)
    await orders.apps["orders"].state.reconciler.quiet()
    assert refunds(clean_db)[0][:2] == (older, "requested")
    with admin_connect(clean_db, "orders") as connection:
        connection.execute(
            "UPDATE orders.orders SET flagged = true, flag_reason = 'looked at' WHERE id = %s",
            (older,),
        )
    ended = await internal_post(orders.client("orders"), "end-review", {"order_id": older})
    assert ended.status_code == 200, ended.text
    assert ended.json()["status"] == "refund_due"
    assert ended.json()["refunds"] == []
    checkout_id = checkout_id_of(clean_db, older)
    assert ended.json()["still_going_back"] == [
        {"checkout_id": checkout_id, "amount": "4.00", "currency": "EUR"}
    ]
    assert any(
        line.startswith(f"  still going back: 4.00 EUR of checkout {checkout_id}")
        for line in review_ended_lines(ended.json())
    ), review_ended_lines(ended.json())
