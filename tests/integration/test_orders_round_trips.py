"""Issue #14: what a checkout costs orders in database round trips, counted in libpq's trace of
the connections its requests use (one ReadyForQuery per synchronisation point: a BEGIN, or the
Sync that ends a statement or a batch sent together). A change that sends a statement of these
paths alone again, or reopens a connection, shows here, not only in bench.checkout."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from apps.common.app_factory import platform_of
from tests.integration.orders_fixtures import (
    add_page_config,
    checkout_id_of,
    create,
    order_payload,
    order_rows,
    orders_stack,
    product_line,
    webhook,
)

# Set while the test's own request runs: the relay and jobs of the in-process orders use the
# same pool, from tasks of their own, which do not see it.
_counting: contextvars.ContextVar[bool] = contextvars.ContextVar("counting", default=False)


@pytest.fixture
async def orders(clean_db, credentials, sandbox):
    add_page_config(clean_db, "site", 0)
    async with orders_stack(clean_db, credentials, sandbox.server) as running:
        yield running


@contextmanager
def round_trips(app: Any, directory: Path) -> Iterator[list[int]]:
    """Traces the connections of ``app``'s pool checked out by the current task while the block
    runs; the list holds their round trips once it ends."""
    engine = platform_of(app).engine.sync_engine
    traced: list[tuple[Any, Any]] = []

    def checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if _counting.get():
            pgconn = dbapi_connection.driver_connection.pgconn
            trace = open(directory / f"trace-{len(traced)}", "w+")  # noqa: SIM115
            pgconn.trace(trace.fileno())
            traced.append((pgconn, trace))

    counted: list[int] = []
    event.listen(engine, "checkout", checked_out)
    token = _counting.set(True)
    try:
        yield counted
    finally:
        _counting.reset(token)
        event.remove(engine, "checkout", checked_out)
        for pgconn, trace in traced:
            pgconn.untrace()
            trace.seek(0)
            counted.append(sum("ReadyForQuery" in line for line in trace.read().splitlines()))
            trace.close()


async def test_a_checkout_costs_orders_these_round_trips(orders, clean_db, sandbox, tmp_path):
    """Create-order: the nonce (its own connection, in autocommit), then BEGIN, the key's claim
    (alone: a replay must not need blog), the buyer's lock with the slot read, the placing
    statement, and the attempt with the key's answer and the COMMIT. The webhook of the
    payment: BEGIN, the attempt, the order's lock with the settlement and the transition, and
    the outbox message with the COMMIT."""
    app = orders.apps["orders"]
    # Warm (the pool's connections made, the statements prepared), with other goods: an order
    # of the same goods would be superseded, a statement more.
    await create(orders, order_payload(product_line(2)), key="warm")
    with round_trips(app, tmp_path) as created_trips:
        created = await create(orders, order_payload(product_line(1)), key="measured")
    assert created.status_code == 200, created.text
    assert created_trips == [1, 5]

    order_id = created.json()["order_id"]
    sandbox.pay(checkout_id_of(clean_db, order_id))
    with round_trips(app, tmp_path) as webhook_trips:
        answered = await webhook(orders, order_id, checkout_id_of(clean_db, order_id))
    assert answered.status_code == 204
    assert [row[1] for row in order_rows(clean_db) if row[0] == order_id] == ["paid"]
    assert webhook_trips == [4]
