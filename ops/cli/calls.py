"""``rose data``, ``rose action``, ``rose orders attention`` and ``rose orders end-review``:
signed internal calls to the running services (ops.stack.calls), their answers printed."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from apps.common.settings import MIN_SECRET_LENGTH
from apps.registry import service_spec
from ops.cli.common import ServiceArgument, console, fail

if TYPE_CHECKING:
    from apps.common.internal_client import InternalCallError, InternalClient

orders_app = typer.Typer(
    help="Orders that need a person.", no_args_is_help=True, rich_markup_mode=None
)


def _call(service: str, call: Callable[[InternalClient], Awaitable[Any]]) -> Any:
    from apps.common.internal_client import InternalCallError
    from apps.common.internal_client import logger as client_logger
    from ops.stack.calls import call_services

    # The client's warning of a failed call says what the error line below says: one line.
    client_logger.setLevel(logging.ERROR)
    signed_as_the_service_checks(service)
    try:
        return call_services(call)
    except InternalCallError as exc:
        raise fail(call_failed_line(exc)) from None


# What every problem says; its detail is in the error's own words already.
_PROBLEM_FRAME = ("type", "title", "status", "detail", "instance")


def call_failed_line(exc: InternalCallError) -> str:
    """A failed call in one line: the service's words once, then what else its problem names
    (the request's id, for its log; the order; the field), as JSON. The whole problem came
    after the words, saying its detail a second time."""
    problem = dict(exc.problem or {})
    detail = problem.get("detail")
    if detail and str(detail) in str(exc):
        problem = {key: value for key, value in problem.items() if key not in _PROBLEM_FRAME}
    return f"{exc} {json.dumps(problem)}" if problem else str(exc)


def known_service(service: str) -> None:
    """``service`` is one of ours and there is somewhere to call it."""
    from ops.stack.calls import operator_urls

    try:
        service_spec(service)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if service not in operator_urls():
        raise fail(
            f"{service}: no stack is running (start one with `rose up`) and "
            f"INTERNAL_URL_{service.upper()} is not set"
        )


def signed_as_the_service_checks(service: str) -> None:
    """The call to ``service`` can be signed with a secret it takes: INTERNAL_SECRET, when set
    (it wins over the stack's), at least as long as the services require; and set whenever
    ``INTERNAL_URL_<SVC>`` points at a deployment."""
    # The deployment checks the signature with its own secret: one made up here (the local
    # credentials' default) was a bare "401 wrong request signature", and a shorter one than
    # the services take the same.
    secret = os.environ.get("INTERNAL_SECRET", "")
    if secret and len(secret) < MIN_SECRET_LENGTH:
        raise fail(
            f"INTERNAL_SECRET must be at least {MIN_SECRET_LENGTH} characters long "
            "(the services refuse a shorter one): set the deployment's"
        )
    if not secret and os.environ.get(f"INTERNAL_URL_{service.upper()}"):
        raise fail(
            f"INTERNAL_URL_{service.upper()} is set but INTERNAL_SECRET is not: set the "
            "deployment's INTERNAL_SECRET (its .env) to sign the call"
        )


def _print_answer(service: str, call: Callable[[InternalClient], Awaitable[Any]]) -> None:
    print(json.dumps(_call(service, call), indent=2))


def _parse_params(pairs: list[str]) -> dict[str, str | list[str]]:
    params: dict[str, str | list[str]] = {}
    for pair in pairs:
        if "=" not in pair:
            raise fail(f"parameters are key=value, not {pair!r}")
        key, value = pair.split("=", 1)
        if key in params:
            existing = params[key]
            params[key] = [*existing, value] if isinstance(existing, list) else [existing, value]
        else:
            params[key] = value
    return params


def data(
    service: ServiceArgument,
    name: Annotated[str, typer.Argument(metavar="QUERY", help="The query's name.")],
    params: Annotated[
        list[str] | None, typer.Argument(metavar="KEY=VALUE", help="Its parameters.")
    ] = None,
) -> None:
    """Signed internal data call: rose data relations get-children parent_type=page parent_id=1"""
    known_service(service)
    query = _parse_params(params or [])
    _print_answer(service, lambda client: client.fetch_data(service, name, query))


def action(
    service: ServiceArgument,
    name: Annotated[str, typer.Argument(metavar="ACTION", help="The action's name.")],
    payload: Annotated[str, typer.Argument(metavar="JSON", help="JSON payload")],
    idempotency_key: Annotated[
        str | None, typer.Option(metavar="KEY", help="Idempotency-Key header.")
    ] = None,
) -> None:
    """Signed internal action call: rose action relations attach-child '{...}'"""
    known_service(service)
    try:
        body = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise fail(f"payload is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise fail("payload must be a JSON object")
    # It travels in a header (and is signed as given): printable ASCII, no space at either end
    # (HTTP would strip it, and the signature would no longer match).
    if idempotency_key is not None and not (
        idempotency_key.isascii()
        and idempotency_key.isprintable()
        and idempotency_key == idempotency_key.strip()
    ):
        raise fail("--idempotency-key must be printable ASCII with no space at either end")
    _print_answer(
        service,
        lambda client: client.call_action(service, name, body, idempotency_key=idempotency_key),
    )


@orders_app.command("attention")
def orders_attention(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Orders a person must look at: flagged payments, money owed back, refunds SumUp refused,
    and orders whose SumUp merchant has no key any more (a payment may be waiting on SumUp).
    While blog cannot be read, that last part is missing, and it is said so."""
    known_service("orders")
    answer = _call("orders", lambda client: client.fetch_data("orders", "attention"))
    if as_json:
        print(json.dumps(answer, indent=2))
        return
    rows = answer["orders"]
    if rows:
        table = Table("order", "status", "total", "why", "refunds")
        for row in attention_rows(rows):
            table.add_row(*row)
        console.print(table)
        for line in attention_hints(rows):
            console.print(line, markup=False)
    for line in unread_parts(answer["degraded"]):
        console.print(line, style="bold yellow")
    if not rows:
        console.print(
            "nothing else needs attention" if answer["degraded"] else "nothing needs attention"
        )


END_REVIEW_TIMEOUT = 300.0


@orders_app.command("end-review")
def orders_end_review(
    order_id: Annotated[int, typer.Argument(metavar="ORDER", min=1, help="The flagged order.")],
    paid_with: Annotated[
        str | None,
        typer.Option(
            "--paid-with",
            metavar="CHECKOUT",
            help="The SumUp checkout a paid order was paid with, found in SumUp's dashboard, "
            "when orders does not know it (it says so); SumUp must confirm it.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """End a flagged order's review, once you have looked at it (SumUp's dashboard, the
    buyer). orders settles it from what SumUp says now: its open checkouts are closed, money
    SumUp took for it goes back (what SumUp took), but for the payment a paid order was paid
    with, and a pending order expires (refund_due while money goes back), its goods free
    again; a paid order stays paid, unless SumUp gave all of its payment back (a refund in
    its dashboard, a charge-back): then it is refunded and its bookings are let go."""
    known_service("orders")
    request: dict[str, Any] = {"order_id": order_id}
    if paid_with is not None:
        request["paid_with"] = paid_with
    # Its SumUp calls run one after another, a few per checkout (each bounded by orders'
    # SumUp timeout): far longer than a data call may take.
    answer = _call(
        "orders",
        lambda client: client.call_action(
            "orders", "end-review", request, timeout=END_REVIEW_TIMEOUT
        ),
    )
    if as_json:
        print(json.dumps(answer, indent=2))
        return
    for line in review_ended_lines(answer):
        console.print(line, markup=False)


@orders_app.command("flag")
def orders_flag(
    order_id: Annotated[int, typer.Argument(metavar="ORDER", min=1, help="The order.")],
    reason: Annotated[
        str, typer.Argument(metavar="REASON", help="What you saw, kept with the order.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Flag an order for review, for REASON: orders hears nothing of a refund made in SumUp's
    dashboard, nor of a charge-back. It is listed by rose orders attention, and rose orders
    end-review then settles it from what SumUp says (a paid order whose payment SumUp gave
    all back is refunded). A pending order is refused: its checkout is still open, and its
    payment or expiry settles it. An order flagged already keeps its first reason."""
    known_service("orders")
    answer = _call(
        "orders",
        lambda client: client.call_action(
            "orders", "flag-for-review", {"order_id": order_id, "reason": reason}
        ),
    )
    if as_json:
        print(json.dumps(answer, indent=2))
        return
    for line in flagged_lines(answer):
        console.print(line, markup=False)


def flagged_lines(answer: dict[str, Any]) -> list[str]:
    """What ``rose orders flag`` prints of the action's answer."""
    order_id = answer["order_id"]
    said = "flagged for review" if answer["flagged_now"] else "was flagged already"
    return [
        f"order {order_id} ({answer['status']}) {said}: {answer['flag_reason']}",
        f"  once you have looked at it, `rose orders end-review {order_id}` settles it from what "
        "SumUp says now",
    ]


def review_ended_lines(answer: dict[str, Any]) -> list[str]:
    """What ``rose orders end-review`` prints of the action's answer."""
    lines = [f"order {answer['order_id']}: review ended; it is {answer['status']} now"]
    if answer.get("kept_payment"):
        lines.append(
            f"  kept: checkout {answer['kept_payment']}, the payment the order was paid with"
        )
    if answer.get("kept_unchecked"):
        lines.append(
            f"  unchecked: {answer['kept_unchecked']}; orders could not tell whether any of it "
            "went back: look at it in SumUp's dashboard"
        )
    lines += [f"  closed at SumUp: checkout {checkout}" for checkout in answer["closed_checkouts"]]
    lines += [
        f"  going back: {refund['amount']} {refund['currency']} of checkout "
        f"{refund['checkout_id']} (orders asks SumUp now; `rose orders attention` lists it until "
        "it is done)"
        for refund in answer["refunds"]
    ]
    lines += [
        f"  still going back: {refund['amount']} {refund['currency']} of checkout "
        f"{refund['checkout_id']} (recorded before; `rose orders attention` lists it until it is "
        "done)"
        for refund in answer.get("still_going_back", [])
    ]
    if answer["releasing_bookings"]:
        lines.append("  its bookings are being let go of at events")
    return lines


# What each service's part of the attention list is, for a person told it could not be read.
ATTENTION_PARTS = {
    "blog": "which orders' SumUp merchant has no key any more (a payment may be waiting on SumUp)"
}


def unread_parts(degraded: list[str]) -> list[str]:
    """One line for each service whose part of the list could not be read."""
    return [
        f"{service} could not be read: not listed is "
        f"{ATTENTION_PARTS.get(service, 'what ' + service + ' adds')}; ask again once it answers"
        for service in degraded
    ]


def attention_hints(rows: list[dict[str, Any]]) -> list[str]:
    """What a person can do about the listed orders that the table does not say."""
    flagged = [str(row["order_id"]) for row in rows if row["flagged"]]
    refused = [
        str(row["order_id"])
        for row in rows
        if any(refund["status"] == "failed" for refund in row["refunds"])
    ]
    hints = []
    if flagged:
        hints.append(
            f"flagged: {', '.join(flagged)}. Once you have looked at one (SumUp's dashboard, "
            "the buyer), `rose orders end-review ORDER` settles it from what SumUp says now"
        )
    if refused:
        # Never asked again (a second request could give the money back twice): the review
        # settles one done once SumUp shows its money given back (review.py).
        # A failed refund may also be a request whose answer was lost and whose transaction
        # SumUp would not show (settlement): its money may be back already (review M3).
        hints.append(
            f"refunds that failed: order {', '.join(refused)}. orders does not ask for them "
            "again: look in SumUp's dashboard whether the money went back (a request whose "
            "answer was lost may have gone through), and only if it did not, give it back "
            "there; then `rose orders flag ORDER REASON` and `rose orders end-review ORDER` "
            "settle each once SumUp shows it given back"
        )
    return hints


def attention_rows(rows: list[dict[str, Any]]) -> list[tuple[str, str, str, str, str]]:
    """The attention call's orders as the table's rows: order, status, total, why, refunds."""
    shown = []
    for row in rows:
        reasons = [row["flag_reason"] if row["flagged"] else ""]
        # Absent from an orders service older than the key check.
        reasons.append(row.get("merchant_key_missing") or "")
        owed = sum(1 for refund in row["refunds"] if refund["status"] != "done")
        if owed:
            reasons.append(f"money goes back: {owed} refund{'' if owed == 1 else 's'} not done yet")
        refunds = "; ".join(
            f"{refund['amount']} {refund['currency']} {refund['status']}: {refund['reason']}"
            + (f" ({refund['last_error']})" if refund["last_error"] else "")
            for refund in row["refunds"]
        )
        shown.append(
            (
                str(row["order_id"]),
                "flagged" if row["flagged"] else row["status"],
                f"{row['total']} {row['currency']}",
                "; ".join(reason for reason in reasons if reason),
                refunds,
            )
        )
    return shown
