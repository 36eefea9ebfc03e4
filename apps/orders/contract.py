"""What orders offers other services: create-order (its payload, its answer and the time orders
may take to answer it), an order's data, what needs a person, the account fragment, and
adopting an anonymous session's orders at sign-in.

Cart builds its create-order request from these structures, so a changed field is a type error
in cart, not a surprise at run time. This module imports nothing else of orders.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Annotated, Any

import msgspec

from apps.common.contracts import (
    Action,
    Contract,
    Fragment,
    IdentityParams,
    NoParams,
    Query,
    SignIn,
)
from apps.common.inputs import CURRENCY
from apps.events.contract import MAX_IDS_PER_ORDER

SERVICE = "orders"

PositiveId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
Quantity = Annotated[int, msgspec.Meta(ge=1, le=10_000)]
# Amounts in major units; orders checks them (>= 0, at most 2 decimals) when it validates.
Money = Decimal
Currency = Annotated[str, msgspec.Meta(pattern=CURRENCY)]
# An order line's title is kept to this many characters (order_items.title, varchar(255)).
TITLE_MAX_LENGTH = 255
Text255 = Annotated[str, msgspec.Meta(min_length=1, max_length=TITLE_MAX_LENGTH)]
SessionId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
# The cart lines one product line stands for: the live line first, then the lines sign-in
# merged into it. Orders refuses lines already paid for and supersedes orders sharing them.
CartLineIds = Annotated[list[PositiveId], msgspec.Meta(max_length=100)]

# How long orders may take to answer create-order, whatever SumUp and events do: orders checks
# at start-up that its own timeouts fit inside and gives up (nothing created) when it runs out.
# A caller may stop waiting sooner (cart waits CART_CHECKOUT_WAIT_SECONDS, what a buyer waits):
# the order may then still be made, and the same idempotency key sent again replays it.
CREATE_ORDER_MAX_SECONDS = 25.0


class CartLine(msgspec.Struct, forbid_unknown_fields=True):
    product_id: PositiveId
    product_title: Text255
    product_slug: Text255
    product_regular_price: Money
    product_price_currency: Currency
    quantity: Quantity
    product_image: Annotated[str, msgspec.Meta(max_length=512)] | None = None
    product_special_price: Money | None = None
    market_place_container_id: PositiveId | None = None
    cart_line_ids: CartLineIds = []

    @property
    def unit_price(self) -> Decimal:
        price = self.product_special_price
        return price if price is not None else self.product_regular_price


class BookingLine(msgspec.Struct, forbid_unknown_fields=True):
    """A calendar entry or a ticket (one of each per line)."""

    id: PositiveId
    title: Text255
    price: Money
    currency: Currency
    container_id: PositiveId | None = None


# Events holds at most this many bookings for one order.
BookingLines = Annotated[list[BookingLine], msgspec.Meta(max_length=MAX_IDS_PER_ORDER)]


class CreateOrder(msgspec.Struct, forbid_unknown_fields=True):
    """The plan's section 4.3 payload. ``user_id`` is the buyer once signed in; ``session_id``
    is an anonymous buyer's browser session (cart sends it for anonymous carts only: a
    signed-in buyer is their account in every browser, and sign-in moved the session's orders
    to it)."""

    product_total: Money
    calendar_total: Money
    ticket_total: Money
    cart_items: list[CartLine] = []
    calendar_entries: BookingLines = []
    tickets: BookingLines = []
    user_id: PositiveId | None = None
    session_id: SessionId | None = None
    page_post_id: PositiveId | None = None
    # The plan lets the caller pass these; orders builds both itself from APP_URL_ORDERS and
    # only accepts values that match (a caller may not send payments elsewhere).
    redirect_url: str | None = None
    webhook_base_url: str | None = None


class CreatedOrder(msgspec.Struct):
    order_id: int
    # SumUp's hosted checkout and its reference; empty for an order with nothing to pay.
    sumup_hosted_url: str
    # The page config whose SumUp merchant it is paid through; None for an order with nothing
    # to pay made where no page config has a merchant (it needs none).
    page_config_id: int | None
    sumup_reference: str
    description: str
    # Where the buyer goes now: SumUp's hosted checkout while the order waits for its payment,
    # its return page once it is paid (an order with nothing to pay, every line free, is paid
    # as it is made, without SumUp). Answers stored by an earlier orders lack it: see where_next.
    next_url: str = ""
    # Such an order is paid once events has confirmed its bookings: while that is on its way
    # when orders answers, False, and next_url is its return page (which says what became of
    # it); a 409 if the buyer removed them all from the cart first (it is cancelled).
    paid: bool = False

    @property
    def where_next(self) -> str:
        return self.next_url or self.sumup_hosted_url


class AdoptedOrders(msgspec.Struct):
    adopted: int
    superseded: list[int]


class OrderOf(msgspec.Struct, forbid_unknown_fields=True):
    order_id: PositiveId


def checkout_key(request: CreateOrder) -> str:
    """Cart's create-order idempotency key: a digest of the cart snapshot the request is (line
    ids included: the same products bought again later are new lines). A double submit, or a
    retry after a lost answer, is one order."""
    snapshot = msgspec.json.encode(request, order="sorted")
    return f"cart-checkout:{hashlib.sha256(snapshot).hexdigest()}"


# A known key (a cart as it was at an earlier checkout) answers the order it made, with that
# order's current payment attempt (its hosted URL and reference, not the first ones), while
# the buyer can pay it, its bookings held for it again (as a new order's are: 409 if one can no
# longer be). Once they cannot (expired, superseded, cancelled, its current attempt
# ended, it has had ORDERS_ATTEMPTS_PER_ORDER attempts, or its late payment is given back), the
# same key makes a new order, once however many requests carry it at the same time. An order
# under review is a 409; a paid one answers as it did, sending the buyer to its return page,
# unless it claims none of the cart's lines and bookings any more (it let go of its bookings:
# not confirmed for it, refunded): then a new order.
create_order = Action(SERVICE, "create-order", CreateOrder, CreatedOrder)
# A create-order's 503 problem carries this flag (true) when orders was busy, not down: every
# checkout it makes at once waits on SumUp or events, and more wait for a turn (nothing made).
CHECKOUTS_BUSY = "checkouts_busy"
# Idempotent without a key: a second adoption adopts nothing.
adopt_orders_for_user = Action(SERVICE, "adopt-orders-for-user", SignIn, AdoptedOrders, keyed=False)
order = Query(SERVICE, "order", OrderOf, dict[str, Any])


class RefundGoingBack(msgspec.Struct):
    """Money SumUp took for a checkout of an order whose review ended: it goes back."""

    checkout_id: str
    amount: str  # what SumUp took, in major units, as text (no float)
    currency: str


class ReviewEnded(msgspec.Struct):
    """What ending a flagged order's review did (apps.orders.review): its status now, the
    checkouts it closed at SumUp, the refunds it recorded (settled by orders next), whether
    the release of its bookings was queued, and the checkout a paid order keeps as the payment
    it was paid with (None for an order that is not paid, or paid nothing: a free one)."""

    order_id: int
    status: str
    closed_checkouts: list[str]
    refunds: list[RefundGoingBack]
    releasing_bookings: bool
    # Last, with a default: an answer of the release before it still decodes.
    kept_payment: str | None = None
    # SumUp's answer when it would not show the kept payment's transaction (a key not allowed
    # to read it): what of it went back is not known, so a person looks in its dashboard.
    kept_unchecked: str | None = None
    # The order's refunds recorded before the review and not done yet (asked of SumUp, or
    # waiting): what the order still waits for.
    still_going_back: list[RefundGoingBack] = []


class EndReview(msgspec.Struct, forbid_unknown_fields=True):
    """The flagged order whose review a person ends and, for a paid order that does not know
    which checkout paid it (paid by the release before orders 0015, none held paid), the
    checkout the person found it was paid with in SumUp's dashboard: SumUp must confirm it."""

    order_id: PositiveId
    paid_with: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None


