"""Money paths the last session left open (review 5 L3 and the load probe), each reproduced end
to end through real apps, a real database and the SumUp sandbox over HTTP: a legacy order paid
late, legacy cancelled orders' checkouts, and a checkout whose order was never committed."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import httpx
import psycopg.types.json
import pytest

from apps.common.app_factory import platform_of
from apps.common.db import REQUEST_SESSION_KEY
from apps.orders import contract as orders_contract
from tests.conftest import admin_connect
from tests.integration.commerce_fixtures import browser_of, shop_stack
from tests.integration.orders_fixtures import Sandbox, checkout_id_of, orders_of, webhook
from tests.waiting import eventually

JSON = {"accept": "application/json"}


@pytest.fixture
async def stack(clean_db, credentials, sandbox, shop):
    async with shop_stack(clean_db, credentials, sandbox.server) as running:
        yield running


def lines_of(server, user_id: int) -> dict[int, tuple]:
    """The buyer's cart lines by id: (product, live, the order that cleared it)."""
    with admin_connect(server, "cart") as connection:
        return {
            row[0]: row[1:]
            for row in connection.execute(
                "SELECT id, product_id, deleted_at IS NULL, order_id FROM cart.cart_items "
                "WHERE user_id = %s ORDER BY id",
                (user_id,),
            )
        }


def make_legacy(server, order_id: int, status: str, age: str) -> None:
    """The order as the split moves a monolith's order placed ``age`` ago (db/split/orders.sql):
    its lines name no cart lines, its checkout is open (PENDING) so that orders asks SumUp; an
    expired one is pending and overdue, a cancelled one cancelled."""
    with admin_connect(server, "orders") as connection:
        connection.execute(
            "UPDATE orders.order_items SET cart_line_ids = NULL WHERE order_id = %s", (order_id,)
        )
        connection.execute("DELETE FROM orders.order_claims WHERE order_id = %s", (order_id,))
        connection.execute(
            "UPDATE orders.orders SET status = %s, created_at = now() - %s::interval, "
            "updated_at = now() - %s::interval, payable_until = CASE WHEN %s = 'expired' "
            "THEN now() - %s::interval END WHERE id = %s",
            ("pending" if status == "expired" else status, age, age, status, age, order_id),
        )
        connection.execute(
            "UPDATE orders.payment_attempts SET created_at = now() - %s::interval "
            "WHERE order_id = %s",
            (age, order_id),
        )


def delivered(server, key: str) -> bool:
    with admin_connect(server, "orders") as connection:
        row = connection.execute(
            "SELECT delivered_at IS NOT NULL FROM orders.outbox WHERE idempotency_key = %s",
            (key,),
        ).fetchone()
    return row == (True,)


def payload_of(server, key: str) -> dict:
    with admin_connect(server, "orders") as connection:
        return connection.execute(
            "SELECT payload FROM orders.outbox WHERE idempotency_key = %s", (key,)
        ).fetchone()[0]


async def test_a_legacy_order_paid_late_clears_only_the_lines_it_bought(
    stack, clean_db, shop, sandbox: Sandbox
):
    """L3 (1): a legacy order moved as expired, found PAID at SumUp, is paid and clears the
    cart; its lines name no cart lines, so cart cleared the buyer's live lines of its products,
    including one the buyer added after that order (bought by no one). Now cart clears only
    lines added before the order was placed."""
    cart = await browser_of(stack, "cart", user_id=21)
    first, second = shop.product_ids[:2]
    assert (await cart.post(f"/add/{first}/")).status_code == 200
    assert (await cart.post(f"/add/{second}/")).status_code == 200
    order_id = (await cart.post("/checkout/")).json()["order_id"]
    make_legacy(clean_db, order_id, "expired", "2 days")
    old_line, new_line = lines_of(clean_db, 21)
    with admin_connect(clean_db, "cart") as connection:
        # The first line was in the cart when the order was placed; the buyer added the
        # second one since (after the order, in the monolith or here).
        connection.execute(
            "UPDATE cart.cart_items SET created_at = now() - interval '3 days' WHERE id = %s",
            (old_line,),
        )

    sandbox.pay(checkout_id_of(clean_db, order_id))
    await stack.apps["orders"].state.reconciler.run_once()
    assert orders_of(clean_db)[order_id][0] == "paid"
    assert await eventually(lambda: delivered(clean_db, f"orders:{order_id}:clear-cart"))
    assert lines_of(clean_db, 21) == {
        old_line: (first, False, order_id),
        new_line: (second, True, None),
    }
    # Sent only for lines that name none: a cart from before the field reads the others.
    assert "placed_at" in payload_of(clean_db, f"orders:{order_id}:clear-cart")
    assert (await cart.post(f"/add/{first}/")).status_code == 200
    checked_out = await cart.post("/checkout/")
    assert checked_out.status_code == 200, checked_out.text
    paid = checked_out.json()["order_id"]
    sandbox.pay(checkout_id_of(clean_db, paid))
    await stack.apps["orders"].state.reconciler.run_once()
    assert await eventually(lambda: delivered(clean_db, f"orders:{paid}:clear-cart"))
    assert "placed_at" not in payload_of(clean_db, f"orders:{paid}:clear-cart")


