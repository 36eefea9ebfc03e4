"""`rose outbox dead` and `rose outbox resend`: an operator lists the outbox messages their
receiver refused for good, and makes one put right due again, instead of writing SQL by hand.

The messages die the real way: a free order queues cart's clear in orders' outbox, and orders'
relay gets a 422 for it over ASGI HTTP (cart, until it is put right). Resent, the real cart app
applies it. The CLI runs in a thread: the relay's own loop runs on this event loop meanwhile.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from apps.common.asgi import read_body, send_problem
from ops.cli import app as rose_cli
from tests.conftest import admin_connect
from tests.integration.orders_fixtures import (
    add_page_config,
    create,
    order_payload,
    orders_stack,
    product_line,
)

CLEAR = "/internal/actions/clear-cart-for-order"


class CartRefusing:
    """cart, except that while ``refusing`` it answers clear-cart-for-order 422, unapplied (a
    refusal for good: the relay sends it no more)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.refusing = True

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not self.refusing or scope["type"] != "http" or scope["path"] != CLEAR:
            await self.app(scope, receive, send)
            return
        await read_body(receive)
        await send_problem(send, 422, "order_id: cart will not take this order", scope["path"])


@pytest.fixture
async def orders(clean_db, credentials, sandbox):
    add_page_config(clean_db, "site", 0)
    async with orders_stack(
        clean_db,
        credentials,
        sandbox.server,
        services=["orders", "blog", "cart"],
        # The relay passes when woken (a message queued) or by the test: a message resent is
        # seen due before the relay's poll can deliver it.
        ORDERS_OUTBOX_POLL_SECONDS="3600",
    ) as running:
        yield running


async def rose(server, *args: str) -> Result:
    env = {"ROSE_ADMIN_URL": server.admin_url, "ROSE_ENV": "dev", "COLUMNS": "200"}
    return await asyncio.to_thread(CliRunner().invoke, rose_cli, list(args), env=env)


def outbox_states(server) -> list[tuple]:
    """(id, attempts, delivered, dead, due now) of each message of orders' outbox."""
    with admin_connect(server, "orders") as connection:
        return connection.execute(
            "SELECT id, attempts, delivered_at IS NOT NULL, dead_at IS NOT NULL, "
            "next_attempt_at <= now() FROM orders.outbox ORDER BY id"
        ).fetchall()


def cleared_orders(server) -> list[int]:
    with admin_connect(server, "cart") as connection:
        rows = connection.execute("SELECT order_id FROM cart.cleared_orders ORDER BY order_id")
        return [row[0] for row in rows]


async def free_order_refused(orders, server, key: str) -> int:
    """A free order, paid as it is made: its clear-cart is refused for good, and dead."""
    created = await create(orders, order_payload(product_line(1, "0.00", 1)), key=key)
    assert created.status_code == 200, created.text
    order_id = int(created.json()["order_id"])
    relay = orders.apps["orders"].state.runtime.relay

    def dead() -> bool:
        with admin_connect(server, "orders") as connection:
            row = connection.execute(
                "SELECT dead_at IS NOT NULL FROM orders.outbox "
                "WHERE (payload ->> 'order_id')::bigint = %s",
                (order_id,),
            ).fetchone()
        return bool(row and row[0])

    for _ in range(100):  # bounded: a relay that never refuses fails the test's next line
        if dead():
            break
        await relay.deliver_due()
        await asyncio.sleep(0.05)
    assert dead(), outbox_states(server)
    return order_id


async def test_a_dead_message_is_listed_resent_and_delivered(orders, clean_db):
    cart = CartRefusing(orders.apps["cart"])
    for client in orders.all_internal:
        client.route("cart", cart)
    first = await free_order_refused(orders, clean_db, "free-1")
    second = await free_order_refused(orders, clean_db, "free-2")
    states = outbox_states(clean_db)
    assert [row[2:4] for row in states] == [(False, True), (False, True)]  # dead, not delivered
    one, two = states[0][0], states[1][0]

    listed = await rose(clean_db, "outbox", "dead", "--json")
    assert listed.exit_code == 0, listed.output
    messages = json.loads(listed.stdout)
    assert [(m["service"], m["id"], m["target"], m["action"]) for m in messages] == [
        ("orders", one, "cart", "clear-cart-for-order"),
        ("orders", two, "cart", "clear-cart-for-order"),
    ]
    assert [m["payload"]["order_id"] for m in messages] == [first, second]
    assert all("answered 422" in m["last_error"] for m in messages), messages
    assert all(m["dead_at"] for m in messages)

    table = await rose(clean_db, "outbox", "dead", "--service", "orders")
    assert table.exit_code == 0, table.output
    assert "clear-cart-for-order" in table.stdout
    assert "answered 422" in table.stdout
    assert '{"lines":[{"quantity":1,' in table.stdout, table.stdout  # the payload, shortened
    none_here = await rose(clean_db, "outbox", "dead", "--service", "market")
    assert none_here.exit_code == 0, none_here.output
    assert "no dead outbox messages" in none_here.stdout

    # Refused, and nothing changed: an id that is no message, with one that is dead.
    unknown = await rose(clean_db, "outbox", "resend", "orders", str(one), "999999")
    assert unknown.exit_code == 1, unknown.output
    assert "nothing resent: orders has no outbox message 999999" in unknown.stderr, unknown.stderr
    assert [row[3] for row in outbox_states(clean_db)] == [True, True]

    # Cart is put right; the first is resent, and the relay delivers it to cart.
    cart.refusing = False
    resent = await rose(clean_db, "outbox", "resend", "orders", str(one))
    assert resent.exit_code == 0, resent.output
    assert str(one) in resent.stdout
    assert outbox_states(clean_db)[0] == (one, 0, False, False, True)
    twice = await rose(clean_db, "outbox", "resend", "orders", str(one))
    assert twice.exit_code == 1, twice.output
    assert f"message {one} is not dead (waiting to be sent)" in twice.stderr, twice.stderr
    # The relay of another process finds it due at its next poll; here, its pass now.
    relay = orders.apps["orders"].state.runtime.relay
    await relay.deliver_due()
    assert outbox_states(clean_db)[0][2:4] == (True, False)
    assert cleared_orders(clean_db) == [first]

    # Delivered, it is not dead: resending it again is refused, with the dead one beside it.
    again = await rose(clean_db, "outbox", "resend", "orders", str(two), str(one))
    assert again.exit_code == 1, again.output
    assert f"message {one} is not dead (delivered)" in again.stderr, again.stderr
    assert outbox_states(clean_db)[1][3] is True

    every = await rose(clean_db, "outbox", "resend", "orders", "--all")
    assert every.exit_code == 0, every.output
    assert str(two) in every.stdout
    await relay.deliver_due()
    assert [row[2:4] for row in outbox_states(clean_db)] == [(True, False), (True, False)]
    assert cleared_orders(clean_db) == [first, second]

    nothing = await rose(clean_db, "outbox", "dead")
    assert nothing.exit_code == 0, nothing.output
    assert "no dead outbox messages" in nothing.stdout
    assert json.loads((await rose(clean_db, "outbox", "dead", "--json")).stdout) == []


