"""Public routes of orders (orders.rose-ash.com): the SumUp webhook and return page, the order
list and detail pages, pay again and recheck. HTML for browsers, JSON for API clients."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import Parameter, QueryParameter
from sqlalchemy.exc import DBAPIError

from apps.common.admission import admission_of
from apps.common.deps import CurrentIdentity, DbSession
from apps.common.limits import is_json_type
from apps.common.problems import (
    RETRY_AFTER_SECONDS,
    Conflict,
    DependencyUnavailable,
    InvalidInput,
    NotFound,
    UnsupportedMediaType,
    log_undone,
    undone_by_conflict,
)
from apps.common.web import (
    PageNumber,
    PageSize,
    optional_whole_number,
    refresh_nav,
    render,
    see_other,
    wants_html,
)
from apps.orders import service
from apps.orders.models import Order
from apps.orders.payments import PaymentProviderError, PaymentProviderUnavailable
from apps.orders.runtime import OrdersRuntime, Runtime

WEBHOOK_PREFIX = "/checkout/webhook/"
STATUS_CHANGED = "CHECKOUT_STATUS_CHANGED"
OrderId = Annotated[int, Parameter(ge=1, le=2**63 - 1)]
# The return page while the outcome is not known: look-again.js asks every few seconds and
# reloads on news. A browser without scripts reloads it on a timer instead (a <meta> refresh
# inside <noscript>, which a browser running scripts never reads), this often and this many
# times (two minutes), then leaves it to the buyer's "check now": a page that reloads itself
# for ever, news or not, fails WCAG 2.2.1, and so the page offers to stop (its last look).
# ``looked``: the reloads so far.
LOOK_AGAIN_SECONDS = 3
NO_SCRIPT_LOOK_AGAIN_SECONDS = 5
NO_SCRIPT_LOOKS = 24
LooksSoFar = Annotated[int, QueryParameter(ge=0, le=NO_SCRIPT_LOOKS)]


async def provide_owned_order(
    db_session: DbSession, identity: CurrentIdentity, order_id: OrderId
) -> Order:
    """The order of the path, if it belongs to whoever asks (another's order is a 404 saying
    whose orders are shown, not that it does not exist: its buyer signed out, or on another
    device, read that of an order they paid; the same words whether it exists or not)."""
    try:
        return await service.get_owned_order(
            db_session, order_id, identity.user_id, identity.session_id
        )
    except NotFound:
        raise NotFound(
            f"Order {order_id} cannot be shown here: an order is shown to the account that "
            "made it, or, made without signing in, in the browser it was made in; to see it, "
            "sign in with the account that made it"
        ) from None


async def provide_returned_order(
    db_session: DbSession, identity: CurrentIdentity, order_id: OrderId
) -> Order:
    """The return page's order: as :func:`provide_owned_order`, but a buyer handed back to
    another browser or device (a wallet app opens the system browser) is told what happens,
    not that the order does not exist (the same words whether it exists or not)."""
    try:
        return await provide_owned_order(db_session, identity, order_id)
    except NotFound:
        raise NotFound(
            f"Order {order_id} cannot be shown here: it was made in another browser or on "
            "another device. A payment you made goes through all the same; the order is in "
            "your orders where you made it, or here once you sign in with the same account"
        ) from None


OwnedOrder = NamedDependency[Order]
OWNED_ORDER = {"order": Provide(provide_owned_order)}
RETURNED_ORDER = {"order": Provide(provide_returned_order)}


class WebhookEvent(msgspec.Struct):
    event_type: str
    id: str | None = None


@post(
    f"{WEBHOOK_PREFIX}{{order_id:int}}/",
    operation_id="sumup_webhook",
    status_code=204,
    tags=["checkout"],
)
async def sumup_webhook(
    request: Request, db_session: DbSession, runtime: Runtime, order_id: OrderId
) -> None:
    """SumUp's notification: ``{"event_type": "CHECKOUT_STATUS_CHANGED", "id": ...}``, unsigned.
    An unknown checkout gets a 2xx and no SumUp call; a known one is re-fetched and applied.
    A SumUp or blog outage answers 503, so SumUp delivers again later. The body must be typed
    as JSON (SumUp's is): the edge checks only such bodies (a key given twice, depth, UTF-8)."""
    content_type = request.headers.get("content-type", "")
    if not is_json_type(content_type):
        raise UnsupportedMediaType(
            f"SumUp's notification is application/json, not "
            f"{content_type or 'a body without a type'}",
            field="body",
        )
    try:
        event = msgspec.json.decode(await request.body(), type=WebhookEvent)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"not a SumUp event: {exc}", field="body") from None
    except msgspec.DecodeError:
        raise InvalidInput("the body is not JSON", field="body") from None
    if event.event_type != STATUS_CHANGED:
        return
    if not event.id:
        raise InvalidInput("a checkout status event needs the checkout id", field="id")
    async with runtime.reports.turn(("checkout", event.id)) as handling:
        if not handling:
            # Two of its reports are being handled (one reading SumUp, one waiting for the
            # read after) and one waits for a turn, whose read of SumUp starts after this
            # arrived: SumUp delivers this one again later all the same.
            raise DependencyUnavailable(
                f"SumUp's notifications of checkout {event.id} are being handled now; deliver "
                "this one again later",
                service="orders",
            )
        applied = await service.handle_webhook(db_session, order_id, event.id, runtime)
        await db_session.commit()  # with what the payment queued, in one round trip
    _after_settlement(runtime, applied)


