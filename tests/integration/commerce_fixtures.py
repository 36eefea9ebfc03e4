"""A small shop for cart and checkout tests: two pages with page configs (SumUp sandbox
merchant) in db_blog, products sold through them in db_market, a calendar entry in db_events,
and an in-process stack of every service with the sandbox as SumUp."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg

from apps.common.asgi import send_problem
from apps.sumup_sandbox.server import BackgroundSandbox
from tests.conftest import admin_connect, in_process_stack
from tests.integration.blog_fixtures import insert_post
from tests.integration.market_fixtures import seed_products
from tests.integration.orders_fixtures import add_page_config, orders_overrides

ALL_SERVICES = ["cart", "orders", "market", "blog", "events", "likes", "relations"]
JSON = {"accept": "application/json"}


@dataclass
class Shop:
    page_ids: dict[str, int]
    product_ids: list[int]
    entry_id: int


def product_ids(server) -> list[int]:
    with admin_connect(server, "market") as connection:
        return [row[0] for row in connection.execute("SELECT id FROM market.products ORDER BY id")]


def open_shop(server) -> Shop:
    page_ids = {
        slug: insert_post(server, slug, is_page=True) for slug in ("farm-shop", "market-hall")
    }
    assert page_ids == {"farm-shop": 1, "market-hall": 2}  # products are sold through pages 1, 2
    for page_id in page_ids.values():
        add_page_config(server, "page", page_id, prefix=f"page{page_id}-")
    add_page_config(server, "site", 0, prefix="site-")
    seed_products(server, 6, prefix="shop")
    with admin_connect(server, "events") as connection:
        calendar_id = connection.execute(
            "INSERT INTO events.calendars (slug, name, container_type, container_id) "
            "VALUES ('farm-tours', 'Farm tours', 'page', 1) RETURNING id"
        ).fetchone()[0]
        entry_id = connection.execute(
            "INSERT INTO events.calendar_entries (calendar_id, name, starts_at, cost) "
            "VALUES (%s, 'Morning tour', %s, 7.50) RETURNING id",
            (calendar_id, datetime.now(UTC) + timedelta(days=3)),
        ).fetchone()[0]
    return Shop(page_ids, product_ids(server), entry_id)


@asynccontextmanager
async def shop_stack(
    server,
    credentials,
    sandbox: BackgroundSandbox,
    services=None,
    *,
    extra_overrides: dict[str, dict[str, Any]] | None = None,
    **extra,
):
    """Every service in process; ``extra`` are orders' settings, ``extra_overrides`` other
    services' settings (``{"events": {"extra": {...}}}``)."""
    overrides = orders_overrides(sandbox.url, ORDERS_OUTBOX_POLL_SECONDS="0.2", **extra)
    overrides.update(extra_overrides or {})
    async with in_process_stack(
        server, credentials, services or ALL_SERVICES, settings_overrides=overrides
    ) as running:
        yield running


async def browser_of(
    stack, service: str, user_id: int | None = None, address: str = "127.0.0.1"
) -> httpx.AsyncClient:
    """A browser on one service (at client ``address``); signed in when ``user_id`` is given;
    sends its CSRF token."""
    browser = stack.browser(service, address)
    if user_id is None:
        token = (await browser.get("/auth/session")).json()["csrf_token"]
    else:
        response = await browser.get(f"/auth/dev-login?user_id={user_id}", headers=JSON)
        token = response.json()["csrf_token"]
    browser.headers["x-csrf-token"] = token
    browser.headers["accept"] = "application/json"
    return browser


def session_cookie(client: httpx.AsyncClient) -> str:
    return client.cookies.get("rose_session", domain=client.base_url.host) or ""


def share_cookies(source: httpx.AsyncClient, *targets: httpx.AsyncClient) -> None:
    """One browser across services: the session cookie is shared (same site in production)."""
    for target in targets:
        target.cookies.set("rose_session", session_cookie(source), domain=target.base_url.host)
        target.headers["x-csrf-token"] = source.headers["x-csrf-token"]
        target.headers["accept"] = source.headers["accept"]


def cart_rows(server) -> list[tuple[Any, ...]]:
    with admin_connect(server, "cart") as connection:
        return connection.execute(
            "SELECT user_id, session_id IS NOT NULL, product_id, quantity, "
            "market_place_container_id, order_id, deleted_at IS NULL "
            "FROM cart.cart_items ORDER BY id"
        ).fetchall()


def free_entry(server, name: str = "Orchard walk") -> int:
    """A free entry (cost 0.00) in open_shop's calendar, as the demo's Orchard walk."""
    with admin_connect(server, "events") as connection:
        return connection.execute(
            "INSERT INTO events.calendar_entries (calendar_id, name, starts_at, cost) "
            "SELECT id, %s, %s, 0.00 FROM events.calendars WHERE slug = 'farm-tours' "
            "RETURNING id",
            (name, datetime.now(UTC) + timedelta(days=4)),
        ).fetchone()[0]


