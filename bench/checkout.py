"""Benchmark: complete checkouts through the real orders process and the SumUp sandbox.

Everything runs on a throwaway embedded PostgreSQL set up with the project's own provisioning,
migrations and FDW edges; a shop (a page, page configs of the page and the site default for the
sandbox merchant, products); orders, blog and cart as real uvicorn processes and the SumUp sandbox
as one more process. One checkout is:

1. ``create-order``: a signed internal action to orders (``InternalClient.call_action``, as cart
   calls it, with a unique idempotency key);
2. pay it at the sandbox (``POST /_sandbox/checkouts/{id}/pay``);
3. the webhook: the exact SumUp event body POSTed to orders' ``/checkout/webhook/{order_id}/``
   (the sandbox's own deliveries are switched to "drop" so they do not race the measured one;
   one checkout before the measurements goes through the sandbox's real delivery instead);
4. check that the order is paid (orders' internal data ``order``; not timed).

Baselines, measured in the same run and interleaved with the checkouts one for one (see
``bench/checkout_baseline.py``): create-order's own transaction plus one sandbox round trip, and
the webhook's sandbox GET plus its conditional UPDATEs and outbox insert. Then the same
checkouts from a few concurrent clients. Run ``python -m bench.checkout [--checkouts N]``
(``--help`` lists the options). Exits non-zero when any checkout failed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import os
import platform
import random
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import psycopg

from apps.common.http_transport import AiohttpTransport
from apps.common.internal_client import InternalCallError, InternalClient
from apps.sumup_sandbox.domain import ALWAYS_FAILING_AMOUNTS
from bench import sampling
from bench.checkout_baseline import REFERENCE_PREFIX, Baseline
from bench.checkout_breakdown import print_breakdown, profiled_orders
from bench.checkout_stack import (
    SANDBOX,
    SERVICES,
    Shop,
    Stack,
    TimingSink,
    admin_connect,
    cpu_snapshot,
    open_shop,
    postmaster_pid,
    running_stack,
    seed_history,
    set_up_databases,
)
from bench.targets import Target, print_targets
from ops.db.credentials import Credentials
from ops.stack.pgserver import throwaway_postgres

CENT = Decimal("0.01")
STATUS_CHANGED = "CHECKOUT_STATUS_CHANGED"
# The orders process's public base URL, as service_environment sets APP_URL_ORDERS.
PUBLIC_HOST = "localhost"
MAX_FAILURES = 20  # a broken stack fails every checkout: stop early and say why


def say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


class CheckoutFailed(Exception):
    pass


@dataclass(frozen=True)
class Stats:
    count: int
    p50: float
    p99: float
    mean: float

    @classmethod
    def of(cls, values: list[float]) -> Stats:
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        return cls(len(values), cuts[49], cuts[98], statistics.fmean(values))


@dataclass
class Samples:
    """Client-side durations in ms per step, and the order ids that went through."""

    ms: dict[str, list[float]] = field(default_factory=dict)
    order_ids: list[int] = field(default_factory=list)
    wall_seconds: float = 0.0
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    def add(self, step: str, value: float) -> None:
        self.ms.setdefault(step, []).append(value)

    def stats(self, step: str) -> Stats | None:
        values = self.ms.get(step, [])
        return Stats.of(values) if len(values) > 1 else None


@dataclass
class Run:
    args: argparse.Namespace
    failures: list[str] = field(default_factory=list)
    sequential: Samples = field(default_factory=Samples)
    concurrent: Samples = field(default_factory=Samples)
    concurrent_warmup: Samples = field(default_factory=Samples)
    warmup_order_ids: list[int] = field(default_factory=list)
    # The cart lines named by the checked orders (every one must be cleared by the relay).
    cart_line_ids: list[int] = field(default_factory=list)
    delivery_check: str = ""
    final_check: list[str] = field(default_factory=list)
    postgres_version: str = ""
    baseline_parts: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    profile: list[str] = field(default_factory=list)
    # Measured sequential checkouts to read back through orders' data API (order id, SumUp
    # reference, total), once the phase's CPU figures are taken: the read is the bench's check,
    # not part of a checkout.
    to_read_back: list[tuple[int, str, Decimal]] = field(default_factory=list)


# -- what one checkout is --------------------------------------------------------------------------
def cart_payload(rng: random.Random, shop: Shop, index: int) -> dict[str, Any]:
    """A page checkout of 1 to 3 products (quantities 1 to 3), as cart sends it to create-order;
    never one of the amounts the sandbox always declines."""
    while True:
        lines = []
        total = Decimal(0)
        for product in rng.sample(shop.products, rng.randint(1, 3)):
            quantity = rng.randint(1, 3)
            price = product.special_price or product.regular_price
            total += price * quantity
            lines.append(
                {
                    "product_id": product.id,
                    "product_title": product.title,
                    "product_slug": product.slug,
                    "product_image": None,
                    "product_regular_price": str(product.regular_price),
                    "product_special_price": (
                        str(product.special_price) if product.special_price is not None else None
                    ),
                    "product_price_currency": "EUR",
                    "quantity": quantity,
                    "market_place_container_id": shop.page_id,
                }
            )
        if total.quantize(CENT) not in ALWAYS_FAILING_AMOUNTS:
            break
    return {
        "cart_items": lines,
        "calendar_entries": [],
        "tickets": [],
        # One buyer per checkout: a buyer's second order of the same goods would supersede the
        # first, and one buyer may only make a few orders a minute.
        "user_id": index + 1,
        "session_id": f"bench-session-{index}",
        "product_total": str(total.quantize(CENT)),
        "calendar_total": "0",
        "ticket_total": "0",
        "page_post_id": shop.page_id,
    }


def put_in_carts(stack: Stack, payloads: list[dict[str, Any]]) -> list[int]:
    """Each payload's products as its buyer's lines in cart's database, their ids on the
    payload's lines, as cart's own checkout names them (done before the timing): create-order
    then claims the lines, and the relay's clear-cart removes them line by line, as it does for
    an order made in cart. Returns the lines' ids."""
    ids: list[int] = []
    with admin_connect(stack.topology, "cart") as connection, connection.transaction():
        for payload in payloads:
            for line in payload["cart_items"]:
                row = connection.execute(
                    "INSERT INTO cart.cart_items (user_id, product_id, quantity, "
                    "market_place_container_id) VALUES (%s, %s, %s, %s) RETURNING id",
                    (
                        payload["user_id"],
                        line["product_id"],
                        line["quantity"],
                        line["market_place_container_id"],
                    ),
                ).fetchone()
                assert row is not None
                line["cart_line_ids"] = [row[0]]
                ids.append(row[0])
    return ids