def cart_lines(server) -> list[tuple]:
    with admin_connect(server, "cart") as connection:
        return connection.execute(
            "SELECT id, user_id, product_id, quantity, deleted_at IS NULL, order_id, "
            "merged_into_id FROM cart.cart_items ORDER BY id"
        ).fetchall()


async def test_a_legacy_order_paid_late_clears_its_line_sign_in_merged_into_a_newer_one(
    stack, clean_db, shop, sandbox: Sandbox
):
    """Review 6 M: a legacy anonymous order's line (from before the order) that sign-in merged
    into the account's newer line of the same product: only lines added before the order
    leave for it, and the live line was newer, so the quantity the order paid for stayed in
    the cart (to be bought again). The merged quantity comes off the newer line; what the
    account added after the order stays."""
    first = shop.product_ids[0]
    anonymous = await browser_of(stack, "cart")
    assert (await anonymous.post(f"/add/{first}/")).status_code == 200
    created = await anonymous.post("/checkout/")
    assert created.status_code == 200, created.text
    order_id = created.json()["order_id"]
    make_legacy(clean_db, order_id, "expired", "2 days")
    with admin_connect(clean_db, "cart") as connection:
        connection.execute("UPDATE cart.cart_items SET created_at = now() - interval '3 days'")
    # The same person, signed in elsewhere, added the product since: a line of the account's.
    user = await browser_of(stack, "cart", user_id=31)
    assert (await user.post(f"/add/{first}/")).status_code == 200
    # Then signs in on the first browser: its line merges into the account's.
    signed = await anonymous.get("/auth/dev-login", params={"user_id": 31}, headers=JSON)
    assert signed.status_code == 200, signed.text
    merged = [row for row in cart_lines(clean_db) if row[6] is not None]
    assert len(merged) == 1, cart_lines(clean_db)

    sandbox.pay(checkout_id_of(clean_db, order_id))
    await stack.apps["orders"].state.reconciler.run_once()
    assert orders_of(clean_db)[order_id][0] == "paid"
    assert await eventually(lambda: delivered(clean_db, f"orders:{order_id}:clear-cart"))
    after = cart_lines(clean_db)
    live = [row for row in after if row[4]]
    assert [(row[1], row[2], row[3]) for row in live] == [(31, first, 1)], after
    assert [row[5] for row in after if row[0] == merged[0][0]] == [order_id], after


async def test_a_clear_queued_before_the_upgrade_is_delivered_as_it_was(
    stack, clean_db, shop, sandbox: Sandbox
):
    """A clear-cart-for-order queued by the release before (no placing time) and delivered by
    this one: cart reads it and clears as that release asked, the owner's lines of its
    products."""
    cart = await browser_of(stack, "cart", user_id=22)
    first = shop.product_ids[0]
    assert (await cart.post(f"/add/{first}/")).status_code == 200
    [line] = lines_of(clean_db, 22)
    key = "orders:777:clear-cart"
    with admin_connect(clean_db, "orders") as connection:
        connection.execute(
            "INSERT INTO orders.outbox (service, action, payload, idempotency_key) "
            "VALUES ('cart', 'clear-cart-for-order', %s, %s)",
            (
                psycopg.types.json.Jsonb(
                    {
                        "order_id": 777,
                        "user_id": 22,
                        "session_id": None,
                        "page_post_id": None,
                        "product_ids": [first],
                        "lines": [{"product_id": first, "quantity": 1, "cart_line_ids": []}],
                    }
                ),
                key,
            ),
        )
    stack.apps["orders"].state.runtime.relay.wake()
    assert await eventually(lambda: delivered(clean_db, key))
    assert lines_of(clean_db, 22) == {line: (first, False, 777)}


@pytest.fixture
async def batch_of_two(clean_db, credentials, sandbox, shop):
    async with shop_stack(clean_db, credentials, sandbox.server, ORDERS_RECONCILE_BATCH="2") as s:
        yield s


