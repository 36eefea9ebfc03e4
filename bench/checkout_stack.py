"""The stack under ``bench.checkout``: a throwaway embedded PostgreSQL set up with the project's own
provisioning and migrations, a small shop, and the services plus the SumUp sandbox as real
processes. Also what the benchmark observes from outside: the orders access log (server-side
durations) and the CPU time of every process."""

from __future__ import annotations

import json
import os
import re
import sys
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from apps.sumup_sandbox.app import DEFAULT_API_KEY, DEFAULT_MERCHANT_CODE
from bench.checkout_profile import MARK as BREAKDOWN_MARK
from ops.db.credentials import Credentials
from ops.db.lifecycle import converge_databases
from ops.db.topology import Topology
from ops.stack.pgserver import LocalPostgres, free_ports
from ops.stack.processes import HOST, SANDBOX, LogSink, ProcessGroup, service_environment

# orders serves the checkout; blog owns the page configs (read by orders through FDW, not HTTP,
# but it is the provider and runs as in production); cart receives clear-cart-for-order from
# the orders outbox relay after each payment (without it the relay would retry forever).
SERVICES = ("orders", "blog", "cart")
PRODUCT_COUNT = 24
PAGE_SLUG = "bench-shop"

ACCESS_LINE = re.compile(r"rose\.(\w+)\.access: (\w+) (\S+) (\d{3}) ([\d.]+)ms")
NUMBERS = re.compile(r"/\d+(?=/|$)")


@dataclass(frozen=True)
class Product:
    id: int
    slug: str
    title: str
    regular_price: Decimal
    special_price: Decimal | None


@dataclass(frozen=True)
class Shop:
    page_id: int
    page_config_id: int
    site_config_id: int
    products: list[Product]


@dataclass(frozen=True)
class Stack:
    topology: Topology
    credentials: Credentials
    group: ProcessGroup
    urls: dict[str, str]  # service (and "sumup") -> base URL
    shop: Shop

    def pid(self, name: str) -> int:
        process = self.group.processes[name].process
        assert process is not None
        return process.pid


