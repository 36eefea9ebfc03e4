"""The money invariants as a stateful property: one buyer with two browser tabs drives the real
apps (in process, over ASGI HTTP), the real database and the SumUp sandbox (over HTTP) through
add / remove / book / release (a paid entry and a free one) / checkout (SumUp reached or not) /
sign-in / pay / pay again / webhooks (delivered, duplicated, lost) / reconciliation / time
passing / a competitor booking, in every order Hypothesis can think of. After every step:

- no cart line or booking is claimed by two orders that both count as paid;
- at most one payable order holds any good;
- every paid order's lines are gone from the cart (once the outbox has delivered);
- every superseded order's SumUp checkout is closed (unless closing was made to fail, until
  the next reconciliation);
- no hold outlives its expiry: a competitor can book exactly what is not held; a booking no
  order holds is held no longer than a cart holds it (15 minutes);
- an order with nothing to pay took nothing (no SumUp checkout) and its bookings are confirmed
  for it;
- money adds up: every payment orders knows of is an order's one payment or has a refund of
  its whole amount; after reconciliation orders knows of every payment SumUp took, and SumUp
  gave back exactly what orders' settled refunds say.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections import Counter
from collections.abc import Awaitable
from datetime import timedelta
from decimal import Decimal
from typing import Any, TypeVar

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tests.conftest import admin_connect
from tests.integration.commerce_fixtures import open_shop, share_cookies, shop_stack

T = TypeVar("T")
JSON = {"accept": "application/json"}
TABS = st.sampled_from(["left", "right"])
# At least 200 examples in the suite; fewer for a quick look while developing.
EXAMPLES = int(os.environ.get("ROSE_PROPERTY_EXAMPLES", "200"))
STEPS = 15
# What events holds a cart's booking for (EVENTS_HOLD_SECONDS), and what a give-back holds a
# booking whose cart hold ran out for (events.service.GIVEN_BACK_HOLD).
CART_HOLD = timedelta(minutes=15)

pytestmark = pytest.mark.slow


_connections: dict[tuple[int, str], Any] = {}


def rows(server, service: str, sql: str, params: tuple = ()) -> list[tuple]:
    """One autocommit connection per database for the whole property run (hundreds of
    thousands of checks: a connection each would dominate)."""
    key = (id(server), service)
    connection = _connections.get(key)
    if connection is None or connection.closed:
        connection = _connections[key] = admin_connect(server, service)
    return connection.execute(sql, params).fetchall()


class Tab:
    """What one tab shows: the order it last saw and that order's payment page."""

    def __init__(self) -> None:
        self.order_id: int | None = None
        self.checkout_id: str | None = None


