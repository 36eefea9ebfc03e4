"""orders: public (orders.rose-ash.com). Orders, SumUp hosted checkout, webhook, return page,
order pages, reconciliation of orders and refunds, and the outbox relay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide

from apps.common.app_factory import create_base_app
from apps.common.internal_client import current_client
from apps.common.outbox import OutboxRelay
from apps.common.settings import Settings
from apps.common.web import orders_url
from apps.orders import internal, public
from apps.orders.models import outbox
from apps.orders.payments import SumUpGateway
from apps.orders.reconciliation import Reconciler
from apps.orders.runtime import OrdersRuntime, OrderUrls
from apps.orders.settings import OrdersSettings
from apps.orders.settlement import bookings_not_confirmed

logger = logging.getLogger("rose.orders")


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env("orders")
    own = OrdersSettings.from_settings(settings)

    async def start(app: Litestar) -> None:
        client = current_client()
        relay = OutboxRelay(
            app.state.sessionmaker,
            outbox,
            poll_seconds=own.outbox_poll_seconds,
            client=client,
            # Bookings events could not confirm for a paid order are money that goes back.
            replies={("events", "confirm-for-order"): bookings_not_confirmed},
        )
        runtime = OrdersRuntime(
            settings=own,
            gateway=SumUpGateway(base_url=own.sumup_base_url, timeout_seconds=own.sumup_timeout),
            urls=OrderUrls(orders_url(settings, "").rstrip("/")),
            client=client,
            maker=app.state.sessionmaker,
            relay=relay,
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
        return state.runtime  # type: ignore[no-any-return]

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
        dependencies={"runtime": Provide(provide_runtime, sync_to_thread=False)},
    )
