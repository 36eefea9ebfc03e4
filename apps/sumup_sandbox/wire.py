"""SumUp's JSON shapes: the create-checkout request, checkouts, transactions and error bodies."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

import httpx

from apps.sumup_sandbox.domain import Checkout, GivenBack, NewCheckout, Transaction

REQUIRED_CHECKOUT_FIELDS = ("checkout_reference", "amount", "currency", "merchant_code")
MAX_REFERENCE_LENGTH = 90
CHECKOUT_PURPOSES = frozenset({"CHECKOUT", "SETUP_RECURRING_PAYMENT"})
_CURRENCY_CODE = re.compile(r"[A-Z]{3}")
_CENT = Decimal("0.01")


class FieldError(Exception):
    """A 400 in SumUp's shape: `{"message", "error_code", "param"}`."""

    def __init__(self, *, error_code: str, param: str | None, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.param = param
        self.message = message

    def as_json(self) -> dict[str, object]:
        body: dict[str, object] = {"message": self.message, "error_code": self.error_code}
        if self.param is not None:
            body["param"] = self.param
        return body


def _invalid(param: str, message: str) -> FieldError:
    return FieldError(error_code="INVALID", param=param, message=message)


def _string(payload: dict[str, object], name: str) -> str | None:
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid(name, f"{name} must be a string")
    return value


def _url(payload: dict[str, object], name: str) -> str | None:
    value = _string(payload, name)
    if value is None:
        return None
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as error:
        raise _invalid(name, f"{name} is not a valid URL: {error}") from error
    if url.scheme not in ("http", "https") or not url.host:
        raise _invalid(name, f"{name} must be an absolute http(s) URL")
    return value


def parse_amount(value: object, *, param: str = "amount") -> Decimal:
    """A positive JSON number in major units with at most 2 decimals (10.1 is EUR 10.10)."""
    # JSON booleans decode as bool, a subclass of int: they are not amounts.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(param, f"{param} must be a number in major units, e.g. 10.1")
    amount = Decimal(str(value))
    if not amount.is_finite() or amount <= 0:
        raise _invalid(param, f"{param} must be a finite number greater than 0")
    try:
        has_sub_cent_digits = amount != amount.quantize(_CENT)
    except InvalidOperation as error:
        raise _invalid(param, f"{param} is too large") from error
    if has_sub_cent_digits:
        raise _invalid(param, f"{param} must have at most 2 decimal places")
    return amount


def _datetime(payload: dict[str, object], name: str) -> datetime | None:
    value = _string(payload, name)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as error:
        raise _invalid(name, f"{name} must be an ISO 8601 date-time") from error
    # The SDK serialises naive datetimes without an offset; SumUp's clock is UTC.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _hosted_checkout_enabled(value: object) -> bool:
    if value is None:
        return False
    if not isinstance(value, dict) or not isinstance(value.get("enabled"), bool):
        raise _invalid("hosted_checkout.enabled", "hosted_checkout must be {'enabled': bool}")
    return bool(value["enabled"])


def parse_new_checkout(payload: object) -> NewCheckout:
    """Validate a POST /v0.1/checkouts body the way SumUp reports errors (first error wins)."""
    if not isinstance(payload, dict):
        raise FieldError(
            error_code="INVALID", param=None, message="Request body must be a JSON object"
        )
    for name in REQUIRED_CHECKOUT_FIELDS:
        if payload.get(name) is None or payload.get(name) == "":
            raise FieldError(
                error_code="MISSING", param=name, message=f"Validation error: {name} is required"
            )
    reference = _string(payload, "checkout_reference") or ""
    if len(reference) > MAX_REFERENCE_LENGTH:
        raise _invalid(
            "checkout_reference",
            f"checkout_reference must be at most {MAX_REFERENCE_LENGTH} characters",
        )
    amount = parse_amount(payload["amount"])
    currency = _string(payload, "currency") or ""
    if not _CURRENCY_CODE.fullmatch(currency):
        raise _invalid("currency", "currency must be a three-letter ISO 4217 code")
    purpose = _string(payload, "purpose")
    if purpose is not None and purpose not in CHECKOUT_PURPOSES:
        raise _invalid("purpose", f"purpose must be one of {sorted(CHECKOUT_PURPOSES)}")
    return NewCheckout(
        checkout_reference=reference,
        amount=amount,
        currency=currency,
        merchant_code=_string(payload, "merchant_code") or "",
        description=_string(payload, "description"),
        return_url=_url(payload, "return_url"),
        redirect_url=_url(payload, "redirect_url"),
        hosted_checkout_enabled=_hosted_checkout_enabled(payload.get("hosted_checkout")),
        valid_until=_datetime(payload, "valid_until"),
        customer_id=_string(payload, "customer_id"),
        purpose=purpose,
    )


def iso_timestamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def display_amount(amount: Decimal) -> str:
    return str(amount.quantize(_CENT))


def merchant_name(merchant_code: str) -> str:
    return f"Sandbox merchant {merchant_code}"


def transaction_as_json(transaction: Transaction) -> dict[str, object]:
    body: dict[str, object] = {
        "id": transaction.id,
        "transaction_code": transaction.transaction_code,
        # JSON number in major units, as SumUp sends it (never a string, never cents).
        "amount": float(transaction.amount),
        "currency": transaction.currency,
        "status": transaction.status.value,
        "timestamp": iso_timestamp(transaction.timestamp),
        "payment_type": "ECOM",
        "entry_mode": "CUSTOMER_ENTRY",
        "installments_count": 1,
        "merchant_code": transaction.merchant_code,
        "vat_amount": 0.0,
        "tip_amount": 0.0,
    }
    if transaction.auth_code is not None:
        body["auth_code"] = transaction.auth_code
    return body


def _event_status(event: GivenBack) -> str:
    if event.kind == "REFUND" and event.status == "SUCCESSFUL":
        return "REFUNDED"
    return event.status


def transaction_full_as_json(transaction: Transaction) -> dict[str, object]:
    """GET /v2.1/merchants/{code}/transactions: the transaction with its refund and
    charge-back events."""
    events: list[dict[str, object]] = [
        {
            "id": event.id,
            "type": event.kind,
            "status": _event_status(event),
            "amount": float(event.amount),
            "timestamp": iso_timestamp(event.timestamp),
            "transaction_id": transaction.id,
        }
        for event in transaction.given_back
    ]
    return {
        **transaction_as_json(transaction),
        "simple_status": "CHARGEBACK" if transaction.charged_back else transaction.status.value,
        "events": events,
        "transaction_events": [
            {
                "id": event["id"],
                "event_type": event["type"],
                "status": event["status"],
                "amount": event["amount"],
                "timestamp": event["timestamp"],
            }
            for event in events
        ],
    }


def checkout_as_json(checkout: Checkout) -> dict[str, object]:
    body: dict[str, object] = {
        "id": checkout.id,
        "checkout_reference": checkout.checkout_reference,
        "amount": float(checkout.amount),
        "currency": checkout.currency,
        "merchant_code": checkout.merchant_code,
        "merchant_name": merchant_name(checkout.merchant_code),
        "status": checkout.status.value,
        "date": iso_timestamp(checkout.date),
        "transactions": [transaction_as_json(tx) for tx in checkout.transactions],
    }
    optional_fields: dict[str, object | None] = {
        "description": checkout.description,
        "return_url": checkout.return_url,
        "redirect_url": checkout.redirect_url,
        "hosted_checkout_url": checkout.hosted_checkout_url,
        "valid_until": iso_timestamp(checkout.valid_until) if checkout.valid_until else None,
        "customer_id": checkout.customer_id,
        "purpose": checkout.purpose,
    }
    body.update({name: value for name, value in optional_fields.items() if value is not None})
    if (paid_with := checkout.successful_transaction) is not None:
        body["transaction_code"] = paid_with.transaction_code
        body["transaction_id"] = paid_with.id
    return body


def error_body(error_code: str, message: str) -> dict[str, object]:
    return {"error_code": error_code, "message": message}


def forbidden_body(message: str) -> dict[str, object]:
    return {"error_message": message, "error_code": "FORBIDDEN", "status_code": "403"}


def problem_body(*, status: int, title: str, detail: str) -> dict[str, object]:
    """An RFC 9457 problem, as SumUp answers 401s (served as application/problem+json)."""
    slug = title.lower().replace(" ", "-")
    return {
        "type": f"https://developer.sumup.com/problem/{slug}",
        "title": title,
        "status": status,
        "detail": detail,
    }
