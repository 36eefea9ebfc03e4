"""What orders tests need: a real SumUp sandbox over HTTP, page configs in db_blog, in-process
orders and blog apps, and create-order payloads."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import httpx

from apps.sumup_sandbox.app import DEFAULT_API_KEY, DEFAULT_MERCHANT_CODE
from apps.sumup_sandbox.server import BackgroundSandbox
from apps.sumup_sandbox.state import SandboxControls, SandboxState
from tests.conftest import admin_connect, in_process_stack
from tests.signed import internal_post

ORDERS_PUBLIC_URL = "http://orders.test"


def sandbox_state(**controls: Any) -> SandboxState:
    # In-process orders listen on no port: the tests deliver webhooks themselves.
    defaults: dict[str, Any] = {"webhooks": "drop", "webhook_retry_delays": ()}
    return SandboxState(SandboxControls(**{**defaults, **controls}))


def add_page_config(
    server,
    container_type: str,
    container_id: int,
    *,
    merchant_code: str | None = DEFAULT_MERCHANT_CODE,
    api_key: str | None = DEFAULT_API_KEY,
    prefix: str | None = "rose-test-",
) -> int:
    with admin_connect(server, "blog") as connection:
        return connection.execute(
            """
            INSERT INTO blog.page_configs (container_type, container_id, sumup_merchant_code,
                                           sumup_api_key, sumup_checkout_prefix)
            VALUES (%s, %s, %s, %s, %s) RETURNING id
            """,
            (container_type, container_id, merchant_code, api_key, prefix),
        ).fetchone()[0]


def held_bookings(server, user_id: int = 1) -> tuple[int, int]:
    """An entry and a ticket held in ``user_id``'s cart (events' tables), for orders to hold."""
    with admin_connect(server, "events") as connection:
        calendar_id = connection.execute(
            "INSERT INTO events.calendars (slug, name) VALUES ('tours', 'Tours') RETURNING id"
        ).fetchone()[0]
        entry_id = connection.execute(
            "INSERT INTO events.calendar_entries (calendar_id, name, starts_at, cost, state, "
            "user_id, hold_expires_at) VALUES (%s, 'Tour', now() + interval '3 days', 2.00, "
            "'pending', %s, now() + interval '15 minutes') RETURNING id",
            (calendar_id, user_id),
        ).fetchone()[0]
        ticket_id = connection.execute(
            "INSERT INTO events.tickets (calendar_entry_id, ticket_type, price, state, user_id, "
            "hold_expires_at) VALUES (%s, 'adult', 3.00, 'pending', %s, "
            "now() + interval '15 minutes') RETURNING id",
            (entry_id, user_id),
        ).fetchone()[0]
    return entry_id, ticket_id


def orders_overrides(sandbox_url: str, **extra: str) -> dict[str, dict[str, Any]]:
    return {
        "orders": {
            "extra": {
                "ORDERS_SUMUP_BASE_URL": sandbox_url,
                "ORDERS_SUMUP_TIMEOUT": "3",
                "ORDERS_RECONCILE_SECONDS": "3600",
                **extra,
            },
            "app_urls": {"orders": ORDERS_PUBLIC_URL},
        }
    }


@asynccontextmanager
async def orders_stack(server, credentials, sandbox: BackgroundSandbox, services=None, **extra):
    names = services or ["orders", "blog"]
    async with in_process_stack(
        server, credentials, names, settings_overrides=orders_overrides(sandbox.url, **extra)
    ) as running:
        yield running


def product_line(
    product_id: int = 1, price: str = "10.00", quantity: int = 1, **overrides: Any
) -> dict[str, Any]:
    line = {
        "product_id": product_id,
        "product_title": f"Product {product_id}",
        "product_slug": f"product-{product_id}",
        "product_image": None,
        "product_regular_price": price,
        "product_special_price": None,
        "product_price_currency": "EUR",
        "quantity": quantity,
        "market_place_container_id": 1,
    }
    line.update(overrides)
    return line


def order_payload(*lines: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    from decimal import Decimal

    cart_items = list(lines) or [product_line()]
    product_total = sum(
        (
            Decimal(line["product_special_price"] or line["product_regular_price"])
            * line["quantity"]
            for line in cart_items
        ),
        Decimal(0),
    )
    payload: dict[str, Any] = {
        "cart_items": cart_items,
        "calendar_entries": [],
        "tickets": [],
        "user_id": 1,
        "session_id": "session-1",
        "product_total": str(product_total),
        "calendar_total": "0",
        "ticket_total": "0",
        "page_post_id": None,
    }
    payload.update(overrides)
    return payload


# What several test modules check in orders' database and send to orders.
def order_rows(server) -> list[tuple]:
    with admin_connect(server, "orders") as connection:
        return connection.execute(
            "SELECT id, status, flagged, total, currency FROM orders.orders ORDER BY id"
        ).fetchall()


def orders_of(server) -> dict[int, tuple[str, Decimal]]:
    """Every order: its status and total, by id."""
    with admin_connect(server, "orders") as connection:
        rows = connection.execute("SELECT id, status, total FROM orders.orders ORDER BY id")
        return {row[0]: (row[1], row[2]) for row in rows}


def outbox_rows(server) -> list[tuple]:
    with admin_connect(server, "orders") as connection:
        return connection.execute(
            "SELECT service, action, payload, idempotency_key FROM orders.outbox ORDER BY id"
        ).fetchall()


def attempt_rows(server, order_id: int) -> list[tuple[int, str]]:
    """(number, status) of each payment attempt of the order."""
    with admin_connect(server, "orders") as connection:
        return connection.execute(
            "SELECT number, status FROM orders.payment_attempts WHERE order_id = %s "
            "ORDER BY number",
            (order_id,),
        ).fetchall()


def checkout_id_of(server, order_id: int, attempt: int = 1) -> str:
    with admin_connect(server, "orders") as connection:
        return connection.execute(
            "SELECT sumup_checkout_id FROM orders.payment_attempts "
            "WHERE order_id = %s AND number = %s",
            (order_id, attempt),
        ).fetchone()[0]


async def create(orders, payload=None, key=None):
    return await internal_post(
        orders.client("orders"), "create-order", payload or order_payload(), idempotency_key=key
    )


async def webhook(orders, order_id: int, checkout_id: str):
    return await orders.client("orders").post(
        f"/checkout/webhook/{order_id}/",
        content=json.dumps({"event_type": "CHECKOUT_STATUS_CHANGED", "id": checkout_id}),
        headers={"content-type": "application/json"},
    )


class Sandbox:
    """The sandbox's control endpoints, as a test drives them."""

    def __init__(self, server: BackgroundSandbox) -> None:
        self.server = server
        self.client = httpx.Client(base_url=server.url, timeout=10)

    def checkout(self, checkout_id: str) -> dict[str, Any]:
        response = self.client.get(
            f"/v0.1/checkouts/{checkout_id}",
            headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"},
        )
        response.raise_for_status()
        return response.json()

    def transaction(self, transaction_id: str) -> dict[str, Any]:
        response = self.client.get(
            f"/v2.1/merchants/{DEFAULT_MERCHANT_CODE}/transactions",
            params={"id": transaction_id},
            headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"},
        )
        response.raise_for_status()
        return response.json()

    def checkouts(self) -> list[dict[str, Any]]:
        return self.client.get("/_sandbox/checkouts").json()

    def pay(self, checkout_id: str, **body: Any) -> dict[str, Any]:
        response = self.client.post(f"/_sandbox/checkouts/{checkout_id}/pay", json=body or None)
        response.raise_for_status()
        return response.json()

    def fail(self, checkout_id: str) -> dict[str, Any]:
        response = self.client.post(f"/_sandbox/checkouts/{checkout_id}/fail")
        response.raise_for_status()
        return response.json()

    def expire(self, checkout_id: str) -> dict[str, Any]:
        response = self.client.post(f"/_sandbox/checkouts/{checkout_id}/expire")
        response.raise_for_status()
        return response.json()

    def controls(self, **changes: Any) -> None:
        self.client.post("/_sandbox/controls", json=changes).raise_for_status()

    def delayed_calls(self) -> int:
        """API calls the injected latency holds right now (each is on its way to an answer)."""
        response = self.client.get("/_sandbox/delayed-calls")
        response.raise_for_status()
        return response.json()["delayed_calls"]

    def charge_back(
        self, transaction_id: str, amount: float | None = None, *, pending: bool = False
    ) -> dict[str, Any]:
        """The card issuer takes the payment (or ``amount`` of it) back: a charge-back (one
        not decided yet when ``pending``)."""
        body: dict[str, Any] = {"pending": pending}
        if amount is not None:
            body["amount"] = amount
        response = self.client.post(
            f"/_sandbox/transactions/{transaction_id}/charge-back", json=body
        )
        response.raise_for_status()
        return response.json()

    def refund_in_dashboard(
        self, transaction_id: str, amount: float, *, status: str = "SUCCESSFUL"
    ) -> None:
        """A person gives ``amount`` of the payment back in SumUp's dashboard (a refund orders
        did not ask for), its event in ``status`` (the sandbox's ``refund_event_status``)."""
        if status != "SUCCESSFUL":
            self.controls(refund_event_status=status)
        try:
            given = self.client.post(
                f"/v1.0/merchants/{DEFAULT_MERCHANT_CODE}/payments/{transaction_id}/refunds",
                json={"amount": amount},
                headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"},
            )
        finally:
            if status != "SUCCESSFUL":
                self.controls(refund_event_status="SUCCESSFUL")
        assert given.status_code == 201, given.text

    def decide_charge_back(
        self, transaction_id: str, status: str, *, event_id: int | None = None
    ) -> dict[str, Any]:
        """The card issuer decides the transaction's pending charge-back (``event_id``'s when
        it has several): ``SUCCESSFUL`` for the buyer (the money goes back), ``FAILED`` for
        the merchant (nothing goes back)."""
        body: dict[str, Any] = {"status": status}
        if event_id is not None:
            body["event_id"] = event_id
        response = self.client.post(
            f"/_sandbox/transactions/{transaction_id}/charge-back/decide", json=body
        )
        response.raise_for_status()
        return response.json()
