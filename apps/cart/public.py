"""Public routes of cart: the cart, page carts, add / change / remove lines, and checkout, which
hands over to orders and sends the browser to SumUp's hosted checkout."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, Parameter
from litestar.response import Template

from apps.cart import service
from apps.cart.settings import CartSettings
from apps.common.admission import admission_of
from apps.common.adoption import SIGN_OUT_PATH, START_AFRESH
from apps.common.deps import AppSettings, CurrentIdentity, DbSession, Internal
from apps.common.identity import Identity, flash_notice
from apps.common.internal_client import InternalCallError, InternalClient
from apps.common.problems import (
    DependencyUnavailable,
    InvalidInput,
    Problem,
    TooManyRequests,
)
from apps.common.settings import Settings
from apps.common.web import (
    SlugParam,
    degraded_headers,
    public_url,
    read_form,
    redirect_back,
    render,
    see_other,
    wants_html,
    whole_number_field,
)
from apps.orders import contract as orders

logger = logging.getLogger("rose.cart")

OwnSettings = NamedDependency[CartSettings]
ItemId = Annotated[int, Parameter(ge=1, le=2**63 - 1)]
QUANTITY_AS_NUMBER = "Enter the quantity as a whole number."
# A party a checkout waited on, as the buyer knows it.
SERVICE_WORDS = {"sumup": "payments (SumUp)"}


def owner_of(identity: Identity) -> service.Owner:
    return service.Owner(identity.user_id, None if identity.signed_in else identity.session_id)


def _cart_page(
    request: Request, cart: service.CartView, *, status_code: int = 200, **context: Any
) -> Template:
    return render(
        request,
        "cart.html",
        status_code=status_code,
        headers=degraded_headers(cart.degraded),
        cart=cart,
        max_quantity=service.MAX_QUANTITY,
        **context,
    )


@get("/", operation_id="cart_html")
async def cart_page(request: Request, db_session: DbSession, identity: CurrentIdentity) -> Any:
    cart = await service.load_cart(db_session, owner_of(identity), with_ended_holds=True)
    return _cart_page(request, cart, page_slug=None)


@get("/api/cart", operation_id="cart")
async def api_cart(db_session: DbSession, identity: CurrentIdentity) -> service.CartView:
    return await service.load_cart(db_session, owner_of(identity), with_ended_holds=True)


@get("/page/{page_slug:str}/", operation_id="page_cart_html")
async def page_cart(
    request: Request, db_session: DbSession, identity: CurrentIdentity, page_slug: SlugParam
) -> Any:
    page = await service.page_for_slug(db_session, page_slug)
    cart = await service.load_cart(db_session, owner_of(identity), page.id, with_ended_holds=True)
    return _cart_page(request, cart, page_slug=page_slug, page_title=page.title)


@get("/api/page/{page_slug:str}", operation_id="page_cart")
async def api_page_cart(
    db_session: DbSession, identity: CurrentIdentity, page_slug: SlugParam
) -> service.CartView:
    page_id = (await service.page_for_slug(db_session, page_slug)).id
    return await service.load_cart(db_session, owner_of(identity), page_id, with_ended_holds=True)


@post("/add/{product_id:int}/", operation_id="cart_add", status_code=200)
async def add_to_cart(
    request: Request, db_session: DbSession, identity: CurrentIdentity, product_id: ItemId
) -> Any:
    quantity = await whole_number_field(request, "quantity", 1, message=QUANTITY_AS_NUMBER)
    added = await service.add_item(db_session, owner_of(identity), product_id, quantity)
    await db_session.commit()
    if wants_html(request):
        if added.short_note is not None:
            # The page the browser lands on says what JSON's ``added`` says.
            flash_notice(request.scope, added.short_note)
        return await redirect_back(request, "/")
    item = added.item
    return {
        "id": item.id,
        "product_id": item.product_id,
        "quantity": item.quantity,
        "added": added.added,
    }


@post("/item/{item_id:int}/quantity/", operation_id="cart_item_quantity", status_code=200)
async def change_quantity(
    request: Request, db_session: DbSession, identity: CurrentIdentity, item_id: ItemId
) -> Any:
    try:
        quantity = await whole_number_field(request, "quantity", message=QUANTITY_AS_NUMBER)
        new_quantity = await service.set_quantity(db_session, owner_of(identity), item_id, quantity)
    except InvalidInput as problem:
        if not wants_html(request):
            raise
        # The cart again, the message beside the line's quantity, what was typed kept.
        cart = await service.load_cart(db_session, owner_of(identity))
        typed = (await read_form(request)).get("quantity")
        return _cart_page(
            request,
            cart,
            status_code=422,
            page_slug=None,
            line_error={"id": item_id, "message": problem.message, "typed": typed},
        )
    await db_session.commit()
    if wants_html(request):
        return await redirect_back(request, "/")
    return {"id": item_id, "quantity": new_quantity}


@post("/item/{item_id:int}/delete/", operation_id="cart_item_delete", status_code=200)
async def delete_item(
    request: Request, db_session: DbSession, identity: CurrentIdentity, item_id: ItemId
) -> Any:
    await service.remove_item(db_session, owner_of(identity), item_id)
    await db_session.commit()
    if wants_html(request):
        return await redirect_back(request, "/")
    return {"id": item_id, "deleted": True}


async def _checkout(
    request: Request,
    db_session: DbSession,
    internal: InternalClient,
    identity: Identity,
    settings: Settings,
    own_settings: CartSettings,
    page_id: int | None,
) -> Any:
    admission = admission_of(request, own_settings.anonymous_checkouts_per_address)
    try:
        created = await service.checkout(
            db_session,
            internal,
            owner_of(identity),
            identity.session_id,
            page_id,
            admission,
            wait=own_settings.checkout_wait_seconds,
        )
    except InternalCallError as exc:
        raise checkout_failed(exc, public_url(settings, orders.SERVICE, "/")) from exc
    if wants_html(request):
        return see_other(created.where_next)
    return created


def checkout_failed(exc: InternalCallError, orders_page: str) -> Problem:
    """Tell the buyer the truth about a checkout that did not end with a payment page: the cart
    never changes at checkout, and when orders may have made the order, say where it is."""
    if exc.outcome_unknown:
        in_time = "in time"
        if exc.waited is not None:
            in_time = f"within {exc.waited:g} second{'' if exc.waited == 1 else 's'}"
        elif exc.connection_lost:
            # Orders' process went away mid-call (killed, restarted): nothing was slow.
            in_time = "(the connection to orders broke before it answered)"
        return Problem(
            f"We could not confirm your checkout {in_time}. If your order was made, it is in "
            f"your orders ({orders_page}). Checking out again is safe: the same cart never "
            "makes a second order.",
            status_code=503,
            title="Checkout not confirmed",
            orders=orders_page,
            # How long the checkout waited for orders (CART_CHECKOUT_WAIT_SECONDS).
            waited_seconds=exc.waited,
        )
    detail = str(exc.problem.get("detail") or exc).rstrip(".")
    if exc.remote_status == 429:
        return TooManyRequests(detail, retry_after=int(exc.problem.get("retry_after") or 60))
    if exc.remote_status in (409, 422):
        # Orders refused this cart as it is: the same checkout would be refused again.
        return Problem(
            f"Checkout failed: {detail}. Your cart has not changed.",
            status_code=exc.remote_status,
            title="Checkout failed",
            # The way out orders named (a session sign-in gave away: sign out to start afresh).
            start_afresh=SIGN_OUT_PATH if exc.problem.get(START_AFRESH) else None,
        )
    if exc.http_status == 503:
        # What was unavailable, in the buyer's words (not the provider's), and when to come
        # back: the service orders could not reach (``service``) or whose data it could not
        # read (``provider``, an FDW read); orders itself only when it named neither.
        service, provider = exc.problem.get("service"), exc.problem.get("provider")
        if exc.problem.get(orders.CHECKOUTS_BUSY) is True:
            unavailable = exc.service
            down = "orders is busy with other checkouts"
        elif service:
            unavailable = str(service)
            down = f"{SERVICE_WORDS.get(unavailable, unavailable)} cannot be reached"
        elif provider:
            unavailable = str(provider)
            down = f"the {unavailable} data is unavailable"
        else:
            unavailable = exc.service
            down = f"{unavailable} cannot be reached"
        return DependencyUnavailable(
            f"Checkout failed: {down} right now. Your cart has not changed; "
            "please try again in a minute",
            title="Checkout failed",
            service=unavailable,
        )
    return Problem(
        f"Checkout failed: {detail}. Your cart has not changed; please try again.",
        status_code=exc.http_status,
        title="Checkout failed",
    )


@post("/checkout/", operation_id="cart_checkout", status_code=200)
async def checkout(
    request: Request,
    db_session: DbSession,
    internal: Internal,
    identity: CurrentIdentity,
    settings: AppSettings,
    own_settings: OwnSettings,
) -> Any:
    return await _checkout(request, db_session, internal, identity, settings, own_settings, None)


@post("/page/{page_slug:str}/checkout/", operation_id="page_cart_checkout", status_code=200)
async def page_checkout(
    request: Request,
    db_session: DbSession,
    internal: Internal,
    identity: CurrentIdentity,
    settings: AppSettings,
    own_settings: OwnSettings,
    page_slug: SlugParam,
) -> Any:
    page_id = (await service.page_for_slug(db_session, page_slug)).id
    return await _checkout(request, db_session, internal, identity, settings, own_settings, page_id)


@post(
    "/booking/{kind:str}/{booking_id:int}/delete/",
    operation_id="cart_booking_delete",
    status_code=200,
)
async def delete_booking(
    request: Request,
    db_session: DbSession,
    internal: Internal,
    identity: CurrentIdentity,
    kind: FromPath[Literal["entry", "ticket"]],
    booking_id: ItemId,
) -> Any:
    """Remove a booking line from the cart (all its tickets): events releases them at once."""
    try:
        released = await service.release_booking(
            db_session, internal, owner_of(identity), kind, booking_id
        )
    except InternalCallError as exc:
        if exc.remote_status in (404, 409, 422):
            raise Problem(
                str(exc.problem.get("detail") or exc), status_code=exc.remote_status
            ) from exc
        raise removal_failed(exc) from exc
    if wants_html(request):
        return await redirect_back(request, "/")
    return released


def removal_failed(exc: InternalCallError) -> Problem:
    """The buyer's words for a booking removal events did not answer: whether it may have
    happened (its answer lost or unreadable, a 500 or a gateway's 504) or not (events not
    reached, or it said it is unavailable), and what to do; not the internal call's name."""
    if exc.may_have_happened:
        return DependencyUnavailable(
            "Events did not confirm in time that your booking was removed; it may have been. "
            "Your cart shows what it holds now, and removing the booking again is safe.",
            title="Removal not confirmed",
            service="events",
        )
    if exc.http_status == 503:
        return DependencyUnavailable(
            "Events, which holds your booking, cannot be reached right now, so the booking "
            "could not be removed; your cart shows what it holds. Please try again in a minute.",
            title="Booking not removed",
            service="events",
        )
    # Events refused it for a reason of the moment (a 4xx but 404, 409 and 422): logged, the
    # internal call's words are not the buyer's.
    logger.warning("booking removal refused: %s", exc)
    return Problem(
        "Your booking could not be removed; please try again.",
        status_code=exc.http_status,
        title="Booking not removed",
    )


handlers = [
    cart_page,
    api_cart,
    page_cart,
    api_page_cart,
    add_to_cart,
    change_quantity,
    delete_item,
    checkout,
    page_checkout,
    delete_booking,
]
