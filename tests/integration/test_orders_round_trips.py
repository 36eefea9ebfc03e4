"""Issue #14: what a checkout costs orders in database round trips, counted in libpq's trace of
the connections its requests use (one ReadyForQuery per synchronisation point: a BEGIN, or the
Sync that ends a statement or a batch sent together). A change that sends a statement of these
paths alone again, or reopens a connection, shows here, not only in bench.checkout. And what
waits together: SumUp's checkout is opened while the order is placed."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from apps.common import nonces
from apps.common.app_factory import platform_of
from apps.common.signing import sign_headers
from tests.conftest import INTERNAL_SECRET, admin_connect
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
from tests.integration.test_orders_merchant_accounts import bounded, soon

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


def sweep_nonces_after(monkeypatch: pytest.MonkeyPatch, *, every_action: bool) -> None:
    """One action in SWEEP_ONE_IN sweeps the expired nonces after its answer, drawn at random:
    a count of round trips must say whether its action drew the sweep."""
    monkeypatch.setattr(nonces, "draws_sweep", lambda: every_action)


async def test_a_checkout_costs_orders_these_round_trips(
    orders, clean_db, sandbox, tmp_path, monkeypatch
):
    """Create-order: BEGIN, the nonce with the key's claim (the claim without the lock and slot
    read: a replay must not need blog), the buyer's lock with the slot read, the placing
    statement, and the attempt with the key's answer and the COMMIT. (The nonce had a
    connection and round trip of its own, in autocommit, before the action.) The webhook of the
    payment: BEGIN, the attempt, the order's lock with the settlement and the transition, and
    the outbox message with the COMMIT."""
    sweep_nonces_after(monkeypatch, every_action=False)
    app = orders.apps["orders"]
    # Warm (the pool's connections made, the statements prepared), with other goods: an order
    # of the same goods would be superseded, a statement more.
    await create(orders, order_payload(product_line(2)), key="warm")
    with round_trips(app, tmp_path) as created_trips:
        created = await create(orders, order_payload(product_line(1)), key="measured")
    assert created.status_code == 200, created.text
    assert created_trips == [5]

    order_id = created.json()["order_id"]
    sandbox.pay(checkout_id_of(clean_db, order_id))
    with round_trips(app, tmp_path) as webhook_trips:
        answered = await webhook(orders, order_id, checkout_id_of(clean_db, order_id))
    assert answered.status_code == 204
    assert [row[1] for row in order_rows(clean_db) if row[0] == order_id] == ["paid"]
    assert webhook_trips == [4]


async def test_an_action_that_draws_the_nonce_sweep_pays_one_round_trip_more(
    orders, tmp_path, monkeypatch
):
    """The sweep of expired nonces (one action in SWEEP_ONE_IN, after its answer) is one
    statement in autocommit on a connection of its own, never in the action's transaction.
    (The round-trip count above failed about once in a hundred runs: its action drew it.)"""
    app = orders.apps["orders"]
    await create(orders, order_payload(product_line(2)), key="warm")
    sweep_nonces_after(monkeypatch, every_action=True)
    with round_trips(app, tmp_path) as created_trips:
        created = await create(orders, order_payload(product_line(1)), key="measured")
    assert created.status_code == 200, created.text
    assert created_trips == [5, 1]


async def test_sumup_is_asked_for_the_checkout_while_the_order_is_placed(orders, clean_db, caplog):
    """An order with nothing to hold at events: create-order asks SumUp for its checkout while
    the placing statement runs (the two wait together). Shown with orders' order items locked:
    SumUp is asked before the order can be placed, and the order is made once it can."""
    caplog.set_level(logging.INFO, logger="sumup-sandbox")
    with admin_connect(clean_db, "orders") as holder:
        holder.autocommit = False
        holder.execute("LOCK TABLE orders.order_items IN ACCESS EXCLUSIVE MODE")
        pending = asyncio.ensure_future(create(orders, order_payload(product_line(3))))
        try:
            asked_while_placing = await soon(lambda: "POST /v0.1/checkouts 201" in caplog.text)
        finally:
            holder.rollback()
    created = await bounded(pending)
    assert asked_while_placing, "SumUp was asked only after the order was placed"
    assert created.status_code == 200, created.text
    order_id = created.json()["order_id"]
    assert [row[1] for row in order_rows(clean_db) if row[0] == order_id] == ["pending"]
    assert created.json()["sumup_hosted_url"].endswith(checkout_id_of(clean_db, order_id))


async def paid_order(orders, clean_db, sandbox, line: dict[str, Any]) -> tuple[int, str]:
    """An order of ``line`` made and paid (its webhook applied): its id and its checkout's."""
    first = await create(orders, order_payload(line), key="first")
    assert first.status_code == 200, first.text
    first_id = first.json()["order_id"]
    first_checkout = checkout_id_of(clean_db, first_id)
    sandbox.pay(first_checkout)
    assert (await webhook(orders, first_id, first_checkout)).status_code == 204
    return first_id, first_checkout


