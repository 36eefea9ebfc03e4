"""Local SumUp sandbox: the checkout API the official SDK calls, a hosted payment page,
webhook delivery, and `/_sandbox/` controls for tests and operators.

Point the SDK at it with `Sumup(api_key=DEFAULT_API_KEY, base_url="http://127.0.0.1:8099")`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import uvicorn
from litestar import Litestar, Request, Response, Router, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.enums import MediaType
from litestar.exceptions import HTTPException
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.template import TemplateConfig
from litestar.types import Message, Scope
from uvicorn.config import STARTUP_FAILURE

from apps.common.observability import (
    configure_logging,
    configure_tracing,
    opentelemetry_middleware,
)
from apps.sumup_sandbox.domain import (
    ALWAYS_FAILING_AMOUNTS,
    AmbiguousChargeBack,
    ChargeBackDecision,
    ChargeBackNotPending,
    Checkout,
    CheckoutAlreadyPaid,
    CheckoutError,
    CheckoutExpired,
    CheckoutHasNoReturnUrl,
    CheckoutNotFound,
    CheckoutStatus,
    DuplicateCheckout,
    InvalidRefundAmount,
    RefundNotAllowed,
    TransactionNotFound,
)
from apps.sumup_sandbox.service import CheckoutService, SandboxUnavailable
from apps.sumup_sandbox.state import SandboxState
from apps.sumup_sandbox.webhooks import WebhookDispatcher
from apps.sumup_sandbox.wire import (
    FieldError,
    checkout_as_json,
    display_amount,
    error_body,
    forbidden_body,
    merchant_name,
    parse_amount,
    parse_new_checkout,
    problem_body,
    transaction_full_as_json,
)

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_MERCHANT_CODE",
    "SandboxState",
    "create_app",
    "run",
]

DEFAULT_API_KEY = "sup_sk_sandbox_rose"
DEFAULT_MERCHANT_CODE = "MSANDBOX1"
TEMPLATES_DIR = Path(__file__).parent / "templates"
PROBLEM_JSON = "application/problem+json"

logger = logging.getLogger("sumup-sandbox")

JsonObject = dict[str, object]
BodyT = TypeVar("BodyT")

# Explicit parameter kinds for Litestar (inferred ones are deprecated and go away in 3.0).
Service = NamedDependency[CheckoutService]
AuthenticatedMerchant = NamedDependency[str]
CheckoutId = FromPath[str]


class ApiError(Exception):
    """An HTTP error whose body is already in SumUp's shape."""

    def __init__(
        self, status_code: int, body: Mapping[str, object], *, media_type: str = MediaType.JSON
    ) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.body = dict(body)
        self.media_type = media_type


class PayRequest(msgspec.Struct, forbid_unknown_fields=True):
    # Makes the sandbox report (and charge) another amount than created: amount-mismatch tests.
    amount_override: float | None = None


class ChargeBackRequest(msgspec.Struct, forbid_unknown_fields=True):
    # All that is left of the payment when omitted.
    amount: float | None = None
    # A dispute the card issuer has not decided yet (its event PENDING).
    pending: bool = False


class DecideChargeBackRequest(msgspec.Struct, forbid_unknown_fields=True):
    # For the buyer (the money goes back) or for the merchant (nothing goes back).
    status: ChargeBackDecision
    # The charge-back's event id; may be omitted while the transaction has one pending.
    event_id: int | None = None


class ReleaseRequest(msgspec.Struct, forbid_unknown_fields=True):
    order: Literal["fifo", "reverse"] = "fifo"


class ResendRequest(msgspec.Struct, forbid_unknown_fields=True):
    count: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1


def _json_response(
    status_code: int, body: object, *, media_type: str = MediaType.JSON
) -> Response[Any]:
    return Response(content=body, status_code=status_code, media_type=media_type)


async def _read_json(request: Request[Any, Any, Any]) -> object:
    raw = await request.body()
    if not raw.strip():
        raise FieldError(error_code="MISSING", param=None, message="Request body is required")
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as error:
        raise FieldError(
            error_code="INVALID", param=None, message=f"Request body is not valid JSON: {error}"
        ) from error