@dataclass(frozen=True)
class Outcome:
    order_id: int
    checkout_id: str
    create_ms: float
    pay_ms: float
    webhook_ms: float

    @property
    def total_ms(self) -> float:
        return self.create_ms + self.pay_ms + self.webhook_ms


class Driver:
    """Drives checkouts against the running stack; every answer is checked."""

    def __init__(
        self,
        stack: Stack,
        internal: InternalClient,
        http: httpx.AsyncClient,
        orders_url: str | None = None,
    ) -> None:
        self.stack = stack
        self.internal = internal
        self.http = http
        self.sandbox_url = stack.urls[SANDBOX]
        self.orders_url = orders_url or stack.urls["orders"]

    async def create_order(self, payload: dict[str, Any], key: str) -> tuple[dict[str, Any], float]:
        started = time.perf_counter()
        try:
            created = await self.internal.call_action(
                "orders", "create-order", payload, idempotency_key=key
            )
        except InternalCallError as exc:
            raise CheckoutFailed(f"create-order: {exc}") from None
        elapsed = (time.perf_counter() - started) * 1000
        order_id = created.get("order_id")
        shop = self.stack.shop
        expected = {
            "page_config_id": shop.page_config_id,
            "sumup_reference": f"bench-page-{order_id}-1",
            "description": f"rose-ash order #{order_id}",
        }
        wrong = {name: created.get(name) for name, value in expected.items()}
        if not isinstance(order_id, int) or wrong != expected:
            raise CheckoutFailed(f"create-order answered {created}, expected {expected}")
        if not str(created.get("sumup_hosted_url", "")).startswith(f"{self.sandbox_url}/pay/"):
            raise CheckoutFailed(f"create-order: hosted URL {created.get('sumup_hosted_url')}")
        return created, elapsed

    async def pay(self, checkout_id: str, reference: str, total: Decimal) -> float:
        started = time.perf_counter()
        response = await self.http.post(f"{self.sandbox_url}/_sandbox/checkouts/{checkout_id}/pay")
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise CheckoutFailed(f"pay {checkout_id}: {response.status_code} {response.text[:200]}")
        paid = response.json()
        seen = (
            paid["id"],
            paid["status"],
            paid["checkout_reference"],
            Decimal(str(paid["amount"])),
        )
        if seen != (checkout_id, "PAID", reference, total):
            raise CheckoutFailed(f"pay {checkout_id}: the sandbox answered {seen}")
        return elapsed

    async def webhook(self, order_id: int, checkout_id: str) -> float:
        # Exactly what SumUp sends: no status, no amount, no signature.
        body = json.dumps({"event_type": STATUS_CHANGED, "id": checkout_id}).encode()
        started = time.perf_counter()
        response = await self.http.post(
            f"{self.orders_url}/checkout/webhook/{order_id}/",
            content=body,
            headers={"content-type": "application/json"},
        )
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 204:
            raise CheckoutFailed(
                f"webhook of order {order_id}: {response.status_code} {response.text[:300]}"
            )
        return elapsed

    async def order(self, order_id: int) -> dict[str, Any]:
        try:
            data: dict[str, Any] = await self.internal.fetch_data(
                "orders", "order", {"order_id": order_id}
            )
        except InternalCallError as exc:
            raise CheckoutFailed(f"data order {order_id}: {exc}") from None
        return data

    async def verify_paid(self, order_id: int, reference: str, total: Decimal) -> None:
        data = await self.order(order_id)
        payment = data.get("payment") or {}
        seen = (data.get("status"), payment.get("status"), payment.get("reference"))
        if seen != ("paid", "PAID", reference) or Decimal(data["total"]) != total:
            raise CheckoutFailed(f"order {order_id} after the webhook: {seen}, {data['total']}")

    async def checkout(
        self, payload: dict[str, Any], key: str, *, verify: bool = True
    ) -> tuple[Outcome, str]:
        created, create_ms = await self.create_order(payload, key)
        order_id = created["order_id"]
        reference = created["sumup_reference"]
        # The hosted URL is opaque to orders; the sandbox builds it as <base>/pay/<checkout id>.
        checkout_id = created["sumup_hosted_url"].rstrip("/").rsplit("/", 1)[1]
        total = Decimal(payload["product_total"])
        pay_ms = await self.pay(checkout_id, reference, total)
        webhook_ms = await self.webhook(order_id, checkout_id)
        if verify:
            await self.verify_paid(order_id, reference, total)
        return Outcome(order_id, checkout_id, create_ms, pay_ms, webhook_ms), reference


