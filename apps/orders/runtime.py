"""What orders' handlers and background jobs share for the life of the process, typed."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol

from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from apps.common.internal_client import InternalClient
from apps.common.observability import with_trace_context
from apps.common.outbox import OutboxRelay
from apps.orders.payments import SumUpGateway
from apps.orders.settings import OrdersSettings
from apps.orders.settlement import RecentMerchantAccounts


class Jobs(Protocol):
    """The background work handlers hand over (apps.orders.reconciliation.Reconciler)."""

    def close_soon(self, order_ids: list[int]) -> None: ...

    def run_soon(self, work: Awaitable[object], name: str) -> None: ...

    def settle_refunds_soon(self) -> None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class OrderUrls:
    """Where SumUp sends the webhook and where the buyer's browser comes back."""

    public_base: str

    def webhook(self, order_id: int) -> str:
        """SumUp calls this URL as given and sends no trace headers: the URL carries the trace
        context of the checkout's creation, so the webhook continues that trace."""
        return with_trace_context(f"{self.public_base}/checkout/webhook/{order_id}/")

    def return_page(self, order_id: int) -> str:
        return f"{self.public_base}/checkout/return/{order_id}/"

    def order_page(self, order_id: int) -> str:
        return f"{self.public_base}/order/{order_id}/"


@dataclass
class OrdersRuntime:
    settings: OrdersSettings
    gateway: SumUpGateway
    urls: OrderUrls
    client: InternalClient
    maker: async_sessionmaker[AsyncSession]
    relay: OutboxRelay
    # The page configs' SumUp accounts read lately, for webhooks (settlement.py says why).
    recent_accounts: RecentMerchantAccounts
    # Set once the runtime exists (the reconciler works with it).
    jobs: Jobs = field(init=False)


# Handlers receive it as ``runtime: Runtime``.
Runtime = NamedDependency[OrdersRuntime]
