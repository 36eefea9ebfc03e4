"""Webhooks with the SumUp account orders read lately (RecentMerchantAccounts): no FDW read when
the key is known, a key SumUp refuses read again from blog at once, and create-order, which
chooses where money goes, reading blog every time."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from apps.common.observability import TextFormatter, TraceIdFilter
from apps.orders.models import Order, PaymentAttempt
from apps.orders.payments import MerchantAccount
from apps.orders.settlement import MerchantAccounts, close_attempt
from apps.sumup_sandbox import DEFAULT_MERCHANT_CODE
from apps.sumup_sandbox.app import DEFAULT_API_KEY
from apps.sumup_sandbox.server import BackgroundSandbox
from ops.cli.calls import attention_rows
from ops.db.provision import APP_SETTINGS
from tests.conftest import admin_connect
from tests.integration.blog_fixtures import provider_unreachable
from tests.integration.orders_fixtures import (
    Sandbox,
    add_page_config,
    checkout_id_of,
    create,
    order_payload,
    order_rows,
    orders_stack,
    product_line,
    sandbox_state,
    webhook,
)
from tests.signed import internal_get, internal_post

OTHER_MERCHANT = "MOTHER2"
OTHER_KEY = "sup_sk_other_merchant"
OLD_KEY = "sup_sk_rotated_out"


def key_gone_advice(config_id: int, merchant: str) -> str:
    """What the attention listing tells a person to do when the page no longer names the order's
    merchant (another merchant, none, or the config deleted) and blog keeps no key of it."""
    return (
        f"a payment may be waiting on SumUp: give blog a key of merchant {merchant} (any API "
        "key of it, a new one from its SumUp dashboard if the old one is lost) as a retired "
        "one, as blog's owner: INSERT INTO blog.retired_sumup_keys (page_config_id, "
        f"sumup_merchant_code, sumup_api_key) VALUES ({config_id}, '{merchant}', '<key>'); "
        "orders then settles, closes or refunds it. Without any key of that merchant, look "
        "the order's checkouts up in its SumUp dashboard (refund or cancel them there): the "
        "order stays pending and listed here"
    )


NEW_KEY = "sup_sk_rotated_in"


async def bounded(request):  # a hang guard, not a measurement
    return await asyncio.wait_for(request, timeout=60)


async def while_held(server, database: str, statement: str, request, *params):
    """``request``'s answer while another transaction of ``database`` holds what ``statement``
    locks (released after the answer, however it ends)."""
    with admin_connect(server, database) as holder:
        holder.autocommit = False
        holder.execute(statement, params or None)
        try:
            return await bounded(request)
        finally:
            holder.rollback()


LOCK_PAGE_CONFIGS = "LOCK TABLE blog.page_configs IN ACCESS EXCLUSIVE MODE"


def set_site_key(server, api_key: str | None) -> None:
    with admin_connect(server, "blog") as connection:
        connection.execute(
            "UPDATE blog.page_configs SET sumup_api_key = %s "
            "WHERE container_type = 'site' AND container_id = 0",
            (api_key,),
        )


@pytest.fixture
def two_key_sandbox():
    """A sandbox that accepts two keys of one merchant (a key being rotated)."""
    keys = {OLD_KEY: DEFAULT_MERCHANT_CODE, NEW_KEY: DEFAULT_MERCHANT_CODE}
    with BackgroundSandbox(api_keys=keys, state=sandbox_state()) as server:
        yield Sandbox(server)


async def test_a_webhook_settles_a_payment_while_blog_is_locked_with_the_key_orders_just_used(
    clean_db, credentials, sandbox
):
    """create-order's key, which SumUp just took, is the one its webhook uses: while blog's
    page configs are locked (an FDW read would wait out its bound and answer 503), the webhook
    marks the order paid and queues its effects."""
    add_page_config(clean_db, "site", 0)
    async with orders_stack(clean_db, credentials, sandbox.server) as orders:
        order_id = (await create(orders)).json()["order_id"]
        checkout_id = checkout_id_of(clean_db, order_id)
        sandbox.pay(checkout_id)
        settled = await while_held(
            clean_db, "blog", LOCK_PAGE_CONFIGS, webhook(orders, order_id, checkout_id)
        )
        assert settled.status_code == 204, settled.text
        assert order_rows(clean_db)[0][:2] == (order_id, "paid")
        # create-order still reads blog every time: it is where the merchant is chosen.
        refused = await while_held(
            clean_db,
            "blog",
            LOCK_PAGE_CONFIGS,
            create(orders, order_payload(product_line(7, "2.00"))),
        )
        assert refused.status_code == 503, refused.text
        assert "blog" in refused.json()["detail"]
        assert len(order_rows(clean_db)) == 1


async def soon(condition, within: float = 10.0) -> bool:
    """Whether ``condition()`` holds within ``within`` seconds (a wait bound, not a measure)."""
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_the_first_webhook_of_a_checkout_this_process_opened_asks_sumup_at_once(
    clean_db, credentials, sandbox, caplog
):
    """Issue #14: create-order remembers the checkout it opened with the key SumUp took, and
    the first webhook naming it sends its GET to SumUp while it reads the attempt; the answer
    is used only for that attempt, open, of that page config and merchant. Shown with orders'
    attempts locked: SumUp is asked before the read can finish, and the payment is applied
    once it does. Only the first: a later webhook of the same checkout (repeated or forged)
    finds it settled and asks SumUp nothing, as before."""
    caplog.set_level(logging.INFO, logger="sumup-sandbox")
    add_page_config(clean_db, "site", 0)
    async with orders_stack(clean_db, credentials, sandbox.server) as orders:
        order_id = (await create(orders)).json()["order_id"]
        checkout_id = checkout_id_of(clean_db, order_id)
        sandbox.pay(checkout_id)
        asked_sumup = f"GET /v0.1/checkouts/{checkout_id} "
        caplog.clear()
        with admin_connect(clean_db, "orders") as holder:
            holder.autocommit = False
            holder.execute("LOCK TABLE orders.payment_attempts IN ACCESS EXCLUSIVE MODE")
            pending = asyncio.ensure_future(webhook(orders, order_id, checkout_id))
            try:
                asked_while_reading = await soon(lambda: asked_sumup in caplog.text)
            finally:
                holder.rollback()
        settled = await bounded(pending)
        assert asked_while_reading, "SumUp was asked only after the attempt was read"
        assert settled.status_code == 204, settled.text
        assert order_rows(clean_db)[0][:2] == (order_id, "paid")
        assert caplog.text.count(asked_sumup) == 1

        caplog.clear()
        again = await bounded(webhook(orders, order_id, checkout_id))
        assert again.status_code == 204, again.text
        assert asked_sumup not in caplog.text


async def test_a_webhook_after_the_return_page_read_the_checkout_reads_no_sumup_early(
    clean_db, credentials, sandbox, caplog
):
    """The buyer's return page usually reads the checkout first (and settles the payment): its
    webhook then must not read SumUp early, which would be a second GET of a settled
    checkout for nothing. It finds the attempt settled and asks SumUp nothing."""
    caplog.set_level(logging.INFO, logger="sumup-sandbox")
    add_page_config(clean_db, "site", 0)
    async with orders_stack(clean_db, credentials, sandbox.server) as orders:
        order_id = (await create(orders)).json()["order_id"]
        checkout_id = checkout_id_of(clean_db, order_id)
        sandbox.pay(checkout_id)
        browser = orders.browser("orders")
        json_only = {"accept": "application/json"}
        await browser.get("/auth/dev-login?user_id=1", headers=json_only)
        returned = await browser.get(f"/checkout/return/{order_id}/", headers=json_only)
        assert returned.json()["state"] == "paid", returned.text
        caplog.clear()
        settled = await bounded(webhook(orders, order_id, checkout_id))
        assert settled.status_code == 204, settled.text
        assert f"GET /v0.1/checkouts/{checkout_id} " not in caplog.text


async def test_a_remembered_key_sumup_refuses_is_read_again_from_blog(
    clean_db, credentials, two_key_sandbox
):
    """The merchant rotates its key after the order was made: the page config gets the new
    key and SumUp refuses the old one (401). The webhook, holding the old key, reads blog again
    and settles the payment with the new one, and uses the new one from then on."""
    add_page_config(clean_db, "site", 0, api_key=OLD_KEY)
    sandbox = two_key_sandbox
    async with orders_stack(clean_db, credentials, sandbox.server) as orders:
        order_id = (await create(orders)).json()["order_id"]
        set_site_key(clean_db, NEW_KEY)
        sandbox.client.post(
            "/_sandbox/controls", json={"revoked_api_keys": [OLD_KEY]}
        ).raise_for_status()
        checkout_id = checkout_id_of(clean_db, order_id)
        sandbox.pay(checkout_id)
        settled = await bounded(webhook(orders, order_id, checkout_id))
        assert settled.status_code == 204, settled.text
        assert order_rows(clean_db)[0][:2] == (order_id, "paid")
        # The new key is the one remembered now: with blog locked, the next order's webhook
        # goes through without it.
        next_id = (await create(orders, order_payload(product_line(2, "3.00")))).json()
        checkout_id = checkout_id_of(clean_db, next_id["order_id"])
        sandbox.pay(checkout_id)
        settled = await while_held(
            clean_db, "blog", LOCK_PAGE_CONFIGS, webhook(orders, next_id["order_id"], checkout_id)
        )
        assert settled.status_code == 204, settled.text
        assert dict(row[:2] for row in order_rows(clean_db))[next_id["order_id"]] == "paid"


async def test_a_key_removed_from_blog_still_reads_statuses_for_its_time_only(
    clean_db, credentials, sandbox
):
    """The documented cost: a page config that lost its key still has its orders' payments
    read with the key orders remembers (it only reads; SumUp still takes it). With nothing
    remembered (ORDERS_MERCHANT_ACCOUNT_SECONDS=0) the webhook reads blog and answers 503 (SumUp
    delivers again later), and the order stays pending for reconciliation."""
    add_page_config(clean_db, "site", 0)
    async with orders_stack(clean_db, credentials, sandbox.server) as orders:
        order_id = (await create(orders)).json()["order_id"]
        checkout_id = checkout_id_of(clean_db, order_id)
        sandbox.pay(checkout_id)
        set_site_key(clean_db, None)
        settled = await bounded(webhook(orders, order_id, checkout_id))
        assert settled.status_code == 204, settled.text
        assert order_rows(clean_db)[0][:2] == (order_id, "paid")

    set_site_key(clean_db, "sup_sk_sandbox_rose")
    async with orders_stack(
        clean_db, credentials, sandbox.server, ORDERS_MERCHANT_ACCOUNT_SECONDS="0"
    ) as orders:
        order_id = (await create(orders, order_payload(product_line(3, "4.00")))).json()["order_id"]
        checkout_id = checkout_id_of(clean_db, order_id)
        sandbox.pay(checkout_id)
        set_site_key(clean_db, None)
        forget_retired_keys(clean_db)  # and blog keeps no retired key of it (past its time)
        refused = await bounded(webhook(orders, order_id, checkout_id))
        # SumUp delivers again later (503), and the order waits for its key (never expires).
        assert refused.status_code == 503, refused.text
        assert "has no key" in refused.json()["detail"]
        assert dict(row[:2] for row in order_rows(clean_db))[order_id] == "pending"


async def test_a_webhook_bounds_its_wait_for_a_row_another_request_holds(
    clean_db, credentials, sandbox
):
    """Reading no blog, the webhook no longer takes its statement timeout from the FDW read: it
    sets its own. With orders' role allowed an hour, a webhook whose payment attempt another
    transaction holds answers 503 (SumUp delivers again), changes nothing, and goes through
    once the row is free."""
    add_page_config(clean_db, "site", 0)
    with admin_connect(clean_db, "orders") as admin:
        admin.execute("ALTER ROLE orders_app SET statement_timeout = '1h'")
    try:
        # Started after the change, so that every connection of orders has it.
        async with orders_stack(clean_db, credentials, sandbox.server) as orders:
            order_id = (await create(orders)).json()["order_id"]
            checkout_id = checkout_id_of(clean_db, order_id)
            sandbox.pay(checkout_id)
            refused = await while_held(
                clean_db,
                "orders",
                "SELECT id FROM orders.payment_attempts WHERE order_id = %s FOR UPDATE",
                webhook(orders, order_id, checkout_id),
                order_id,
            )
            assert refused.status_code == 503, refused.text
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert "did not answer in time" in refused.json()["detail"]
            assert order_rows(clean_db)[0][:2] == (order_id, "pending")
            settled = await bounded(webhook(orders, order_id, checkout_id))
            assert settled.status_code == 204, settled.text
            assert order_rows(clean_db)[0][:2] == (order_id, "paid")
    finally:
        with admin_connect(clean_db, "orders") as admin:
            timeout = APP_SETTINGS["statement_timeout"]
            admin.execute(f"ALTER ROLE orders_app SET statement_timeout = '{timeout}'")


@pytest.fixture
def two_merchant_sandbox():
    """A sandbox that knows two merchants (a page switched from one to the other)."""
    keys = {DEFAULT_API_KEY: DEFAULT_MERCHANT_CODE, OTHER_KEY: OTHER_MERCHANT}
    with BackgroundSandbox(api_keys=keys, state=sandbox_state()) as server:
        yield Sandbox(server)


def set_site_account(server, merchant_code: str | None, api_key: str | None) -> None:
    with admin_connect(server, "blog") as connection:
        connection.execute(
            "UPDATE blog.page_configs SET sumup_merchant_code = %s, sumup_api_key = %s "
            "WHERE container_type = 'site' AND container_id = 0",
            (merchant_code, api_key),
        )


def overdue(server, order_id: int) -> None:
    """The order's time to pay is over: the next pass would expire it."""
    with admin_connect(server, "orders") as connection:
        connection.execute(
            "UPDATE orders.orders SET payable_until = now() - interval '1 minute' WHERE id = %s",
            (order_id,),
        )