def _after_settlement(runtime: OrdersRuntime, applied: service.Applied | None) -> None:
    if applied is not None and applied.paid:
        runtime.relay.wake()
    if applied is not None and applied.refund_due:
        runtime.jobs.settle_refunds_soon()


async def _rechecked(
    db_session: DbSession, runtime: OrdersRuntime, order: Order
) -> tuple[Order, list[str]]:
    """Re-fetch an order's open checkouts; SumUp being down only means "still waiting"."""
    order_id = order.id  # the objects expire if the transaction is rolled back
    degraded: list[str] = []
    try:
        with runtime.reports.taken(("order", order_id)) as looking:
            # Beyond two looks at once (a buyer's reloads): the order as orders holds it.
            applied = await service.recheck(db_session, order, runtime) if looking else None
            await db_session.commit()
        _after_settlement(runtime, applied)
    except (DependencyUnavailable, PaymentProviderError) as exc:
        if isinstance(exc, PaymentProviderError) and not exc.key_refused:
            raise
        # SumUp out of reach, or refusing the merchant's key (revoked in its dashboard): to
        # the buyer both are "still waiting" (reconciliation tells the operator of the key).
        await db_session.rollback()
        degraded.append("sumup")
    reloaded = await service.load_order(db_session, order_id)
    assert reloaded is not None
    return reloaded, degraded


@get(
    "/checkout/return/{order_id:int}/",
    operation_id="checkout_return",
    tags=["checkout"],
    dependencies=RETURNED_ORDER,
)
async def checkout_return(
    request: Request,
    db_session: DbSession,
    runtime: Runtime,
    order: OwnedOrder,
    looked: LooksSoFar = 0,
) -> Any:
    """Where SumUp sends the buyer back. The checkout may still be pending: re-check it. Once
    paid, the payment's effects (the cart's clear) are delivered before the page is made, so
    it shows the cart emptied; within a bound: past it, or if cart fails, the page says paid
    all the same and the outbox delivers them later."""
    order_id = order.id  # the objects expire if the transaction is rolled back
    try:
        order, degraded = await _rechecked(db_session, runtime, order)
    except DBAPIError as exc:
        return await _still_checking(request, db_session, runtime, order_id, looked, exc)
    result = await service.order_state(db_session, order)
    if result in ("paid", "confirming"):
        order = await service.once_delivered(db_session, runtime, order.id)
        # Still "confirming" (the page looks again in a moment) while events has yet to answer.
        result = await service.order_state(db_session, order)
        if wants_html(request):
            # The navigation was fetched before this handler ran: since then this page may have
            # delivered the clear, or the relay did (woken by the webhook).
            await refresh_nav(request)
    latest = await service.latest_checkout_of(db_session, order)
    if not wants_html(request):
        return {"state": result, "order": service.order_dict(order, latest), "degraded": degraded}
    return _return_page(
        request, runtime, order, result, latest, looked, degraded, LOOK_AGAIN_SECONDS
    )


