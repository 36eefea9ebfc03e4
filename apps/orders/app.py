"""orders: public (orders.rose-ash.com). Orders, SumUp hosted checkout, webhook, return page,
order pages, reconciliation of orders and refunds, and the outbox relay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from litestar import Litestar
from litestar.datastructures import CacheControlHeader, State
from litestar.di import Provide
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession

from apps.common.app_factory import platform_of
from apps.common.internal_client import InternalClient
from apps.common.outbox import OutboxRelay, backlog_metrics
from apps.common.settings import Settings
from apps.common.static import static_files_router
from apps.common.web import public_url
from apps.events import contract as events
from apps.orders import internal, public
from apps.orders.contract import CONTRACT
from apps.orders.models import outbox, request_nonces
from apps.orders.payments import SumUpGateway
from apps.orders.reconciliation import Reconciler, reconciliation_metrics
from apps.orders.runtime import WAITING_PER_CHECKOUT, AtATime, OrdersRuntime, OrderUrls
from apps.orders.settings import OrdersSettings
from apps.orders.settlement import RecentMerchantAccounts, bookings_not_confirmed
from apps.registry import create_service_app, settings_for

logger = logging.getLogger("rose.orders")

# The return page's script (look-again.js): a file, as the pages' policy runs no inline script.
STATIC = Path(__file__).parent / "static"


def create_app(
    settings: Settings | None = None, internal_client: InternalClient | None = None
) -> Litestar:
    settings = settings or settings_for(CONTRACT)
    own = OrdersSettings.from_settings(settings)

    async def start(app: Litestar) -> None:
        platform = platform_of(app)
        client = platform.client

        async def refund_unconfirmed_bookings(
            session: AsyncSession, payload: Mapping[str, Any], answer: events.ConfirmResult
        ) -> None:
            """Bookings events could not confirm for a paid order are money that goes back:
            asked of SumUp as soon as the relay's transaction commits the refund (before, the
            settling job would not see it), not at the next reconciliation pass."""
            if await bookings_not_confirmed(session, payload, answer):
                event.listen(
                    session.sync_session,
                    "after_commit",
                    lambda _session: runtime.jobs.settle_refunds_soon(),
                    once=True,
                )

        relay = OutboxRelay(
            platform.sessionmaker,
            outbox,
            poll_seconds=own.outbox_poll_seconds,
            client=client,
            replies={events.confirm_for_order: refund_unconfirmed_bookings},
        )
        runtime = OrdersRuntime(
            settings=own,
            gateway=SumUpGateway(base_url=own.sumup_base_url, timeout_seconds=own.sumup_timeout),
            urls=OrderUrls(public_url(settings, CONTRACT.service, "").rstrip("/")),
            client=client,
            maker=platform.sessionmaker,
            relay=relay,
            recent_accounts=RecentMerchantAccounts(own.merchant_account_seconds),
            checkouts=AtATime(
                own.checkouts_at_once, waiting=WAITING_PER_CHECKOUT * own.checkouts_at_once
            ),
            checkout_turn_seconds=settings.database_pool_timeout,
        )
        runtime.jobs = Reconciler(runtime)
        app.state.runtime = runtime
        app.state.reconciler = runtime.jobs
        relay.start()
        # At start-up and then periodically: webhooks can be lost for good.
        app.state.reconcile_task = asyncio.create_task(
            runtime.jobs.run_forever(own.reconcile_seconds), name="orders-reconcile"
        )

    async def stop(app: Litestar) -> None:
        runtime: OrdersRuntime = app.state.runtime
        app.state.reconcile_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await app.state.reconcile_task
        await runtime.jobs.aclose()
        await runtime.relay.stop()
        await runtime.gateway.aclose()

    def provide_runtime(state: State) -> OrdersRuntime:
        return state.runtime

    return create_service_app(
        CONTRACT,
        settings,
        internal_client,
        nonce_table=request_nonces,
        internal_handlers=internal.handlers,
        public_handlers=[
            *public.handlers,
            static_files_router("/static", [STATIC], CacheControlHeader(max_age=3600, public=True)),
        ],
        templates=Path(__file__).parent / "templates",
        on_startup=[start],
        on_shutdown=[stop],
        # SumUp cannot send a CSRF token; the webhook trusts nothing it is told (it re-fetches).
        csrf_exempt=[public.WEBHOOK_PREFIX],
        dependencies={"runtime": Provide(provide_runtime, sync_to_thread=False)},
        # /metrics reads these when scraped (never per request).
        scrape_hooks=[backlog_metrics(outbox), reconciliation_metrics],
    )