def attempt_statuses(server, order_id: int) -> list[str]:
    with admin_connect(server, "orders") as connection:
        rows = connection.execute(
            "SELECT status FROM orders.payment_attempts WHERE order_id = %s ORDER BY number",
            (order_id,),
        )
        return [row[0] for row in rows]


async def attention_of(orders) -> dict[int, dict]:
    listed = await internal_get(orders.client("orders"), "attention")
    assert listed.status_code == 200, listed.text
    return {row["order_id"]: row for row in listed.json()["orders"]}


def reconciliation_records(caplog) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name.startswith("rose.orders")]


async def test_a_payment_to_a_merchant_the_page_switched_away_from_is_never_expired_unseen(
    clean_db, credentials, two_merchant_sandbox, caplog
):
    """Audit s20 H1, the worse variant: the page's editor switches it to another merchant while
    an order is open, and the buyer pays the old merchant's checkout. Asked under the new
    merchant's key, SumUp does not know the checkout, which proves nothing: the order must not
    expire (its money would never be seen). With no retired key of the old merchant left in
    blog, it waits, is listed for a person, and is settled once the old merchant's key is
    back."""
    sandbox = two_merchant_sandbox
    config_id = add_page_config(clean_db, "site", 0)
    async with orders_stack(
        clean_db, credentials, sandbox.server, ORDERS_MERCHANT_ACCOUNT_SECONDS="0"
    ) as orders:
        order_id = (await create(orders)).json()["order_id"]
        checkout_id = checkout_id_of(clean_db, order_id)
        set_site_account(clean_db, OTHER_MERCHANT, OTHER_KEY)
        forget_retired_keys(clean_db)  # and blog keeps no retired key of it (past its time)
        sandbox.pay(checkout_id)
        refused = await bounded(webhook(orders, order_id, checkout_id))
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert DEFAULT_MERCHANT_CODE in refused.json()["detail"]

        overdue(clean_db, order_id)
        reconciler = orders.apps["orders"].state.reconciler
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="rose.orders"):
            await reconciler.run_once()
        assert dict(row[:2] for row in order_rows(clean_db))[order_id] == "pending"
        assert attempt_statuses(clean_db, order_id) == ["PENDING"]
        warned = [
            record for record in reconciliation_records(caplog) if record.levelno >= logging.WARNING
        ]
        assert [record.levelno for record in warned] == [logging.WARNING], warned
        assert warned[0].exc_info is None
        assert f"order {order_id}" in warned[0].getMessage()
        assert OTHER_MERCHANT in warned[0].getMessage()

        listed = await attention_of(orders)
        assert list(listed) == [order_id]
        what = listed[order_id]["merchant_key_missing"]
        assert what.startswith(
            f"order {order_id}: its SumUp merchant {DEFAULT_MERCHANT_CODE} has no key in page "
            f"config {config_id} any more"
        ), what
        assert OTHER_MERCHANT in what
        # Restoring the page's key would send new payments to the old merchant again: what
        # a person can do is give blog a key of the order's merchant as a retired one.
        assert "restore the key" not in what, what
        assert what.endswith(key_gone_advice(config_id, DEFAULT_MERCHANT_CODE)), what

        set_site_account(clean_db, DEFAULT_MERCHANT_CODE, DEFAULT_API_KEY)
        await reconciler.run_once()
        assert dict(row[:2] for row in order_rows(clean_db))[order_id] == "paid"
        assert attempt_statuses(clean_db, order_id) == ["PAID"]
        assert await attention_of(orders) == {}


