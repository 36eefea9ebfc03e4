"""orders: public (orders.rose-ash.com). Orders, SumUp hosted checkout, webhook, return page,
order pages, reconciliation of pending orders, and the outbox relay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from litestar import Litestar

from apps.common.app_factory import create_base_app
from apps.common.outbox import OutboxRelay
from apps.common.settings import Settings
from apps.common.web import orders_url
from apps.orders import internal, public, service
from apps.orders.models import outbox
from apps.orders.payments import SUMUP_BASE_URL, SumUpGateway

logger = logging.getLogger("rose.orders")

DEFAULT_RECONCILE_SECONDS = 300.0


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env("orders")
    extra = settings.extra
    reconcile_every = float(extra.get("ORDERS_RECONCILE_SECONDS", DEFAULT_RECONCILE_SECONDS))

    async def start(app: Litestar) -> None:
        app.state.gateway = SumUpGateway(
            base_url=extra.get("ORDERS_SUMUP_BASE_URL", SUMUP_BASE_URL),
            timeout_seconds=float(extra.get("ORDERS_SUMUP_TIMEOUT", "10")),
        )
        app.state.order_urls = service.OrderUrls(orders_url(settings, "").rstrip("/"))
        app.state.relay = OutboxRelay(
            app.state.sessionmaker,
            outbox,
            poll_seconds=float(extra.get("ORDERS_OUTBOX_POLL_SECONDS", "2")),
        )
        app.state.relay.start()
        # At start-up and then periodically: webhooks can be lost for good.
        app.state.reconciler = asyncio.create_task(
            _reconcile_forever(app, reconcile_every), name="orders-reconcile"
        )

    async def stop(app: Litestar) -> None:
        app.state.reconciler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await app.state.reconciler
        await app.state.relay.stop()
        await app.state.gateway.aclose()

    return create_base_app(
        "orders",
        settings=settings,
        internal_handlers=internal.handlers,
        public_handlers=public.handlers,
        templates=Path(__file__).parent / "templates",
        on_startup=[start],
        on_shutdown=[stop],
        # SumUp cannot send a CSRF token; the webhook trusts nothing it is told (it re-fetches).
        csrf_exempt=[public.WEBHOOK_PREFIX],
    )


async def _reconcile_forever(app: Litestar, every: float) -> None:
    while True:
        try:
            paid = await service.reconcile_pending(app.state.sessionmaker, app.state.gateway)
            if paid:
                app.state.relay.wake()
        except Exception:
            logger.exception("reconciliation pass failed")
        await asyncio.sleep(every)
