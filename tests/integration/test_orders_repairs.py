"""Orders' data repairs (data migrations), each on a database as the old code left it: written
with SQL, repaired by the migration as `rose up` runs it (Alembic), then read through the real
apps (pages, JSON)."""

from __future__ import annotations

from alembic import command

from ops.db.migrate import alembic_config
from tests.conftest import admin_connect
from tests.integration.commerce_fixtures import browser_of, share_cookies, shop_stack

HTML = {"accept": "text/html"}
# The orders revision before the repair of audit s21 F3 (orders 0013).
BEFORE_F3_REPAIR = "0012"


def run_repair(server) -> None:
    """The repair as an upgrade runs it: from the revision before it to head."""
    config = alembic_config("orders", server.topology.admin_url("orders"))
    command.downgrade(config, BEFORE_F3_REPAIR)
    command.upgrade(config, "head")


def rows(server, statement: str) -> list[tuple]:
    with admin_connect(server, "orders") as connection:
        return connection.execute(statement).fetchall()


ORDERS = "SELECT * FROM orders.orders ORDER BY id"
MONEY = [
    "SELECT * FROM orders.payment_attempts ORDER BY id",
    "SELECT * FROM orders.refunds ORDER BY id",
]


async def test_an_order_another_buyers_checkout_superseded_names_that_order_no_more(
    clean_db, credentials, sandbox, shop
):
    """Audit s21 F3's data: before its fix, buyer 2's checkout could supersede buyer 1's pending
    order (a stale claim on a calendar entry), and buyer 1's page said "pay order N instead",
    N being buyer 2's order. The repair (orders 0013) makes buyer 1's order name it no more:
    it is expired (it cannot be paid: check out again), its JSON names no other order, and
    its page sends the buyer to no other order. Buyer 1's own earlier order, superseded by
    their own checkout, still points to their order; buyer 2's order and the money rows are
    untouched; run again, the repair changes nothing."""
    async with shop_stack(clean_db, credentials, sandbox.server) as stack:
        first_cart = await browser_of(stack, "cart", user_id=1)
        first = stack.browser("orders")
        share_cookies(first_cart, first)
        first.headers["accept"] = "application/json"
        line = (await first_cart.post(f"/add/{shop.product_ids[0]}/")).json()
        earlier = (await first_cart.post("/checkout/")).json()["order_id"]
        await first_cart.post(f"/item/{line['id']}/quantity/", data={"quantity": "2"})
        mine = (await first_cart.post("/checkout/")).json()["order_id"]
        second_cart = await browser_of(stack, "cart", user_id=2)
        await second_cart.post(f"/add/{shop.product_ids[1]}/")
        theirs = (await second_cart.post("/checkout/")).json()["order_id"]
        assert rows(
            clean_db,
            f"SELECT id, status, superseded_by FROM orders.orders "
            f"WHERE id IN ({earlier}, {mine}, {theirs}) ORDER BY id",
        ) == [
            (earlier, "superseded", mine),
            (mine, "pending", None),
            (theirs, "pending", None),
        ]
        # As the code before the fix left it: buyer 2's checkout superseded buyer 1's order
        # (and closed its SumUp checkout).
        with admin_connect(clean_db, "orders") as connection:
            connection.execute(
                "UPDATE orders.orders SET status = 'superseded', superseded_by = %s, "
                "updated_at = now() WHERE id = %s",
                (theirs, mine),
            )
            connection.execute(
                "UPDATE orders.payment_attempts SET status = 'EXPIRED' WHERE order_id = %s",
                (mine,),
            )
        page = await first.get(f"/order/{mine}/", headers=HTML)
        assert f"order #{theirs}" in page.text  # the defect, as buyer 1 saw it
        money = [rows(clean_db, statement) for statement in MONEY]
        theirs_before = rows(clean_db, f"SELECT * FROM orders.orders WHERE id = {theirs}")

        run_repair(clean_db)

        answer = (await first.get(f"/api/orders/{mine}")).json()
        assert answer["status"] == "expired"
        assert (answer["superseded_by"], answer["latest_checkout_id"]) == (None, None)
        page = await first.get(f"/order/{mine}/", headers=HTML)
        assert page.status_code == 200
        assert f"order #{theirs}" not in page.text
        assert f"/order/{theirs}/" not in page.text
        assert "What is still in your cart can be checked out again" in page.text
        again = await first.post(f"/order/{mine}/pay/")
        assert again.status_code == 409
        assert again.json()["detail"] == f"Order {mine} is expired; it cannot be paid again"
        assert "order_id" not in again.json()  # no other order to go to
        listed = {item["id"]: item for item in (await first.get("/api/orders")).json()["items"]}
        assert (listed[mine]["superseded_by"], listed[mine]["latest_checkout_id"]) == (None, None)
        # The buyer's own supersession is kept; the other buyer's order and money untouched.
        assert (listed[earlier]["superseded_by"], listed[earlier]["latest_checkout_id"]) == (
            mine,
            mine,
        )
        assert rows(clean_db, f"SELECT * FROM orders.orders WHERE id = {theirs}") == theirs_before
        assert [rows(clean_db, statement) for statement in MONEY] == money

        repaired = rows(clean_db, ORDERS)
        run_repair(clean_db)
        assert rows(clean_db, ORDERS) == repaired