async def _read_control_body(request: Request[Any, Any, Any], body_type: type[BodyT]) -> BodyT:
    """Decode an optional JSON body of a /_sandbox/ control; an empty body means defaults."""
    raw = await request.body()
    try:
        return msgspec.json.decode(raw if raw.strip() else b"{}", type=body_type)
    except (msgspec.ValidationError, msgspec.DecodeError) as error:
        raise FieldError(error_code="INVALID", param=None, message=str(error)) from error


def _authenticate(
    request: Request[Any, Any, Any], api_keys: Mapping[str, str], revoked: tuple[str, ...]
) -> str:
    """The merchant code the Bearer key belongs to; SumUp answers 401 problems otherwise."""
    scheme, _, api_key = request.headers.get("authorization", "").partition(" ")
    key = api_key.strip()
    bearer = scheme.lower() == "bearer" and key not in revoked
    merchant_code = api_keys.get(key) if bearer else None
    if merchant_code is None:
        raise ApiError(
            401,
            problem_body(
                status=401,
                title="Unauthorized",
                detail="Missing or invalid API key in the Authorization header.",
            ),
            media_type=PROBLEM_JSON,
        )
    return merchant_code


def _api_fault_gate(
    state: SandboxState,
) -> Callable[[Request[Any, Any, Any]], Coroutine[Any, Any, Response[Any] | None]]:
    """before_request hook of the API: injected latency first, then the outage switch."""

    async def apply_api_faults(request: Request[Any, Any, Any]) -> Response[Any] | None:
        controls = state.controls
        if controls.api_latency > 0:
            # Read whole before the wait, as SumUp has it: a caller that stops waiting (its
            # timeout, its process killed) still has its call made, and no 500 is logged.
            await request.body()
            state.delayed_calls += 1
            try:
                await asyncio.sleep(controls.api_latency)
            finally:
                state.delayed_calls -= 1
        if controls.api_unavailable:
            return _json_response(
                503,
                problem_body(
                    status=503,
                    title="Service Unavailable",
                    detail="The SumUp sandbox API is switched to unavailable.",
                ),
                media_type=PROBLEM_JSON,
            )
        return None

    return apply_api_faults


# --- SumUp checkout API (/v0.1) -------------------------------------------------------------


@post("/checkouts", status_code=201)
async def create_checkout(
    request: Request[Any, Any, Any], service: Service, merchant_code: AuthenticatedMerchant
) -> JsonObject:
    new_checkout = parse_new_checkout(await _read_json(request))
    if new_checkout.merchant_code != merchant_code:
        raise ApiError(
            403,
            forbidden_body(
                f"The API key is not allowed to create checkouts for merchant "
                f"{new_checkout.merchant_code}"
            ),
        )
    return checkout_as_json(await service.create(new_checkout))


@get("/checkouts")
async def list_checkouts(
    service: Service,
    merchant_code: AuthenticatedMerchant,
    checkout_reference: FromQuery[str | None] = None,
) -> list[JsonObject]:
    checkouts = await service.list_by_reference(
        merchant_code=merchant_code, checkout_reference=checkout_reference
    )
    return [_as_shown(service, checkout) for checkout in checkouts]


def _as_shown(service: CheckoutService, checkout: Checkout) -> JsonObject:
    """A checkout as the API answers it: its status the ``checkout_status_shown`` control's,
    when set."""
    body = checkout_as_json(checkout)
    if (shown := service.state.controls.checkout_status_shown) is not None:
        body["status"] = shown
    return body


@get("/checkouts/{checkout_id:str}")
async def get_checkout(
    checkout_id: CheckoutId, service: Service, merchant_code: AuthenticatedMerchant
) -> JsonObject:
    service.state.checkout_reads[checkout_id] += 1
    return _as_shown(service, await service.get(checkout_id, merchant_code=merchant_code))