def _return_page(
    request: Request,
    runtime: OrdersRuntime,
    order: Order,
    state: str,
    latest: service.LatestCheckout | None,
    looked: int,
    degraded: list[str],
    look_again_seconds: int,
    *,
    still_checking: bool = False,
    **response: Any,
) -> Any:
    """The return page (``response``: its status and headers when not 200). Not known yet, the
    page asks again every ``look_again_seconds`` (static/look-again.js), or without scripts
    reloads at most NO_SCRIPT_LOOKS times (``looked`` so far); a final state never does."""
    looking_again = state in ("waiting", "confirming")
    return render(
        request,
        "return.html",
        **response,
        order=order,
        lines=service.order_lines(order.items),
        state=state,
        latest=latest,
        degraded=degraded,
        still_checking=still_checking and looking_again,
        looking_again=looking_again,
        look_again_seconds=look_again_seconds,
        no_script_reload=looking_again and looked < NO_SCRIPT_LOOKS,
        no_script_seconds=NO_SCRIPT_LOOK_AGAIN_SECONDS,
        no_script_looked=looked,
        no_script_looks_left=NO_SCRIPT_LOOKS - looked,
        no_script_looks=NO_SCRIPT_LOOKS,
        unconfirmed=service.unconfirmed_note(order),
        nothing_confirmed=service.nothing_confirmed(order),
        reviewed=service.ended_by_review(order),
        pay_again=service.pay_again_offer(order, runtime.settings.attempts_per_order),
    )


