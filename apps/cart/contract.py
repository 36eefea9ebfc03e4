"""What other services exchange with cart, written once: the actions of sign-in and of a paid
order. This module imports nothing else of cart."""

from __future__ import annotations

from typing import Annotated

import msgspec

PositiveId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
SessionId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class AdoptCart(msgspec.Struct, forbid_unknown_fields=True):
    user_id: PositiveId
    session_id: SessionId


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


class Cleared(msgspec.Struct):
    cleared: int