class TimingSink(LogSink):
    """Writes the services' log to a file; while ``phase`` is set, keeps the server-side duration
    of every access-log line, per (phase, service, method, path with ids as ``{id}``)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, echo=None)
        self.phase: str | None = None
        self.server_ms: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
        self.statuses: dict[tuple[str, str, str, str], list[int]] = defaultdict(list)
        self.tails: dict[str, list[str]] = defaultdict(list)
        # The per-request lines of bench.checkout_profile, while phase is "breakdown".
        self.breakdowns: list[dict[str, Any]] = []

    def write(self, source: str, line: str) -> None:
        super().write(source, line)
        self.tails[source] = [*self.tails[source][-29:], line.rstrip()]
        phase = self.phase
        if phase is None:
            return
        marker = line.find(BREAKDOWN_MARK)
        if marker >= 0 and phase == "breakdown":
            # The record, then whatever the log format appends (" trace=...").
            record, _ = json.JSONDecoder().raw_decode(line, marker + len(BREAKDOWN_MARK))
            self.breakdowns.append(record)
            return
        match = ACCESS_LINE.search(line)
        if match:
            service, method, path, status, elapsed = match.groups()
            key = (phase, service, method, NUMBERS.sub("/{id}", path))
            self.server_ms[key].append(float(elapsed))
            self.statuses[key].append(int(status))

    def warnings(self, source: str) -> list[str]:
        return [line for line in self.tails[source] if "WARNING" in line or "ERROR" in line]


# -- the database --------------------------------------------------------------------------------
def set_up_databases(pg: LocalPostgres, credentials: Credentials) -> Topology:
    """Every service database, as ``rose db provision`` + ``rose db migrate`` make them, then
    every FDW edge (orders <- blog included)."""
    topology = Topology.single_server(pg.superuser_url(), environ={})
    converged = converge_databases(topology, credentials, say=lambda _message: None)
    if converged.pending_edges:
        raise RuntimeError(f"FDW edges not created: {converged.pending_edges}")
    return topology


def admin_connect(topology: Topology, service: str) -> psycopg.Connection:
    return psycopg.connect(topology.admin_url(service), autocommit=True)


def open_shop(topology: Topology) -> Shop:
    """A published page with its own page config, the site default config (both the sandbox
    merchant), and a market place on that page selling ``PRODUCT_COUNT`` products."""
    with admin_connect(topology, "blog") as connection:
        page_id = _scalar(
            connection,
            "INSERT INTO blog.posts (slug, title, body, is_page, status, published_at) "
            "VALUES (%s, 'Bench shop', 'A shop for the checkout benchmark.', true, 'published', "
            "%s) RETURNING id",
            (PAGE_SLUG, datetime.now(UTC) - timedelta(days=1)),
        )
        configs = {}
        for container_type, container_id, prefix in (
            ("page", page_id, "bench-page-"),
            ("site", 0, "bench-site-"),
        ):
            configs[container_type] = _scalar(
                connection,
                "INSERT INTO blog.page_configs (container_type, container_id, "
                "sumup_merchant_code, sumup_api_key, sumup_checkout_prefix) "
                "VALUES (%s, %s, %s, %s, %s) RETURNING id",
                (container_type, container_id, DEFAULT_MERCHANT_CODE, DEFAULT_API_KEY, prefix),
            )
    with admin_connect(topology, "market") as connection:
        # As the owner, like the service's own migrations and demo data.
        connection.execute("SET ROLE market_owner")
        place_id = _scalar(
            connection,
            "INSERT INTO market.market_places (slug, name, container_type, container_id) "
            "VALUES ('bench-market', 'Bench market', 'page', %s) RETURNING id",
            (page_id,),
        )
        with connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO market.products (slug, title, regular_price, special_price, "
                "price_currency, market_place_id) VALUES (%s, %s, %s, %s, 'EUR', %s)",
                [
                    (
                        f"bench-item-{index:02d}",
                        f"Bench item {index:02d}",
                        f"{3 + index}.{(index * 37) % 100:02d}",
                        f"{2 + index}.00" if index % 4 == 0 else None,
                        place_id,
                    )
                    for index in range(PRODUCT_COUNT)
                ],
            )
        rows = connection.execute(
            "SELECT id, slug, title, regular_price, special_price FROM market.products "
            "WHERE market_place_id = %s ORDER BY id",
            (place_id,),
        ).fetchall()
    products = [Product(*row) for row in rows]
    return Shop(page_id, configs["page"], configs["site"], products)


# The earlier orders' cart lines: ids far above any the run's carts get (a shared line would
# make a run's order wait for, or conflict with, an earlier one).
HISTORY_LINE_IDS = 10**12


def seed_history(topology: Topology, shop: Shop, orders: int) -> None:
    """``orders`` earlier orders of other buyers, as a shop that has traded for a while has:
    paid, each with three items, three claimed cart lines and a PAID attempt. The run's
    statements then meet tables of a production's size, not the few rows of a fresh database."""
    if orders <= 0:
        return
    with admin_connect(topology, "orders") as connection:
        connection.execute(
            "INSERT INTO orders.orders (user_id, currency, product_total, calendar_total, "
            "ticket_total, total, description, page_config_id, merchant_code, checkout_prefix, "
            "status, paid_at, payable_until) "
            "SELECT 10000000 + n %% (%s / 4 + 1), 'EUR', 9, 0, 0, 9, 'earlier order', %s, %s, "
            "'bench-history-', 'paid', now() - interval '1 day', now() - interval '1 day' "
            "FROM generate_series(1, %s) AS n",
            (orders, shop.page_config_id, DEFAULT_MERCHANT_CODE, orders),
        )
        connection.execute(
            "INSERT INTO orders.order_items (order_id, kind, source_id, title, unit_price, "
            "currency, quantity, cart_line_ids) "
            "SELECT o.id, 'product', (%s::bigint[])[1 + (o.id + k) %% %s], 'earlier', 3, 'EUR', "
            "1, ARRAY[%s + o.id * 3 + k] FROM orders.orders AS o, generate_series(0, 2) AS k "
            "WHERE o.checkout_prefix = 'bench-history-'",
            ([product.id for product in shop.products], len(shop.products), HISTORY_LINE_IDS),
        )
        connection.execute(
            "INSERT INTO orders.order_claims (kind, ref_id, order_id) "
            "SELECT 'cart_line', %s + o.id * 3 + k, o.id FROM orders.orders AS o, "
            "generate_series(0, 2) AS k WHERE o.checkout_prefix = 'bench-history-'",
            (HISTORY_LINE_IDS,),
        )
        connection.execute(
            "INSERT INTO orders.payment_attempts (order_id, number, checkout_reference, "
            "sumup_checkout_id, hosted_url, status, amount, currency) "
            "SELECT id, 1, 'bench-history-' || id, 'bench-history-' || id, 'https://x.test/', "
            "'PAID', 9, 'EUR' FROM orders.orders WHERE checkout_prefix = 'bench-history-'"
        )
        connection.execute(
            "ANALYZE orders.orders, orders.order_items, orders.order_claims, "
            "orders.payment_attempts"
        )


