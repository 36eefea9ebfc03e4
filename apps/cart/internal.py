"""Internal routes of cart (its contract; the plan's post-split list): data cart-summary and
cart-items; actions adopt-cart-for-user, clear-cart-for-order and inbox; fragment cart-mini."""

from __future__ import annotations

from typing import Annotated

from litestar.params import JSONBody, Parameter
from markupsafe import escape

from apps.cart import contract, service
from apps.common.contracts import Adopted, SignIn
from apps.common.deps import AppSettings, DbSession
from apps.common.internal import action_route, data_route, fragment_route
from apps.common.web import public_url

UserIdParam = Annotated[int | None, Parameter(ge=1, le=2**63 - 1)]
SessionParam = Annotated[str | None, Parameter(min_length=1, max_length=64)]
PageParam = Annotated[int | None, Parameter(ge=1, le=2**63 - 1)]


@data_route(contract.cart_summary)
async def cart_summary(
    db_session: DbSession,
    user_id: UserIdParam = None,
    session_id: SessionParam = None,
    page_post_id: PageParam = None,
) -> contract.CartSummary:
    cart = await service.load_cart(db_session, service.Owner(user_id, session_id), page_post_id)
    return contract.CartSummary(
        count=cart.count,
        total=None if cart.total is None else str(cart.total),
        currency=cart.currency,
        pages=[
            contract.PageSummary(
                page_id=page.page_id,
                page_slug=page.page_slug,
                page_title=page.page_title,
                count=page.count,
                total=None if page.total is None else str(page.total),
            )
            for page in cart.pages
        ],
        degraded=cart.degraded,
    )


@data_route(contract.cart_items)
async def cart_items(
    db_session: DbSession,
    user_id: UserIdParam = None,
    session_id: SessionParam = None,
    page_post_id: PageParam = None,
) -> contract.CartItems:
    cart = await service.load_cart(db_session, service.Owner(user_id, session_id), page_post_id)
    return contract.CartItems(lines=cart.lines, bookings=cart.bookings, degraded=cart.degraded)


@action_route(contract.adopt_cart_for_user)
async def adopt_cart_for_user(db_session: DbSession, data: JSONBody[SignIn]) -> Adopted:
    adopted = await service.adopt_cart(
        db_session, data.user_id, data.session_id, check_only=data.check_only
    )
    await db_session.commit()
    return Adopted(adopted=adopted)


@action_route(contract.clear_cart_for_order)
async def clear_cart_for_order(
    db_session: DbSession, data: JSONBody[contract.ClearCartForOrder]
) -> contract.Cleared:
    """Idempotent per order without a key store: the cleared lines record the order."""
    cleared = await service.clear_for_order(db_session, data)
    await db_session.commit()
    return contract.Cleared(cleared=cleared)


@fragment_route(contract.cart_mini)
async def cart_mini(
    db_session: DbSession,
    settings: AppSettings,
    user_id: UserIdParam = None,
    session_id: SessionParam = None,
) -> str:
    count = await service.line_count(db_session, service.Owner(user_id, session_id))
    href = escape(public_url(settings, contract.SERVICE, "/"))
    return f'<a class="cart-mini" href="{href}">Cart ({count})</a>'


@action_route(contract.inbox)
async def inbox(
    db_session: DbSession, data: JSONBody[contract.CartActivity]
) -> contract.InboxAnswer:
    """ActivityStreams Add / Remove / Update of a rose:CartItem in a rose:Cart, applied once per
    activity id (docs/cart-inbox.md)."""
    answer = await service.receive_activity(db_session, data)
    await db_session.commit()
    return answer


handlers = [cart_summary, cart_items, adopt_cart_for_user, clear_cart_for_order, cart_mini, inbox]
