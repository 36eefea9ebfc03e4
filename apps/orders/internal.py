"""Internal routes of orders: actions create-order, adopt-orders-for-user and end-review; data
order and attention; fragment account-nav-item."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from litestar import Request
from litestar.params import JSONBody, Parameter
from markupsafe import escape

from apps.common.contracts import SignIn
from apps.common.deps import AppSettings, DbSession
from apps.common.idempotency import run_idempotent
from apps.common.internal import action_route, data_route, deferred_nonce, fragment_route
from apps.common.internal_client import IDEMPOTENCY_HEADER
from apps.common.problems import InvalidInput, NotFound
from apps.common.web import public_url
from apps.orders import contract, review, service
from apps.orders.contract import AdoptedOrders, CreatedOrder, CreateOrder
from apps.orders.models import idempotency_keys
from apps.orders.runtime import CHECKOUTS, OrdersRuntime, Runtime

logger = logging.getLogger("rose.orders")


@action_route(contract.create_order, claims_nonce=True)
async def create_order(
    db_session: DbSession, request: Request, runtime: Runtime, data: JSONBody[CreateOrder]
) -> dict[str, Any]:
    """Called by cart at checkout; answers with where the buyer goes next (SumUp's hosted
    checkout, or the return page of an order with nothing to pay). Earlier orders
    the new one supersedes have their checkouts closed right after the commit, and their
    bookings given back to the cart's hold. A known key
    answers its order's current attempt, or makes a new order once that one cannot be paid
    (service.replay_checkout). At most ORDERS_CHECKOUTS_AT_ONCE are handled at once (the
    rest wait for a turn, holding no connection), so that a slow SumUp cannot take every
    connection of the pool."""
    async with runtime.checkouts.turn(CHECKOUTS, within=runtime.checkout_turn_seconds) as turn:
        if not turn:
            raise service.checkouts_busy(runtime.checkouts.most)
        return await _create_order(db_session, request, runtime, data)


async def _create_order(
    db_session: DbSession, request: Request, runtime: OrdersRuntime, data: CreateOrder
) -> dict[str, Any]:
    superseded: list[int] = []
    held = service.HeldForNewOrder()

    async def effect() -> CreatedOrder:
        made = await service.create_order(db_session, data, runtime, held)
        held.made = True  # run_idempotent stores the answer and commits next
        superseded.extend(made.superseded)
        return made.created

    async def replay(stored: Any) -> CreatedOrder | None:
        return await service.replay_checkout(db_session, stored, data, runtime)

    try:
        created = await run_idempotent(
            db_session,
            idempotency_keys,
            action="create-order",
            key=request.headers.get(IDEMPOTENCY_HEADER),
            payload=data,
            effect=effect,
            replay=replay,
            nonce=deferred_nonce(request),
        )
    except BaseException:
        # Events may hold the bookings, and SumUp have a checkout, for an order that was not
        # committed (run_idempotent commits last); a failure at the commit may come after
        # PostgreSQL committed it.
        if held.order_id is not None or held.opened is not None or held.asked is not None:
            await service.give_back_unless_committed(db_session, runtime, held, data)
        raise
    runtime.jobs.close_soon(superseded)
    if superseded:
        logger.info("order %s supersedes %s", created["order_id"], superseded)
        runtime.relay.wake()  # their bookings' give-back, queued in the order's transaction
    if created.get("paid"):
        # Paid as it was made (nothing to pay): the answer says what became of it.
        return await service.answer_once_confirmed(db_session, runtime, created)
    return created


@action_route(contract.adopt_orders_for_user)
async def adopt_orders_for_user(
    db_session: DbSession, runtime: Runtime, data: JSONBody[SignIn]
) -> AdoptedOrders:
    """Sign-in: the anonymous session's orders become the user's (and show in their list)."""
    adopted = await service.adopt_orders(db_session, data)
    await db_session.commit()
    runtime.jobs.close_soon(adopted.superseded)
    if adopted.superseded:
        runtime.relay.wake()  # their bookings' give-back
    return adopted


@data_route(contract.order)
async def order_data(
    db_session: DbSession, order_id: Annotated[int, Parameter(ge=1, le=2**63 - 1)]
) -> dict[str, Any]:
    order = await service.load_order(db_session, order_id)
    if order is None:
        raise NotFound(f"Order {order_id} does not exist")
    return service.order_dict(order, await service.latest_checkout_of(db_session, order))


@data_route(contract.attention)
async def attention(db_session: DbSession) -> contract.Attention:
    """Orders a person must look at: flagged, money owed back, refunds SumUp refused, merchants
    without their key (blog's part, named in ``degraded`` when it cannot be read)."""
    return await service.orders_needing_attention(db_session)


@action_route(contract.end_review)
async def end_review(
    db_session: DbSession, runtime: Runtime, data: JSONBody[contract.EndReview]
) -> contract.ReviewEnded:
    """A person ended a flagged order's review (``rose orders end-review``): settled from what
    SumUp says now (apps.orders.review); the money going back is asked for at once."""
    ended = await review.end_review(
        db_session, data.order_id, runtime.gateway, paid_with=data.paid_with
    )
    if ended.refunds:
        runtime.jobs.settle_refunds_soon()
    if ended.releasing_bookings:
        runtime.relay.wake()
    return ended


@action_route(contract.flag_for_review)
async def flag_for_review(
    db_session: DbSession, data: JSONBody[contract.FlagForReview]
) -> contract.FlaggedForReview:
    """A person flagged an order for review (``rose orders flag``): ``rose orders end-review``
    then settles it from what SumUp says (apps.orders.review)."""
    return await review.flag_for_review(db_session, data.order_id, data.reason)


@fragment_route(contract.account_nav_item)
async def account_nav_item(
    db_session: DbSession,
    settings: AppSettings,
    user_id: Annotated[int | None, Parameter(ge=1, le=2**63 - 1)] = None,
    session_id: Annotated[str | None, Parameter(min_length=1, max_length=64)] = None,
) -> str:
    """The "Orders" link other services put in their account menu."""
    if user_id is None and session_id is None:
        raise InvalidInput("user_id or session_id is required", field="user_id")
    _, total = await service.list_orders(db_session, user_id, session_id or "", page=1)
    href = escape(public_url(settings, contract.SERVICE, "/"))
    return f'<a class="account-nav-item" href="{href}">Orders ({total})</a>'


handlers = [
    create_order,
    adopt_orders_for_user,
    order_data,
    attention,
    end_review,
    flag_for_review,
    account_nav_item,
]