# -- the phases ----------------------------------------------------------------------------------
async def sandbox_controls(http: httpx.AsyncClient, stack: Stack, **changes: Any) -> None:
    response = await http.post(f"{stack.urls[SANDBOX]}/_sandbox/controls", json=changes)
    response.raise_for_status()


async def check_real_delivery(
    driver: Driver, rng: random.Random, stack: Stack, run: Run, token: str
) -> None:
    """One checkout paid through the sandbox's own webhook delivery (orders over HTTP): the path
    the measurements then short-cut with a POST of the same body."""
    await sandbox_controls(driver.http, stack, webhooks="deliver")
    payload = cart_payload(rng, stack.shop, 0)
    run.cart_line_ids += put_in_carts(stack, [payload])
    created, _ = await driver.create_order(payload, f"bench-{token}-delivery")
    checkout_id = created["sumup_hosted_url"].rstrip("/").rsplit("/", 1)[1]
    await driver.pay(checkout_id, created["sumup_reference"], Decimal(payload["product_total"]))
    deadline = time.monotonic() + 15
    while True:
        data = await driver.order(created["order_id"])
        if data["status"] == "paid":
            break
        if time.monotonic() > deadline:
            raise CheckoutFailed(f"the sandbox's webhook did not mark {created['order_id']} paid")
        await asyncio.sleep(0.05)
    deliveries = (await driver.http.get(f"{stack.urls[SANDBOX]}/_sandbox/deliveries")).json()
    mine = [d for d in deliveries if d["checkout_id"] == checkout_id]
    outcomes = [(d["outcome"], d["http_status"]) for d in mine]
    if ("delivered", 204) not in outcomes:
        raise CheckoutFailed(f"the sandbox's deliveries of {checkout_id}: {outcomes}")
    run.delivery_check = (
        f"1 checkout paid by the sandbox's own webhook delivery to orders over HTTP "
        f"(deliveries {outcomes}); then webhooks set to 'drop'"
    )
    run.warmup_order_ids.append(created["order_id"])
    await sandbox_controls(driver.http, stack, webhooks="drop")


async def attempt(run: Run, label: str, step: Awaitable[Any]) -> Any:
    """Await one step; a failure is recorded (the run goes on, up to MAX_FAILURES)."""
    try:
        return await step
    except CheckoutFailed as exc:
        run.failures.append(f"{label}: {exc}")
    except (httpx.HTTPError, KeyError, ValueError, RuntimeError) as exc:
        run.failures.append(f"{label}: {type(exc).__name__}: {exc}")
    if len(run.failures) >= MAX_FAILURES:
        raise CheckoutFailed(f"{len(run.failures)} failures; stopping (see the list below)")
    return None


async def service_checkout(
    driver: Driver, run: Run, payload: dict[str, Any], key: str, measured: bool
) -> None:
    outcome = await attempt(
        run, f"checkout {key}", driver.checkout(payload, key, verify=not measured)
    )
    if outcome is None:
        return
    result, reference = outcome
    if not measured:
        run.warmup_order_ids.append(result.order_id)
        return
    run.to_read_back.append((result.order_id, reference, Decimal(payload["product_total"])))
    samples = run.sequential
    samples.order_ids.append(result.order_id)
    samples.add("create", result.create_ms)
    samples.add("pay", result.pay_ms)
    samples.add("webhook", result.webhook_ms)
    samples.add("checkout", result.total_ms)
    samples.wall_seconds += result.total_ms / 1000