async def test_a_removed_key_leaves_the_order_waiting_and_listed_not_failing_every_pass(
    clean_db, credentials, sandbox, caplog
):
    """Audit s20 H1: the site's key removed (blog's retired one gone too) while an order is
    open, the buyer pays. Every
    reconciliation pass logged a traceback and could neither settle nor expire the order, and
    `rose orders attention` said nothing needs attention. Now a pass warns in one line, the
    order is listed with what to do, and putting the key back settles it."""
    config_id = add_page_config(clean_db, "site", 0)
    async with orders_stack(
        clean_db, credentials, sandbox.server, ORDERS_MERCHANT_ACCOUNT_SECONDS="0"
    ) as orders:
        order_id = (await create(orders)).json()["order_id"]
        checkout_id = checkout_id_of(clean_db, order_id)
        set_site_key(clean_db, None)
        forget_retired_keys(clean_db)  # and blog keeps no retired key of it (past its time)
        sandbox.pay(checkout_id)
        overdue(clean_db, order_id)
        reconciler = orders.apps["orders"].state.reconciler
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="rose.orders"):
            report = await reconciler.run_once()
        assert report.failures == 0
        assert dict(row[:2] for row in order_rows(clean_db))[order_id] == "pending"
        assert attempt_statuses(clean_db, order_id) == ["PENDING"]
        warned = [
            record for record in reconciliation_records(caplog) if record.levelno >= logging.WARNING
        ]
        assert len(warned) == 1, warned
        assert warned[0].levelno == logging.WARNING
        assert warned[0].exc_info is None
        assert "has no key" in warned[0].getMessage()

        listed = await attention_of(orders)
        assert listed[order_id]["merchant_key_missing"] == (
            f"order {order_id}: its SumUp merchant {DEFAULT_MERCHANT_CODE} has no key in page "
            f"config {config_id} any more; a payment may be waiting on SumUp: restore the key "
            f"(blog page settings; any API key of merchant {DEFAULT_MERCHANT_CODE}, a new one "
            "from its SumUp dashboard if the old one is lost) to settle it"
        )
        assert listed[order_id]["status"] == "pending"

        set_site_key(clean_db, DEFAULT_API_KEY)
        await reconciler.run_once()
        assert dict(row[:2] for row in order_rows(clean_db))[order_id] == "paid"
        assert await attention_of(orders) == {}