async def _still_checking(
    request: Request,
    db_session: DbSession,
    runtime: Runtime,
    order_id: int,
    looked: int,
    undone: DBAPIError,
) -> Any:
    """The return page when PostgreSQL undid a recheck (the return page's, or the recheck
    button's) for a conflict with other work on the order (a deadlock, a serialization
    failure): for a browser, the page's own "still checking" state, which looks again by
    itself (at the return page's address), rather than the platform's generic 503 page that
    shows nothing of the order. The status stays 503 with Retry-After: the check was undone,
    not done, so this is no outcome (nothing caches it, monitors count it), and a browser
    shows the page all the same; the JSON the page's script asks for stays the platform's 503
    problem, which the script takes as "look again later". Any other error (``undone``, or
    JSON) is raised again."""
    if not (wants_html(request) and undone_by_conflict(undone)):
        raise undone
    log_undone(undone)
    await db_session.rollback()
    order = await service.load_order(db_session, order_id)
    assert order is not None
    state = await service.order_state(db_session, order)
    if state == "failed":
        state = "waiting"  # the check that would have told was undone: it may have been paid
    return _return_page(
        request,
        runtime,
        order,
        state,
        await service.latest_checkout_of(db_session, order),
        looked,
        [],
        RETRY_AFTER_SECONDS,
        still_checking=True,
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


@get("/", operation_id="order_list_html")
async def order_list(
    request: Request,
    db_session: DbSession,
    identity: CurrentIdentity,
    page: PageNumber = 1,
    per_page: PageSize = service.ORDERS_PER_PAGE,
) -> Any:
    orders, total = await service.list_orders(
        db_session, identity.user_id, identity.session_id, page, per_page
    )
    pages = max(1, -(-total // per_page))
    states = await service.order_states(db_session, orders)
    return render(
        request,
        "orders.html",
        orders=orders,
        total=total,
        page=page,
        pages=pages,
        # Page links keep a page size that is not the default.
        per_page=per_page if per_page != service.ORDERS_PER_PAGE else None,
        states=states,
        unconfirmed_of=service.unconfirmed_note,
    )


@get("/api/orders", operation_id="order_list")
async def api_order_list(
    db_session: DbSession,
    identity: CurrentIdentity,
    page: PageNumber = 1,
    per_page: PageSize = service.ORDERS_PER_PAGE,
) -> dict[str, Any]:
    orders, total = await service.list_orders(
        db_session, identity.user_id, identity.session_id, page, per_page
    )
    states = await service.order_states(db_session, orders)
    latest = await service.latest_checkouts(db_session, orders)
    return {
        "items": [
            {**service.order_dict(order, latest.get(order.id)), "state": states[order.id]}
            for order in orders
        ],
        "page": page,
        "per_page": per_page,
        "total": total,
    }


@get("/order/{order_id:int}/", operation_id="order_html", dependencies=OWNED_ORDER)
async def order_detail(
    request: Request, db_session: DbSession, runtime: Runtime, order: OwnedOrder
) -> Any:
    return render(
        request,
        "order.html",
        order=order,
        lines=service.order_lines(order.items),
        state=await service.order_state(db_session, order),
        latest=await service.latest_checkout_of(db_session, order),
        unconfirmed=service.unconfirmed_note(order),
        nothing_confirmed=service.nothing_confirmed(order),
        reviewed=service.ended_by_review(order),
        pay_again=service.pay_again_offer(order, runtime.settings.attempts_per_order),
    )


@get("/api/orders/{order_id:int}", operation_id="order", dependencies=OWNED_ORDER)
async def api_order_detail(db_session: DbSession, order: OwnedOrder) -> dict[str, Any]:
    return {
        **service.order_dict(order, await service.latest_checkout_of(db_session, order)),
        "state": await service.order_state(db_session, order),
    }


@post(
    "/order/{order_id:int}/pay/",
    operation_id="order_pay",
    status_code=200,
    dependencies=OWNED_ORDER,
)
async def pay_again(
    request: Request,
    db_session: DbSession,
    runtime: Runtime,
    order: OwnedOrder,
) -> Any:
    """A new payment attempt (new checkout, new reference); the browser goes to SumUp. The
    form (or JSON body) may say which attempt the page showed (``attempt``): a second click
    on the same page gets the attempt the first one made."""
    order_id = order.id  # the objects expire if the transaction is rolled back
    current = order.current_attempt
    seen = _attempt_number(await optional_whole_number(request, "attempt"))
    if seen is None and current is not None:
        seen = current.number
    admission = admission_of(request, runtime.settings.pay_again_per_address)
    try:
        attempt = await service.start_new_attempt(db_session, order, seen, runtime, admission)
    except PaymentProviderUnavailable as exc:
        # The buyer's words: what SumUp's SDK raised (APITimeoutError) is for the log.
        raise DependencyUnavailable(
            "SumUp, which takes the payment, cannot be reached right now, so no new payment "
            f"was started. Order {order_id} still waits for its payment: pay again in a minute.",
            title="Payment not started",
            service="sumup",
        ) from exc
    await db_session.commit()
    if attempt is None:
        runtime.relay.wake()
        settled = await service.load_order(db_session, order.id)
        assert settled is not None
        state = await service.order_state(db_session, settled)
        said = _AS_SAID.get(state, f"already {state}")
        raise Conflict(f"Order {order.id} is {said}; nothing to pay")
    hosted_url = attempt.hosted_url or ""
    if wants_html(request):
        return see_other(hosted_url)
    return {"order_id": order.id, "attempt": attempt.number, "sumup_hosted_url": hosted_url}


# How pay again's refusal words an order state that is not a word of its own.
_AS_SAID = {
    "review": "under review",
    "confirming": "already paid",
    "refund_due": "being refunded",
}


@post(
    "/order/{order_id:int}/recheck/",
    operation_id="order_recheck",
    status_code=200,
    dependencies=OWNED_ORDER,
)
async def recheck(
    request: Request,
    db_session: DbSession,
    runtime: Runtime,
    order: OwnedOrder,
) -> Any:
    order_id = order.id  # the objects expire if the transaction is rolled back
    try:
        order, degraded = await _rechecked(db_session, runtime, order)
    except DBAPIError as exc:
        return await _still_checking(request, db_session, runtime, order_id, 0, exc)
    if wants_html(request):
        return see_other(f"/order/{order.id}/")
    state = await service.order_state(db_session, order)
    latest = await service.latest_checkout_of(db_session, order)
    return Response(
        {"state": state, "order": service.order_dict(order, latest), "degraded": degraded}
    )


def _attempt_number(number: int | None) -> int | None:
    if number is not None and not 1 <= number <= 1_000_000:
        raise InvalidInput("attempt must be between 1 and 1000000", field="attempt")
    return number


handlers = [
    sumup_webhook,
    checkout_return,
    order_list,
    api_order_list,
    order_detail,
    api_order_detail,
    pay_again,
    recheck,
]