async def baseline_pair(
    driver: Driver,
    baseline: Baseline,
    run: Run,
    payload: dict[str, Any],
    public_base: str,
    measured: bool,
) -> None:
    """The baseline create, the same sandbox pay (not timed), the baseline webhook, clean-up."""
    created = await attempt(run, "baseline create", baseline.create(payload, public_base))
    if created is None:
        return
    total = Decimal(payload["product_total"])
    reference = f"{REFERENCE_PREFIX}{created.order_id}-1"
    paid = await attempt(run, "baseline pay", driver.pay(created.checkout_id, reference, total))
    webhook = None
    if paid is not None:
        webhook = await attempt(
            run, "baseline webhook", baseline.webhook(created.order_id, created.checkout_id)
        )
    await baseline.clean_up(created.order_id)
    if measured and webhook is not None:
        run.sequential.add("baseline create", created.elapsed_ms)
        run.sequential.add("baseline webhook", webhook.total_ms)
        baseline.keep("create", created.laps)
        baseline.keep("webhook", webhook)


async def sequential_phase(
    driver: Driver,
    baseline: Baseline,
    rng: random.Random,
    run: Run,
    sink: TimingSink,
    token: str,
    postmaster: int,
) -> None:
    """Warm-up, then N rounds; each round is one service checkout and one baseline pair (create
    then webhook), the order alternating every round so drift hits both alike."""
    args = run.args
    stack = driver.stack
    public_base = f"http://{PUBLIC_HOST}:{stack.urls['orders'].rsplit(':', 1)[1]}"
    cpu_before: dict[str, float] = {}
    payloads = [cart_payload(rng, stack.shop, n + 1) for n in range(args.warmup + args.checkouts)]
    run.cart_line_ids += put_in_carts(stack, payloads)
    for index, payload in enumerate(payloads):
        measured = index >= args.warmup
        if index == args.warmup:
            await asyncio.sleep(0.5)  # the warm-up's access-log lines drain before recording
            sink.phase = "sequential"
            cpu_before = cpu_snapshot(stack, postmaster)
        key = f"bench-{token}-{index}"
        # Coroutines made only when awaited: an interrupted round leaves none un-awaited.
        steps = [
            functools.partial(service_checkout, driver, run, payload, key, measured),
            functools.partial(baseline_pair, driver, baseline, run, payload, public_base, measured),
        ]
        if index % 2:
            steps.reverse()
        for step in steps:
            await step()
        if measured and (index - args.warmup + 1) % 100 == 0:
            say(f"  {index - args.warmup + 1} of {args.checkouts} rounds")
    await asyncio.sleep(0.5)
    sink.phase = None
    after = cpu_snapshot(stack, postmaster)
    run.sequential.cpu_seconds = {name: after[name] - cpu_before.get(name, 0.0) for name in after}
    failures_before = len(run.failures)
    for order_id, reference, total in run.to_read_back:
        await attempt(
            run, f"read-back of order {order_id}", driver.verify_paid(order_id, reference, total)
        )
    read_back = len(run.to_read_back) - (len(run.failures) - failures_before)
    run.final_check.append(
        f"{read_back} of {len(run.to_read_back)} sequential orders read back as paid through "
        "orders' data API (after the phase's CPU figures were taken)"
    )


async def concurrent_phase(
    driver: Driver, rng: random.Random, run: Run, sink: TimingSink, token: str, postmaster: int
) -> None:
    """``--clients`` clients, each running checkouts one after the other, no baseline. First
    ``--concurrent-warmup`` rounds per client, measured apart: the first burst opens the
    services' pool connections (a login each, and postgres_fdw's own login on a connection's
    first foreign read), which a service pays once after it starts, not per checkout."""
    args = run.args
    stack = driver.stack
    warmup = args.concurrent_warmup * args.clients
    payloads = [cart_payload(rng, stack.shop, 100_000 + n) for n in range(warmup + args.concurrent)]
    run.cart_line_ids += put_in_carts(stack, payloads)

    async def clients(first: int, last: int, samples: Samples) -> None:
        counter = itertools.count(first)

        async def client() -> None:
            while (index := next(counter)) < last:
                key = f"bench-{token}-c{index}"
                outcome = await attempt(
                    run,
                    f"concurrent checkout {key}",
                    # Checked in bulk afterwards (the database): no extra request inside the
                    # timing.
                    driver.checkout(payloads[index], key, verify=False),
                )
                if outcome is None:
                    continue
                result, _ = outcome
                samples.order_ids.append(result.order_id)
                samples.add("create", result.create_ms)
                samples.add("pay", result.pay_ms)
                samples.add("webhook", result.webhook_ms)
                samples.add("checkout", result.total_ms)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(args.clients)))
        samples.wall_seconds = time.perf_counter() - started

    if warmup:
        await clients(0, warmup, run.concurrent_warmup)
        run.warmup_order_ids += run.concurrent_warmup.order_ids
        await asyncio.sleep(0.5)  # the warm-up's access-log lines drain before recording
    sink.phase = "concurrent"
    before = cpu_snapshot(stack, postmaster)
    await clients(warmup, len(payloads), run.concurrent)
    await asyncio.sleep(0.5)
    sink.phase = None
    after = cpu_snapshot(stack, postmaster)
    run.concurrent.cpu_seconds = {name: after[name] - before[name] for name in after}