async def test_attention_lists_what_orders_knows_while_blog_is_down(clean_db, credentials, sandbox):
    """`rose orders attention` failed naming blog while blog was down (its page configs say
    which orders' merchant has no key any more): a person could not see even the flagged orders
    orders holds itself. Now they are listed, and the answer names blog's part as not read."""
    add_page_config(clean_db, "site", 0)
    async with orders_stack(clean_db, credentials, sandbox.server) as orders:
        order_id = (await create(orders)).json()["order_id"]
        with admin_connect(clean_db, "orders") as connection:
            connection.execute(
                "UPDATE orders.orders SET flagged = true, flag_reason = 'amount differs' "
                "WHERE id = %s",
                (order_id,),
            )
        with provider_unreachable(clean_db, "orders", "blog_server"):
            listed = await internal_get(orders.client("orders"), "attention")
        assert listed.status_code == 200, listed.text
        answer = listed.json()
        assert [(row["order_id"], row["flag_reason"]) for row in answer["orders"]] == [
            (order_id, "amount differs")
        ]
        assert answer["orders"][0]["merchant_key_missing"] is None
        assert answer["degraded"] == ["blog"]
        # With blog back, nothing is said to be missing.
        whole = (await internal_get(orders.client("orders"), "attention")).json()
        assert whole["degraded"] == []


@pytest.fixture
def orders_log() -> Iterator[io.StringIO]:
    """What orders' loggers write, as configure_logging's text format writes it (a
    traceback is written indented under its record)."""
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    handler.addFilter(TraceIdFilter())
    handler.setFormatter(TextFormatter())
    logger = logging.getLogger("rose.orders")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield written
    finally:
        logger.setLevel(level)
        logger.removeHandler(handler)


async def test_a_sumup_outage_is_a_warning_line_not_a_traceback_per_open_order(
    clean_db, credentials, sandbox, orders_log
):
    """Audit s21 F7: while SumUp was unavailable, every reconciliation pass logged a full
    traceback (~35 lines) per open order, an expected outage reading as a crash and filling
    the bounded log. Now the pass says it in one warning line naming SumUp and the orders left
    for the next pass, no traceback; the orders stay pending and are settled once SumUp is
    back."""
    add_page_config(clean_db, "site", 0)
    async with orders_stack(clean_db, credentials, sandbox.server) as orders:
        first = (await create(orders)).json()["order_id"]
        second = (await create(orders, order_payload(user_id=2, session_id="s-2"))).json()[
            "order_id"
        ]
        reconciler = orders.apps["orders"].state.reconciler
        sandbox.controls(api_unavailable=True)
        try:
            report = await reconciler.run_once()
        finally:
            sandbox.controls(api_unavailable=False)
        written = orders_log.getvalue()
        assert report.failures == 2, written
        assert "Traceback" not in written, written
        lines = written.splitlines()
        assert not [line for line in lines if line.startswith(" ")], written
        warned = [line for line in lines if "WARNING" in line and "SumUp" in line]
        assert len(warned) == 1, written
        assert f"{first}, {second}" in warned[0], warned
        assert not [line for line in lines if "ERROR" in line], written
        assert {row[0]: row[1] for row in order_rows(clean_db)} == {
            first: "pending",
            second: "pending",
        }

        sandbox.pay(checkout_id_of(clean_db, first))
        assert (await reconciler.run_once()).failures == 0
        assert dict(row[:2] for row in order_rows(clean_db))[first] == "paid"


# -- retired keys: blog keeps the key a page config stopped using, for its orders -----------------
async def switch_site(orders, **fields):
    """The site config changed through blog's own action (what the admin page calls too)."""
    changed = await internal_post(
        orders.client("blog"),
        "update-page-config",
        {"container_type": "site", "container_id": 0, **fields},
    )
    assert changed.status_code == 200, changed.text
    return changed.json()


def retired_keys(server) -> list[tuple]:
    with admin_connect(server, "blog") as connection:
        return connection.execute(
            "SELECT page_config_id, sumup_merchant_code, sumup_api_key "
            "FROM blog.retired_sumup_keys ORDER BY page_config_id, sumup_merchant_code"
        ).fetchall()


def forget_retired_keys(server) -> None:
    """The history is gone (kept past its time, say): nothing has the order's key any more."""
    with admin_connect(server, "blog") as connection:
        connection.execute("DELETE FROM blog.retired_sumup_keys")


