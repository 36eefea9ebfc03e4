"""Internal routes of events: data pending-bookings; actions confirm-for-order and
adopt-bookings-for-user."""

from __future__ import annotations

from typing import Annotated

from litestar.params import Parameter

from apps.common.deps import DbSession
from apps.common.internal import data_route, keyed_action
from apps.events import service
from apps.events.models import SESSION_ID_LENGTH, idempotency_keys


@data_route("pending-bookings")
async def pending_bookings(
    db_session: DbSession,
    user_id: Annotated[int | None, Parameter(ge=1, le=2**63 - 1)] = None,
    session_id: Annotated[str | None, Parameter(min_length=1, max_length=SESSION_ID_LENGTH)] = None,
) -> list[service.PendingBooking]:
    """The pending bookings of one identity (user_id or session_id), as cart sees them."""
    return await service.pending_bookings(db_session, user_id=user_id, session_id=session_id)


confirm_for_order = keyed_action(
    "confirm-for-order", service.ConfirmForOrder, idempotency_keys, service.confirm_for_order
)
adopt_bookings_for_user = keyed_action(
    "adopt-bookings-for-user", service.AdoptBookings, idempotency_keys, service.adopt_bookings
)


handlers = [pending_bookings, confirm_for_order, adopt_bookings_for_user]