async def test_legacy_cancelled_orders_checkouts_are_closed_a_batch_a_pass(
    batch_of_two, clean_db, shop, sandbox: Sandbox
):
    """L3 (2): the split moves a cancelled legacy order with its checkout open (PENDING), and
    reconciliation closed only checkouts made within RECONCILE_WINDOW (14 days): an older one
    stayed payable at SumUp for good (a payment then refunded). Now they are closed as recent
    ones are, a batch (ORDERS_RECONCILE_BATCH) a pass; one paid meanwhile is refunded once."""
    stack = batch_of_two
    orders = []
    for buyer, product in zip((31, 32, 33), shop.product_ids, strict=False):
        cart = await browser_of(stack, "cart", user_id=buyer)
        assert (await cart.post(f"/add/{product}/")).status_code == 200
        orders.append((await cart.post("/checkout/")).json()["order_id"])
    for order_id in orders:
        make_legacy(clean_db, order_id, "cancelled", "40 days")
    checkouts = [checkout_id_of(clean_db, order_id) for order_id in orders]
    reconciler = stack.apps["orders"].state.reconciler

    await reconciler.run_once()
    statuses = [sandbox.checkout(checkout)["status"] for checkout in checkouts]
    assert statuses == ["EXPIRED", "EXPIRED", "PENDING"]
    sandbox.pay(checkouts[2])  # the buyer's tab, still open, pays before the next pass
    await reconciler.run_once()
    assert sandbox.checkout(checkouts[2])["status"] == "PAID"
    await reconciler.settle_refunds()
    assert await eventually(lambda: orders_of(clean_db)[orders[2]][0] == "refunded")
    assert [orders_of(clean_db)[order_id][0] for order_id in orders[:2]] == ["cancelled"] * 2
    with admin_connect(clean_db, "orders") as connection:
        assert connection.execute(
            "SELECT order_id, status FROM orders.refunds ORDER BY id"
        ).fetchall() == [(orders[2], "done")]
        assert connection.execute(
            "SELECT status FROM orders.payment_attempts WHERE order_id = ANY(%s) ORDER BY order_id",
            (orders,),
        ).fetchall() == [("EXPIRED",), ("EXPIRED",), ("PAID",)]
    # Nothing open is left for a pass to take again.
    async with stack.apps["orders"].state.platform.sessionmaker() as session:
        assert await reconciler.closing_orders(session) == []


async def test_a_legacy_cancelled_checkout_paid_is_refunded_once_whoever_finds_it(
    batch_of_two, clean_db, shop, sandbox: Sandbox
):
    """The close of an old legacy checkout races SumUp's webhooks of its payment and a second
    pass: whichever finds the payment, it is refunded once, and SumUp gives back once."""
    stack = batch_of_two
    cart = await browser_of(stack, "cart", user_id=34)
    assert (await cart.post(f"/add/{shop.product_ids[0]}/")).status_code == 200
    order_id = (await cart.post("/checkout/")).json()["order_id"]
    make_legacy(clean_db, order_id, "cancelled", "40 days")
    checkout_id = checkout_id_of(clean_db, order_id)
    paid = sandbox.pay(checkout_id)
    reconciler = stack.apps["orders"].state.reconciler
    await asyncio.gather(
        reconciler.run_once(),
        *(webhook(stack, order_id, checkout_id) for _ in range(3)),
        reconciler.run_once(),
        reconciler.settle_refunds(),
    )
    await reconciler.run_once()
    await reconciler.settle_refunds()
    assert await eventually(lambda: orders_of(clean_db)[order_id][0] == "refunded")
    total = orders_of(clean_db)[order_id][1]
    with admin_connect(clean_db, "orders") as connection:
        assert connection.execute(
            "SELECT status, amount FROM orders.refunds WHERE order_id = %s", (order_id,)
        ).fetchall() == [("done", total)]
    # One refund event at SumUp, of all of it.
    events = sandbox.transaction(paid["transaction_id"])["events"]
    assert [(event["type"], Decimal(str(event["amount"]))) for event in events] == [
        ("REFUND", total)
    ]


class CommitFails:
    """Orders as cart reaches it, except that the first create-order's commit fails (see
    test_checkout_again.CommitAnswerLost): with ``applied`` after PostgreSQL committed, else
    before. ``meanwhile`` runs just before it fails (a buyer paying the checkout then)."""

    def __init__(self, app, maker, *, applied: bool, meanwhile=None) -> None:
        self.app = app
        self.maker = maker
        self.applied = applied
        self.meanwhile = meanwhile
        self.failures = 1

    async def __call__(self, scope, receive, send) -> None:
        path = orders_contract.create_order.path
        if scope["type"] == "http" and scope["path"] == path and self.failures > 0:
            self.failures -= 1
            session = self.maker()
            commit = session.commit

            async def failing_commit() -> None:
                if self.applied:
                    await commit()
                if self.meanwhile is not None:
                    self.meanwhile()
                raise ConnectionResetError("the commit failed")

            session.commit = failing_commit
            scope.setdefault("state", {})[REQUEST_SESSION_KEY] = session
        await self.app(scope, receive, send)


