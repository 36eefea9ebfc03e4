"""The baselines of ``bench.checkout``: the work a checkout cannot avoid, without our service layer.

create: one transaction on a direct SQLAlchemy async connection as ``orders_app`` to
``db_orders``: the FDW read of ``blog.page_payment_configs`` (page and site default), the order
row, its items (one multi-row INSERT), one ``POST /v0.1/checkouts`` to the sandbox through the
official ``sumup`` SDK, the payment attempt row, COMMIT.

webhook: one transaction: find the attempt of (order, checkout id) locally, a sandbox GET of the
checkout through the SDK, compare amount and currency, the conditional UPDATEs (attempt and
order, ``pending -> paid`` once) and the outbox insert (its payload built by the INSERT from the
order's items), COMMIT. Not in it: the FDW read of the merchant's API key the service does
before the GET (the baseline already holds the key).

The rows it writes are deleted after each pair (outside the timing), so the tables keep the size
the service's own orders give them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sumup import AsyncSumup

from apps.common.db import as_psycopg_url
from apps.orders.payments import sdk_client
from apps.sumup_sandbox.app import DEFAULT_API_KEY

CENT = Decimal("0.01")
REFERENCE_PREFIX = "bench-baseline-"

FIND_CONFIGS = text(
    "SELECT id, container_type, container_id, sumup_merchant_code, sumup_api_key, "
    "sumup_checkout_prefix FROM blog.page_payment_configs "
    "WHERE (container_type, container_id) IN (('page', :page_id), ('site', 0))"
)
# The id first, so the description can name it in the same statement (as the service stores it).
INSERT_ORDER = text(
    "WITH new AS (SELECT nextval(pg_get_serial_sequence('orders.orders', 'id')) AS id) "
    "INSERT INTO orders.orders (id, user_id, session_id, page_post_id, currency, product_total, "
    "calendar_total, ticket_total, total, description, page_config_id, merchant_code, "
    "checkout_prefix, payable_until) "
    "SELECT new.id, :user_id, :session_id, :page_post_id, :currency, :product_total, 0, 0, "
    ":total, 'rose-ash order #' || new.id, :page_config_id, :merchant_code, :checkout_prefix, "
    "now() + interval '30 minutes' FROM new RETURNING id"
)
INSERT_ATTEMPT = text(
    "INSERT INTO orders.payment_attempts (order_id, number, checkout_reference, "
    "sumup_checkout_id, hosted_url, status, amount, currency) "
    "VALUES (:order_id, 1, :reference, :checkout_id, :hosted_url, 'PENDING', :amount, :currency)"
)
FIND_ATTEMPT = text(
    "SELECT a.id, a.amount, a.currency FROM orders.payment_attempts AS a "
    "JOIN orders.orders AS o ON o.id = a.order_id "
    "WHERE a.order_id = :order_id AND a.sumup_checkout_id = :checkout_id"
)
UPDATE_ATTEMPT = text(
    "UPDATE orders.payment_attempts SET status = :status, transaction_code = :code, "
    "updated_at = now() WHERE id = :id AND status IN ('PENDING', 'FAILED') AND status <> :status"
)
MARK_PAID = text(
    "UPDATE orders.orders SET status = 'paid', paid_at = now(), updated_at = now() "
    "WHERE id = :order_id AND status = 'pending' AND NOT flagged RETURNING id"
)
# Due in a day: the orders process's outbox relay must not deliver the baseline's messages.
ENQUEUE_CLEAR_CART = text(
    "INSERT INTO orders.outbox (service, action, payload, idempotency_key, next_attempt_at) "
    "SELECT 'cart', 'clear-cart-for-order', jsonb_build_object('order_id', o.id, "
    "'user_id', o.user_id, 'session_id', o.session_id, 'page_post_id', o.page_post_id, "
    "'product_ids', coalesce((SELECT jsonb_agg(DISTINCT i.source_id) FROM orders.order_items "
    "AS i WHERE i.order_id = o.id AND i.kind = 'product'), '[]'::jsonb)), :key, "
    "now() + interval '1 day' FROM orders.orders AS o WHERE o.id = :order_id "
    "ON CONFLICT (idempotency_key) DO NOTHING"
)


@dataclass(frozen=True)
class CreatedBaseline:
    order_id: int
    checkout_id: str
    elapsed_ms: float
    laps: Laps


class Laps:
    """Durations of the consecutive parts of one transaction, in ms."""

    def __init__(self) -> None:
        self.started = self._last = time.perf_counter()
        self.parts: dict[str, float] = {}

    def lap(self, label: str) -> None:
        now = time.perf_counter()
        self.parts[label] = self.parts.get(label, 0.0) + (now - self._last) * 1000
        self._last = now

    @property
    def total_ms(self) -> float:
        return (self._last - self.started) * 1000


class Baseline:
    """One connection (like one pooled connection of the service) and one SDK client. The parts
    of every measured transaction are kept in ``parts`` (kind -> part -> durations in ms)."""

    def __init__(self, orders_app_dsn: str, sandbox_url: str, page_id: int) -> None:
        self._dsn = orders_app_dsn
        self._page_id = page_id
        self._sandbox_url = sandbox_url
        self._engine: AsyncEngine | None = None
        self._connection: AsyncConnection | None = None
        self._sumup: AsyncSumup | None = None
        self.parts: dict[str, dict[str, list[float]]] = {"create": {}, "webhook": {}}

    def keep(self, kind: str, laps: Laps) -> None:
        for label, elapsed in laps.parts.items():
            self.parts[kind].setdefault(label, []).append(elapsed)

    async def __aenter__(self) -> Baseline:
        self._engine = create_async_engine(as_psycopg_url(self._dsn), pool_size=1)
        self._connection = await self._engine.connect()
        # The SDK as the service makes it: the same HTTP engine under httpx.
        self._sumup = sdk_client(
            DEFAULT_API_KEY, self._sandbox_url, httpx.Timeout(10.0, connect=3.0)
        )
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._sumup is not None:
            await self._sumup.aclose()
        if self._connection is not None:
            await self._connection.close()
        if self._engine is not None:
            await self._engine.dispose()

    @property
    def connection(self) -> AsyncConnection:
        assert self._connection is not None
        return self._connection

    @property
    def sumup(self) -> AsyncSumup:
        assert self._sumup is not None
        return self._sumup

    async def create(self, payload: dict[str, Any], public_base: str) -> CreatedBaseline:
        """The create transaction, timed from BEGIN to the end of COMMIT."""
        lines = payload["cart_items"]
        total = Decimal(payload["product_total"]).quantize(CENT)
        laps = Laps()
        async with self.connection.begin():
            # psycopg sends BEGIN with the first statement: it is in this part.
            configs = await self.connection.execute(FIND_CONFIGS, {"page_id": self._page_id})
            laps.lap("FDW page_payment_configs")
            by_type = {row.container_type: row for row in configs}
            config = by_type.get("page") or by_type["site"]
            order_id = (
                await self.connection.execute(
                    INSERT_ORDER,
                    {
                        "user_id": payload["user_id"],
                        "session_id": payload["session_id"],
                        "page_post_id": payload["page_post_id"],
                        "currency": "EUR",
                        "product_total": total,
                        "total": total,
                        "page_config_id": config.id,
                        "merchant_code": config.sumup_merchant_code,
                        "checkout_prefix": REFERENCE_PREFIX,
                    },
                )
            ).scalar_one()
            laps.lap("insert orders")
            await self.connection.execute(_insert_items(len(lines)), _item_values(order_id, lines))
            laps.lap("insert order_items")
            reference = f"{REFERENCE_PREFIX}{order_id}-1"
            checkout = await self.sumup.checkouts.create(
                checkout_reference=reference,
                amount=float(total),
                currency="EUR",
                merchant_code=config.sumup_merchant_code,
                description=f"rose-ash order #{order_id}",
                return_url=f"{public_base}/checkout/webhook/{order_id}/",
                redirect_url=f"{public_base}/checkout/return/{order_id}/",
                hosted_checkout={"enabled": True},
            )
            laps.lap("sumup create")
            if not checkout.hosted_checkout_url:
                raise RuntimeError(f"baseline checkout {checkout.id} has no hosted URL")
            await self.connection.execute(
                INSERT_ATTEMPT,
                {
                    "order_id": order_id,
                    "reference": reference,
                    "checkout_id": checkout.id,
                    "hosted_url": checkout.hosted_checkout_url,
                    "amount": total,
                    "currency": "EUR",
                },
            )
            laps.lap("insert payment_attempts")
        laps.lap("commit")
        return CreatedBaseline(order_id, str(checkout.id), laps.total_ms, laps)

    async def webhook(self, order_id: int, checkout_id: str) -> Laps:
        """The webhook transaction, timed from BEGIN to the end of COMMIT. Raises unless the
        order was marked paid by this call."""
        laps = Laps()
        async with self.connection.begin():
            attempt = (
                await self.connection.execute(
                    FIND_ATTEMPT, {"order_id": order_id, "checkout_id": checkout_id}
                )
            ).one()
            laps.lap("select payment_attempts")
            remote = await self.sumup.checkouts.get(checkout_id)
            laps.lap("sumup get")
            status = str(getattr(remote.status, "value", remote.status))
            currency = str(getattr(remote.currency, "value", remote.currency))
            amount = Decimal(str(remote.amount)).quantize(CENT)
            if amount != attempt.amount or currency != attempt.currency:
                raise RuntimeError(f"baseline checkout {checkout_id}: {amount} {currency}")
            await self.connection.execute(
                UPDATE_ATTEMPT,
                {
                    "id": attempt.id,
                    "status": status,
                    "code": getattr(remote, "transaction_code", None),
                },
            )
            laps.lap("update payment_attempts")
            paid = None
            if status == "PAID":
                paid = (
                    await self.connection.execute(MARK_PAID, {"order_id": order_id})
                ).scalar_one_or_none()
                laps.lap("update orders")
                if paid is not None:
                    await self.connection.execute(
                        ENQUEUE_CLEAR_CART,
                        {"order_id": order_id, "key": f"orders:{order_id}:clear-cart"},
                    )
                    laps.lap("outbox insert")
        laps.lap("commit")
        if paid is None:
            raise RuntimeError(f"baseline order {order_id} was not marked paid ({status})")
        return laps

    async def clean_up(self, order_id: int) -> None:
        """Remove what a pair wrote (items and attempts go with the order: ON DELETE CASCADE)."""
        async with self.connection.begin():
            await self.connection.execute(
                text("DELETE FROM orders.outbox WHERE idempotency_key = :key"),
                {"key": f"orders:{order_id}:clear-cart"},
            )
            await self.connection.execute(
                text("DELETE FROM orders.orders WHERE id = :id"), {"id": order_id}
            )


def _insert_items(count: int) -> Any:
    rows = ", ".join(
        f"(:order_id, 'product', :source_{n}, :title_{n}, :slug_{n}, :price_{n}, 'EUR', "
        f":quantity_{n}, :container_{n}, :lines_{n})"
        for n in range(count)
    )
    return text(
        "INSERT INTO orders.order_items (order_id, kind, source_id, title, slug, unit_price, "
        f"currency, quantity, market_place_container_id, cart_line_ids) VALUES {rows}"
    )


def _item_values(order_id: int, lines: list[dict[str, Any]]) -> dict[str, Any]:
    values: dict[str, Any] = {"order_id": order_id}
    for n, line in enumerate(lines):
        price = line["product_special_price"] or line["product_regular_price"]
        values.update(
            {
                f"source_{n}": line["product_id"],
                f"title_{n}": line["product_title"],
                f"slug_{n}": line["product_slug"],
                f"price_{n}": Decimal(price).quantize(CENT),
                f"quantity_{n}": line["quantity"],
                f"container_{n}": line["market_place_container_id"],
                f"lines_{n}": line.get("cart_line_ids") or None,
            }
        )
    return values
