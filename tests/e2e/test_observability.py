"""Follow one checkout (issue 13): real processes write their spans to one file
(``ROSE_TRACE_FILE``) and their log lines to one log. The checkout's trace id is in the spans
and log lines of cart (the checkout and the clear), orders (create-order, the webhook, the
outbox relay), and the SumUp sandbox (the checkout call); orders' ``/metrics`` shows the outbox
backlog while cart cannot answer, and back at 0 once it has."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import httpx
import pytest

from apps.cart import contract as cart_contract
from tests.conftest import truncate_all
from tests.e2e.conftest import live_stack
from tests.integration.commerce_fixtures import ALL_SERVICES, cart_rows, open_shop
from tests.integration.orders_fixtures import order_rows
from tests.waiting import eventually_sync

pytestmark = pytest.mark.slow


@pytest.fixture
def traced_stack(provisioned, credentials, tmp_path: Path):
    truncate_all(provisioned)
    spans = tmp_path / "spans.jsonl"
    log = tmp_path / "stack.log"
    extra = {"ROSE_TRACE_FILE": str(spans), "ORDERS_OUTBOX_POLL_SECONDS": "0.3"}
    try:
        with live_stack(
            provisioned, credentials, ALL_SERVICES, sandbox=True, extra_env=extra, log_file=log
        ) as stack:
            yield stack, spans, log
    finally:
        truncate_all(provisioned)


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_one_checkout_is_one_trace_and_metrics_show_the_backlog(traced_stack, provisioned):
    stack, spans_file, log_file = traced_stack
    shop = open_shop(provisioned)
    browser = httpx.Client(timeout=30, headers={"accept": "application/json"})
    signed_in = browser.get(stack.url("market", "/auth/dev-login?user_id=41"))
    browser.headers["x-csrf-token"] = signed_in.json()["csrf_token"]
    added = browser.post(stack.url("cart", f"/add/{shop.product_ids[3]}/"))
    assert added.status_code == 200, added.text

    checkout = browser.post(stack.url("cart", "/checkout/"), headers={"accept": "text/html"})
    assert checkout.status_code == 303, checkout.text
    hosted = checkout.headers["location"]
    assert hosted.startswith(stack.sandbox_url + "/pay/")
    [(order_id, status, *_)] = order_rows(provisioned)
    assert status == "pending"

    # Cart stops answering: once paid, orders' message to clear the cart waits in the outbox.
    cart_process = stack.group.processes["cart"].process
    assert cart_process is not None
    cart_process.send_signal(signal.SIGSTOP)
    try:
        paid = httpx.post(hosted + "/pay", timeout=30)  # the buyer pays on SumUp's page
        assert paid.status_code == 303  # back to the shop
        assert eventually_sync(lambda: order_rows(provisioned)[0][1] == "paid")
        metrics = httpx.get(stack.url("orders", "/metrics"), timeout=10).text
        assert metric(metrics, "rose_outbox_backlog") == 1
        assert metric(metrics, "rose_outbox_oldest_age_seconds") >= 0
        assert metric(metrics, "rose_orders_pending") == 0
    finally:
        os.kill(cart_process.pid, signal.SIGCONT)
    assert eventually_sync(lambda: not [row for row in cart_rows(provisioned) if row[6]])

    def backlog_empty() -> bool:
        metrics = httpx.get(stack.url("orders", "/metrics"), timeout=10).text
        return metric(metrics, "rose_outbox_backlog") == 0

    assert eventually_sync(backlog_empty)
    orders_metrics = httpx.get(stack.url("orders", "/metrics"), timeout=10).text
    assert metric(orders_metrics, "rose_outbox_oldest_age_seconds") == 0
    assert metric(orders_metrics, "rose_orders_reconciliation_lag_seconds") >= 0
    assert 'rose_outbox_deliveries_total{outcome="delivered",target="cart"}' in orders_metrics, (
        orders_metrics
    )
    assert re.search(
        r'rose_requests_total\{app_name="orders",method="POST",'
        r'path="/checkout/webhook/\{order_id\}",status_code="204"\} 1\.0',
        orders_metrics,
    ), orders_metrics
    cart_metrics = httpx.get(stack.url("cart", "/metrics"), timeout=10).text
    assert 'rose_internal_call_seconds_count{call="create-order",target="orders"} 1.0' in (
        cart_metrics
    )

    # The trace of cart's POST /checkout/ ...
    spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    [checkout_span] = [
        span
        for span in spans
        if span["service"] == "rose-cart" and span["name"] == "POST /checkout/"
    ]
    trace_id = checkout_span["trace_id"]
    traced = {(span["service"], span["name"]) for span in spans if span["trace_id"] == trace_id}
    clear = cart_contract.clear_cart_for_order.name
    assert {
        ("rose-cart", "POST /checkout/"),
        ("rose-cart", "call orders.create-order"),
        ("rose-orders", "POST /internal/actions/create-order"),
        ("rose-sumup-sandbox", "POST /v0.1/checkouts"),
        ("rose-orders", f"POST /checkout/webhook/{order_id}/"),
        ("rose-orders", f"outbox cart.{clear}"),
        ("rose-cart", f"POST /internal/actions/{clear}"),
    } <= traced, sorted(traced)
    # ... and the log lines of every step carry its id.
    lines = [line for line in log_file.read_text().splitlines() if f"trace={trace_id}" in line]

    def logged(source: str, text: str) -> bool:
        return any(re.match(rf"\S+ {source}\s+\| ", line) and text in line for line in lines)

    assert logged("cart", "POST /checkout 303")
    assert logged("orders", "POST /internal/actions/create-order 200")
    assert logged("sumup", "POST /v0.1/checkouts")
    assert logged("orders", f"POST /checkout/webhook/{order_id} 204")
    assert logged("cart", f"POST /internal/actions/{clear} 200")
    # Every line a service process logs has a trace field (a trace id, or "-" outside one).
    service_lines = [
        line
        for line in log_file.read_text().splitlines()
        if re.match(r"\S+ (cart|orders|market|blog|events)\s+\| (INFO|WARNING|ERROR)", line)
    ]
    assert service_lines
    assert all(re.search(r" trace=([0-9a-f]{32}|-)$", line) for line in service_lines)


OUTBOX_GAUGES = ("rose_outbox_backlog", "rose_outbox_oldest_age_seconds", "rose_outbox_dead")


def test_only_a_service_with_an_outbox_exports_its_gauges(provisioned, credentials):
    """Probe newuser: blog, cart, likes and relations have no outbox, yet their /metrics said
    ``rose_outbox_backlog 0.0`` (and the age, and the dead): an alert on them read "healthy" for
    a service with nothing to deliver. Each service is a process of its own here, as deployed;
    market has an outbox (its undos for relations)."""
    services = ["relations", "likes", "market"]
    with live_stack(provisioned, credentials, services) as stack:
        texts = {name: httpx.get(stack.url(name, "/metrics"), timeout=10).text for name in services}
    assert [metric(texts["market"], gauge) for gauge in OUTBOX_GAUGES] == [0, 0, 0]
    for name in ("relations", "likes"):
        exported = [gauge for gauge in OUTBOX_GAUGES if re.search(rf"^{gauge} ", texts[name], re.M)]
        assert exported == [], (name, exported)