def _scalar(connection: psycopg.Connection, sql: str, params: tuple[object, ...]) -> int:
    row = connection.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


# -- the processes -------------------------------------------------------------------------------
@contextmanager
def running_stack(
    topology: Topology,
    credentials: Credentials,
    shop: Shop,
    sink: TimingSink,
    workers: dict[str, int] | None = None,
) -> Iterator[Stack]:
    """The sandbox and the services as real processes (``python -m ops.stack.serve``), as
    ``tests/e2e/conftest.live_stack(..., sandbox=True)`` starts them; stopped on exit.
    ``workers``: uvicorn worker processes per service (1 when not named)."""
    *service_ports, sandbox_port = free_ports(len(SERVICES) + 1)
    ports = dict(zip(SERVICES, service_ports, strict=True))
    sandbox_url = f"http://{HOST}:{sandbox_port}"
    extra = {
        "ORDERS_SUMUP_BASE_URL": sandbox_url,
        "ORDERS_SUMUP_TIMEOUT": "10",
        # No reconciliation pass in the middle of the measurements (it re-fetches every pending
        # order); it still runs once at start-up, when there is nothing to reconcile.
        "ORDERS_RECONCILE_SECONDS": "3600",
    }
    environment = service_environment(topology, credentials, ports, env="dev", extra=extra)
    group = ProcessGroup(sink, environment)
    try:
        group.start_sandbox(sandbox_port)
        for name in SERVICES:
            group.start_service(name, ports[name], (workers or {}).get(name, 1))
        not_ready = group.wait_ready([SANDBOX], timeout=30)
        not_ready += group.wait_ready(list(SERVICES), timeout=60)
        if not_ready:
            for name in not_ready:
                for line in sink.tails[name][-15:]:
                    print(f"  {name} | {line}", file=sys.stderr)
            raise RuntimeError(f"not ready: {', '.join(not_ready)}")
        urls = {name: f"http://{HOST}:{port}" for name, port in ports.items()}
        urls[SANDBOX] = sandbox_url
        yield Stack(topology, credentials, group, urls, shop)
    finally:
        group.stop()


# -- CPU time of the processes -------------------------------------------------------------------
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """User + system CPU time of one process (0 when it is gone); ``reaped``: plus that of
    its children that have exited and been waited for (PostgreSQL's backends come and go)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # After the command: state is field 3, utime 14, stime 15, cutime 16, cstime 17 (1-based,
    # man proc).
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(stat[1]) == pid:
            found.append(int(entry.name))
    return found


def postmaster_pid(pg: LocalPostgres) -> int:
    return int((pg.data_dir / "postmaster.pid").read_text().splitlines()[0])


def cpu_snapshot(stack: Stack, postmaster: int) -> dict[str, float]:
    """CPU seconds so far per process; postgres is the postmaster and all its backends (the
    services' pooled connections and their FDW backends live through the whole run)."""
    # A service with workers is uvicorn's supervisor and its worker processes.
    snapshot = {
        name: sum(_cpu_seconds(pid) for pid in [stack.pid(name), *_children(stack.pid(name))])
        for name in (*SERVICES, SANDBOX)
    }
    snapshot["postgres"] = _cpu_seconds(postmaster, reaped=True) + sum(
        _cpu_seconds(pid) for pid in _children(postmaster)
    )
    snapshot["bench"] = _cpu_seconds(os.getpid())
    return snapshot