@delete("/checkouts/{checkout_id:str}", status_code=200)
async def deactivate_checkout(
    checkout_id: CheckoutId, service: Service, merchant_code: AuthenticatedMerchant
) -> JsonObject:
    if service.state.controls.deactivation_unavailable:
        raise SandboxUnavailable("deactivation is switched to unavailable")
    if service.state.controls.expired_deactivation == "not_found":
        current = await service.get(checkout_id, merchant_code=merchant_code)
        if current.status is CheckoutStatus.EXPIRED:
            raise CheckoutNotFound(checkout_id)
    return _as_shown(service, await service.deactivate(checkout_id, merchant_code=merchant_code))


# --- SumUp transactions and refunds (/v1.0, /v2.1) -----------------------------------------


def _own_merchant(path_merchant: str, merchant_code: str) -> None:
    if path_merchant != merchant_code:
        raise ApiError(
            403, forbidden_body(f"The API key does not belong to merchant {path_merchant}")
        )


@post("/v1.0/merchants/{path_merchant:str}/payments/{transaction_id:str}/refunds", status_code=201)
async def refund_transaction(
    path_merchant: FromPath[str],
    transaction_id: FromPath[str],
    request: Request[Any, Any, Any],
    service: Service,
    merchant_code: AuthenticatedMerchant,
) -> JsonObject:
    """Full refund without a body (or without `amount`), else a partial one."""
    _own_merchant(path_merchant, merchant_code)
    body = await _read_json(request) if (await request.body()).strip() else {}
    if not isinstance(body, dict):
        raise FieldError(error_code="INVALID", param=None, message="Body must be a JSON object")
    amount = None if body.get("amount") is None else parse_amount(body["amount"])
    await service.refund(transaction_id, amount, merchant_code=merchant_code)
    return {}


@get("/v2.1/merchants/{path_merchant:str}/transactions")
async def get_transaction(
    path_merchant: FromPath[str],
    service: Service,
    merchant_code: AuthenticatedMerchant,
    transaction_id: Annotated[str | None, QueryParameter(name="id")] = None,
) -> JsonObject:
    _own_merchant(path_merchant, merchant_code)
    if not transaction_id:
        raise FieldError(error_code="MISSING", param="id", message="id is required")
    refusal = service.state.controls.transaction_lookups
    if refusal == "not_found":
        raise TransactionNotFound(transaction_id)
    if refusal == "forbidden":
        raise ApiError(
            403, forbidden_body(f"The API key is not allowed to read transaction {transaction_id}")
        )
    return transaction_full_as_json(
        await service.transaction(transaction_id, merchant_code=merchant_code)
    )


# --- Hosted checkout page (/pay) ------------------------------------------------------------


def _page_context(checkout: Checkout) -> dict[str, object]:
    return {
        "checkout": checkout,
        "merchant_name": merchant_name(checkout.merchant_code),
        "amount": display_amount(checkout.amount),
        "failing_amounts": sorted(display_amount(a) for a in ALWAYS_FAILING_AMOUNTS),
    }


def _closed_page(checkout: Checkout, *, status_code: int) -> Template:
    reason = (
        "This checkout has already been paid."
        if checkout.status is CheckoutStatus.PAID
        else "This checkout has expired and can no longer be paid."
    )
    return Template(
        template_name="closed.html",
        context={**_page_context(checkout), "reason": reason},
        status_code=status_code,
    )


def _not_found_page(checkout_id: str) -> Template:
    return Template(
        template_name="not_found.html", context={"checkout_id": checkout_id}, status_code=404
    )


@get("/pay/{checkout_id:str}")
async def hosted_checkout_page(checkout_id: CheckoutId, service: Service) -> Template:
    try:
        checkout = await service.get(checkout_id)
    except CheckoutNotFound:
        return _not_found_page(checkout_id)
    if not checkout.is_payable:
        return _closed_page(checkout, status_code=200)
    return Template(template_name="pay.html", context=_page_context(checkout))


async def _hosted_action(
    checkout_id: str,
    service: CheckoutService,
    action: Callable[[str], Coroutine[Any, Any, Checkout]],
) -> Redirect | Template:
    try:
        checkout = await action(checkout_id)
    except CheckoutNotFound:
        return _not_found_page(checkout_id)
    except (CheckoutAlreadyPaid, CheckoutExpired):
        return _closed_page(await service.get(checkout_id), status_code=409)
    if checkout.redirect_url:
        return Redirect(path=checkout.redirect_url, status_code=303)
    return Template(template_name="result.html", context=_page_context(checkout))


