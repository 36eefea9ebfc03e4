"""Cart's create-order request from a cart (apps.cart.service.checkout_request): what it refuses
before orders is asked."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from apps.cart.contract import Booking
from apps.cart.service import CartView, Owner, PageCart, checkout_request
from apps.common.problems import Conflict
from apps.events.contract import MAX_IDS_PER_ORDER


def cart_of_tickets(count: int) -> CartView:
    tickets = Booking(
        kind="ticket",
        id=1,
        title="Open kitchen \u2013 adult",
        price=Decimal("0.00"),
        currency="EUR",
        starts_at=datetime(2030, 1, 1, tzinfo=UTC),
        page_id=1,
        quantity=count,
        ids=list(range(1, count + 1)),
    )
    page = PageCart(
        1, "farm-shop", "Farm shop", [], [tickets], {"EUR": Decimal(0)}, Decimal(0), count
    )
    return CartView([page], count, {"EUR": Decimal(0)}, Decimal(0), "EUR", [])


def test_an_order_of_as_many_bookings_as_events_holds_is_asked_for():
    order, _ = checkout_request(cart_of_tickets(MAX_IDS_PER_ORDER), Owner(1, "s"), "s", None)
    assert len(order.tickets) == MAX_IDS_PER_ORDER


def test_more_bookings_than_one_order_holds_is_a_conflict_naming_them():
    """Audit L4: the cart was told "orders cannot be reached right now, try again in a minute",
    which never helped: events holds at most MAX_IDS_PER_ORDER bookings for one order."""
    with pytest.raises(Conflict, match=f"at most {MAX_IDS_PER_ORDER} bookings.*1001"):
        checkout_request(cart_of_tickets(MAX_IDS_PER_ORDER + 1), Owner(1, "s"), "s", None)