async def check_out_failing(stack, user_id: int, product: int, **failing) -> httpx.AsyncClient:
    cart = await browser_of(stack, "cart", user_id=user_id)
    assert (await cart.post(f"/add/{product}/")).status_code == 200
    client = platform_of(stack.apps["cart"]).client
    orders_app = stack.apps["orders"]
    client.route("orders", CommitFails(orders_app, platform_of(orders_app).sessionmaker, **failing))
    try:
        failed = await cart.post("/checkout/")
    finally:
        client.route("orders", orders_app)
    assert failed.status_code >= 500, failed.text
    return cart


async def test_a_checkout_of_an_order_rolled_back_is_closed_at_sumup(
    stack, clean_db, shop, sandbox: Sandbox
):
    """L3 (3): SumUp made the checkout, then create-order's transaction rolled back (its
    commit failed): no order, and the checkout stayed PENDING, payable until it expired. It is
    closed now, once the failure is answered."""
    await check_out_failing(stack, 41, shop.product_ids[0], applied=False)
    assert orders_of(clean_db) == {}
    [made] = sandbox.checkouts()
    assert await eventually(lambda: sandbox.checkout(made["id"])["status"] == "EXPIRED")


async def test_a_checkout_of_an_order_committed_despite_the_failure_stays_open(
    stack, clean_db, shop, sandbox: Sandbox
):
    """The other side: the commit reached PostgreSQL and its answer was lost. The order exists,
    so its checkout is not closed: the buyer's retry gets it back, and its payment is found by
    reconciliation as any (never refunded)."""
    cart = await check_out_failing(stack, 42, shop.product_ids[0], applied=True)
    [order_id] = orders_of(clean_db)
    again = await cart.post("/checkout/")
    assert again.status_code == 200, again.text
    assert again.json()["order_id"] == order_id
    [made] = sandbox.checkouts()
    assert made["status"] == "PENDING"
    sandbox.pay(made["id"])
    await stack.apps["orders"].state.reconciler.run_once()
    assert orders_of(clean_db)[order_id][0] == "paid"
    with admin_connect(clean_db, "orders") as connection:
        assert connection.execute("SELECT count(*) FROM orders.refunds").fetchone() == (0,)


async def test_a_payment_racing_the_close_of_a_rolled_back_checkout_is_named(
    stack, clean_db, shop, sandbox: Sandbox, caplog
):
    """A payment SumUp took just before the close (nobody was given the URL, so only in a
    race nobody can win by the shop's pages): the close finds it PAID and names it for a
    person, as no order records it."""

    def buyer_pays() -> None:
        [made] = sandbox.checkouts()
        sandbox.pay(made["id"])

    await check_out_failing(stack, 43, shop.product_ids[0], applied=False, meanwhile=buyer_pays)
    [made] = sandbox.checkouts()
    assert await eventually(lambda: "never committed, is PAID" in caplog.text)
    assert made["id"] in caplog.text
    assert orders_of(clean_db) == {}


async def test_a_checkout_whose_answer_was_lost_is_closed_when_no_order_is_made(
    stack, clean_db, shop, sandbox: Sandbox
):
    """L3 (3), the answer lost: SumUp made the checkout but its answer never came, so create-
    order failed (503) and rolled back, its checkout open at SumUp. The one SumUp holds under
    the order's reference, for the payable time asked, is closed."""
    cart = await browser_of(stack, "cart", user_id=44)
    assert (await cart.post(f"/add/{shop.product_ids[0]}/")).status_code == 200
    sandbox.controls(checkout_creations="lose_answer")
    failed = await cart.post("/checkout/")
    assert failed.status_code == 503, failed.text
    sandbox.controls(checkout_creations="answer")
    assert orders_of(clean_db) == {}
    [made] = sandbox.checkouts()
    assert await eventually(lambda: sandbox.checkout(made["id"])["status"] == "EXPIRED")

    again = await cart.post("/checkout/")
    assert again.status_code == 200, again.text
    assert [checkout["status"] for checkout in sandbox.checkouts()] == ["EXPIRED", "PENDING"]