@post("/pay/{checkout_id:str}/pay", status_code=200)
async def hosted_pay(checkout_id: CheckoutId, service: Service) -> Redirect | Template:
    return await _hosted_action(checkout_id, service, service.pay)


@post("/pay/{checkout_id:str}/fail", status_code=200)
async def hosted_fail(checkout_id: CheckoutId, service: Service) -> Redirect | Template:
    return await _hosted_action(checkout_id, service, service.fail)


# --- Sandbox-only controls (/_sandbox) ------------------------------------------------------


@get("/controls")
async def read_controls(service: Service) -> JsonObject:
    return service.state.controls.as_json()


@post("/controls", status_code=200)
async def update_controls(request: Request[Any, Any, Any], service: Service) -> JsonObject:
    changes = await _read_json(request)
    if not isinstance(changes, dict):
        raise FieldError(error_code="INVALID", param=None, message="Body must be a JSON object")
    try:
        service.state.controls = service.state.controls.updated(changes)
    except msgspec.ValidationError as error:
        raise FieldError(error_code="INVALID", param=None, message=str(error)) from error
    logger.info("controls changed: %s", changes)
    return service.state.controls.as_json()


@post("/reset", status_code=200)
async def reset_sandbox(service: Service) -> JsonObject:
    service.dispatcher.cancel_pending()
    service.state.reset()
    return {"reset": True}


@get("/checkouts")
async def list_all_checkouts(service: Service) -> list[JsonObject]:
    return [checkout_as_json(checkout) for checkout in await service.list_all()]


@post("/checkouts/{checkout_id:str}/pay", status_code=200)
async def control_pay(
    checkout_id: CheckoutId, request: Request[Any, Any, Any], service: Service
) -> JsonObject:
    body = await _read_control_body(request, PayRequest)
    override = (
        None
        if body.amount_override is None
        else parse_amount(body.amount_override, param="amount_override")
    )
    return checkout_as_json(await service.pay(checkout_id, amount_override=override))


@post("/checkouts/{checkout_id:str}/fail", status_code=200)
async def control_fail(checkout_id: CheckoutId, service: Service) -> JsonObject:
    return checkout_as_json(await service.fail(checkout_id))


@post("/transactions/{transaction_id:str}/charge-back", status_code=200)
async def control_charge_back(
    transaction_id: FromPath[str], request: Request[Any, Any, Any], service: Service
) -> JsonObject:
    """The card's holder disputed the payment and won: the money goes back outside the
    merchant's refunds (a CHARGE_BACK event on the transaction)."""
    body = await _read_control_body(request, ChargeBackRequest)
    amount = None if body.amount is None else parse_amount(body.amount, param="amount")
    return transaction_full_as_json(
        await service.charge_back(transaction_id, amount, pending=body.pending)
    )


@post("/transactions/{transaction_id:str}/charge-back/decide", status_code=200)
async def control_decide_charge_back(
    transaction_id: FromPath[str], request: Request[Any, Any, Any], service: Service
) -> JsonObject:
    """The card issuer decides a pending charge-back: its event becomes SUCCESSFUL (the money
    goes back; the transaction's simple status says CHARGEBACK) or FAILED (nothing goes back)."""
    body = await _read_control_body(request, DecideChargeBackRequest)
    return transaction_full_as_json(
        await service.decide_charge_back(transaction_id, body.status, event_id=body.event_id)
    )


@post("/checkouts/{checkout_id:str}/expire", status_code=200)
async def control_expire(checkout_id: CheckoutId, service: Service) -> JsonObject:
    return checkout_as_json(await service.deactivate(checkout_id))


@post("/checkouts/{checkout_id:str}/webhook", status_code=200)
async def control_resend_webhook(
    checkout_id: CheckoutId, request: Request[Any, Any, Any], service: Service
) -> JsonObject:
    body = await _read_control_body(request, ResendRequest)
    records = await service.resend_webhook(checkout_id, copies=body.count)
    return {"deliveries": [record.as_json() for record in records]}