async def profile_phase(driver: Driver, rng: random.Random, run: Run, token: str) -> None:
    """Sequential checkouts (no baseline) while py-spy samples the orders process: where its
    CPU goes, by layer and by function."""
    args = run.args
    stack = driver.stack
    output = args.profile_output or Path(tempfile.mkdtemp(prefix="rose-bench-profile-")) / "o.raw"
    payloads = [cart_payload(rng, stack.shop, 200_000 + n) for n in range(args.profile)]
    put_in_carts(stack, payloads)
    done = 0
    with sampling.sampled(stack.pid("orders"), output) as raw:
        for index, payload in enumerate(payloads):
            outcome = await attempt(
                run,
                f"profiled checkout {index}",
                driver.checkout(payload, f"bench-{token}-p{index}", verify=False),
            )
            if outcome is not None:
                run.concurrent.order_ids.append(outcome[0].order_id)
                done += 1
        await asyncio.sleep(0.5)  # the outbox relay's last deliveries are part of a checkout
    if raw is not None and raw.exists():
        run.profile = sampling.report(sampling.parse(raw), done, "checkout")
    if args.profile_output is None:
        shutil.rmtree(output.parent, ignore_errors=True)


def final_check(stack: Stack, run: Run, timeout: float = 30.0) -> None:
    """In the database: every order this run created is paid once, with one PAID attempt and
    one clear-cart message, which the outbox relay delivered to cart, and cart removed every
    line the order named; no baseline row is left."""
    order_ids = [*run.warmup_order_ids, *run.sequential.order_ids, *run.concurrent.order_ids]
    deadline = time.monotonic() + timeout
    with admin_connect(stack.topology, "orders") as connection:
        while True:
            row = connection.execute(
                """
                SELECT count(*) FILTER (WHERE o.status = 'paid' AND NOT o.flagged
                                        AND o.paid_at IS NOT NULL),
                       count(*) FILTER (WHERE a.status = 'PAID'),
                       count(m.id),
                       count(m.delivered_at)
                FROM orders.orders AS o
                LEFT JOIN orders.payment_attempts AS a ON a.order_id = o.id
                LEFT JOIN orders.outbox AS m
                       ON m.idempotency_key = 'orders:' || o.id || ':clear-cart'
                WHERE o.id = ANY(%s)
                """,
                (order_ids,),
            ).fetchone()
            assert row is not None
            paid, attempts_paid, queued, delivered = row
            if delivered == len(order_ids) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        leftovers = connection.execute(
            "SELECT count(*) FROM orders.orders WHERE checkout_prefix = %s", (REFERENCE_PREFIX,)
        ).fetchone()
        total_orders = connection.execute("SELECT count(*) FROM orders.orders").fetchone()
    with admin_connect(stack.topology, "cart") as connection:
        lines = connection.execute(
            "SELECT count(*) FILTER (WHERE deleted_at IS NOT NULL AND order_id IS NOT NULL) "
            "FROM cart.cart_items WHERE id = ANY(%s)",
            (run.cart_line_ids,),
        ).fetchone()
    cleared = lines[0] if lines else 0
    expected = len(order_ids)
    run.final_check.append(
        f"{expected} orders of this run: {paid} paid, {attempts_paid} PAID attempts, "
        f"{queued} clear-cart messages queued, {delivered} delivered to cart by the relay; "
        f"{len(run.cart_line_ids)} cart lines named by them, {cleared} cleared for their order; "
        f"{total_orders[0] if total_orders else '?'} orders in db_orders, "
        f"{leftovers[0] if leftovers else '?'} baseline rows left"
    )
    if (paid, attempts_paid, queued, delivered) != (expected,) * 4:
        run.failures.append(f"final check: {run.final_check[-1]}")
    if cleared != len(run.cart_line_ids):
        run.failures.append(f"final check: {run.final_check[-1]}")
    if leftovers and leftovers[0]:
        run.failures.append(f"final check: {leftovers[0]} baseline orders were not cleaned up")