async def test_resend_refuses_what_it_cannot_do(clean_db):
    for args, words in [
        (["orders"], "name the messages to resend, or --all"),
        (["orders", "1", "--all"], "name the messages to resend, or --all"),
        (["blog", "1"], "blog has no outbox"),
        (["shop", "1"], "unknown service 'shop'"),
        (["orders", "1"], "orders has no outbox message 1"),
    ]:
        refused = await rose(clean_db, "outbox", "resend", *args)
        assert refused.exit_code != 0, (args, refused.output)
        assert words in refused.stderr, (args, refused.stderr)
    listed = await rose(clean_db, "outbox", "dead", "--service", "blog")
    assert listed.exit_code != 0
    assert "blog has no outbox" in listed.stderr


@pytest.mark.parametrize(
    ("hide", "unhide"),
    [
        # orders' migrations not run as far as the outbox (no table) ...
        (
            "ALTER TABLE orders.outbox RENAME TO outbox_hidden",
            "ALTER TABLE orders.outbox_hidden RENAME TO outbox",
        ),
        # ... or run only as far as an outbox without dead messages (no dead_at).
        (
            "ALTER TABLE orders.outbox RENAME COLUMN dead_at TO dead_at_hidden",
            "ALTER TABLE orders.outbox RENAME COLUMN dead_at_hidden TO dead_at",
        ),
    ],
)
async def test_an_outbox_not_migrated_is_one_clear_error(clean_db, hide, unhide):
    """A database whose migrations are behind is named, with what to run: no traceback."""
    with admin_connect(clean_db, "orders") as connection:
        connection.execute(hide)
        connection.commit()
    try:
        for args in (["dead"], ["dead", "--service", "orders"], ["resend", "orders", "--all"]):
            refused = await rose(clean_db, "outbox", *args)
            assert refused.exit_code == 1, (args, refused.output)
            assert refused.exception is None or isinstance(refused.exception, SystemExit), (
                args,
                refused.exception,
            )
            assert "outbox is not as this rose reads it" in refused.stderr, (args, refused.stderr)
            assert "rose db migrate" in refused.stderr, (args, refused.stderr)
            assert "Traceback" not in refused.output
    finally:
        with admin_connect(clean_db, "orders") as connection:
            connection.execute(unhide)
            connection.commit()


async def test_a_login_that_may_not_act_as_the_owner_is_one_clear_error(clean_db):
    """The outbox is read and changed as its service's owner (SET LOCAL ROLE): a login that
    may connect but is not a member of the owner role is told so in one line, naming the role,
    and nothing is read or changed."""
    login, password = "outbox_test_stranger", "stranger-password-1"
    with admin_connect(clean_db) as admin:
        admin.execute(f"CREATE ROLE {login} LOGIN PASSWORD '{password}'")
        admin.execute(f"GRANT CONNECT ON DATABASE db_orders TO {login}")
    url = make_url(clean_db.admin_url).set(username=login, password=password)
    env = {
        "ROSE_ADMIN_URL": url.render_as_string(hide_password=False),
        "ROSE_ENV": "dev",
        "COLUMNS": "200",
    }
    try:
        for args in (["dead", "--service", "orders"], ["resend", "orders", "--all"]):
            refused = await asyncio.to_thread(
                CliRunner().invoke, rose_cli, ["outbox", *args], env=env
            )
            assert refused.exit_code == 1, (args, refused.output)
            assert refused.exception is None or isinstance(refused.exception, SystemExit)
            assert "orders's outbox is read and changed as orders_owner" in refused.stderr, (
                args,
                refused.stderr,
            )
            assert "permission denied" in refused.stderr, refused.stderr
            assert "Traceback" not in refused.output
            assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    finally:
        with admin_connect(clean_db) as admin:
            admin.execute(f"REVOKE CONNECT ON DATABASE db_orders FROM {login}")
            admin.execute(f"DROP ROLE {login}")