@post("/webhooks/release", status_code=200)
async def release_held_webhooks(request: Request[Any, Any, Any], service: Service) -> JsonObject:
    body = await _read_control_body(request, ReleaseRequest)
    records = await service.dispatcher.release_held(body.order)
    return {"deliveries": [record.as_json() for record in records]}


@get("/webhooks/held")
async def list_held_webhooks(service: Service) -> list[JsonObject]:
    return [event.as_json() for event in service.state.held_events]


@get("/deliveries")
async def list_deliveries(service: Service) -> list[JsonObject]:
    return [record.as_json() for record in service.state.deliveries]


@get("/delayed-calls")
async def count_delayed_calls(service: Service) -> JsonObject:
    """How many API calls the injected latency (``api_latency``) holds right now."""
    return {"delayed_calls": service.state.delayed_calls}


# --- Errors and logging ---------------------------------------------------------------------

_DOMAIN_ERRORS: dict[type[CheckoutError], tuple[int, str]] = {
    CheckoutNotFound: (404, "NOT_FOUND"),
    TransactionNotFound: (404, "NOT_FOUND"),
    RefundNotAllowed: (409, "CONFLICT"),
    ChargeBackNotPending: (409, "CONFLICT"),
    AmbiguousChargeBack: (400, "INVALID"),
    InvalidRefundAmount: (400, "INVALID"),
    DuplicateCheckout: (409, "DUPLICATED_CHECKOUT"),
    CheckoutAlreadyPaid: (409, "CHECKOUT_PROCESSED"),
    CheckoutExpired: (409, "CHECKOUT_EXPIRED"),
    CheckoutHasNoReturnUrl: (409, "NO_RETURN_URL"),
}

_HTTP_ERROR_CODES = {400: "INVALID", 401: "UNAUTHORIZED", 404: "NOT_FOUND", 405: "NOT_ALLOWED"}


def _handle_domain_error(_: Request[Any, Any, Any], error: CheckoutError) -> Response[Any]:
    status_code, error_code = _DOMAIN_ERRORS[type(error)]
    return _json_response(status_code, error_body(error_code, str(error)))


def _handle_unavailable(_: Request[Any, Any, Any], error: SandboxUnavailable) -> Response[Any]:
    return _json_response(
        503,
        problem_body(status=503, title="Service Unavailable", detail=str(error)),
        media_type=PROBLEM_JSON,
    )


def _handle_field_error(_: Request[Any, Any, Any], error: FieldError) -> Response[Any]:
    return _json_response(400, error.as_json())


def _handle_api_error(_: Request[Any, Any, Any], error: ApiError) -> Response[Any]:
    return _json_response(error.status_code, error.body, media_type=error.media_type)


def _handle_http_exception(_: Request[Any, Any, Any], error: HTTPException) -> Response[Any]:
    # Unknown routes, wrong methods and bad query parameters: JSON like the rest of the API.
    error_code = _HTTP_ERROR_CODES.get(error.status_code, "ERROR")
    return _json_response(error.status_code, error_body(error_code, error.detail))


def _handle_unexpected_error(request: Request[Any, Any, Any], error: Exception) -> Response[Any]:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return _json_response(
        500,
        problem_body(status=500, title="Internal Server Error", detail="Unexpected sandbox error"),
        media_type=PROBLEM_JSON,
    )


async def _log_request(message: Message, scope: Scope) -> None:
    if message["type"] == "http.response.start":
        logger.info("%s %s %s", scope.get("method"), scope.get("path"), message["status"])


