"""An order's lines as its pages show them: one line per kind, title and price, as the cart
showed them, with bookings events could not confirm kept apart."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from apps.orders.models import OrderItem, order_lines

NOW = datetime(2026, 12, 6, tzinfo=UTC)


def item(
    title: str, price: str = "7.50", *, kind: str = "ticket", lost: bool = False, source: int = 1
) -> OrderItem:
    return OrderItem(
        kind=kind,
        source_id=source,
        title=title,
        unit_price=Decimal(price),
        quantity=1,
        unconfirmed_at=NOW if lost else None,
    )


def test_tickets_of_one_entry_and_type_are_one_line():
    items = [item("Tour \u2013 adult"), item("Tour \u2013 child"), item("Tour \u2013 adult")]
    lines = order_lines(items)
    assert [(line.title, line.quantity, line.line_total) for line in lines] == [
        ("Tour \u2013 adult", 2, Decimal("15.00")),
        ("Tour \u2013 child", 1, Decimal("7.50")),
    ]
    assert [line.named for line in lines] == ["2 \u00d7 Tour \u2013 adult", "Tour \u2013 child"]


def test_a_ticket_events_could_not_confirm_is_still_on_its_line():
    """The lines are what was ordered; the pages say which bookings could not be confirmed."""
    lines = order_lines([item("Tour \u2013 adult"), item("Tour \u2013 adult", lost=True)])
    assert [line.quantity for line in lines] == [2]


def test_another_price_or_kind_is_another_line():
    items = [item("Tour"), item("Tour", "5.00"), item("Tour", kind="calendar_entry")]
    assert len(order_lines(items)) == 3


def test_products_and_entries_sharing_a_title_and_price_stay_apart():
    """Review 5: two products called Apple at one price, or Tuesday's and Wednesday's Morning
    tour (an entry's title carries no date), are two lines, as the cart showed them."""
    items = [
        item("Apple", kind="product", source=1),
        item("Apple", kind="product", source=2),
        item("Morning tour", kind="calendar_entry", source=7),
        item("Morning tour", kind="calendar_entry", source=8),
    ]
    assert [line.quantity for line in order_lines(items)] == [1, 1, 1, 1]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["product", "ticket", "calendar_entry"]),
            st.sampled_from(["a", "b"]),
            st.sampled_from(["0.00", "7.50"]),
            st.integers(1, 5),
            st.booleans(),
            st.integers(1, 3),
        ),
        max_size=12,
    )
)
def test_the_lines_add_up_to_the_items(rows):
    items = [
        OrderItem(
            kind=kind,
            source_id=source,
            title=title,
            unit_price=Decimal(price),
            quantity=quantity,
            unconfirmed_at=NOW if lost else None,
        )
        for kind, title, price, quantity, lost, source in rows
    ]
    lines = order_lines(items)
    assert sum(line.quantity for line in lines) == sum(i.quantity for i in items)
    assert sum(line.line_total for line in lines) == sum(i.line_total for i in items)
    # Tickets: one line per title and price; a product or an entry: one per product or entry.
    assert len(lines) == len(
        {
            (kind, title, price, None if kind == "ticket" else source)
            for kind, title, price, _, _, source in rows
        }
    )