async def test_a_payment_to_the_merchant_a_page_switched_away_from_settles_without_its_key_back(
    clean_db, credentials, two_merchant_sandbox
):
    """The closing note's defect: the editor switches the page to another merchant (blog's
    action) while an order is open, and the buyer pays the old merchant's checkout. Nobody puts
    the old key back: the webhook settles it with the key blog retired, and the reconciliation
    closes (expires) another order's unpaid checkout the same way. Nothing is listed."""
    sandbox = two_merchant_sandbox
    config_id = add_page_config(clean_db, "site", 0)
    async with orders_stack(
        clean_db, credentials, sandbox.server, ORDERS_MERCHANT_ACCOUNT_SECONDS="0"
    ) as orders:
        paid_id = (await create(orders)).json()["order_id"]
        other_buyer = order_payload(product_line(5, "3.00"), user_id=2, session_id="session-2")
        unpaid_id = (await create(orders, other_buyer)).json()["order_id"]
        await switch_site(orders, sumup_merchant_code=OTHER_MERCHANT, sumup_api_key=OTHER_KEY)
        checkout_id = checkout_id_of(clean_db, paid_id)
        sandbox.pay(checkout_id)
        settled = await bounded(webhook(orders, paid_id, checkout_id))
        assert settled.status_code == 204, settled.text
        statuses = dict(row[:2] for row in order_rows(clean_db))
        assert statuses[paid_id] == "paid"
        assert attempt_statuses(clean_db, paid_id) == ["PAID"]
        assert await attention_of(orders) == {}
        assert retired_keys(clean_db) == [(config_id, DEFAULT_MERCHANT_CODE, DEFAULT_API_KEY)]

        overdue(clean_db, unpaid_id)
        await orders.apps["orders"].state.reconciler.run_once()
        assert dict(row[:2] for row in order_rows(clean_db))[unpaid_id] == "expired"
        assert attempt_statuses(clean_db, unpaid_id) == ["EXPIRED"]
        assert await attention_of(orders) == {}


async def test_a_key_removed_then_the_retired_one_pruned_is_a_merchant_key_gone_again(
    clean_db, credentials, sandbox
):
    """Neither the config nor blog's history has the order's key: the outcome is unknown, as
    before the history (503, listed); with the key retired, the same order settles."""
    config_id = add_page_config(clean_db, "site", 0)
    async with orders_stack(
        clean_db, credentials, sandbox.server, ORDERS_MERCHANT_ACCOUNT_SECONDS="0"
    ) as orders:
        order_id = (await create(orders)).json()["order_id"]
        checkout_id = checkout_id_of(clean_db, order_id)
        await switch_site(orders, sumup_api_key=None)
        assert retired_keys(clean_db) == [(config_id, DEFAULT_MERCHANT_CODE, DEFAULT_API_KEY)]
        sandbox.pay(checkout_id)
        with admin_connect(clean_db, "blog") as connection:
            kept = connection.execute("SELECT * FROM blog.retired_sumup_keys").fetchall()
        forget_retired_keys(clean_db)
        refused = await bounded(webhook(orders, order_id, checkout_id))
        assert refused.status_code == 503, refused.text
        assert "has no key" in refused.json()["detail"]
        assert list(await attention_of(orders)) == [order_id]

        with admin_connect(clean_db, "blog") as connection:
            connection.execute(
                "INSERT INTO blog.retired_sumup_keys VALUES (%s, %s, %s, %s)", kept[0]
            )
        settled = await bounded(webhook(orders, order_id, checkout_id))
        assert settled.status_code == 204, settled.text
        assert dict(row[:2] for row in order_rows(clean_db))[order_id] == "paid"
        assert await attention_of(orders) == {}


async def test_a_same_merchant_key_rotation_keeps_no_retired_key(
    clean_db, credentials, two_key_sandbox
):
    """The new key of the same merchant sees its checkouts: the old one is not kept (a kept
    secret is a liability), and an order made under the old key settles with the new one.
    A retired entry goes when the config names that merchant with a key again."""
    config_id = add_page_config(clean_db, "site", 0, api_key=OLD_KEY)
    sandbox = two_key_sandbox
    async with orders_stack(
        clean_db, credentials, sandbox.server, ORDERS_MERCHANT_ACCOUNT_SECONDS="0"
    ) as orders:
        order_id = (await create(orders)).json()["order_id"]
        await switch_site(orders, sumup_api_key=NEW_KEY)
        assert retired_keys(clean_db) == []
        sandbox.client.post(
            "/_sandbox/controls", json={"revoked_api_keys": [OLD_KEY]}
        ).raise_for_status()
        checkout_id = checkout_id_of(clean_db, order_id)
        sandbox.pay(checkout_id)
        settled = await bounded(webhook(orders, order_id, checkout_id))
        assert settled.status_code == 204, settled.text
        assert order_rows(clean_db)[0][:2] == (order_id, "paid")

        await switch_site(orders, sumup_api_key=None)
        assert retired_keys(clean_db) == [(config_id, DEFAULT_MERCHANT_CODE, NEW_KEY)]
        await switch_site(orders, sumup_api_key=OLD_KEY)
        assert retired_keys(clean_db) == []


async def buyer_browser(orders, user_id: int = 1):
    browser = orders.browser("orders")
    response = await browser.get(
        f"/auth/dev-login?user_id={user_id}", headers={"accept": "application/json"}
    )
    browser.headers["x-csrf-token"] = response.json()["csrf_token"]
    return browser


async def test_pay_again_after_a_merchant_switch_settles_a_payment_the_old_merchant_took(
    clean_db, credentials, two_merchant_sandbox
):
    """Review s21 LOW-1: the page switched to another merchant while the buyer paid the old
    merchant's checkout (no webhook yet). Pay again asks SumUp with the key blog retired and
    finds the payment: the order is paid, the answer says so, and no checkout is made."""
    sandbox = two_merchant_sandbox
    add_page_config(clean_db, "site", 0)
    async with orders_stack(
        clean_db, credentials, sandbox.server, ORDERS_MERCHANT_ACCOUNT_SECONDS="0"
    ) as orders:
        order_id = (await create(orders)).json()["order_id"]
        await switch_site(orders, sumup_merchant_code=OTHER_MERCHANT, sumup_api_key=OTHER_KEY)
        sandbox.pay(checkout_id_of(clean_db, order_id))
        browser = await buyer_browser(orders)
        again = await bounded(browser.post(f"/order/{order_id}/pay/"))
        assert again.status_code == 409, again.text
        assert "already paid" in again.json()["detail"]
        assert dict(row[:2] for row in order_rows(clean_db))[order_id] == "paid"
        assert attempt_statuses(clean_db, order_id) == ["PAID"]
        assert len(sandbox.checkouts()) == 1


