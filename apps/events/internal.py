"""Internal routes of events: data pending-bookings; actions confirm-for-order and
adopt-bookings-for-user."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request
from litestar.params import JSONBody, Parameter

from apps.common.deps import DbSession
from apps.common.idempotency import run_idempotent
from apps.common.internal import action_route, data_route
from apps.common.internal_client import IDEMPOTENCY_HEADER
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


@action_route("confirm-for-order")
async def confirm_for_order(
    db_session: DbSession, request: Request, data: JSONBody[service.ConfirmForOrder]
) -> dict[str, Any]:
    """Called by orders (through its outbox) when an order is paid."""
    return await run_idempotent(
        db_session,
        idempotency_keys,
        action="confirm-for-order",
        key=request.headers.get(IDEMPOTENCY_HEADER),
        payload=data,
        effect=lambda: service.confirm_for_order(db_session, data),
    )


@action_route("adopt-bookings-for-user")
async def adopt_bookings_for_user(
    db_session: DbSession, request: Request, data: JSONBody[service.AdoptBookings]
) -> dict[str, Any]:
    """For the sign-in flow, like cart's adopt-cart-for-user: {"adopted": n}."""
    return await run_idempotent(
        db_session,
        idempotency_keys,
        action="adopt-bookings-for-user",
        key=request.headers.get(IDEMPOTENCY_HEADER),
        payload=data,
        effect=lambda: service.adopt_bookings(db_session, data),
    )


handlers = [pending_bookings, confirm_for_order, adopt_bookings_for_user]
