"""Webhooks with the SumUp account orders read lately (RecentMerchantAccounts): no FDW read when
the key is known, a key SumUp refuses read again from blog at once, and create-order, which
chooses where money goes, reading blog every time."""

from __future__ import annotations

import asyncio

import pytest

from apps.sumup_sandbox import DEFAULT_MERCHANT_CODE
from apps.sumup_sandbox.server import BackgroundSandbox
from ops.db.provision import APP_SETTINGS
from tests.conftest import admin_connect
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

OLD_KEY = "sup_sk_rotated_out"
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
    remembered (ORDERS_MERCHANT_ACCOUNT_SECONDS=0) the webhook reads blog and answers 409,
    and the order stays pending for reconciliation."""
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
        refused = await bounded(webhook(orders, order_id, checkout_id))
        assert refused.status_code == 409, refused.text
        assert "no SumUp key" in refused.json()["detail"]
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
