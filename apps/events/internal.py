"""Internal routes of events (its contract): data pending-bookings and orders-holding; actions
confirm-for-order, adopt-bookings-for-user, hold-for-order, release-booking and
release-for-order."""

from __future__ import annotations

from typing import Annotated

from litestar.params import JSONBody, Parameter

from apps.common.deps import DbSession
from apps.common.internal import action_route, data_route, keyed_action
from apps.events import contract, service
from apps.events.models import SESSION_ID_LENGTH, idempotency_keys


@data_route(contract.pending_bookings)
async def pending_bookings(
    db_session: DbSession,
    user_id: Annotated[int | None, Parameter(ge=1, le=2**63 - 1)] = None,
    session_id: Annotated[str | None, Parameter(min_length=1, max_length=SESSION_ID_LENGTH)] = None,
) -> list[contract.PendingBooking]:
    """The held bookings of one identity (user_id or session_id), as cart sees them."""
    return await service.pending_bookings(db_session, user_id=user_id, session_id=session_id)


@data_route(contract.orders_holding)
async def orders_holding(
    db_session: DbSession,
    seconds: Annotated[int, Parameter(ge=60, le=86_400)],
    after: Annotated[int, Parameter(ge=0, le=2**63 - 1)] = 0,
) -> list[int]:
    """Orders after ``after`` whose holds on bookings were made at least ``seconds`` ago
    (orders gives back those of orders it never made)."""
    return await service.orders_holding(db_session, held_before_seconds=seconds, after=after)


@action_route(contract.release_booking)
async def release_booking(
    db_session: DbSession, data: JSONBody[contract.ReleaseBooking]
) -> contract.Released:
    """Cart: the buyer removed a booking; its slot is free at once."""
    released = await service.release_booking(db_session, data)
    await db_session.commit()
    return released


confirm_for_order = keyed_action(
    contract.confirm_for_order, idempotency_keys, service.confirm_for_order
)
adopt_bookings_for_user = keyed_action(
    contract.adopt_bookings_for_user, idempotency_keys, service.adopt_bookings
)
hold_for_order = keyed_action(contract.hold_for_order, idempotency_keys, service.hold_for_order)
release_for_order = keyed_action(
    contract.release_for_order, idempotency_keys, service.release_for_order
)


handlers = [
    pending_bookings,
    orders_holding,
    confirm_for_order,
    adopt_bookings_for_user,
    hold_for_order,
    release_booking,
    release_for_order,
]