@contextmanager
def confirmation_held(server, order_id: int) -> Iterator[None]:
    """Events' confirmation of the order held up for the block: a second transaction holds its
    idempotency key; it is rolled back at the end, and the confirmation goes on."""
    with admin_connect(server, "events") as holder, holder.transaction():
        holder.execute(
            "INSERT INTO events.idempotency_keys (action, key, request_hash, response) "
            "VALUES ('confirm-for-order', %s, '', '{}')",
            (f"orders:{order_id}:confirm-bookings",),
        )
        yield
        raise psycopg.Rollback()


@contextmanager
def table_locked(server, service: str, table: str) -> Iterator[None]:
    """Another transaction of ``service``'s database holds ``table`` (ACCESS EXCLUSIVE) for
    the block: every read of it, other services' FDW reads included, waits, and those give up
    at their statement timeout (the provider is "unavailable"). Released however it ends."""
    with admin_connect(server, service) as holder:
        holder.autocommit = False
        holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            holder.rollback()


def next_order_id(server) -> int:
    with admin_connect(server, "orders") as connection:
        return connection.execute(
            "SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END "
            "FROM orders.orders_id_seq"
        ).fetchone()[0]


async def book_and_check_out(stack: Any, entry_id: int, user_id: int) -> httpx.Response:
    """Another buyer (signed in as ``user_id``) books the entry and checks out."""
    cart = await browser_of(stack, "cart", user_id=user_id)
    events = stack.browser("events")
    share_cookies(cart, events)
    booked = await events.post(f"/entries/{entry_id}/book/")
    assert booked.status_code == 200, booked.text
    return await cart.post("/checkout/")


def entry_state(server, entry_id: int) -> tuple[str, int | None]:
    with admin_connect(server, "events") as connection:
        return connection.execute(
            "SELECT state, order_id FROM events.calendar_entries WHERE id = %s", (entry_id,)
        ).fetchone()


async def sweep_ended_holds_now(stack: Any) -> int:
    """Events' sweeper, once, now (it runs every EVENTS_SWEEP_SECONDS in the app)."""
    from apps.events.service import sweep_ended_holds

    async with stack.apps["events"].state.platform.sessionmaker() as session:
        swept = await sweep_ended_holds(session)
        await session.commit()
    return swept


class AnswersLost:
    """A service as another's client reaches it, except that the answers to the first
    ``lost`` calls of ``action`` are lost after the service applied them: the caller times out,
    as when the service stalls past the caller's timeout (a GC pause, a slow database) and
    then goes on."""

    def __init__(self, app: Any, action: str, lost: int) -> None:
        self.app = app
        self.path = f"/internal/actions/{action}"
        self.lost = lost

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == self.path and self.lost > 0:
            self.lost -= 1

            async def nowhere(message: Any) -> None:
                pass

            await self.app(scope, receive, nowhere)
            raise httpx.ReadTimeout("no answer in time")
        await self.app(scope, receive, send)


class AnswerReplaced:
    """A service as another's client reaches it, except that every answer to ``action`` is
    replaced, after the service handled the call, with ``status`` and ``body`` (a problem when
    ``body`` is None): a 500 after its commit (the answer to COMMIT lost, an answer it could
    not write), a 504 of a gateway in front of it that stopped waiting, or a 2xx whose body
    does not match the contract (another release)."""

    def __init__(self, app: Any, action: str, status: int, body: Any = None) -> None:
        self.app = app
        self.path = f"/internal/actions/{action}"
        self.status = status
        self.body = body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return

        async def nowhere(message: Any) -> None:
            pass

        await self.app(scope, receive, nowhere)
        if self.body is None:
            await send_problem(send, self.status, "replaced", scope["path"])
            return
        payload = json.dumps(self.body).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


@dataclass
class HungServer:
    """A real TCP server that accepts every connection, reads what comes, and never answers
    (a service stuck in a GC pause, a deadlock, a full worker queue)."""

    url: str = ""
    connections: int = 0
    received: bytearray = field(default_factory=bytearray)


@asynccontextmanager
async def hung_server():
    hung = HungServer()
    handlers: list[asyncio.Task[None]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hung.connections += 1
        current = asyncio.current_task()
        assert current is not None
        handlers.append(current)
        try:
            while chunk := await reader.read(65536):
                hung.received.extend(chunk)
            await asyncio.Event().wait()  # the other end closed its side: still no answer
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    hung.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with server:
            yield hung
            for task in handlers:
                task.cancel()
    finally:
        server.close()


class ServiceDown:
    """A service as a caller sees it while it is down (route a client's calls to it): a 503
    for every call."""

    def __init__(self, service: str) -> None:
        self.service = service

    async def __call__(self, scope, receive, send) -> None:
        await send_problem(send, 503, f"{self.service} is down", scope["path"])
