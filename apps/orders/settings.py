"""Orders' own settings, typed and checked once at start-up (``ORDERS_*`` variables)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from apps.common.settings import ConfigError, Settings, setting_number
from apps.events.contract import MAX_ORDER_HOLD
from apps.orders.contract import CREATE_ORDER_MAX_SECONDS

SUMUP_BASE_URL = "https://api.sumup.com"
# An order's bookings stay held this long past its payable time: a payment made in time may be
# learnt later (a late or lost webhook, then reconciliation's next pass), and must still find
# them. Expiring the order ends the holds at once (release-for-order), so this is only how long
# they outlast an order whose fate orders cannot learn (SumUp down).
HOLD_AFTER_PAYABLE = timedelta(minutes=30)
# Pay again makes no new checkout with less than this left of the order's time to pay: the
# checkout ends when that time does (valid_until), and a person needs a while on SumUp's page
# (card details, 3-D Secure) to pay it. One made in the last seconds could take no money.
MIN_TIME_TO_PAY = timedelta(minutes=2)
# The shortest payable time (ORDERS_PAYABLE_SECONDS) allowed: a first try at SumUp that fails
# takes a person about as long as paying does (MIN_TIME_TO_PAY), and pay again then needs
# MIN_TIME_TO_PAY left; anything shorter would refuse (nearly) every pay again.
MIN_PAYABLE = 2 * MIN_TIME_TO_PAY
# Database connections a process keeps from create-orders (ORDERS_CHECKOUTS_AT_ONCE's default):
# for webhooks, return pages, order pages, readiness, the outbox and reconciliation while every
# checkout waits on a slow SumUp.
CONNECTIONS_FOR_THE_REST = 3
# What create-order needs besides SumUp and events: its own database work.
DATABASE_MARGIN_SECONDS = 2.0


@dataclass(frozen=True)
class OrdersSettings:
    sumup_base_url: str = SUMUP_BASE_URL
    # Per SumUp call; a create-order makes at most one create (or create + list) within it.
    sumup_timeout: float = 10.0
    # The events hold at create-order (bookings held for the order's payable time).
    events_timeout: float = 3.0
    reconcile_seconds: float = 300.0
    outbox_poll_seconds: float = 2.0
    # How long a new order can be paid: its SumUp checkouts' valid_until and its bookings'
    # holds. SumUp's hosted checkout session lasts 30 minutes.
    payable_seconds: float = 1800.0
    # New orders per buyer (user or browser session) per minute; more is a 429.
    checkouts_per_minute: int = 6
    # Payment attempts one order may have (each new one costs up to three SumUp calls: read,
    # close, create); past it, pay again says to check out again from the cart.
    attempts_per_order: int = 10
    # New payment attempts (pay again) per client network (an IPv6 client's /64) a minute,
    # whoever the buyer; 0 turns the limit off. The cap per order does not bound a client
    # holding many pending orders (cart admits 30 new anonymous carts a minute per address).
    # Generous, as many buyers may share one address (an office, a mobile carrier's NAT).
    pay_again_per_address: int = 30
    # Create-orders handled at once by one process (apps.orders.runtime.OrdersRuntime's
    # checkouts): each holds a database connection while events and SumUp answer. By default
    # the pool's size less CONNECTIONS_FOR_THE_REST; those beyond wait for a turn, holding none.
    checkouts_at_once: int = 7
    # Reconciliation: orders asked about per batch, and SumUp calls in flight at once.
    reconcile_batch: int = 200
    reconcile_concurrency: int = 8
    # How long a webhook may use a page config's SumUp account read earlier instead of asking
    # blog (apps.orders.settlement.RecentMerchantAccounts); 0: ask blog every time.
    merchant_account_seconds: float = 60.0
    # How long the return page of a payment it has seen waits for the payment's effects (the
    # cart's clear) to be delivered, so its navigation shows them; past it the page goes on
    # and the outbox delivers them later.
    return_delivery_seconds: float = 2.0

    @property
    def create_order_deadline(self) -> float:
        """What create-order may spend on events and SumUp before it gives up (nothing made)."""
        return CREATE_ORDER_MAX_SECONDS - DATABASE_MARGIN_SECONDS

    @classmethod
    def from_settings(cls, settings: Settings) -> OrdersSettings:
        extra = settings.extra
        defaults = cls()
        parsed = cls(
            sumup_base_url=extra.get("ORDERS_SUMUP_BASE_URL", defaults.sumup_base_url),
            sumup_timeout=setting_number(
                extra, "ORDERS_SUMUP_TIMEOUT", float, defaults.sumup_timeout
            ),
            events_timeout=setting_number(
                extra, "ORDERS_EVENTS_TIMEOUT", float, defaults.events_timeout
            ),
            reconcile_seconds=setting_number(
                extra, "ORDERS_RECONCILE_SECONDS", float, defaults.reconcile_seconds
            ),
            outbox_poll_seconds=setting_number(
                extra, "ORDERS_OUTBOX_POLL_SECONDS", float, defaults.outbox_poll_seconds
            ),
            payable_seconds=setting_number(
                extra, "ORDERS_PAYABLE_SECONDS", float, defaults.payable_seconds
            ),
            checkouts_per_minute=setting_number(
                extra, "ORDERS_CHECKOUTS_PER_MINUTE", int, defaults.checkouts_per_minute
            ),
            attempts_per_order=setting_number(
                extra, "ORDERS_ATTEMPTS_PER_ORDER", int, defaults.attempts_per_order
            ),
            pay_again_per_address=setting_number(
                extra,
                "ORDERS_PAY_AGAIN_PER_ADDRESS",
                int,
                defaults.pay_again_per_address,
                zero_allowed=True,
            ),
            reconcile_batch=setting_number(
                extra, "ORDERS_RECONCILE_BATCH", int, defaults.reconcile_batch
            ),
            reconcile_concurrency=setting_number(
                extra, "ORDERS_RECONCILE_CONCURRENCY", int, defaults.reconcile_concurrency
            ),
            merchant_account_seconds=setting_number(
                extra,
                "ORDERS_MERCHANT_ACCOUNT_SECONDS",
                float,
                defaults.merchant_account_seconds,
                zero_allowed=True,
            ),
            return_delivery_seconds=setting_number(
                extra,
                "ORDERS_RETURN_DELIVERY_SECONDS",
                float,
                defaults.return_delivery_seconds,
                zero_allowed=True,
            ),
            checkouts_at_once=setting_number(
                extra,
                "ORDERS_CHECKOUTS_AT_ONCE",
                int,
                max(1, settings.database_pool_size - CONNECTIONS_FOR_THE_REST),
            ),
        )
        if "ORDERS_CHECKOUTS_AT_ONCE" in extra and (
            parsed.checkouts_at_once >= settings.database_pool_size
        ):
            raise ConfigError(
                f"ORDERS_CHECKOUTS_AT_ONCE must be less than the pool's size "
                f"({settings.database_pool_size}, DATABASE_POOL_SIZE), not "
                f"{parsed.checkouts_at_once}: checkouts waiting on a slow SumUp would take every "
                "connection, and webhooks, return pages and readiness would wait behind them"
            )
        parsed.check_budget()
        parsed.check_holds()
        return parsed

    def check_holds(self) -> None:
        """Events holds an order's bookings for at most MAX_ORDER_HOLD: its payable time and
        HOLD_AFTER_PAYABLE after it must fit, or no order with bookings could be made. And it
        must leave room for pay again (MIN_PAYABLE), or every pay again would be refused."""
        shortest = MIN_PAYABLE.total_seconds()
        if self.payable_seconds < shortest:
            raise ConfigError(
                f"ORDERS_PAYABLE_SECONDS must be at least {shortest:g}, not "
                f"{self.payable_seconds:g}: pay again makes no checkout with less than "
                f"{MIN_TIME_TO_PAY} left, so a shorter time leaves no room to pay again after a "
                "first try"
            )
        allowed = (MAX_ORDER_HOLD - HOLD_AFTER_PAYABLE).total_seconds()
        if self.payable_seconds > allowed:
            raise ConfigError(
                f"ORDERS_PAYABLE_SECONDS must be at most {allowed:g}, not "
                f"{self.payable_seconds:g}: events holds an order's bookings for at most "
                f"{MAX_ORDER_HOLD}, and they stay held {HOLD_AFTER_PAYABLE} past its payable time"
            )

    def check_budget(self) -> None:
        """Timeouts nest: what create-order waits for must fit in what its callers wait."""
        # An order waits for events, then for SumUp; one with nothing to pay waits for events,
        # then for its bookings' confirmation.
        for name, seconds in (
            ("ORDERS_SUMUP_TIMEOUT", self.sumup_timeout),
            ("ORDERS_RETURN_DELIVERY_SECONDS", self.return_delivery_seconds),
        ):
            if self.events_timeout + seconds > self.create_order_deadline:
                raise ConfigError(
                    f"{name} ({seconds:g} s) + ORDERS_EVENTS_TIMEOUT ({self.events_timeout:g} s) "
                    f"must be at most {self.create_order_deadline:g} s: create-order answers "
                    f"its callers within {CREATE_ORDER_MAX_SECONDS:g} s"
                )