async def drive(stack: Stack, sink: TimingSink, run: Run, postmaster: int) -> None:
    args = run.args
    rng = random.Random(args.seed)
    token = f"{int(time.time())}"
    internal = InternalClient(
        caller="bench",
        secret=stack.credentials.internal_secret(),
        base_urls={"orders": stack.urls["orders"]},
    )
    orders_app_dsn = stack.topology.app_url("orders", stack.credentials)
    try:
        async with (
            # The load generator's own calls (the sandbox's pay, SumUp's webhook) go through the
            # engine the services use: it shares the two cores with them, and plain httpx cost
            # it ~0.35 ms of CPU a request more (bench/README.md, sixth pass).
            httpx.AsyncClient(
                timeout=httpx.Timeout(15.0, connect=3.0), transport=AiohttpTransport()
            ) as http,
            Baseline(orders_app_dsn, stack.urls[SANDBOX], stack.shop.page_id) as baseline,
        ):
            driver = Driver(stack, internal, http)
            await check_real_delivery(driver, rng, stack, run, token)
            say(
                f"measuring: {args.warmup} warm-up + {args.checkouts} rounds of one checkout and "
                "one baseline pair, sequential, alternating"
            )
            started = time.perf_counter()
            await sequential_phase(driver, baseline, rng, run, sink, token, postmaster)
            say(f"sequential phase done in {time.perf_counter() - started:.1f} s")
            run.baseline_parts = baseline.parts
            if args.clients > 0 and args.concurrent > 0:
                say(
                    f"measuring: {args.concurrent} checkouts from {args.clients} concurrent clients"
                )
                await concurrent_phase(driver, rng, run, sink, token, postmaster)
                say(f"concurrent phase done in {run.concurrent.wall_seconds:.1f} s")
            if args.profile:
                say(f"profile: {args.profile} sequential checkouts, orders sampled by py-spy")
                await profile_phase(driver, rng, run, token)
            if args.breakdown:
                say(f"breakdown: {args.breakdown_checkouts} checkouts on an instrumented orders")
                await breakdown_phase(stack, http, rng, run, sink, token)
    finally:
        await internal.aclose()


async def breakdown_phase(
    stack: Stack,
    http: httpx.AsyncClient,
    rng: random.Random,
    run: Run,
    sink: TimingSink,
    token: str,
) -> None:
    """Sequential checkouts on a second, instrumented orders process (bench.checkout_profile);
    a pause after each lets its outbox relay deliver before the next request starts."""
    with profiled_orders(stack, sink) as url:
        internal = InternalClient(
            caller="bench", secret=stack.credentials.internal_secret(), base_urls={"orders": url}
        )
        try:
            driver = Driver(stack, internal, http, orders_url=url)
            warmup = 10
            payloads = [
                cart_payload(rng, stack.shop, 300_000 + n)
                for n in range(warmup + run.args.breakdown_checkouts)
            ]
            run.cart_line_ids += put_in_carts(stack, payloads)
            for index, payload in enumerate(payloads):
                if index == warmup:
                    await asyncio.sleep(0.3)
                    sink.phase = "breakdown"
                key = f"bench-{token}-b{index}"
                outcome = await attempt(
                    run, f"profiled checkout {key}", driver.checkout(payload, key)
                )
                if outcome is not None:
                    run.warmup_order_ids.append(outcome[0].order_id)
                await asyncio.sleep(0.15)
            await asyncio.sleep(0.5)
            sink.phase = None
        finally:
            await internal.aclose()


# -- the report ----------------------------------------------------------------------------------
def machine_description() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = os.cpu_count()
    return (
        f"{cores} cores{f' ({model})' if model else ''}, {platform.system()} {platform.release()}"
    )


def _row(label: str, stats: Stats | None, server: list[float] | None = None) -> str:
    if stats is None:
        return f"{label:<52}{'-':>8}"
    server_p50 = f"{statistics.median(server):.2f}" if server else "-"
    return (
        f"{label:<52}{stats.count:>6}{stats.p50:>9.2f}{stats.p99:>9.2f}{stats.mean:>9.2f}"
        f"{server_p50:>12}"
    )


def server_times(sink: TimingSink, phase: str, method: str, path: str) -> list[float]:
    return sink.server_ms.get((phase, "orders", method, path), [])


CREATE_PATH = ("POST", "/internal/actions/create-order")
WEBHOOK_PATH = ("POST", "/checkout/webhook/{id}")  # the access log drops the slash


