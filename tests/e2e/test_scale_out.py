"""Several orders processes at once (issue 13): background jobs stay correct.

Three orders processes (real processes, each on its own port, one database), cart and blog,
and the SumUp sandbox. Orders are paid at SumUp while the sandbox holds its webhooks; then a
storm: the held webhooks released in reverse order and duplicated, and more copies of every
order's webhook sent, shuffled, to all three processes at once, while each process runs its
reconciliation loop every second and its outbox relay. Then:
- each order changed status exactly once (pending -> paid; a trigger records every change);
- each outbox message was delivered exactly once (counted at the receiver: cart's access log
  lines for clear-cart-for-order, one per order);
- periodic reconciliation passes never overlapped and were never closer than the interval
  allows (the passes table), though several processes took turns.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from apps.cart import contract as cart_contract
from apps.common.signing import sign_headers
from ops.stack.pgserver import free_port
from tests.conftest import admin_connect, truncate_all
from tests.e2e.conftest import live_stack
from tests.integration.orders_fixtures import (
    add_page_config,
    checkout_id_of,
    order_payload,
    product_line,
)
from tests.waiting import eventually_sync

pytestmark = pytest.mark.slow

ORDERS_PROCESSES = 3
ORDERS = 12
RECONCILE_SECONDS = 1.0

TRANSITIONS_SQL = """
CREATE TABLE public.test_status_changes (
    order_id bigint NOT NULL, old_status text, new_status text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION public.test_record_status_change() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO public.test_status_changes (order_id, old_status, new_status)
    VALUES (NEW.id, OLD.status, NEW.status);
    RETURN NEW;
END $$;
CREATE TRIGGER test_status_changes AFTER UPDATE OF status ON orders.orders
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION public.test_record_status_change();
"""
DROP_TRANSITIONS_SQL = """
DROP TRIGGER IF EXISTS test_status_changes ON orders.orders;
DROP FUNCTION IF EXISTS public.test_record_status_change();
DROP TABLE IF EXISTS public.test_status_changes;
"""


@pytest.fixture
def transitions(provisioned):
    with admin_connect(provisioned, "orders") as connection:
        connection.execute(DROP_TRANSITIONS_SQL)
        connection.execute(TRANSITIONS_SQL)
    yield
    with admin_connect(provisioned, "orders") as connection:
        connection.execute(DROP_TRANSITIONS_SQL)


@pytest.fixture
def three_orders(provisioned, credentials, transitions, tmp_path: Path):
    truncate_all(provisioned)
    add_page_config(provisioned, "site", 0)
    extra = {
        "ORDERS_CHECKOUTS_PER_MINUTE": "1000",
        "ORDERS_RECONCILE_SECONDS": str(RECONCILE_SECONDS),
        "ORDERS_OUTBOX_POLL_SECONDS": "0.3",
    }
    log = tmp_path / "stack.log"
    services = ["orders", "cart", "blog"]
    try:
        with live_stack(
            provisioned, credentials, services, sandbox=True, extra_env=extra, log_file=log
        ) as stack:
            # More orders processes: the same command on other ports.
            urls = [stack.url("orders")]
            for number in range(2, ORDERS_PROCESSES + 1):
                port = free_port()
                command = [*stack.group.processes["orders"].command]
                command[command.index("--port") + 1] = str(port)
                stack.group.start(f"orders-{number}", port, command, service="orders")
                assert not stack.group.wait_ready([f"orders-{number}"], timeout=60)
                urls.append(stack.group.processes[f"orders-{number}"].url)
            yield urls, stack.sandbox_url, log, stack.internal_secret
    finally:
        truncate_all(provisioned)


def create_order(orders_url: str, secret: str, product_id: int) -> int:
    path = "/internal/actions/create-order"
    payload = order_payload(
        product_line(product_id, "9.00"), user_id=product_id, session_id=f"session-{product_id}"
    )
    body = json.dumps(payload).encode()
    headers = sign_headers(secret, "POST", path, body, caller="tests")
    headers["content-type"] = "application/json"
    response = httpx.post(orders_url + path, content=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["order_id"]


def test_three_orders_processes_under_a_webhook_storm(three_orders, provisioned):
    orders_urls, sandbox_url, log, secret = three_orders
    # Each process makes a pass when it starts; the periodic passes from now on are counted.
    with admin_connect(provisioned, "orders") as connection:
        [(began,)] = connection.execute("SELECT now()").fetchall()
    control = httpx.Client(base_url=sandbox_url, timeout=30)
    control.post("/_sandbox/controls", json={"webhooks": "hold", "duplicate_webhooks": 2})
    # Orders are created on every process in turn.
    order_ids = [
        create_order(orders_urls[n % ORDERS_PROCESSES], secret, 100 + n) for n in range(ORDERS)
    ]
    checkouts = {order_id: checkout_id_of(provisioned, order_id) for order_id in order_ids}
    for checkout_id in checkouts.values():
        control.post(f"/_sandbox/checkouts/{checkout_id}/pay").raise_for_status()

    # The storm: 4 copies of each order's webhook, shuffled, spread over all three processes,
    # while the sandbox releases its held (duplicated) webhooks in reverse order.
    rng = random.Random(13)
    deliveries = [
        (orders_urls[rng.randrange(ORDERS_PROCESSES)], order_id, checkout_id)
        for order_id, checkout_id in checkouts.items()
        for _ in range(4)
    ]
    rng.shuffle(deliveries)

    def send(delivery: tuple[str, int, str]) -> int:
        url, order_id, checkout_id = delivery
        body = {"event_type": "CHECKOUT_STATUS_CHANGED", "id": checkout_id}
        return httpx.post(f"{url}/checkout/webhook/{order_id}/", json=body, timeout=30).status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        release = pool.submit(
            lambda: control.post("/_sandbox/webhooks/release", json={"order": "reverse"})
        )
        statuses = list(pool.map(send, deliveries))
        assert release.result().status_code == 200
    # A process handles two reports of one checkout at a time; one beyond them is a 503, which
    # SumUp (here the sandbox) delivers again.
    assert set(statuses) <= {204, 503}, statuses
    assert 204 in statuses, statuses

    def settled() -> bool:
        with admin_connect(provisioned, "orders") as connection:
            pending = connection.execute(
                "SELECT count(*) FROM orders.outbox WHERE delivered_at IS NULL"
            ).fetchone()[0]
            paid = connection.execute(
                "SELECT count(*) FROM orders.orders WHERE status = 'paid'"
            ).fetchone()[0]
        return pending == 0 and paid == ORDERS

    assert eventually_sync(settled, timeout=60)
    # Let every process's reconciliation loop take a few more turns.
    eventually_sync(lambda: passes_since_paid(provisioned) >= 3, timeout=30)

    with admin_connect(provisioned, "orders") as connection:
        changes = connection.execute(
            "SELECT order_id, old_status, new_status FROM public.test_status_changes"
        ).fetchall()
        outbox = connection.execute(
            "SELECT idempotency_key, attempts, delivered_at IS NOT NULL FROM orders.outbox"
        ).fetchall()
        passes = connection.execute(
            "SELECT started_at, finished_at, process FROM orders.reconciliation_passes "
            "WHERE started_at > %s ORDER BY started_at",
            (began,),
        ).fetchall()
    # One transition per order.
    assert sorted(changes) == sorted((order_id, "pending", "paid") for order_id in order_ids)
    # One outbox message per order, each delivered at its first attempt...
    assert sorted(key for key, _, _ in outbox) == sorted(
        f"orders:{order_id}:clear-cart" for order_id in order_ids
    )
    assert {(attempts, delivered) for _, attempts, delivered in outbox} == {(1, True)}
    # ...and received exactly once: one clear-cart-for-order request per order at cart.
    action = cart_contract.clear_cart_for_order.name
    received = re.findall(rf"cart\s+\| .*POST /internal/actions/{action} 200", log.read_text())
    assert len(received) == ORDERS
    # Reconciliation: passes never overlap and are at least (most of) an interval apart.
    assert len(passes) >= 3
    for (started, finished, _), (next_started, _, _) in itertools.pairwise(passes):
        assert finished is not None
        assert finished <= next_started
        assert (next_started - started).total_seconds() >= 0.9 * RECONCILE_SECONDS
    # Every process had its webhooks; the passes were shared out among processes.
    assert len({process for _, _, process in passes}) >= 2


def passes_since_paid(server) -> int:
    with admin_connect(server, "orders") as connection:
        return connection.execute(
            "SELECT count(*) FROM orders.reconciliation_passes WHERE started_at > "
            "(SELECT max(at) FROM public.test_status_changes)"
        ).fetchone()[0]