# A person ended a flagged order's review (``rose orders end-review``): the order is settled
# from what SumUp says now (apps.orders.review). Without a key: a second call finds no review
# to end (409).
end_review = Action(SERVICE, "end-review", EndReview, ReviewEnded, keyed=False)


class FlagForReview(msgspec.Struct, forbid_unknown_fields=True):
    """An order a person wants settled from what SumUp says now, for ``reason`` (what they saw:
    a refund made in SumUp's dashboard, a charge-back, which orders hears nothing of):
    flagged, as SumUp's report of another amount flags one, until its review ends. The reason
    is one readable line (apps.common.inputs.one_line_name, checked by orders): a 422
    otherwise."""

    order_id: PositiveId
    reason: Annotated[str, msgspec.Meta(max_length=500)]


class FlaggedForReview(msgspec.Struct):
    """The order's status and the reason it is flagged for (its first, when it was flagged
    already: ``flagged_now`` False)."""

    order_id: int
    status: str
    flag_reason: str
    flagged_now: bool


# A person flags an order for review (``rose orders flag``). Without a key: flagging a flagged
# order again changes nothing.
flag_for_review = Action(SERVICE, "flag-for-review", FlagForReview, FlaggedForReview, keyed=False)


class Attention(msgspec.Struct):
    """Orders a person must look at; ``degraded`` names the services whose part could not be
    read now (``["blog"]``: which orders' SumUp merchant has no key any more), so what orders
    holds itself is listed all the same."""

    orders: list[dict[str, Any]]
    degraded: list[str]


# Flagged orders, money owed back, refunds SumUp refused, merchants without their key.
attention = Query(SERVICE, "attention", NoParams, Attention)
account_nav_item = Fragment(SERVICE, "account-nav-item", IdentityParams)

CONTRACT = Contract(
    SERVICE,
    dev_port=8010,
    public=True,
    calls=[
        create_order,
        adopt_orders_for_user,
        order,
        attention,
        end_review,
        flag_for_review,
        account_nav_item,
    ],
    on_sign_in=adopt_orders_for_user,
    nav=account_nav_item,
)