def report(run: Run, sink: TimingSink, argv: list[str]) -> None:
    args = run.args
    seq, conc = run.sequential, run.concurrent
    header = f"{'':<52}{'n':>6}{'p50':>9}{'p99':>9}{'mean':>9}{'server p50':>12}"
    print()
    print("=" * len(header))
    print("rose-ash checkout benchmark (bench/checkout.py)")
    print(f"command   : {shlex.join([sys.executable, '-m', 'bench.checkout', *argv])}")
    print(f"machine   : {machine_description()}")
    print(
        f"software  : Python {platform.python_version()}, PostgreSQL {run.postgres_version} "
        f"(embedded, fsync/synchronous_commit off), orders and cart {args.workers} uvicorn "
        "worker(s) each, blog 1"
    )
    print(
        f"processes : {', '.join(SERVICES)} (ops.stack.serve), SumUp sandbox "
        "(ops.cli sumup-sandbox), PostgreSQL, and this client"
    )
    print(
        f"N         : {args.checkouts} sequential checkouts (+{args.warmup} warm-up, excluded), "
        f"{args.concurrent if args.clients else 0} with {args.clients} concurrent clients "
        f"(+{args.concurrent_warmup} warm-up per client, excluded)"
    )
    print(f"webhooks  : {run.delivery_check}")
    print(f"history   : {args.history} earlier orders of other buyers in db_orders (--history)")
    print("=" * len(header))
    print("Sequential, one client; client-side ms (server p50: orders' own access log)")
    print(header)
    print(
        _row(
            "create-order (signed internal action, via HTTP)",
            seq.stats("create"),
            server_times(sink, "sequential", *CREATE_PATH),
        )
    )
    print(_row("  baseline: its DB transaction + 1 sandbox POST", seq.stats("baseline create")))
    print(
        _row(
            "webhook processing (POST /checkout/webhook/{id}/)",
            seq.stats("webhook"),
            server_times(sink, "sequential", *WEBHOOK_PATH),
        )
    )
    print(_row("  baseline: sandbox GET + cond. UPDATEs + outbox", seq.stats("baseline webhook")))
    print(_row("sandbox pay (control endpoint; not in the ratios)", seq.stats("pay")))
    print(_row("complete checkout (create + pay + webhook)", seq.stats("checkout")))
    ratios = []
    for label, service, base in (
        ("create-order / baseline", "create", "baseline create"),
        ("webhook      / baseline", "webhook", "baseline webhook"),
    ):
        service_stats, base_stats = seq.stats(service), seq.stats(base)
        if service_stats and base_stats:
            ratio = service_stats.p50 / base_stats.p50
            ratios.append(ratio)
            print(
                f"ratio p50 {label}: {ratio:5.2f}   (p99 {service_stats.p99 / base_stats.p99:.2f},"
                f" mean {service_stats.mean / base_stats.mean:.2f})"
            )
    if seq.wall_seconds:
        count = len(seq.ms.get("checkout", []))
        print(
            f"throughput, sequential: {count / seq.wall_seconds:6.1f} checkouts/s "
            f"({count} complete checkouts in {seq.wall_seconds:.1f} s of create + pay + webhook)"
        )
    if conc.ms:
        count = len(conc.ms.get("checkout", []))
        print()
        print(f"{args.clients} concurrent clients (no baseline running); client-side ms")
        print(header)
        print(
            _row(
                "create-order", conc.stats("create"), server_times(sink, "concurrent", *CREATE_PATH)
            )
        )
        print(
            _row(
                "webhook processing",
                conc.stats("webhook"),
                server_times(sink, "concurrent", *WEBHOOK_PATH),
            )
        )
        print(_row("complete checkout (create + pay + webhook)", conc.stats("checkout")))
        print(
            _row(
                "  warm-up, excluded (first burst: pools fill)",
                run.concurrent_warmup.stats("checkout"),
            )
        )
        print(
            f"throughput, {args.clients} clients: {count / conc.wall_seconds:6.1f} checkouts/s "
            f"({count} in {conc.wall_seconds:.1f} s wall clock)"
        )
    print()
    print("CPU ms per checkout, by process")
    names = [*SERVICES, SANDBOX, "postgres", "bench"]
    print(f"{'':<52}" + "".join(f"{name:>9}" for name in names))
    for label, samples, note in (
        ("sequential (bench/postgres/sumup incl. baseline)", seq, ""),
        (f"{args.clients} concurrent clients", conc, ""),
    ):
        count = len(samples.ms.get("checkout", []))
        if not count or not samples.cpu_seconds:
            continue
        cells = "".join(f"{samples.cpu_seconds[name] * 1000 / count:>9.2f}" for name in names)
        print(f"{label:<52}{cells}{note}")
    print()
    for line in run.final_check:
        print(f"checked: {line}")
    print_targets(checkout_targets(run))
    if run.profile:
        print()
        print("Profile of the orders process (py-spy, sequential checkouts, idle excluded)")
        for line in run.profile:
            print(f"  {line}" if line else "")
    if args.breakdown:
        client_p50 = {
            kind: stats.p50 for kind in ("create", "webhook") if (stats := seq.stats(kind))
        }
        server_p50 = {
            kind: statistics.median(values)
            for kind, path in (("create", CREATE_PATH), ("webhook", WEBHOOK_PATH))
            if (values := server_times(sink, "sequential", *path))
        }
        print()
        print("Breakdown: where the time goes")
        print_breakdown(sink.breakdowns, run.baseline_parts, client_p50, server_p50)


TARGET_CLIENTS = 16


def checkout_targets(run: Run) -> list[Target]:
    seq, conc = run.sequential, run.concurrent

    def ratio(service: str, base: str) -> float | None:
        service_stats, base_stats = seq.stats(service), seq.stats(base)
        return service_stats.p50 / base_stats.p50 if service_stats and base_stats else None

    def orders_cpu(samples: Any) -> float | None:
        count = len(samples.ms.get("checkout", []))
        if not count or not samples.cpu_seconds:
            return None
        return float(samples.cpu_seconds["orders"] * 1000 / count)

    at_scale = conc.ms and run.args.clients == TARGET_CLIENTS
    scale_how = f"run with --clients {TARGET_CLIENTS}"
    checkouts = len(conc.ms.get("checkout", [])) if at_scale else 0
    complete = conc.stats("checkout") if at_scale else None
    return [
        Target("create-order p50 / its baseline", 1.5, "max", ratio("create", "baseline create")),
        Target("webhook p50 / its baseline", 1.5, "max", ratio("webhook", "baseline webhook")),
        Target("orders CPU per complete checkout, sequential", 8, "max", orders_cpu(seq), " ms"),
        Target(
            f"orders CPU per complete checkout, {run.args.clients} clients",
            8,
            "max",
            orders_cpu(conc),
            " ms",
            how="run with --clients N",
        ),
        Target(
            f"complete checkouts/s with {TARGET_CLIENTS} clients",
            100,
            "min",
            checkouts / conc.wall_seconds if at_scale and conc.wall_seconds else None,
            how=scale_how,
        ),
        Target(
            f"p99 of a complete checkout with {TARGET_CLIENTS} clients",
            250,
            "max",
            complete.p99 if complete else None,
            " ms",
            how=scale_how,
        ),
    ]


