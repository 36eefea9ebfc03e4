"""What other services exchange with events, written once: the actions orders and cart call,
and what they answer. This module imports nothing else of events."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

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


class AdoptBookings(msgspec.Struct, forbid_unknown_fields=True):
    user_id: DbId
    session_id: SessionId