def signed_create(line: dict[str, Any], key: str) -> tuple[str, bytes, dict[str, str]]:
    """create-order of ``line`` signed as cart signs it, with ``key``: path, body, headers."""
    path = "/internal/actions/create-order"
    body = json.dumps(order_payload(line)).encode()
    headers = sign_headers(INTERNAL_SECRET, "POST", path, body, caller="tests", idempotency_key=key)
    headers.update({"content-type": "application/json", "Idempotency-Key": key})
    return path, body, headers


async def test_a_checkout_opened_for_an_order_placing_refused_is_closed(orders, clean_db, sandbox):
    """The checkout SumUp made while the order was placed, for an order placing then refused
    (its cart line is already paid for in another order): nobody got its URL, nothing of the
    order is left, and the checkout is closed at SumUp, so it can take no money either."""
    line = product_line(4, cart_line_ids=[501])
    first_id, first_checkout = await paid_order(orders, clean_db, sandbox, line)

    refused = await create(orders, order_payload(line), key="second")
    assert refused.status_code == 409, refused.text
    assert f"already paid for in order {first_id}" in refused.json()["detail"]
    assert [row[0] for row in order_rows(clean_db)] == [first_id]

    def closed() -> bool:  # in the background, once SumUp made it
        made = {checkout["id"]: checkout["status"] for checkout in sandbox.checkouts()}
        return made.pop(first_checkout) == "PAID" and "PENDING" not in made.values()

    assert await soon(closed), sandbox.checkouts()


async def test_an_order_placing_refused_answers_without_waiting_for_sumup(
    orders, clean_db, sandbox, caplog
):
    """Review F2: an order placing refused awaited SumUp's checkout (to close it) before its
    refusal, its transaction open all the while: the buyer's lock and the rows of the orders
    its statement superseded were held while SumUp answered, twice (the create, then the
    close). The refusal is now answered at once, the transaction ended; the checkout is closed
    in the background once SumUp made it. Shown with SumUp slow to answer (2.5 s; the refusal
    path takes milliseconds): the 409 arrives before SumUp answered the create."""
    caplog.set_level(logging.INFO, logger="sumup-sandbox")
    line = product_line(4, cart_line_ids=[502])
    first_id, first_checkout = await paid_order(orders, clean_db, sandbox, line)
    caplog.clear()
    sandbox.controls(api_latency=2.5)
    try:
        refused = await bounded(create(orders, order_payload(line), key="second"))
        sumup_answered_first = "POST /v0.1/checkouts 201" in caplog.text
        assert refused.status_code == 409, refused.text
        assert not sumup_answered_first, "the refusal waited for SumUp's checkout"

        def closed() -> bool:
            made = {c["id"]: c["status"] for c in sandbox.checkouts() if c["id"] != first_checkout}
            return len(made) == 1 and "PENDING" not in made.values()

        assert await soon(closed), sandbox.checkouts()
    finally:
        sandbox.controls(api_latency=0)
    assert [row[0] for row in order_rows(clean_db)] == [first_id]


def waiting_backends(server) -> int:
    """Backends of db_orders waiting for a lock."""
    with admin_connect(server, "orders") as connection:
        return (
            connection.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE d.datname = current_database() AND NOT l.granted"
            ).fetchone()[0]
            + connection.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' AND NOT granted"
            ).fetchone()[0]
        )