# -- main ----------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.checkout", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--checkouts", type=int, default=300, help="measured sequential checkouts (and baselines)"
    )
    parser.add_argument("--warmup", type=int, default=30, help="warm-up rounds, not measured")
    parser.add_argument(
        "--clients", type=int, default=4, help="concurrent clients of the second phase (0: skip)"
    )
    parser.add_argument(
        "--concurrent", type=int, default=None, help="checkouts of the concurrent phase (def. N)"
    )
    parser.add_argument(
        "--concurrent-warmup",
        type=int,
        default=3,
        help="warm-up checkouts per client before the concurrent phase, not measured",
    )
    parser.add_argument(
        "--breakdown-checkouts",
        type=int,
        default=40,
        help="checkouts on an instrumented orders process, to show where the time goes (0: skip)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        help="then N sequential checkouts with py-spy sampling orders (0: skip)",
    )
    parser.add_argument(
        "--profile-output", type=Path, default=None, help="keep py-spy's raw samples here"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="uvicorn worker processes of orders and cart (ops.stack.serve --workers)",
    )
    parser.add_argument(
        "--history",
        type=int,
        default=0,
        help="earlier paid orders of other buyers in db_orders before the run (production-sized "
        "tables; e.g. 200000)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the carts")
    parser.add_argument(
        "--log", type=Path, default=None, help="keep the services' log here (else a temp file)"
    )
    args = parser.parse_args(argv)
    if args.checkouts < 100 or min(args.warmup, args.clients, args.concurrent_warmup) < 0:
        parser.error("--checkouts must be at least 100 (p99 needs them); others at least 0")
    if args.concurrent is None:
        args.concurrent = args.checkouts
    args.breakdown = args.breakdown_checkouts > 0
    return args


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    # Once: a second Ctrl-C must not cut the clean-up (stopping processes, the cluster) short.
    for handled in (signal.SIGINT, signal.SIGTERM):
        signal.signal(handled, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    for handled in (signal.SIGINT, signal.SIGTERM):
        signal.signal(handled, _raise_interrupt)
    scratch = Path(tempfile.mkdtemp(prefix="rose-bench-checkout-"))
    log_path = args.log or scratch / "services.log"
    sink = TimingSink(log_path)
    run = Run(args)
    try:
        # Durability off (fsync, synchronous_commit): the same for the service and the baseline.
        with throwaway_postgres(prefix="rose-bench-checkout-pg-") as pg:
            say(f"embedded PostgreSQL on {pg.host}:{pg.port} ({pg.data_dir})")
            credentials = Credentials(scratch / "credentials.json", environ={})
            topology = set_up_databases(pg, credentials)
            with psycopg.connect(pg.superuser_url()) as connection:
                version = connection.execute("SHOW server_version").fetchone()
                run.postgres_version = str(version[0]) if version else "?"
            shop = open_shop(topology)
            seed_history(topology, shop, args.history)
            say(
                f"provisioned, migrated, FDW edges; shop: page {shop.page_id}, page config "
                f"{shop.page_config_id}, site config {shop.site_config_id}, "
                f"{len(shop.products)} products"
            )
            with running_stack(
                topology, credentials, shop, sink, {"orders": args.workers, "cart": args.workers}
            ) as stack:
                say(
                    "services and sandbox ready: "
                    + ", ".join(f"{k} {v}" for k, v in stack.urls.items())
                )
                try:
                    asyncio.run(drive(stack, sink, run, postmaster_pid(pg)))
                except CheckoutFailed as exc:
                    run.failures.append(str(exc))
                final_check(stack, run)
                for name in ("orders", "cart", SANDBOX):
                    for line in sink.warnings(name)[-5:]:
                        print(f"  {name} | {line}")
            report(run, sink, argv)
    except KeyboardInterrupt:
        print("\ninterrupted: stopped the processes and removed the cluster", file=sys.stderr)
        return 130
    finally:
        sink.close()
        shutil.rmtree(scratch, ignore_errors=True)
    if run.failures:
        print(f"\n!!! {len(run.failures)} FAILURES, for example:")
        for line in run.failures[:10]:
            print(f"  {line}")
        return 1
    print("\nevery checkout succeeded and was checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
