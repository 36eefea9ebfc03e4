"""What orders' handlers and background jobs share for the life of the process, typed."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Iterator
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


class AtATime:
    """At most ``most`` of something per key handled at once in this process: reports of one
    checkout (its webhooks) and looks at one order's return page. Each holds a database
    connection while SumUp answers, and anyone who knows the ids can send them without end;
    one beyond the bound is told at once, before it takes a connection.

    With :meth:`turn` (``waiting`` > 0), that many beyond the bound wait for a turn instead,
    holding no connection, and only those beyond them are told at once: a report told so is
    then always followed by one that reads SumUp after it arrived (the one waiting), so what
    it announced is not left for SumUp's retry."""

    def __init__(self, most: int, waiting: int = 0) -> None:
        self.most = most
        self.most_waiting = waiting
        self._handling: collections.Counter[tuple[str, int | str]] = collections.Counter()
        self._waiting: collections.Counter[tuple[str, int | str]] = collections.Counter()
        # Set when one of a key's turns ends, for whoever waits for one.
        self._freed: dict[tuple[str, int | str], asyncio.Event] = {}

    def waiting(self, key: tuple[str, int | str]) -> int:
        """How many of ``key`` wait for a turn now."""
        return self._waiting[key]

    @contextlib.contextmanager
    def taken(self, key: tuple[str, int | str]) -> Iterator[bool]:
        """Whether this one may go on (False: ``most`` of its key are being handled now)."""
        if self._handling[key] >= self.most:
            yield False
            return
        self._handling[key] += 1
        try:
            yield True
        finally:
            self._release(key)

    @contextlib.asynccontextmanager
    async def turn(
        self, key: tuple[str, int | str], *, within: float | None = None
    ) -> AsyncIterator[bool]:
        """As :meth:`taken`, but beyond ``most`` it waits for a turn while fewer than
        ``waiting`` of its key wait already (False at once beyond them), and at most ``within``
        seconds (None: as long as it takes; False once they passed)."""
        if self._handling[key] >= self.most:
            if self._waiting[key] >= self.most_waiting:
                yield False
                return
            self._waiting[key] += 1
            try:
                async with asyncio.timeout(within):
                    while self._handling[key] >= self.most:
                        await self._freed.setdefault(key, asyncio.Event()).wait()
            except TimeoutError:
                got_a_turn = False
            else:
                got_a_turn = True
            finally:
                self._waiting[key] -= 1
                if not self._waiting[key]:
                    del self._waiting[key]
            if not got_a_turn:
                yield False
                return
        self._handling[key] += 1
        try:
            yield True
        finally:
            self._release(key)

    def _release(self, key: tuple[str, int | str]) -> None:
        self._handling[key] -= 1
        if not self._handling[key]:
            del self._handling[key]
        freed = self._freed.pop(key, None)
        if freed is not None:
            freed.set()


# Create-orders that may wait for a turn, per one handled at once: beyond them a checkout is
# told at once that orders is busy (the buyer's wait would run out before their turn came).
WAITING_PER_CHECKOUT = 4
# The one key of OrdersRuntime.checkouts: every create-order of the process.
CHECKOUTS = ("create-order", 0)


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
    # SumUp's duplicated deliveries of one report come in pairs; a buyer's page and its
    # script's look, too. One webhook beyond them waits for a turn (AtATime says why).
    reports: AtATime = field(default_factory=lambda: AtATime(2, waiting=1))
    # Create-orders at once (ORDERS_CHECKOUTS_AT_ONCE): each holds a database connection
    # while events and SumUp answer, so a slow SumUp would otherwise take every connection of
    # the pool, and webhooks, return pages, order pages and readiness with it. Those beyond
    # wait for a turn holding none (set when the app starts, from the pool's size).
    checkouts: AtATime = field(default_factory=lambda: AtATime(7))
    # How long one waits for its turn before it is told orders is busy: as long as a request
    # waits for a connection of the pool (DATABASE_POOL_TIMEOUT).
    checkout_turn_seconds: float = 10.0


# Handlers receive it as ``runtime: Runtime``.
Runtime = NamedDependency[OrdersRuntime]