async def test_pay_again_after_a_merchant_switch_says_check_out_again_and_closes_nothing(
    clean_db, credentials, two_merchant_sandbox
):
    """Review s21 LOW-1: the order is for the merchant the page named at checkout (fixed in the
    order); the page now names another, so no new checkout can be made for it, ever (new money
    only goes to the merchant the page names). A 409 telling the buyer to check out again, not
    a 503 that suggests waiting; the old checkout is read with the retired key, not closed, and
    SumUp is asked for no new one."""
    sandbox = two_merchant_sandbox
    add_page_config(clean_db, "site", 0)
    async with orders_stack(
        clean_db, credentials, sandbox.server, ORDERS_MERCHANT_ACCOUNT_SECONDS="0"
    ) as orders:
        order_id = (await create(orders)).json()["order_id"]
        checkout_id = checkout_id_of(clean_db, order_id)
        await switch_site(orders, sumup_merchant_code=OTHER_MERCHANT, sumup_api_key=OTHER_KEY)
        sandbox.fail(checkout_id)
        browser = await buyer_browser(orders)
        again = await bounded(browser.post(f"/order/{order_id}/pay/"))
        assert again.status_code == 409, again.text
        assert "check out again" in again.json()["detail"]
        assert dict(row[:2] for row in order_rows(clean_db))[order_id] == "pending"
        # Not closed, at SumUp or here (what SumUp said goes with the refusal's rollback).
        assert sandbox.checkout(checkout_id)["status"] == "FAILED"
        assert len(attempt_statuses(clean_db, order_id)) == 1
        assert "EXPIRED" not in attempt_statuses(clean_db, order_id)
        assert len(sandbox.checkouts()) == 1


DELETE_SITE_CONFIG = {
    # blog's own deletion marks the row (its views hide it); the split's sync removes it.
    "marked": "UPDATE blog.page_configs SET deleted_at = now() "
    "WHERE container_type = 'site' AND container_id = 0",
    "removed": "DELETE FROM blog.page_configs WHERE container_type = 'site' AND container_id = 0",
}


@pytest.mark.parametrize("how", sorted(DELETE_SITE_CONFIG))
async def test_a_payment_for_a_page_config_deleted_since_settles_with_its_retired_key(
    clean_db, credentials, sandbox, how
):
    """Task s21 retired keys 1: a page config DELETED while an order of its merchant is open
    kept no retired key (the trigger watched only updates of the merchant and key, and a
    removed row took its entries with it), and orders looked the retired key up only through
    the config's row: the order could never be settled, closed or refunded again. Now the
    key is kept on delete too, and orders finds it by the order's config id and merchant
    alone: the buyer's payment settles, and another order's unpaid checkout is closed."""
    config_id = add_page_config(clean_db, "site", 0)
    async with orders_stack(
        clean_db, credentials, sandbox.server, ORDERS_MERCHANT_ACCOUNT_SECONDS="0"
    ) as orders:
        paid_id = (await create(orders)).json()["order_id"]
        other_buyer = order_payload(product_line(5, "3.00"), user_id=2, session_id="session-2")
        unpaid_id = (await create(orders, other_buyer)).json()["order_id"]
        with admin_connect(clean_db, "blog") as connection:
            connection.execute(DELETE_SITE_CONFIG[how])
        assert retired_keys(clean_db) == [(config_id, DEFAULT_MERCHANT_CODE, DEFAULT_API_KEY)]
        assert await attention_of(orders) == {}  # the retired key reaches both orders
        checkout_id = checkout_id_of(clean_db, paid_id)
        sandbox.pay(checkout_id)
        settled = await bounded(webhook(orders, paid_id, checkout_id))
        assert settled.status_code == 204, settled.text
        assert dict(row[:2] for row in order_rows(clean_db))[paid_id] == "paid"
        assert attempt_statuses(clean_db, paid_id) == ["PAID"]

        overdue(clean_db, unpaid_id)
        await orders.apps["orders"].state.reconciler.run_once()
        assert dict(row[:2] for row in order_rows(clean_db))[unpaid_id] == "expired"
        assert attempt_statuses(clean_db, unpaid_id) == ["EXPIRED"]
        assert await attention_of(orders) == {}


async def test_attention_says_what_a_person_can_do_for_an_order_of_a_deleted_config(
    clean_db, credentials, sandbox
):
    """Task s21 retired keys 3: an order whose config was deleted and whose retired key is gone
    too was listed with "restore the key (blog page settings)": there are no settings to restore
    it in. The listing (JSON, and the CLI's table, which shows the same text) now says the
    config was deleted and what a person can do: give blog a key of the order's merchant as a
    retired one, or handle the checkouts in SumUp's dashboard."""
    config_id = add_page_config(clean_db, "site", 0)
    async with orders_stack(
        clean_db, credentials, sandbox.server, ORDERS_MERCHANT_ACCOUNT_SECONDS="0"
    ) as orders:
        order_id = (await create(orders)).json()["order_id"]
        with admin_connect(clean_db, "blog") as connection:
            connection.execute(DELETE_SITE_CONFIG["removed"])
        forget_retired_keys(clean_db)  # kept past its time
        listed = await attention_of(orders)
        what = listed[order_id]["merchant_key_missing"]
        assert what == (
            f"order {order_id}: its SumUp merchant {DEFAULT_MERCHANT_CODE} has no key in page "
            f"config {config_id} any more (the config was deleted) and blog keeps none it "
            f"retired; {key_gone_advice(config_id, DEFAULT_MERCHANT_CODE)}"
        )
        [row] = attention_rows(list(listed.values()))
        assert row[3] == what

        # What it says works: the key given back as a retired one settles the payment.
        sandbox.pay(checkout_id_of(clean_db, order_id))
        with admin_connect(clean_db, "blog") as connection:
            connection.execute(
                "INSERT INTO blog.retired_sumup_keys (page_config_id, sumup_merchant_code, "
                "sumup_api_key) VALUES (%s, %s, %s)",
                (config_id, DEFAULT_MERCHANT_CODE, DEFAULT_API_KEY),
            )
        await orders.apps["orders"].state.reconciler.run_once()
        assert dict(row[:2] for row in order_rows(clean_db))[order_id] == "paid"
        assert await attention_of(orders) == {}


