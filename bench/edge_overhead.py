"""Benchmark: what one request costs in a service's own stack, in process, before any SQL.

Sends the orders webhook's POST (an event of another type, which the handler answers 204 before
it reads anything) straight into the app's ASGI callable, in process: no socket, no database
(the app's lifespan is not run and its pool never connects). What it measures is the platform
around a handler: the edge middlewares, Litestar's routing, dependency injection, the body's
checks and the response. The baseline, measured in the same run and interleaved block for
block, is a bare Litestar app with a handler of the same shape (a JSON body, two dependencies,
204). A third variant is the service's app with Litestar's own dependency resolution put back
(dependencies that do not depend on each other resolved at once in an anyio task group,
litestar-org/litestar#4563), which ``resolve_dependencies_in_order`` replaced.

Figures are CPU time of this process (``time.process_time``) per request, the median over
alternating blocks, so that the machine's other load moves every variant alike. Run
``python -m bench.edge_overhead [--requests 1000] [--blocks 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from litestar import Litestar, post
from litestar.di import NamedDependency, Provide
from litestar.routes import HTTPRoute
from litestar.types import HTTPRequestEvent, Message, ReceiveMessage, Scope

BODY = b'{"event_type":"SOMETHING_ELSE","id":"bench"}'
PATH = "/checkout/webhook/1/"
# The app is built from the environment, as `rose up` builds it; nothing here connects.
ENVIRON = {
    "ROSE_ENV": "dev",
    "DATABASE_URL": "postgresql+psycopg://nobody:nothing@127.0.0.1:9/none",
    "INTERNAL_SECRET": "bench-internal-secret-0123456789",
    "SESSION_SECRET": "bench-session-secret-0123456789",
    "DATABASE_POOL_WARM": "0",
}

Send = Callable[[], Awaitable[int]]


class Event(msgspec.Struct):
    """The baseline handler's body: a SumUp event's shape."""

    event_type: str
    id: str | None = None


def request_sender(app: Any) -> Send:
    """One POST of the webhook's body into ``app``; its status."""

    async def send_one() -> int:
        scope: Scope = {  # type: ignore[assignment]
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": PATH,
            "raw_path": PATH.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"127.0.0.1:8010"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(BODY)).encode()),
                (b"user-agent", b"bench"),
            ],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8010),
            "state": {},
        }
        delivered = False
        statuses: list[int] = []

        async def receive() -> ReceiveMessage:
            nonlocal delivered
            if not delivered:
                delivered = True
                return HTTPRequestEvent(type="http.request", body=BODY, more_body=False)
            await asyncio.Event().wait()  # the client never disconnects
            raise AssertionError("unreachable")

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(scope, receive, send)
        return statuses[0]

    return send_one


def orders_app() -> Litestar:
    """orders as `rose up` builds it, with what its lifespan would have made set by hand."""
    os.environ.update(ENVIRON)
    from apps.common.app_factory import platform_of
    from apps.common.db import create_engine, sessionmaker_for
    from apps.orders.app import create_app
    from apps.orders.runtime import OrdersRuntime

    app = create_app()
    platform = platform_of(app)
    platform.engine = create_engine(
        platform.settings.database_url, application_name="bench", pool_size=1, pool_timeout=1
    )
    platform.sessionmaker = sessionmaker_for(platform.engine)
    # The handler answers before it uses the runtime; the dependency only needs one to hand.
    app.state.runtime = OrdersRuntime.__new__(OrdersRuntime)
    return app


def bare_app() -> Litestar:
    """The baseline: Litestar alone, a handler of the same shape (a JSON body, two sync
    dependencies, 204 for an event it ignores)."""

    @post("/checkout/webhook/{order_id:int}/", status_code=204)
    async def webhook(
        order_id: int, data: Event, first: NamedDependency[int], second: NamedDependency[int]
    ) -> None:
        return None

    app = Litestar(
        [webhook],
        dependencies={
            "first": Provide(lambda: 1, sync_to_thread=False),
            "second": Provide(lambda: 2, sync_to_thread=False),
        },
        logging_config=None,
    )
    from apps.common.app_factory import resolve_dependencies_in_order

    resolve_dependencies_in_order(app)
    return app


def with_litestars_own_batches(app: Litestar) -> Litestar:
    """``app`` with its dependencies batched as Litestar batches them (at once, in a task
    group, when they do not depend on each other)."""
    from litestar._kwargs.dependencies import create_dependency_batches

    for route in app.routes:
        if isinstance(route, HTTPRoute):
            for _, model in route.route_handler_map.values():
                every = {d for batch in model.dependency_batches for d in batch}
                model.dependency_batches = create_dependency_batches(every)
    return app


async def measure(variants: dict[str, Send], requests: int, blocks: int) -> dict[str, list[float]]:
    for name, send_one in variants.items():
        status = await send_one()
        if status != 204:
            raise SystemExit(f"{name}: the webhook answered {status}, not 204")
        for _ in range(200):
            await send_one()
    figures: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(blocks):
        for name, send_one in variants.items():
            started = time.process_time()
            for _ in range(requests):
                await send_one()
            figures[name].append((time.process_time() - started) / requests * 1e6)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.edge_overhead", description=__doc__)
    parser.add_argument("--requests", type=int, default=1000, help="requests per block")
    parser.add_argument("--blocks", type=int, default=10, help="blocks per variant, alternating")
    args = parser.parse_args()
    if args.requests < 100 or args.blocks < 3:
        parser.error("--requests must be at least 100 and --blocks at least 3")
    logging.disable(logging.CRITICAL)  # the access log would be most of what is measured
    variants = {
        "orders' stack": request_sender(orders_app()),
        "orders' stack, Litestar's own dependency batches": request_sender(
            with_litestars_own_batches(orders_app())
        ),
        "baseline: bare Litestar, same handler shape": request_sender(bare_app()),
    }
    figures = asyncio.run(measure(variants, args.requests, args.blocks))
    medians = {name: statistics.median(values) for name, values in figures.items()}
    baseline = medians["baseline: bare Litestar, same handler shape"]
    print(f"python -m bench.edge_overhead --requests {args.requests} --blocks {args.blocks}")
    print(f"{sys.version.split()[0]}, {os.cpu_count()} cores; CPU us per request, median")
    for name, value in medians.items():
        spread = f"{min(figures[name]):.0f}-{max(figures[name]):.0f}"
        print(f"  {name:<52} {value:7.1f}   ({spread})   x{value / baseline:.2f}")
    own = medians["orders' stack"]
    batched = medians["orders' stack, Litestar's own dependency batches"]
    print(f"dependencies one by one spare {batched - own:.1f} us a request ({own / batched:.2f})")


if __name__ == "__main__":
    main()
