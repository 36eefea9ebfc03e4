"""An operator ends a flagged order's review with `rose`, against `rose up`'s real processes:
orders and blog on the embedded PostgreSQL, the SumUp sandbox paying another amount and
delivering its webhook over HTTP, `rose orders attention` and `rose orders end-review`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from ops.stack.pgserver import free_port
from ops.stack.processes import SUMUP_SANDBOX_PORT
from tests.e2e.conftest import rose_cli as rose
from tests.e2e.conftest import rose_up

PORT_OFFSET = 23000
SANDBOX = f"http://127.0.0.1:{SUMUP_SANDBOX_PORT + PORT_OFFSET}"


def until(condition: Callable[[], bool], timeout: float = 30) -> bool:
    """A hang guard: polls until ``condition`` holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.3)
    return condition()


def words(text: str) -> str:
    return " ".join(text.split())


def attention(home: Path) -> list[dict]:
    answer = json.loads(rose(home, "orders", "attention", "--json").stdout)
    return answer["orders"]


@pytest.mark.slow
def test_an_operator_ends_a_flagged_orders_review_with_rose(tmp_path: Path) -> None:
    home = tmp_path / "rose-home"
    args = ["--fresh", "--pg-port", str(free_port()), "--port-offset", str(PORT_OFFSET)]
    with rose_up(home, *args, "--only", "orders,blog", timeout=120):
        line = {
            "product_id": 1,
            "product_title": "Jam",
            "product_slug": "jam",
            "product_regular_price": "10.00",
            "product_price_currency": "EUR",
            "quantity": 1,
        }
        payload = {
            "cart_items": [line],
            "product_total": "10.00",
            "calendar_total": "0",
            "ticket_total": "0",
            "user_id": 1,
            "session_id": "e2e-review",
        }
        created = json.loads(
            rose(
                home,
                "action",
                "orders",
                "create-order",
                json.dumps(payload),
                "--idempotency-key",
                "e2e-review-1",
            ).stdout
        )
        order_id = created["order_id"]
        [checkout] = [
            c
            for c in httpx.get(f"{SANDBOX}/_sandbox/checkouts").json()
            if c["checkout_reference"] == created["sumup_reference"]
        ]
        # The buyer's payment reaches SumUp as another amount; SumUp's webhook tells orders.
        paid = httpx.post(
            f"{SANDBOX}/_sandbox/checkouts/{checkout['id']}/pay", json={"amount_override": 1.00}
        )
        paid.raise_for_status()
        assert until(lambda: [o["order_id"] for o in attention(home) if o["flagged"]] == [order_id])
        # Into a pipe (rose's stdout here) every line is whole, as grep or a script reads it:
        # Rich wrapped them at 80 columns, a table's cells too.
        [row] = attention(home)
        reason, status = row["flag_reason"], row["status"]
        assert len(reason) > 80, reason
        flagged = rose(home, "orders", "flag", str(order_id), "a second look").stdout
        assert flagged.splitlines() == [
            f"order {order_id} ({status}) was flagged already: {reason}",
            f"  once you have looked at it, `rose orders end-review {order_id}` settles it from "
            "what SumUp says now",
        ], flagged
        listed = rose(home, "orders", "attention").stdout.splitlines()
        assert [line for line in listed if reason in line], listed
        assert (
            f"flagged: {order_id}. Once you have looked at one (SumUp's dashboard, the buyer), "
            "`rose orders end-review ORDER` settles it from what SumUp says now"
        ) in listed, listed

        # Naming a payment is for a paid order that does not know its own: refused, nothing
        # changed.
        named = rose(
            home, "orders", "end-review", str(order_id), "--paid-with", checkout["id"], check=False
        )
        assert named.returncode == 1
        assert "only a paid order is paid with a checkout" in words(named.stderr)

        ended = words(rose(home, "orders", "end-review", str(order_id)).stdout)
        assert f"order {order_id}: review ended; it is refund_due now" in ended
        assert f"going back: 1.00 EUR of checkout {checkout['id']}" in ended
        # The refund is asked for at once: the order is refunded and needs nobody any more.
        assert until(lambda: attention(home) == [])
        order = json.loads(rose(home, "data", "orders", "order", f"order_id={order_id}").stdout)
        assert (order["status"], order["flagged"]) == ("refunded", False)

        again = rose(home, "orders", "end-review", str(order_id), check=False)
        assert again.returncode == 1
        # orders' words once, on one line, and what else its answer names (the request's id
        # for its log): they came twice, the second time inside the whole problem's JSON.
        [refusal] = again.stderr.splitlines()
        assert refusal.startswith(
            f"error: orders end-review: answered 409: Order {order_id} is not under review"
        ), refusal
        assert refusal.count("not under review") == 1, refusal
        assert '"request_id": ' in refusal, refusal