def create_app(
    *,
    api_keys: dict[str, str] | None = None,
    public_url: str = "http://127.0.0.1:8099",
    state: SandboxState | None = None,
) -> Litestar:
    """Build the sandbox.

    `api_keys` maps each accepted Bearer key to the merchant code it belongs to; `public_url` is
    the address browsers use to reach the sandbox (hosted checkout URLs are built from it).
    """
    accepted_keys = (
        dict(api_keys) if api_keys is not None else {DEFAULT_API_KEY: DEFAULT_MERCHANT_CODE}
    )
    sandbox_state = state if state is not None else SandboxState()
    dispatcher = WebhookDispatcher(sandbox_state)

    async def save_after_a_change(message: Message, scope: Scope) -> None:
        # Whatever a request other than a read may have changed is kept (a state file's), as
        # its answer starts: an error answer too (a refund made, then its answer "lost").
        if message["type"] == "http.response.start" and scope.get("method") not in (
            "GET",
            "HEAD",
            "OPTIONS",
        ):
            sandbox_state.save()

    async def save_at_shutdown() -> None:
        sandbox_state.save()

    service = CheckoutService(sandbox_state, dispatcher, public_url=public_url)

    def provide_service() -> CheckoutService:
        return service

    def provide_merchant_code(request: Request[Any, Any, Any]) -> str:
        return _authenticate(request, accepted_keys, sandbox_state.controls.revoked_api_keys)

    authenticated = {"merchant_code": Provide(provide_merchant_code, sync_to_thread=False)}
    api = Router(
        path="/v0.1",
        route_handlers=[create_checkout, list_checkouts, get_checkout, deactivate_checkout],
        before_request=_api_fault_gate(sandbox_state),
        dependencies=authenticated,
    )
    transactions = Router(
        path="/",
        route_handlers=[refund_transaction, get_transaction],
        before_request=_api_fault_gate(sandbox_state),
        dependencies=authenticated,
    )
    controls = Router(
        path="/_sandbox",
        route_handlers=[
            read_controls,
            update_controls,
            reset_sandbox,
            list_all_checkouts,
            control_pay,
            control_fail,
            control_expire,
            control_charge_back,
            control_decide_charge_back,
            control_resend_webhook,
            release_held_webhooks,
            list_held_webhooks,
            list_deliveries,
            count_delayed_calls,
        ],
    )
    app = Litestar(
        route_handlers=[api, transactions, hosted_checkout_page, hosted_pay, hosted_fail, controls],
        dependencies={"service": Provide(provide_service, sync_to_thread=False)},
        template_config=TemplateConfig(directory=TEMPLATES_DIR, engine=JinjaTemplateEngine),
        exception_handlers={
            CheckoutError: _handle_domain_error,
            FieldError: _handle_field_error,
            ApiError: _handle_api_error,
            SandboxUnavailable: _handle_unavailable,
            HTTPException: _handle_http_exception,
            Exception: _handle_unexpected_error,
        },
        before_send=[_log_request, save_after_a_change],
        on_shutdown=[dispatcher.aclose, save_at_shutdown],
        openapi_config=None,
        logging_config=None,
    )
    # Spans for the API calls, continuing the caller's trace (orders sends its traceparent).
    app.asgi_handler = opentelemetry_middleware(app.asgi_handler)
    return app


def run(
    host: str = "127.0.0.1",
    port: int = 8099,
    fd: int | None = None,
    state_file: Path | None = None,
) -> None:
    """Serve the sandbox until interrupted (used by `rose sumup-sandbox`). With ``fd``, on that
    inherited listening socket on ``port`` (``rose up``'s, or ``rose sumup-sandbox``'s own);
    with ``state_file``, its checkouts kept there (SandboxState)."""
    configure_logging("sumup-sandbox", json_lines=False)
    configure_tracing("sumup-sandbox")
    # A wildcard bind address is not something a browser can open.
    browser_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    app = create_app(
        public_url=f"http://{browser_host}:{port}", state=SandboxState(state_file=state_file)
    )
    logger.info("SumUp sandbox on http://%s:%d (API key %s)", browser_host, port, DEFAULT_API_KEY)
    if fd is None:
        uvicorn.run(app, host=host, port=port, access_log=False)
        return
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, access_log=False))
    # As uvicorn.run ends: Ctrl-C is a clean stop, a start-up that failed exit code 3.
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[socket.socket(fileno=fd)])
    if not server.started:
        sys.exit(STARTUP_FAILURE)