async def test_a_replay_of_a_known_key_needs_no_blog(clean_db, credentials, sandbox):
    """Review s22 MEDIUM-2: create-order's first statements (the buyer's lock and the slot read
    through FDW) sent with the idempotency key's claim ran for a replay too, so a retry after a
    lost answer, what keys are for, was a 503 naming blog while blog was down, though the
    stored answer would do."""
    add_page_config(clean_db, "site", 0)
    async with orders_stack(clean_db, credentials, sandbox.server) as orders:
        first = await create(orders, key="answer-lost")
        assert first.status_code == 200, first.text
        with provider_unreachable(clean_db, "orders", "blog_server"):
            again = await create(orders, key="answer-lost")
        assert again.status_code == 200, again.text
        assert again.json() == first.json()


async def test_an_abandoned_checkout_sumup_expired_and_will_not_delete_expires_its_order(
    clean_db, credentials, sandbox
):
    """Review M1 (December 2026): a checkout SumUp expired itself (past its valid_until, the
    order's payable time) may be answered 404 to the DELETE orders sends at the order's
    expiry (SumUp's docs do not say; its own page on a 404 lists "deleted or expired" among
    the causes). That 404 alone flagged every abandoned order for a person, its goods held.
    SumUp is now asked to read the checkout: known and EXPIRED, the order expires as ever;
    only a checkout SumUp does not know under the key either way flags it."""
    add_page_config(clean_db, "site", 0)
    async with orders_stack(clean_db, credentials, sandbox.server) as orders:
        order_id = (await create(orders)).json()["order_id"]
        checkout_id = checkout_id_of(clean_db, order_id)
        sandbox.controls(expired_deactivation="not_found")
        sandbox.client.post(f"/_sandbox/checkouts/{checkout_id}/expire").raise_for_status()
        overdue(clean_db, order_id)
        report = await orders.apps["orders"].state.reconciler.run_once()
        assert report.expired == [order_id]
        assert attempt_statuses(clean_db, order_id) == ["EXPIRED"]
        assert order_rows(clean_db)[0][:3] == (order_id, "expired", False)
        assert await attention_of(orders) == {}


async def test_a_close_read_before_a_review_ended_does_not_flag_the_order_again(
    clean_db, credentials, two_merchant_sandbox, caplog
):
    """Review L1 and L2 (December 2026). An order flagged because SumUp does not know its
    checkout under the key blog holds: a close that read its attempt open before the review
    ended, with the key it read then, flagged the settled order once more (the flag's update
    asked nothing of the attempt). Now the order is locked and the attempt read again first:
    settled, nothing is flagged. And while the order is flagged (a cancelled one here), the
    closing pass leaves it to the person: it sent a DELETE every pass, for 14 days."""
    sandbox = two_merchant_sandbox
    add_page_config(clean_db, "site", 0)
    async with orders_stack(
        clean_db, credentials, sandbox.server, ORDERS_MERCHANT_ACCOUNT_SECONDS="0"
    ) as orders:
        order_id = (await create(orders)).json()["order_id"]
        checkout_id = checkout_id_of(clean_db, order_id)
        set_site_account(clean_db, DEFAULT_MERCHANT_CODE, OTHER_KEY)
        with admin_connect(clean_db, "orders") as connection:
            connection.execute(
                "UPDATE orders.orders SET status = 'cancelled' WHERE id = %s", (order_id,)
            )
        reconciler = orders.apps["orders"].state.reconciler
        await reconciler.run_once()
        assert order_rows(clean_db)[0][:3] == (order_id, "cancelled", True)
        caplog.set_level(logging.INFO, logger="sumup-sandbox")
        caplog.clear()
        for _ in range(2):
            await reconciler.run_once()
        assert f"DELETE /v0.1/checkouts/{checkout_id}" not in caplog.text

        runtime = orders.apps["orders"].state.runtime
        async with runtime.maker() as session:  # what a close read before the review ended
            stale = await session.scalar(
                select(PaymentAttempt).where(PaymentAttempt.order_id == order_id)
            )
            assert stale is not None
            assert stale.status == "PENDING"
            session.expunge(stale)
        set_site_account(clean_db, DEFAULT_MERCHANT_CODE, DEFAULT_API_KEY)
        ended = await internal_post(orders.client("orders"), "end-review", {"order_id": order_id})
        assert ended.status_code == 200, ended.text
        assert order_rows(clean_db)[0][:3] == (order_id, "cancelled", False)

        wrong_key = MerchantAccounts(
            {config_of(clean_db, order_id): MerchantAccount(DEFAULT_MERCHANT_CODE, OTHER_KEY)}
        )
        async with runtime.maker() as session:
            order = await session.get(Order, order_id)
            assert order is not None
            await close_attempt(session, order, stale, runtime.gateway, wrong_key)
            await session.commit()
        assert order_rows(clean_db)[0][:3] == (order_id, "cancelled", False)
        assert attempt_statuses(clean_db, order_id) == ["EXPIRED"]


def config_of(server, order_id: int) -> int:
    """The page config whose SumUp account the order pays."""
    with admin_connect(server, "orders") as connection:
        return connection.execute(
            "SELECT page_config_id FROM orders.orders WHERE id = %s", (order_id,)
        ).fetchone()[0]


