"""SumUp's webhooks as they really arrive, between real processes: held and delivered out of
order, duplicated, or lost for good (then reconciliation at the next start-up pays the order)."""

from __future__ import annotations

import json
import signal

import httpx
import pytest

from apps.common.signing import sign_headers
from tests.conftest import admin_connect, truncate_all
from tests.e2e.conftest import live_stack
from tests.integration.orders_fixtures import (
    add_page_config,
    checkout_id_of,
    order_payload,
    order_rows,
    outbox_rows,
    product_line,
)
from tests.waiting import eventually_sync


@pytest.fixture(scope="module")
def payments(provisioned, credentials):
    truncate_all(provisioned)
    add_page_config(provisioned, "site", 0)
    # One buyer makes every order here: more than the default checkouts a minute.
    many = {"ORDERS_CHECKOUTS_PER_MINUTE": "100"}
    with live_stack(
        provisioned, credentials, ["orders", "blog"], sandbox=True, extra_env=many
    ) as stack:
        yield stack
    truncate_all(provisioned)


def sandbox(stack) -> httpx.Client:
    return httpx.Client(base_url=stack.sandbox_url, timeout=30)


def create_order(stack, product_id: int) -> int:
    secret = stack.internal_secret
    path = "/internal/actions/create-order"
    body = json.dumps(order_payload(product_line(product_id, "9.00"))).encode()
    headers = sign_headers(secret, "POST", path, body, caller="tests")
    headers["content-type"] = "application/json"
    response = httpx.post(stack.url("orders", path), content=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["order_id"]


def status_of(server, order_id: int) -> str:
    return {row[0]: row[1] for row in order_rows(server)}[order_id]


def test_failed_delivered_after_paid_leaves_the_order_paid(payments, provisioned):
    control = sandbox(payments)
    order_id = create_order(payments, 1)
    checkout = checkout_id_of(provisioned, order_id)
    control.post("/_sandbox/controls", json={"webhooks": "hold"}).raise_for_status()
    control.post(f"/_sandbox/checkouts/{checkout}/fail").raise_for_status()
    control.post(f"/_sandbox/checkouts/{checkout}/pay").raise_for_status()
    held = control.get("/_sandbox/webhooks/held").json()
    assert [event["checkout_status"] for event in held] == ["FAILED", "PAID"]

    released = control.post("/_sandbox/webhooks/release", json={"order": "reverse"}).json()
    control.post("/_sandbox/controls", json={"webhooks": "deliver"}).raise_for_status()
    assert [d["checkout_status"] for d in released["deliveries"]] == ["PAID", "FAILED"]
    assert all(d["http_status"] == 204 for d in released["deliveries"])
    assert status_of(provisioned, order_id) == "paid"


def test_duplicated_deliveries_pay_once(payments, provisioned):
    control = sandbox(payments)
    order_id = create_order(payments, 2)
    checkout = checkout_id_of(provisioned, order_id)

    def answered() -> list[dict]:
        """The first attempt of each copy, once orders answered it."""
        return [
            d
            for d in control.get("/_sandbox/deliveries").json()
            if d["checkout_id"] == checkout
            and d["attempt"] == 1
            and d["outcome"] in ("delivered", "failed")
        ]

    control.post("/_sandbox/controls", json={"duplicate_webhooks": 20}).raise_for_status()
    try:
        control.post(f"/_sandbox/checkouts/{checkout}/pay").raise_for_status()
        assert eventually_sync(lambda: len(answered()) >= 20)
    finally:
        control.post("/_sandbox/controls", json={"duplicate_webhooks": 1}).raise_for_status()
    # orders handles two reports of one checkout at a time; a copy beyond them is a 503, which
    # SumUp delivers again later.
    answers = answered()
    assert {d["http_status"] for d in answers} <= {204, 503}, answers
    assert any(d["outcome"] == "delivered" for d in answers), answers
    assert status_of(provisioned, order_id) == "paid"
    clears = [row for row in outbox_rows(provisioned) if row[2]["order_id"] == order_id]
    assert len(clears) == 1


def test_lost_webhooks_are_made_good_by_reconciliation_at_start_up(payments, provisioned):
    control = sandbox(payments)
    order_id = create_order(payments, 3)
    control.post("/_sandbox/controls", json={"webhooks": "drop"}).raise_for_status()
    try:
        control.post(f"/_sandbox/checkouts/{checkout_id_of(provisioned, order_id)}/pay")
        assert status_of(provisioned, order_id) == "pending"

        # Restart orders: reconciliation runs at start-up.
        group = payments.group
        orders = group.processes["orders"]
        assert orders.process is not None
        orders.process.send_signal(signal.SIGTERM)
        orders.process.wait(timeout=30)
        group.start_service("orders", orders.port)
        assert not group.wait_ready(["orders"], timeout=60)
        assert eventually_sync(lambda: status_of(provisioned, order_id) == "paid")
    finally:
        control.post("/_sandbox/controls", json={"webhooks": "deliver"}).raise_for_status()
    with admin_connect(provisioned, "orders") as connection:
        paid_at = connection.execute(
            "SELECT paid_at IS NOT NULL FROM orders.orders WHERE id = %s", (order_id,)
        ).fetchone()
    assert paid_at == (True,)


def test_a_late_payment_of_a_superseded_order_is_listed_for_a_person(
    payments, provisioned, tmp_path
):
    """Real processes: the old tab pays after a newer order superseded it, and SumUp refuses
    the refund; `rose orders attention` names the order, the money and why."""
    import os
    import subprocess
    import sys

    control = sandbox(payments)
    older = create_order(payments, 5)
    checkout = checkout_id_of(provisioned, older)
    control.post("/_sandbox/controls", json={"deactivation_unavailable": True}).raise_for_status()
    control.post("/_sandbox/controls", json={"refunds": "refuse"}).raise_for_status()
    try:
        newer = create_order(payments, 5)  # the same goods again: supersedes the older order
        assert newer != older
        assert status_of(provisioned, older) == "superseded"
        control.post(f"/_sandbox/checkouts/{checkout}/pay").raise_for_status()
        assert eventually_sync(lambda: status_of(provisioned, older) == "refund_due")

        def listed() -> list[dict]:
            result = subprocess.run(
                [sys.executable, "-m", "ops.cli", "orders", "attention", "--json"],
                env={
                    **os.environ,
                    "ROSE_HOME": str(tmp_path),
                    "INTERNAL_URL_ORDERS": payments.url("orders", ""),
                    "INTERNAL_SECRET": payments.internal_secret,
                },
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, result.stderr
            rows = json.loads(result.stdout)["orders"]
            return [r for r in rows if r["refunds"] and r["refunds"][0]["status"] == "failed"]

        [row] = eventually_sync(listed)
        assert row["order_id"] == older
        assert row["status"] == "refund_due"
        assert row["refunds"][0]["amount"] == "9.00"
        assert f"order {newer} replaced it" in row["refunds"][0]["reason"]
    finally:
        control.post(
            "/_sandbox/controls", json={"deactivation_unavailable": False, "refunds": "accept"}
        ).raise_for_status()
