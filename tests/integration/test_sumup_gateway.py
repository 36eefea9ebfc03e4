"""The SumUp gateway keeps one SDK client (a connection pool) per merchant API key, for the keys
in use: a bounded number, the least recently used closed once no call is running on it. Keys
rotate, and every key the process had ever seen kept its pool open."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal

import pytest

from apps.orders.payments import MerchantAccount, SumUpGateway
from apps.sumup_sandbox.server import BackgroundSandbox
from apps.sumup_sandbox.state import SandboxControls, SandboxState
from tests.waiting import eventually

ACCOUNTS = [MerchantAccount(f"MGATE{n}", f"sup_sk_gateway_test_key_{n}") for n in range(4)]


@pytest.fixture
def sandbox() -> Iterator[BackgroundSandbox]:
    keys = {account.api_key: account.merchant_code for account in ACCOUNTS}
    with BackgroundSandbox(state=SandboxState(SandboxControls()), api_keys=keys) as running:
        yield running


async def _create(gateway: SumUpGateway, account: MerchantAccount, reference: str) -> str:
    created = await gateway.create_checkout(
        account,
        reference=reference,
        amount=Decimal("12.50"),
        currency="GBP",
        description=reference,
        webhook_url="http://127.0.0.1:1/webhook",
        redirect_url="http://127.0.0.1:1/return",
    )
    return created.id


async def test_the_least_recently_used_clients_are_closed_beyond_the_bound(sandbox):
    gateway = SumUpGateway(base_url=sandbox.url, max_clients=2)
    try:
        first, second, third = ACCOUNTS[:3]
        checkout = await _create(gateway, first, "gate-1")
        first_client = gateway.client_for(first)
        await _create(gateway, second, "gate-2")
        await _create(gateway, third, "gate-3")
        assert gateway.open_clients() == 2
        assert first_client.closed
        # The key still works: a new client, and the checkout is there.
        again = await gateway.get_checkout(first, checkout)
        assert again.reference == "gate-1"
        assert gateway.client_for(first) is not first_client
        assert gateway.open_clients() == 2
    finally:
        await gateway.aclose()


async def test_a_client_in_use_is_closed_only_when_its_call_has_answered(sandbox):
    gateway = SumUpGateway(base_url=sandbox.url, max_clients=1)
    try:
        first, second = ACCOUNTS[:2]
        await _create(gateway, first, "gate-slow-0")
        first_client = gateway.client_for(first)
        sandbox.state.controls = sandbox.state.controls.updated({"api_latency": 0.5})
        slow = asyncio.create_task(_create(gateway, first, "gate-slow-1"))
        await asyncio.sleep(0.1)  # the call is on its way
        gateway.client_for(second)  # pushes the first key's client out
        assert not slow.done()
        assert not first_client.closed
        assert gateway.open_clients() == 2
        assert await slow  # answered on the client it started on
        assert first_client.closed
        assert gateway.open_clients() == 1
    finally:
        await gateway.aclose()


async def test_closing_the_gateway_closes_every_client(sandbox):
    gateway = SumUpGateway(base_url=sandbox.url, max_clients=3)
    for n, account in enumerate(ACCOUNTS[:3]):
        await _create(gateway, account, f"gate-close-{n}")
    clients = [gateway.client_for(account) for account in ACCOUNTS[:3]]
    await gateway.aclose()
    assert all(client.closed for client in clients)
    assert gateway.open_clients() == 0


async def test_a_shared_read_cancelled_while_it_waits_leaves_later_reads_working(sandbox):
    """Review L3 (December 2026): reads of one checkout are shared, one running and one
    waiting to start. A waiting read cancelled (the loop shutting down) stayed the checkout's
    next read, and every later caller got its CancelledError, for ever. Cancelled before it
    even began, the same. A later caller now starts a read of its own."""
    gateway = SumUpGateway(base_url=sandbox.url)
    account = ACCOUNTS[0]
    try:
        checkout = await _create(gateway, account, "gate-shared")
        sandbox.state.controls = sandbox.state.controls.updated({"api_latency": 0.3})
        first = asyncio.create_task(gateway.get_checkout(account, checkout))
        assert await eventually(lambda: sandbox.state.delayed_calls > 0)  # on its way
        second = asyncio.create_task(gateway.get_checkout(account, checkout))
        await asyncio.sleep(0)  # it asked: its read waits for the first
        [reads] = gateway._reads.values()
        assert reads.next is not None
        reads.next.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        assert (await first).reference == "gate-shared"
        sandbox.state.controls = sandbox.state.controls.updated({"api_latency": 0.0})
        assert (await gateway.get_checkout(account, checkout)).reference == "gate-shared"
        assert gateway._reads == {}

        # Cancelled before it began: the next caller does not wait on it.
        third = asyncio.create_task(gateway.get_checkout(account, checkout))
        await asyncio.sleep(0)  # it asked: its read is made, not begun
        [reads] = gateway._reads.values()
        assert reads.next is not None
        reads.next.cancel()
        with pytest.raises(asyncio.CancelledError):
            await third
        assert (await gateway.get_checkout(account, checkout)).reference == "gate-shared"
    finally:
        await gateway.aclose()