def test_two_tabs_of_one_buyer_never_lose_money(clean_db, credentials, sandbox) -> None:
    shop = open_shop(clean_db)
    products = shop.product_ids[:3]
    calendar_id = rows(clean_db, "events", "SELECT id FROM events.calendars LIMIT 1")[0][0]
    loop = asyncio.new_event_loop()

    def run(step: Awaitable[T]) -> T:
        return loop.run_until_complete(step)

    context = shop_stack(clean_db, credentials, sandbox.server, ORDERS_CHECKOUTS_PER_MINUTE="6")
    stack = run(context.__aenter__())
    orders_app = stack.apps["orders"].state
    buyers = itertools.count(1)
    # How often the runs reached the states the hold invariants are about (printed at the end).
    coverage: Counter[str] = Counter()

    class TwoTabs(RuleBasedStateMachine):
        @initialize(booked=st.booleans())
        def new_buyer(self, booked: bool) -> None:
            self.n = next(buyers)
            self.user_id = 1000 + self.n
            self.signed_in = False
            self.tabs = {"left": Tab(), "right": Tab()}
            self.closing_may_lag = False
            # The buyer's held bookings at the last look: entry -> (order, hold left, cart
            # hold ended).
            self.holds: dict[int, tuple[int | None, timedelta, bool]] = {}
            sandbox.controls(
                deactivation_unavailable=False, refunds="accept", api_unavailable=False
            )
            self.entry_id, self.free_entry_id = (
                rows(
                    clean_db,
                    "events",
                    "INSERT INTO events.calendar_entries (calendar_id, name, starts_at, cost) "
                    "VALUES (%s, %s, now() + interval '3 days', %s) RETURNING id",
                    (calendar_id, f"{name} {self.n}", cost),
                )[0][0]
                for name, cost in (("Tour", "7.50"), ("Walk", "0.00"))
            )
            # Each buyer at an address of its own: cart's limit per address is not this test's.
            address = f"10.{self.n // 65536 % 256}.{self.n // 256 % 256}.{self.n % 256}"
            self.browser = {
                name: stack.browser(name, address) for name in ("cart", "events", "orders")
            }
            self.market = stack.browser("market", address)
            cart = self.browser["cart"]
            token = run(cart.get("/auth/session", headers=JSON)).json()["csrf_token"]
            cart.headers.update({"x-csrf-token": token, "accept": "application/json"})
            share_cookies(cart, self.browser["events"], self.browser["orders"], self.market)
            self.add(0)  # a buyer arrives with something in the cart
            if booked:  # ...and half of them with a booking too
                self.book(free=False)

        def teardown(self) -> None:
            for client in (*self.browser.values(), self.market):
                run(client.aclose())

        # -- what the buyer does ----------------------------------------------------------
        def cart(self, path: str, **body: Any) -> httpx.Response:
            return run(self.browser["cart"].post(path, json=body or None))

        @rule(product=st.sampled_from(range(3)))
        def add(self, product: int) -> None:
            assert self.cart(f"/add/{products[product]}/").status_code == 200

        @rule(product=st.sampled_from(range(3)))
        def remove(self, product: int) -> None:
            lines = self.my_lines()
            line = next((line for line in lines if line[1] == products[product]), None)
            if line is not None:
                assert self.cart(f"/item/{line[0]}/delete/").status_code == 200

        def entry(self, free: bool) -> int:
            return self.free_entry_id if free else self.entry_id

        @rule(free=st.booleans())
        def book(self, free: bool) -> None:
            booked = run(self.browser["events"].post(f"/entries/{self.entry(free)}/book/"))
            assert booked.status_code in (200, 409), booked.text

        @rule(free=st.booleans())
        def release(self, free: bool) -> None:
            released = self.cart(f"/booking/entry/{self.entry(free)}/delete/")
            assert released.status_code in (200, 404), released.text

        @rule(tab=TABS)
        def checkout(self, tab: str) -> None:
            answer = self.cart("/checkout/")
            assert answer.status_code in (200, 409, 429), answer.text
            if answer.status_code == 200:
                self.tabs[tab].order_id = answer.json()["order_id"]
                self.tabs[tab].checkout_id = self.current_checkout(self.tabs[tab].order_id)
            run(orders_app.reconciler.quiet())

        @rule()
        def checkout_fails_at_sumup(self) -> None:
            """SumUp cannot be reached as the buyer checks out: create-order fails after events
            held the bookings for the order it was making, and gives them back. The buyer was
            told their cart has not changed: every booking is held as it was, for the order
            that held it before (perhaps after its cart's hold ran out) or for the cart."""
            before = self.booking_holds()
            sandbox.controls(api_unavailable=True)
            try:
                answer = self.cart("/checkout/")
            finally:
                sandbox.controls(api_unavailable=False)
            # 200: only free bookings, paid as the order is made (no SumUp).
            assert answer.status_code in (200, 409, 429, 503), answer.text
            if answer.status_code != 503:
                return
            coverage["a checkout failed at SumUp"] += 1
            run(flush_outbox())
            assert self.booking_holds() == before
            coverage["a failed checkout gave its bookings back"] += any(
                order_id is not None for order_id, _ in before.values()
            )

        @precondition(lambda self: not self.signed_in)
        @rule()
        def sign_in(self) -> None:
            signed = run(self.market.get(f"/auth/dev-login?user_id={self.user_id}", headers=JSON))
            assert signed.status_code == 200
            self.signed_in = True
            # A new session and CSRF token at sign-in, for every tab and service.
            self.market.headers["x-csrf-token"] = signed.json()["csrf_token"]
            share_cookies(self.market, *self.browser.values())
            run(orders_app.reconciler.quiet())

        def has_checkout(self) -> bool:
            return any(tab.checkout_id for tab in self.tabs.values())

        @precondition(lambda self: self.has_checkout())
        @rule(tab=TABS)
        def pay(self, tab: str) -> None:
            """The buyer presses Pay on the payment page this tab shows (perhaps an old one)."""
            checkout_id = self.tabs[tab].checkout_id
            if checkout_id is not None:
                paid = sandbox.client.post(f"/pay/{checkout_id}/pay")
                assert paid.status_code in (303, 409), paid.text

        @precondition(lambda self: self.has_checkout())
        @rule(tab=TABS)
        def pay_again(self, tab: str) -> None:
            order_id = self.tabs[tab].order_id
            if order_id is None:
                return
            answer = run(self.browser["orders"].post(f"/order/{order_id}/pay/"))
            assert answer.status_code in (200, 409), answer.text
            if answer.status_code == 200:
                self.tabs[tab].checkout_id = self.current_checkout(order_id)

        @precondition(lambda self: self.has_checkout())
        @rule(tab=TABS, copies=st.sampled_from([1, 2]))
        def webhook(self, tab: str, copies: int) -> None:
            """SumUp tells orders about the tab's checkout, once or duplicated (a webhook that
            is lost is simply this rule not being drawn)."""
            order_id, checkout_id = self.tabs[tab].order_id, self.tabs[tab].checkout_id
            if order_id is None or checkout_id is None:
                return
            body = {"event_type": "CHECKOUT_STATUS_CHANGED", "id": checkout_id}
            for _ in range(copies):
                answer = run(
                    stack.client("orders").post(f"/checkout/webhook/{order_id}/", json=body)
                )
                assert answer.status_code == 204, answer.text
            run(orders_app.reconciler.quiet())

        @rule()
        def reconcile(self) -> None:
            run(orders_app.reconciler.run_once())
            self.check_sumup_known()
            if not sandbox_controls()["deactivation_unavailable"]:
                self.closing_may_lag = False

        @rule(unavailable=st.booleans())
        def sumup_closing(self, unavailable: bool) -> None:
            """SumUp's deactivation fails (or works again)."""
            sandbox.controls(deactivation_unavailable=unavailable)

        @rule(minutes=st.sampled_from([15, 30]))
        def time_passes(self, minutes: int) -> None:
            """The clock moves on ``minutes``: every time a hold or a payable time ends is that
            much nearer, the cart's hold kept while an order holds a booking
            (``cart_hold_expires_at``) and the hold it had before (``prior_hold_expires_at``)
            as much as the hold itself, so that a cart hold runs out while an order holds its
            booking (15 minutes: a cart's hold ends, an order's does not). A checkout whose
            order's payable time passed is closed by SumUp (its valid_until passed). No
            sweeper runs."""
            shift = f"interval '{minutes} minutes'"
            rows(
                clean_db,
                "events",
                f"UPDATE events.calendar_entries SET hold_expires_at = hold_expires_at - {shift}, "
                f"cart_hold_expires_at = cart_hold_expires_at - {shift}, "
                f"prior_hold_expires_at = prior_hold_expires_at - {shift} "
                "WHERE id = ANY(%s) RETURNING id",
                ([self.entry_id, self.free_entry_id],),
            )
            rows(
                clean_db,
                "orders",
                f"UPDATE orders.orders SET payable_until = payable_until - {shift} "
                f"WHERE {self.mine()} RETURNING id",
            )
            for (checkout_id,) in rows(
                clean_db,
                "orders",
                "SELECT a.sumup_checkout_id FROM orders.payment_attempts a "
                "JOIN orders.orders o ON o.id = a.order_id WHERE o.status = 'pending' "
                f"AND o.payable_until <= now() AND {self.mine('o')}",
            ):
                sandbox.client.post(f"/_sandbox/checkouts/{checkout_id}/expire")

        @rule()
        def a_competitor_books(self) -> None:
            [(state, ended)] = rows(
                clean_db,
                "events",
                "SELECT state, hold_expires_at <= now() FROM events.calendar_entries WHERE id = %s",
                (self.entry_id,),
            )
            free = state == "open" or (state == "pending" and ended)
            competitor = stack.browser("events")
            try:
                token = run(competitor.get("/auth/session", headers=JSON)).json()["csrf_token"]
                competitor.headers.update({"x-csrf-token": token, "accept": "application/json"})
                booked = run(competitor.post(f"/entries/{self.entry_id}/book/"))
                assert booked.status_code == (200 if free else 409), (state, ended, booked.text)
                if booked.status_code == 200:
                    # ...and changes their mind: the slot is free again, for the buyer too.
                    cart = stack.browser("cart")
                    share_cookies(competitor, cart)
                    released = run(cart.post(f"/booking/entry/{self.entry_id}/delete/"))
                    run(cart.aclose())
                    assert released.status_code == 200, released.text
            finally:
                run(competitor.aclose())

        # -- helpers --------------------------------------------------------------------------
        def mine(self, table: str = "orders.orders") -> str:
            """SQL: the buyer's orders (by user, or by this browser's session)."""
            session_ids = ", ".join(f"'{sid}'" for sid in self.session_ids()) or "NULL"
            return f"({table}.user_id = {self.user_id} OR {table}.session_id IN ({session_ids}))"

        def session_ids(self) -> list[str]:
            from apps.common.identity import SessionCodec
            from tests.conftest import SESSION_SECRET

            codec = SessionCodec(SESSION_SECRET)
            session = codec.decode(self.browser["cart"].cookies.get("rose_session", ""))
            return [session.identity.session_id] if session else []

        def my_lines(self) -> list[tuple[int, int]]:
            view = run(self.browser["cart"].get("/api/cart")).json()
            return [(line["id"], line["product_id"]) for p in view["pages"] for line in p["lines"]]

        def booking_holds(self) -> dict[int, tuple[int | None, Any]]:
            """The buyer's held bookings: entry -> (the order holding it, its hold's end)."""
            return {
                entry_id: (order_id, until)
                for entry_id, order_id, until in rows(
                    clean_db,
                    "events",
                    "SELECT id, hold_order_id, hold_expires_at FROM events.calendar_entries "
                    "WHERE id = ANY(%s) AND state = 'pending' AND hold_expires_at > now()",
                    ([self.entry_id, self.free_entry_id],),
                )
            }

        def current_checkout(self, order_id: int) -> str | None:
            """None for an order with nothing to pay (it has no SumUp checkout)."""
            found = rows(
                clean_db,
                "orders",
                "SELECT sumup_checkout_id FROM orders.payment_attempts WHERE order_id = %s "
                "ORDER BY number DESC LIMIT 1",
                (order_id,),
            )
            return found[0][0] if found else None

        def my_orders(self) -> list[tuple]:
            return rows(
                clean_db,
                "orders",
                f"SELECT id, status FROM orders.orders WHERE {self.mine()} ORDER BY id",
            )

        def check_sumup_known(self) -> None:
            """After reconciliation, orders knows of every payment SumUp took for the buyer."""
            for attempt_id, checkout_id, status in self.my_attempts():
                remote = sandbox.checkout(checkout_id)["status"]
                if remote == "PAID":
                    assert status == "PAID", (attempt_id, status)

        def my_attempts(self) -> list[tuple]:
            return rows(
                clean_db,
                "orders",
                "SELECT a.id, a.sumup_checkout_id, a.status FROM orders.payment_attempts a "
                f"JOIN orders.orders o ON o.id = a.order_id WHERE {self.mine('o')}",
            )

        # -- invariants -------------------------------------------------------------------------
        @invariant()
        def money_is_safe(self) -> None:
            run(orders_app.reconciler.quiet())
            run(flush_outbox())  # what the relay does next anyway
            self.no_good_is_paid_twice()
            self.one_payable_order_per_good()
            self.paid_orders_are_gone_from_the_cart()
            self.superseded_checkouts_are_closed()
            self.free_orders_took_nothing()
            self.money_adds_up()
            self.a_cart_holds_no_longer_than_a_cart_hold()

        def no_good_is_paid_twice(self) -> None:
            doubled = rows(
                clean_db,
                "orders",
                "SELECT c.kind, c.ref_id, array_agg(o.id) FROM orders.order_claims c "
                "JOIN orders.orders o ON o.id = c.order_id WHERE o.status = 'paid' "
                f"AND {self.mine('o')} GROUP BY c.kind, c.ref_id HAVING count(*) > 1",
            )
            assert doubled == []
            for (order_id,) in rows(
                clean_db,
                "events",
                "SELECT order_id FROM events.calendar_entries WHERE id = ANY(%s) "
                "AND state = 'confirmed'",
                ([self.entry_id, self.free_entry_id],),
            ):
                assert rows(
                    clean_db,
                    "orders",
                    "SELECT status FROM orders.orders WHERE id = %s",
                    (order_id,),
                ) == [("paid",)]

        def one_payable_order_per_good(self) -> None:
            shared = rows(
                clean_db,
                "orders",
                "SELECT i.kind, i.source_id, array_agg(o.id) FROM orders.order_items i "
                "JOIN orders.orders o ON o.id = i.order_id "
                f"WHERE o.status = 'pending' AND NOT o.flagged AND {self.mine('o')} "
                "GROUP BY i.kind, i.source_id HAVING count(*) > 1",
            )
            assert shared == []

        def paid_orders_are_gone_from_the_cart(self) -> None:
            paid_lines = rows(
                clean_db,
                "orders",
                "SELECT o.id, i.cart_line_ids[1] FROM orders.order_items i "
                "JOIN orders.orders o ON o.id = i.order_id WHERE o.status = 'paid' "
                f"AND i.kind = 'product' AND i.cart_line_ids IS NOT NULL AND {self.mine('o')}",
            )
            if paid_lines:
                live = rows(
                    clean_db,
                    "cart",
                    "SELECT id FROM cart.cart_items WHERE id = ANY(%s) AND deleted_at IS NULL",
                    ([line_id for _, line_id in paid_lines],),
                )
                assert live == [], (paid_lines, live)

        def superseded_checkouts_are_closed(self) -> None:
            if sandbox_controls()["deactivation_unavailable"]:
                self.closing_may_lag = True
            if self.closing_may_lag:
                return
            for (checkout_id,) in rows(
                clean_db,
                "orders",
                "SELECT a.sumup_checkout_id FROM orders.payment_attempts a "
                "JOIN orders.orders o ON o.id = a.order_id "
                f"WHERE o.status = 'superseded' AND {self.mine('o')}",
            ):
                assert sandbox.checkout(checkout_id)["status"] in ("EXPIRED", "PAID")

        def free_orders_took_nothing(self) -> None:
            """A paid order of 0.00 never had a SumUp checkout, and its bookings are its own."""
            for order_id, attempts, entry_ids in rows(
                clean_db,
                "orders",
                "SELECT o.id, (SELECT count(*) FROM orders.payment_attempts a "
                "WHERE a.order_id = o.id), array(SELECT i.source_id FROM orders.order_items i "
                "WHERE i.order_id = o.id AND i.kind = 'calendar_entry') FROM orders.orders o "
                f"WHERE o.status = 'paid' AND o.total = 0 AND {self.mine('o')}",
            ):
                assert attempts == 0, order_id
                confirmed = rows(
                    clean_db,
                    "events",
                    "SELECT id FROM events.calendar_entries WHERE id = ANY(%s) "
                    "AND state = 'confirmed' AND order_id = %s",
                    (entry_ids, order_id),
                )
                assert sorted(entry_id for (entry_id,) in confirmed) == sorted(entry_ids)

        def a_cart_holds_no_longer_than_a_cart_hold(self) -> None:
            """A booking no order holds is held as a cart holds it: 15 minutes at most from
            now, whichever order gave it back (its cart hold, or the given-back while); and a
            booking an order gave back to the cart is held no longer than the order held it."""
            holds = {
                entry_id: (order_id, held_for, cart_ended)
                for entry_id, order_id, held_for, cart_ended in rows(
                    clean_db,
                    "events",
                    "SELECT id, hold_order_id, hold_expires_at - now(), "
                    "cart_hold_expires_at <= now() FROM events.calendar_entries "
                    "WHERE id = ANY(%s) AND state = 'pending' AND hold_expires_at > now()",
                    ([self.entry_id, self.free_entry_id],),
                )
            }
            for entry_id, (order_id, held_for, _) in holds.items():
                if order_id is None:
                    assert held_for <= CART_HOLD, (entry_id, held_for)
                before = self.holds.get(entry_id)
                if before is not None and before[0] is not None and order_id is None:
                    coverage["given back to the cart"] += 1
                    if before[2]:
                        coverage["given back after its cart hold ran out"] += 1
                    # The clock ran between the two looks: the hold left is no longer.
                    assert held_for <= before[1], (entry_id, before, held_for)
            coverage["an order holds it after its cart hold ran out"] += any(
                order_id is not None and cart_ended for order_id, _, cart_ended in holds.values()
            )
            self.holds = holds

        def money_adds_up(self) -> None:
            """Every payment orders knows of is an order's one payment or goes back whole."""
            for order_id, status, number, attempt_id, amount, refund in rows(
                clean_db,
                "orders",
                "SELECT o.id, o.status, rank() OVER (PARTITION BY o.id ORDER BY a.number), "
                "a.id, a.amount, r.amount FROM orders.payment_attempts a "
                "JOIN orders.orders o ON o.id = a.order_id "
                "LEFT JOIN orders.refunds r ON r.order_id = o.id "
                "AND r.reason_key = 'late-payment:' || a.id "
                f"WHERE a.status = 'PAID' AND {self.mine('o')}",
            ):
                if not (status == "paid" and number == 1):
                    assert refund == amount, (order_id, status, attempt_id)

    async def flush_outbox() -> None:
        """Deliver every due message, waiting for one the relay is delivering right now."""
        for _ in range(200):
            await orders_app.runtime.relay.deliver_due()
            undelivered = rows(
                clean_db,
                "orders",
                "SELECT count(*) FROM orders.outbox WHERE delivered_at IS NULL "
                "AND next_attempt_at <= now()",
            )[0][0]
            if not undelivered:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the outbox did not drain")

    def sandbox_controls() -> dict[str, Any]:
        return sandbox.client.get("/_sandbox/controls").json()

    TwoTabs.TestCase.settings = settings(
        max_examples=EXAMPLES,
        stateful_step_count=STEPS,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    try:
        run_machine(TwoTabs)
        # Every refund the runs made is settled at SumUp exactly once.
        run(orders_app.reconciler.run_once())
        sandbox.controls(deactivation_unavailable=False, refunds="accept")
        run(orders_app.reconciler.run_once())
        for attempt_id, amount, transaction_id in rows(
            clean_db,
            "orders",
            "SELECT r.attempt_id, sum(r.amount), a.transaction_id FROM orders.refunds r "
            "JOIN orders.payment_attempts a ON a.id = r.attempt_id WHERE r.status = 'done' "
            "GROUP BY r.attempt_id, a.transaction_id",
        ):
            events = sandbox.transaction(transaction_id)["events"]
            given_back = sum(Decimal(str(event["amount"])) for event in events)
            assert given_back == amount, attempt_id
        outcomes = rows(
            clean_db,
            "orders",
            "SELECT status || CASE WHEN total = 0 THEN ' (nothing to pay)' ELSE '' END, count(*) "
            "FROM orders.orders GROUP BY 1 ORDER BY 1",
        )
        print("orders by status:", outcomes)
        refunds = rows(clean_db, "orders", "SELECT status, count(*) FROM orders.refunds GROUP BY 1")
        entries = rows(
            clean_db, "events", "SELECT state, count(*) FROM events.calendar_entries GROUP BY 1"
        )
        items = rows(
            clean_db,
            "orders",
            "SELECT o.status, i.kind, count(*) FROM orders.order_items i "
            "JOIN orders.orders o ON o.id = i.order_id GROUP BY 1, 2 ORDER BY 1, 2",
        )
        print("holds:", dict(coverage))
        print("refunds by status:", refunds, "entries by state:", entries, "items:", items)
    finally:
        run(context.__aexit__(None, None, None))
        loop.close()
        for connection in _connections.values():
            connection.close()
        _connections.clear()


def run_machine(machine: type[RuleBasedStateMachine]) -> None:
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(machine, settings=machine.TestCase.settings)