async def test_a_replay_sent_while_its_first_delivery_runs_is_refused_once_that_commits(
    orders, clean_db
):
    """The nonce of a keyed action goes with its key's claim, in the action's transaction. The
    same signed request delivered again while the first still runs (its nonce not yet
    committed) waits for it, and is refused as a replay once it commits: one order, made once."""
    path = "/internal/actions/create-order"
    body = json.dumps(order_payload(product_line(5))).encode()
    headers = sign_headers(
        INTERNAL_SECRET, "POST", path, body, caller="tests", idempotency_key="once"
    )
    headers.update({"content-type": "application/json", "Idempotency-Key": "once"})
    client = orders.client("orders")
    with admin_connect(clean_db, "orders") as holder:
        holder.autocommit = False
        holder.execute("LOCK TABLE orders.order_items IN ACCESS EXCLUSIVE MODE")
        try:
            first = asyncio.ensure_future(client.post(path, content=body, headers=headers))
            assert await soon(lambda: waiting_backends(clean_db) == 1), "first never placed"
            replay = asyncio.ensure_future(client.post(path, content=body, headers=headers))
            await soon(lambda: waiting_backends(clean_db) == 2 or replay.done())
        finally:
            holder.rollback()
    made, replayed = await bounded(first), await bounded(replay)
    assert made.status_code == 200, made.text
    assert replayed.status_code == 409, replayed.text
    assert "replayed" in replayed.json()["detail"]
    assert [row[0] for row in order_rows(clean_db)] == [made.json()["order_id"]]


async def test_a_keyed_action_refused_in_its_transaction_still_uses_up_its_nonce(
    orders, clean_db, sandbox
):
    """Its transaction rolled back with the nonce in it (these goods are already paid for): the
    nonce is recorded after the request, and the same signed request again is a replay."""
    line = product_line(6, cart_line_ids=[601])
    await paid_order(orders, clean_db, sandbox, line)
    path, body, headers = signed_create(line, "r")
    client = orders.client("orders")
    refused = await client.post(path, content=body, headers=headers)
    assert refused.status_code == 409, refused.text
    assert "already paid for" in refused.json()["detail"]
    again = await client.post(path, content=body, headers=headers)
    assert again.status_code == 409, again.text
    assert "replayed" in again.json()["detail"]


@contextmanager
def nonce_record_fails_once(server, nonce: str, failing_call: int) -> Iterator[None]:
    """orders' request_nonces refuses the ``failing_call``-th INSERT of ``nonce`` (a fault of
    PostgreSQL's own making: a trigger counting with a sequence, which no rollback resets)."""
    with admin_connect(server, "orders") as connection:
        connection.execute("CREATE SEQUENCE orders.test_nonce_inserts")
        connection.execute(
            f"""
            CREATE FUNCTION orders.test_nonce_fault() RETURNS trigger
            LANGUAGE plpgsql SECURITY DEFINER AS $$
            BEGIN
                IF NEW.nonce = TG_ARGV[0]
                   AND nextval('orders.test_nonce_inserts') = {int(failing_call)} THEN
                    RAISE EXCEPTION 'injected: this nonce cannot be recorded now';
                END IF;
                RETURN NEW;
            END $$
            """
        )
        connection.execute(
            "CREATE TRIGGER test_nonce_fault BEFORE INSERT ON orders.request_nonces "
            f"FOR EACH ROW EXECUTE FUNCTION orders.test_nonce_fault('{nonce}')"
        )
        connection.commit()
    try:
        yield
    finally:
        with admin_connect(server, "orders") as connection:
            connection.execute("DROP TRIGGER test_nonce_fault ON orders.request_nonces")
            connection.execute("DROP FUNCTION orders.test_nonce_fault()")
            connection.execute("DROP SEQUENCE orders.test_nonce_inserts")
            connection.commit()


async def test_a_nonce_whose_record_after_the_request_fails_once_is_still_used_up(
    orders, clean_db, sandbox
):
    """Review F5: a keyed action whose transaction did not commit has its nonce recorded after
    the request; when that one record failed, it was only logged, and the same signed request
    sent again ran as a first delivery. The record is tried again once. Shown with the first
    record after the request refused by PostgreSQL (the claim's INSERT, rolled back with the
    refused transaction, is the first): the same request again is a replay."""
    line = product_line(6, cart_line_ids=[602])
    await paid_order(orders, clean_db, sandbox, line)
    path, body, headers = signed_create(line, "f")
    client = orders.client("orders")
    with nonce_record_fails_once(clean_db, headers["X-Rose-Nonce"], failing_call=2):
        refused = await client.post(path, content=body, headers=headers)
        assert refused.status_code == 409, refused.text
        assert "already paid for" in refused.json()["detail"]
        again = await client.post(path, content=body, headers=headers)
    assert again.status_code == 409, again.text
    assert "replayed" in again.json()["detail"]
