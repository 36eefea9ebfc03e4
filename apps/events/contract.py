"""What events offers other services: the bookings held in carts (a query and an export view),
holding and confirming them for an order, releasing one, adopting an anonymous session's at
sign-in. Imports nothing else of events."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Literal

import msgspec

from apps.common.contracts import (
    Action,
    Adopted,
    Contract,
    ExportView,
    IdentityParams,
    Query,
    SignIn,
)

SERVICE = "events"

DbId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
SessionId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
MAX_IDS_PER_ORDER = 1000
Ids = Annotated[list[DbId], msgspec.Meta(max_length=MAX_IDS_PER_ORDER)]


class ConfirmForOrder(msgspec.Struct, forbid_unknown_fields=True):
    """The order is paid: its bookings become confirmed. ``user_id``/``session_id`` (the
    order's buyer) confirm bookings held before orders held them for an order."""

    order_id: DbId
    entry_ids: Ids = []
    ticket_ids: Ids = []
    user_id: DbId | None = None
    session_id: SessionId | None = None


class Unconfirmed(msgspec.Struct):
    entry_ids: list[int]
    ticket_ids: list[int]


class ConfirmResult(msgspec.Struct):
    # Entries and tickets among the ids that are confirmed for this order (replays included).
    confirmed: int
    # Ids that are not confirmed for this order (their hold ended and someone else took them,
    # released, cancelled, unknown): orders refunds what was paid for them.
    unconfirmed: Unconfirmed


# Orders may hold a booking for an order at most this long from now (``until``).
MAX_ORDER_HOLD = timedelta(hours=2)


class HoldForOrder(msgspec.Struct, forbid_unknown_fields=True):
    """Hold the buyer's pending bookings for an order until it can no longer be paid."""

    order_id: DbId
    until: datetime
    entry_ids: Ids = []
    ticket_ids: Ids = []
    user_id: DbId | None = None
    session_id: SessionId | None = None


class Held(msgspec.Struct):
    held: int


class ReleaseBooking(msgspec.Struct, forbid_unknown_fields=True):
    """The buyer removed a booking from their cart: its slot is free at once."""

    kind: Literal["entry", "ticket"]
    id: DbId
    user_id: DbId | None = None
    session_id: SessionId | None = None


class Released(msgspec.Struct):
    released: bool


class ReleaseForOrder(msgspec.Struct, forbid_unknown_fields=True):
    """Orders found the order unpaid past its payable time and expired it: the holds it made
    for the order end now (they last a while longer than its payable time, so that a payment
    made in time and learnt late still finds its bookings), except that a booking whose cart's
    own hold still runs goes back on it (the payable time may be shorter than that hold).

    ``rolled_back``: the order will never be paid for its bookings: create-order failed after
    events held them (the order never existed), or a newer order of the buyer superseded it.
    Each booking still held for it goes back to the hold it had before (an earlier order's not
    given back itself, else the buyer's cart's), not ended, and events refuses any later hold
    for the order.

    ``paid_back``: the order was paid, and SumUp gave all of its payment back since (a refund
    in SumUp's dashboard, a charge-back; orders' review of it found so): the bookings confirmed
    for it are let go as well (an entry open again, a ticket cancelled), and events confirms
    none for it later (a confirm-for-order delivered after this one, retried late)."""

    order_id: DbId
    rolled_back: bool = False
    # Left out of the message unless set (UNSET): an events that predates it (its fields are
    # closed) still takes every other release, and their idempotency hashes stay as they were.
    paid_back: bool | msgspec.UnsetType = msgspec.UNSET


class HoldsEnded(msgspec.Struct):
    ended: int


class PendingBooking(msgspec.Struct):
    """One booking held in a cart (a row of ``export.pending_bookings``)."""

    kind: str
    id: int
    user_id: int | None
    session_id: str | None
    title: str
    price: Decimal
    currency: str
    calendar_id: int
    starts_at: datetime
    container_type: str | None
    container_id: int | None


class HeldBefore(msgspec.Struct, forbid_unknown_fields=True):
    """Orders after ``after`` whose bookings were held at least ``seconds`` ago (and not
    touched since)."""

    seconds: Annotated[int, msgspec.Meta(ge=60, le=86_400)]
    after: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0


# Most order ids one answer names (the lowest after ``after`` first): the next are read after
# its last.
MAX_HOLDING_ORDERS = 500

pending_bookings = Query(SERVICE, "pending-bookings", IdentityParams, list[PendingBooking])
# The orders that hold bookings (orders' reconciliation: a hold for an order it never made,
# its process gone between the hold and the order's commit, is given back).
orders_holding = Query(SERVICE, "orders-holding", HeldBefore, list[int])
confirm_for_order = Action(SERVICE, "confirm-for-order", ConfirmForOrder, ConfirmResult)
adopt_bookings_for_user = Action(SERVICE, "adopt-bookings-for-user", SignIn, Adopted)
hold_for_order = Action(SERVICE, "hold-for-order", HoldForOrder, Held)
# Idempotent without a key: releasing what is no longer held is a 404, nothing else.
release_booking = Action(SERVICE, "release-booking", ReleaseBooking, Released, keyed=False)
release_for_order = Action(SERVICE, "release-for-order", ReleaseForOrder, HoldsEnded)

# Every booking still held (cart: the bookings of a cart). Its columns are its contract.
PENDING_BOOKINGS = ExportView.of(
    SERVICE,
    "pending_bookings",
    "kind text",
    "id bigint",
    "user_id bigint",
    "session_id character varying(64)",
    "title text",
    "price numeric(10,2)",
    "currency character(3)",
    "calendar_id bigint",
    "starts_at timestamp with time zone",
    "container_type character varying(32)",
    "container_id bigint",
    primary_key=None,
)

# Bookings that left their owner's cart because their hold ended, in the last hour (cart: what
# it tells the buyer). Its columns are its contract.
ENDED_HOLDS = ExportView.of(
    SERVICE,
    "ended_holds",
    "kind text",
    "id bigint",
    "user_id bigint",
    "session_id character varying(64)",
    "title text",
    "starts_at timestamp with time zone",
    "ended_at timestamp with time zone",
    "container_type character varying(32)",
    "container_id bigint",
    primary_key=None,
)

CONTRACT = Contract(
    SERVICE,
    dev_port=8004,
    public=True,
    calls=[pending_bookings, confirm_for_order, adopt_bookings_for_user, hold_for_order,
           release_booking, release_for_order, orders_holding],
    views=[PENDING_BOOKINGS, ENDED_HOLDS],
    on_sign_in=adopt_bookings_for_user,
)  # fmt: skip