async def test_a_key_of_another_merchant_under_the_orders_merchant_never_expires_a_payment(
    clean_db, credentials, two_merchant_sandbox
):
    """The editor pastes a key of another of their SumUp merchants into the page's settings,
    the merchant code left as it was (blog cannot tell a key's merchant). The buyer has paid
    meanwhile, unseen (the webhook lost). Under that key SumUp does not know the checkout,
    which proves nothing, as under a page switched to another merchant. Before: the order's
    time over, the reconciliation held the checkout EXPIRED ("unknown to SumUp") and expired
    the order, and once the key was put right nothing read the payment again (money taken,
    goods released, nothing owed back). Now the order is left to a person, listed with why;
    the key put right, ending its review gives the payment back."""
    sandbox = two_merchant_sandbox
    add_page_config(clean_db, "site", 0)
    async with orders_stack(
        clean_db, credentials, sandbox.server, ORDERS_MERCHANT_ACCOUNT_SECONDS="0"
    ) as orders:
        order_id = (await create(orders)).json()["order_id"]
        checkout_id = checkout_id_of(clean_db, order_id)
        sandbox.pay(checkout_id)  # its webhook lost (the sandbox drops them here)
        set_site_account(clean_db, DEFAULT_MERCHANT_CODE, OTHER_KEY)
        overdue(clean_db, order_id)
        reconciler = orders.apps["orders"].state.reconciler
        await reconciler.run_once()
        assert attempt_statuses(clean_db, order_id) == ["PENDING"]
        assert dict(row[:2] for row in order_rows(clean_db))[order_id] == "pending"
        listed = await attention_of(orders)
        assert list(listed) == [order_id]
        assert listed[order_id]["flagged"] is True
        assert checkout_id in listed[order_id]["flag_reason"]
        assert "put the key right before ending the review" in listed[order_id]["flag_reason"]
        await reconciler.run_once()  # a flagged order is a person's: not expired meanwhile
        assert dict(row[:2] for row in order_rows(clean_db))[order_id] == "pending"

        set_site_account(clean_db, DEFAULT_MERCHANT_CODE, DEFAULT_API_KEY)
        ended = await internal_post(orders.client("orders"), "end-review", {"order_id": order_id})
        assert ended.status_code == 200, ended.text
        assert ended.json()["status"] == "refund_due"
        assert ended.json()["refunds"] == [
            {"checkout_id": checkout_id, "amount": "10.00", "currency": "EUR"}
        ]
        assert attempt_statuses(clean_db, order_id) == ["PAID"]


async def test_keys_sumup_refuses_are_one_warning_a_pass_per_merchant_naming_its_orders(
    clean_db, credentials, two_merchant_sandbox, caplog
):
    """Review L5: two merchants' keys refused by SumUp in one pass (both revoked in their
    dashboards). The pass said one warning: the first order's answer, and every order of both
    merchants listed under it, so the person who reads it puts a new key in one merchant's
    page and the other merchant's orders stay waiting unnamed. One warning per merchant now,
    naming it and only its orders (`test_orders`'s
    `test_a_key_sumup_refuses_is_one_warning_a_pass_not_a_traceback_per_order`: one merchant)."""
    sandbox = two_merchant_sandbox
    add_page_config(clean_db, "site", 0)
    add_page_config(clean_db, "page", 2, merchant_code=OTHER_MERCHANT, api_key=OTHER_KEY)
    async with orders_stack(clean_db, credentials, sandbox.server) as orders:
        ids: dict[str, list[int]] = {DEFAULT_MERCHANT_CODE: [], OTHER_MERCHANT: []}
        for number, merchant in enumerate(
            [DEFAULT_MERCHANT_CODE, OTHER_MERCHANT, DEFAULT_MERCHANT_CODE, OTHER_MERCHANT], 1
        ):
            container = 1 if merchant == DEFAULT_MERCHANT_CODE else 2
            line = product_line(number, "2.00", market_place_container_id=container)
            payload = order_payload(line, user_id=number, session_id=f"s{number}")
            created = await create(orders, payload)
            assert created.status_code == 200, created.text
            ids[merchant].append(created.json()["order_id"])
        sandbox.controls(revoked_api_keys=[DEFAULT_API_KEY, OTHER_KEY])
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="rose.orders"):
            report = await orders.apps["orders"].state.reconciler.run_once()

        assert report.failures == 4
        ours = reconciliation_records(caplog)
        assert [record.getMessage() for record in ours if record.exc_info] == []
        refused = [record.getMessage() for record in ours if "refused" in record.getMessage()]
        assert len(refused) == 2, refused
        for merchant, theirs in ids.items():
            [said] = [message for message in refused if merchant in message]
            assert f"2 orders left for the next reconciliation pass: {theirs[0]}, {theirs[1]}" in (
                said
            ), said
            others = ids[
                OTHER_MERCHANT if merchant == DEFAULT_MERCHANT_CODE else DEFAULT_MERCHANT_CODE
            ]
            assert not any(str(order_id) in said.split("pass: ")[1] for order_id in others), said
        assert [row[1] for row in order_rows(clean_db)] == ["pending"] * 4


async def test_a_key_sumup_refuses_at_checkout_tells_the_buyer_it_is_not_worth_trying_again(
    clean_db, credentials, sandbox, caplog
):
    """Probe editor: a page's key SumUp refuses (a typo saved by an editor, a key revoked in
    SumUp's dashboard) failed every checkout with a 502 "SumUp refused the request: HTTP 401",
    which cart tells the buyer to try again, forever, and logged nothing naming the merchant or
    the page. Now: a 409 saying the shop's payment key is refused (nothing made), and a warning
    naming the page config and merchant for the person who can fix it, never the key."""
    add_page_config(clean_db, "site", 0)
    async with orders_stack(clean_db, credentials, sandbox.server) as orders:
        sandbox.controls(revoked_api_keys=[DEFAULT_API_KEY])
        caplog.clear()
        caplog.set_level(logging.INFO, logger="sumup-sandbox")
        with caplog.at_level(logging.INFO, logger="rose.orders"):
            refused = await create(orders)
            # Review 6 L5: SumUp answered no, so it made no checkout: nothing to look up and
            # close after the rollback (each refused checkout asked SumUp once more).
            await orders.apps["orders"].state.reconciler.quiet()
        assert refused.status_code == 409, refused.text
        asked = [record.getMessage() for record in caplog.records if record.name == "sumup-sandbox"]
        assert [line for line in asked if line.startswith("POST /v0.1/checkouts")], asked
        assert not [line for line in asked if line.startswith("GET /v0.1/checkouts")], asked
        assert "could not look up unused SumUp checkout" not in caplog.text
        detail = refused.json()["detail"]
        assert "SumUp refused the shop's payment key" in detail, detail
        assert "try again" not in detail.lower(), detail
        assert order_rows(clean_db) == []
        warnings = [
            record.getMessage() for record in caplog.records if record.name == "rose.orders"
        ]
        [said] = [message for message in warnings if "refused the API key" in message]
        assert f"merchant {DEFAULT_MERCHANT_CODE}" in said, said
        assert "page config" in said, said
        assert DEFAULT_API_KEY not in said, said
        assert DEFAULT_API_KEY not in refused.text
