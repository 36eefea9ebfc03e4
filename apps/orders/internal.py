"""Internal routes of orders: action create-order, data order, fragment account-nav-item."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request
from litestar.datastructures import State
from litestar.params import JSONBody, Parameter
from markupsafe import escape

from apps.common.deps import AppSettings, DbSession
from apps.common.idempotency import run_idempotent
from apps.common.internal import action_route, data_route, fragment_route
from apps.common.internal_client import IDEMPOTENCY_HEADER
from apps.common.problems import InvalidInput, NotFound
from apps.common.web import orders_url
from apps.orders import service
from apps.orders.models import idempotency_keys


@action_route("create-order")
async def create_order(
    db_session: DbSession, request: Request, state: State, data: JSONBody[service.CreateOrder]
) -> dict[str, Any]:
    """Called by cart at checkout; answers with the SumUp hosted checkout URL."""
    return await run_idempotent(
        db_session,
        idempotency_keys,
        action="create-order",
        key=request.headers.get(IDEMPOTENCY_HEADER),
        payload=data,
        effect=lambda: service.create_order(db_session, data, state.gateway, state.order_urls),
    )


@data_route("order")
async def order_data(
    db_session: DbSession, order_id: Annotated[int, Parameter(ge=1)]
) -> dict[str, Any]:
    order = await service.load_order(db_session, order_id)
    if order is None:
        raise NotFound(f"Order {order_id} does not exist")
    return service.order_dict(order)


@fragment_route("account-nav-item")
async def account_nav_item(
    db_session: DbSession,
    settings: AppSettings,
    user_id: Annotated[int | None, Parameter(ge=1)] = None,
    session_id: Annotated[str | None, Parameter(min_length=1, max_length=64)] = None,
) -> str:
    """The "Orders" link other services put in their account menu."""
    if user_id is None and session_id is None:
        raise InvalidInput("user_id or session_id is required", field="user_id")
    _, total = await service.list_orders(db_session, user_id, session_id or "", page=1)
    href = escape(orders_url(settings, "/"))
    return f'<a class="account-nav-item" href="{href}">Orders ({total})</a>'


handlers = [create_order, order_data, account_nav_item]
