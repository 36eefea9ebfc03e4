"""What cart offers other services: the cart's lines and summary, its mini fragment, adopting an
anonymous cart at sign-in, clearing what a paid order bought, and its inbox of ActivityStreams
Add / Remove / Update activities of ``rose:CartItem`` objects. Imports nothing else of cart."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

import msgspec

from apps.common.contracts import (
    Action,
    Adopted,
    Contract,
    Fragment,
    IdentityParams,
    Query,
    SignIn,
)

SERVICE = "cart"

PositiveId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
SessionId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class Line(msgspec.Struct):
    """A product line of a cart, with market's current title and price."""

    id: int
    product_id: int
    slug: str | None
    title: str
    image: str | None
    regular_price: Decimal | None
    special_price: Decimal | None
    unit_price: Decimal | None
    currency: str | None
    quantity: int
    line_total: Decimal | None
    page_id: int
    # False when market no longer sells the product: it cannot be checked out.
    available: bool
    # This line and the anonymous lines sign-in merged into it (not yet paid for): what an
    # order of this line claims.
    cart_line_ids: list[int] = []


class Booking(msgspec.Struct):
    """A calendar entry, or tickets of one entry and ticket type, held in the cart (events'
    pending bookings): one line with a quantity. ``price`` is the price of one; ``ids`` are the
    bookings the line stands for (``id`` is the first)."""

    kind: str
    id: int
    title: str
    price: Decimal
    currency: str
    starts_at: datetime | None
    page_id: int | None
    quantity: int = 1
    ids: list[int] = []

    @property
    def total(self) -> Decimal:
        return self.price * self.quantity


class CartOf(msgspec.Struct, forbid_unknown_fields=True):
    """Whose cart (a user's or an anonymous session's), all of it or one page's."""

    user_id: PositiveId | None = None
    session_id: SessionId | None = None
    page_post_id: PositiveId | None = None


class PageSummary(msgspec.Struct):
    page_id: int | None
    page_slug: str | None
    page_title: str
    count: int
    # None when the page holds amounts in several currencies (never a sum of two).
    total: str | None


class CartSummary(msgspec.Struct):
    count: int
    # None, as ``currency``, when the cart holds amounts in several currencies.
    total: str | None
    currency: str | None
    pages: list[PageSummary]
    degraded: list[str]


class CartItems(msgspec.Struct):
    lines: list[Line]
    bookings: list[Booking]
    degraded: list[str]


class PaidLine(msgspec.Struct, forbid_unknown_fields=True):
    """One product line of a paid order: the cart lines it stood for (the line as it was at
    checkout first) and the quantity paid for."""

    product_id: PositiveId
    quantity: Annotated[int, msgspec.Meta(ge=1, le=10_000)]
    cart_line_ids: Annotated[list[PositiveId], msgspec.Meta(max_length=100)] = []


class ClearCartForOrder(msgspec.Struct, forbid_unknown_fields=True):
    order_id: PositiveId
    user_id: PositiveId | None = None
    session_id: SessionId | None = None
    page_post_id: PositiveId | None = None
    # Orders made before lines were known: the products the order paid for.
    product_ids: Annotated[list[PositiveId], msgspec.Meta(max_length=1000)] | None = None
    # What the order paid for, line by line: removed wherever sign-in moved the lines.
    lines: Annotated[list[PaidLine], msgspec.Meta(max_length=1000)] | None = None
    # When the order was placed, sent when some of its lines name no cart lines (orders moved
    # from the monolith): only lines added before it are its, not those the buyer added since.
    # Absent (a message queued before this field), such lines clear by product as they did.
    # UNSET is not encoded at all: a cart from before the field, which refuses fields it does
    # not know, still reads every message that does not need it.
    placed_at: datetime | msgspec.UnsetType = msgspec.UNSET


class Cleared(msgspec.Struct):
    cleared: int


# -- the inbox: ActivityStreams activities about cart items (docs/cart-inbox.md) --------------
ACTIVITY_STREAMS = "https://www.w3.org/ns/activitystreams"
Quantity = Annotated[int, msgspec.Meta(ge=1, le=99)]


class CartRef(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """Whose cart an activity is about: a user's (``userId``) or an anonymous session's."""

    type: Literal["rose:Cart"]
    user_id: PositiveId | None = None
    session_id: SessionId | None = None


class CartItemObject(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """A ``rose:CartItem``: a product of market, and for Add (default 1) and Update how many."""

    type: Literal["rose:CartItem"]
    product_id: PositiveId
    quantity: Quantity | None = None


class CartActivity(msgspec.Struct, forbid_unknown_fields=True):
    """An ActivityStreams 2.0 ``Add``, ``Remove`` or ``Update`` of a ``rose:CartItem`` in a
    ``rose:Cart``; ``id`` makes it idempotent (a second delivery has no second effect)."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    type: Literal["Add", "Remove", "Update"]
    object: CartItemObject
    target: CartRef
    context: str | list[str] | dict[str, str] = msgspec.field(
        default=ACTIVITY_STREAMS, name="@context"
    )
    actor: Annotated[str, msgspec.Meta(max_length=512)] | None = None


class InboxAnswer(msgspec.Struct):
    """What the activity did: the product's quantity in that cart afterwards (0: no line), and
    whether this delivery was a replay of an activity id already applied."""

    activity_id: str
    type: str
    product_id: int
    quantity: int
    replayed: bool = False


cart_summary = Query(SERVICE, "cart-summary", CartOf, CartSummary)
cart_items = Query(SERVICE, "cart-items", CartOf, CartItems)
# Idempotent without a key: a second adoption adopts nothing.
adopt_cart_for_user = Action(SERVICE, "adopt-cart-for-user", SignIn, Adopted, keyed=False)
# Idempotent per order without a key store: the cleared lines record the order.
clear_cart_for_order = Action(
    SERVICE, "clear-cart-for-order", ClearCartForOrder, Cleared, keyed=False
)
cart_mini = Fragment(SERVICE, "cart-mini", IdentityParams)
# Idempotent by the activity's own id (kept by cart), not by Idempotency-Key.
inbox = Action(SERVICE, "inbox", CartActivity, InboxAnswer, keyed=False)

CONTRACT = Contract(
    SERVICE,
    dev_port=8003,
    public=True,
    calls=[
        cart_summary,
        cart_items,
        adopt_cart_for_user,
        clear_cart_for_order,
        cart_mini,
        inbox,
    ],
    on_sign_in=adopt_cart_for_user,
    nav=cart_mini,
)
